"""The report's plots say what they show: thresholds labelled, 'no data' on empty input, titles
that match the traffic. Each plot function's figure is caught as it is saved and read back."""
import math

import pytest

pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402

from replay import plots  # noqa: E402


@pytest.fixture
def saved(monkeypatch):
    figs = []
    real = Figure.savefig

    def keep(self, path, *a, **kw):
        figs.append(self)
        return real(self, path, *a, **kw)
    monkeypatch.setattr(Figure, "savefig", keep)
    return figs


def _texts(fig) -> list[str]:
    ax = fig.axes[0]
    out = [t.get_text() for t in ax.texts] + [ax.get_title(), ax.get_xlabel()]
    out += [t.get_text() for t in ax.get_xticklabels()]
    if ax.get_legend():
        out += [t.get_text() for t in ax.get_legend().get_texts()]
    return out


THRESHOLDS = [-1, -2, -3, -5, -8, -12, -20, -30]


def test_sweep_of_exact_traffic_is_drawn_against_the_threshold(saved, tmp_path):
    # replay traffic: no honest token fails at any threshold, capacity still varies
    curve = [(th, 0.0, 0.5 * (1 - math.exp(th / 8))) for th in THRESHOLDS]
    plots.sweep_plot({"m": curve}, str(tmp_path / "s.png"))
    ax, texts = saved[-1].axes[0], _texts(saved[-1])
    xs = sorted(set(ax.lines[0].get_xdata()))
    assert xs == sorted(THRESHOLDS), "x is the threshold, not an FPR of 0 for every point"
    assert {f"{th:g}" for th in THRESHOLDS} <= set(texts)
    assert any("0 at every threshold" in t for t in texts)


def test_sweep_labels_every_threshold(saved, tmp_path):
    curve = [(th, 10 ** (th / 4), 0.01 * -th) for th in THRESHOLDS]
    plots.sweep_plot({"m": curve}, str(tmp_path / "s.png"))
    labels = {t.get_text() for t in saved[-1].axes[0].texts}
    assert labels >= {f"{th:g}" for th in THRESHOLDS}


def test_histogram_of_honest_traffic_says_so(saved, tmp_path):
    plots.score_histogram([math.log(0.5)] * 50, {}, str(tmp_path / "h.png"), threshold=-5)
    texts = _texts(saved[-1])
    assert saved[-1].axes[0].get_title() == "per-token score, honest traffic"
    assert any("all 50 honest tokens at gls = -0.69 (every token exact)" in t for t in texts)
    assert any("threshold -5" in t for t in texts)
    plots.score_histogram([-0.7, -3.0], {"rank": [-9.0, -12.0]}, str(tmp_path / "h2.png"))
    assert saved[-1].axes[0].get_title() == "per-token score, honest and attacked traffic"


@pytest.mark.parametrize("draw", [
    lambda p: plots.sweep_plot({}, p),
    lambda p: plots.sweep_plot({"m": []}, p),
    lambda p: plots.score_histogram([], {}, p),
    lambda p: plots.score_histogram([], {"a": []}, p),
    lambda p: plots.detection_plot({"a": plots.detection_curve([], [])}, p),
])
def test_empty_input_says_no_data(saved, tmp_path, draw):
    draw(str(tmp_path / "x.png"))
    assert (tmp_path / "x.png").stat().st_size > 0
    ax = saved[-1].axes[0]
    assert any(t.get_text().startswith("no data") for t in ax.texts)
    assert not ax.lines and not ax.patches
