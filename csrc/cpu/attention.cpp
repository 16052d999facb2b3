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
#include <vector>

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

// The online-softmax state of one query row (p: its position, lo: its first key).
struct Row {
  const float* q;
  float* out;
  int64_t p, lo;
  float m, l;
  bool first;
  float* acc;  // D floats
};

// One key block [b0, b0 + kBlock) for one row: the step of the header comment.
void row_block(Row& r, const float* kb, const float* vb, int64_t ld, int64_t D, float scale,
               int64_t b0) {
  float e[kBlock];
  const int64_t j0 = std::max(r.lo, b0), j1 = std::min(r.p + 1, b0 + kBlock);
  float mb = -std::numeric_limits<float>::infinity();
  for (int64_t j = b0; j < b0 + kBlock; ++j) e[j - b0] = 0.0f;
  for (int64_t j = j0; j < j1; ++j) {
    const float s = simd::dot<V>(r.q, kb + j * ld, D) * scale;
    e[j - b0] = s;
    mb = std::max(mb, s);
  }
  const float mn = r.first ? mb : std::max(r.m, mb);
#pragma omp simd  // vectorised rp_exp: the same +, *, fma and selects per lane, the same bits
  for (int64_t j = j0; j < j1; ++j) e[j - b0] = rp_exp(e[j - b0] - mn);
  const float bsum = simd::sum<V>(e, kBlock);
  float* acc = r.acc;
  if (r.first) {
    r.l = bsum;
    for (int64_t d = 0; d < D; ++d) acc[d] = 0.0f;
  } else {
    const float alpha = rp_exp(r.m - mn);
    r.l = r.l * alpha + bsum;
    for (int64_t d = 0; d < D; ++d) acc[d] = acc[d] * alpha;
  }
  for (int64_t j = j0; j < j1; ++j) {
    const float pj = e[j - b0];
    const float* vj = vb + j * ld;
    for (int64_t d = 0; d < D; ++d) acc[d] = std::fma(pj, vj[d], acc[d]);
  }
  r.m = mn;
  r.first = false;
}

// Rows that share one sequence and one KV head (several query heads of a GQA group, several
// tokens): each key block is loaded once from memory and then read from cache by every row that
// needs it. Each row still gets exactly its own block sequence.
void attend_rows(Row* rows, int n, const float* kb, const float* vb, int64_t ld, int64_t D,
                 float scale) {
  int64_t first = std::numeric_limits<int64_t>::max(), last = -1;
  for (int i = 0; i < n; ++i) first = std::min(first, rows[i].lo), last = std::max(last, rows[i].p);
  for (int64_t b0 = (first / kBlock) * kBlock; b0 <= last; b0 += kBlock) {
    // The rows of a block are a page apart for large Hkv * D, where the hardware prefetcher
    // stops: fetch the next block's keys and values while this one is computed.
    for (int64_t j = b0 + kBlock; j < std::min(last + 1, b0 + 2 * kBlock); ++j)
      for (int64_t d = 0; d < D; d += 16) {
        _mm_prefetch(reinterpret_cast<const char*>(kb + j * ld + d), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(vb + j * ld + d), _MM_HINT_T0);
      }
    for (int i = 0; i < n; ++i)
      if (b0 + kBlock > rows[i].lo && b0 <= rows[i].p) row_block(rows[i], kb, vb, ld, D, scale, b0);
  }
  for (int i = 0; i < n; ++i)
    for (int64_t d = 0; d < D; ++d) rows[i].out[d] = rows[i].acc[d] / rows[i].l;
}

constexpr int64_t kTokens = 4, kHeads = 8;  // a work item: up to 4 tokens x 8 heads of a group

void attention(const Args& a) {
  const int64_t G = a.Hq / a.Hkv, ld = a.Hkv * a.D, D = a.D;
  const int64_t head_chunks = (G + kHeads - 1) / kHeads;
  // Work items: (token chunk of one sequence, KV head, chunk of its query heads).
  std::vector<int64_t> chunk_seq, chunk_t0;
  for (int64_t s = 0; s < a.S; ++s)
    for (int64_t t = a.cu_q[s]; t < a.cu_q[s + 1]; t += kTokens) {
      chunk_seq.push_back(s);
      chunk_t0.push_back(t);
    }
  const int64_t items = int64_t(chunk_seq.size()) * a.Hkv * head_chunks;
  // Dynamic scheduling balances the causal triangle; it does not change any row's arithmetic.
#pragma omp parallel for schedule(dynamic, 1) if (items > 1)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t c = it / (a.Hkv * head_chunks), kvh = (it / head_chunks) % a.Hkv;
    const int64_t h0 = kvh * G + (it % head_chunks) * kHeads, h1 = std::min(h0 + kHeads, (kvh + 1) * G);
    const int64_t s = chunk_seq[c], t0 = chunk_t0[c], t1 = std::min(t0 + kTokens, a.cu_q[s + 1]);
    float acc[kTokens * kHeads][kMaxHead];
    Row rows[kTokens * kHeads];
    int n = 0;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p = a.pos0[s] + (t - a.cu_q[s]);
      const int64_t lo = a.window > 0 ? std::max<int64_t>(0, p - a.window + 1) : 0;
      for (int64_t h = h0; h < h1; ++h, ++n)
        rows[n] = Row{a.q + (t * a.Hq + h) * D, a.out + (t * a.Hq + h) * D, p, lo, 0.0f, 0.0f,
                      true, acc[n]};
    }
    const int64_t row0 = a.kv_start[s] * ld + kvh * D;
    attend_rows(rows, n, a.k + row0, a.v + row0, ld, D, a.scale);
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
