"""replay's Triton kernels for NVIDIA GPUs, installed as replay.kernels.

One file per op, each with its kernel (`_x_kernel`), the wrapper that checks, allocates and
launches (`x`), and where useful an adapter with the aten signature. Every kernel keeps the replay
contract (DESIGN §2); README.md in this folder lists their fixed configurations.

A submodule's name is always the submodule (`replay.kernels.matmul` is the module whatever was
imported first): import a wrapper from its module, `from replay.kernels.matmul import matmul`.
The package also exports the wrappers whose names no module has (mm, rms_norm, ...). Everything
loads lazily: `import replay.kernels` works without triton, and the first use of a kernel says
that triton is missing.
"""
import importlib

_MODULES = ("matmul", "rmsnorm", "log_softmax", "elementwise", "attention")
_EXPORTS = {
    "mm": "matmul", "addmm": "matmul", "MATMUL_CONFIGS": "matmul",
    "rms_norm": "rmsnorm", "add_rms_norm": "rmsnorm",
    "silu_mul": "elementwise", "rope_": "elementwise",
    "ATTENTION_CONFIGS": "attention", "AttentionConfig": "attention",
}

__all__ = sorted(_EXPORTS) + ["available"]


def available() -> bool:
    """True when triton can be imported (the kernels need it, on GPU or in its interpreter)."""
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def __getattr__(name):
    if name not in _EXPORTS and name not in _MODULES:
        raise AttributeError(f"module 'replay.kernels' has no attribute {name!r}")
    if not available():
        raise ImportError(f"replay.kernels.{name} needs triton (pip install triton); the CPU "
                          "path of replay.ops runs without it")
    mod = importlib.import_module(f"{__name__}.{_EXPORTS.get(name, name)}")
    return mod if name in _MODULES else getattr(mod, name)
