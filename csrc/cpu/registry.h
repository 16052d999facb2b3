// Each CPU source file registers its own functions on the module; bindings.cpp calls them all.
#pragma once
#include <pybind11/pybind11.h>

namespace replay {
void register_gemm(pybind11::module_& m);       // gemm.cpp: packing, linear
void register_linalg(pybind11::module_& m);     // linalg.cpp: norms, elementwise, log_softmax, paths
void register_attention(pybind11::module_& m);  // attention.cpp: varlen attention over a KV buffer
void register_sampler(pybind11::module_& m);    // sampler.cpp: Philox, Gumbel-max sampling, scoring
#ifdef REPLAY_WITH_CUDA
void register_cuda(pybind11::module_& m);  // csrc/cuda/bindings_cuda.cpp: CUDA sampler and scoring
#endif
}  // namespace replay
