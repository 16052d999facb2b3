"""replay's command line.

    replay demo                                   generate with the shipped model, verify all
    replay generate --prompts p.txt --out r.jsonl generate records with replay's engine
    replay verify r.jsonl [--out report/]         verify records; exit 1 if any record fails
    replay verify --ray local logs/ --out res/    the same on a Ray cluster (resumable)
    replay watch logs/ --out res/                 verify shards as they appear; alarm on failure
    replay report r.jsonl --attacked a.jsonl --out rep/   bound table and PNG plots

Exit status (EXIT_STATUS): 0 every record passed; 1 some record failed verification (a forged
token, a bad termination, a seed or limit the logger did not log); 2 the input could not be
verified: a usage error, an unreadable path, no records, or malformed records (and none failed).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_STATUS = """exit status:
  0  every record passed
  1  some record failed verification (forged token, bad termination, a seed or a limit
     that the logger did not log)
  2  the input could not be verified: usage error, unreadable file, no records, or
     malformed records (and none failed)"""

SEED_KEY_ENV = "REPLAY_SEED_KEY"  # the logger key, for commands that take --seed-key-file


class UsageError(Exception):
    """A command that cannot run as asked (exit status 2, one line on stderr)."""


def _seed_key(a, cmd: str, warn: bool = True) -> bytes | None:
    """The logger's key from --seed-key-file (the file's bytes, one trailing newline dropped),
    else $REPLAY_SEED_KEY, else the deprecated --seed-key VALUE (visible in `ps` for as long as
    the process runs). None, with a warning on stderr, when no key is given."""
    sources = [s for s in ("seed_key_file", "seed_key") if getattr(a, s, None) is not None]
    if len(sources) > 1:
        raise UsageError("give one of --seed-key-file and --seed-key, not both")
    if a.seed_key_file is not None:
        try:
            with open(a.seed_key_file, "rb") as f:
                key = f.read()
        except OSError as e:
            raise UsageError(f"--seed-key-file: {e}") from None
        key = key[:-2] if key.endswith(b"\r\n") else key[:-1] if key.endswith(b"\n") else key
        where = f"--seed-key-file {a.seed_key_file}"
    elif a.seed_key is not None:
        print(f"replay {cmd}: warning: --seed-key puts the key in the process list; use "
              f"--seed-key-file or ${SEED_KEY_ENV}", file=sys.stderr)
        key, where = a.seed_key.encode("utf-8"), "--seed-key"
    elif SEED_KEY_ENV in os.environ:
        # taken out of the environment: alarm commands and other children must not inherit it
        key, where = os.environb.pop(SEED_KEY_ENV.encode()), f"${SEED_KEY_ENV}"
    else:
        if warn:
            print(f"replay {cmd}: WARNING: no seed key (--seed-key-file or ${SEED_KEY_ENV}): "
                  "seeds are not checked, so a server that picks its own seeds can hide bits "
                  "in them, and records need not carry the logger's request", file=sys.stderr)
        return None
    if not key:
        raise UsageError(f"{where}: the seed key is empty (an empty key would turn the seed "
                         "check off)")
    return key


def exit_status(counts: dict) -> int:
    """EXIT_STATUS from a report's counts (records, fail, error)."""
    if counts["fail"]:
        return 1
    return 2 if counts["error"] or not counts["records"] else 0


def _model(path: str | None):
    import replay
    from replay.model import Model

    return Model.from_pretrained(path or replay.TINY_MODEL)


def cmd_demo(a) -> int:
    from replay import demo

    return 0 if demo.run(a.requests, a.max_tokens, a.out) else 1


