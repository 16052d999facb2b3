// Dense row kernels of the CPU backend: linear, rms_norm, add_rms_norm, silu_mul, rope,
// log_softmax. All float32, contiguous row-major; the Python layer (replay/ops.py) checks shapes
// and passes data pointers.
//
// Batch invariance (DESIGN §2): every reduction follows the 16-lane order of simd.h, and the
// blocking, tiling and threading below only decide *who* computes an output and *when*, never
// the arithmetic it gets. No split-K: a dot product runs over the whole of K in one accumulator.
#include <omp.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common/mathfn.h"
#include "registry.h"
#include "simd.h"

namespace replay {
namespace {

using simd::Isa;

// ---------------------------------------------------------------------------------------------
// linear: out[M,N] = x[M,K] @ w[N,K]^T (+ bias[N])
//
// out[m,n] = simd::dot(x[m], w[n], K) (+ bias[n]): the 16-lane fma chains over K, the lane
// tree, the K tail in order, then one add of the bias. The micro-kernel computes an MR x NR tile
// of such dot products at once (one accumulator per output, so x and w vectors are loaded once
// per tile step), and edge tiles are the same template with smaller MR, NR: the per-output
// operation sequence is identical in all of them.

template <class V, int MR, int NR>
void tile(const float* x, const float* w, const float* bias, float* out, int64_t N, int64_t K) {
  const int64_t K16 = K & ~int64_t(15);
  V acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = V::zero();
  for (int64_t k = 0; k < K16; k += 16) {
    V xv[MR];
    for (int i = 0; i < MR; ++i) xv[i] = V::load(x + i * K + k);
    for (int j = 0; j < NR; ++j) {
      const V wv = V::load(w + j * K + k);
      for (int i = 0; i < MR; ++i) acc[i][j] = V::fma(xv[i], wv, acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      float s = acc[i][j].tree();
      for (int64_t k = K16; k < K; ++k) s = std::fma(x[i * K + k], w[j * K + k], s);
      if (bias) s = s + bias[j];
      out[i * N + j] = s;
    }
  }
}

// Tile shapes per ISA: as many accumulators as the register file holds (AVX-512: 24 of 32 zmm).
template <class V> struct Tiles { static constexpr int MR = 1, NR = 1; };
#if defined(__AVX2__) && defined(__FMA__)
template <> struct Tiles<simd::VAvx2> { static constexpr int MR = 2, NR = 3; };
#endif
#if defined(__AVX512F__)
template <> struct Tiles<simd::VAvx512> { static constexpr int MR = 4, NR = 6; };
#endif

using TileFn = void (*)(const float*, const float*, const float*, float*, int64_t, int64_t);

template <class V, int MR, int... NRs>
constexpr void fill_row(TileFn* row, std::integer_sequence<int, NRs...>) {
  ((row[NRs] = &tile<V, MR, NRs + 1>), ...);
}

// table[mr-1][nr-1] = tile<V, mr, nr>, for the edge tiles.
template <class V, int... MRs>
void fill_table(TileFn (*table)[Tiles<V>::NR], std::integer_sequence<int, MRs...>) {
  (fill_row<V, MRs + 1>(table[MRs], std::make_integer_sequence<int, Tiles<V>::NR>{}), ...);
}

template <class V>
void linear_impl(const float* x, const float* w, const float* bias, float* out, int64_t M,
                 int64_t N, int64_t K) {
  constexpr int MR = Tiles<V>::MR, NR = Tiles<V>::NR;
  static TileFn table[MR][NR];
  static const bool filled = (fill_table<V>(table, std::make_integer_sequence<int, MR>{}), true);
  (void)filled;
  // Cache blocking: a block of NB rows of w (about 256 KiB) stays in L2 while MB rows of x stream
  // past it, MR rows at a time. Blocks are the unit of OpenMP work.
  const int64_t NB = std::max<int64_t>(NR, (65536 / std::max<int64_t>(K, 1)) / NR * NR);
  const int64_t MB = 64;
  const int64_t n_blocks = (N + NB - 1) / NB, m_blocks = (M + MB - 1) / MB;
  const int64_t n_tiles = n_blocks * m_blocks;
#pragma omp parallel for schedule(static) if (n_tiles > 1 && M * N * K > (int64_t(1) << 16))
  for (int64_t t = 0; t < n_tiles; ++t) {
    const int64_t m0 = (t / n_blocks) * MB, n0 = (t % n_blocks) * NB;
    const int64_t m1 = std::min(M, m0 + MB), n1 = std::min(N, n0 + NB);
    for (int64_t m = m0; m < m1; m += MR) {
      const int mr = int(std::min<int64_t>(MR, m1 - m));
      for (int64_t n = n0; n < n1; n += NR) {
        const int nr = int(std::min<int64_t>(NR, n1 - n));
        table[mr - 1][nr - 1](x + m * K, w + n * K, bias ? bias + n : nullptr, out + m * N + n,
                              N, K);
      }
    }
  }
}

void linear_isa(const float* x, const float* w, const float* bias, float* out, int64_t M,
                int64_t N, int64_t K, int isa) {
  switch (isa) {
#if defined(__AVX512F__)
    case simd::kAvx512: return linear_impl<simd::VAvx512>(x, w, bias, out, M, N, K);
#endif
#if defined(__AVX2__) && defined(__FMA__)
    case simd::kAvx2: return linear_impl<simd::VAvx2>(x, w, bias, out, M, N, K);
#endif
    default: return linear_impl<simd::VScalar>(x, w, bias, out, M, N, K);
  }
}

// ---------------------------------------------------------------------------------------------
// Row ops: one row per OpenMP iteration, reductions in the 16-lane order of simd.h, elementwise
// math written as plain mul/add (no fma, -ffp-contract=off) so that it matches the torch backend.

using V = simd::VBest;
constexpr int64_t kParallelMin = 1 << 15;  // below this many elements a thread team costs more

// rp_exp kept out of line, so that the compiler cannot vectorise the reference loop of exp_f32.
[[gnu::noinline]] float scalar_exp(float x) { return rp_exp(x); }

template <class T> const T* cptr(uintptr_t p) { return reinterpret_cast<const T*>(p); }
inline float* fptr(uintptr_t p) { return reinterpret_cast<float*>(p); }

// out = x * (1 / sqrt(sum(x^2) / D + eps)) * w
inline void rms_norm_row(const float* x, const float* w, float* out, int64_t D, float eps) {
  const float ss = simd::dot<V>(x, x, D);
  const float r = 1.0f / std::sqrt(ss / float(D) + eps);
  for (int64_t d = 0; d < D; ++d) out[d] = (x[d] * r) * w[d];
}

void rms_norm_f32(uintptr_t x, uintptr_t w, uintptr_t out, int64_t M, int64_t D, double eps) {
  pybind11::gil_scoped_release nogil;
  const float *xp = cptr<float>(x), *wp = cptr<float>(w);
  float* op = fptr(out);
#pragma omp parallel for schedule(static) if (M > 1 && M * D > kParallelMin)
  for (int64_t m = 0; m < M; ++m) rms_norm_row(xp + m * D, wp, op + m * D, D, float(eps));
}

// res_out = x + res; out = rms_norm(res_out)
void add_rms_norm_f32(uintptr_t x, uintptr_t res, uintptr_t w, uintptr_t out, uintptr_t res_out,
                      int64_t M, int64_t D, double eps) {
  pybind11::gil_scoped_release nogil;
  const float *xp = cptr<float>(x), *rp = cptr<float>(res), *wp = cptr<float>(w);
  float *op = fptr(out), *ro = fptr(res_out);
#pragma omp parallel for schedule(static) if (M > 1 && M * D > kParallelMin)
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t d = 0; d < D; ++d) ro[m * D + d] = xp[m * D + d] + rp[m * D + d];
    rms_norm_row(ro + m * D, wp, op + m * D, D, float(eps));
  }
}

// gate_up: (M, 2F) = [gate | up] -> out: (M, F) = silu(gate) * up, silu(g) = g / (1 + exp(-g))
void silu_mul_f32(uintptr_t gate_up, uintptr_t out, int64_t M, int64_t F) {
  pybind11::gil_scoped_release nogil;
  const float* gu = cptr<float>(gate_up);
  float* op = fptr(out);
#pragma omp parallel for schedule(static) if (M * F > kParallelMin)
  for (int64_t m = 0; m < M; ++m) {
    const float *g = gu + m * 2 * F, *u = g + F;
    float* o = op + m * F;
#pragma omp simd  // vectorised rp_exp: the same +, *, fma and selects per lane, the same bits
    for (int64_t f = 0; f < F; ++f) o[f] = (g[f] / (1.0f + rp_exp(-g[f]))) * u[f];
  }
}

// In place on x: (T, H, D), rotate-half; cos, sin: (max_pos, D/2), positions: (T,) int64.
void rope_f32(uintptr_t x, uintptr_t positions, uintptr_t cos, uintptr_t sin, int64_t T,
              int64_t H, int64_t D) {
  pybind11::gil_scoped_release nogil;
  float* xp = fptr(x);
  const int64_t* pos = cptr<int64_t>(positions);
  const float *cp = cptr<float>(cos), *sp = cptr<float>(sin);
  const int64_t h = D / 2;
#pragma omp parallel for schedule(static) if (T * H * D > kParallelMin)
  for (int64_t t = 0; t < T; ++t) {
    const float *c = cp + pos[t] * h, *s = sp + pos[t] * h;
    for (int64_t hd = 0; hd < H; ++hd) {
      float *x1 = xp + (t * H + hd) * D, *x2 = x1 + h;
      for (int64_t i = 0; i < h; ++i) {
        const float a = x1[i], b = x2[i];
        x1[i] = a * c[i] - b * s[i];
        x2[i] = b * c[i] + a * s[i];
      }
    }
  }
}

// out = (x - max) - log(sum(exp(x - max))), per row; out holds the exps in between.
void log_softmax_f32(uintptr_t x, uintptr_t out, int64_t M, int64_t N) {
  pybind11::gil_scoped_release nogil;
  const float* xp = cptr<float>(x);
  float* op = fptr(out);
#pragma omp parallel for schedule(static) if (M > 1 && M * N > kParallelMin)
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = xp + m * N;
    float* o = op + m * N;
    float mx = xr[0];
    for (int64_t n = 1; n < N; ++n) mx = std::max(mx, xr[n]);  // exact in any order
#pragma omp simd
    for (int64_t n = 0; n < N; ++n) o[n] = rp_exp(xr[n] - mx);
    const float lse = rp_log(simd::sum<V>(o, N));
    for (int64_t n = 0; n < N; ++n) o[n] = (xr[n] - mx) - lse;
  }
}

