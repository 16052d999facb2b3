"""The hidden-capacity bound (DESIGN §5, docs/exfiltration.md).

At each output position the policy accepts a set A_t of tokens. A compromised server can pick any
token of A_t without being flagged, so it can hide at most log2 |A_t| bits there. Honest tokens
that the policy rejects anyway (false positives) are positions where the defender has to tolerate
alarms, so they are charged the whole channel, log2 V bits (the published bound's convention);
the two-step option charges honest "suspicious" tokens log2(rank_threshold + 1), the number of
ranks 0..rank_threshold that a suspicious token may take.

    sizes = accepted_sizes(logits, params_rows, positions, policy)      # [n]
    b = capacity(sizes, V, accepted_honest)                             # Bound
    thr = threshold_for_fpr(margins_honest, sigma=1.0, target_fpr=1e-4)
    curve = sweep(logits, params_rows, positions, margins_honest, [-2, -5, -10], sigma=1.0)

logits: float32 [n, V], the recomputed rows of the output positions; params_rows: a list of
SamplingParams (one per row, or one for all) or a dict temperature / top_k / top_p / seed of
scalars, lists or tensors; positions: absolute positions (prompt length + output index).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from replay import scores as S
from replay.policy import Policy, gls

CHUNK = 256  # rows per pass: [CHUNK, V] float64 scratch stays small at V = 152k


def _rowwise(logits, params_rows, positions, chunk=CHUNK):
    n = logits.shape[0]
    p, pos = S.rows(params_rows, n), S._positions(positions, n)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        yield a, b, logits[a:b], {k: v[a:b] for k, v in p.items()}, pos[a:b]


def accepted_masks(logits: torch.Tensor, params_rows, positions, policy: Policy) -> torch.Tensor:
    """BoolTensor [n, V]: the tokens the policy would accept at each position."""
    return torch.cat([policy.mask(l, p, pos)
                      for _, _, l, p, pos in _rowwise(logits, params_rows, positions)]) \
        if len(logits) else torch.zeros(0, logits.shape[1], dtype=torch.bool)


def accepted_mask(logits_row: torch.Tensor, params, position: int, policy: Policy
                  ) -> torch.Tensor:
    """BoolTensor [V]: the accepted set at one position (params: a SamplingParams or a dict)."""
    p = params if isinstance(params, dict) else [params]
    return accepted_masks(logits_row.reshape(1, -1), p, [int(position)], policy)[0]


def accepted_sizes(logits: torch.Tensor, params_rows, positions, policy: Policy
                   ) -> torch.Tensor:
    """LongTensor [n]: |A_t|, the number of tokens the policy would accept at each position."""
    out = torch.empty(logits.shape[0], dtype=torch.int64)
    for a, b, l, p, pos in _rowwise(logits, params_rows, positions):
        out[a:b] = policy.mask(l, p, pos).sum(1)
    return out


@dataclass
class Bound:
    n_tokens: int
    vocab_size: int
    hidden_bits: float      # sum over tokens of the bits charged there
    channel_bits: float     # n_tokens * log2(V)
    fraction: float         # hidden_bits / channel_bits
    false_positives: int    # honest tokens the policy did not accept
    fpr: float              # false_positives / n_tokens
    accepted_bits: float = 0.0    # part of hidden_bits from accepted sets, sum log2 |A_t|
    suspicious: int = 0           # two-step: false positives charged log2(rank_threshold + 1)

    def bytes_per_day(self, tokens_per_day: float) -> float:
        return bytes_per_day(self.fraction, tokens_per_day, self.vocab_size)


def capacity(sizes: torch.Tensor, vocab_size: int, accepted_honest: torch.Tensor | None = None,
             suspicious_honest: torch.Tensor | None = None,
             rank_threshold: int | None = None) -> Bound:
    """The bound from per-position accepted-set sizes [n].

    accepted_honest [n] (bool): whether the policy accepted the honest token there (default: all
    accepted); a rejected honest token is charged log2 V bits. Two-step charging: pass
    suspicious_honest [n] (bool) and rank_threshold, and rejected honest tokens that are
    suspicious are charged log2(rank_threshold + 1) instead."""
    sizes = torch.as_tensor(sizes, dtype=torch.int64)
    n = len(sizes)
    acc = (torch.ones(n, dtype=torch.bool) if accepted_honest is None
           else torch.as_tensor(accepted_honest, dtype=torch.bool))
    if len(acc) != n:
        raise ValueError(f"accepted_honest: {len(acc)} values for {n} sizes")
    logV = math.log2(vocab_size)
    bits = torch.where(acc, torch.log2(sizes.clamp_min(1).double()), logV)
    sus = torch.zeros(n, dtype=torch.bool)
    if suspicious_honest is not None:
        sus = ~acc & torch.as_tensor(suspicious_honest, dtype=torch.bool)
    if sus.any():
        if rank_threshold is None:
            raise ValueError("two-step charging needs rank_threshold")
        bits = torch.where(sus, math.log2(min(rank_threshold + 1, vocab_size)), bits)
    hidden = float(bits.sum())
    channel = n * logV
    fp = int((~acc).sum())
    return Bound(n, vocab_size, hidden, channel, hidden / channel if channel else 0.0, fp,
                 fp / n if n else 0.0,
                 accepted_bits=float(torch.log2(sizes[acc].clamp_min(1).double()).sum()),
                 suspicious=int(sus.sum()))


def bytes_per_day(fraction: float, tokens_per_day: float, vocab_size: int) -> float:
    """Bytes a server could hide per day: fraction * tokens_per_day * log2(V) / 8."""
    return fraction * tokens_per_day * math.log2(vocab_size) / 8.0


def bound(report, records, policy: Policy | None = None, two_step: bool = False) -> Bound:
    """The bound for a Report made with keep_logits=True, under `policy` (default: the report's).
    records: the verified records (for their sampling parameters). The honest tokens are the
    report's tokens; accepted when the policy accepts them (recomputed for a policy other than
    the report's, from the report's score columns). two_step: the policy's suspicious tokens
    are charged log2(rank_threshold + 1) bits (Policy.suspicious, as its verdicts say)."""
    from replay.verify import ReplayScorer

    policy = policy or report.policy
    t = report.tokens
    logits, params = report.rows(records)
    sizes = accepted_sizes(logits, params, t["position"], policy)
    sc = {k: torch.tensor(t[k]) for k in ("exact", "rank", "margin")}
    sc.update(ReplayScorer.row_columns(logits, params, t["position"], t["token"], policy))
    acc = policy.accepts(sc)
    sus = policy.suspicious(sc) if two_step else None
    return capacity(sizes, report.vocab_size, acc, sus, policy.rank_threshold)


def gls_sizes(logits: torch.Tensor, params_rows, positions, thresholds, sigma: float = 1.0
              ) -> torch.Tensor:
    """LongTensor [len(thresholds), n]: |A_t| of the gls policy at each threshold, the tokens c
    with gls(margin_c) > threshold."""
    thr = torch.tensor(list(thresholds), dtype=torch.float64)
    sizes = torch.empty(len(thr), logits.shape[0], dtype=torch.int64)
    for a, b, l, p, pos in _rowwise(logits, params_rows, positions):
        g = torch.sort(gls(S.margins(l, p, pos), sigma), dim=1).values      # [m, V] ascending
        # tokens with gls > thr: V - #(gls <= thr)
        le = torch.searchsorted(g, thr[None, :].expand(b - a, -1).contiguous(), right=True)
        sizes[:, a:b] = (g.shape[1] - le).T
    return sizes


def sweep(logits: torch.Tensor, params_rows, positions, margins_honest: torch.Tensor,
          thresholds, sigma: float = 1.0, ranks_honest: torch.Tensor | None = None,
          rank_threshold: int | None = None) -> list[tuple[float, float, float]]:
    """[(threshold, fpr, fraction)] for the gls policy at each threshold: fpr over the honest
    tokens (margins_honest [n], the verifier's margin column), fraction of the channel charged by
    `capacity`. With ranks_honest and rank_threshold, two-step charging."""
    if ranks_honest is not None and rank_threshold is None:
        raise ValueError("two-step charging needs rank_threshold")
    sizes = gls_sizes(logits, params_rows, positions, thresholds, sigma)
    sc = {"margin": torch.as_tensor(margins_honest)}
    sc["rank"] = (torch.zeros(len(sc["margin"]), dtype=torch.int64) if ranks_honest is None
                  else torch.as_tensor(ranks_honest))
    out = []
    for j, th in enumerate(thresholds):
        pol = Policy.tolerant(th, rank_threshold or 0, sigma)
        sus = pol.suspicious(sc) if ranks_honest is not None else None
        bd = capacity(sizes[j], logits.shape[1], pol.accepts(sc), sus, pol.rank_threshold)
        out.append((float(th), bd.fpr, bd.fraction))
    return out


def threshold_for_fpr(margins_honest: torch.Tensor, sigma: float = 1.0,
                      target_fpr: float = 1e-4) -> float:
    """The largest (strictest) gls threshold whose honest false-positive rate, the share of
    honest tokens with gls <= threshold, is at most target_fpr."""
    g = torch.sort(gls(torch.as_tensor(margins_honest), sigma)).values
    n = len(g)
    if n == 0:
        raise ValueError("threshold_for_fpr: no honest tokens")
    m = int(math.floor(target_fpr * n))  # honest tokens allowed to fail
    if m >= n:
        return math.inf
    # every token with gls < g[m] may fail (there are at most m); g[m] itself must pass
    return math.nextafter(float(g[m]), -math.inf)
