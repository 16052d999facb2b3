#include "registry.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "replay's private kernels (CPU; CUDA when built). Called only from replay/ops.py "
            "and replay/sampling.py, which check arguments and pass raw pointers.";
  replay::register_gemm(m);
  replay::register_linalg(m);
  replay::register_attention(m);
  replay::register_sampler(m);
#ifdef REPLAY_WITH_CUDA
  replay::register_cuda(m);
#else
  m.attr("has_cuda") = false;
#endif
}
