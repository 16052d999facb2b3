"""Invariant mode: route torch's own ops to replay's batch-invariant kernels, for code that calls
torch directly (a Hugging Face model, an engine's sampler) rather than replay.ops.

    with invariant.invariant_mode():
        logits = hf_model(input_ids).logits   # mm/addmm/bmm/linear/softmax/... via replay

While enabled, these aten ops are overridden with torch.library on the CPU and CUDA dispatch keys
(global: every thread sees the mode):

    aten op          torch entry points            CPU (float32)              CUDA (fp32/bf16/fp16)
    mm               torch.mm, @, F.linear (no bias) ops.linear (C++)         kernels.matmul.mm
    addmm            torch.addmm, F.linear (bias)  ops.linear (+ bias)        kernels.matmul.addmm
    bmm              torch.bmm, 3-D @              ops.linear per batch       kernels.matmul.matmul
    _log_softmax     F.log_softmax                 ops.log_softmax            kernels.log_softmax
    _softmax         F.softmax, torch.softmax      exp(ops.log_softmax)       exp(log_softmax f32)
    mean.dim         Tensor.mean(-1)               ops.linear(x, ones) / N    matmul(x, ones) / N
    rms_norm         F.rms_norm                    ops.rms_norm               kernels.rms_norm

Each replacement keeps a row's result independent of the other rows (DESIGN §2): softmax is an
elementwise exp of the row-invariant log-softmax; a row mean is the fixed-order dot product of the
row with ones. Cases the kernels do not cover fall back to torch's original kernel for that
dispatch key, fetched with torch.library.get_kernel before the override (so the fallback is the
op that would have run without the mode, not a re-dispatch): other dtypes (CPU: anything but
float32; CUDA: anything but float32/bf16/fp16), softmax/mean over a dimension other than the last,
mean over several dims or with a dtype, addmm with beta/alpha other than 1 on CUDA, and
half_to_float. Inference only: the replacements have no autograd formulas.

Needs torch >= 2.9 (torch.library.get_kernel).
"""
from __future__ import annotations

import contextlib
import threading
import warnings

import torch

from replay import ops

_lock = threading.RLock()
_lib = None          # the torch.library.Library holding the overrides while enabled
_orig = {}           # (op, dispatch key) -> the kernel that was there before


def is_enabled() -> bool:
    return _lib is not None


def enable() -> None:
    """Route the ops above to replay's kernels (no-op when already enabled)."""
    global _lib
    with _lock:
        if _lib is not None:
            return
        if not hasattr(torch.library, "get_kernel"):
            raise RuntimeError("replay.invariant needs torch >= 2.9 (torch.library.get_kernel), "
                               f"this is torch {torch.__version__}")
        keys = ["CPU"] + (["CUDA"] if torch.cuda.is_available() else [])
        lib = torch.library.Library("aten", "IMPL")
        try:
            with warnings.catch_warnings():  # "overriding a previously registered kernel"
                warnings.simplefilter("ignore")
                for op, impl in _IMPLS.items():
                    for key in keys:
                        _orig[(op, key)] = torch.library.get_kernel("aten::" + op, key)
                        lib.impl(op, _wrap(op, key, impl), key, with_keyset=True)
        except BaseException:
            lib._destroy()
            _orig.clear()
            raise
        _lib = lib


def disable() -> None:
    """Restore torch's own kernels (no-op when not enabled)."""
    global _lib
    with _lock:
        if _lib is None:
            return
        _lib._destroy()
        _lib = None
        _orig.clear()


@contextlib.contextmanager
def invariant_mode(enabled: bool = True):
    """Run the enclosed code with invariant mode on (or off), then restore the previous state,
    also when the body raises. Nests."""
    prev = is_enabled()
    enable() if enabled else disable()
    try:
        yield
    finally:
        enable() if prev else disable()


# ---------------------------------------------------------------------------------------------
# the replacements: each raises _Fallback when the kernels do not cover the call

class _Fallback(Exception):
    pass


def _wrap(op, key, impl):
    orig = _orig[(op, key)]

    def kernel(keyset, *args, **kwargs):
        try:
            return impl(key, *args, **kwargs)
        except _Fallback:
            return orig.call_boxed(keyset, *args, **kwargs)
    kernel.__name__ = f"replay_invariant_{op.replace('.', '_')}_{key}"
    return kernel


def _need(cond: bool):
    if not cond:
        raise _Fallback


