// The packed weight layout of the matmul (isa/gemm.inc) and its bindings: packing at load, the
// matmul on packed or plain weights, and row gathers from a packed matrix (tied embeddings).
//
// Panel p holds output columns 16p .. 16p+15 (zeros past N) as K rows of 16 elements, in the
// order in which the matmul visits the reduction's lanes (isa/gemm.inc): for K16 = K rounded
// down to a multiple of 16 and Kq = K / 16, row bitrev4(j) * Kq + q holds column k = 16 q + j
// (lane j, step q), rows K16 .. K-1 the tail k = K16 .. K-1. Panels are K * 16 elements apart.
// Elements are float32 or bfloat16.
#include <omp.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>

#include "cpu/kernels.h"
#include "registry.h"

namespace replay {
namespace {

constexpr int64_t kLanes = 16;

inline int64_t bitrev4(int64_t j) { return ((j & 1) << 3) | ((j & 2) << 1) | ((j & 4) >> 1) | ((j & 8) >> 3); }

inline int64_t packed_row(int64_t k, int64_t Kq) {  // row of column k inside a panel
  return k < Kq * kLanes ? bitrev4(k % kLanes) * Kq + k / kLanes : k;
}

template <class S, class D> D convert(S v);
template <> float convert<float, float>(float v) { return v; }
template <> uint16_t convert<uint16_t, uint16_t>(uint16_t v) { return v; }
template <> float convert<uint16_t, float>(uint16_t v) { return bf16_to_f32(v); }

// w: (N, K), rows `ld` elements apart -> dst: (panels, K, 16)
template <class S, class D>
void pack(const S* w, int64_t N, int64_t K, int64_t ld, D* dst) {
  const int64_t panels = (N + kLanes - 1) / kLanes, Kq = K / kLanes;
#pragma omp parallel for schedule(static) if (N * K > (int64_t(1) << 18))
  for (int64_t p = 0; p < panels; ++p) {
    D* d = dst + p * K * kLanes;
    for (int64_t c = 0; c < kLanes; ++c) {
      const int64_t n = p * kLanes + c;
      if (n >= N) {
        for (int64_t k = 0; k < K; ++k) d[k * kLanes + c] = D(0);
        continue;
      }
      const S* row = w + n * ld;
      for (int64_t k = 0; k < K; ++k) d[packed_row(k, Kq) * kLanes + c] = convert<S, D>(row[k]);
    }
  }
}

// out[t] = row ids[t] of the packed matrix (N, K), as float32
template <class D>
void gather(const D* packed, int64_t K, const int64_t* ids, int64_t T, float* out) {
  const int64_t Kq = K / kLanes;
#pragma omp parallel for schedule(static) if (T * K > (int64_t(1) << 16))
  for (int64_t t = 0; t < T; ++t) {
    const int64_t p = ids[t] / kLanes, c = ids[t] % kLanes;
    const D* d = packed + p * K * kLanes + c;
    for (int64_t k = 0; k < K; ++k) out[t * K + k] = convert<D, float>(d[packed_row(k, Kq) * kLanes]);
  }
}

template <class T> const T* cp(uintptr_t p) { return reinterpret_cast<const T*>(p); }
template <class T> T* mp(uintptr_t p) { return reinterpret_cast<T*>(p); }

}  // namespace

void register_gemm(pybind11::module_& m) {
  namespace py = pybind11;
  m.def(
      "pack_weights",
      [](uintptr_t w, bool w_bf16, int64_t N, int64_t K, int64_t ld, uintptr_t dst, bool dst_bf16) {
        py::gil_scoped_release nogil;
        if (!w_bf16 && !dst_bf16) pack(cp<float>(w), N, K, ld, mp<float>(dst));
        else if (w_bf16 && dst_bf16) pack(cp<uint16_t>(w), N, K, ld, mp<uint16_t>(dst));
        else if (w_bf16) pack(cp<uint16_t>(w), N, K, ld, mp<float>(dst));
        else throw py::value_error("pack_weights: float32 -> bfloat16 would round");
      },
      "w[N,K] (row stride ld) -> packed panels [ceil(N/16), K, 16]; float32 or bfloat16");
  m.def(
      "gather_packed",
      [](uintptr_t packed, bool bf16, int64_t K, uintptr_t ids, int64_t T, uintptr_t out) {
        py::gil_scoped_release nogil;
        if (bf16) gather(cp<uint16_t>(packed), K, cp<int64_t>(ids), T, mp<float>(out));
        else gather(cp<float>(packed), K, cp<int64_t>(ids), T, mp<float>(out));
      },
      "out[T,K] float32 = rows ids[T] of a packed matrix");
  m.def(
      "linear_packed",
      [](uintptr_t x, int64_t M, uintptr_t w, bool bf16, uintptr_t bias, int64_t N, int64_t K,
         uintptr_t out) {
        py::gil_scoped_release nogil;
        const Kernels& k = kernels();
        if (bf16) k.linear_bf16(cp<float>(x), M, cp<uint16_t>(w), cp<float>(bias), N, K, mp<float>(out));
        else k.linear_f32(cp<float>(x), M, cp<float>(w), cp<float>(bias), N, K, mp<float>(out));
      },
      "out[M,N] = x[M,K] @ w^T (+ bias), w packed (pack_weights), bias padded to 16 * panels or 0");
  m.def(
      "linear_sched",
      [](uintptr_t x, int64_t M, uintptr_t w, uintptr_t bias, int64_t N, int64_t K, uintptr_t out,
         int isa, int sched) {
        if (sched < 0 || sched >= kSchedules) throw py::value_error("linear_sched: no such schedule");
        const Kernels& k = kernels_for(isa);
        py::gil_scoped_release nogil;
        k.linear_sched[sched](cp<float>(x), M, cp<float>(w), cp<float>(bias), N, K, mp<float>(out));
      },
      "linear_packed (float32) on a given code path and schedule, for the tests");
  m.attr("linear_schedules") = kSchedules;
  m.def(
      "linear_f32",
      [](uintptr_t x, uintptr_t w, uintptr_t bias, uintptr_t out, int64_t M, int64_t N, int64_t K) {
        py::gil_scoped_release nogil;
        // plain weights: packed here on every call (ops.pack_linear packs once)
        const int64_t panels = (N + kLanes - 1) / kLanes;
        float* wp = scratch(2, panels * K * kLanes);
        pack(cp<float>(w), N, K, K, wp);
        float* bp = nullptr;
        if (bias) {
          bp = scratch(3, panels * kLanes);
          std::fill(bp, bp + panels * kLanes, 0.0f);
          std::copy(cp<float>(bias), cp<float>(bias) + N, bp);
        }
        kernels().linear_f32(cp<float>(x), M, wp, bp, N, K, mp<float>(out));
      },
      "out[M,N] = x[M,K] @ w[N,K]^T (+ bias[N]); bias 0 for none (w packed on each call)");
}

}  // namespace replay
