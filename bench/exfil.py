"""The exfiltration experiment (issue 4, "must show"), on CPU with the shipped tiny model.

1. Honest traffic from replay's engine: the exact policy's false positives and hidden capacity
   (0 and 0), the tolerant policy's false-positive rate and capacity on the same tokens.
2. Honest traffic from non-invariant kernels (generation with plain torch ops: float32, and a
   stock bf16-matmul engine; verification with replay's kernels): the exact policy's failure rate;
   the tolerant policy at the gls threshold chosen for FPR <= 1e-4, with its remaining capacity,
   in the published headline's table form.
3. Every attacker (replay.attacks): bits per token by decoding, detection per record under each
   policy, escaping capacity against the bound; seed grinding with the logger key.
Writes bench/results/exfil-cpu.md and PNGs under bench/results/exfil/.

    OMP_NUM_THREADS=2 python bench/exfil.py                     # ~20k honest tokens per source
    python bench/exfil.py --requests 6 --max-tokens 16 --attack-requests 4 --out /tmp/x   # smoke
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = b"bench-logger-key"
FPR_TARGET = 1e-4
SIGMA = 1.0
HIST = ("rank b=1", "arithmetic in A_t(gls>-5)", "length (stop) b=5", "substitution argmax")
# gls thresholds of the sweep: the scores of these margins (logit units), dense near 0 where
# honest non-invariant traffic sits, out to margins no honest token reaches
SWEEP_MARGINS = [1e-4, 3e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.07, 0.1,
                 0.15, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 4, 6, 9]
THRESHOLDS = [float(torch.special.log_ndtr(torch.tensor(-d / math.sqrt(2) / SIGMA,
                                                        dtype=torch.float64)))
              for d in SWEEP_MARGINS] + [-5.0]


# -- traffic ------------------------------------------------------------------------------------

def workload(tok, n: int, max_tokens: int, seed: int = 0):
    """Requests on stdlib-code prompts, seeds from the logger key, a mix of sampling settings."""
    from replay.demo import PROMPTS, stdlib_prompts
    from replay.engine import Request
    from replay.records import SamplingParams, derive_seed

    rng = random.Random(seed)
    texts = PROMPTS + stdlib_prompts(n, rng)
    eos = tok.token_to_id("<|endoftext|>")
    settings = [(1.0, 0, 1.0), (0.8, 0, 1.0), (0.9, 50, 0.95), (0.7, 0, 0.9)]
    reqs = []
    for i in range(n):
        T, k, p = settings[i % len(settings)]
        rid = f"req-{i:05d}"
        ids = tok.encode(texts[i % len(texts)]).ids[:200] or [eos]
        reqs.append(Request(rid, ids, SamplingParams(T, k, p, derive_seed(KEY, rid)),
                            max_tokens=max_tokens, stop_token_ids=[eos]))
    return reqs


@contextlib.contextmanager
def bf16_matmuls():
    """A stock engine that runs its matmuls in bfloat16 (float32 elsewhere): plain torch ops,
    batch-dependent, and rounded as bf16 serving rounds. Restored on exit."""
    from replay import ops

    orig = ops.linear

    def linear(x, w, bias=None):
        if isinstance(w, ops.PackedLinear):  # the model's CPU weights are packed for replay's kernel
            w = w.unpack()
        y = torch.nn.functional.linear(x.bfloat16(), w.bfloat16()).float()
        return y if bias is None else y + bias

    ops.linear = linear
    try:
        with ops.backend("torch"):
            yield
    finally:
        ops.linear = orig


def generate(model, reqs, kind: str):
    from replay import ops
    from replay.engine import Engine

    ctx = {"replay": contextlib.nullcontext(), "torch": ops.backend("torch"),
           "torch-bf16": bf16_matmuls()}[kind]
    with ctx:
        return Engine(model, max_batch=48, chunk_size=64).run(reqs)


# -- scores and the bound -----------------------------------------------------------------------

def analyse(model, records, policy):
    """Verify and keep the per-token columns, in record order. policy: a tolerant one, so that
    records from another kernel stack (the stock engines) are scored too, not failed unscored as
    "stack mismatch"; the exact columns (a token is the sampler's choice) do not depend on it."""
    from replay.policy import gls
    from replay.verify import verify

    rep = verify(records, model, policy)
    t = rep.tokens
    m = torch.tensor(t["margin"], dtype=torch.float64)
    return {"margin": m, "gls": gls(m, SIGMA), "exact": torch.tensor(t["exact"]),
            "records": rep.records}


def set_sizes(model, records, thresholds) -> torch.Tensor:
    """LongTensor [len(thresholds), tokens]: |A_t| of the gls policy at each threshold, from the
    recomputed rows (the verifier's teacher-forced pass, one chunk at a time)."""
    from replay.bound import gls_sizes
    from replay.verify import teacher_forced

    out = [gls_sizes(logits, [p.params for p in where], [p.position for p in where], thresholds,
                     SIGMA) for where, logits in teacher_forced(model, records)]
    return torch.cat(out, dim=1) if out else torch.zeros(len(thresholds), 0, dtype=torch.int64)


def bounds(a, sizes, thresholds, V):
    """[Bound] per threshold: the honest tokens each threshold rejects are charged log2 V."""
    from replay.bound import capacity

    return [capacity(sizes[j], V, a["gls"] > th) for j, th in enumerate(thresholds)]


# -- the run ------------------------------------------------------------------------------------

def fmt_pct(x, d=3):
    return f"{100 * x:.{d}f}%"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200, help="honest requests per source")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--min-tokens", type=int, default=20000, help="honest tokens to reach")
    ap.add_argument("--attack-requests", type=int, default=48)
    ap.add_argument("--attack-tokens", type=int, default=64)
    ap.add_argument("--model", default=None, help="model directory (default: replay.TINY_MODEL)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    a = ap.parse_args(argv)

    from tokenizers import Tokenizer

    import replay
    from replay import attacks as A
    from replay import plots
    from replay.model import Model
    from replay.policy import Policy
    from replay.verify import verify

    t_start = time.perf_counter()
    model_dir = a.model or replay.TINY_MODEL
    model = Model.from_pretrained(model_dir)
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    V = model.cfg.vocab_size
    logV = math.log2(V)

    def log(*msg):
        print(f"[{time.perf_counter() - t_start:6.0f} s]", *msg, flush=True)

    # 1-2. honest traffic, three generators, one set of requests
    n = a.requests
    while True:
        reqs = workload(tok, n, a.max_tokens)
        honest = {"replay": generate(model, reqs, "replay")}
        n_tok = sum(len(r.output) for r in honest["replay"])
        if n_tok >= a.min_tokens or a.min_tokens <= 0 or n > 20 * a.requests:
            break
        n = int(n * a.min_tokens / max(n_tok, 1) * 1.05) + 1
    log(f"replay engine: {len(reqs)} requests, {n_tok} tokens")
    for kind in ("torch", "torch-bf16"):
        honest[kind] = generate(model, reqs, kind)
        log(f"{kind}: {sum(len(r.output) for r in honest[kind])} tokens")

    from replay.bound import threshold_for_fpr

    default_tol = Policy.tolerant(-5.0, sigma=SIGMA)
    an, thr_fpr, rows_h, rows_head, curves = {}, {}, [], [], {}
    names = {"replay": "replay engine", "torch": "torch fp32 engine",
             "torch-bf16": "torch bf16-matmul engine"}
    for k, recs in honest.items():
        v = an[k] = analyse(model, recs, default_tol)
        # the requests without top-k / top-p: no kept-set boundary that rounding can move
        plain = torch.tensor([r.params.top_k == 0 and r.params.top_p == 1.0
                              for r in recs for _ in r.output])
        th = thr_fpr[k] = threshold_for_fpr(v["margin"], SIGMA, FPR_TARGET)
        th_p = thr_fpr[k + "/plain"] = threshold_for_fpr(v["margin"][plain], SIGMA, FPR_TARGET)
        ths = THRESHOLDS + [th, th_p]
        sizes = set_sizes(model, recs, ths)
        bd = bounds(v, sizes, ths, V)
        bd_p = bounds({"gls": v["gls"][plain]}, sizes[:, plain], ths, V)
        # the sweep, with the chosen thresholds as points of it
        curves[names[k]] = [(t, b.fpr, b.fraction) for t, b in zip(ths, bd)]
        curves[names[k] + ", no top-k/top-p"] = [(t, b.fpr, b.fraction)
                                                  for t, b in zip(ths, bd_p)]
        nt = len(v["margin"])
        ex_fail = int((~v["exact"].bool()).sum())
        rec_fail = sum(1 for r in v["records"] if r["n_exact"] < r["n_tokens"])
        n_inf = int(torch.isinf(v["margin"]).sum())
        for label, b5, bt, t, n in ((names[k], bd[THRESHOLDS.index(-5)], bd[-2], th, nt),
                                    ("  same, requests without top-k/top-p",
                                     bd_p[THRESHOLDS.index(-5)], bd_p[-1], th_p,
                                     int(plain.sum()))):
            ex = (f"{ex_fail} ({fmt_pct(ex_fail / nt)}); {n_inf} outside the kept set"
                  if t is th else f"{int((~v['exact'].bool())[plain].sum())}")
            rows_h.append([label, len(v["records"]) if t is th else "", f"{n:,}", ex,
                           f"{rec_fail} / {len(v['records'])}" if t is th else "",
                           f"{b5.false_positives} ({b5.fpr:.1e})", fmt_pct(b5.fraction),
                           f"{t:.4g}", f"{bt.false_positives} ({bt.fpr:.1e})",
                           fmt_pct(bt.fraction)])
            rows_head.append((k if t is th else k + "/plain", t, bt.fpr, bt.fraction))
        log(f"{k}: exact fails {ex_fail}/{nt} tokens ({n_inf} outside the kept set); "
            f"FPR<=1e-4 at gls>{th:.4g}: {fmt_pct(bd[-2].fraction)}; without top-k/top-p "
            f"at gls>{th_p:.4g}: {fmt_pct(bd_p[-1].fraction)}")

    # 3. attackers, on a subset of the requests, served by replay's engine
    areqs = workload(tok, a.attack_requests, a.attack_tokens, seed=1)
    for r in areqs:
        r.stop_token_ids = list(r.stop_token_ids)
    from replay.engine import Engine
    ahonest = {r.request_id: r for r in Engine(model, max_batch=48).run(areqs)}
    # the threshold of the bf16 engine's requests without top-k/top-p (finite; see the table)
    pol_fpr = Policy.tolerant(thr_fpr["torch-bf16/plain"], sigma=SIGMA)
    pols = {"exact": Policy.exact(), "tolerant gls>-5": default_tol,
            f"tolerant gls>{pol_fpr.gls_threshold:.3g} (FPR<=1e-4, bf16)": pol_fpr}
    attackers = [A.RankAttack(model, 1), A.RankAttack(model, 3),
                 A.ArithmeticAttack(model, default_tol), A.ArithmeticAttack(model, pol_fpr),
                 A.SeedGrindAttack(model, 8), A.LengthAttack(model, 5, min_len=8),
                 A.LengthAttack(model, 5, min_len=8, mode="truncate"),
                 A.SubstitutionAttack(model), A.SubstitutionAttack(model, temperature=0.5)]
    labels = ["rank b=1", "rank b=3", "arithmetic in A_t(gls>-5)",
              "arithmetic in A_t(FPR<=1e-4)", "seed grinding b=8", "length (stop) b=5",
              "length (truncate) b=5", "substitution argmax", "substitution T=0.5"]
    rng = random.Random(7)
    rows_a, hist, det = [], {}, {}
    for atk, label in zip(attackers, labels):
        msg = [rng.getrandbits(1) for _ in range(a.attack_requests * a.attack_tokens * 13)]
        recs = atk.encode(msg, areqs)
        carried = atk.decode_records(recs, len(msg))
        assert [b for r in recs for b in carried[r.request_id]] == atk.embedded(recs), label
        ntok = sum(len(r.output) for r in recs)
        bits = sum(len(c) for c in carried.values())
        with_bits = [r for r in recs if carried[r.request_id]
                     and r.output != ahonest[r.request_id].output]
        same = sum(r.output == ahonest[r.request_id].output for r in recs)
        row = [label, f"{bits / ntok:.3f}", f"{bits:,} / {ntok:,}", same]
        for pname, p in pols.items():
            rep = verify(recs, model, policy=p, keep_logits=not p.single)
            fails = {x["request_id"] for x in rep.records if x["verdict"] != "pass"}
            caught = sum(r.request_id in fails for r in with_bits)
            row.append(f"{caught}/{len(with_bits)}")
            if not p.single:
                ok = [r for r in with_bits if r.request_id not in fails and r.output]
                esc = sum(len(carried[r.request_id]) for r in ok)
                cap = _bound_bits(rep, ok, p)
                row.append(f"{esc:,} / {cap:,.0f}" if atk.name != "seed_grinding"
                           else f"{esc:,} / n/a (bits in the seed)")
            if pname == "exact" and with_bits:
                ids = {r.request_id for r in with_bits}
                rows = [x for x in rep.records if x["request_id"] in ids]
                det[label] = plots.detection_curve([plots.first_failure(x) for x in rows],
                                                   [x["n_tokens"] for x in rows])
            if pname.startswith("tolerant gls>-5") and label in HIST:
                hist[label] = rep.tokens["gls"]
        # the exact policy with the logger-key seed check
        rep = verify(recs, model, seed_key=KEY)
        fails = {x["request_id"] for x in rep.records if x["verdict"] != "pass"}
        row.append(f"{sum(r.request_id in fails for r in with_bits)}/{len(with_bits)}")
        if atk.name == "seed_grinding":
            det[label + ", exact + logger key"] = plots.detection_curve(
                [plots.first_failure(x) for x in rep.records], [x["n_tokens"] for x in rep.records])
        rows_a.append(row)
        log(f"attack {label}: {bits / ntok:.3f} bits/token")

    # honest false positives of the seed check
    seed_fp = sum(x["verdict"] != "pass"
                  for x in verify(honest["replay"], model, seed_key=KEY).records)

    # plots
    pdir = os.path.join(a.out, "exfil")
    os.makedirs(pdir, exist_ok=True)
    marks = {"published: Qwen3-30B-A3B, <0.5% at ~1e-4 (upper bound)": (1e-4, 0.005)}
    for k, th, f, frac in rows_head:
        if k.startswith("torch-bf16"):
            marks[f"{k} at FPR<=1e-4 (gls>{th:.3g})"] = (f, frac)
    plots.sweep_plot(curves, os.path.join(pdir, "sweep.png"), marks=marks,
                     title=f"tiny model ({V} tokens): extractable fraction vs honest FPR")
    plots.score_histogram(an["torch-bf16"]["gls"].tolist(),
                          {"honest, replay engine": an["replay"]["gls"].tolist(), **hist},
                          os.path.join(pdir, "scores.png"), threshold=-5.0,
                          honest_label="honest, torch bf16-matmul engine",
                          title="per-token gls (sigma 1), honest and attacked traffic")
    plots.detection_plot(det, os.path.join(pdir, "detection.png"),
                         title="attacked records caught by the exact policy (records that carry bits)")
    log("plots written")

    _write(a, argv, model, V, rows_h, rows_head, rows_a, pols, seed_fp,
           time.perf_counter() - t_start)
    return 0


def _bound_bits(rep, recs, policy) -> float:
    """sum log2 |A_t| over the output positions of `recs` (logits kept on the report)."""
    from replay import bound

    if not recs:
        return 0.0
    logits = torch.cat([rep.logits[r.request_id] for r in recs])
    params = [r.params for r in recs for _ in r.output]
    pos = [len(r.prompt) + j for r in recs for j in range(len(r.output))]
    return float(torch.log2(bound.accepted_sizes(logits, params, pos, policy)
                            .clamp_min(1).double()).sum())


def _write(a, argv, model, V, rows_h, rows_head, rows_a, pols, seed_fp, seconds):
    sys.path.insert(0, HERE)
    from common import commit, device

    import datetime
    L = ["# Exfiltration defence on CPU: honest false positives, hidden capacity, attackers", "",
         f"- device: {device()}",
         f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
         f"- commit: {commit()}",
         f"- command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python "
         f"bench/exfil.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip() + "`",
         f"- model: {model.identity} ({model.n_params / 1e6:.1f}M parameters, vocabulary {V}, "
         f"log2 V = {math.log2(V):.1f} bits per token); torch {torch.__version__}, "
         f"{torch.get_num_threads()} threads; whole run {seconds:.0f} s",
         f"- gls sigma = {SIGMA} logit units; requests with temperature 0.7-1.0, some top-k 50 / "
         "top-p 0.9-0.95, seeds HMAC-SHA256(logger key, request id), stop token <|endoftext|>", ""]
    L += ["## Honest traffic", "",
          "Generation by three engines on the same requests; verification always with replay's "
          "kernels. Exact policy: a token fails unless it is the sampler's choice; its hidden "
          "capacity is 0 by construction (one accepted token per position). Tolerant policy: "
          "gls > threshold; capacity = sum over tokens of log2 |A_t| (accepted set), honest "
          "tokens it rejects charged log2 V (the published convention), as a fraction of the "
          "channel (log2 V bits per token).", "",
          "Exact policy, hidden capacity: 0 bits for every source (one accepted token per "
          "position). 'Outside the kept set': honest tokens that the recomputed top-k/top-p "
          "filter drops (a boundary moved by rounding); their margin is +inf and gls -inf, so "
          "no finite gls threshold accepts them.", "",
          "| generation | records | tokens | exact: failing tokens | exact: failing records | "
          "gls>-5: false positives (FPR) | gls>-5: capacity | threshold for FPR<=1e-4 | "
          "at it: false positives (FPR) | at it: capacity |",
          "|" + "---|" * 10]
    L += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows_h]
    L += ["", "## Headline, in the published form", "",
          "| model | generation / verification | FPR per token | extractable information |",
          "|---|---|---|---|",
          "| Qwen3-30B-A3B (arXiv 2511.02620, their figure) | vLLM bf16 / HF bf16 | ~1e-4 | "
          "< 0.5% |",
          f"| tiny ({V} tokens), this repo | replay engine / replay, exact policy | 0 | 0% |"]
    names = {"replay": "replay engine / replay", "torch": "plain torch fp32 / replay",
             "torch-bf16": "torch bf16 matmuls / replay"}
    for k, th, f, frac in rows_head:
        sub = ", requests without top-k/top-p" if k.endswith("/plain") else ""
        L.append(f"| tiny ({V} tokens), this repo | {names[k.split('/')[0]]}{sub}, tolerant "
                 f"gls>{th:.4g} | {f:.1e} | {fmt_pct(frac)} |")
    L += ["", "Ours is a 4M-parameter model with a 4,096-token vocabulary, not Qwen3-30B-A3B: "
          "the figures share a definition, not a model; a small vocabulary makes log2 V small "
          "and the fraction larger for the same accepted sets.", "",
          "Reading: replay's engine gives 0 failing tokens and 0 hidden bits under the exact "
          "policy. Plain torch fp32 ops differ from replay's kernels by float32 rounding only, "
          "which on this small float32 model moved no sampled token (0 failures is the measured "
          "rate here, not a guarantee: near-ties flip). The bf16-matmul engine, the setting of "
          "the published work, fails tokens under the exact policy; the tolerant policy accepts "
          "them at a threshold just below log 0.5, where the remaining capacity is of the "
          "published order, as long as no top-k/top-p boundary moved. A moved boundary puts an "
          "honest token outside the recomputed kept set (gls = -inf): with a few such tokens in "
          "the sample, FPR <= 1e-4 forces the threshold to -inf and most of the channel opens.",
          ""]
    L += ["## Attackers", "",
          "Compromised replay engines (replay.attacks) on "
          f"{a.attack_requests} requests of up to {a.attack_tokens} tokens; each message is "
          "longer than the records hold, so every record is saturated. bits/token is measured by "
          "decoding (decoded bits equal the embedded ones, asserted). Detection: attacked "
          "records that fail, among those that carry >= 1 bit and differ from the honest output "
          "of the same request (a record equal to the honest output tells the receiver nothing "
          "that honest traffic does not). Escaping / bound: bits carried by records that pass, "
          "against sum log2 |A_t| over those records' tokens.", ""]
    hdr = ["attacker", "bits/token", "bits / tokens", "records = honest output"]
    for pname in pols:
        hdr.append(f"caught: {pname}")
        if pname != "exact":
            hdr.append(f"escaping / bound bits: {pname}")
    hdr.append("caught: exact + logger-key seed check")
    L += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    L += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows_a]
    L += ["", f"Seed check on the honest replay-engine traffic: {seed_fp} false positives."]
    L += ["", "## Plots", "", "![sweep](exfil/sweep.png)", "", "![scores](exfil/scores.png)", "",
          "![detection](exfil/detection.png)", ""]
    path = os.path.join(a.out, "exfil-cpu.md")
    with open(path, "w") as f:
        f.write("\n".join(L))
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
