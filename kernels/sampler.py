"""replay's seeded sampler in Triton: the same tokens, bit for bit, as the C++ sampler
(csrc/cpu/sampler.cpp; definition in replay/sampling.py, DESIGN §3).

Bit-exactness on the GPU:
- Philox4x32-10 is 32-bit integer math (tl.umulhi for the high halves, wrapping multiplies).
- rp_exp / rp_log are ported operation by operation from csrc/common/mathfn.h: the same float32
  +, -, *, tl.fma, tl.div_rn (IEEE division; Triton's `/` is approximate on the GPU) and bit
  casts, with the same constants. Kernels launch with enable_fp_fusion=False, so that no a*b+c
  becomes an fma that the C++ code does not have.
- Selections (argmax, the top-k / top-p bounds) are exact comparisons; the two sequential float
  sums of the definition (the top-p mass S and the cumulative sums) are added one term at a time
  in the sampler's order.

One program per row, BLOCK tokens at a time. Rows with a filter (top_k < V or top_p < 1) need the
order (z desc, id asc) of a prefix: `_keys_kernel` writes sortable int64 keys (z's order bits, then
the id) and one torch.sort orders them; the sampler kernel reads the K-th key (top-k) or walks the
sorted head (top-p). For top-p only the head is written: tokens with z - zmax >= -17. The first
token of the order has e = rp_exp(0) = 1, so S >= 1 from the first term on, and a later term with
z - zmax < -17 has e < 4.2e-8 < 2^-24 <= ulp(S)/2: it leaves every sum unchanged (the same
argument as in csrc/cuda/score.cu).
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from ._common import check

BLOCK = 1024       # tokens per step of a row (power of two)
WALK = 32          # sorted keys loaded at once by the top-p walk, then added one by one
NUM_WARPS = 4
_NO_KEY = tl.constexpr((1 << 63) - 1)  # int64 max: excluded from the sorted head


def _f32(x) -> float:
    """A float32 constant, exactly as the C++ code computes it (float32 arithmetic)."""
    return float(np.float32(x))


_F = np.float32
LOG2E = tl.constexpr(_f32(_F("1.44269502162933349609375")))
LN2_HI = tl.constexpr(_f32(_F("0.693145751953125")))
LN2_LO = tl.constexpr(_f32(_F("1.428606765330187045e-06")))
E7 = tl.constexpr(_f32(_F(1) / _F(5040)))
E6 = tl.constexpr(_f32(_F(1) / _F(720)))
E5 = tl.constexpr(_f32(_F(1) / _F(120)))
E4 = tl.constexpr(_f32(_F(1) / _F(24)))
E3 = tl.constexpr(_f32(_F(1) / _F(6)))
L9 = tl.constexpr(_f32(_F(2) / _F(9)))
L7 = tl.constexpr(_f32(_F(2) / _F(7)))
L5 = tl.constexpr(_f32(_F(2) / _F(5)))
L3 = tl.constexpr(_f32(_F(2) / _F(3)))


# ---- replay's float32 exp and log (mathfn.h), elementwise ----------------------------------------

@triton.jit
def _pow2i(n):
    """2^n for n in [-126, 127] (int32), from the exponent field."""
    return ((n + 127).to(tl.uint32) << 23).to(tl.float32, bitcast=True)


@triton.jit
def rp_exp(x):
    ok = x == x
    xc = tl.where(ok, tl.minimum(tl.maximum(x, -104.0), 89.0), 0.0)  # outside: replaced below
    nf = (xc * LOG2E + 12582912.0) - 12582912.0  # rint, ties to even
    n = nf.to(tl.int32)
    r = tl.fma(-nf, LN2_HI, xc)
    r = tl.fma(-nf, LN2_LO, r)
    p = tl.fma(E7, r, E6)
    p = tl.fma(p, r, E5)
    p = tl.fma(p, r, E4)
    p = tl.fma(p, r, E3)
    p = tl.fma(p, r, 0.5)
    q = tl.fma(r * r, p, r)
    e = 1.0 + q
    # the two-step scalings of mathfn.h; exponents clamped so that the unused lanes stay finite
    hi = (e * _pow2i(tl.maximum(n - 127, -126))) * tl.where(n > 127, 1.7014118346046923e38, 1.0)
    lo = (e * _pow2i(tl.minimum(n + 125, 127))) * tl.where(n < -125, 2.350988701644575e-38, 1.0)
    mid = e * _pow2i(tl.minimum(tl.maximum(n, -126), 127))
    y = tl.where(n > 127, hi, tl.where(n < -125, lo, mid))
    y = tl.where(x > 89.0, float("inf"), tl.where(x < -104.0, 0.0, y))
    return tl.where(ok, y, x)


@triton.jit
def rp_log(x):
    ix = x.to(tl.uint32, bitcast=True)
    sub = ix < 0x00800000
    xs = x * tl.where(sub, 33554432.0, 1.0)  # subnormals: scale by 2^25 (exact)
    k = tl.where(sub, -25, 0)
    ix = xs.to(tl.uint32, bitcast=True)
    k = k + (ix >> 23).to(tl.int32) - 127
    mant = ix & 0x007FFFFF
    fold = mant >= 0x3504F3
    k = k + fold.to(tl.int32)
    m = tl.where(fold, mant | 0x3F000000, mant | 0x3F800000).to(tl.float32, bitcast=True)
    f = m - 1.0
    s = tl.div_rn(f, 2.0 + f)
    z = s * s
    R = tl.fma(L9, z, L7)
    R = tl.fma(R, z, L5)
    R = tl.fma(R, z, L3)
    R = R * z
    hfsq = (0.5 * f) * f
    kf = k.to(tl.float32)
    lo = tl.fma(kf, LN2_LO, f - (hfsq - s * (hfsq + R)))
    y = tl.fma(kf, LN2_HI, lo)
    y = tl.where(x == float("inf"), x, y)
    y = tl.where(x == 0.0, float("-inf"), y)
    y = tl.where(x < 0.0, float("nan"), y)
    return tl.where(x == x, y, x)


# ---- Philox4x32-10 and the Gumbel noise (philox.h, sampler_math.h) -------------------------------

@triton.jit
def philox4x32_10_(c0, c1, c2, c3, k0, k1):
    """Ten Philox rounds on uint32 words; returns the four output words."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, 0xD2511F53)
        lo0 = c0 * 0xD2511F53
        hi1 = tl.umulhi(c2, 0xCD9E8D57)
        lo1 = c2 * 0xCD9E8D57
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def gumbel_from_word(x):
    u = (2 * (x >> 9) + 1).to(tl.float32) * 5.9604644775390625e-08  # exact, in (0, 1)
    return -rp_log(-rp_log(u))


