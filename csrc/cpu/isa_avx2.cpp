// The avx2 code path of the CPU kernels (see kernels.h).
#include "cpu/isa/prelude.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define REPLAY_LANES 1
#define REPLAY_PATH_NAME "avx2"
namespace replay {
namespace avx2 {
#include "cpu/isa/kernels.inc"
}  // namespace avx2
}  // namespace replay
#pragma GCC pop_options
