// The avx512 code path of the CPU kernels (see kernels.h).
#include "cpu/isa/prelude.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#define REPLAY_LANES 2
#define REPLAY_PATH_NAME "avx512"
namespace replay {
namespace avx512 {
#include "cpu/isa/kernels.inc"
}  // namespace avx512
}  // namespace replay
#pragma GCC pop_options
