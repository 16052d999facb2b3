// Binding of the causal varlen attention (isa/attention.inc; see replay/ops.py attention).
#include <pybind11/pybind11.h>

#include <cstdint>

#include "cpu/kernels.h"
#include "registry.h"

namespace replay {

void register_attention(pybind11::module_& m) {
  namespace py = pybind11;
  m.def(
      "attention_f32",
      [](uintptr_t q, uintptr_t k_buf, uintptr_t v_buf, uintptr_t out, uintptr_t cu_q,
         uintptr_t pos0, uintptr_t kv_start, int64_t S, int64_t T, int64_t Hq, int64_t Hkv,
         int64_t D, double scale, int64_t window) {
        if (D > 512) throw py::value_error("attention_f32: head dim above 512");
        AttnArgs a{reinterpret_cast<const float*>(q),       reinterpret_cast<const float*>(k_buf),
               reinterpret_cast<const float*>(v_buf),   reinterpret_cast<float*>(out),
               reinterpret_cast<const int64_t*>(cu_q),  reinterpret_cast<const int64_t*>(pos0),
               reinterpret_cast<const int64_t*>(kv_start), S, T, Hq, Hkv, D, float(scale),
               window};
        py::gil_scoped_release nogil;
        kernels().attention(a);
      },
      "causal varlen attention of packed queries q[T,Hq,D] over k_buf/v_buf[R,Hkv,D]; out[T,Hq,D]");
}

}  // namespace replay
