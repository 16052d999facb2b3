"""report.html: one self-contained page (inline CSS and JS, plots as data URIs, nothing fetched).

    html = page(honest, attacked, rows, plots)      # replay.render.Traffic, its bound rows, PNGs

The page has the summary (records and tokens per traffic source, the bound table), the plots,
and per record its prompt and output with every output token coloured by its verdict:
exact (the sampler's own choice), accepted (not exact but accepted by the policy), suspicious,
dangerous. The first failing token of a record is outlined and labelled, and a line under the
record's header gives its context, the sampler's choice and its scores; hovering any token shows
its id, the sampler's choice, logprob, rank, margin and gls. Records that did not pass come
first. Every piece of record text is HTML-escaped, and control and bidirectional-format
characters are shown as escapes, so a record cannot restyle or reorder the page.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
import time
import unicodedata

MAX_RECORDS = 200    # records drawn per traffic source (those that did not pass first)
PROMPT_CHARS = 600   # the end of a long prompt is shown

CLASSES = {"ex": "exact", "ac": "accepted", "su": "suspicious", "da": "dangerous"}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2125;
background:#f6f7f9}
header{background:#1d2b3a;color:#fff;padding:14px 24px}
header h1{font-size:20px;margin:0 0 4px}header p{margin:0;color:#c6d0da;font-size:12.5px}
main{padding:8px 24px 40px;max-width:1200px}
h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #d5dae0;padding-bottom:4px}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #d5dae0;border-radius:6px;padding:10px 14px;min-width:230px}
.card h3{margin:0 0 6px;font-size:14px}.card .big{font-size:19px;font-weight:600}
.ok{color:#2b8a3e}.bad{color:#c92a2a}
table{border-collapse:collapse;background:#fff;font-size:12.5px}
th,td{border:1px solid #d5dae0;padding:4px 8px;text-align:right}th{background:#eef1f4}
td:first-child,th:first-child{text-align:left}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(360px,1fr));gap:8px}
.plots figure{margin:0}.plots img{width:100%;border:1px solid #d5dae0;background:#fff}
.legend span{margin-right:12px}
.rec{background:#fff;border:1px solid #d5dae0;border-radius:6px;margin:10px 0;padding:8px 12px}
.rec.fail,.rec.error{border-left:5px solid #c92a2a}.rec.pass{border-left:5px solid #2b8a3e}
.rec h3{font-size:13.5px;margin:0 0 4px;font-weight:600}
.badge{display:inline-block;border-radius:3px;padding:0 6px;color:#fff;font-size:11.5px;
margin-right:6px}
.badge.pass{background:#2b8a3e}.badge.fail,.badge.error{background:#c92a2a}
.meta{color:#5c6670;font-weight:400}
.reason{margin:2px 0;color:#862e2e;font-size:12.5px}
.first{margin:4px 0;font-size:12.5px;background:#fff5f5;border:1px solid #ffc9c9;padding:4px 8px;
border-radius:4px}
.txt{font:13px/1.7 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;
word-break:break-word;margin-top:6px}
.prompt{color:#6b7580;background:#f1f3f5}
.t{border-radius:2px;cursor:default}
.t.ex{background:#d3f9d8}.t.ac{background:#fff3bf}.t.su{background:#ffc078}
.t.da{background:#e03131;color:#fff}
.t.ff{outline:2px solid #000;outline-offset:1px}
.ffmark{font:600 10.5px system-ui,sans-serif;color:#fff;background:#000;border-radius:3px;
padding:0 4px;margin:0 3px;vertical-align:1px}
.emp{color:#868e96}
.esc{color:#a61e4d}
#tip{position:fixed;z-index:9;background:#1d2b3a;color:#fff;font:12px/1.5 ui-monospace,monospace;
padding:6px 9px;border-radius:5px;pointer-events:none;white-space:pre;max-width:520px}
.more{color:#5c6670;font-style:italic}
nav a{margin-right:10px}
"""

