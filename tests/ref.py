"""The tests' references, one per op, written independently of the code they check.

- rms_norm, attention, model_logits: float64 torch, the obvious way (one query at a time; a
  plain Llama forward over a Model's fused weights);
- the sampler (definition: replay/sampling.py): plain numpy, Philox4x32-10 on uint64 arithmetic,
  replay's exp/log polynomials in float32 numpy (fma emulated exactly in float64 with
  round-to-odd), and the row algorithm done the obvious way (a full sort of every row).
Slow and simple on purpose.
"""
import math

import numpy as np
import torch


# ---- float64 ops ---------------------------------------------------------------------------------

def rms_norm(x, w, eps):
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.double()


def attention(q, k, v, cu, pos0, kv_start, scale=None, window=0):
    """Causal varlen attention (replay.ops.attention's arguments) in float64, one query at a time:
    the query at position p of sequence s attends to its keys max(0, p - window + 1)..p."""
    q, k, v = q.double().cpu(), k.double().cpu(), v.double().cpu()
    group = q.shape[1] // k.shape[1]
    scale = q.shape[2] ** -0.5 if scale is None else scale
    out = torch.empty_like(q)
    for s in range(len(pos0)):
        for i in range(int(cu[s + 1] - cu[s])):
            t, p = int(cu[s]) + i, int(pos0[s]) + i
            lo = max(0, p - window + 1) if window else 0
            rows = slice(int(kv_start[s]) + lo, int(kv_start[s]) + p + 1)
            kk = k[rows].repeat_interleave(group, 1)  # (n, Hq, D)
            vv = v[rows].repeat_interleave(group, 1)
            a = torch.softmax(torch.einsum("hd,nhd->hn", q[t], kk) * scale, -1)
            out[t] = torch.einsum("hn,nhd->hd", a, vv)
    return out


def model_logits(model, seq: list[int]) -> torch.Tensor:
    """The model's logits for one sequence in float64: a plain Llama forward over model.w."""
    cfg = model.cfg
    w = {k: t.double() for k, t in model.w.items()}
    Hq, Hkv, D, eps = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.rms_norm_eps
    L = len(seq)

    def rope(x):  # (L, H, D), rotate-half, tables of model.cos / model.sin
        c, s = model.cos[:L].double()[:, None], model.sin[:L].double()[:, None]
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1)

    x = w["embed"][torch.tensor(seq, device=w["embed"].device)]        # (L, hidden)
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        qkv = rms_norm(x, w[p + "ln1"], eps) @ w[p + "wqkv"].T
        q = rope(qkv[:, : Hq * D].view(L, Hq, D))
        k = rope(qkv[:, Hq * D: (Hq + Hkv) * D].view(L, Hkv, D))
        v = qkv[:, (Hq + Hkv) * D:].view(L, Hkv, D)
        k, v = k.repeat_interleave(Hq // Hkv, 1), v.repeat_interleave(Hq // Hkv, 1)
        s = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(D)
        a = s.masked_fill(~causal, float("-inf")).softmax(-1)
        x = x + torch.einsum("hqk,khd->qhd", a, v).reshape(L, Hq * D) @ w[p + "wo"].T
        gu = rms_norm(x, w[p + "ln2"], eps) @ w[p + "wgu"].T
        g, u = gu.chunk(2, -1)
        x = x + (torch.nn.functional.silu(g) * u) @ w[p + "wdown"].T
    return rms_norm(x, w["norm"], eps) @ w["lm_head"].T


# ---- the sampler (numpy) -------------------------------------------------------------------------

f32 = np.float32
M32 = np.uint64(0xFFFFFFFF)


# ---- Philox4x32-10 ---------------------------------------------------------------------------------

def philox(ctr, key):
    """ctr [N, 4], key [N, 2] (uint32 values) -> [N, 4] uint32."""
    c = [np.asarray(ctr, np.uint64)[:, j].copy() for j in range(4)]
    k0, k1 = (np.asarray(key, np.uint64)[:, j].copy() for j in range(2))
    for r in range(10):
        if r:
            k0 = (k0 + np.uint64(0x9E3779B9)) & M32
            k1 = (k1 + np.uint64(0xBB67AE85)) & M32
        p0 = c[0] * np.uint64(0xD2511F53)  # < 2^64: exact in uint64
        p1 = c[2] * np.uint64(0xCD9E8D57)
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & M32, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & M32]
    return np.stack(c, axis=1).astype(np.uint32)


def words(seed: int, position: int, tokens) -> np.ndarray:
    """out[0] of Philox with key (seed lo, seed hi), counter (token, position, 0, 0)."""
    t = np.asarray(tokens, np.uint64)
    ctr = np.stack([t, np.full_like(t, position), np.zeros_like(t), np.zeros_like(t)], axis=1)
    key = np.tile(np.array([[seed & 0xFFFFFFFF, seed >> 32]], np.uint64), (len(t), 1))
    return philox(ctr, key)[:, 0]


# ---- float32 exp / log -----------------------------------------------------------------------------

def fma(a, b, c):
    """Correctly rounded float32 fma: a*b is exact in float64; the float64 sum is made
    round-to-odd (53 >= 2*24 + 2 bits), so its rounding to float32 is the correct one."""
    a, b, c = (np.asarray(v, np.float32).astype(np.float64) for v in (a, b, c))
    with np.errstate(all="ignore"):
        p = a * b
        s = p + c
        bb = s - p
        err = (p - (s - bb)) + (c - bb)
        even = (s.view(np.uint64) & np.uint64(1)) == 0
        fix = (err != 0) & even & np.isfinite(s)
        s = np.where(fix, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)


