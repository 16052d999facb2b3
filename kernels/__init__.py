"""replay's Triton kernels for NVIDIA GPUs, installed as replay.kernels.

One file per op, each with its kernel (`_x_kernel`), the wrapper that checks, allocates and
launches (`x`), and where useful an adapter with the aten signature. Every kernel keeps the replay
contract (DESIGN §2); README.md in this folder lists their fixed configurations.

Names load lazily: `import replay.kernels` works without triton, and the first use of a kernel
says that triton is missing. Three modules share their op's name (matmul, log_softmax, attention):
the package attribute is the function; import from the module (`from replay.kernels.matmul
import matmul`) where the module itself might have been imported first.
"""
import importlib

_EXPORTS = {
    "matmul": "matmul", "mm": "matmul", "addmm": "matmul", "MATMUL_CONFIGS": "matmul",
    "rms_norm": "rmsnorm", "add_rms_norm": "rmsnorm",
    "log_softmax": "log_softmax",
    "silu_mul": "elementwise", "rope_": "elementwise",
    "attention": "attention", "ATTENTION_CONFIGS": "attention", "AttentionConfig": "attention",
    "sample": "sampler",
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
    if name not in _EXPORTS:
        raise AttributeError(f"module 'replay.kernels' has no attribute {name!r}")
    if not available():
        raise ImportError(f"replay.kernels.{name} needs triton (pip install triton); the CPU "
                          "path of replay.ops runs without it")
    mod_name = _EXPORTS[name]
    mod = importlib.import_module(f"{__name__}.{mod_name}")
    # importing the submodule bound its name here; bind the functions over it
    globals().update({n: getattr(mod, n) for n, m in _EXPORTS.items() if m == mod_name})
    return globals()[name]
