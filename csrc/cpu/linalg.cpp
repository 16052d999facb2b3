// Bindings of the row kernels (isa/rows.inc) and of the code-path controls (kernels.h). The
// Python layer (replay/ops.py) checks shapes and passes data pointers of contiguous float32 rows.
#include <omp.h>
#include <pybind11/pybind11.h>

#include <cstdint>

#include "common/mathfn.h"
#include "cpu/kernels.h"
#include "registry.h"

namespace replay {
namespace {

// rp_exp kept out of line, so that the compiler cannot vectorise the reference loop of exp_f32.
[[gnu::noinline]] float scalar_exp(float x) { return rp_exp(x); }

template <class T> const T* cp(uintptr_t p) { return reinterpret_cast<const T*>(p); }
inline float* fp(uintptr_t p) { return reinterpret_cast<float*>(p); }

}  // namespace

void register_linalg(pybind11::module_& m) {
  namespace py = pybind11;
  using py::gil_scoped_release;
  m.def("rms_norm_f32", [](uintptr_t x, uintptr_t w, uintptr_t out, int64_t M, int64_t D, double eps) {
    gil_scoped_release nogil;
    kernels().rms_norm(cp<float>(x), cp<float>(w), fp(out), M, D, float(eps));
  }, "out = x * (1/sqrt(mean(x^2) + eps)) * w, per row");
  m.def("add_rms_norm_f32", [](uintptr_t x, uintptr_t res, uintptr_t w, uintptr_t out,
                               uintptr_t res_out, int64_t M, int64_t D, double eps) {
    gil_scoped_release nogil;
    kernels().add_rms_norm(cp<float>(x), cp<float>(res), cp<float>(w), fp(out), fp(res_out), M, D,
                           float(eps));
  }, "res_out = x + res; out = rms_norm(res_out)");
  m.def("silu_mul_f32", [](uintptr_t gate_up, uintptr_t out, int64_t M, int64_t F) {
    gil_scoped_release nogil;
    kernels().silu_mul(cp<float>(gate_up), fp(out), M, F);
  }, "out[M,F] = silu(gate) * up, gate_up = [gate | up]");
  m.def("rope_f32", [](uintptr_t x, uintptr_t pos, uintptr_t cos, uintptr_t sin, int64_t T,
                       int64_t H, int64_t D) {
    gil_scoped_release nogil;
    kernels().rope(fp(x), cp<int64_t>(pos), cp<float>(cos), cp<float>(sin), T, H, D);
  }, "rotary embedding in place on x[T,H,D], rotate-half");
  m.def("log_softmax_f32", [](uintptr_t x, uintptr_t out, int64_t M, int64_t N) {
    gil_scoped_release nogil;
    kernels().log_softmax(cp<float>(x), fp(out), M, N);
  }, "row-wise log-softmax of x[M,N]");
  m.def("exp_simd_f32", [](uintptr_t x, uintptr_t out, int64_t n, bool vectorised) {
    gil_scoped_release nogil;
    if (vectorised) {
      kernels().exp_vec(cp<float>(x), fp(out), n);
    } else {
      for (int64_t i = 0; i < n; ++i) fp(out)[i] = scalar_exp(cp<float>(x)[i]);
    }
  }, "rp_exp over n floats, in the kernels' vectorised loop or one scalar call at a time");
  m.def("exp_nonpos_f32", [](uintptr_t x, uintptr_t out, int64_t n) {
    gil_scoped_release nogil;
    kernels().exp_nonpos_vec(cp<float>(x), fp(out), n);
  }, "rp_exp over n floats <= 0 or NaN, by the softmaxes' exp (other inputs: unspecified)");
  m.def("cpu_isa", &cpu_isa, "the widest code path this CPU supports (0 scalar, 1 AVX2, 2 AVX-512)");
  m.def("isa", &selected_isa, "the code path the kernels run (0 scalar, 1 AVX2, 2 AVX-512)");
  m.def("isa_name", []() { return std::string(kernels().name); });
  m.def("select_isa", &select_isa, "run the kernels on another supported code path (tests)");
  m.def("add_chain", [](int64_t n) {
    gil_scoped_release nogil;
    uint64_t x = 0;
    for (int64_t i = 0; i < n; i += 8)  // 8 dependent adds per iteration, one cycle each
      asm volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                   "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
    return x;
  }, "n dependent integer adds (about n cycles), for the benchmarks' clock estimate");
  m.def("set_num_threads", [](int n) { omp_set_num_threads(n); },
        "OpenMP threads of the CPU kernels (results do not depend on it)");
  m.def("get_num_threads", []() { return omp_get_max_threads(); });
}

}  // namespace replay