def _read_prompts(path: str, tok) -> list[tuple[str, list[int]]]:
    """A .txt file (one prompt a line, '\\n' escapes allowed) or .jsonl ({"prompt": str} or
    {"prompt_ids": [int]}, optional "request_id")."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if path.endswith(".jsonl"):
                try:
                    d = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SystemExit(f"{path}:{n}: not JSON ({e.msg})")
                rid = str(d.get("request_id", f"req-{n}"))
                if "prompt_ids" in d:
                    out.append((rid, [int(t) for t in d["prompt_ids"]]))
                elif "prompt" in d:
                    out.append((rid, tok.encode(d["prompt"]).ids))
                else:
                    raise SystemExit(f"{path}:{n}: needs 'prompt' or 'prompt_ids'")
            else:
                text = line.rstrip("\n").replace("\\n", "\n")
                out.append((f"req-{n}", tok.encode(text).ids))
    return out


def cmd_generate(a) -> int:
    from tokenizers import Tokenizer

    import replay
    from replay.engine import Engine, Request
    from replay.records import Batch, SamplingParams, derive_seed

    model_dir = a.model or replay.TINY_MODEL
    model = _model(model_dir)
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    key = _seed_key(a, "generate", warn=False)
    stop = [int(s) for s in a.stop.split(",")] if a.stop else (
        [tok.token_to_id("<|endoftext|>")] if tok.token_to_id("<|endoftext|>") is not None else [])
    reqs = []
    for i, (rid, ids) in enumerate(_read_prompts(a.prompts, tok)):
        seed = derive_seed(key, rid) if key else (a.seed + i) % 2**64
        p = SamplingParams(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, seed=seed)
        reqs.append(Request(rid, ids, p, max_tokens=a.max_tokens, stop_token_ids=stop))
    engine = Engine(model, max_batch=a.max_batch, chunk_size=a.chunk_size)
    records = engine.run(reqs, progress=not a.quiet)
    b = Batch(records)
    b.to_parquet(a.out) if a.out.endswith(".parquet") else b.to_jsonl(a.out)
    n = sum(len(r.output) for r in records)
    print(f"wrote {len(records)} records ({n} output tokens) to {a.out}")
    return 0


# --policy name -> its Policy from (the Policy class, the parsed arguments)
POLICIES = {
    "exact": lambda P, a: P.exact(),
    "tolerant": lambda P, a: P.tolerant(a.gls_threshold, a.rank_threshold, a.sigma),
    "prob": lambda P, a: P.prob_threshold(a.p_min),
    "top-k": lambda P, a: P.top_k(a.accept_top_k),
}


def _options(a):
    """The verifier's Options from the policy arguments (_policy_args)."""
    from replay.policy import Policy
    from replay.verify import Options

    kw = {} if a.token_budget is None else {"token_budget": a.token_budget}
    return Options(POLICIES[a.policy](Policy, a), check_model=not a.no_model_check,
                   seed_key=_seed_key(a, a.cmd), **kw)


def cmd_verify(a) -> int:
    from replay.records import Batch
    from replay.verify import verify

    if a.ray:
        return _verify_ray(a)
    if len(a.records) != 1:
        raise UsageError("several record paths need --ray (or pass a folder)")
    opts = _options(a)
    batch = Batch.read(a.records[0])  # an unreadable path: one line and exit status 2
    if not batch.records and not batch.errors:
        raise UsageError(f"{a.records[0]}: no records (an empty input verifies nothing)")
    report = verify(batch, _model(a.model), options=opts, progress=not a.quiet)
    print(report.summary(max_lines=a.show))
    if a.out:
        report.write(a.out)
        print(f"tables written to {a.out}/ (records.parquet, tokens.parquet, report.json)")
    return exit_status(report.counts())


def _verify_ray(a) -> int:
    import replay
    from replay.fleet import FleetIncomplete, verify_fleet

    if not a.out:
        raise SystemExit("replay verify --ray: --out DIR is required (results, and what a "
                         "re-run resumes from)")
    try:
        res = verify_fleet(a.records, a.model or replay.TINY_MODEL, a.out, address=a.ray,
                           workers=a.workers, options=_options(a), num_cpus=a.num_cpus)
    except FleetIncomplete as e:
        print(f"replay verify --ray: incomplete: {e}", file=sys.stderr)
        return 2
    print(res.summary(max_lines=a.show))
    return exit_status(res.counts)


def cmd_watch(a) -> int:
    import replay
    from replay.watch import Watcher

    w = Watcher(a.dir, a.out, model=a.model or replay.TINY_MODEL, options=_options(a),
                alarm_cmd=a.alarm_cmd, settle=a.settle, alarm_timeout=a.alarm_timeout,
                quiet=a.quiet)
    return w.run(once=a.once, interval=a.interval, exit_on_alarm=a.exit_on_alarm)


def _load_report(src: str, model, options):
    """A report folder (Report.write) as it was, or records verified now with their logits
    kept (so that the bound and the sweep can be computed); (report, records or None)."""
    from replay.records import Batch
    from replay.verify import verify

    if os.path.isdir(src) and os.path.exists(os.path.join(src, "report.json")):
        import pandas as pd
        from replay.policy import Policy
        from replay.report import RecordResult, Report

        with open(os.path.join(src, "report.json")) as f:
            d = json.load(f)
        rep = Report(policy=Policy.from_dict(d["policy"]), model=d["model"],
                     vocab_size=model.cfg.vocab_size,
                     records=[RecordResult(**r) for r in d["records"]])
        t = pd.read_parquet(os.path.join(src, "tokens.parquet"))
        rep.tokens = {k: t[k].tolist() for k in t.columns}
        return rep, None
    recs = Batch.read(src)
    return verify(recs, model, options=options, keep_logits=True), recs.records


