"""Acceptance policies: which output tokens the verifier accepts (docs/exfiltration.md).

A policy is one class that owns its behaviour, so adding a policy is adding a class here:
- `accepts(scores)` and `suspicious(scores)` on the score columns, from which `verdicts` follow
  ('safe', 'suspicious' or 'dangerous');
- `mask(logits, params, positions)`: the accepted set at each position, which the bound counts
  (replay.bound) and the arithmetic-coding attacker codes in;
- `needs`: the score columns beyond sampling.score's that it reads ("sample_prob", "ipt"), which a
  Scorer (replay.verify) must provide; `gls_sigma`: the sigma of the report's gls column;
  `single`: it accepts exactly one token per position (then nothing can be hidden).
Build them as Policy.exact(), Policy.tolerant(...), Policy.prob_threshold(p_min),
Policy.top_k(k), or Policy.from_dict(a report.json's policy).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from replay import scores as S


def gls(margin: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gumbel-max likelihood score log Phi(-Delta / (sqrt(2) sigma)); log 0.5 at Delta = 0."""
    return torch.special.log_ndtr(-margin.double() / (math.sqrt(2.0) * sigma))


def _column(scores: dict, name: str, policy: str) -> torch.Tensor:
    if name not in scores:
        raise ValueError(f"{policy} policy: scores lack {name!r} (compute them with "
                         "replay.scores.row_scores, or a Scorer that provides it)")
    return scores[name]


