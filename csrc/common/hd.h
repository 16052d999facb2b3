// REPLAY_HD marks per-row math that both the C++ CPU code and the CUDA kernels compile, so that
// CPU and GPU verdicts come from one definition (DESIGN §5).
#pragma once
#if defined(__CUDACC__)
#define REPLAY_HD __host__ __device__ __forceinline__
#else
#define REPLAY_HD inline
#endif
