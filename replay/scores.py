"""Whole-row scores for the tolerant policies and the bound (docs/exfiltration.md).

`sampling.score` scores one claimed token per row. The bound needs the same quantities for every
token of the vocabulary at once (which tokens would a policy have accepted here?), and two
policies need the distribution the engine sampled from. All of it is computed here from the
logits row, with the sampler's own arithmetic where a verdict depends on it:

- kept set: the tokens that survive top-k and top-p, a prefix of the order (z desc, id asc) whose
  length is the `kept` that the C++ sampler reports (T == 0: the argmax alone);
- margins: for every token c, T * (max_kept y - y_c) in float32 with y = z + G, z = l / T, exactly
  the operations (and so the bits) of sampling.score's margin; +inf off the kept set; T == 0:
  l_argmax - l_c;
- sampling distribution: p_c = softmax(z) over the kept set, renormalised (float64), 0 off it;
  T == 0: one-hot on the argmax;
- IPT score (inverse probability transform): u = a uniform from replay's Philox stream at a
  reserved counter (0, t, 1, 0) (token noise uses (i, t, 0, 0), so u never shares a word with G),
  CDF_c = sum_{i <= c} p_i in token-id order, and
      ipt_c = log(Phi((CDF_c - u) / sigma) - Phi((CDF_{c-1} - u) / sigma) + eps).
  An inverse-transform sampler (`ipt_sample`) picks the c with CDF_{c-1} <= u < CDF_c; that token
  scores near log 1 = 0 for small sigma, any other token near log eps.

Rows: logits [n, V] float32 CPU; per-row parameters as in `sampling` (scalars broadcast).
"""
from __future__ import annotations

import math

import torch

from replay import sampling

IPT_EPS = 1e-12


def rows(params_rows, n: int) -> dict:
    """Per-row sampling parameters as lists: a SamplingParams (every row), a list of them, or a
    dict with temperature / top_k / top_p / seed (scalars, lists or tensors)."""
    if isinstance(params_rows, dict):
        out = {}
        for k in ("temperature", "top_k", "top_p", "seed"):
            v = params_rows[k]
            if isinstance(v, torch.Tensor):
                v = v.tolist() if v.dim() else v.item()
            out[k] = list(v) if isinstance(v, (list, tuple)) else [v] * n
        return out
    ps = [params_rows] if hasattr(params_rows, "temperature") else list(params_rows)
    if len(ps) == 1 and n != 1:
        ps = ps * n
    return sampling.columns(ps)


def _positions(positions, n: int) -> list[int]:
    if isinstance(positions, torch.Tensor):
        positions = positions.tolist() if positions.dim() else positions.item()
    return list(positions) if isinstance(positions, (list, tuple)) else [int(positions)] * n


def kept_mask(logits: torch.Tensor, params_rows, positions) -> torch.Tensor:
    """BoolTensor [n, V]: the tokens the sampler could pick (after top-k and top-p)."""
    n, V = logits.shape
    p, pos = rows(params_rows, n), _positions(positions, n)
    sc = sampling.score(logits, p["temperature"], p["top_k"], p["top_p"], p["seed"], pos,
                        claimed=[0] * n)
    mask = torch.ones(n, V, dtype=torch.bool)
    part = (sc["kept"] < V).nonzero()[:, 0]  # rows with a filter: sort only those
    if len(part):
        T = torch.tensor(p["temperature"], dtype=torch.float32)[part]
        l = logits[part]
        z = torch.where(T[:, None] > 0, l / T.clamp_min(1e-30)[:, None], l)   # [m, V]
        order = torch.sort(z, dim=1, descending=True, stable=True).indices  # (z desc, id asc)
        first = torch.arange(V)[None, :] < sc["kept"][part][:, None]        # [m, V] in order
        sub = torch.zeros(len(part), V, dtype=torch.bool)
        mask[part] = sub.scatter_(1, order, first)
    return mask


def margins(logits: torch.Tensor, params_rows, positions, kept: torch.Tensor | None = None
            ) -> torch.Tensor:
    """FloatTensor [n, V]: sampling.score's margin for every token as the claimed one."""
    n, V = logits.shape
    p, pos = rows(params_rows, n), _positions(positions, n)
    kept = kept_mask(logits, p, pos) if kept is None else kept
    out = torch.empty(n, V, dtype=torch.float32)
    inf = torch.tensor(float("inf"))
    for r in range(n):
        T = torch.tensor(p["temperature"][r], dtype=torch.float32)
        l = logits[r]
        if T == 0:
            out[r] = l.max() - l
            continue
        y = l / T + sampling.gumbel(p["seed"][r], pos[r], V)  # float32, as the C++ does
        ymax = y[kept[r]].max()
        out[r] = torch.where(kept[r], T * (ymax - y), inf)
    return out