@triton.jit
def gumbel_(seed, pos, tok):
    """G for token ids tok (uint32) at position pos (uint32) under seed (int64 holding uint64)."""
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    zero = tok * 0
    w, _, _, _ = philox4x32_10_(tok, zero + pos, zero, zero, k0, k1)
    return gumbel_from_word(w)


@triton.jit
def order_key(z, tok):
    """int64 keys ascending in the sampler's order (z desc, id asc), as rp_order_key in
    sampler_math.h with the sign bit flipped so that a signed sort gives the unsigned order."""
    u = z.to(tl.uint32, bitcast=True)
    u = tl.where(u == 0x80000000, 0, u)                    # -0 == +0
    u = tl.where((u & 0x80000000) != 0, ~u, u | 0x80000000)  # ascending in z
    hi = (~u) ^ 0x80000000                                 # descending in z, signed order
    return (hi.to(tl.int32, bitcast=True).to(tl.int64) << 32) | tok.to(tl.int64)


# ---- the sampler -----------------------------------------------------------------------------------

@triton.jit
def _row_max(l_ptr, V, T, BLOCK: tl.constexpr):
    """zmax and i0 = the first token of the order (argmax of z, lowest id on ties)."""
    offs = tl.arange(0, BLOCK)
    best = float("-inf")
    i0 = -1
    for b in range(0, V, BLOCK):
        i = b + offs
        z = tl.div_rn(tl.load(l_ptr + i, mask=i < V, other=0.0).to(tl.float32), T)
        z = tl.where(i < V, z, float("-inf"))
        cm = tl.max(z, axis=0)
        ci = tl.min(tl.where((z == cm) & (i < V), i, V), axis=0)
        take = (i0 < 0) | (cm > best)
        best = tl.where(take, cm, best)
        i0 = tl.where(take, ci, i0)
    return best, i0