JS = """
(function(){
  var D = JSON.parse(document.getElementById('tokdata').textContent);
  var tip = document.getElementById('tip');
  function fmt(x){ return (typeof x === 'number') ? (Math.abs(x) >= 1e4 || (x !== 0 &&
    Math.abs(x) < 1e-3) ? x.toExponential(2) : x.toFixed(3)) : String(x); }
  document.addEventListener('mouseover', function(e){
    var t = e.target.closest ? e.target.closest('.t') : null;
    if (!t) { tip.hidden = true; return; }
    var d = D[t.dataset.r][+t.dataset.i];  // [token, choice, logprob, rank, margin, gls,
    var lines = [                           //  verdict, exact, choice text]
      'token ' + t.dataset.i + ': id ' + d[0] + '  ' + d[6] + (d[7] ? ' (exact)' : ''),
      'sampler chose: id ' + d[1] + (d[8] === null ? '' : '  ' + JSON.stringify(d[8])),
      'logprob ' + fmt(d[2]) + '   rank ' + d[3],
      'margin ' + fmt(d[4]) + '   gls ' + fmt(d[5])];
    tip.textContent = lines.join('\\n');
    var r = t.getBoundingClientRect();
    tip.style.left = Math.min(r.left, window.innerWidth - 360) + 'px';
    tip.style.top = (r.bottom + 6) + 'px';
    tip.hidden = false;
  });
})();
"""


def _esc_char(c: str) -> str:
    # control and format characters (ANSI escapes, bidi overrides) shown as escapes, not obeyed
    if c == "\n":
        return "\u21b5\n"
    if c != "\t" and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp"):
        o = ord(c)
        return f'<span class="esc">\\{f"x{o:02x}" if o < 0x100 else f"u{o:04x}"}</span>'
    return html.escape(c)


def show(s: str) -> str:
    """Record text as HTML: escaped, newlines marked, control characters as visible escapes."""
    return "".join(_esc_char(c) for c in s)


