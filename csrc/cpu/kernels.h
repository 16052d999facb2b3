// The CPU kernels' code paths and their run-time dispatch.
//
// Every kernel body (csrc/cpu/isa/*.inc) is compiled three times, once per code path, by
// isa_scalar.cpp (x86-64 baseline), isa_avx2.cpp (AVX2 + FMA) and isa_avx512.cpp (AVX-512F),
// each inside its own namespace and `#pragma GCC target` region; the rest of the extension is
// baseline code. At import, dispatch.cpp picks the widest path that the CPU (cpuid) and the OS
// (xgetbv) support, so one build runs on any x86-64. The paths give the same bits (lanes.inc);
// the tests run every one this machine supports. REPLAY_CPU_ISA=scalar|avx2|avx512 caps the pick.
#pragma once
#include <cstdint>
#include <cstring>

namespace replay {

enum Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

inline float bf16_to_f32(uint16_t h) {  // exact: bfloat16 is the high half of a float32
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// A per-thread, grow-only buffer of n floats (slot 0, 1: independent buffers); never freed.
float* scratch(int slot, int64_t n);

struct AttnArgs {
  const float *q, *k, *v;
  float* out;
  const int64_t *cu_q, *pos0, *kv_start;
  int64_t S, T, Hq, Hkv, D;
  float scale;
  int64_t window;
  // paged keys and values (block_table != nullptr, vLLM's KV cache): element (page, head, slot,
  // d) of k and v at page * page_stride + head * head_stride + slot * tok_stride + d; page is a
  // multiple of the attention's 64-key block, so a key block never straddles two pages
  const int64_t* block_table = nullptr;
  int64_t bt_stride = 0, page = 0, page_stride = 0, head_stride = 0, tok_stride = 0;

  // The keys (or values) of key block [b0, b0 + 64) of sequence s, KV head kvh: a pointer to
  // position b0, consecutive positions tok() floats apart.
  const float* kblock(const float* base, int64_t s, int64_t kvh, int64_t b0) const {
    if (!block_table) return base + (kv_start[s] + b0) * Hkv * D + kvh * D;
    return base + block_table[s * bt_stride + b0 / page] * page_stride + kvh * head_stride +
           (b0 % page) * tok_stride;
  }
  int64_t tok() const { return block_table ? tok_stride : Hkv * D; }
};

struct SampleArgs {
  const float* logits;  // [M, V], rows `stride` floats apart
  int64_t M, V, stride;
  const float *T, *top_p;
  const int64_t *top_k, *seed, *pos;
};

struct ScoreOut {
  int64_t *choice, *rank, *kept;
  float *logprob, *margin;
  uint8_t *in_top_k, *in_top_p;
};

// Matmul schedules (gemm.inc): 0 = 6 rows x 16 columns (AVX2's), 1 = 12 x 32 (AVX-512's),
// 2 = 4 x 16 (AVX2's at short K).
constexpr int kSchedules = 3;

// out[M,N] = x[M,K] @ w^T (+ bias); w packed by pack_weights (gemm.cpp), bias padded to panels.
using LinearF32 = void (*)(const float* x, int64_t M, const float* w, const float* bias, int64_t N,
                           int64_t K, float* out);
using LinearBf16 = void (*)(const float* x, int64_t M, const uint16_t* w, const float* bias,
                            int64_t N, int64_t K, float* out);

struct Kernels {
  const char* name;
  LinearF32 linear_f32;
  LinearBf16 linear_bf16;
  LinearF32 linear_sched[kSchedules];  // float32 on each schedule, for the tests
  void (*rms_norm)(const float* x, const float* w, float* out, int64_t M, int64_t D, float eps);
  void (*add_rms_norm)(const float* x, const float* res, const float* w, float* out,
                       float* res_out, int64_t M, int64_t D, float eps);
  void (*silu_mul)(const float* gate_up, float* out, int64_t M, int64_t F);
  void (*rope)(float* x, const int64_t* pos, const float* cos, const float* sin, int64_t T,
               int64_t H, int64_t D);
  void (*log_softmax)(const float* x, float* out, int64_t M, int64_t N);
  void (*exp_vec)(const float* x, float* out, int64_t n);
  void (*exp_nonpos_vec)(const float* x, float* out, int64_t n);  // x <= 0 or NaN
  void (*attention)(const AttnArgs& a);
  void (*sample)(const SampleArgs& a, int64_t* out);
  void (*score)(const SampleArgs& a, const int64_t* claimed, const ScoreOut& o);
};

namespace scalar { extern const Kernels kernels; }
namespace avx2 { extern const Kernels kernels; }
namespace avx512 { extern const Kernels kernels; }

int cpu_isa();                  // the widest path this CPU and OS support
const Kernels& kernels();       // the selected path
const Kernels& kernels_for(int isa);  // a given path; throws std::invalid_argument if unsupported
int selected_isa();
void select_isa(int isa);       // for the tests; throws if unsupported

}  // namespace replay
