// The seeded sampler and its per-row scores on CUDA: the same outputs, bit for bit, as the CPU
// score_f32 / sample_f32 (csrc/cpu/sampler.cpp; definition in replay/sampling.py, DESIGN §3, §5).
//
// One block per row. Every float the verdict depends on comes from the REPLAY_HD functions of
// csrc/common (rp_scaled, rp_exp, rp_log, rp_gumbel, rp_order_key, rp_beats), so CPU and GPU run
// one definition. Block reductions only select (argmax, counts): exact in any order. The two float
// sums that the definition makes sequential (the log-softmax normaliser in index order, the top-p
// mass in the sampler's order) are added by one thread in that order, the terms computed by all.
//
// top_p < 1 needs the kept candidates in the order (z desc, id asc). Only the "head" is sorted:
// tokens with z - zmax >= -17. The first token in the order has e = rp_exp(0) = 1, so S >= 1 from
// the first term on, and every later term with z - zmax < -17 has e < 4.2e-8 < 2^-24 <= ulp(S)/2:
// adding it leaves the sum, and every cumulative sum, unchanged. The head is a prefix of the order
// (z - zmax is monotone in z), so S, the cumulative sums and the index of the first c_j >= top_p*S
// are the same as over the whole kept set. The head is sorted in windows of kCap keys in shared
// memory (a radix select picks each window's last key), and walked in order.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/sampler_math.h"
#include "cuda/score.h"

namespace replay {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kCap = 2048;            // head keys sorted at once (16 KiB of keys in shared memory)
constexpr float kHeadCut = -17.0f;    // see above: e^-17 = 4.14e-8 < 2^-24 = 5.96e-8
constexpr uint64_t kNoKey = ~0ull;    // above every order key (token ids are < 2^32 - 1)

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }  // exact

// One row of logits and its temperature; x(i) is the value the order and the softmax use:
// z = l / T, or l itself when greedy (T == 0).
template <class In>
struct Row {
  const In* l;
  float T;
  bool greedy;
  __device__ float logit(int64_t i) const { return to_f32(l[i]); }
  __device__ float x(int64_t i) const {
    const float v = logit(i);
    return greedy ? v : rp_scaled(v, T);
  }
};

struct ArgMax {
  float v;
  int64_t i;  // < 0: no candidate
};

__device__ __forceinline__ ArgMax better(ArgMax a, ArgMax b) {
  if (a.i < 0) return b;
  if (b.i < 0) return a;
  return rp_beats(a.v, a.i, b.v, b.i) ? a : b;
}

struct Smem {
  uint64_t keys[kCap];  // a window of head keys, sorted
  float e[kCap];        // terms of a sequential sum, computed in parallel
  unsigned hist[256];   // radix-select histogram
  union {               // reduction scratch
    ArgMax am[kThreads];
    int64_t i64[kThreads];
  } red;
  uint64_t bkey;  // broadcasts from thread 0
  int64_t bi;
  int n;
  bool found;
};

// Tree reduction in shared memory; every thread gets the result.
template <class T, class Op>
__device__ T block_reduce(T v, T* buf, Op op) {
  const int t = threadIdx.x;
  buf[t] = v;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (t < w) buf[t] = op(buf[t], buf[t + w]);
    __syncthreads();
  }
  T r = buf[0];
  __syncthreads();
  return r;
}

__device__ int64_t block_sum(int64_t v, Smem& s) {
  return block_reduce(v, s.red.i64, [](int64_t a, int64_t b) { return a + b; });
}

__device__ ArgMax block_argmax(ArgMax v, Smem& s) {
  return block_reduce(v, s.red.am, [](ArgMax a, ArgMax b) { return better(a, b); });
}

// The k-th smallest (1-based) order key among the tokens i for which in(i, &key) holds; k must be
// <= their number. MSD radix select, 8 bits a pass; the histograms are exact integer counts.
template <class Pred>
__device__ uint64_t select_kth(int64_t k, int64_t V, Pred in, Smem& s) {
  uint64_t prefix = 0, mask = 0;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int j = threadIdx.x; j < 256; j += kThreads) s.hist[j] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < V; i += kThreads) {
      uint64_t key;
      if (in(i, &key) && (key & mask) == prefix) atomicAdd(&s.hist[(key >> shift) & 255], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int64_t c = 0;
      int b = 0;
      for (; b < 255; ++b) {
        if (c + s.hist[b] >= k) break;
        c += s.hist[b];
      }
      s.bkey = prefix | (static_cast<uint64_t>(b) << shift);
      s.bi = k - c;
    }
    __syncthreads();
    prefix = s.bkey;
    k = s.bi;
    mask |= 0xffull << shift;
    __syncthreads();
  }
  return prefix;
}

// Ascending bitonic sort of s.keys[0, n), n a power of two <= kCap.
__device__ void bitonic_sort(uint64_t* keys, int n) {
  for (int k = 2; k <= n; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int i = threadIdx.x; i < n; i += kThreads) {
        const int p = i ^ j;
        if (p > i) {
          const uint64_t a = keys[i], b = keys[p];
          if ((a > b) == ((i & k) == 0)) {
            keys[i] = b;
            keys[p] = a;
          }
        }
      }
      __syncthreads();
    }
  }
}

