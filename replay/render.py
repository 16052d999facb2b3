"""`replay report`'s files: report.md, the PNG plots and, with html=True, report.html (replay.html).

    honest = Traffic("records", report, records)        # records: None for a report folder
    paths = render.write("rep/", honest, [Traffic("rank", attacked_report, None)], html=True)

The bound table has one row per traffic source: records, verdicts, exact and accepted tokens, and
for the honest traffic the bound on the bits an adversary could hide (replay.bound), which needs
the recomputed logits (a report read back from a folder has none: "n/a"). Failing records are
listed with their first failing token in its decoded text when the report has text.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from replay.report import Report, failure_lines
from replay.text import printable

MAX_FAILURES = 20   # failing records listed per traffic source in report.md


@dataclass
class Traffic:
    label: str
    report: Report
    records: list | None = None   # the verified Records (for the bound); None: none kept


def bound_rows(honest: Traffic, attacked: list[Traffic], tokens_per_day: float) -> list[dict]:
    """The bound table, one dict per traffic source (honest first)."""
    from replay import bound

    rows = []
    for t in [honest] + list(attacked):
        r, c = t.report, t.report.counts()
        n = max(c["tokens"], 1)
        hid = frac = per_day = "n/a (no logits)"
        if t is not honest:  # the bound is the honest traffic's: attacked rows show detection
            hid = frac = per_day = "-"
        elif t.records is not None and r.policy.single:
            hid, frac, per_day = "0", "0%", "0"
        elif t.records is not None and r.logits:
            b = bound.bound(r, t.records)
            hid, frac = f"{b.hidden_bits:,.0f}", f"{100 * b.fraction:.3f}%"
            per_day = f"{b.bytes_per_day(tokens_per_day):,.0f}"
        rows.append({"traffic": t.label, "records": c["records"], "pass": c["pass"],
                     "fail": c["fail"], "malformed": c["error"], "tokens": c["tokens"],
                     "exact": f"{100 * c['exact_tokens'] / n:.2f}%",
                     "accepted": f"{100 * c['safe_tokens'] / n:.2f}%",
                     "hidden bits (bound)": hid, "fraction of channel": frac,
                     "bytes/day": per_day})
    return rows


def markdown(honest: Traffic, attacked: list[Traffic], rows: list[dict], plots: list[str],
             tokens_per_day: float) -> str:
    rep = honest.report
    logV = math.log2(rep.vocab_size) if rep.vocab_size else float("nan")
    cols = list(rows[0])
    head = [c if c != "bytes/day" else f"bytes/day at {tokens_per_day:g} tokens/day" for c in cols]
    lines = [f"# replay report: {printable(rep.model)}, policy {rep.policy.kind}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [f"{v:,}" if isinstance(v, int) else str(v) for v in row.values()]
        cells[0] = printable(cells[0]).replace("|", "\\|")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Channel: log2 V = {logV:.2f} bits per token."]
    for t in [honest] + list(attacked):
        fl = failure_lines(t.report.records, MAX_FAILURES)
        if fl:  # an indented code block: record text is shown, never interpreted
            lines += ["", f"## Failing records: {printable(t.label)}", ""]
            lines += ["    " + s for s in fl]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    return "\n".join(lines) + "\n"


def write(out: str, honest: Traffic, attacked: list[Traffic] = (), tokens_per_day: float = 1e9,
          html: bool = False) -> dict:
    """report.md, the plots and (html) report.html in `out`; returns {"markdown", "plots",
    "html", "rows", "plot_error"}. Without matplotlib (the plots extra) the plots are left out
    and both files say why."""
    os.makedirs(out, exist_ok=True)
    attacked = list(attacked)
    try:
        plots = honest.report.plot(out, attacked={t.label: t.report for t in attacked},
                                   records=honest.records, label=honest.label)
        plot_error = None
    except ImportError as e:
        plots, plot_error = [], str(e)
    rows = bound_rows(honest, attacked, tokens_per_day)
    md = markdown(honest, attacked, rows, plots, tokens_per_day)
    if plot_error:
        md += f"\nNo plots: {plot_error}\n"
    paths = {"markdown": os.path.join(out, "report.md"), "plots": plots, "rows": rows,
             "html": None, "plot_error": plot_error}
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(md)
    if html:
        from replay import html as H

        paths["html"] = os.path.join(out, "report.html")
        with open(paths["html"], "w", encoding="utf-8") as f:
            f.write(H.page(honest, attacked, rows, plots, plot_error))
    return paths
