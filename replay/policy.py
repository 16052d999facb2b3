"""Acceptance policies: which output tokens the verifier accepts.

- exact: accept a token iff it equals the sampler's choice on the recomputed logits. For engines
  that run replay's kernels, where honest traffic passes 100% of tokens.
- tolerant: for engines that do not (stock vLLM, SGLang, HF): accept if the Gumbel-max likelihood
  score gls = log Phi(-Delta / (sqrt(2) sigma)) is above a threshold, where Delta is the margin in
  logit units; otherwise the token is "suspicious" if its rank is at most rank_threshold, else
  "dangerous".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def gls(margin: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gumbel-max likelihood score log Phi(-Delta / (sqrt(2) sigma)); log 0.5 at Delta = 0."""
    return torch.special.log_ndtr(-margin.double() / (math.sqrt(2.0) * sigma))


@dataclass(frozen=True)
class Policy:
    kind: str = "exact"
    gls_threshold: float = -5.0
    rank_threshold: int = 32
    sigma: float = 1.0

    @classmethod
    def exact(cls) -> "Policy":
        return cls("exact")

    @classmethod
    def tolerant(cls, gls_threshold: float = -5.0, rank_threshold: int = 32,
                 sigma: float = 1.0) -> "Policy":
        if sigma <= 0:
            raise ValueError(f"tolerant policy: sigma must be > 0, got {sigma}")
        return cls("tolerant", gls_threshold, rank_threshold, sigma)

    def __post_init__(self):
        if self.kind not in ("exact", "tolerant"):
            raise ValueError(f"unknown policy {self.kind!r}: expected 'exact' or 'tolerant'")

    def verdicts(self, scores: dict[str, torch.Tensor]) -> list[str]:
        """Per token: 'safe', 'suspicious' or 'dangerous'."""
        if self.kind == "exact":
            return ["safe" if e else "dangerous" for e in scores["exact"].tolist()]
        g = gls(scores["margin"], self.sigma)
        out = []
        for gi, r in zip(g.tolist(), scores["rank"].tolist()):
            if gi > self.gls_threshold:
                out.append("safe")
            else:
                out.append("suspicious" if r <= self.rank_threshold else "dangerous")
        return out