def cmd_report(a) -> int:
    import math

    from replay import bound

    model, opts = _model(a.model), _options(a)
    rep, recs = _load_report(a.source, model, opts)
    attacked = {}
    for src in a.attacked or []:
        label = os.path.basename(os.path.normpath(src)).rsplit(".", 1)[0]
        attacked[label] = _load_report(src, model, opts)
    os.makedirs(a.out, exist_ok=True)
    paths = rep.plot(a.out, attacked={k: r for k, (r, _) in attacked.items()}, records=recs)
    logV = math.log2(model.cfg.vocab_size)
    lines = [f"# replay report: {rep.model}, policy {rep.policy.kind}", "",
             "| traffic | records | pass | fail | malformed | tokens | exact | accepted | "
             "hidden bits (bound) | fraction of channel | bytes/day at --tokens-per-day |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, (r, rr) in {os.path.basename(os.path.normpath(a.source)): (rep, recs),
                           **attacked}.items():
        c = r.counts()
        n = max(c["tokens"], 1)
        hid = frac = per_day = "n/a (no logits)"
        if r is not rep:  # the bound is the honest traffic's: attacked rows show detection
            hid = frac = per_day = "-"
        elif rr is not None and r.policy.single:
            hid, frac, per_day = "0", "0%", "0"
        elif rr is not None:
            b = bound.bound(r, rr)
            hid, frac = f"{b.hidden_bits:,.0f}", f"{100 * b.fraction:.3f}%"
            per_day = f"{b.bytes_per_day(a.tokens_per_day):,.0f}"
        lines.append(f"| {label} | {c['records']} | {c['pass']} | {c['fail']} | {c['error']} "
                     f"| {c['tokens']:,} "
                     f"| {100 * c['exact_tokens'] / n:.2f}% | {100 * c['safe_tokens'] / n:.2f}% "
                     f"| {hid} | {frac} | {per_day} |")
    lines += ["", f"Channel: log2 V = {logV:.2f} bits per token. Plots: "
              + ", ".join(os.path.basename(p) for p in paths), ""]
    lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in paths]
    with open(os.path.join(a.out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[:len(attacked) + 5]))
    print(f"wrote {a.out}/report.md and {len(paths)} plots")
    return 0


def _policy_args(v):
    v.add_argument("--policy", choices=list(POLICIES), default="exact",
                   help="exact: the token must be the sampler's choice (engines running replay's "
                        "kernels); tolerant: Gumbel-likelihood score above --gls-threshold, else "
                        "suspicious up to --rank-threshold; prob: probability >= --p-min; top-k: "
                        "rank < --accept-top-k")
    v.add_argument("--gls-threshold", type=float, default=-5.0)
    v.add_argument("--rank-threshold", type=int, default=32)
    v.add_argument("--sigma", type=float, default=1.0)
    v.add_argument("--p-min", type=float, default=0.01, help="--policy prob: smallest accepted "
                                                             "probability")
    v.add_argument("--accept-top-k", type=int, default=8, help="--policy top-k: accepted ranks")
    _seed_key_args(v, "the logger's key: every seed must be HMAC-SHA256(key, request_id) and "
                      "every record must carry the logger's copy of its request, else the "
                      "record fails")
    v.add_argument("--token-budget", type=int,
                   help="teacher-forced tokens per forward pass (default 4096)")
    v.add_argument("--no-model-check", action="store_true",
                   help="do not reject records whose 'model' field differs from this model")