// out[i] = rp_exp(x[i]), in the vectorised loop the kernels use or one scalar call at a time; the
// tests check that both give rp_exp's bits.
void exp_f32(uintptr_t x, uintptr_t out, int64_t n, bool vectorised) {
  const float* xp = cptr<float>(x);
  float* op = fptr(out);
  if (vectorised) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) op[i] = rp_exp(xp[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) op[i] = scalar_exp(xp[i]);
  }
}

}  // namespace

void register_linalg(pybind11::module_& m) {
  namespace py = pybind11;
  m.def(
      "linear_f32",
      [](uintptr_t x, uintptr_t w, uintptr_t bias, uintptr_t out, int64_t M, int64_t N, int64_t K) {
        py::gil_scoped_release nogil;
        linear_isa(reinterpret_cast<const float*>(x), reinterpret_cast<const float*>(w),
                   reinterpret_cast<const float*>(bias), reinterpret_cast<float*>(out), M, N, K,
                   simd::best_isa());
      },
      "out[M,N] = x[M,K] @ w[N,K]^T (+ bias[N]); bias 0 for none");
  m.def(
      "linear_f32_isa",
      [](uintptr_t x, uintptr_t w, uintptr_t bias, uintptr_t out, int64_t M, int64_t N, int64_t K,
         int isa) {
        if (!simd::has_isa(isa)) throw py::value_error("linear_f32_isa: ISA not compiled in");
        py::gil_scoped_release nogil;
        linear_isa(reinterpret_cast<const float*>(x), reinterpret_cast<const float*>(w),
                   reinterpret_cast<const float*>(bias), reinterpret_cast<float*>(out), M, N, K,
                   isa);
      },
      "linear_f32 on a given code path (0 scalar, 1 AVX2, 2 AVX-512), for the invariance tests");
  m.def("rms_norm_f32", &rms_norm_f32, "out = x * (1/sqrt(mean(x^2) + eps)) * w, per row");
  m.def("add_rms_norm_f32", &add_rms_norm_f32, "res_out = x + res; out = rms_norm(res_out)");
  m.def("silu_mul_f32", &silu_mul_f32, "out[M,F] = silu(gate) * up, gate_up = [gate | up]");
  m.def("rope_f32", &rope_f32, "rotary embedding in place on x[T,H,D], rotate-half");
  m.def("log_softmax_f32", &log_softmax_f32, "row-wise log-softmax of x[M,N]");
  m.def("exp_simd_f32", &exp_f32, "rp_exp over n floats, vectorised or not (for the tests)");
  m.def("best_isa", &simd::best_isa, "the widest compiled code path (0 scalar, 1 AVX2, 2 AVX-512)");
  m.def("set_num_threads", [](int n) { omp_set_num_threads(n); },
        "OpenMP threads of the CPU kernels (results do not depend on it)");
  m.def("get_num_threads", []() { return omp_get_max_threads(); });
}

}  // namespace replay