// Loads the next window of the head (keys above `lo`, or all when !has_lo) into s.keys, sorted,
// and its terms e = rp_exp(z - zmax) into s.e. Returns the window's size.
template <class In, class Head>
__device__ int next_window(const Row<In>& r, int64_t V, float zmax, Head head, bool has_lo,
                           uint64_t lo, int64_t remaining, Smem& s) {
  auto in = [&](int64_t i, uint64_t* key) { return head(i, key) && (!has_lo || *key > lo); };
  const int n = remaining < kCap ? static_cast<int>(remaining) : kCap;
  const uint64_t hi = remaining <= kCap ? kNoKey : select_kth(kCap, V, in, s);
  if (threadIdx.x == 0) s.n = 0;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < V; i += kThreads) {
    uint64_t key;
    if (in(i, &key) && key <= hi) s.keys[atomicAdd(&s.n, 1)] = key;  // slot order is irrelevant:
  }                                                                    // the window is sorted next
  int p2 = 1;
  while (p2 < n) p2 <<= 1;
  __syncthreads();
  for (int j = n + threadIdx.x; j < p2; j += kThreads) s.keys[j] = kNoKey;
  __syncthreads();
  bitonic_sort(s.keys, p2);
  for (int j = threadIdx.x; j < n; j += kThreads)
    s.e[j] = rp_exp(rp_sub(r.x(rp_key_token(s.keys[j])), zmax));
  __syncthreads();
  return n;
}

// top_p: the last kept key in the order, and the kept count. Candidates are the tokens with key
// <= kbound (the top-k filter) when kfiltered.
template <class In>
__device__ uint64_t top_p_bound(const Row<In>& r, int64_t V, float zmax, float top_p,
                                bool kfiltered, uint64_t kbound, Smem& s, int64_t* kept) {
  auto head = [&](int64_t i, uint64_t* key) {
    const float z = r.x(i);
    *key = rp_order_key(z, static_cast<uint32_t>(i));
    return rp_sub(z, zmax) >= kHeadCut && (!kfiltered || *key <= kbound);
  };
  int64_t H = 0;
  for (int64_t i = threadIdx.x; i < V; i += kThreads) {
    uint64_t key;
    H += head(i, &key);
  }
  H = block_sum(H, s);  // >= 1: the first token of the order is in the head

  // Walk 1: S, the sequential sum over the head in order (thread 0).
  float S = 0.0f;
  int64_t done = 0;
  uint64_t lo = 0;
  int n = 0;
  while (done < H) {
    n = next_window(r, V, zmax, head, done > 0, lo, H - done, s);
    if (threadIdx.x == 0)
      for (int j = 0; j < n; ++j) S = rp_add(S, s.e[j]);
    lo = s.keys[n - 1];
    done += n;
    __syncthreads();
  }
  // Walk 2: the first cumulative sum >= top_p * S. One window: it is still in shared memory.
  const float target = rp_mul(top_p, S);
  float cum = 0.0f;
  const bool one = H <= kCap;
  done = 0;
  if (threadIdx.x == 0) s.found = false;
  __syncthreads();
  while (true) {
    if (!one) n = next_window(r, V, zmax, head, done > 0, lo, H - done, s);
    if (threadIdx.x == 0) {
      for (int j = 0; j < n; ++j) {
        cum = rp_add(cum, s.e[j]);
        if (cum >= target || done + j + 1 == H) {  // the end is reached in exact arithmetic
          s.found = true;
          s.bkey = s.keys[j];
          s.bi = done + j + 1;
          break;
        }
      }
    }
    __syncthreads();
    if (s.found) break;
    lo = s.keys[n - 1];
    done += n;
    __syncthreads();
  }
  *kept = s.bi;
  const uint64_t b = s.bkey;
  __syncthreads();
  return b;
}

// Argmax over the kept tokens (key <= bound when filtered) of y = z + G, ties to the lowest id.
// i0 (the first token of the order) is always kept; a token with fl(z + kGumbelBound) < y(i0)
// cannot win (sampler_math.h) and costs no Philox.
template <class In>
__device__ ArgMax search(const Row<In>& r, int64_t V, int64_t i0, bool filtered, uint64_t bound,
                         uint64_t seed, uint32_t pos, Smem& s) {
  const float y0 = rp_add(r.x(i0), rp_gumbel(seed, pos, static_cast<uint32_t>(i0)));
  ArgMax best{y0, i0};
  for (int64_t i = threadIdx.x; i < V; i += kThreads) {
    const float z = r.x(i);
    if (i == i0 || rp_add(z, kGumbelBound) < y0) continue;
    if (filtered && rp_order_key(z, static_cast<uint32_t>(i)) > bound) continue;
    const float y = rp_add(z, rp_gumbel(seed, pos, static_cast<uint32_t>(i)));
    best = better(best, ArgMax{y, i});
  }
  return block_argmax(best, s);
}

