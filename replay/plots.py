"""PNG plots of the exfiltration report (matplotlib, Agg; install the "plots" extra).

- sweep_plot: extractable fraction of the channel against the honest false-positive rate, one
  curve per traffic source, as bound.sweep traces it over gls thresholds;
- score_histogram: per-token gls of honest and attacked traffic;
- detection_plot: share of attacked records caught against tokens inspected per record.

Each function takes plain numbers and writes one file; Report.plot gathers them from reports.
A plot with nothing to show says "no data" rather than drawing empty axes, and every threshold
drawn is labelled with its value.
Figures are drawn on matplotlib.figure.Figure directly (no pyplot state), so plotting from a
server or a test never needs a display.
"""
from __future__ import annotations

import math

GLS_FLOOR = -40.0   # gls below this (and -inf: tokens outside the kept set) fall in one bin


def _figure(w=6.4, h=4.2):
    from replay.extras import need

    Figure = need("matplotlib.figure", "plots", "plots").Figure
    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def _no_data(fig, ax, path: str, what: str = "no data") -> str:
    ax.text(0.5, 0.5, what, transform=ax.transAxes, ha="center", va="center", fontsize=12,
            color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.savefig(path)
    return path


def _save(fig, ax, path: str) -> str:
    """A grid, the legend beside the axes, and the file."""
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path)
    return path


def sweep_plot(curves: dict, path: str, marks: dict | None = None, title: str | None = None):
    """curves: label -> [(threshold, fpr, fraction)]; marks: label -> (fpr, fraction), points
    drawn as stars (a chosen threshold, a published figure). Both axes are linear near 0 and
    logarithmic above, so a false-positive rate of exactly 0 stays on the plot; each point is
    labelled with its gls threshold."""
    fig = _figure(9.0, 4.6)
    ax = fig.add_subplot()
    ax.set_title(title or "hidden capacity against false-positive rate (gls threshold sweep)")
    curves = {k: c for k, c in curves.items() if len(c)}
    if not curves and not marks:
        return _no_data(fig, ax, path, "no data: no honest tokens with logits to sweep")
    fprs = [f for c in curves.values() for _, f, _ in c if f > 0]
    fprs += [m[0] for m in (marks or {}).values() if m[0] > 0]
    if not fprs:  # every point at FPR 0 (exact traffic): capacity against the threshold instead
        ax.set_title(title or "hidden capacity against the gls threshold (honest false-positive "
                              "rate 0 at every threshold)")
        return _sweep_by_threshold(fig, ax, curves, path)
    lin = 10 ** math.floor(math.log10(min(fprs)))
    for label, c in curves.items():
        # in threshold order: each step down accepts more (FPR falls, capacity grows)
        pts = sorted(c, key=lambda x: -x[0])
        line, = ax.plot([f for _, f, _ in pts], [100 * fr for _, _, fr in pts], marker="o",
                        ms=3, label=label)
        for th, f, fr in pts:  # every point labelled with its threshold
            ax.annotate(f"{th:g}", (f, 100 * fr), textcoords="offset points", xytext=(5, -3),
                        fontsize=6.5, color=line.get_color())
    for label, (f, frac) in (marks or {}).items():
        ax.plot([f], [100 * frac], marker="*", ms=12, ls="none", label=label)
    ax.set_xscale("symlog", linthresh=lin)
    ax.set_xlim(left=-0.04 * lin, right=max(fprs) * 1.5)  # points at FPR 0 off the spine
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(f"honest false-positive rate per token (linear below {lin:g}); point labels: "
                  "gls threshold")
    ax.set_ylabel("extractable fraction of the channel (%)")
    return _save(fig, ax, path)


def _sweep_by_threshold(fig, ax, curves: dict, path: str):
    # With no honest false positive at any threshold the FPR axis would stack every point on one
    # vertical line: draw the capacity against the threshold, which is what still varies.
    for label, c in curves.items():
        pts = sorted(c, key=lambda x: -x[0])
        ax.plot([th for th, _, _ in pts], [100 * fr for _, _, fr in pts], marker="o", ms=4,
                label=label)
        for th, _, fr in pts:
            ax.annotate(f"{100 * fr:.3g}%", (th, 100 * fr), textcoords="offset points",
                        xytext=(4, 4), fontsize=6.5)
    ths = sorted({th for c in curves.values() for th, _, _ in c})
    ax.set_xticks(ths, [f"{th:g}" for th in ths])  # every threshold swept is labelled
    ax.set_xlabel("gls threshold (tokens at or below it are rejected)")
    ax.set_ylabel("extractable fraction of the channel (%)")
    ax.set_yscale("symlog", linthresh=0.01)
    top = max(100 * fr for c in curves.values() for _, _, fr in c)
    ax.set_ylim(bottom=0, top=max(top * 2, 0.1))  # room for the top point's label
    return _save(fig, ax, path)


def _clip(xs) -> list[float]:
    return [GLS_FLOOR if math.isnan(float(x)) else max(float(x), GLS_FLOOR) for x in xs]


def score_histogram(honest, attacked: dict, path: str, threshold: float | None = None,
                    title: str | None = None, honest_label: str = "honest"):
    """honest: per-token gls values; attacked: label -> gls values. Log-scale densities."""
    fig = _figure()
    ax = fig.add_subplot()
    attacked = {k: xs for k, xs in attacked.items() if len(xs)}
    ax.set_title(title or ("per-token score, honest and attacked traffic" if attacked else
                           f"per-token score, {honest_label} traffic"))
    if not len(honest) and not attacked:
        return _no_data(fig, ax, path, "no data: no output tokens")
    bins = [GLS_FLOOR + i * (0.5 - GLS_FLOOR) / 60 for i in range(61)]
    if len(honest):
        ax.hist(_clip(honest), bins=bins, histtype="stepfilled", alpha=0.35, color="gray",
                label=f"{honest_label} ({len(honest):,} tokens)", density=True)
    for label, xs in attacked.items():
        ax.hist(_clip(xs), bins=bins, histtype="step", lw=1.4, density=True,
                label=f"{label} ({len(xs):,})")
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.2f}")
        ax.annotate(f"threshold {threshold:g}", (threshold, 1), xycoords=("data", "axes fraction"),
                    xytext=(3, -10), textcoords="offset points", fontsize=7)
    h = _clip(honest)
    if h and min(h) == max(h):  # one spike: say what it is
        what = " (every token exact)" if abs(h[0] - math.log(0.5)) < 1e-9 else ""
        ax.text(0.03, 0.5, f"all {len(h):,} {honest_label} tokens at gls = {h[0]:.2f}{what}",
                transform=ax.transAxes, fontsize=8, color="0.3")
    ax.set_yscale("log")
    ax.set_xlabel(f"gls = log Phi(-margin / (sqrt 2 sigma))  (<= {GLS_FLOOR:g} in the first bin)")
    ax.set_ylabel("density of tokens")
    ax.legend(fontsize=7, loc="upper left")
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
    if not n:
        return [], []
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
    """curves: label -> (x, y) from detection_curve (empty: that traffic had no records)."""
    fig = _figure(8.4, 4.2)
    ax = fig.add_subplot()
    ax.set_title(title or "detection rate against tokens inspected")
    curves = {k: xy for k, xy in curves.items() if len(xy[0])}
    if not curves:
        return _no_data(fig, ax, path, "no data: no attacked records")
    for label, (x, y) in curves.items():
        ax.plot(x, [100 * v for v in y], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("output tokens inspected per record")
    ax.set_ylabel("attacked records detected (%)")
    ax.set_ylim(-2, 102)
    return _save(fig, ax, path)