def _num(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # JSON has no inf/nan
    return x


def _cls(verdict: str, exact: bool) -> str:
    if verdict == "safe":
        return "ex" if exact else "ac"
    return "su" if verdict == "suspicious" else "da"


def _record(t, key: str, res, data: list) -> str:
    """One record's section (key: its anchor); its tokens' scores are appended to data."""
    rep = t.report
    cols = rep.tokens
    idx = rep.token_rows(res.request_id) if res.verdict != "error" else []
    has_text = "text" in cols
    v = res.verdict
    rid = show(str(res.request_id))
    meta = []
    if res.verdict != "error":
        meta.append(f"{res.n_tokens} tokens, {res.n_exact} exact")
        if res.n_suspicious or res.n_dangerous:
            meta.append(f"{res.n_suspicious} suspicious, {res.n_dangerous} dangerous")
        meta.append(f"termination {show(str(res.termination))}")
    elif res.field:
        meta.append(f"field {show(str(res.field))}")
    h = [f'<section class="rec {v}" id="{key}">',
         f'<h3><span class="badge {v}">{v.upper()}</span><code>{rid}</code> '
         f'<span class="meta">{" &middot; ".join(meta)}</span></h3>']
    if res.reason:
        h.append(f'<p class="reason">{show(res.reason)}</p>')
    ff = res.first_failure
    if ff is not None and ff < len(idx):
        i = idx[ff]
        what = (f'after <q>{show(res.text_before or "")}</q>: claimed '
                f'<q>{show(res.text_claimed)}</q>, sampler chose <q>{show(res.text_choice)}</q>'
                if res.text_claimed is not None else
                f"claimed id {cols['token'][i]}, sampler chose id {cols['choice'][i]}")
        h.append(f'<div class="first"><b>first failure</b>, token {ff}: {what} &middot; '
                 f"logprob {cols['logprob'][i]:.3f} &middot; rank {cols['rank'][i]} &middot; "
                 f"margin {cols['margin'][i]:.3f} &middot; gls {cols['gls'][i]:.3f}</div>")
    if not idx:
        return "\n".join(h) + "</section>"
    body = ['<div class="txt">']
    prompt = rep.prompts.get(res.request_id)
    if prompt is not None:
        cut = len(prompt) > PROMPT_CHARS
        body.append(f'<span class="prompt" title="prompt">{"&hellip;" if cut else ""}'
                    f"{show(prompt[-PROMPT_CHARS:])}</span>")
    rows = []
    for j, i in enumerate(idx):
        c = _cls(cols["verdict"][i], bool(cols["exact"][i]))
        if has_text:
            piece = cols["text"][i]
            txt = show(piece) if piece else '<span class="emp">\u00b7</span>'
        else:
            txt = f"[{cols['token'][i]}] "
        mark = ""
        if j == ff:
            c += " ff"
            mark = f'<span class="ffmark" id="ff-{key}">first failure &#9656;</span>'
        body.append(f'{mark}<span class="t {c}" data-r="{key}" data-i="{j}">{txt}</span>')
        rows.append([int(cols["token"][i]), int(cols["choice"][i]), _num(float(cols["logprob"][i])),
                     int(cols["rank"][i]), _num(float(cols["margin"][i])),
                     _num(float(cols["gls"][i])), cols["verdict"][i], bool(cols["exact"][i]),
                     cols["choice_text"][i] if has_text else None])
    data.append((key, rows))
    body.append("</div>")
    # no separators inside the pre-wrapped text: every character there is shown
    return "\n".join(h) + "".join(body) + "</section>"


def _card(t) -> str:
    c = t.report.counts()
    n = max(c["tokens"], 1)
    cls = "ok" if t.report.ok else "bad"
    return (f'<div class="card"><h3>{show(t.label)}</h3>'
            f'<div class="big {cls}">{c["pass"]} pass &middot; {c["fail"]} fail &middot; '
            f'{c["error"]} malformed</div>'
            f'<div>{c["records"]} records, {c["tokens"]:,} output tokens</div>'
            f'<div>{100 * c["exact_tokens"] / n:.2f}% exact, '
            f'{100 * c["safe_tokens"] / n:.2f}% accepted</div></div>')


def _table(rows: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(
        f"<td>{show(f'{v:,}' if isinstance(v, int) else str(v))}</td>" for v in r.values())
        + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(path: str) -> str:
    with open(path, "rb") as f:
        b64 = base64.b64encode(f.read()).decode("ascii")
    name = html.escape(os.path.basename(path))
    return f'<figure><img alt="{name}" src="data:image/png;base64,{b64}"></figure>'


def page(honest, attacked: list, rows: list[dict], plots: list[str],
         plot_error: str | None = None, max_records: int = MAX_RECORDS) -> str:
    """The whole report.html as a string (honest, attacked: replay.render.Traffic)."""
    from replay import __version__

    rep = honest.report
    traffic = [honest] + list(attacked)
    legend = "".join(f'<span><span class="t {k}">&nbsp;{v}&nbsp;</span></span>'
                     for k, v in CLASSES.items())
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>replay report: {show(rep.model)}</title>",
           f"<style>{CSS}</style></head><body>",
           f"<header><h1>replay report: {show(rep.model)}</h1>"
           f"<p>policy {html.escape(rep.policy.kind)} &middot; replay {__version__} &middot; "
           f"written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</p></header><main>",
           "<h2>Summary</h2>", '<div class="cards">' + "".join(_card(t) for t in traffic)
           + "</div>", "<h2>Bound</h2>", _table(rows)]
    firsts = [(k, n, r) for k, t in enumerate(traffic) for n, r in enumerate(t.report.records)
              if r.verdict != "pass"]
    if firsts:
        links = "".join(f'<a href="#t{k}-{n}">{show(str(r.request_id))}</a>'
                        for k, n, r in firsts[:50])
        out.append(f"<p><b>Records that did not pass:</b> <nav>{links}</nav></p>")
    out.append("<h2>Plots</h2>")
    if plots:
        out.append('<div class="plots">' + "".join(_img(p) for p in plots) + "</div>")
    else:
        out.append(f"<p>No plots{': ' + show(plot_error) if plot_error else ''}.</p>")
    data: list = []
    for k, t in enumerate(traffic):
        recs = sorted(enumerate(t.report.records), key=lambda x: x[1].verdict == "pass")
        out.append(f"<h2>Records: {show(t.label)}</h2>")
        out.append(f'<p class="legend">Output tokens: {legend} '
                   '<span class="ffmark">first failure &#9656;</span> '
                   "(hover a token for its scores; the prompt is grey)</p>")
        for n, r in recs[:max_records]:
            out.append(_record(t, f"t{k}-{n}", r, data))
        if len(recs) > max_records:
            out.append(f'<p class="more">{len(recs) - max_records} more records not drawn '
                       "(all of them are in report.md's table and the Parquet tables)</p>")
    blob = json.dumps(dict(data), ensure_ascii=True, allow_nan=False).replace("<", "\\u003c")
    out += ["</main>", '<div id="tip" hidden></div>',
            f'<script type="application/json" id="tokdata">{blob}</script>',
            f"<script>{JS}</script>", "</body></html>"]
    return "\n".join(out) + "\n"
