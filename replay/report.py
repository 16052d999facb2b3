"""The verifier's Report: per-token and per-record tables, verdicts, and a short summary.

    report.ok                    True iff every record passed and none was malformed
    report.records_df()          one row per input record (pandas)
    report.tokens_df()           one row per output token (pandas)
    report.write("out/")         records.parquet, tokens.parquet, report.json
    print(report.summary())
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from replay.text import Context, printable

# torch and the policy are imported where they are used: the fleet's reader and the watcher build
# and read result rows in processes that load no model (tests/test_architecture.py)
if TYPE_CHECKING:
    import torch

    from replay.policy import Policy

TOKEN_COLUMNS = ("request_id", "index", "position", "token", "choice", "exact", "logprob", "rank",
                 "in_top_k", "in_top_p", "margin", "kept", "gls", "verdict")
# with a tokenizer (replay.text): each token's piece of the decoded text, and the sampler's choice's
TEXT_COLUMNS = ("text", "choice_text")


@dataclass(frozen=True)
class RecordResult:
    """The verdict on one input record: the row that the report, the fleet and the watcher write.

    verdict: "pass", "fail" (a token the policy does not accept, a bad termination, a seed that is
    not the logger's, a field that differs from the logger's request) or "error" (malformed or
    unreadable: `field` names the offending field); reason: why, empty on a pass; first_failure:
    the output index of the first token that is not "safe"; termination: Record.termination()
    ("stop", "length", "context" or "bad:<reason>").
    With a tokenizer, the first failing token in its text (replay.text.Context): text_before (the
    text ahead of it, with a leading "\u2026" when cut), text_claimed and text_choice (the claimed
    token's and the sampler's choice's pieces); None otherwise.
    Reading a row as a mapping (row["verdict"]) works too, as the rows were dicts before."""
    request_id: str | None
    verdict: str
    reason: str = ""
    field: str | None = None
    n_tokens: int = 0
    n_exact: int = 0
    n_suspicious: int = 0
    n_dangerous: int = 0
    first_failure: int | None = None
    termination: str | None = None
    text_before: str | None = None
    text_claimed: str | None = None
    text_choice: str | None = None

    @classmethod
    def error(cls, err: Exception, where: str | None = None) -> "RecordResult":
        """The row of a record or file that could not be verified (err: usually a RecordError)."""
        return cls(getattr(err, "record", None) or where, "error", str(err),
                   getattr(err, "field", None))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def context_line(self) -> str | None:
        """The first failing token in its text, one printable line (None without text)."""
        ctx = Context.of(self)
        return ctx.line() if ctx else None

    def __getitem__(self, name: str):
        return getattr(self, name)


COLUMNS = tuple(f.name for f in dataclasses.fields(RecordResult))


@dataclass
class Report:
    policy: Policy
    model: str
    vocab_size: int
    stack: str = ""  # the kernel stack the verifier ran on (replay.ops.stack)
    stacks: dict = field(default_factory=dict)  # the stacks the records name -> records ("" = none)
    tokens: dict = field(default_factory=lambda: {k: [] for k in TOKEN_COLUMNS})
    records: list = field(default_factory=list)  # RecordResult, one per input record
    logits: dict = field(default_factory=dict)   # request_id -> (n_output, vocab), keep_logits
    seconds: float = 0.0
    prompts: dict = field(default_factory=dict)  # request_id -> decoded prompt (with a tokenizer)
    _per_record: dict = field(default_factory=dict)

    # -- filled in by replay.verify -------------------------------------------------------------

    def add_error(self, err: Exception):
        self.records.append(RecordResult.error(err))

    def add_stack_mismatch(self, record, claims=(), max_context: int | None = None):
        """A record made on another kernel stack, under a policy that needs exact replay: it is
        not scored (its tokens would read as forged) and fails as "stack mismatch"; the checks
        that need no logits (its claims: [(field, reason)], replay.verify.claim_failures, and
        termination) still apply."""
        term = record.termination(max_context)
        reasons = [f"stack mismatch: generated on {record.stack!r}, the verifier runs "
                   f"{self.stack!r}; exact replay holds within one stack (verify it on that stack)"]
        reasons += [reason for _, reason in claims]
        if term.startswith("bad"):
            reasons.append(f"termination: {term[4:]}")
        self.records.append(RecordResult(record.request_id, "fail", "; ".join(reasons), "stack",
                                         termination=term))

    def add_tokens(self, positions, sc: dict, verdicts: list[str]):
        """One chunk of scored positions (replay.verify.Position) and their verdicts."""
        cols = self.tokens
        lists = {k: sc[k].tolist() for k in TOKEN_COLUMNS[4:-1]}
        for n, p in enumerate(positions):
            rid = p.record.request_id
            self._per_record.setdefault(rid, []).append(len(cols["verdict"]))
            for k, v in zip(TOKEN_COLUMNS[:4], (rid, p.index, p.position, p.token)):
                cols[k].append(v)
            for k, v in lists.items():
                cols[k].append(v[n])
            cols["verdict"].append(verdicts[n])

    def finish(self, records, seconds: float, claims: dict | None = None,
               max_context: int | None = None, text=None):
        """One RecordResult per verified record, from its tokens' verdicts, its termination
        (against the logger's limits and the model's max_context) and the checks of what it
        claims (claims: request_id -> [(field, reason)], replay.verify.claim_failures). text: a
        replay.text.Text, for the token table's text columns, the decoded prompts and each first
        failure's context."""
        cols, claims = self.tokens, claims or {}
        if text is not None:
            self._add_text(records, text)
        for r in records:
            idx = self._per_record.get(r.request_id, [])
            v = [cols["verdict"][i] for i in idx]
            first = next((cols["index"][i] for i in idx if cols["verdict"][i] != "safe"), None)
            term = r.termination(max_context)
            bad = claims.get(r.request_id, [])
            reasons, fld = [reason for _, reason in bad], bad[0][0] if bad else None
            ctx = {}
            if first is not None:
                i = idx[first]
                reasons.append(f"token {first} (position {cols['position'][i]}): claimed "
                               f"{cols['token'][i]}, sampler chose {cols['choice'][i]}")
                if text is not None:
                    ctx = text.context(r.prompt, r.output, first, cols["choice"][i]).fields()
            if term.startswith("bad"):
                reasons.append(f"termination: {term[4:]}")
            self.records.append(RecordResult(
                r.request_id, "fail" if reasons else "pass", "; ".join(reasons), fld, len(idx),
                sum(bool(cols["exact"][i]) for i in idx), v.count("suspicious"),
                v.count("dangerous"), first, term, **ctx))
        self.seconds = seconds

    def _add_text(self, records, text):
        # The text columns in the token table's order: each record's output pieces decoded after
        # the end of its prompt; the choice's piece where the sampler chose another token.
        cols = self.tokens
        n = len(cols["token"])
        cols["text"], cols["choice_text"] = [None] * n, [None] * n
        for r in records:
            idx = self._per_record.get(r.request_id, [])
            self.prompts[r.request_id] = text.decode(r.prompt)
            if not idx:
                continue
            seq, P = list(r.prompt) + list(r.output), len(r.prompt)
            for j, (i, piece) in enumerate(zip(idx, text.output_pieces(r.prompt, r.output))):
                c = cols["choice"][i]
                cols["text"][i] = piece
                cols["choice_text"][i] = piece if c == cols["token"][i] else \
                    text.piece_at(seq, P + j, c)

    def rows(self, records) -> tuple[torch.Tensor, list]:
        """The kept logits rows [n_tokens, V], in the token table's order, and each token's
        SamplingParams (records: the verified records). Needs verify(..., keep_logits=True)."""
        import torch

        by_id = {r.request_id: r for r in records}
        ids = self.tokens["request_id"]
        logits = (torch.cat([self.logits[rid] for rid in dict.fromkeys(ids)]) if ids
                  else torch.zeros(0, self.vocab_size))
        return logits, [by_id[rid].params for rid in ids]

    # -- reading --------------------------------------------------------------------------------

    @property
    def n_tokens(self) -> int:
        return len(self.tokens["token"])

    @property
    def ok(self) -> bool:
        return all(r.verdict == "pass" for r in self.records)

    def counts(self) -> dict:
        v = [r.verdict for r in self.records]
        n = self.n_tokens
        return {
            "records": len(v), "pass": v.count("pass"), "fail": v.count("fail"),
            "error": v.count("error"), "tokens": n,
            "exact_tokens": int(sum(self.tokens["exact"])),
            "safe_tokens": self.tokens["verdict"].count("safe"),
            "channel_bits": n * math.log2(self.vocab_size) if self.vocab_size else 0.0,
            # Under the exact policy one token is accepted per position: nothing can be hidden.
            "hidden_bits": 0.0 if self.policy.single else None,
            "seconds": self.seconds,
            "tokens_per_second": n / self.seconds if self.seconds > 0 else None,
        }

    def records_df(self):
        import pandas as pd
        return pd.DataFrame([r.to_dict() for r in self.records], columns=list(COLUMNS))

    def tokens_df(self):
        import pandas as pd
        return pd.DataFrame(self.tokens)

    def to_dict(self, tokens: bool = False) -> dict:
        d = {"model": self.model, "stack": self.stack, "stacks": self.stacks,
             "policy": self.policy.to_dict(), "vocab_size": self.vocab_size,
             "counts": self.counts(),
             "records": [r.to_dict() for r in self.records]}
        if tokens:
            d["tokens"] = self.tokens
        return d

    def write(self, out_dir: str):
        """records.parquet, tokens.parquet and report.json (counts, per-record verdicts and, with
        a tokenizer, the decoded prompts)."""
        os.makedirs(out_dir, exist_ok=True)
        self.records_df().to_parquet(os.path.join(out_dir, "records.parquet"))
        self.tokens_df().to_parquet(os.path.join(out_dir, "tokens.parquet"))
        d = self.to_dict()
        if self.prompts:
            d["prompts"] = self.prompts
        with open(os.path.join(out_dir, "report.json"), "w") as f:
            json.dump(d, f, indent=1, default=_json_default)

    @classmethod
    def read(cls, out_dir: str, vocab_size: int | None = None) -> "Report":
        """A report folder that write() made, as it was (no logits: no sweep, no bound)."""
        import pandas as pd

        from replay.policy import Policy

        with open(os.path.join(out_dir, "report.json")) as f:
            d = json.load(f)
        names = set(COLUMNS)
        rep = cls(policy=Policy.from_dict(d["policy"]), model=d["model"],
                  vocab_size=d.get("vocab_size", vocab_size), stack=d.get("stack", ""),
                  stacks=d.get("stacks", {}),
                  records=[RecordResult(**{k: v for k, v in r.items() if k in names})
                           for r in d["records"]], prompts=d.get("prompts", {}))
        t = pd.read_parquet(os.path.join(out_dir, "tokens.parquet"))
        rep.tokens = {k: t[k].tolist() for k in t.columns}
        for i, rid in enumerate(rep.tokens.get("request_id", [])):
            rep._per_record.setdefault(rid, []).append(i)
        rep.seconds = d.get("counts", {}).get("seconds") or 0.0
        return rep

    def token_rows(self, request_id: str) -> list[int]:
        """Indices of a record's tokens in the token table, in output order."""
        return self._per_record.get(request_id, [])

    def plot(self, out_dir: str, attacked=None, records=None, thresholds=None,
             label: str = "honest") -> list[str]:
        """PNG plots of this (honest) report against attacked traffic (replay.plots):
        scores.png (gls histograms), detection.png (attacked records caught against tokens
        inspected) and, when the report kept its logits and `records` (the verified records,
        for their sampling parameters) are given, sweep.png (extractable fraction against
        false-positive rate over gls `thresholds`). attacked: a Report or {label: Report};
        label: this traffic's name in the legends."""
        from replay import plots

        os.makedirs(out_dir, exist_ok=True)
        if isinstance(attacked, Report):
            attacked = {"attacked": attacked}
        attacked = attacked or {}
        out = [plots.score_histogram(self.tokens["gls"],
                                     {k: r.tokens["gls"] for k, r in attacked.items()},
                                     os.path.join(out_dir, "scores.png"),
                                     threshold=self.policy.gls_cut, honest_label=label)]
        if attacked:
            curves = {}
            for k, r in attacked.items():
                rows = [x for x in r.records if x.verdict != "error"]
                curves[k] = plots.detection_curve([plots.first_failure(x) for x in rows],
                                                  [x.n_tokens for x in rows])
            out.append(plots.detection_plot(curves, os.path.join(out_dir, "detection.png"),
                                            title=f"detection under the {self.policy.kind} "
                                                  f"policy"))
        if self.logits and records is not None and not self.n_tokens:
            out.append(plots.sweep_plot({}, os.path.join(out_dir, "sweep.png")))
        elif self.logits and records is not None:
            import torch

            from replay import bound

            logits, params = self.rows(records)
            thresholds = thresholds or [-1, -2, -3, -5, -8, -12, -20, -30]
            curve = bound.sweep(logits, params, self.tokens["position"],
                                torch.tensor(self.tokens["margin"]), thresholds,
                                sigma=self.policy.gls_sigma)
            out.append(plots.sweep_plot({self.model: curve}, os.path.join(out_dir, "sweep.png")))
        return out

    def summary(self, max_lines: int = 10) -> str:
        c = self.counts()
        n = max(c["tokens"], 1)
        lines = [
            f"replay verify: {c['records']} records, {c['tokens']:,} output tokens, "
            f"model {printable(self.model)}, policy {self.policy.kind}",
            f"  stack:   {printable(self.stack or 'not known')}",
            f"  records: {c['pass']} pass, {c['fail']} fail, {c['error']} malformed",
            f"  tokens:  {c['exact_tokens']:,} exact ({100 * c['exact_tokens'] / n:.2f}%), "
            f"{c['safe_tokens']:,} accepted ({100 * c['safe_tokens'] / n:.2f}%)",
        ]
        other = {s: k for s, k in self.stacks.items() if s and s != self.stack}
        if other:  # the engine writes the stack: a varying one is a server-chosen field
            lines.insert(2, f"  {sum(other.values())} records name another stack "
                            f"({len(other)} distinct; docs/records.md)")
        if c["hidden_bits"] is not None:
            lines.append(f"  hidden capacity: {c['hidden_bits']:.0f} bits of a "
                         f"{c['channel_bits']:,.0f}-bit channel")
        lines += failure_lines(self.records, max_lines)
        if c["tokens_per_second"]:
            lines.append(f"  verified in {c['seconds']:.2f} s "
                         f"({c['tokens_per_second']:,.0f} tokens/s)")
        return "\n".join(lines)

    def __repr__(self):
        c = self.counts()
        return (f"Report({c['records']} records: {c['pass']} pass, {c['fail']} fail, "
                f"{c['error']} error; {c['tokens']} tokens)")


def failure_lines(rows, max_lines: int) -> list[str]:
    """One summary line per row that did not pass (RecordResults, or mappings of their fields),
    followed by its first failure in context when the row has text (text.Context), at most
    max_lines of them, then how many more; record text escaped (printable)."""
    bad = [r for r in rows if r["verdict"] != "pass"]
    lines = []
    for r in bad[:max_lines]:
        lines.append(f"  {r['verdict'].upper():5s} {printable(r['request_id'])}: "
                     f"{printable(r['reason'])}")
        ctx = Context.of(r)
        if ctx:
            lines.append(f"        {ctx.line()}")
    return lines + ([f"  ... and {len(bad) - max_lines} more"] if len(bad) > max_lines else [])


def _json_default(o):
    import torch

    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, float) and math.isinf(o):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")
