import os

import pytest
import torch

# Without CUDA, the Triton kernels run in Triton's CPU interpreter. TRITON_INTERPRET is read when
# a kernel is decorated, so it must be set before any test module imports replay.kernels.
CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Model identities cache per-file tensor digests (replay.weights): keep the suite's out of ~/.cache.
if "REPLAY_CACHE" not in os.environ:
    import tempfile
    os.environ["REPLAY_CACHE"] = tempfile.mkdtemp(prefix="replay-cache-")

from replay.model import Model, ModelConfig  # noqa: E402

# Keep the CPU suite reproducible and light on a 2-core machine.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _fixed_order_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
    """tl.dot for the interpreter, computed as the GPU's contract needs it tested: d + sum over
    k = 0, 1, ... of a[:, k] * b[k, :], one float32 rounding per product and per add, in that
    order for every row. Triton's own interpreter calls numpy's matmul here, whose bits depend on
    the CPU's BLAS kernel (OpenBLAS's Haswell kernel gives a row other bits by its position in a
    12-row panel), so bitwise tests of the kernels would test numpy instead."""
    import numpy as np
    import triton.language as tl
    from triton.runtime.interpreter import TensorHandle, _convert_float

    def f32(h):
        if h.dtype == tl.bfloat16:  # stored as uint16 by the interpreter
            return _convert_float(h.data, tl.bfloat16, tl.float32, None).view(np.float32)
        if h.dtype.primitive_bitwidth == 8 and h.dtype.is_floating():
            return _convert_float(h.data, h.dtype, tl.float16, None).view(np.float16)\
                .astype(np.float32)
        return h.data.astype(np.float32)

    acc_dtype = d.data.dtype
    x, y = f32(a).astype(acc_dtype), f32(b).astype(acc_dtype)   # (..., M, K), (..., K, N)
    s = x[..., :, 0:1] * y[..., 0:1, :]
    for k in range(1, x.shape[-1]):
        s = s + x[..., :, k:k + 1] * y[..., k:k + 1, :]
    return TensorHandle(d.data + s, d.dtype.scalar)


def _patch_interpreter_dot():
    try:
        from triton.runtime import interpreter
    except ImportError:  # no triton: the Triton tests skip themselves
        return
    interpreter.InterpreterBuilder.create_dot = _fixed_order_dot


if not CUDA:
    _patch_interpreter_dot()


@pytest.fixture(scope="session")
def small_model() -> Model:
    # std 0.2: peaked enough that greedy and sampled tokens differ, flat enough that top-p keeps
    # several tokens.
    return Model.random(ModelConfig.preset("test-small"), seed=1, std=0.2)