LN2_HI = np.array(0x3F317200, np.uint32).view(np.float32)[()]
LN2_LO = f32(1.428606765330187045e-06)


def _pow2(n):
    return (np.clip(n + 127, 1, 254).astype(np.uint32) << np.uint32(23)).view(np.float32)


def exp(x):
    x = np.atleast_1d(np.asarray(x, np.float32))
    with np.errstate(all="ignore"):
        xc = np.clip(np.nan_to_num(x), f32(-104), f32(89))
        nf = (xc * f32(1.44269502162933349609375) + f32(12582912)) - f32(12582912)
        r = fma(-nf, LN2_HI, xc)
        r = fma(-nf, LN2_LO, r)
        p = f32(1) / f32(5040)
        for d in (720, 120, 24, 6):
            p = fma(p, r, f32(1) / f32(d))
        p = fma(p, r, f32(0.5))
        e = f32(1) + fma(r * r, p, r)
        n = nf.astype(np.int64)
        y = np.where(n > 127, (e * _pow2(n - 127)) * _pow2(127),
                     np.where(n < -125, (e * _pow2(n + 125)) * _pow2(-125), e * _pow2(n)))
    y = np.where(x > 89, f32(np.inf), np.where(x < -104, f32(0), y))
    return np.where(np.isnan(x), x, y).astype(np.float32)


def log(x):
    x = np.atleast_1d(np.asarray(x, np.float32))
    with np.errstate(all="ignore"):
        sub = (x > 0) & (x < f32(1.17549435e-38))
        xs = np.where(sub, x * f32(2.0 ** 25), x)
        ix = xs.view(np.uint32)
        k = np.where(sub, -25, 0) + (ix >> np.uint32(23)).astype(np.int64) - 127
        mant = ix & np.uint32(0x7FFFFF)
        big = mant >= 0x3504F3
        k = k + big
        m = np.where(big, mant | np.uint32(0x3F000000), mant | np.uint32(0x3F800000))
        f = m.astype(np.uint32).view(np.float32) - f32(1)
        s = f / (f32(2) + f)
        z = s * s
        R = f32(2) / f32(9)
        for d in (7, 5, 3):
            R = fma(R, z, f32(2) / f32(d))
        R = R * z
        hfsq = (f32(0.5) * f) * f
        kf = k.astype(np.float32)
        y = fma(kf, LN2_HI, fma(kf, LN2_LO, f - (hfsq - s * (hfsq + R))))
    y = np.where(x == 0, f32(-np.inf), np.where(x == np.inf, x, y))
    return np.where(np.isnan(x) | (x < 0), f32(np.nan), y).astype(np.float32)


def gumbel_from_words(w):
    u = (f32(2) * ((np.asarray(w, np.uint32) >> np.uint32(9)).astype(np.float32)) + f32(1)) \
        * f32(2.0 ** -24)
    return -log(-log(u))


def gumbel(seed: int, position: int, tokens) -> np.ndarray:
    return gumbel_from_words(words(seed, position, tokens))


# ---- the sampler and the scores of one row ---------------------------------------------------------

def _row(l, T, top_k, top_p, seed, position):
    """-> (token, x, order, kept tokens in order, max y over kept)."""
    l = np.asarray(l, np.float32)
    V = len(l)
    T, top_p = f32(T), f32(top_p)
    x = l if T == 0 else l / T
    order = np.lexsort((np.arange(V), -x))  # x desc, id asc
    if T == 0:
        return int(np.argmax(l)), x, order, order[:1], None
    K = top_k if 0 < top_k < V else V
    kept = order[:K]
    if top_p < 1:
        c = np.cumsum(exp(x[kept] - x[kept[0]]), dtype=np.float32)  # sequential
        reach = c >= top_p * c[-1]
        kept = kept[: int(np.argmax(reach)) + 1 if reach.any() else len(kept)]
    y = x[kept] + gumbel(seed, position, kept)
    ymax = y.max()
    return int(kept[y == ymax].min()), x, order, kept, ymax


def sample(l, T, top_k, top_p, seed, position) -> int:
    return _row(l, T, top_k, top_p, seed, position)[0]


def score(l, T, top_k, top_p, seed, position, claimed) -> dict:
    l = np.asarray(l, np.float32)
    tok, x, order, kept, ymax = _row(l, T, top_k, top_p, seed, position)
    c = int(claimed)
    xm = x.max()
    lse = log(np.cumsum(exp(x - xm), dtype=np.float32)[-1])[0]
    where = int(np.nonzero(order == c)[0][0])
    o = dict(choice=tok, logprob=f32((x[c] - xm) - lse), rank=int((l > l[c]).sum()),
             in_top_k=top_k == 0 or where < top_k, kept=len(kept))
    if f32(T) == 0:
        o.update(in_top_p=c == tok, margin=f32(l[tok] - l[c]))
    else:
        o["in_top_p"] = where < len(kept)
        yc = x[c] + gumbel(seed, position, [c])[0]
        o["margin"] = f32(f32(T) * (ymax - yc)) if o["in_top_p"] else f32(np.inf)
    return o
