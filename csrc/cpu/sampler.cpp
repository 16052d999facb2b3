// Bindings of the seeded sampler and its scores (isa/sampler.inc; definition: replay/sampling.py,
// DESIGN §3), and of the per-token math of csrc/common/sampler_math.h for the tests.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "common/sampler_math.h"
#include "cpu/kernels.h"
#include "registry.h"

namespace replay {
namespace {

template <class T> const T* cptr(uintptr_t p) { return reinterpret_cast<const T*>(p); }
template <class T> T* mptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

SampleArgs sample_args(uintptr_t logits, int64_t M, int64_t V, int64_t stride, uintptr_t T,
                       uintptr_t top_k, uintptr_t top_p, uintptr_t seed, uintptr_t pos) {
  return SampleArgs{cptr<float>(logits), M, V, stride, cptr<float>(T), cptr<float>(top_p),
                    cptr<int64_t>(top_k), cptr<int64_t>(seed), cptr<int64_t>(pos)};
}

void sample_f32(uintptr_t logits, int64_t M, int64_t V, int64_t stride, uintptr_t T,
                uintptr_t top_k, uintptr_t top_p, uintptr_t seed, uintptr_t pos, uintptr_t out) {
  pybind11::gil_scoped_release nogil;
  kernels().sample(sample_args(logits, M, V, stride, T, top_k, top_p, seed, pos),
                   mptr<int64_t>(out));
}

void score_f32(uintptr_t logits, int64_t M, int64_t V, int64_t stride, uintptr_t T,
               uintptr_t top_k, uintptr_t top_p, uintptr_t seed, uintptr_t pos,
               uintptr_t claimed, uintptr_t choice, uintptr_t logprob, uintptr_t rank,
               uintptr_t in_top_k, uintptr_t in_top_p, uintptr_t margin, uintptr_t kept) {
  pybind11::gil_scoped_release nogil;
  const ScoreOut o{mptr<int64_t>(choice), mptr<int64_t>(rank), mptr<int64_t>(kept),
                   mptr<float>(logprob), mptr<float>(margin), mptr<uint8_t>(in_top_k),
                   mptr<uint8_t>(in_top_p)};
  kernels().score(sample_args(logits, M, V, stride, T, top_k, top_p, seed, pos),
                  cptr<int64_t>(claimed), o);
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
