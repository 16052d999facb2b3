"""The walkthrough a new user follows, as subprocesses on the shipped model: generate records,
forge one token, verify (exit 1, the failing token's decoded text in the summary), then
`replay report --html` for the honest and the forged log. The forged token's text must appear
in the summary, in report.md and in report.html; a real headless browser (Debian's chromium)
renders both pages, and the screenshots must show the failing token (the dangerous colour and
the first-failure mark) on the forged page and nothing of it on the honest one.

REPLAY_SCREENSHOTS=docs python -m pytest tests/test_walkthrough.py  copies the screenshots to
docs/ (the README's picture)."""
import html
import json
import os
import shutil

import pytest
from tokenizers import Tokenizer

import replay
from test_cli import replay_cli

import browser

DANGEROUS = (0xE0, 0x31, 0x31)   # .t.da's background in replay/html.py
FORGED = " return"               # one token of the shipped vocabulary


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    d = tmp_path_factory.mktemp("walk")
    (d / "prompts.txt").write_text("def read_config(path):\nimport os\\nimport sys\n"
                                   "class Point:\n    def __init__(self, x, y):\n")
    r = replay_cli("generate", "--prompts", d / "prompts.txt", "--out", d / "honest.jsonl",
                   "--max-tokens", 24, "--seed-key", "walk-key", "--id-prefix", "walk", "--quiet")
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in (d / "honest.jsonl").read_text().splitlines()]
    assert all(r["meta"]["output_text"] for r in recs)  # records carry their text
    tok = Tokenizer.from_file(os.path.join(replay.TINY_MODEL, "tokenizer.json"))
    forged_id, = tok.encode(FORGED).ids
    victim = recs[1]
    j = next(i for i in range(len(victim["output"]) // 2, len(victim["output"]))
             if victim["output"][i] != forged_id)
    victim["output"][j] = forged_id
    (d / "forged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return d, victim["request_id"], j


def test_verify_names_the_forged_token_in_text(walk):
    d, rid, j = walk
    r = replay_cli("verify", d / "forged.jsonl", "--seed-key", "walk-key", "--quiet")
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    k = next(i for i, s in enumerate(lines) if s.startswith(f"  FAIL  {rid}: token {j} "))
    assert lines[k + 1].lstrip().startswith('after "')
    assert f'claimed "{FORGED}", sampler chose "' in lines[k + 1]
    ok = replay_cli("verify", d / "honest.jsonl", "--seed-key", "walk-key", "--quiet")
    assert ok.returncode == 0 and "4 pass, 0 fail" in ok.stdout, ok.stdout + ok.stderr


@pytest.fixture(scope="module")
def pages(walk):
    d, rid, j = walk
    out = {}
    for name in ("honest", "forged"):
        r = replay_cli("report", d / f"{name}.jsonl", "--seed-key", "walk-key", "--html",
                       "--out", d / f"rep-{name}")
        assert r.returncode == 0, r.stdout + r.stderr
        out[name] = d / f"rep-{name}"
    return out


def test_report_md_and_html_show_the_forged_token(walk, pages):
    d, rid, j = walk
    md = (pages["forged"] / "report.md").read_text()
    assert f"FAIL  {rid}: token {j} " in md and f'claimed "{FORGED}"' in md
    page = (pages["forged"] / "report.html").read_text()
    assert f"claimed <q>{html.escape(FORGED)}</q>" in page
    assert f'class="t da ff" data-r="t0-1" data-i="{j}">{html.escape(FORGED)}</span>' in page
    assert "first failure" in page
    # self-contained: nothing is fetched
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert page.count("data:image/png;base64,") == 2  # scores and sweep (no attacked: no detection)
    honest = (pages["honest"] / "report.html").read_text()
    assert '<span class="t da' not in honest.replace('<span class="t da">&nbsp;', "")  # legend
    assert 'class="ffmark" id=' not in honest


def _pixels(png, rgb, tol=3):
    import numpy as np
    from matplotlib.image import imread

    a = (imread(str(png))[..., :3] * 255).round()
    return int((np.abs(a - np.array(rgb)).max(axis=-1) <= tol).sum()), a


def test_browser_renders_the_pages_and_shows_the_failing_token(walk, pages, tmp_path):
    exe = browser.chromium()
    shots = {}
    for name, rep in pages.items():
        shots[name] = browser.screenshot(exe, rep / "report.html", tmp_path / f"{name}.png",
                                         height=2200)
    n_bad, forged = _pixels(shots["forged"], DANGEROUS)
    n_honest, honest = _pixels(shots["honest"], DANGEROUS)
    assert forged.std() > 10 and honest.std() > 10, "a blank page"
    # both pages have the legend's chip; only the forged one has dangerous tokens
    assert n_bad > n_honest + 200, "the forged token's dangerous colour is not on the page"
    # the tooltip: hovering the first failure shows its scores
    page = (pages["forged"] / "report.html").read_text()
    hover = tmp_path / "hover.html"
    hover.write_text(page.replace("</body>", "<script>document.querySelector('.t.ff')"
                                  ".dispatchEvent(new MouseEvent('mouseover', {bubbles: true}));"
                                  "</script></body>"))
    dom = browser.dump_dom(exe, hover)
    tip = dom[dom.index('<div id="tip"'):].split("</div>")[0]
    assert "hidden" not in tip.split(">")[0], tip
    d, rid, j = walk
    assert f"token {j}: id " in tip and "sampler chose: id " in tip and "logprob " in tip
    browser.screenshot(exe, hover, tmp_path / "hover.png", height=2200)
    if os.environ.get("REPLAY_SCREENSHOTS"):
        dest = os.environ["REPLAY_SCREENSHOTS"]
        for name, png in shots.items():
            shutil.copy(png, os.path.join(dest, f"report-{name}.png"))
