// The scalar code path of the CPU kernels (see kernels.h).
#include "cpu/isa/prelude.h"

#define REPLAY_LANES 0
#define REPLAY_PATH_NAME "scalar"
namespace replay {
namespace scalar {
#include "cpu/isa/kernels.inc"
}  // namespace scalar
}  // namespace replay
