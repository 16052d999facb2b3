"""Builds the private extension replay._C.

C++ CPU kernels (csrc/cpu/*.cpp) are always built. CUDA sources (csrc/cuda/*.cu) are built when
nvcc and a CUDA toolkit are found, unless REPLAY_SKIP_CUDA_BUILD=1. The extension does not link
against torch: the Python layer (replay/ops.py) passes data pointers, shapes and strides.
"""
import glob
import os
import shutil
import sys

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup
try:
    from setuptools.modified import newer_group
except ImportError:  # setuptools < 69
    from setuptools.dep_util import newer_group

HERE = os.path.dirname(os.path.abspath(__file__))
# C++ sources compile in parallel (NPY_NUM_BUILD_JOBS, default: every core): on a lent GPU
# machine the build is part of a 6-minute first run (docs/gpu.md).
ParallelCompile("NPY_NUM_BUILD_JOBS", default=0).install()


def _cpu_flags():
    # The default build runs on any x86-64: the kernels are compiled once per code path (scalar,
    # AVX2+FMA, AVX-512) under `#pragma GCC target` (csrc/cpu/isa_*.cpp) and picked at import by
    # cpuid; the rest is baseline code. REPLAY_NATIVE=1 adds -march=native (this machine only).
    # The bits do not depend on either: every reduction is a chain of fused multiply-adds in a
    # fixed order, and fma is exactly rounded on every path.
    # -ffp-contract=off: the compiler must not fuse a*b+c behind our back; the kernels say where.
    # -fno-trapping-math (after -fno-fast-math, which resets it): no FP exception is ever read,
    # and without it GCC will not if-convert the selects of rp_exp / rp_log, so their loops do not
    # vectorise. It changes no value (the golden digests and the exp-bits test check).
    flags = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-fast-math", "-fno-trapping-math"]
    if os.environ.get("REPLAY_NATIVE", "0") == "1":
        flags.append("-march=native")
    return flags


def _cuda_home(nvcc):
    for d in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if d and os.path.isdir(os.path.join(d, "include")):
            return d
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def _find_nvcc():
    if os.environ.get("REPLAY_SKIP_CUDA_BUILD", "0") == "1":
        return None
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


# -fmad=false: like -ffp-contract=off on the host, nvcc must not fuse a*b+c where we did not ask.
# sm_80 / sm_90 machine code, plus compute_90 PTX that newer GPUs can JIT.
NVCC_FLAGS = ["-O3", "-std=c++17", "-fmad=false", "-Xcompiler", "-fPIC", "-I" + os.path.join(HERE, "csrc"),
              "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
              "-gencode", "arch=compute_90,code=compute_90"]

cpu_sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
headers = sorted(glob.glob(os.path.join("csrc", "*", "*.h")) +
                 glob.glob(os.path.join("csrc", "cpu", "isa", "*")))
cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
nvcc = _find_nvcc() if cuda_sources else None
if cuda_sources and not nvcc:
    print("replay: nvcc not found (or REPLAY_SKIP_CUDA_BUILD=1); building without CUDA kernels",
          file=sys.stderr)

sources, macros, link_args = cpu_sources, [], ["-fopenmp"]
if nvcc:
    # The pybind11 glue of the CUDA kernels is host C++; the .cu files are compiled by BuildExt.
    # cudart is linked statically: `import replay._C` needs no libcudart, GPU or driver; the
    # driver is loaded at the first CUDA call.
    cuda_lib = next((d for d in (os.path.join(_cuda_home(nvcc), sub) for sub in
                                 ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib")))
                     if os.path.exists(os.path.join(d, "libcudart_static.a"))), None)
    if cuda_lib is None:
        print("replay: libcudart_static.a not found; building without CUDA kernels",
              file=sys.stderr)
        nvcc = None
    else:
        sources = cpu_sources + sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        macros = [("REPLAY_WITH_CUDA", "1")]
        link_args = link_args + ["-L" + cuda_lib, "-lcudart_static", "-ldl", "-lrt", "-lpthread"]

ext = Pybind11Extension(
    "replay._C",
    sources,
    include_dirs=[os.path.join(HERE, "csrc")],
    define_macros=macros,
    extra_compile_args=_cpu_flags(),
    extra_link_args=link_args,
    depends=headers + cuda_sources,
    cxx_std=17,
)


class BuildExt(build_ext):
    """pybind11's build_ext, plus: csrc/cuda/*.cu compiled by nvcc and linked into replay._C."""

    def build_extension(self, ext):
        if nvcc:
            stale = self.force or newer_group(ext.sources + ext.depends,
                                              self.get_ext_fullpath(ext.name), "newer")
            ext.extra_objects = []
            for src in cuda_sources:
                obj = os.path.join(self.build_temp, src[:-3] + ".o")
                if stale or not os.path.exists(obj):
                    os.makedirs(os.path.dirname(obj), exist_ok=True)
                    self.spawn([nvcc, *NVCC_FLAGS, "-c", src, "-o", obj])
                ext.extra_objects.append(obj)
        super().build_extension(ext)


setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt})
