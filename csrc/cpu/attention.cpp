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
  m.def(
      "attention_paged_f32",
      [](uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t cu_q, uintptr_t pos0,
         uintptr_t block_table, int64_t bt_stride, int64_t page, int64_t page_stride,
         int64_t head_stride, int64_t tok_stride, int64_t S, int64_t T, int64_t Hq, int64_t Hkv,
         int64_t D, double scale, int64_t window) {
        if (D > 512) throw py::value_error("attention_paged_f32: head dim above 512");
        if (page <= 0 || page % 64)
          throw py::value_error("attention_paged_f32: the page size must be a multiple of 64");
        AttnArgs a{reinterpret_cast<const float*>(q),      reinterpret_cast<const float*>(k),
                   reinterpret_cast<const float*>(v),      reinterpret_cast<float*>(out),
                   reinterpret_cast<const int64_t*>(cu_q), reinterpret_cast<const int64_t*>(pos0),
                   nullptr, S, T, Hq, Hkv, D, float(scale), window,
                   reinterpret_cast<const int64_t*>(block_table), bt_stride, page, page_stride,
                   head_stride, tok_stride};
        py::gil_scoped_release nogil;
        kernels().attention(a);
      },
      "the same attention over paged k/v: position j of sequence s in page "
      "block_table[s, j / page], slot j % page (vLLM's KV cache)");
}

}  // namespace replay