class Policy:
    kind: ClassVar[str] = ""
    single: ClassVar[bool] = False
    needs: ClassVar[frozenset[str]] = frozenset()
    gls_sigma: ClassVar[float] = 1.0
    gls_cut: ClassVar[float | None] = None   # gls at or below which it rejects, if it judges by gls
    rank_threshold: ClassVar[int | None] = None  # two-step charging: see suspicious()
    _kinds: ClassVar[dict[str, type]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        Policy._kinds[cls.kind] = cls

    @classmethod
    def from_dict(cls, d: dict) -> "Policy":
        """The policy of `to_dict` (report.json); fields that the kind does not have are ignored
        (older reports wrote every policy's fields)."""
        kind = d.get("kind", "exact")
        if kind not in cls._kinds:
            raise ValueError(f"unknown policy {kind!r}: expected one of {tuple(cls._kinds)}")
        sub = cls._kinds[kind]
        names = {f.name for f in dataclasses.fields(sub)}
        return sub(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return {"kind": self.kind, **dataclasses.asdict(self)}

    def accepts(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """BoolTensor: the tokens the policy accepts ('safe')."""
        raise NotImplementedError

    def suspicious(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """BoolTensor: the tokens that are 'suspicious' if rejected (the bound's two-step
        charging counts such an honest token log2(rank_threshold + 1) bits, not log2 V)."""
        return torch.zeros(len(next(iter(scores.values()))), dtype=torch.bool)

    def verdicts(self, scores: dict[str, torch.Tensor]) -> list[str]:
        """Per token: 'safe', 'suspicious' or 'dangerous'."""
        ok, sus = self.accepts(scores).tolist(), self.suspicious(scores).tolist()
        return ["safe" if a else ("suspicious" if s else "dangerous") for a, s in zip(ok, sus)]

    def mask(self, logits: torch.Tensor, params: dict, positions: list[int]) -> torch.Tensor:
        """BoolTensor [m, V]: the tokens the policy would accept at each row of logits [m, V]
        (params: per-row lists as replay.scores.rows gives them)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Exact(Policy):
    """Accept a token iff it is the sampler's choice on the recomputed logits: for engines that
    run replay's kernels, where honest traffic passes 100% of tokens."""
    kind: ClassVar[str] = "exact"
    single: ClassVar[bool] = True

    def accepts(self, scores):
        return scores["exact"].bool()

    def mask(self, logits, params, positions):
        from replay import sampling

        choice = sampling.sample(logits, **params, position=positions)
        return torch.nn.functional.one_hot(choice, logits.shape[1]).bool()


@dataclass(frozen=True)
class Tolerant(Policy):
    """For engines that do not run replay's kernels (stock vLLM, SGLang, HF): accept ('safe') if
    the score is above gls_threshold, else 'suspicious' if the raw-logit rank is at most
    rank_threshold, else 'dangerous'. The score is gls = log Phi(-Delta / (sqrt(2) sigma)), Delta
    the margin in logit units (score="gls"), or the inverse-probability-transform score
    (score="ipt", sigma in probability units; replay.scores)."""
    kind: ClassVar[str] = "tolerant"
    gls_threshold: float = -5.0
    rank_threshold: int = 32
    sigma: float = 1.0
    score: str = "gls"

    def __post_init__(self):
        if not self.sigma > 0:
            raise ValueError(f"tolerant policy: sigma must be > 0, got {self.sigma}")
        if self.score not in ("gls", "ipt"):
            raise ValueError(f"tolerant policy: score must be 'gls' or 'ipt', got {self.score!r}")

    @property
    def needs(self):
        return frozenset({"ipt"}) if self.score == "ipt" else frozenset()

    @property
    def gls_sigma(self):
        return self.sigma if self.score == "gls" else 1.0

    @property
    def gls_cut(self):
        return self.gls_threshold if self.score == "gls" else None

    def accepts(self, scores):
        if self.score == "ipt":
            return _column(scores, "ipt", "tolerant (score='ipt')").double() > self.gls_threshold
        return gls(scores["margin"], self.sigma) > self.gls_threshold

    def suspicious(self, scores):
        return torch.as_tensor(scores["rank"]) <= self.rank_threshold

    def mask(self, logits, params, positions):
        kept = S.kept_mask(logits, params, positions)
        if self.score == "ipt":
            probs = S.sample_probs(logits, params, positions, kept)
            u = S.ipt_uniform(params["seed"], positions)
            return S.ipt_all(probs, u, self.sigma) > self.gls_threshold
        return gls(S.margins(logits, params, positions, kept), self.sigma) > self.gls_threshold


@dataclass(frozen=True)
class ProbThreshold(Policy):
    """Accept tokens whose probability under the recorded sampling distribution (softmax(l / T)
    renormalised over the top-k / top-p kept set) is at least p_min."""
    kind: ClassVar[str] = "prob_threshold"
    needs: ClassVar[frozenset[str]] = frozenset({"sample_prob"})
    p_min: float = 0.0

    def __post_init__(self):
        if not 0 <= self.p_min <= 1:
            raise ValueError(f"prob_threshold policy: p_min must be in [0, 1], got {self.p_min}")

    def accepts(self, scores):
        return _column(scores, "sample_prob", "prob_threshold") >= self.p_min

    def mask(self, logits, params, positions):
        return S.sample_probs(logits, params, positions) >= self.p_min


@dataclass(frozen=True)
class TopK(Policy):
    """Accept tokens of raw-logit rank < k (rank = #{i : l_i > l_c})."""
    kind: ClassVar[str] = "top_k"
    k: int = 1

    def __post_init__(self):
        if not (isinstance(self.k, int) and self.k >= 1):
            raise ValueError(f"top_k policy: k must be an integer >= 1, got {self.k!r}")

    def accepts(self, scores):
        return scores["rank"] < self.k

    def mask(self, logits, params, positions):
        kth = torch.topk(logits, min(self.k, logits.shape[1]), dim=1).values[:, -1:]
        return logits >= kth  # rank #{l_i > l_c} < k  <=>  l_c >= the k-th largest value


# The constructors: Policy.tolerant(gls_threshold, rank_threshold, sigma, score) is Tolerant(...).
Policy.exact, Policy.tolerant, Policy.prob_threshold, Policy.top_k = (Exact, Tolerant,
                                                                       ProbThreshold, TopK)
