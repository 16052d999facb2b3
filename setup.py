"""Builds the private extension replay._C.

C++ CPU kernels (csrc/cpu/*.cpp) are always built. CUDA sources (csrc/cuda/*.cu) are built when
nvcc and a CUDA toolkit are found, unless REPLAY_SKIP_CUDA_BUILD=1. The extension does not link
against torch: the Python layer (replay/ops.py) passes data pointers, shapes and strides.
"""
import glob
import os
import shutil
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _native_flags():
    # -march=native: this machine's SIMD width. Results do not depend on it: every reduction is
    # a chain of fused multiply-adds in a fixed order, and fma is exactly rounded on every ISA.
    # -ffp-contract=off: the compiler must not fuse a*b+c behind our back; the kernels say where.
    flags = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-fast-math"]
    if os.environ.get("REPLAY_PORTABLE", "0") != "1":
        flags.append("-march=native")
    else:
        flags += ["-mavx2", "-mfma"]
    return flags


cpu_sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
ext = Pybind11Extension(
    "replay._C",
    cpu_sources,
    include_dirs=[os.path.join(HERE, "csrc")],
    extra_compile_args=_native_flags(),
    extra_link_args=["-fopenmp"],
    cxx_std=17,
)

# CUDA: compiled into replay._C when available (see csrc/cuda and the GPU issue).
nvcc = shutil.which("nvcc") or (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
                                if os.environ.get("CUDA_HOME") else None)
if os.environ.get("REPLAY_SKIP_CUDA_BUILD", "0") == "1":
    nvcc = None
cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
if cuda_sources and not nvcc:
    print("replay: nvcc not found; building without CUDA kernels", file=sys.stderr)

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
