"""Loads the private extension replay._C, and says what is missing when it is not there.

Only replay/ops.py and replay/sampling.py call _C. `import replay` never fails because of it.

The CPU kernels run on the widest code path the CPU supports (AVX-512, AVX2 + FMA, or scalar
x86-64; the same bits on each). REPLAY_CPU_ISA=scalar|avx2|avx512 caps the choice.
"""
import os

_C = None
_ERR = None
ISAS = ("scalar", "avx2", "avx512")

try:  # pragma: no cover - exercised by every test that runs a kernel
    from replay import _C as _C  # noqa: F401
except ImportError as e:  # the package was imported from a source tree that was never built
    _ERR = e


def C():
    """The extension module, or a clear error that says how to build it."""
    if _C is None:
        raise RuntimeError(
            "replay._C is not built (" + str(_ERR) + "). Build it with `pip install -e .` "
            "or `python setup.py build_ext --inplace` from the repository root.")
    isa = os.environ.get("REPLAY_CPU_ISA")
    if isa and isa not in ISAS:
        raise RuntimeError(f"REPLAY_CPU_ISA={isa!r}: expected one of {', '.join(ISAS)}")
    return _C
