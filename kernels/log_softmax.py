"""Row-wise log-softmax, one row per program.

Pass 1 keeps, per lane of a BLOCK_N-wide float32 vector, a running max and a running sum of
exp(x - max), over fixed blocks from column 0 upwards; the lanes then merge in one reduction.
Pass 2 writes (x - max) - log(sum). The order depends only on N and BLOCK_N, never on M.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_float

# Fixed for every N and dtype (never tuned on the row count, which would change the order).
BLOCK_N = 1024
NUM_WARPS = 4


@triton.jit
def _log_softmax_kernel(
    # pointers
    x_ptr, out_ptr,
    # sizes and strides (elements; rows are contiguous)
    N, stride_x, stride_out,
    # compile-time configuration
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        c = n0 + cols
        x = tl.load(x_ptr + row * stride_x + c, mask=c < N, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a lane that has seen only -inf
        s = s * tl.exp(m - m_use) + tl.exp(x - m_use)
        m = m_new
    mx = tl.max(m, axis=0)
    mx_use = tl.where(mx == float("-inf"), 0.0, mx)
    log_sum = tl.log(tl.sum(s * tl.exp(m - mx_use), axis=0))
    for n0 in range(0, N, BLOCK_N):
        c = n0 + cols
        x = tl.load(x_ptr + row * stride_x + c, mask=c < N, other=0.0).to(tl.float32)
        y = (x - mx) - log_sum
        tl.store(out_ptr + row * stride_out + c, y.to(out_ptr.dtype.element_ty), mask=c < N)


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    """log_softmax over the last dim.  x: (M, N) -> (M, N), same dtype."""
    check_float("x", x, 2)
    if x.stride(1) != 1:
        x = x.contiguous()
    M, N = x.shape
    out = torch.empty_like(x)
    if M and N:
        _log_softmax_kernel[(M,)](x, out, N, x.stride(0), out.stride(0),
                                  BLOCK_N=BLOCK_N, num_warps=NUM_WARPS)
    return out
