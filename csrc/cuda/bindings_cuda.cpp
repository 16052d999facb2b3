// pybind11 glue of the CUDA kernels, compiled by the host compiler (only when the build has CUDA,
// see setup.py). Callers pass device pointers as Python ints and a cudaStream_t as an int
// (torch.cuda.current_stream().cuda_stream); the kernels launch asynchronously on that stream.
#include <cstdint>

#include <pybind11/pybind11.h>

#include "cuda/score.h"
#include "cpu/registry.h"

namespace replay {
namespace {

template <class T> T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

cuda::RowArgs row_args(uintptr_t logits, int64_t M, int64_t V, int64_t stride, uintptr_t T,
                       uintptr_t top_k, uintptr_t top_p, uintptr_t seed, uintptr_t pos,
                       bool bf16) {
  return cuda::RowArgs{ptr<const void>(logits), bf16, M, V, stride, ptr<const float>(T),
                       ptr<const int64_t>(top_k), ptr<const float>(top_p),
                       ptr<const int64_t>(seed), ptr<const int64_t>(pos)};
}

void sample_cuda_f32(uintptr_t logits, int64_t M, int64_t V, int64_t stride, uintptr_t T,
                     uintptr_t top_k, uintptr_t top_p, uintptr_t seed, uintptr_t pos,
                     uintptr_t out, uintptr_t stream, bool bf16) {
  cuda::ScoreOut o{};
  o.choice = ptr<int64_t>(out);
  cuda::launch_score(row_args(logits, M, V, stride, T, top_k, top_p, seed, pos, bf16), o,
                     ptr<void>(stream));
}

void score_cuda_f32(uintptr_t logits, int64_t M, int64_t V, int64_t stride, uintptr_t T,
                    uintptr_t top_k, uintptr_t top_p, uintptr_t seed, uintptr_t pos,
                    uintptr_t claimed, uintptr_t choice, uintptr_t logprob, uintptr_t rank,
                    uintptr_t in_top_k, uintptr_t in_top_p, uintptr_t margin, uintptr_t kept,
                    uintptr_t stream, bool bf16) {
  const cuda::ScoreOut o{ptr<const int64_t>(claimed), ptr<int64_t>(choice), ptr<float>(logprob),
                         ptr<int64_t>(rank), ptr<uint8_t>(in_top_k), ptr<uint8_t>(in_top_p),
                         ptr<float>(margin), ptr<int64_t>(kept)};
  cuda::launch_score(row_args(logits, M, V, stride, T, top_k, top_p, seed, pos, bf16), o,
                     ptr<void>(stream));
}

}  // namespace

void register_cuda(pybind11::module_& m) {
  namespace py = pybind11;
  m.attr("has_cuda") = true;
  m.def("sample_cuda_f32", &sample_cuda_f32,
        "the sampler on CUDA (same tokens as sample_f32): device pointers, logits [M, V] f32 (or "
        "bf16=True), per-row T, top_k, top_p, seed, position -> token [M] int64, on `stream`",
        py::arg("logits"), py::arg("M"), py::arg("V"), py::arg("row_stride"),
        py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("seed"),
        py::arg("position"), py::arg("out_token"), py::arg("stream") = 0,
        py::arg("bf16") = false);
  m.def("score_cuda_f32", &score_cuda_f32,
        "sampler choice and scores of the claimed tokens on CUDA (same outputs as score_f32); "
        "device pointers, launched on `stream`",
        py::arg("logits"), py::arg("M"), py::arg("V"), py::arg("row_stride"),
        py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("seed"),
        py::arg("position"), py::arg("claimed"), py::arg("out_choice"), py::arg("out_logprob"),
        py::arg("out_rank"), py::arg("out_in_top_k"), py::arg("out_in_top_p"),
        py::arg("out_margin"), py::arg("out_kept"), py::arg("stream") = 0,
        py::arg("bf16") = false);
}

}  // namespace replay