// The log-softmax normaliser: sum of rp_exp(x_i - xmax) added in index order by thread 0.
template <class In>
__device__ float exp_sum(const Row<In>& r, int64_t V, float xmax, Smem& s) {
  float sum = 0.0f;
  for (int64_t base = 0; base < V; base += kCap) {
    const int n = V - base < kCap ? static_cast<int>(V - base) : kCap;
    for (int j = threadIdx.x; j < n; j += kThreads) s.e[j] = rp_exp(rp_sub(r.x(base + j), xmax));
    __syncthreads();
    if (threadIdx.x == 0)
      for (int j = 0; j < n; ++j) sum = rp_add(sum, s.e[j]);
    __syncthreads();
  }
  return sum;  // valid in thread 0
}

template <class In, bool kScore>
__global__ void __launch_bounds__(kThreads) score_kernel(RowArgs a, ScoreOut o) {
  __shared__ Smem s;
  const int64_t m = blockIdx.x;
  const int64_t V = a.V;
  const float T = a.temperature[m];
  const Row<In> r{static_cast<const In*>(a.logits) + m * a.row_stride, T, T == 0.0f};
  const uint64_t seed = static_cast<uint64_t>(a.seed[m]);
  const uint32_t pos = static_cast<uint32_t>(a.position[m]);
  const int64_t top_k = a.top_k[m];
  const float top_p = a.top_p[m];

  // The claimed token (scoring): an id outside the vocabulary scores token 0, as on the CPU.
  int64_t k = 0;
  float lk = 0.0f, xk = 0.0f;
  uint64_t kk = 0;
  if (kScore) {
    k = o.claimed[m];
    if (k < 0 || k >= V) k = 0;
    lk = r.logit(k);
    xk = r.x(k);
    kk = rp_order_key(xk, static_cast<uint32_t>(k));
  }

  // Pass 1: argmax of x (the first token of the order); rank and order position of the claim.
  ArgMax am{0.0f, -1};
  int64_t rank = 0, before = 0;
  for (int64_t i = threadIdx.x; i < V; i += kThreads) {
    const float li = r.logit(i);
    const float xi = r.greedy ? li : rp_scaled(li, T);
    am = better(am, ArgMax{xi, i});
    if (kScore) {
      rank += li > lk;
      before += rp_order_key(xi, static_cast<uint32_t>(i)) < kk;
    }
  }
  am = block_argmax(am, s);
  const int64_t i0 = am.i;
  const float xmax = am.v;

  int64_t choice = i0, kept = 1;
  float ymax = 0.0f;
  if (!r.greedy) {
    const int64_t K = (top_k > 0 && top_k < V) ? top_k : V;
    bool filtered = K < V;
    uint64_t bound = kNoKey;
    if (filtered) {
      auto all = [&](int64_t i, uint64_t* key) {
        *key = rp_order_key(r.x(i), static_cast<uint32_t>(i));
        return true;
      };
      bound = select_kth(K, V, all, s);
    }
    kept = K;
    if (top_p < 1.0f) {
      bound = top_p_bound(r, V, xmax, top_p, filtered, bound, s, &kept);
      filtered = true;
    }
    const ArgMax c = search(r, V, i0, filtered, bound, seed, pos, s);
    choice = c.i;
    ymax = c.v;
  }

  if (!kScore) {
    if (threadIdx.x == 0) o.choice[m] = choice;
    return;
  }
  rank = block_sum(rank, s);
  before = block_sum(before, s);
  const float sum = exp_sum(r, V, xmax, s);
  if (threadIdx.x != 0) return;
  o.choice[m] = choice;
  o.kept[m] = kept;
  o.rank[m] = rank;
  o.logprob[m] = rp_sub(rp_sub(xk, xmax), rp_log(sum));
  o.in_top_k[m] = top_k == 0 || before < top_k;
  if (r.greedy) {
    o.in_top_p[m] = k == choice;
    o.margin[m] = rp_sub(r.logit(choice), lk);
    return;
  }
  const bool kept_k = before < kept;
  o.in_top_p[m] = kept_k;
  o.margin[m] = kept_k
      ? rp_mul(T, rp_sub(ymax, rp_add(xk, rp_gumbel(seed, pos, static_cast<uint32_t>(k)))))
      : rp_inf();
}

template <class In>
void launch(const RowArgs& a, const ScoreOut& o, cudaStream_t st) {
  const dim3 grid(static_cast<unsigned>(a.M)), block(kThreads);
  if (o.claimed)
    score_kernel<In, true><<<grid, block, 0, st>>>(a, o);
  else
    score_kernel<In, false><<<grid, block, 0, st>>>(a, o);
}

}  // namespace

void launch_score(const RowArgs& a, const ScoreOut& o, void* stream) {
  if (a.M <= 0) return;
  if (a.V <= 0 || a.V >= (int64_t{1} << 32) - 1) throw std::runtime_error("score_cuda: bad V");
  if (a.M >= (int64_t{1} << 31)) throw std::runtime_error("score_cuda: too many rows");
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (a.bf16)
    launch<__nv_bfloat16>(a, o, st);
  else
    launch<float>(a, o, st);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("score_cuda: launch failed: ") + cudaGetErrorString(err));
}

}  // namespace cuda
}  // namespace replay
