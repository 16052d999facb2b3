// Causal varlen attention of packed query chunks over a KV buffer (see replay/ops.py attention).
//
// One code path per query row, whatever the call looks like (prefill, chunked prefill, decode):
// a query at absolute position p of a sequence reads keys lo..p, lo = max(0, p - window + 1) with
// a window, else 0, in blocks of kBlock keys aligned to position 0 of the sequence (block b holds
// positions [b*kBlock, (b+1)*kBlock)). Per block, in block order:
//   s_j   = dot(q, k_j) * scale           dot in the 16-lane order of simd.h over D
//   m'    = max(m, max_j s_j)             (exact in any order)
//   e_j   = rp_exp(s_j - m')
//   l     = l * rp_exp(m - m') + sum(e)   sum over the kBlock slots of the block, 16-lane order,
//                                         slots outside lo..p hold 0 (adding 0 is exact)
//   acc_d = acc_d * rp_exp(m - m'), then acc_d = fma(e_j, v_jd, acc_d) for j ascending
// (on the first block of the row, m' = its max, l = sum(e) and acc starts from 0), and at the end
// out_d = acc_d / l. Every quantity is a function of (q row, p, window, the keys and values of
// the sequence): not of the batch, the chunking or the buffer rows. Rows of the buffer past p are
// never read.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "common/mathfn.h"
#include "registry.h"
#include "simd.h"

namespace replay {
namespace {

using V = simd::VBest;
constexpr int64_t kBlock = 64;    // keys per online-softmax step; part of the replay contract
constexpr int64_t kMaxHead = 512;  // head dims up to this fit the per-row stack buffers

struct Args {
  const float *q, *k, *v;
  float* out;
  const int64_t *cu_q, *pos0, *kv_start;
  int64_t S, T, Hq, Hkv, D;
  float scale;
  int64_t window;
};

// One query row: q (D), keys/values of its sequence from kb/vb with row stride ld, position p.
void attend_row(const Args& a, const float* q, const float* kb, const float* vb, int64_t ld,
                int64_t p, float* out) {
  const int64_t D = a.D;
  const int64_t lo = a.window > 0 ? std::max<int64_t>(0, p - a.window + 1) : 0;
  float e[kBlock];
  float acc[kMaxHead];
  float m = 0.0f, l = 0.0f;
  bool first = true;
  for (int64_t b0 = (lo / kBlock) * kBlock; b0 <= p; b0 += kBlock) {
    const int64_t j0 = std::max(lo, b0), j1 = std::min(p + 1, b0 + kBlock);
    float mb = -std::numeric_limits<float>::infinity();
    for (int64_t j = b0; j < b0 + kBlock; ++j) {
      if (j < j0 || j >= j1) {
        e[j - b0] = 0.0f;
        continue;
      }
      const float s = simd::dot<V>(q, kb + j * ld, D) * a.scale;
      e[j - b0] = s;
      mb = std::max(mb, s);
    }
    const float mn = first ? mb : std::max(m, mb);
    for (int64_t j = j0; j < j1; ++j) e[j - b0] = rp_exp(e[j - b0] - mn);
    const float bsum = simd::sum<V>(e, kBlock);
    if (first) {
      l = bsum;
      for (int64_t d = 0; d < D; ++d) acc[d] = 0.0f;
    } else {
      const float alpha = rp_exp(m - mn);
      l = l * alpha + bsum;
      for (int64_t d = 0; d < D; ++d) acc[d] = acc[d] * alpha;
    }
    for (int64_t j = j0; j < j1; ++j) {
      const float pj = e[j - b0];
      const float* vj = vb + j * ld;
      for (int64_t d = 0; d < D; ++d) acc[d] = std::fma(pj, vj[d], acc[d]);
    }
    m = mn;
    first = false;
  }
  for (int64_t d = 0; d < D; ++d) out[d] = acc[d] / l;
}

void attention(const Args& a) {
  const int64_t G = a.Hq / a.Hkv, ld = a.Hkv * a.D;
  const int64_t items = a.T * a.Hq;
  // Work items are (token, query head) rows; dynamic scheduling balances the causal triangle and
  // does not change any row's arithmetic.
#pragma omp parallel for schedule(dynamic, 8) if (items > 1)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t t = it / a.Hq, h = it % a.Hq;
    const int64_t s = std::upper_bound(a.cu_q, a.cu_q + a.S + 1, t) - a.cu_q - 1;
    const int64_t p = a.pos0[s] + (t - a.cu_q[s]);
    const int64_t row0 = a.kv_start[s] * ld + (h / G) * a.D;
    attend_row(a, a.q + (t * a.Hq + h) * a.D, a.k + row0, a.v + row0, ld, p,
               a.out + (t * a.Hq + h) * a.D);
  }
}

}  // namespace

void register_attention(pybind11::module_& m) {
  namespace py = pybind11;
  m.def(
      "attention_f32",
      [](uintptr_t q, uintptr_t k_buf, uintptr_t v_buf, uintptr_t out, uintptr_t cu_q,
         uintptr_t pos0, uintptr_t kv_start, int64_t S, int64_t T, int64_t Hq, int64_t Hkv,
         int64_t D, double scale, int64_t window) {
        if (D > kMaxHead) throw py::value_error("attention_f32: head dim above 512");
        Args a{reinterpret_cast<const float*>(q),       reinterpret_cast<const float*>(k_buf),
               reinterpret_cast<const float*>(v_buf),   reinterpret_cast<float*>(out),
               reinterpret_cast<const int64_t*>(cu_q),  reinterpret_cast<const int64_t*>(pos0),
               reinterpret_cast<const int64_t*>(kv_start), S, T, Hq, Hkv, D, float(scale),
               window};
        py::gil_scoped_release nogil;
        attention(a);
      },
      "causal varlen attention of packed queries q[T,Hq,D] over k_buf/v_buf[R,Hkv,D]; out[T,Hq,D]");
}

}  // namespace replay
