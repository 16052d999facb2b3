"""The verifier's Report: per-token and per-record tables, verdicts, and a short summary.

    report.ok                    True iff every record passed and none was malformed
    report.records_df()          one row per input record (pandas)
    report.tokens_df()           one row per output token (pandas)
    report.write("out/")         records.parquet, tokens.parquet, report.json
    print(report.summary())
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import torch

from replay.policy import Policy

TOKEN_COLUMNS = ("request_id", "index", "position", "token", "choice", "exact", "logprob", "rank",
                 "in_top_k", "in_top_p", "margin", "kept", "gls", "verdict")


@dataclass
class Report:
    policy: Policy
    model: str
    vocab_size: int
    tokens: dict = field(default_factory=lambda: {k: [] for k in TOKEN_COLUMNS})
    records: list = field(default_factory=list)
    logits: dict = field(default_factory=dict)   # request_id -> (n_output, vocab), keep_logits
    seconds: float = 0.0
    _per_record: dict = field(default_factory=dict)

    # -- filled in by replay.verify -------------------------------------------------------------

    def add_error(self, rec, err):
        rid = getattr(rec, "request_id", None) or getattr(err, "record", None)
        self.records.append({
            "request_id": rid, "verdict": "error", "reason": str(err),
            "field": getattr(err, "field", None), "n_tokens": 0, "n_exact": 0,
            "n_suspicious": 0, "n_dangerous": 0, "first_failure": None, "termination": None,
        })

    def add_tokens(self, pack, meta, sc, verdicts):
        cols = self.tokens
        lists = {k: sc[k].tolist() for k in ("choice", "exact", "logprob", "rank", "in_top_k",
                                              "in_top_p", "margin", "kept", "gls")}
        for n, (s, j, pos, tok, _) in enumerate(meta):
            rid = pack[s].rec.request_id
            cols["request_id"].append(rid)
            cols["index"].append(j)
            cols["position"].append(pos)
            cols["token"].append(tok)
            for k, v in lists.items():
                cols[k].append(v[n])
            cols["verdict"].append(verdicts[n])
            self._per_record.setdefault(rid, []).append(len(cols["verdict"]) - 1)

    def finish(self, good, seconds: float):
        cols = self.tokens
        for it in good:
            r = it.rec
            idx = self._per_record.get(r.request_id, [])
            v = [cols["verdict"][i] for i in idx]
            n_exact = sum(bool(cols["exact"][i]) for i in idx)
            first = next((cols["index"][i] for i in idx if cols["verdict"][i] != "safe"), None)
            term = r.termination()
            reasons = []
            if first is not None:
                i = idx[first]
                reasons.append(f"token {first} (position {cols['position'][i]}): claimed "
                               f"{cols['token'][i]}, sampler chose {cols['choice'][i]}")
            if term.startswith("bad"):
                reasons.append(f"termination: {term[4:]}")
            n_d = v.count("dangerous")
            self.records.append({
                "request_id": r.request_id,
                "verdict": "fail" if reasons else "pass",
                "reason": "; ".join(reasons), "field": None, "n_tokens": len(idx),
                "n_exact": n_exact, "n_suspicious": v.count("suspicious"), "n_dangerous": n_d,
                "first_failure": first, "termination": term,
            })
        self.seconds = seconds

    # -- reading --------------------------------------------------------------------------------

    @property
    def n_tokens(self) -> int:
        return len(self.tokens["token"])

    @property
    def ok(self) -> bool:
        return all(r["verdict"] == "pass" for r in self.records)

    def counts(self) -> dict:
        v = [r["verdict"] for r in self.records]
        n = self.n_tokens
        return {
            "records": len(v), "pass": v.count("pass"), "fail": v.count("fail"),
            "error": v.count("error"), "tokens": n,
            "exact_tokens": int(sum(self.tokens["exact"])),
            "safe_tokens": self.tokens["verdict"].count("safe"),
            "channel_bits": n * math.log2(self.vocab_size) if self.vocab_size else 0.0,
            # Under the exact policy one token is accepted per position: nothing can be hidden.
            "hidden_bits": 0.0 if self.policy.kind == "exact" else None,
            "seconds": self.seconds,
            "tokens_per_second": n / self.seconds if self.seconds > 0 else None,
        }

    def records_df(self):
        import pandas as pd
        return pd.DataFrame(self.records)

    def tokens_df(self):
        import pandas as pd
        return pd.DataFrame(self.tokens)

    def to_dict(self, tokens: bool = False) -> dict:
        d = {"model": self.model, "policy": self.policy.__dict__, "counts": self.counts(),
             "records": self.records}
        if tokens:
            d["tokens"] = self.tokens
        return d

    def write(self, out_dir: str):
        """records.parquet, tokens.parquet and report.json (counts and per-record verdicts)."""
        os.makedirs(out_dir, exist_ok=True)
        self.records_df().to_parquet(os.path.join(out_dir, "records.parquet"))
        self.tokens_df().to_parquet(os.path.join(out_dir, "tokens.parquet"))
        with open(os.path.join(out_dir, "report.json"), "w") as f:
            json.dump(self.to_dict(), f, indent=1, default=_json_default)

    def plot(self, out_dir: str, attacked=None, records=None, thresholds=None) -> list[str]:
        """PNG plots of this (honest) report against attacked traffic (replay.plots):
        scores.png (gls histograms), detection.png (attacked records caught against tokens
        inspected) and, when the report kept its logits and `records` (the verified records,
        for their sampling parameters) are given, sweep.png (extractable fraction against
        false-positive rate over gls `thresholds`). attacked: a Report or {label: Report}."""
        from replay import plots

        os.makedirs(out_dir, exist_ok=True)
        if isinstance(attacked, Report):
            attacked = {"attacked": attacked}
        attacked = attacked or {}
        thr = self.policy.gls_threshold if self.policy.kind == "tolerant" else None
        out = [plots.score_histogram(self.tokens["gls"],
                                     {k: r.tokens["gls"] for k, r in attacked.items()},
                                     os.path.join(out_dir, "scores.png"), threshold=thr)]
        if attacked:
            curves = {}
            for k, r in attacked.items():
                rows = [x for x in r.records if x["verdict"] != "error"]
                curves[k] = plots.detection_curve([plots.first_failure(x) for x in rows],
                                                  [x["n_tokens"] for x in rows])
            out.append(plots.detection_plot(curves, os.path.join(out_dir, "detection.png"),
                                            title=f"detection under the {self.policy.kind} "
                                                  f"policy"))
        if self.logits and records is not None:
            from replay import bound

            by_id = {r.request_id: r for r in records}
            t = self.tokens
            logits = torch.cat([self.logits[rid] for rid in dict.fromkeys(t["request_id"])])
            params = [by_id[rid].params for rid in t["request_id"]]
            thresholds = thresholds or [-1, -2, -3, -5, -8, -12, -20, -30]
            curve = bound.sweep(logits, params, t["position"], torch.tensor(t["margin"]),
                                thresholds, sigma=self.policy.sigma)
            out.append(plots.sweep_plot({self.model: curve}, os.path.join(out_dir, "sweep.png")))
        return out

    def summary(self, max_lines: int = 10) -> str:
        c = self.counts()
        n = max(c["tokens"], 1)
        lines = [
            f"replay verify: {c['records']} records, {c['tokens']:,} output tokens, "
            f"model {self.model}, policy {self.policy.kind}",
            f"  records: {c['pass']} pass, {c['fail']} fail, {c['error']} malformed",
            f"  tokens:  {c['exact_tokens']:,} exact ({100 * c['exact_tokens'] / n:.2f}%), "
            f"{c['safe_tokens']:,} accepted ({100 * c['safe_tokens'] / n:.2f}%)",
        ]
        if c["hidden_bits"] is not None:
            lines.append(f"  hidden capacity: {c['hidden_bits']:.0f} bits of a "
                         f"{c['channel_bits']:,.0f}-bit channel")
        bad = [r for r in self.records if r["verdict"] != "pass"]
        for r in bad[:max_lines]:
            lines.append(f"  {r['verdict'].upper():5s} {r['request_id']}: {r['reason']}")
        if len(bad) > max_lines:
            lines.append(f"  ... and {len(bad) - max_lines} more")
        if c["tokens_per_second"]:
            lines.append(f"  verified in {c['seconds']:.2f} s "
                         f"({c['tokens_per_second']:,.0f} tokens/s)")
        return "\n".join(lines)

    def __repr__(self):
        c = self.counts()
        return (f"Report({c['records']} records: {c['pass']} pass, {c['fail']} fail, "
                f"{c['error']} error; {c['tokens']} tokens)")


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, float) and math.isinf(o):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")