@triton.jit
def _keys_kernel(l_ptr, stride, V, T_ptr, p_ptr, rows_ptr, keys_ptr, nkeys_ptr,
                 BLOCK: tl.constexpr):
    """Sort keys of one filtered row: every token (top-k only) or the head (top-p)."""
    r = tl.program_id(0)
    row = tl.load(rows_ptr + r).to(tl.int64)
    l_row = l_ptr + row * stride
    T = tl.load(T_ptr + row)
    cut = tl.where(tl.load(p_ptr + row) < 1.0, -17.0, float("-inf"))  # top-p: the head only
    zmax, _ = _row_max(l_row, V, T, BLOCK)
    offs = tl.arange(0, BLOCK)
    n = 0
    for b in range(0, V, BLOCK):
        i = b + offs
        z = tl.div_rn(tl.load(l_row + i, mask=i < V, other=0.0).to(tl.float32), T)
        keep = (i < V) & (z - zmax >= cut)
        n += tl.sum(keep.to(tl.int32), axis=0)
        key = tl.where(keep, order_key(z, i.to(tl.uint32)), _NO_KEY)
        tl.store(keys_ptr + r.to(tl.int64) * V + i, key, mask=i < V)
    tl.store(nkeys_ptr + r, n)


@triton.jit
def _pick(v, offs, j):
    """Element j of the vector v, exactly (every other term of the sum is zero)."""
    return tl.sum(tl.where(offs == j, v, tl.zeros_like(v)), axis=0)


@triton.jit
def _head_block(l_row, T, zmax, keys, n, j):
    """Sorted-head positions j: their order keys and e = rp_exp(z - zmax) (0 past the end)."""
    key = tl.load(keys + j, mask=j < n, other=0)
    tok = key & 0xFFFFFFFF
    z = tl.div_rn(tl.load(l_row + tok, mask=j < n, other=0.0).to(tl.float32), T)
    return key, tl.where(j < n, rp_exp(z - zmax), 0.0)


@triton.jit
def _top_p_bound(l_row, T, zmax, keys, n, top_p, WALK: tl.constexpr):
    """The last kept key of the sorted head keys[0, n), and the kept count."""
    offs = tl.arange(0, WALK)
    S = 0.0
    for b in range(0, n, WALK):  # S: one term at a time, in the order
        key, e = _head_block(l_row, T, zmax, keys, n, b + offs)
        for jj in tl.static_range(WALK):
            S = S + _pick(e, offs, jj)  # + 0.0 past the end: exact
    target = top_p * S
    cum = 0.0
    found = n * 0  # int64 scalars, like n
    bound = n * 0
    kept = n * 0
    b = n * 0
    while (found == 0) & (b < n):
        key, e = _head_block(l_row, T, zmax, keys, n, b + offs)
        for jj in tl.static_range(WALK):
            cum = cum + _pick(e, offs, jj)
            hit = (found == 0) & (b + jj < n) & ((cum >= target) | (b + jj + 1 == n))
            bound = tl.where(hit, _pick(key, offs, jj), bound)
            kept = tl.where(hit, b + jj + 1, kept)
            found = tl.where(hit, 1, found)
        b += WALK
    return bound, kept


