"""PNG plots of the exfiltration report (matplotlib, Agg; install the "plots" extra).

- sweep_plot: extractable fraction of the channel against the honest false-positive rate, one
  curve per traffic source, as bound.sweep traces it over gls thresholds;
- score_histogram: per-token gls of honest and attacked traffic;
- detection_plot: share of attacked records caught against tokens inspected per record.

Each function takes plain numbers and writes one file; Report.plot gathers them from reports.
Figures are drawn on matplotlib.figure.Figure directly (no pyplot state), so plotting from a
server or a test never needs a display.
"""
from __future__ import annotations

import math

GLS_FLOOR = -40.0   # gls below this (and -inf: tokens outside the kept set) fall in one bin


def _figure(w=6.4, h=4.2):
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'replay[plots]'") from e
    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def sweep_plot(curves: dict, path: str, marks: dict | None = None, title: str | None = None):
    """curves: label -> [(threshold, fpr, fraction)]; marks: label -> (fpr, fraction), points
    drawn as stars (a chosen threshold, a published figure). Both axes are linear near 0 and
    logarithmic above, so a false-positive rate of exactly 0 stays on the plot."""
    fig = _figure(9.0, 4.6)
    ax = fig.add_subplot()
    fprs = [f for c in curves.values() for _, f, _ in c if f > 0]
    fprs += [m[0] for m in (marks or {}).values() if m[0] > 0]
    lin = 10 ** math.floor(math.log10(min(fprs))) if fprs else 1e-5
    for label, c in curves.items():
        # in threshold order: each step down accepts more (FPR falls, capacity grows)
        pts = [(f, 100 * frac) for _, f, frac in sorted(c, key=lambda x: -x[0])]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label)
    for label, (f, frac) in (marks or {}).items():
        ax.plot([f], [100 * frac], marker="*", ms=12, ls="none", label=label)
    ax.set_xscale("symlog", linthresh=lin)
    ax.set_xlim(left=0)
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(f"honest false-positive rate per token (linear below {lin:g})")
    ax.set_ylabel("extractable fraction of the channel (%)")
    ax.set_title(title or "hidden capacity against false-positive rate (gls threshold sweep)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path)
    return path


def _clip(xs) -> list[float]:
    return [GLS_FLOOR if math.isnan(float(x)) else max(float(x), GLS_FLOOR) for x in xs]


def score_histogram(honest, attacked: dict, path: str, threshold: float | None = None,
                    title: str | None = None, honest_label: str = "honest"):
    """honest: per-token gls values; attacked: label -> gls values. Log-scale densities."""
    fig = _figure()
    ax = fig.add_subplot()
    bins = [GLS_FLOOR + i * (0.5 - GLS_FLOOR) / 60 for i in range(61)]
    if len(honest):
        ax.hist(_clip(honest), bins=bins, histtype="stepfilled", alpha=0.35, color="gray",
                label=f"{honest_label} ({len(honest):,} tokens)", density=True)
    for label, xs in attacked.items():
        if not len(xs):
            continue
        ax.hist(_clip(xs), bins=bins, histtype="step", lw=1.4, density=True,
                label=f"{label} ({len(xs):,})")
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.2f}")
    ax.set_yscale("log")
    ax.set_xlabel(f"gls = log Phi(-margin / (sqrt 2 sigma))  (<= {GLS_FLOOR:g} in the first bin)")
    ax.set_ylabel("density of tokens")
    ax.set_title(title or "per-token score, honest and attacked traffic")
    ax.legend(fontsize=7)
    fig.savefig(path)
    return path


def first_failure(row: dict):
    """A report's record row -> index of its first rejected token; 0 if it fails on metadata
    alone (termination, seed), which needs no token recomputed; None if it passes."""
    if row["verdict"] == "pass":
        return None
    return row["first_failure"] if row["first_failure"] is not None else 0


def detection_curve(first_failure, n_tokens, max_n: int | None = None):
    """(x, y): y[i] = share of records with a rejected token among their first x[i] tokens.
    first_failure: per record the index of its first rejected token, or None; a record that
    fails on its metadata alone (termination, seed) counts from the first token: pass 0."""
    n = len(first_failure)
    max_n = max_n or max([t for t in n_tokens] + [1])
    xs = list(range(1, max_n + 1))
    ff = sorted(f for f in first_failure if f is not None)
    ys, k = [], 0
    for x in xs:
        while k < len(ff) and ff[k] < x:
            k += 1
        ys.append(k / n if n else 0.0)
    return xs, ys


def detection_plot(curves: dict, path: str, title: str | None = None):
    """curves: label -> (x, y) from detection_curve."""
    fig = _figure(8.4, 4.2)
    ax = fig.add_subplot()
    for label, (x, y) in curves.items():
        ax.plot(x, [100 * v for v in y], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("output tokens inspected per record")
    ax.set_ylabel("attacked records detected (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title or "detection rate against tokens inspected")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path)
    return path
