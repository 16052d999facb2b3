"""y = x @ w.T (+ bias), batch-invariant: row m of y depends only on x[m], w and bias.

A persistent kernel: min(NUM_SMS, tiles) programs walk the output tiles in one fixed order, and
every tile reduces K in BLOCK_K steps from k = 0 upwards with the same tl.dot instruction shape.
A row's bits therefore depend neither on M nor on the row's place in its tile.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check, check_float, num_sms

# One tile configuration per dtype, never @triton.autotune keyed on M: autotuning would pick a
# configuration (BLOCK_K, the instruction shape, split-K) per batch size, and with it the order in
# which K is reduced, so the same row would get different bits in batches of different sizes.
# float32 uses IEEE fp32 products (no TF32) so that the CPU reference tolerance holds on GPU.
MATMUL_CONFIGS = {
    torch.bfloat16: dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_stages=3,
                         num_warps=8, PRECISION="tf32"),  # PRECISION only matters for fp32 inputs
    torch.float16: dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_stages=3,
                        num_warps=8, PRECISION="tf32"),
    torch.float32: dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_stages=3,
                        num_warps=4, PRECISION="ieee"),
}


def _metadata(grid, kernel, args):
    M, N, K = args["M"], args["N"], args["K"]
    return {"name": f"matmul [M={M}, N={N}, K={K}]", "flops": 2 * M * N * K}


# M is never specialised (Triton makes an int argument equal to 1 a constant): decode (M = 1) and
# prefill run one compiled kernel.
@triton.jit(launch_metadata=_metadata, do_not_specialize=["M"])
def _matmul_kernel(
    # pointers
    x_ptr, w_ptr, bias_ptr, out_ptr,
    # sizes
    M, N, K,
    # strides (elements)
    stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_on,
    # compile-time configuration
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, PRECISION: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)  # not a constexpr: one compiled kernel for every grid size
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    n_tiles = tiles_m * tiles_n
    n_k = tl.cdiv(K, BLOCK_K)
    for tile in range(pid, n_tiles, n_programs):
        # grouped order (GROUP_M row tiles share each column of w while it sits in L2); the order
        # only decides which program computes a tile, never how the tile is computed
        group = tile // (GROUP_M * tiles_n)
        first_m = group * GROUP_M
        rows_in_group = tl.minimum(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (tile % (GROUP_M * tiles_n)) % rows_in_group
        pid_n = (tile % (GROUP_M * tiles_n)) // rows_in_group

        offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        offs_k = tl.arange(0, BLOCK_K)
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk  # (BM, BK)
        w_ptrs = w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk  # (BK, BN)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kb in range(0, n_k):
            k_ok = offs_k < K - kb * BLOCK_K
            a = tl.load(x_ptrs, mask=(offs_m[:, None] < M) & k_ok[None, :], other=0.0)
            b = tl.load(w_ptrs, mask=(offs_n[None, :] < N) & k_ok[:, None], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            x_ptrs += BLOCK_K * stride_xk
            w_ptrs += BLOCK_K * stride_wk
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        o_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
        tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty),
                 mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def matmul(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
           out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x @ w.T + bias.   x: (M, K), w: (N, K), bias: (N,) or None -> (M, N) in out_dtype
    (default x.dtype). Any strides; x and w share one dtype."""
    check_float("x", x, 2)
    check_float("w", w, 2)
    check(x.dtype == w.dtype, f"matmul: x is {x.dtype} but w is {w.dtype}")
    check(x.shape[1] == w.shape[1], f"matmul: x is {tuple(x.shape)} but w is {tuple(w.shape)}")
    check(x.device == w.device, f"matmul: x is on {x.device}, w on {w.device}")
    M, K = x.shape
    N = w.shape[0]
    if bias is not None:
        check_float("bias", bias, 1)
        check(bias.shape[0] == N, f"matmul: bias has {bias.shape[0]} entries, w has {N} rows")
    out = torch.empty(M, N, dtype=out_dtype or x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.copy_(bias.expand(M, N)) if bias is not None else out.zero_()
    cfg = dict(MATMUL_CONFIGS[x.dtype])
    n_tiles = triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"])
    programs = min(num_sms(x.device), n_tiles)
    _matmul_kernel[(programs,)](
        x, w, bias if bias is not None else x, out,
        M, N, K,
        x.stride(0), x.stride(1), w.stride(0), w.stride(1), out.stride(0), out.stride(1),
        HAS_BIAS=bias is not None, **cfg)
    return out


# aten-signature adapters: b is (K, N) there, i.e. w = b.T, which the strides express for free.

def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """aten.mm: a (M, K) @ b (K, N)."""
    return matmul(a, b.t())


def addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """aten.addmm with beta = alpha = 1 and a 1-D bias: bias + a @ b."""
    return matmul(a, b.t(), bias)
