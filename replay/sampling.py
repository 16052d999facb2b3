"""The seeded sampler, and the scores of a claimed token under it (DESIGN §3, §5).

The sampler, exactly (the engine and the verifier run this one definition, csrc/cpu/sampler.cpp
with the per-token math of csrc/common/{philox,sampler_math,mathfn}.h):

- Noise. Philox4x32-10 (Random123) with key (k0, k1) = (seed & 0xffffffff, seed >> 32) from the
  uint64 seed and counter (c0, c1, c2, c3) = (token id i, position t as uint32, 0, 0); rounds use
  the multipliers 0xD2511F53 / 0xCD9E8D57 and the key bumps 0x9E3779B9 / 0xBB67AE85. The word
  x = out[0] gives U = (2 * (x >> 9) + 1) * 2^-24 (exact in float32, strictly inside (0, 1)) and
  G = -rp_log(-rp_log(U)), with rp_exp / rp_log replay's own float32 functions (mathfn.h: the
  same bits on every backend, within ~1 ulp of the true values).
- Input: a float32 logits row l over V tokens, temperature T, top_k, top_p, seed (uint64) and the
  absolute position t of the token in its sequence (prompt length + index in the output).
- T == 0: the token is argmax l, lowest index on ties.
- T > 0: z_i = l_i / T (float32 division). Order the tokens by (z desc, index asc). top_k > 0
  keeps the first top_k in that order. top_p < 1: over the kept tokens in that order,
  e_i = rp_exp(z_i - zmax), S = the float32 sequential sum of e_i in that order; keep the
  smallest prefix whose float32 sequential cumulative sum c_j satisfies c_j >= top_p * S (at least
  one token). The token is the argmax over the kept tokens of y_i = z_i + G_i (float32 add), ties
  to the lowest index.

T, top_p are float32 on the way in (0.9 means float32(0.9)). The result is a pure function of
(logits row, parameters, seed, position): never of the batch, the row's place in it, or any state.

Scores of a claimed token c (`score`), where the verifier recomputed the engine's logits row:
- choice: the sampler's token (the same C++ function as `sample`); exact = choice == c.
- logprob: log_softmax(z)[c] for T > 0 (full vocabulary, no filter), log_softmax(l)[c] for T == 0;
  max, then a rp_exp sum in index order, then rp_log.
- rank: #{i : l_i > l_c} on the raw logits (0 for the argmax).
- in_top_k: top_k == 0, or c is among the first top_k in the order (z desc, index asc); l for T == 0.
- in_top_p: c is in the kept set after both filters (T == 0: c == argmax).
- margin: T > 0 and c kept: T * (max over kept of y - y_c) (>= 0, 0 when exact), in logit units;
  c not kept: +inf; T == 0: l_argmax - l_c.
- kept: the size of the kept set (T == 0: 1).

Per-row arguments take a Python scalar (broadcast to every row), a sequence or a 1-D tensor of M
values. Seeds are Python ints in [0, 2^64).
"""
from __future__ import annotations

import numpy as np
import torch

from replay import ops
from replay._ext import C
from replay.ops import _check  # the ops layer's argument check (sampling is part of that layer)

_U64 = 1 << 64


def _logits(logits) -> torch.Tensor:
    _check(isinstance(logits, torch.Tensor), f"logits: expected a tensor, got {type(logits).__name__}")
    _check(logits.dim() == 2, f"logits: expected [M, V], got shape {tuple(logits.shape)}")
    if logits.device.type == "cuda":  # the CUDA kernel reads float32 or bfloat16 rows
        _check(logits.dtype in (torch.float32, torch.bfloat16),
               f"logits: expected float32 or bfloat16 on CUDA, got {logits.dtype}")
    else:
        _check(logits.device.type == "cpu", f"logits: expected a CPU or CUDA tensor, got "
                                            f"{logits.device}")
        _check(logits.dtype == torch.float32, f"logits: expected float32, got {logits.dtype}")
    _check(logits.shape[1] >= 1, "logits: the vocabulary is empty")
    if logits.stride(1) != 1:  # any row stride; columns must be adjacent
        logits = logits.contiguous()
    if logits.numel():
        # The order and the top-p mass are undefined on NaN, +inf, or a row with no finite logit.
        # One pass: a row's max is NaN if it holds a NaN, +inf if it holds one.
        mx = logits.amax(dim=1)
        _check(not torch.isnan(mx).any(), "logits: contains NaN")
        _check(not torch.isposinf(mx).any(), "logits: contains +inf")
        _check(bool((mx > float("-inf")).all()), "logits: a row is all -inf")
    return logits


def _per_row(name: str, v, M: int, dtype) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        t = v.detach().to("cpu")
    elif isinstance(v, (list, tuple, np.ndarray)):
        t = torch.as_tensor(np.asarray(v))
    else:
        t = torch.as_tensor(v)
    _check(t.dim() <= 1, f"{name}: expected a scalar or one value per row, got shape {tuple(t.shape)}")
    if t.dim() == 0:
        t = t.expand(M)
    _check(t.numel() == M, f"{name}: expected {M} values (one per row), got {t.numel()}")
    if dtype == torch.int64:
        _check(not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool,
               f"{name}: expected integers, got {t.dtype}")
    return t.to(dtype).contiguous()


