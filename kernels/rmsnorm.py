"""RMSNorm and the fused residual add + RMSNorm, one row per program.

A row's sum of squares runs over fixed BLOCK_D-wide blocks from column 0 upwards into one
BLOCK_D-lane float32 accumulator, then one tl.sum over the lanes: the order depends only on D and
BLOCK_D, never on the number of rows.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check, check_float

# Fixed for every D and every dtype (never tuned on the row count, which would change the order).
BLOCK_D = 1024
NUM_WARPS = 4


@triton.jit
def _residual_row(x_ptr, res_ptr, res_out_ptr, row, stride_x, stride_res, c, ok,
                  HAS_RESIDUAL: tl.constexpr):
    """Columns c of row `row`: x, or x + residual rounded to the residual stream's dtype."""
    h = tl.load(x_ptr + row * stride_x + c, mask=ok, other=0.0)
    if HAS_RESIDUAL:
        h = h.to(tl.float32) + tl.load(res_ptr + row * stride_res + c, mask=ok,
                                       other=0.0).to(tl.float32)
        h = h.to(res_out_ptr.dtype.element_ty)  # the residual stream keeps the input dtype
    return h


@triton.jit
def _rms_norm_kernel(
    # pointers
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
    # sizes and strides (elements; rows are contiguous)
    D, stride_x, stride_res, stride_out, stride_res_out,
    eps,
    # compile-time configuration
    BLOCK_D: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    # pass 1: (residual add and its store) and the sum of squares, block by block
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        c = d0 + cols
        ok = c < D
        h = _residual_row(x_ptr, res_ptr, res_out_ptr, row, stride_x, stride_res, c, ok,
                          HAS_RESIDUAL)
        if HAS_RESIDUAL:
            tl.store(res_out_ptr + row * stride_res_out + c, h, mask=ok)
        h = h.to(tl.float32)
        acc += h * h
    r = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / D + eps)
    # pass 2: recompute h (cheaper than a barrier to read back the stored residual) and scale
    for d0 in range(0, D, BLOCK_D):
        c = d0 + cols
        ok = c < D
        h = _residual_row(x_ptr, res_ptr, res_out_ptr, row, stride_x, stride_res, c, ok,
                          HAS_RESIDUAL)
        w = tl.load(w_ptr + c, mask=ok, other=0.0).to(tl.float32)
        y = (h.to(tl.float32) * r) * w
        tl.store(out_ptr + row * stride_out + c, y.to(out_ptr.dtype.element_ty), mask=ok)


def _rows(name: str, t: torch.Tensor) -> torch.Tensor:
    check_float(name, t, 2)
    return t if t.stride(1) == 1 else t.contiguous()


def _launch(x, res, w, eps):
    x = _rows("x", x)
    check_float("w", w, 1)
    M, D = x.shape
    check(w.shape[0] == D, f"rms_norm: x is {tuple(x.shape)}, w is {tuple(w.shape)}")
    w = w.contiguous()
    out = torch.empty_like(x)
    res_out = None
    if res is not None:
        res = _rows("residual", res)
        check(res.shape == x.shape, f"add_rms_norm: x is {tuple(x.shape)}, residual is "
                                    f"{tuple(res.shape)}")
        res_out = torch.empty_like(x)
    if M and D:
        r, ro = (res, res_out) if res is not None else (x, out)  # unused pointers when no residual
        _rms_norm_kernel[(M,)](
            x, r, w, out, ro,
            D, x.stride(0), r.stride(0), out.stride(0), ro.stride(0),
            float(eps),
            BLOCK_D=BLOCK_D, HAS_RESIDUAL=res is not None, num_warps=NUM_WARPS)
    return out, res_out


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """x * (1 / sqrt(mean(x^2) + eps)) * w over the last dim.  x: (M, D), w: (D,) -> (M, D)."""
    return _launch(x, None, w, eps)[0]


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor, eps: float):
    """residual' = x + residual (rounded to x.dtype); returns (rms_norm(residual', w), residual').
    x, residual: (M, D), w: (D,). The first result equals rms_norm(x + residual) bitwise."""
    return _launch(x, residual, w, eps)
