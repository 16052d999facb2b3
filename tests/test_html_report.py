"""report.html from Python: self-contained, every token coloured by its verdict, the first failure
marked, and record text that cannot restyle the page (the server chooses the output tokens, and
the client the request id)."""
import dataclasses
import html
import json
import re

import pytest

import replay
from replay import html as H
from replay import render
from replay.engine import Engine, Request
from replay.model import Model
from replay.records import SamplingParams
from replay.text import Text

HOSTILE = "</span></div><script>alert(1)</script>\x1b[2K\u202eevil"   # in the output text
RID = '"><img src=x onerror=alert(2)>'                                 # a request id


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    model = Model.from_pretrained(replay.TINY_MODEL)
    tok = Text.load(replay.TINY_MODEL).tok
    reqs = [Request(rid, tok.encode(p).ids, SamplingParams(0.9, seed=i), max_tokens=12,
                    stop_token_ids=[0])
            for i, (rid, p) in enumerate([("ok-1", "import os\n"), (RID, "def f(x):\n")])]
    recs = Engine(model).run(reqs)
    bad = dataclasses.replace(recs[1], output=recs[1].output[:3] + tok.encode(HOSTILE).ids)
    bad = dataclasses.replace(bad, max_tokens=len(bad.output))
    rep = replay.verify([recs[0], bad], model=model, keep_logits=True)
    assert [r.verdict for r in rep.records] == ["pass", "fail"]
    out = tmp_path_factory.mktemp("html")
    paths = render.write(str(out), render.Traffic("logs", rep, [recs[0], bad]), html=True)
    return open(paths["html"], encoding="utf-8").read(), rep


def test_self_contained(page):
    text, _ = page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)
    assert "<link" not in text and "@import" not in text and "url(" not in text
    assert text.count("data:image/png;base64,") == 2  # scores, sweep


def test_tokens_coloured_and_first_failure_marked(page):
    text, rep = page
    spans = re.findall(r'<span class="t (\w\w)( ff)?" data-r="t0-(\d)" data-i="(\d+)">', text)
    assert len(spans) == rep.n_tokens
    by_rec = {}
    for cls, ff, rec, _ in spans:
        by_rec.setdefault(rec, []).append((cls, bool(ff)))
    ok, bad = rep.records[0], rep.records[1]
    # records that did not pass come first: t0-1 is the failing one, drawn before t0-0
    assert text.index('id="t0-1"') < text.index('id="t0-0"')
    assert all(c == "ex" and not f for c, f in by_rec["0"])
    marks = [i for i, (c, f) in enumerate(by_rec["1"]) if f]
    assert marks == [bad.first_failure] and by_rec["1"][marks[0]][0] == "da"
    data = json.loads(re.search(r'<script type="application/json" id="tokdata">(.*?)</script>',
                                text, re.S).group(1))
    row = data["t0-1"][bad.first_failure]
    i = rep.token_rows(bad.request_id)[bad.first_failure]
    assert row[:2] == [rep.tokens["token"][i], rep.tokens["choice"][i]]
    assert row[6] == "dangerous" and row[8] == rep.tokens["choice_text"][i]


def test_record_text_is_escaped(page):
    text, _ = page
    assert "<script>alert" not in text and "<img src=x" not in text
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in text
    sec = text[text.index('id="t0-1"'):].split("</section>")[0]
    shown = html.unescape(re.sub(r"<[^>]+>", "", sec[sec.index('<div class="txt">'):]))
    # the tokens ahead of a character's last byte show as a placeholder dot
    assert "</span></div><script>alert(1)</script>\\x1b[2K\\u202eevil" in shown.replace(
        "\u00b7", "")
    assert "\x1b" not in text and "\u202e" not in text
    assert '<span class="esc">\\x1b</span>' in text and '<span class="esc">\\u202e</span>' in text
    blob = text.split('id="tokdata">', 1)[1].split("</script>", 1)[0]
    assert "<" not in blob  # the JSON cannot close its script element


def test_show_marks_newlines_and_escapes():
    assert H.show("a\nb") == "a\u21b5\nb"
    assert H.show('<&">') == "&lt;&amp;&quot;&gt;"
    assert H.show("\t") == "\t"
