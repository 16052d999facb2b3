// replay's own float32 exp and log, for per-row math whose result must be the same bits on CPU and
// GPU (sampler, scoring; DESIGN §5). libm's expf/logf and CUDA's expf/__logf round differently, so
// a verdict that used them could flip between backends on a near-tie.
//
// Built only from IEEE-exact operations: +, -, *, / and fma (each correctly rounded on every
// backend), comparisons and bit reinterpretation. Every multiply whose result feeds an add goes
// through rp_mul / rp_add (__fmul_rn / __fadd_rn on the device), so nvcc cannot fuse it into an
// fma behind our back; the host build uses -ffp-contract=off for the same reason.
// Accuracy: exhaustively checked over all float32 inputs against double (see tests).
#pragma once
#include <cstdint>
#include <cstring>
#include <cmath>

#include "hd.h"

namespace replay {

// ---- exactly rounded primitives, the same on host and device -------------------------------------

REPLAY_HD float rp_fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

REPLAY_HD float rp_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

REPLAY_HD float rp_add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

REPLAY_HD float rp_sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

REPLAY_HD float rp_div(float a, float b) {  // IEEE division (also under nvcc --use_fast_math)
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

REPLAY_HD uint32_t rp_float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint32_t>(__float_as_uint(x));
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

REPLAY_HD float rp_bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

REPLAY_HD float rp_inf() { return rp_bits_float(0x7f800000u); }
REPLAY_HD float rp_nan() { return rp_bits_float(0x7fc00000u); }

// 2^n for n in [-126, 127], built from the exponent field.
REPLAY_HD float rp_pow2i(int n) { return rp_bits_float(static_cast<uint32_t>(n + 127) << 23); }

// ---- exp -------------------------------------------------------------------------------------------
// exp(x) = 2^n * e^r, n = rint(x / ln2), r = x - n ln2 in [-ln2/2, ln2/2].
// r is computed with a two-part ln2 (hi has 9 trailing zero bits, so n*hi and x - n*hi are exact
// for |n| <= 150); e^r = 1 + r + r^2 P(r) with the Taylor coefficients 1/2! .. 1/7!: the first
// dropped term r^8/8! is < 6e-9 of the result at |r| = ln2/2, under 0.05 ulp.
// Written with selects, not branches, so that loops over it vectorise.
REPLAY_HD float rp_exp(float x) {
  const float kLog2e = 1.44269502162933349609375f;
  const float kLn2Hi = 0.693145751953125f;         // 0x3f317200
  const float kLn2Lo = 1.428606765330187045e-06f;  // ln2 - kLn2Hi
  const float kRound = 12582912.0f;                // 1.5 * 2^23: adding it rounds to an integer
  // e^89 > FLT_MAX and e^-104 < 2^-150; in between the scaling below overflows or underflows
  // exactly as the true value rounds. NaN is computed on 0 and restored at the end.
  float xc = x > 89.0f ? 89.0f : (x < -104.0f ? -104.0f : x);
  xc = (x == x) ? xc : 0.0f;
  // n = rint(x * log2e), ties to even; |x * log2e| < 151 so the magic-number trick is exact.
  float nf = rp_sub(rp_add(rp_mul(xc, kLog2e), kRound), kRound);
  int n = static_cast<int>(nf);
  float r = rp_fma(-nf, kLn2Hi, xc);  // exact: n*hi is close to x
  r = rp_fma(-nf, kLn2Lo, r);
  float p = 1.0f / 5040.0f;
  p = rp_fma(p, r, 1.0f / 720.0f);
  p = rp_fma(p, r, 1.0f / 120.0f);
  p = rp_fma(p, r, 1.0f / 24.0f);
  p = rp_fma(p, r, 1.0f / 6.0f);
  p = rp_fma(p, r, 0.5f);
  float q = rp_fma(rp_mul(r, r), p, r);  // e^r - 1
  float e = rp_add(1.0f, q);             // in [0.70, 1.42]
  // Scale by 2^n = 2^a 2^b, n in [-150, 129], a = floor(n/2): both factors are normal, the first
  // product is exact, the second rounds once (to inf, into the subnormals, or to zero).
  int a = n >> 1;
  float y = rp_mul(rp_mul(e, rp_pow2i(a)), rp_pow2i(n - a));
  y = x > 89.0f ? rp_inf() : (x < -104.0f ? 0.0f : y);
  return (x == x) ? y : x;
}

// ---- log -------------------------------------------------------------------------------------------
// x = 2^k m, m in [sqrt(1/2), sqrt(2)), f = m - 1 (exact), s = f / (2 + f), |s| < 0.1716.
// log(1+f) = 2 atanh(s) = 2s + 2s^3/3 + 2s^5/5 + ...; with 2s = f - s f this is
//   f - (f^2/2 - s (f^2/2 + R)),  R = 2s^2/3 + 2s^4/5 + 2s^6/7 + 2s^8/9,
// which keeps the leading term f exact and puts the rounding of s into small terms only. The first
// dropped term 2s^11/11 is < 1e-9 absolute. log x = k ln2_hi + (log(1+f) + k ln2_lo).

// log(x) + k_bias * ln2 for a positive normal finite x. No branches: loops over it vectorise.
REPLAY_HD float rp_log_normal(float x, int k_bias) {
  const uint32_t ix = rp_float_bits(x);
  const uint32_t mant = ix & 0x007fffffu;
  // m = 1.mant in [1, 2); fold m >= sqrt(2) (mantissa bits of 1.41421354f = 0x3504f3) to m/2.
  const bool big = mant >= 0x3504f3u;
  const int k = k_bias + static_cast<int>(ix >> 23) - 127 + (big ? 1 : 0);
  const float f = rp_sub(rp_bits_float(mant | (big ? 0x3f000000u : 0x3f800000u)), 1.0f);  // exact
  const float kLn2Hi = 0.693145751953125f;  // 0x3f317200, 9 trailing zero bits
  const float kLn2Lo = 1.428606765330187045e-06f;
  float s = rp_div(f, rp_add(2.0f, f));
  float z = rp_mul(s, s);
  float R = 2.0f / 9.0f;
  R = rp_fma(R, z, 2.0f / 7.0f);
  R = rp_fma(R, z, 2.0f / 5.0f);
  R = rp_fma(R, z, 2.0f / 3.0f);
  R = rp_mul(R, z);
  float hfsq = rp_mul(rp_mul(0.5f, f), f);
  float kf = static_cast<float>(k);
  // log(1+f) + k ln2_lo, adding the small parts first; then the exact k ln2_hi last.
  float lo = rp_fma(kf, kLn2Lo, rp_sub(f, rp_sub(hfsq, rp_mul(s, rp_add(hfsq, R)))));
  return rp_fma(kf, kLn2Hi, lo);
}

REPLAY_HD float rp_log(float x) {
  if (!(x == x)) return x;                      // NaN
  if (x < 0.0f) return rp_nan();
  if (x == 0.0f) return -rp_inf();
  if (x == rp_inf()) return x;
  if (rp_float_bits(x) < 0x00800000u)           // subnormal: scale by 2^25 (exact) first
    return rp_log_normal(rp_mul(x, 33554432.0f), -25);
  return rp_log_normal(x, 0);
}

}  // namespace replay
