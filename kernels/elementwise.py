"""Elementwise kernels: silu_mul (the SwiGLU gate) and rotary embedding in place.

No reductions: each output element is a fixed expression of its inputs, so batch invariance only
asks that the engine and the verifier run these same kernels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check, check_float, next_pow2

SILU_BLOCK = 1024
ROPE_BLOCK_H = 4  # heads per program


@triton.jit
def _silu_mul_kernel(
    # pointers
    gu_ptr, out_ptr,
    # sizes and strides (elements; rows are contiguous)
    F, stride_gu, stride_out,
    # compile-time configuration
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = c < F
    g = tl.load(gu_ptr + row * stride_gu + c, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + row * stride_gu + F + c, mask=ok, other=0.0).to(tl.float32)
    y = (g / (1.0 + tl.exp(-g))) * u
    tl.store(out_ptr + row * stride_out + c, y.to(out_ptr.dtype.element_ty), mask=ok)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up with gate_up = [gate | up] on the last dim.  (M, 2F) -> (M, F)."""
    check_float("gate_up", gate_up, 2)
    check(gate_up.shape[1] % 2 == 0, f"silu_mul: last dim {gate_up.shape[1]} is odd")
    if gate_up.stride(1) != 1:
        gate_up = gate_up.contiguous()
    M, F = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty(M, F, dtype=gate_up.dtype, device=gate_up.device)
    if M and F:
        _silu_mul_kernel[(M, triton.cdiv(F, SILU_BLOCK))](
            gate_up, out, F, gate_up.stride(0), out.stride(0), BLOCK=SILU_BLOCK)
    return out


@triton.jit
def _rope_kernel(
    # pointers
    x_ptr, pos_ptr, cos_ptr, sin_ptr,
    # sizes and strides (elements)
    H, HALF, stride_xt, stride_xh, stride_cs,
    # compile-time configuration
    BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_HALF)
    pos = tl.load(pos_ptr + t)
    c_ok = cols < HALF
    c = tl.load(cos_ptr + pos * stride_cs + cols, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    s = tl.load(sin_ptr + pos * stride_cs + cols, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    ok = (heads[:, None] < H) & c_ok[None, :]
    p1 = x_ptr + t * stride_xt + heads[:, None] * stride_xh + cols[None, :]  # (BLOCK_H, BLOCK_HALF)
    x1 = tl.load(p1, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(p1 + HALF, mask=ok, other=0.0).to(tl.float32)
    tl.store(p1, (x1 * c - x2 * s).to(x_ptr.dtype.element_ty), mask=ok)
    tl.store(p1 + HALF, (x2 * c + x1 * s).to(x_ptr.dtype.element_ty), mask=ok)


def rope_(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
          sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in place, rotate-half convention; returns x.

    x: (T, H, D) with unit stride on D, positions: (T,) integer, cos/sin: (P, D/2).
    out[:h] = x[:h]*cos - x[h:]*sin ; out[h:] = x[h:]*cos + x[:h]*sin, with h = D/2.
    """
    check_float("x", x, 3)
    check(x.stride(2) == 1, "rope_: x needs unit stride on its last dim (it is updated in place)")
    T, H, D = x.shape
    check(D % 2 == 0, f"rope_: head dim {D} is odd")
    check_float("cos", cos, 2)
    check(cos.shape == sin.shape and cos.shape[1] * 2 == D,
          f"rope_: head dim {D} needs cos/sin tables of width {D // 2}, got {tuple(cos.shape)} "
          f"and {tuple(sin.shape)}")
    check(positions.shape == (T,) and not positions.is_floating_point(),
          f"rope_: positions must be ({T},) integers, got {positions.dtype} "
          f"{tuple(positions.shape)}")
    cos, sin = cos.contiguous(), sin.contiguous()
    if T and H:
        _rope_kernel[(T, triton.cdiv(H, ROPE_BLOCK_H))](
            x, positions.contiguous(), cos, sin,
            H, D // 2, x.stride(0), x.stride(1), cos.stride(0),
            BLOCK_H=ROPE_BLOCK_H, BLOCK_HALF=next_pow2(D // 2))
    return x
