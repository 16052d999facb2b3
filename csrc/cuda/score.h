// Host entry points of the CUDA sampler and scoring kernels (csrc/cuda/score.cu). Plain C++ types
// only, so that the pybind11 glue (bindings_cuda.cpp) is compiled by the host compiler, not nvcc.
#pragma once
#include <cstdint>

namespace replay {
namespace cuda {

// Per-row inputs, all device pointers: logits [M, V] (float32, or bf16 when bf16 is set; row
// stride in elements, columns contiguous), temperature [M] f32, top_k [M] i64, top_p [M] f32,
// seed [M] i64 (uint64 bits), position [M] i64.
struct RowArgs {
  const void* logits;
  bool bf16;
  int64_t M, V, row_stride;
  const float* temperature;
  const int64_t* top_k;
  const float* top_p;
  const int64_t* seed;
  const int64_t* position;
};

// Outputs [M] (device pointers). claimed == nullptr: sample only (just `choice` is written).
struct ScoreOut {
  const int64_t* claimed;
  int64_t* choice;
  float* logprob;
  int64_t* rank;
  uint8_t* in_top_k;
  uint8_t* in_top_p;
  float* margin;
  int64_t* kept;
};

// Launches on `stream` (a cudaStream_t; nullptr is the legacy default stream) and returns at
// once. Throws std::runtime_error when the launch fails.
void launch_score(const RowArgs& a, const ScoreOut& o, void* stream);

}  // namespace cuda
}  // namespace replay