@triton.jit
def _sample_kernel(l_ptr, stride, V, T_ptr, k_ptr, p_ptr, seed_ptr, pos_ptr, out_ptr,
                   slot_ptr, keys_ptr, nkeys_ptr, BLOCK: tl.constexpr, WALK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    l_row = l_ptr + row * stride
    T = tl.load(T_ptr + row)
    Td = tl.where(T == 0.0, 1.0, T)  # l / 1 == l exactly: greedy rows take the argmax of l
    zmax, i0 = _row_max(l_row, V, Td, BLOCK)
    token = i0.to(tl.int64)
    if T != 0.0:
        top_k = tl.load(k_ptr + row)
        top_p = tl.load(p_ptr + row)
        seed = tl.load(seed_ptr + row)
        pos = tl.load(pos_ptr + row).to(tl.uint32)
        K = tl.where((top_k > 0) & (top_k < V), top_k, V)
        slot = tl.load(slot_ptr + row)
        bound = slot * 0 + _NO_KEY
        if slot >= 0:
            keys = keys_ptr + slot * V
            if top_p < 1.0:
                n = tl.minimum(tl.load(nkeys_ptr + slot).to(tl.int64), K)
                bound, _ = _top_p_bound(l_row, T, zmax, keys, n, top_p, WALK)
            else:
                bound = tl.load(keys + K - 1)
        # argmax over the kept tokens of y = z + G, ties to the lowest id
        y0 = zmax + gumbel_(seed, pos, i0.to(tl.uint32))
        best = y0
        bi = i0
        offs = tl.arange(0, BLOCK)
        for b in range(0, V, BLOCK):
            i = b + offs
            z = tl.div_rn(tl.load(l_row + i, mask=i < V, other=0.0).to(tl.float32), T)
            kept = (i < V) & (order_key(z, i.to(tl.uint32)) <= bound)  # bound: max if no filter
            y = tl.where(kept, z + gumbel_(seed, pos, i.to(tl.uint32)), float("-inf"))
            cm = tl.max(y, axis=0)
            ci = tl.min(tl.where(kept & (y == cm), i, V), axis=0)
            take = (cm > best) | ((cm == best) & (ci < bi))
            best = tl.where(take, cm, best)
            bi = tl.where(take, ci, bi)
        token = bi.to(tl.int64)
    tl.store(out_ptr + row, token)


# ---- wrappers --------------------------------------------------------------------------------------

def _per_row(name, v, M, dtype, device):
    t = v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
    check(t.dim() <= 1, f"{name}: expected a scalar or one value per row")
    t = t.to(device=device, dtype=dtype).reshape(-1)
    t = t.expand(M) if t.numel() == 1 else t
    check(t.numel() == M, f"{name}: expected {M} values, got {t.numel()}")
    return t.contiguous()


def _seeds(seed, M, device):
    """uint64 seeds (Python ints, or an integer tensor of their int64 bit patterns)."""
    if isinstance(seed, torch.Tensor):
        return _per_row("seed", seed, M, torch.int64, device)
    vals = [seed] * M if np.ndim(seed) == 0 else list(seed)
    check(len(vals) == M, f"seed: expected {M} values, got {len(vals)}")
    for s in vals:
        check(0 <= int(s) < 1 << 64, f"seed: {s} is outside [0, 2^64)")
    return torch.tensor([int(s) - (1 << 64) if int(s) >= 1 << 63 else int(s) for s in vals],
                        dtype=torch.int64, device=device)


def sample(logits: torch.Tensor, temperature, top_k, top_p, seed, position) -> torch.Tensor:
    """The sampler on every row of logits [M, V] (float32, bf16 or fp16; read as float32):
    int64 token ids [M], equal to replay.sampling.sample on the same float32 values. Per-row
    arguments: scalars or one value per row (seed: Python ints in [0, 2^64) or int64 bits)."""
    check(isinstance(logits, torch.Tensor) and logits.dim() == 2,
          "logits: expected a [M, V] tensor")
    check(logits.dtype in (torch.float32, torch.bfloat16, torch.float16),
          f"logits: expected a float tensor, got {logits.dtype}")
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    M, V = logits.shape
    check(V >= 1, "logits: the vocabulary is empty")
    check(V < 1 << 31, "logits: vocabulary too large")
    dev = logits.device
    T = _per_row("temperature", temperature, M, torch.float32, dev)
    k = _per_row("top_k", top_k, M, torch.int64, dev)
    p = _per_row("top_p", top_p, M, torch.float32, dev)
    s = _seeds(seed, M, dev)
    pos = _per_row("position", position, M, torch.int64, dev)
    out = torch.empty(M, dtype=torch.int64, device=dev)
    if M == 0:
        return out
    # Rows with a filter get sorted keys (one host sync to find them: the sort needs the count).
    need = (T > 0) & (((k > 0) & (k < V)) | (p < 1))
    rows = need.nonzero().flatten()
    R = rows.numel()
    slot = torch.full((M,), -1, dtype=torch.int64, device=dev)
    keys = torch.empty((max(R, 1), V), dtype=torch.int64, device=dev)
    nkeys = torch.zeros(max(R, 1), dtype=torch.int32, device=dev)
    if R:
        slot[rows] = torch.arange(R, device=dev)
        _keys_kernel[(R,)](logits, logits.stride(0), V, T, p, rows, keys, nkeys, BLOCK=BLOCK,
                           num_warps=NUM_WARPS, enable_fp_fusion=False)
        keys = torch.sort(keys, dim=1).values  # unique keys: the result does not depend on the sort
    _sample_kernel[(M,)](logits, logits.stride(0), V, T, k, p, s, pos, out, slot, keys, nkeys,
                         BLOCK=BLOCK, WALK=WALK, num_warps=NUM_WARPS, enable_fp_fusion=False)
    return out


@triton.jit
def _philox_kernel(ctr_ptr, key_ptr, out_ptr, N, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < N
    c0 = tl.load(ctr_ptr + 4 * i, mask=m, other=0)
    c1 = tl.load(ctr_ptr + 4 * i + 1, mask=m, other=0)
    c2 = tl.load(ctr_ptr + 4 * i + 2, mask=m, other=0)
    c3 = tl.load(ctr_ptr + 4 * i + 3, mask=m, other=0)
    k0 = tl.load(key_ptr + 2 * i, mask=m, other=0)
    k1 = tl.load(key_ptr + 2 * i + 1, mask=m, other=0)
    o0, o1, o2, o3 = philox4x32_10_(c0, c1, c2, c3, k0, k1)
    tl.store(out_ptr + 4 * i, o0, mask=m)
    tl.store(out_ptr + 4 * i + 1, o1, mask=m)
    tl.store(out_ptr + 4 * i + 2, o2, mask=m)
    tl.store(out_ptr + 4 * i + 3, o3, mask=m)


def philox4x32_10(counter: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Philox4x32-10 blocks: counter [N, 4], key [N, 2] (uint32 values in an int64 or uint32
    tensor) -> int64 [N, 4]. For the tests: the sampler's integer path."""
    c = counter.to(torch.int64).to(torch.int32).contiguous()  # the low 32 bits
    k = key.to(torch.int64).to(torch.int32).contiguous()
    N = c.shape[0]
    out = torch.empty_like(c)
    if N:
        _philox_kernel[(triton.cdiv(N, 256),)](c.view(torch.uint32), k.view(torch.uint32),
                                               out.view(torch.uint32), N, BLOCK=256)
    return out.to(torch.int64) & 0xFFFFFFFF


@triton.jit
def _gumbel_kernel(seed_ptr, pos, out_ptr, V, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    g = gumbel_(tl.load(seed_ptr), pos.to(tl.uint32), i.to(tl.uint32))
    tl.store(out_ptr + i, g, mask=i < V)


def gumbel(seed: int, position: int, vocab_size: int, device="cuda") -> torch.Tensor:
    """The sampler's Gumbel noise G_i, i in [0, vocab_size), as replay.sampling.gumbel."""
    s = _seeds(seed, 1, device)
    out = torch.empty(int(vocab_size), dtype=torch.float32, device=device)
    if vocab_size:
        _gumbel_kernel[(triton.cdiv(int(vocab_size), BLOCK),)](
            s, int(position), out, int(vocab_size), BLOCK=BLOCK, enable_fp_fusion=False)
    return out
