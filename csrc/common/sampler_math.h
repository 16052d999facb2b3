// Per-token math of the seeded sampler (DESIGN §3), shared by the CPU driver (csrc/cpu/sampler.cpp)
// and any CUDA kernel: every function is an IEEE-exact chain (mathfn.h), so a backend that calls
// these gets the same bits. The row-level algorithm (selection, sorting, the top-p prefix) is the
// driver's; its definition is in replay/sampling.py.
#pragma once
#include <cstdint>

#include "hd.h"
#include "mathfn.h"
#include "philox.h"

namespace replay {

// U = (2 * (x >> 9) + 1) * 2^-24: the 23 high bits of x centred in their cell, exact in float32 and
// strictly inside (0, 1), so both logs below are finite.
REPLAY_HD float rp_uniform(uint32_t x) {
  return rp_mul(static_cast<float>(2u * (x >> 9) + 1u), 5.9604644775390625e-08f);
}

// G = -log(-log(U)), a standard Gumbel variate. U in [2^-24, 1 - 2^-24] and -log(U) in
// [5.9e-8, 16.7] are positive normal floats, so rp_log_normal gives rp_log's bits without its
// special cases (and vectorises).
REPLAY_HD float rp_gumbel_from_word(uint32_t x) {
  return -rp_log_normal(-rp_log_normal(rp_uniform(x), 0), 0);
}

REPLAY_HD float rp_gumbel(uint64_t seed, uint32_t position, uint32_t token) {
  return rp_gumbel_from_word(rp_sampler_word(seed, position, token));
}

// Every G is < 17: at the largest U = 1 - 2^-24, -log(U) ~ 5.96e-8 and G ~ 16.64 (the tests check
// all 2^23 values of U). Since rounding is monotone, y = fl(z + G) <= fl(z + 17), so a token with
// fl(z + 17) below the best y found so far cannot win and needs no Philox or logs.
constexpr float kGumbelBound = 17.0f;

// z = l / T, an IEEE float32 division.
REPLAY_HD float rp_scaled(float logit, float temperature) { return rp_div(logit, temperature); }

// A uint64 that sorts ascending in the sampler's order (z descending, token id ascending): the high
// word is the float's bits mapped to an order-reversing unsigned integer (-0 folded onto +0, as
// they compare equal), the low word the token id.
// The high word alone, in 32-bit operations (a loop over it vectorises: the CPU's top-k scan).
REPLAY_HD uint32_t rp_order_word(float z) {
  uint32_t u = rp_float_bits(z);
  u = u == 0x80000000u ? 0u : u;
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // ascending in z
  return ~u;                                        // descending in z
}

REPLAY_HD uint64_t rp_order_key(float z, uint32_t token) {
  return (static_cast<uint64_t>(rp_order_word(z)) << 32) | token;  // then ascending in token
}

REPLAY_HD uint32_t rp_key_token(uint64_t key) { return static_cast<uint32_t>(key); }

// Does (y_a, a) win over (y_b, b) in an argmax with ties to the lowest index?
REPLAY_HD bool rp_beats(float y_a, int64_t a, float y_b, int64_t b) {
  return y_a > y_b || (y_a == y_b && a < b);
}

}  // namespace replay
