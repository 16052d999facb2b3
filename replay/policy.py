"""Acceptance policies: which output tokens the verifier accepts (docs/exfiltration.md).

- exact: accept a token iff it equals the sampler's choice on the recomputed logits. For engines
  that run replay's kernels, where honest traffic passes 100% of tokens.
- tolerant: for engines that do not (stock vLLM, SGLang, HF): accept ("safe") if the score is
  above a threshold; otherwise "suspicious" if the raw-logit rank is at most rank_threshold, else
  "dangerous". The score is the Gumbel-max likelihood score gls = log Phi(-Delta / (sqrt(2)
  sigma)), Delta the margin in logit units (default), or the inverse-probability-transform score
  (score="ipt", sigma then in probability units; replay.scores).
- prob_threshold: accept tokens whose probability under the recorded sampling distribution
  (softmax(l / T) renormalised over the top-k / top-p kept set) is at least p_min.
- top_k: accept tokens of raw-logit rank < k (rank = #{i : l_i > l_c}).

Tokens that a policy does not accept are "dangerous" (tolerant: "suspicious" or "dangerous").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

KINDS = ("exact", "tolerant", "prob_threshold", "top_k")


def gls(margin: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gumbel-max likelihood score log Phi(-Delta / (sqrt(2) sigma)); log 0.5 at Delta = 0."""
    return torch.special.log_ndtr(-margin.double() / (math.sqrt(2.0) * sigma))


@dataclass(frozen=True)
class Policy:
    kind: str = "exact"
    gls_threshold: float = -5.0   # tolerant: threshold on the score (gls or ipt)
    rank_threshold: int = 32      # tolerant: failing tokens of rank <= this are "suspicious"
    sigma: float = 1.0            # tolerant: gls in logit units; ipt in probability units
    p_min: float = 0.0            # prob_threshold
    k: int = 1                    # top_k
    score: str = "gls"            # tolerant: "gls" or "ipt"

    @classmethod
    def exact(cls) -> "Policy":
        return cls("exact")

    @classmethod
    def tolerant(cls, gls_threshold: float = -5.0, rank_threshold: int = 32,
                 sigma: float = 1.0, score: str = "gls") -> "Policy":
        return cls("tolerant", gls_threshold, rank_threshold, sigma, score=score)

    @classmethod
    def prob_threshold(cls, p_min: float) -> "Policy":
        return cls("prob_threshold", p_min=p_min)

    @classmethod
    def top_k(cls, k: int) -> "Policy":
        return cls("top_k", k=k)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown policy {self.kind!r}: expected one of {KINDS}")
        if self.kind == "tolerant":
            if not self.sigma > 0:
                raise ValueError(f"tolerant policy: sigma must be > 0, got {self.sigma}")
            if self.score not in ("gls", "ipt"):
                raise ValueError(f"tolerant policy: score must be 'gls' or 'ipt', got "
                                 f"{self.score!r}")
        if self.kind == "prob_threshold" and not 0 <= self.p_min <= 1:
            raise ValueError(f"prob_threshold policy: p_min must be in [0, 1], got {self.p_min}")
        if self.kind == "top_k" and not (isinstance(self.k, int) and self.k >= 1):
            raise ValueError(f"top_k policy: k must be an integer >= 1, got {self.k!r}")

    @property
    def needs_rows(self) -> bool:
        """Whether verdicts need scores.row_scores (sample_prob, ipt) besides sampling.score."""
        return self.kind == "prob_threshold" or (self.kind == "tolerant" and self.score == "ipt")

    def tolerant_score(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """The tolerant policy's score per token (gls from the margin, or the ipt column)."""
        if self.score == "ipt":
            if "ipt" not in scores:
                raise ValueError("tolerant policy with score='ipt': scores lack 'ipt' "
                                 "(compute them with replay.scores.row_scores)")
            return scores["ipt"].double()
        return gls(scores["margin"], self.sigma)

    def accepts(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """BoolTensor: the tokens the policy accepts ('safe')."""
        if self.kind == "exact":
            return scores["exact"].bool()
        if self.kind == "tolerant":
            return self.tolerant_score(scores) > self.gls_threshold
        if self.kind == "top_k":
            return scores["rank"] < self.k
        if "sample_prob" not in scores:
            raise ValueError("prob_threshold policy: scores lack 'sample_prob' "
                             "(compute them with replay.scores.row_scores)")
        return scores["sample_prob"] >= self.p_min

    def verdicts(self, scores: dict[str, torch.Tensor]) -> list[str]:
        """Per token: 'safe', 'suspicious' or 'dangerous'."""
        ok = self.accepts(scores).tolist()
        if self.kind != "tolerant":
            return ["safe" if a else "dangerous" for a in ok]
        return ["safe" if a else ("suspicious" if r <= self.rank_threshold else "dangerous")
                for a, r in zip(ok, scores["rank"].tolist())]
