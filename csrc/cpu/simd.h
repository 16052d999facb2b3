// 16 logical float lanes, the unit of every reduction in the CPU kernels (DESIGN §2).
//
// A reduction of n floats (a dot product, a sum of squares, a sum of exps) is defined once, here,
// and every code path computes it the same way:
//   1. lane j (0..15) runs an fma/add chain over the elements k = j, j+16, j+32, ... < n16,
//      n16 = n rounded down to a multiple of 16, in increasing k;
//   2. the 16 lanes are folded by a fixed tree: l[j] += l[j+8] (j < 8), then l[j] += l[j+4],
//      l[j] += l[j+2], l[j] += l[j+1]; the result is l[0];
//   3. the tail k = n16 .. n-1 is folded in, in increasing k, by scalar fma/add.
// The three ISAs below (AVX-512: one zmm; AVX2: two ymm; scalar: a float[16]) implement exactly
// these operations. fma, add and mul are correctly rounded on each, so they give the same bits:
// the result depends on n and the data only, never on the ISA, the tile shape or the thread.
#pragma once
// GCC 12 warns about the _mm512_undefined_ps() inside its own intrinsics (fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cmath>
#include <cstdint>

namespace replay {
namespace simd {

// Scalar: the reference definition, also the fallback on machines without AVX2.
struct VScalar {
  float l[16];
  static VScalar zero() {
    VScalar v;
    for (int j = 0; j < 16; ++j) v.l[j] = 0.0f;
    return v;
  }
  static VScalar load(const float* p) {
    VScalar v;
    for (int j = 0; j < 16; ++j) v.l[j] = p[j];
    return v;
  }
  static VScalar fma(VScalar a, VScalar b, VScalar c) {  // a*b + c, one rounding
    for (int j = 0; j < 16; ++j) c.l[j] = std::fma(a.l[j], b.l[j], c.l[j]);
    return c;
  }
  static VScalar add(VScalar a, VScalar b) {
    for (int j = 0; j < 16; ++j) a.l[j] += b.l[j];
    return a;
  }
  float tree() const {
    float t[8];
    for (int j = 0; j < 8; ++j) t[j] = l[j] + l[j + 8];
    for (int j = 0; j < 4; ++j) t[j] = t[j] + t[j + 4];
    for (int j = 0; j < 2; ++j) t[j] = t[j] + t[j + 2];
    return t[0] + t[1];
  }
};

#if defined(__AVX2__) && defined(__FMA__)
// AVX2: lanes 0..7 in lo, 8..15 in hi.
struct VAvx2 {
  __m256 lo, hi;
  static VAvx2 zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
  static VAvx2 load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
  static VAvx2 fma(VAvx2 a, VAvx2 b, VAvx2 c) {
    return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
  }
  static VAvx2 add(VAvx2 a, VAvx2 b) {
    return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)};
  }
  float tree() const {
    __m256 t8 = _mm256_add_ps(lo, hi);                                            // j, j+8
    __m128 t4 = _mm_add_ps(_mm256_castps256_ps128(t8), _mm256_extractf128_ps(t8, 1));  // j, j+4
    __m128 t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));                            // j, j+2
    __m128 t1 = _mm_add_ss(t2, _mm_movehdup_ps(t2));                              // 0, 1
    return _mm_cvtss_f32(t1);
  }
};
#endif

#if defined(__AVX512F__)
struct VAvx512 {
  __m512 v;
  static VAvx512 zero() { return {_mm512_setzero_ps()}; }
  static VAvx512 load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static VAvx512 fma(VAvx512 a, VAvx512 b, VAvx512 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  static VAvx512 add(VAvx512 a, VAvx512 b) { return {_mm512_add_ps(a.v, b.v)}; }
  float tree() const {
    // lanes 8..15 moved down by a 128-bit-lane shuffle (extractf64x4 trips a GCC 12 warning)
    const __m512 hi = _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 t8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_castps512_ps256(hi));
    __m128 t4 = _mm_add_ps(_mm256_castps256_ps128(t8), _mm256_extractf128_ps(t8, 1));
    __m128 t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));
    __m128 t1 = _mm_add_ss(t2, _mm_movehdup_ps(t2));
    return _mm_cvtss_f32(t1);
  }
};
#endif

// ISA tags for the kernels' dispatch (the test suite runs every compiled one and compares bits).
enum Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

inline int best_isa() {
#if defined(__AVX512F__)
  return kAvx512;
#elif defined(__AVX2__) && defined(__FMA__)
  return kAvx2;
#else
  return kScalar;
#endif
}

// The widest compiled lanes type, used by the row kernels.
#if defined(__AVX512F__)
using VBest = VAvx512;
#elif defined(__AVX2__) && defined(__FMA__)
using VBest = VAvx2;
#else
using VBest = VScalar;
#endif

inline bool has_isa(int isa) { return isa >= kScalar && isa <= best_isa(); }

// The reductions of the header comment, for one or two arrays of n floats.
template <class V>
inline float dot(const float* a, const float* b, int64_t n) {
  const int64_t n16 = n & ~int64_t(15);
  V acc = V::zero();
  for (int64_t k = 0; k < n16; k += 16) acc = V::fma(V::load(a + k), V::load(b + k), acc);
  float s = acc.tree();
  for (int64_t k = n16; k < n; ++k) s = std::fma(a[k], b[k], s);
  return s;
}

template <class V>
inline float sum(const float* a, int64_t n) {
  const int64_t n16 = n & ~int64_t(15);
  V acc = V::zero();
  for (int64_t k = 0; k < n16; k += 16) acc = V::add(V::load(a + k), acc);
  float s = acc.tree();
  for (int64_t k = n16; k < n; ++k) s = s + a[k];
  return s;
}

}  // namespace simd
}  // namespace replay
