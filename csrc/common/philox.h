// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the
// counter-based generator of Random123, cuRAND and torch. The sampler's noise for token i at
// position t under seed s is a pure function of (s, t, i): no generator state, no batch index
// (DESIGN §2, §3). Integer-only, so CPU and GPU give the same bits trivially.
#pragma once
#include <cstdint>

#include "hd.h"

namespace replay {

struct Philox4x32 {
  uint32_t v[4];
};

REPLAY_HD void rp_mulhilo32(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

// One round: two 32x32->64 multiplies, the high halves xor-ed with the other words and the key.
REPLAY_HD Philox4x32 rp_philox_round(Philox4x32 c, uint32_t k0, uint32_t k1) {
  uint32_t hi0, lo0, hi1, lo1;
  rp_mulhilo32(0xD2511F53u, c.v[0], &hi0, &lo0);
  rp_mulhilo32(0xCD9E8D57u, c.v[2], &hi1, &lo1);
  Philox4x32 r;
  r.v[0] = hi1 ^ c.v[1] ^ k0;
  r.v[1] = lo1;
  r.v[2] = hi0 ^ c.v[3] ^ k1;
  r.v[3] = lo0;
  return r;
}

// Ten rounds; the key is bumped by the Weyl constants (golden ratio, sqrt(3) - 1) between rounds.
REPLAY_HD Philox4x32 rp_philox4x32_10(Philox4x32 ctr, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    ctr = rp_philox_round(ctr, k0, k1);
  }
  return ctr;
}

// The sampler's random word for token `token` at position `position` under `seed`:
// key = (seed low 32 bits, seed high 32 bits), counter = (token, position, 0, 0), word out[0].
REPLAY_HD uint32_t rp_sampler_word(uint64_t seed, uint32_t position, uint32_t token) {
  Philox4x32 c;
  c.v[0] = token;
  c.v[1] = position;
  c.v[2] = 0u;
  c.v[3] = 0u;
  return rp_philox4x32_10(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)).v[0];
}

}  // namespace replay