def _seed_key_args(p, what: str):
    p.add_argument("--seed-key-file", metavar="PATH",
                   help=f"{what}; the file's bytes are the key (one trailing newline dropped). "
                        f"Or set ${SEED_KEY_ENV}")
    p.add_argument("--seed-key", metavar="KEY", help="deprecated: the key on the command line, "
                                                     "visible in the process list")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="replay", epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Batch-invariant inference and exact teacher-forced verification. "
                    "Without --model, commands use the small model shipped with replay.")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="generate under changing batch compositions, verify all")
    d.add_argument("--requests", type=int, default=40, help="number of requests (default 40)")
    d.add_argument("--max-tokens", type=int, default=64, help="tokens per request (default 64)")
    d.add_argument("--out", default="runs/demo", help="where records and report go")
    d.set_defaults(fn=cmd_demo)

    g = sub.add_parser("generate", help="serve prompts with replay's engine, write records")
    g.add_argument("--prompts", required=True,
                   help=".txt (one prompt a line) or .jsonl ({'prompt': ...} or {'prompt_ids': [...]})")
    g.add_argument("--out", required=True, help="records file, .jsonl or .parquet")
    g.add_argument("--model", help="model directory (config.json, *.safetensors, tokenizer.json)")
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=0, help="0 keeps all tokens")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--max-tokens", type=int, default=64)
    g.add_argument("--stop", help="comma-separated stop token ids (default: the tokenizer's "
                                  "<|endoftext|>)")
    g.add_argument("--seed", type=int, default=0, help="seed of the first request (+1 each)")
    _seed_key_args(g, "derive seeds as HMAC-SHA256(key, request_id), as a trusted logger "
                      "would")
    g.add_argument("--max-batch", type=int, default=32)
    g.add_argument("--chunk-size", type=int, default=256, help="prefill chunk per step")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(fn=cmd_generate)

    v = sub.add_parser("verify", help="verify records token by token (exit 1 on any failure)",
                       epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("records", nargs="+",
                   help="records: .jsonl, .parquet, or a folder of shards (several with --ray)")
    v.add_argument("--model", help="model directory (default: the shipped small model)")
    _policy_args(v)
    v.add_argument("--out", help="write records.parquet, tokens.parquet and report.json here")
    v.add_argument("--ray", metavar="local|ADDRESS",
                   help="verify on a Ray cluster: 'local' starts one on this machine; resumable "
                        "(a re-run with the same --out verifies only what has no result)")
    v.add_argument("--workers", type=int, help="--ray: verifier actors (default: one per GPU, "
                                               "else one per CPU)")
    v.add_argument("--num-cpus", type=int, help="--ray local: CPUs of the local cluster")
    v.add_argument("--show", type=int, default=10, help="failing records listed in the summary")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.set_defaults(fn=cmd_verify)

    w = sub.add_parser("watch", help="verify record shards as they appear in a folder; alarm "
                                     "on any failing record")
    w.add_argument("dir", help="folder the logger writes *.jsonl / *.parquet shards into")
    w.add_argument("--out", required=True, help="results folder (per-shard tables, ALARM file)")
    w.add_argument("--model", help="model directory (default: the shipped small model)")
    _policy_args(w)
    w.add_argument("--alarm-cmd", help="shell command run on each alarm (webhook-style), in the "
                                       "background: the alarm's JSON on its stdin, its path in "
                                       "REPLAY_ALARM_FILE; retried until it exits 0")
    w.add_argument("--alarm-timeout", type=float, default=30.0,
                   help="seconds before a hanging alarm command is killed (and retried later)")
    w.add_argument("--once", action="store_true",
                   help="verify what is there now, waiting for shards still being written, and "
                        "exit (1 if any alarm, 2 if a shard never became stable)")
    w.add_argument("--exit-on-alarm", action="store_true", help="stop at the first alarm (exit 1)")
    w.add_argument("--interval", type=float, default=2.0, help="seconds between scans")
    w.add_argument("--settle", type=float, default=2.0,
                   help="a shard is read once unchanged for this many seconds (0: writers "
                        "rename complete files into place, docs/fleet.md)")
    w.add_argument("--quiet", action="store_true")
    w.set_defaults(fn=cmd_watch)

    r = sub.add_parser("report", help="bound table and PNG plots for honest (and attacked) "
                                      "traffic")
    r.add_argument("source", help="honest traffic: records (.jsonl, .parquet, folder) or a "
                                  "report folder written by verify --out (no sweep then)")
    r.add_argument("--attacked", action="append",
                   help="attacked traffic, records or a report folder (repeatable)")
    r.add_argument("--model", help="model directory (default: the shipped small model)")
    _policy_args(r)
    r.add_argument("--tokens-per-day", type=float, default=1e9,
                   help="traffic for the bytes-per-day column (default 1e9 tokens)")
    r.add_argument("--out", required=True, help="folder for report.md and the PNGs")
    r.set_defaults(fn=cmd_report)
    return p


def main(argv=None) -> int:
    """EXIT_STATUS; an error that stops a command is one escaped line on stderr, never a
    traceback (REPLAY_DEBUG=1 shows it)."""
    from replay.records import RecordError
    from replay.report import printable

    a = build_parser().parse_args(argv)  # usage errors: argparse's message, exit status 2
    try:
        return a.fn(a)
    except KeyboardInterrupt:
        return 130
    except SystemExit as e:
        if isinstance(e.code, str):
            print(printable(e.code), file=sys.stderr)
            return 2
        raise
    except (UsageError, RecordError, OSError, ValueError) as e:
        if os.environ.get("REPLAY_DEBUG"):
            raise
        print(f"replay {a.cmd}: error: {printable(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: still one line, and how to see more
        if os.environ.get("REPLAY_DEBUG"):
            raise
        print(f"replay {a.cmd}: internal error: {type(e).__name__}: {printable(e)} (run with "
              "REPLAY_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