def _covered(key, *ts):
    """All tensors of one supported dtype for this dispatch key."""
    dt = ts[0].dtype
    _need(all(isinstance(t, torch.Tensor) and t.dtype == dt for t in ts))
    _need(dt == torch.float32 if key == "CPU" else dt in ops._CUDA_DTYPES)


def _last_dim(x, dim) -> int:
    _need(x.dim() >= 1 and x.shape[-1] > 0)
    _need(dim in (-1, x.dim() - 1))
    return x.shape[-1]


def _replay_cpu():
    return ops.backend("replay")  # the C++ kernels, even if the caller chose the torch backend


def _mm(key, a, b):
    _covered(key, a, b)
    _need(a.dim() == 2 and b.dim() == 2)
    if key == "CPU":
        with _replay_cpu():
            return ops.linear(a, b.t())
    from replay.kernels.matmul import mm
    return mm(a, b)


def _addmm(key, bias, a, b, beta=1, alpha=1):
    _covered(key, bias, a, b)
    _need(a.dim() == 2 and b.dim() == 2)
    N = b.shape[1]
    if key == "CUDA":
        _need(beta == 1 and alpha == 1 and bias.dim() == 1 and bias.shape[0] == N)
        from replay.kernels.matmul import addmm
        return addmm(bias, a, b)
    with _replay_cpu():
        if beta == 1 and alpha == 1 and bias.dim() == 1 and bias.shape[0] == N:
            return ops.linear(a, b.t(), bias)
        out = ops.linear(a, b.t())
    # elementwise from here on: each output element depends on its own row only
    out = out if alpha == 1 else out * alpha
    return out if beta == 0 else out + (bias if beta == 1 else bias * beta)


def _bmm(key, a, b):
    _covered(key, a, b)
    _need(a.dim() == 3 and b.dim() == 3 and a.shape[0] == b.shape[0])
    out = torch.empty(a.shape[0], a.shape[1], b.shape[2], dtype=a.dtype, device=a.device)
    if key == "CPU":
        with _replay_cpu():
            for i in range(a.shape[0]):
                out[i] = ops.linear(a[i], b[i].t())
    else:
        from replay.kernels.matmul import matmul
        for i in range(a.shape[0]):
            out[i] = matmul(a[i], b[i].t())
    return out


def _rows(x):
    return x.reshape(-1, x.shape[-1])


def _log_softmax_rows(key, x2):
    if key == "CPU":
        with _replay_cpu():
            return ops.log_softmax(x2)
    from replay.kernels.log_softmax import log_softmax
    return log_softmax(x2)


def _log_softmax(key, x, dim, half_to_float):
    _covered(key, x)
    _last_dim(x, dim)
    _need(not half_to_float)
    return _log_softmax_rows(key, _rows(x)).reshape(x.shape)


def _softmax(key, x, dim, half_to_float):
    _covered(key, x)
    _last_dim(x, dim)
    _need(not half_to_float)
    return torch.exp(_log_softmax_rows(key, _rows(x).float())).to(x.dtype).reshape(x.shape)


def _mean(key, x, dim, keepdim=False, dtype=None):
    _covered(key, x)
    _need(dtype is None and dim is not None and len(dim) == 1)
    N = _last_dim(x, dim[0])
    x2 = _rows(x)
    ones = torch.ones(1, N, dtype=x.dtype, device=x.device)
    if key == "CPU":
        with _replay_cpu():
            s = ops.linear(x2, ones)
    else:
        from replay.kernels.matmul import matmul
        s = matmul(x2, ones, out_dtype=torch.float32)
    shape = x.shape[:-1] + ((1,) if keepdim else ())
    return (s / N).to(x.dtype).reshape(shape)


def _rms_norm(key, x, normalized_shape, weight=None, eps=None):
    _covered(key, x, *([weight] if weight is not None else []))
    _need(len(normalized_shape) == 1 and x.dim() >= 1 and x.shape[-1] == normalized_shape[0])
    D = x.shape[-1]
    w = weight if weight is not None else torch.ones(D, dtype=x.dtype, device=x.device)
    eps = torch.finfo(x.dtype).eps if eps is None else float(eps)
    if key == "CPU":
        with _replay_cpu():
            return ops.rms_norm(_rows(x), w, eps).reshape(x.shape)
    from replay.kernels.rmsnorm import rms_norm
    return rms_norm(_rows(x), w, eps).reshape(x.shape)


_IMPLS = {
    "mm": _mm, "addmm": _addmm, "bmm": _bmm, "_log_softmax": _log_softmax,
    "_softmax": _softmax, "mean.dim": _mean, "rms_norm": _rms_norm,
}