def sample_probs(logits: torch.Tensor, params_rows, positions,
                 kept: torch.Tensor | None = None) -> torch.Tensor:
    """Float64 [n, V]: the distribution the engine sampled from (renormalised over kept)."""
    n, V = logits.shape
    p, pos = rows(params_rows, n), _positions(positions, n)
    kept = kept_mask(logits, p, pos) if kept is None else kept
    T = torch.tensor(p["temperature"], dtype=torch.float64)
    greedy = T == 0
    z = logits.double() / torch.where(greedy, 1.0, T)[:, None]
    z = z.masked_fill(~kept, float("-inf"))
    probs = torch.softmax(z, dim=1)
    if greedy.any():  # the argmax alone (kept holds exactly it)
        probs[greedy] = kept[greedy].double()
    return probs


def ipt_uniform(seed, position) -> torch.Tensor:
    """Float64 [n]: the IPT uniforms at Philox counter (0, t, 1, 0) under each row's seed."""
    seeds = [int(s) for s in (seed if isinstance(seed, (list, tuple)) else [seed])]
    pos = _positions(position, len(seeds))
    ctr = [[0, t, 1, 0] for t in pos]
    key = [[s & 0xFFFFFFFF, s >> 32] for s in seeds]
    x = sampling.philox4x32_10(ctr, key)[:, 0]
    return ((2 * (x >> 9) + 1).double() * 2.0 ** -24)  # exact, strictly inside (0, 1)


def ipt_all(probs: torch.Tensor, u: torch.Tensor, sigma: float, eps: float = IPT_EPS
            ) -> torch.Tensor:
    """Float64 [n, V]: the IPT score of every token (CDF in token-id order)."""
    cdf = torch.cumsum(probs, dim=1)                       # [n, V]
    lo = torch.cat([torch.zeros(len(cdf), 1, dtype=cdf.dtype), cdf[:, :-1]], dim=1)
    a = torch.special.ndtr((cdf - u[:, None]) / sigma)
    b = torch.special.ndtr((lo - u[:, None]) / sigma)
    return torch.log((a - b).clamp_min(0.0) + eps)


def ipt(probs: torch.Tensor, claimed, u: torch.Tensor, sigma: float, eps: float = IPT_EPS
        ) -> torch.Tensor:
    """Float64 [n]: the IPT score of each row's claimed token."""
    c = torch.as_tensor(claimed, dtype=torch.int64).reshape(-1, 1)
    return ipt_all(probs, u, sigma, eps).gather(1, c)[:, 0]


def ipt_sample(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """LongTensor [n]: the inverse-transform sampler, first c with CDF_c > u (kept tokens only)."""
    cdf = torch.cumsum(probs, dim=1)
    c = torch.searchsorted(cdf, u[:, None].to(cdf.dtype), right=True)[:, 0]
    # u above the float64 total (rounding): the last token with mass
    last = (probs > 0).long().cumsum(1).argmax(1)
    return torch.minimum(c, last)


def row_scores(logits: torch.Tensor, params_rows, positions, claimed,
               ipt_sigma: float | None = None) -> dict[str, torch.Tensor]:
    """Scores that need the whole row: sample_prob [n] (float64) and, with ipt_sigma, ipt [n]."""
    n = logits.shape[0]
    p, pos = rows(params_rows, n), _positions(positions, n)
    probs = sample_probs(logits, p, pos)
    c = torch.as_tensor(claimed, dtype=torch.int64).reshape(-1, 1)
    out = {"sample_prob": probs.gather(1, c)[:, 0]}
    if ipt_sigma is not None:
        out["ipt"] = ipt(probs, c[:, 0], ipt_uniform(p["seed"], pos), ipt_sigma)
    return out


def delta_star(gls_threshold: float, sigma: float) -> float:
    """The margin below which gls > threshold: -sqrt(2) sigma Phi^-1(exp(threshold))."""
    if gls_threshold >= math.log(0.5):
        return 0.0  # only Delta < 0 would pass, and margins are >= 0
    return -math.sqrt(2.0) * sigma * float(torch.special.ndtri(
        torch.tensor(math.exp(gls_threshold), dtype=torch.float64)))
