// The seeded sampler and its per-row scores on CPU (definition: replay/sampling.py, DESIGN §3).
// Rows run in parallel with OpenMP; each row's result depends only on its own logits, parameters,
// seed and position. `score_f32` decides `choice` with the same `choose` that `sample_f32` runs,
// so "exact" is the engine's own verdict. Per-token math comes from csrc/common/sampler_math.h.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include <pybind11/pybind11.h>

#include "common/sampler_math.h"
#include "registry.h"

namespace replay {
namespace {

template <class T> const T* cptr(uintptr_t p) { return reinterpret_cast<const T*>(p); }
template <class T> T* mptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

struct Row {
  const float* l;  // [V]
  int64_t V;
  float T;
  int64_t top_k;
  float top_p;
  uint64_t seed;
  uint32_t pos;
};

struct Choice {
  int64_t token;
  int64_t kept;  // size of the kept set, a prefix of the order (z desc, id asc)
  float ymax;    // y of the chosen token (T > 0)
};

struct Scratch {  // per thread, reused across rows
  std::vector<float> z, e;
  std::vector<uint64_t> keys, tmp;
};

// Sorts order keys (z word << 32 | token) by their high word: a stable LSD radix sort, 8 bits a
// pass, skipping bytes that all keys share. Keys that enter in ascending token order leave in the
// sampler's order (z desc, id asc), the same as std::sort on the whole keys, in O(n).
void radix_sort_high_word(uint64_t* a, uint64_t* tmp, int64_t n) {
  uint64_t* src = a;
  uint64_t* dst = tmp;
  for (int shift = 32; shift < 64; shift += 8) {
    int64_t count[257] = {0};
    for (int64_t i = 0; i < n; ++i) ++count[((src[i] >> shift) & 0xff) + 1];
    if (n == 0 || count[((src[0] >> shift) & 0xff) + 1] == n) continue;
    for (int b = 0; b < 256; ++b) count[b + 1] += count[b];
    for (int64_t i = 0; i < n; ++i) dst[count[(src[i] >> shift) & 0xff]++] = src[i];
    std::swap(src, dst);
  }
  if (src != a) std::copy(src, src + n, a);
}

int64_t argmax_lowest(const float* x, int64_t V) {
  int64_t best = 0;
  for (int64_t i = 1; i < V; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

// G for a block of tokens: a fixed trip count over branch-free math, which the compiler
// vectorises (Philox and the two logs are most of a row's time when few tokens are filtered).
constexpr int kBlock = 16;
void gumbel_block(uint64_t seed, uint32_t pos, const uint32_t* tok, float* g) {
  for (int j = 0; j < kBlock; ++j) g[j] = rp_gumbel(seed, pos, tok[j]);
}

// Argmax of y = z + G over the tokens tok(0..n), ties to the lowest id, starting from token i0 (the
// largest z, always kept). Tokens with fl(z + kGumbelBound) < best y cannot win (sampler_math.h);
// when the tokens come sorted by z descending, the first such token ends the search. The others
// go through gumbel_block, kBlock at a time.
template <class Tok>
void search(const Row& r, const float* z, int64_t n, Tok tok, bool sorted, int64_t i0,
            Choice* c) {
  int64_t best = i0;
  float yb = rp_add(z[i0], rp_gumbel(r.seed, r.pos, static_cast<uint32_t>(i0)));
  uint32_t ids[kBlock];
  float g[kBlock];
  bool stop = false;
  for (int64_t j = 0; j < n && !stop;) {
    int cnt = 0;
    for (; j < n && cnt < kBlock; ++j) {
      int64_t i = tok(j);
      if (i == i0) continue;
      if (rp_add(z[i], kGumbelBound) < yb) {
        if (sorted) {
          stop = true;
          break;
        }
        continue;
      }
      ids[cnt++] = static_cast<uint32_t>(i);
    }
    if (cnt == 0) continue;
    for (int k = cnt; k < kBlock; ++k) ids[k] = ids[0];
    gumbel_block(r.seed, r.pos, ids, g);
    for (int k = 0; k < cnt; ++k) {
      float y = rp_add(z[ids[k]], g[k]);
      if (rp_beats(y, ids[k], yb, best)) {
        best = ids[k];
        yb = y;
      }
    }
  }
  c->token = best;
  c->ymax = yb;
}

// The sampler on one row. For T > 0 leaves z = l / T in s.z.
Choice choose(const Row& r, Scratch& s) {
  Choice c{0, 1, 0.0f};
  const int64_t V = r.V;
  if (r.T == 0.0f) {
    c.token = argmax_lowest(r.l, V);
    return c;
  }
  s.z.resize(V);
  float* z = s.z.data();
  for (int64_t i = 0; i < V; ++i) z[i] = rp_scaled(r.l[i], r.T);
  const int64_t i0 = argmax_lowest(z, V);
  const int64_t K = (r.top_k > 0 && r.top_k < V) ? r.top_k : V;

  if (r.top_p >= 1.0f && K == V) {  // no filter: no sort, no selection
    c.kept = V;
    search(r, z, V, [](int64_t j) { return j; }, false, i0, &c);
    return c;
  }
  // Order keys of the candidates. For top_p, tokens with z - zmax < -104 have e = rp_exp(.) = 0
  // exactly and come last in the order; adding zeros leaves every later cumulative sum at S, which
  // already reaches top_p * S. So only the others need sorting.
  const float zmax = z[i0];
  s.keys.resize(V);
  uint64_t* keys = s.keys.data();
  auto tok = [keys](int64_t j) { return static_cast<int64_t>(rp_key_token(keys[j])); };
  auto order_key = [z](int64_t i) { return rp_order_key(z[i], static_cast<uint32_t>(i)); };
  int64_t n = 0;
  if (r.top_p >= 1.0f || K < V) {
    // The first K in the order: a selection (nth_element), sorted only if top_p needs it.
    for (int64_t i = 0; i < V; ++i) keys[i] = order_key(i);
    std::nth_element(keys, keys + K, keys + V);
    if (r.top_p >= 1.0f) {
      c.kept = K;
      search(r, z, K, tok, false, i0, &c);
      return c;
    }
    n = std::partition(keys, keys + K, [&](uint64_t k) {
          return rp_sub(z[rp_key_token(k)], zmax) >= -104.0f;
        }) - keys;
    std::sort(keys, keys + n);
  } else {
    // The whole vocabulary: keys in id order, then a stable radix sort on the z word.
    for (int64_t i = 0; i < V; ++i)
      if (rp_sub(z[i], zmax) >= -104.0f) keys[n++] = order_key(i);
    s.tmp.resize(n);
    radix_sort_high_word(keys, s.tmp.data(), n);
  }
  s.e.resize(n);
  float* e = s.e.data();
  for (int64_t j = 0; j < n; ++j) e[j] = rp_sub(z[tok(j)], zmax);
  for (int64_t j = 0; j < n; ++j) e[j] = rp_exp(e[j]);  // vectorises
  float S = 0.0f;
  for (int64_t j = 0; j < n; ++j) S = rp_add(S, e[j]);
  const float target = rp_mul(r.top_p, S);
  float cum = 0.0f;
  int64_t keep = n;
  for (int64_t j = 0; j < n; ++j) {
    cum = rp_add(cum, e[j]);
    if (cum >= target) {
      keep = j + 1;
      break;
    }
  }
  c.kept = keep;
  search(r, z, keep, tok, true, i0, &c);
  return c;
}

struct Score {
  int64_t choice, rank, kept;
  float logprob, margin;
  bool in_top_k, in_top_p;
};

// Scores of the claimed token `k` (0 <= k < V) on one row.
Score score_row(const Row& r, int64_t k, Scratch& s) {
  Score o{};
  Choice c = choose(r, s);
  o.choice = c.token;
  o.kept = c.kept;
  const int64_t V = r.V;
  const float* x = r.T == 0.0f ? r.l : s.z.data();  // z, or l when greedy
  // rank on raw logits; position of k in the order (x desc, id asc); log-softmax of x at k.
  const float lk = r.l[k];
  const uint64_t kk = rp_order_key(x[k], static_cast<uint32_t>(k));
  int64_t rank = 0, before = 0;
  const float xmax = x[argmax_lowest(x, V)];
  s.e.resize(V);
  float* e = s.e.data();
  for (int64_t i = 0; i < V; ++i) e[i] = rp_exp(rp_sub(x[i], xmax));  // vectorises
  float sum = 0.0f;
  for (int64_t i = 0; i < V; ++i) {
    rank += r.l[i] > lk;
    before += rp_order_key(x[i], static_cast<uint32_t>(i)) < kk;
    sum = rp_add(sum, e[i]);
  }
  o.rank = rank;
  o.logprob = rp_sub(rp_sub(x[k], xmax), rp_log(sum));
  o.in_top_k = r.top_k == 0 || before < r.top_k;
  if (r.T == 0.0f) {
    o.in_top_p = k == c.token;
    o.margin = rp_sub(r.l[c.token], lk);
    return o;
  }
  o.in_top_p = before < c.kept;
  if (o.in_top_p) {
    float yk = rp_add(x[k], rp_gumbel(r.seed, r.pos, static_cast<uint32_t>(k)));
    o.margin = rp_mul(r.T, rp_sub(c.ymax, yk));
  } else {
    o.margin = std::numeric_limits<float>::infinity();
  }
  return o;
}

struct RowArgs {
  const float* logits;
  int64_t V, stride;
  const float *T, *top_p;
  const int64_t *top_k, *seed, *pos;
  Row row(int64_t m) const {
    return Row{logits + m * stride, V, T[m], top_k[m], top_p[m],
               static_cast<uint64_t>(seed[m]), static_cast<uint32_t>(pos[m])};
  }
};

RowArgs row_args(uintptr_t logits, int64_t V, int64_t stride, uintptr_t T, uintptr_t top_k,
                 uintptr_t top_p, uintptr_t seed, uintptr_t pos) {
  return RowArgs{cptr<float>(logits), V, stride, cptr<float>(T), cptr<float>(top_p),
                 cptr<int64_t>(top_k), cptr<int64_t>(seed), cptr<int64_t>(pos)};
}

void sample_f32(uintptr_t logits, int64_t M, int64_t V, int64_t stride, uintptr_t T,
                uintptr_t top_k, uintptr_t top_p, uintptr_t seed, uintptr_t pos, uintptr_t out) {
  pybind11::gil_scoped_release nogil;
  const RowArgs a = row_args(logits, V, stride, T, top_k, top_p, seed, pos);
  int64_t* o = mptr<int64_t>(out);
#pragma omp parallel
  {
    Scratch s;
#pragma omp for schedule(dynamic, 1)
    for (int64_t m = 0; m < M; ++m) o[m] = choose(a.row(m), s).token;
  }
}

void score_f32(uintptr_t logits, int64_t M, int64_t V, int64_t stride, uintptr_t T,
               uintptr_t top_k, uintptr_t top_p, uintptr_t seed, uintptr_t pos,
               uintptr_t claimed, uintptr_t choice, uintptr_t logprob, uintptr_t rank,
               uintptr_t in_top_k, uintptr_t in_top_p, uintptr_t margin, uintptr_t kept) {
  pybind11::gil_scoped_release nogil;
  const RowArgs a = row_args(logits, V, stride, T, top_k, top_p, seed, pos);
  const int64_t* cl = cptr<int64_t>(claimed);
#pragma omp parallel
  {
    Scratch s;
#pragma omp for schedule(dynamic, 1)
    for (int64_t m = 0; m < M; ++m) {
      // An id outside the vocabulary is the caller's error (sampling.py raises); never read past
      // the row: score token 0 instead.
      const int64_t k = (cl[m] >= 0 && cl[m] < V) ? cl[m] : 0;
      Score o = score_row(a.row(m), k, s);
      mptr<int64_t>(choice)[m] = o.choice;
      mptr<float>(logprob)[m] = o.logprob;
      mptr<int64_t>(rank)[m] = o.rank;
      mptr<uint8_t>(in_top_k)[m] = o.in_top_k;
      mptr<uint8_t>(in_top_p)[m] = o.in_top_p;
      mptr<float>(margin)[m] = o.margin;
      mptr<int64_t>(kept)[m] = o.kept;
    }
  }
}

void philox4x32_10(uintptr_t counter, uintptr_t key, uintptr_t out, int64_t N) {
  pybind11::gil_scoped_release nogil;
  const uint32_t *c = cptr<uint32_t>(counter), *k = cptr<uint32_t>(key);
  uint32_t* o = mptr<uint32_t>(out);
  for (int64_t n = 0; n < N; ++n) {
    Philox4x32 x{{c[4 * n], c[4 * n + 1], c[4 * n + 2], c[4 * n + 3]}};
    x = rp_philox4x32_10(x, k[2 * n], k[2 * n + 1]);
    for (int j = 0; j < 4; ++j) o[4 * n + j] = x.v[j];
  }
}

void gumbel_f32(uint64_t seed, int64_t pos, uintptr_t out, int64_t V) {
  pybind11::gil_scoped_release nogil;
  float* o = mptr<float>(out);
  for (int64_t i = 0; i < V; ++i)
    o[i] = rp_gumbel(seed, static_cast<uint32_t>(pos), static_cast<uint32_t>(i));
}

// Elementwise helpers for the tests: mathfn.h and the word -> Gumbel map on arrays.
template <float (*F)(float)>
void map_f32(uintptr_t in, uintptr_t out, int64_t N) {
  pybind11::gil_scoped_release nogil;
  const float* x = cptr<float>(in);
  float* o = mptr<float>(out);
  for (int64_t n = 0; n < N; ++n) o[n] = F(x[n]);
}

void gumbel_from_words_f32(uintptr_t words, uintptr_t out, int64_t N) {
  pybind11::gil_scoped_release nogil;
  const uint32_t* w = cptr<uint32_t>(words);
  float* o = mptr<float>(out);
  for (int64_t n = 0; n < N; ++n) o[n] = rp_gumbel_from_word(w[n]);
}

}  // namespace

void register_sampler(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("sample_f32", &sample_f32, "sampler: logits [M, V] (row stride), per-row T, top_k, top_p, "
        "seed (uint64 bits in int64), position -> token [M] int64",
        py::arg("logits"), py::arg("M"), py::arg("V"), py::arg("row_stride"),
        py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("seed"),
        py::arg("position"), py::arg("out_token"));
  m.def("score_f32", &score_f32, "sampler choice and scores of the claimed tokens, per row",
        py::arg("logits"), py::arg("M"), py::arg("V"), py::arg("row_stride"),
        py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("seed"),
        py::arg("position"), py::arg("claimed"), py::arg("out_choice"), py::arg("out_logprob"),
        py::arg("out_rank"), py::arg("out_in_top_k"), py::arg("out_in_top_p"),
        py::arg("out_margin"), py::arg("out_kept"));
  m.def("philox4x32_10", &philox4x32_10, "Philox4x32-10: counter [N, 4] u32, key [N, 2] u32 -> "
        "[N, 4] u32", py::arg("counter"), py::arg("key"), py::arg("out"), py::arg("N"));
  m.def("gumbel_f32", &gumbel_f32, "the sampler's Gumbel noise of one row [V]",
        py::arg("seed"), py::arg("position"), py::arg("out"), py::arg("V"));
  m.def("gumbel_from_words_f32", &gumbel_from_words_f32, "Philox word -> Gumbel, elementwise",
        py::arg("words"), py::arg("out"), py::arg("N"));
  m.def("exp_f32", &map_f32<rp_exp>, "replay's float32 exp (mathfn.h), elementwise",
        py::arg("x"), py::arg("out"), py::arg("N"));
  m.def("log_f32", &map_f32<rp_log>, "replay's float32 log (mathfn.h), elementwise",
        py::arg("x"), py::arg("out"), py::arg("N"));
}

}  // namespace replay
