"""Shared helpers of the Triton kernels: dtype table, SM count, shape checks.

Imports nothing from triton, so that replay.kernels can say what is missing without it.
"""
from __future__ import annotations

import functools

import torch

# Inputs the kernels accept; every kernel accumulates in float32 whatever the input dtype.
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Programs of a persistent grid when the kernels run in Triton's CPU interpreter: small, so that
# the tests walk several tiles per program as the GPU does.
INTERPRETER_SMS = 4


def check(cond: bool, msg: str):
    if not cond:
        raise ValueError(msg)


def check_float(name: str, t: torch.Tensor, dim: int | None = None):
    check(isinstance(t, torch.Tensor), f"{name}: expected a tensor, got {type(t).__name__}")
    check(t.dtype in DTYPES, f"{name}: expected one of {DTYPES}, got {t.dtype}")
    if dim is not None:
        check(t.dim() == dim, f"{name}: expected {dim} dimensions, got shape {tuple(t.shape)}")


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())
    return INTERPRETER_SMS


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def upload(tensors, device: torch.device) -> list[torch.Tensor]:
    """Host int64 tensors onto `device` in one copy that does not make the host wait: packed into
    one pinned buffer, copied with non_blocking=True, handed back as views. A plain .to(device)
    of pageable memory is a blocking copy, which stalls the host like a read-back does. On the
    CPU (the interpreter) the tensors come back as they are."""
    if device.type != "cuda":
        return list(tensors)
    flat = torch.cat([t.reshape(-1).to(torch.int64) for t in tensors])
    dev = flat.pin_memory().to(device, non_blocking=True)
    return list(dev.split([t.numel() for t in tensors]))