def _seeds(seed, M: int) -> torch.Tensor:
    """uint64 seeds as their int64 bit pattern."""
    if isinstance(seed, torch.Tensor):
        _check(seed.dim() <= 1 and not seed.is_floating_point() and seed.dtype != torch.bool,
               f"seed: expected integers, got {seed.dtype}")
        seed = seed.reshape(-1).tolist() if seed.dim() else int(seed)
    if isinstance(seed, (int, np.integer)) or not isinstance(seed, (list, tuple, np.ndarray)):
        vals = [seed] * M  # a scalar (its type is checked below)
    else:
        vals = list(seed)
    _check(len(vals) == M, f"seed: expected {M} values (one per row), got {len(vals)}")
    out = []
    for s in vals:
        _check(isinstance(s, (int, np.integer)) and not isinstance(s, bool),
               f"seed: expected an int, got {type(s).__name__}")
        s = int(s)
        _check(0 <= s < _U64, f"seed: {s} is outside [0, 2^64)")
        out.append(s - _U64 if s >= 1 << 63 else s)
    return torch.tensor(out, dtype=torch.int64)


def _params(logits, temperature, top_k, top_p, seed, position):
    l = _logits(logits)
    M = l.shape[0]
    T = _per_row("temperature", temperature, M, torch.float32)
    _check(bool(torch.isfinite(T).all()) and bool((T >= 0).all()),
           "temperature: must be finite and >= 0")
    k = _per_row("top_k", top_k, M, torch.int64)
    _check(bool((k >= 0).all()), "top_k: must be >= 0 (0 keeps every token)")
    p = _per_row("top_p", top_p, M, torch.float32)
    _check(bool(((p > 0) & (p <= 1)).all()), "top_p: must be in (0, 1]")
    pos = _per_row("position", position, M, torch.int64)
    _check(bool(((pos >= 0) & (pos < 1 << 32)).all()), "position: must be in [0, 2^32)")
    return l, (T, k, p, _seeds(seed, M), pos)


def _ptrs(l, rows):
    return (l.data_ptr(), l.shape[0], l.shape[1], l.stride(0), *(t.data_ptr() for t in rows))


def columns(params) -> dict[str, list]:
    """The per-row arguments of SamplingParams rows: sample(logits, **columns(ps), position=t)."""
    return {k: [getattr(p, k) for p in params] for k in ("temperature", "top_k", "top_p", "seed")}


def sample(logits, temperature, top_k, top_p, seed, position) -> torch.Tensor:
    """The sampler on every row of logits [M, V] (float32 on CPU; float32 or bfloat16 on CUDA):
    LongTensor [M] of token ids, on the logits' device."""
    l, rows = _params(logits, temperature, top_k, top_p, seed, position)
    out = torch.empty(l.shape[0], dtype=torch.int64, device=l.device)
    fn, extra = ops.sampler_kernel(l, score=False)
    rows = tuple(t.to(l.device) for t in rows)
    fn(*_ptrs(l, rows), out.data_ptr(), **extra)
    return out


def score(logits, temperature, top_k, top_p, seed, position, claimed) -> dict[str, torch.Tensor]:
    """Scores of the claimed tokens [M] under the sampler on logits [M, V] (see the module doc).

    Returns tensors [M]: choice (int64), exact (bool), logprob (float32), rank (int64),
    in_top_k (bool), in_top_p (bool), margin (float32), kept (int64).
    """
    l, rows = _params(logits, temperature, top_k, top_p, seed, position)
    M, V = l.shape
    c = _per_row("claimed", claimed, M, torch.int64)
    _check(bool(((c >= 0) & (c < V)).all()), f"claimed: token ids must be in [0, {V})")
    dev = l.device
    o = {k: torch.empty(M, dtype=dt, device=dev) for k, dt in (  # in the kernel's argument order
        ("choice", torch.int64), ("logprob", torch.float32), ("rank", torch.int64),
        ("in_top_k", torch.bool), ("in_top_p", torch.bool), ("margin", torch.float32),
        ("kept", torch.int64))}
    fn, extra = ops.sampler_kernel(l, score=True)
    rows = tuple(t.to(dev) for t in rows)
    c = c.to(dev)
    fn(*_ptrs(l, rows), c.data_ptr(), *(t.data_ptr() for t in o.values()), **extra)
    o["exact"] = o["choice"] == c
    return {k: o[k] for k in ("choice", "exact", "logprob", "rank", "in_top_k", "in_top_p",
                              "margin", "kept")}


def philox4x32_10(counter, key) -> torch.Tensor:
    """Philox4x32-10 blocks: counter [N, 4] and key [N, 2] of uint32 values -> int64 tensor [N, 4]."""
    c = _u32("counter", counter, 4)
    k = _u32("key", key, 2)
    _check(len(c) == len(k), f"counter and key: {len(c)} counters but {len(k)} keys")
    out = np.empty_like(c)
    C().philox4x32_10(c.ctypes.data, k.ctypes.data, out.ctypes.data, len(c))
    return torch.from_numpy(out.astype(np.int64))


def _u32(name: str, x, width: int) -> np.ndarray:
    a = np.asarray(x.cpu().numpy() if isinstance(x, torch.Tensor) else x)
    if a.ndim == 1:
        a = a[None]
    _check(a.ndim == 2 and a.shape[1] == width, f"{name}: expected [N, {width}], got {a.shape}")
    _check(a.dtype.kind in "iu", f"{name}: expected integers, got {a.dtype}")
    _check(bool(((a >= 0) & (a < 1 << 32)).all()) if a.size else True,
           f"{name}: values must be in [0, 2^32)")
    return np.ascontiguousarray(a, dtype=np.uint32)


def gumbel(seed: int, position: int, vocab_size: int) -> torch.Tensor:
    """The sampler's Gumbel noise G_i for i in [0, vocab_size) at `position` under `seed`."""
    s = int(_seeds(seed, 1)[0]) % _U64
    _check(0 <= int(position) < 1 << 32, "position: must be in [0, 2^32)")
    _check(int(vocab_size) >= 0, "vocab_size: must be >= 0")
    out = torch.empty(int(vocab_size), dtype=torch.float32)
    C().gumbel_f32(s, int(position), out.data_ptr(), int(vocab_size))
    return out
