// Run-time choice of the CPU kernels' code path (kernels.h), and the per-thread scratch buffers.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/kernels.h"

namespace replay {

int cpu_isa() {
  // GCC's cpuid checks include the OS's xgetbv: a path counts only if its registers are saved.
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
      __builtin_cpu_supports("fma"))
    return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
  return kScalar;
}

namespace {

const Kernels* const kTables[] = {&scalar::kernels, &avx2::kernels, &avx512::kernels};

// REPLAY_CPU_ISA=scalar|avx2|avx512 caps the path (a path the CPU lacks is never chosen).
int initial_isa() {
  int isa = cpu_isa();
  if (const char* env = std::getenv("REPLAY_CPU_ISA")) {
    for (int i = 0; i <= kAvx512; ++i)
      if (std::strcmp(env, kTables[i]->name) == 0) isa = std::min(isa, i);
  }
  return isa;
}

std::atomic<int> g_isa{initial_isa()};

}  // namespace

const Kernels& kernels_for(int isa) {
  if (isa < kScalar || isa > cpu_isa())
    throw std::invalid_argument("CPU code path " + std::to_string(isa) +
                                " is not supported by this CPU (widest: " +
                                std::to_string(cpu_isa()) + ")");
  return *kTables[isa];
}

const Kernels& kernels() { return *kTables[g_isa.load(std::memory_order_relaxed)]; }

int selected_isa() { return g_isa.load(); }

void select_isa(int isa) {
  kernels_for(isa);  // throws if unsupported
  g_isa.store(isa);
}

float* scratch(int slot, int64_t n) {
  thread_local std::vector<float> bufs[4];
  std::vector<float>& b = bufs[slot];
  if (int64_t(b.size()) < n) b.resize(size_t(n));
  return b.data();
}

}  // namespace replay
