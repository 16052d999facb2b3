"""Fleet verification on Ray: many record shards, one verifier actor per device.

    res = verify_fleet(["logs/"], model="path/to/model", out="results/", address="local")
    print(res.summary())              # exit status: res.ok

Pipeline (Ray Data): shard paths -> read tasks (each reads one shard with replay.records and
emits token-budget packs) -> an actor pool (one actor per device, each holding the model) that
runs replay.verify on a pack and writes its result rows to out/parts/ -> the driver, which merges
the parts into out/records.parquet.

Why every input record gets exactly one result row, and never a stale one:
- Each input item has a key: the digest (replay.records.digest, an injective encoding) of the run's
  settings fingerprint (Options.fingerprint: replay's version, the model identity, the kernel
  stack, the policy, check_model, the seed key's HMAC fingerprint), the shard path, the record's
  whole content (or, for a line or file that could not be read, its location and error), and how
  many equal items came before it in the shard (so two equal errors on one line are two keys). A
  row answers exactly one key: a re-run with another seed key, model, kernel stack or policy, or
  over a shard whose records changed, has other keys and verifies again. The read task writes the shard's keys, in order, to
  out/shards/ (a manifest, with the fingerprint).
- An actor writes a pack's rows to a file named by the digest of the pack's keys, atomically (temp
  file + rename). A worker that dies before the rename leaves nothing; Ray restarts the actor and
  retries the pack. One that dies after it leaves a file that the retry rewrites with the same
  bits. So a dead worker costs a retry, never a record.
- Re-running reads the parts already written and sends only the keys without a row (resume). A
  part file that cannot be read, lacks a column or does not hold the keys its name promises
  (truncated, empty, copied over) is moved to out/parts-rejected/ and its records are verified
  again. The merge keeps one row per key (verification is deterministic, so copies agree), takes
  the order from the manifests, and checks every manifest key of this run has a row; the previous
  run's records.parquet and report.json are removed first, so a run that stops leaves no report.
- A request_id seen in an earlier shard becomes a "duplicate" error row, as in a single-process
  Batch.read over the same folder.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass

from typing import TYPE_CHECKING

from replay.records import Batch, Record, RecordError, cost, digest, list_shards, packs
from replay.report import COLUMNS, RecordResult, failure_lines

# replay.verify (and with it torch and the model) is imported where a pack is verified: Ray's
# reader worker imports this module to run _Reader, and reading and packing need neither
if TYPE_CHECKING:
    from replay.verify import Options

ROW_COLUMNS = ("key", "shard", "ordinal") + COLUMNS


class FleetIncomplete(RuntimeError):
    """The run stopped before every record had a result; run it again to resume."""


# ---------------------------------------------------------------------------------------------
# reading: one shard -> items (records or errors) -> token-budget packs

def _error_item(e: Exception, path: str) -> dict:
    loc = getattr(e, "location", None) or path
    err = RecordResult.error(e, loc).to_dict()
    return {"what": ("error", loc, err["reason"]), "error": err, "cost": 0}


def shard_items(path: str, fingerprint: str) -> list[dict]:
    """Every input item of one shard, in order: {"key", "record", "cost"} or {"key", "error"};
    the keys are digests of (fingerprint, path, the record's content or the error's location and
    message, how many equal items came before it in the shard): two equal items (two errors on
    one line) still get two keys. An unreadable shard is one error item naming the file; a bad
    line or row names file:line."""
    try:
        b = Batch.read_shard(path)
        items = [{"what": ("record", r.to_dict()), "cost": cost(r)} for r in b.records]
        items += [_error_item(e, path) for e in b.errors]
    except (RecordError, OSError, ValueError) as e:
        items = [_error_item(e, path)]
    seen: dict[str, int] = {}
    for it in items:
        what = it.pop("what")
        if what[0] == "record":
            it["record"] = what[1]
        base = digest(fingerprint, path, *what)
        it["key"] = digest(base, seen.get(base, 0))
        seen[base] = seen.get(base, 0) + 1
    return items


def pack_items(items: list[dict], token_budget: int) -> list[list[dict]]:
    """replay.records.packs (the verifier's packer) over shard items (an error item costs 0)."""
    return list(packs(items, token_budget, cost=lambda it: it["cost"]))


def _part_name(keys) -> str:
    return f"part-{digest(*keys)}.parquet"


def _manifest(out: str, shard: str) -> str:
    return os.path.join(out, "shards", digest(shard) + ".json")


def _atomic_write(path: str, write):
    tmp = f"{path}.{os.getpid()}.tmp"
    write(tmp)
    os.replace(tmp, path)


class _Reader:
    """Ray Data flat_map: {"shard", "order"} -> one row per pack of that shard still to verify."""

    def __init__(self, out: str, fingerprint: str, done: set, token_budget: int):
        self.out, self.fingerprint, self.done, self.budget = out, fingerprint, done, token_budget

    def __call__(self, row):
        path, order = row["shard"], int(row["order"])
        items = shard_items(path, self.fingerprint)
        for i, it in enumerate(items):
            it["ordinal"] = i
        _atomic_write(_manifest(self.out, path),
                      lambda p: _dump(p, {"shard": path, "order": order,
                                          "fingerprint": self.fingerprint,
                                          "keys": [it["key"] for it in items]}))
        todo = [it for it in items if it["key"] not in self.done]
        for pack in pack_items(todo, self.budget):
            yield {"shard": path, "order": order, "pack": json.dumps(pack)}


def _dump(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)


# ---------------------------------------------------------------------------------------------
# verifying: one actor per device

def load_model(spec, device: str = "cpu"):
    """A replay Model from a directory, a Model, or a zero-argument callable returning one."""
    from replay.model import Model

    if isinstance(spec, Model):
        m = spec
    elif callable(spec):
        m = spec()
    else:
        m = Model.from_pretrained(os.fspath(spec))
    return m.to(device) if device != "cpu" else m


def model_identity(spec, device: str = "cpu") -> tuple[str, str]:
    """(Model.identity, Model.stack) of the model that `spec` gives the actors on `device`, for
    the fingerprint. The identity: a Model's own; a callable's model's (built here once); a
    folder's, computed here if this machine sees the folder, else by a task on the cluster,
    without loading weights. The stack (ops.stack of the device and the model's dtype): here for
    the CPU, by a task on a GPU of the cluster for CUDA."""
    import ray
    from replay import ops
    from replay.model import Model

    dtype = "float32"  # what from_pretrained loads, and load_model keeps
    if isinstance(spec, Model) or callable(spec):
        m = spec if isinstance(spec, Model) else load_model(spec)
        if not hasattr(m, "stack"):  # a model that checks no stack (replay.hf's)
            return m.identity, ""
        ident, dtype = m.identity, str(m.dtype).replace("torch.", "")
    elif os.path.isdir(os.fspath(spec)):
        ident = Model.identity_of(os.fspath(spec))
    else:
        ident = ray.get(ray.remote(num_cpus=0)(Model.identity_of).remote(os.fspath(spec)))

    def stack():
        import torch

        return ops.stack(device, getattr(torch, dtype))
    if device == "cpu":
        return ident, stack()
    return ident, ray.get(ray.remote(num_gpus=1, num_cpus=0)(stack).remote())


def verify_pack(model, pack: list[dict], shard: str, options: Options) -> list[dict]:
    """Result rows (ROW_COLUMNS) of one pack, one per item, in the pack's order."""
    from replay.verify import verify

    recs, by_rid, rows = [], {}, {}
    for it in pack:
        if "error" in it:
            rows[it["key"]] = _row(it, shard, RecordResult(**it["error"]))
            continue
        r = Record.from_dict(it["record"])  # shard_items wrote it from a valid Record
        recs.append(r)
        by_rid[r.request_id] = it
    if recs:
        for res in verify(recs, model, options=options).records:
            it = by_rid[res.request_id]
            rows[it["key"]] = _row(it, shard, res)
    return [rows[it["key"]] for it in pack]


def _row(it, shard, res: RecordResult) -> dict:
    row = {"key": it["key"], "shard": shard, "ordinal": it["ordinal"], **res.to_dict()}
    # a request_id with a lone surrogate (an error row) cannot go into Parquet as it is: it
    # would fail the pack on every retry; its escaped form names it
    return {k: v.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(v, str) else v
            for k, v in row.items()}


def _write_rows(path: str, rows: list[dict]):
    import pandas as pd

    df = pd.DataFrame(rows, columns=list(ROW_COLUMNS))
    df["first_failure"] = df["first_failure"].astype("Int64")
    _atomic_write(path, lambda p: df.to_parquet(p, index=False))


class _Verifier:
    """Ray Data actor: holds the model; one call verifies packs and writes their rows."""

    def __init__(self, model, device, options: Options, out, threads, identity: tuple):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = load_model(model, device)
        here = (self.model.identity, getattr(self.model, "stack", ""))
        if here != tuple(identity):  # its rows would be filed under another model's key
            raise RuntimeError(f"the model loaded here is {here}, the driver keyed this run on "
                               f"{tuple(identity)} (did its weights or the kernels change?)")
        self.options = options
        self.parts = os.path.join(out, "parts")
        open(os.path.join(out, "workers", str(os.getpid())), "w").close()  # who to kill, in tests

    def __call__(self, batch):
        n, tok = [], []
        for shard, pack in zip(batch["shard"], batch["pack"]):
            pack = json.loads(pack)
            rows = verify_pack(self.model, pack, str(shard), self.options)
            _write_rows(os.path.join(self.parts, _part_name(it["key"] for it in pack)), rows)
            n.append(len(rows))
            tok.append(sum(r["n_tokens"] for r in rows))
        return {"n": n, "tokens": tok}


# ---------------------------------------------------------------------------------------------
# merging

def _read_part(path: str):
    """The rows of one part file (pandas), or the reason it cannot be trusted."""
    import pandas as pd
    import pyarrow as pa

    try:
        df = pd.read_parquet(path)
    except (pa.ArrowException, OSError, ValueError) as e:  # truncated, empty, not Parquet
        return f"unreadable ({e})"
    missing = [c for c in ROW_COLUMNS if c not in df.columns]
    if missing:
        return f"lacks columns {missing}"
    if os.path.basename(path) != _part_name(df["key"]):
        return "does not hold the rows its name promises"
    return df


def read_parts(out: str):
    """(every row written so far, one per key (pandas) or None; the part files rejected). A part
    that cannot be trusted (_read_part) is moved to out/parts-rejected/ and a warning logged, so
    that its records are verified again instead of failing every later run."""
    import pandas as pd

    d = os.path.join(out, "parts")
    files = sorted(f for f in os.listdir(d) if f.endswith(".parquet")) if os.path.isdir(d) else []
    frames, rejected = [], []
    for f in files:
        df = _read_part(os.path.join(d, f))
        if isinstance(df, str):
            os.makedirs(os.path.join(out, "parts-rejected"), exist_ok=True)
            os.replace(os.path.join(d, f), os.path.join(out, "parts-rejected", f))
            logging.getLogger(__name__).warning(
                "replay fleet: part file %s %s: set aside in parts-rejected/, its records are "
                "verified again", f, df)
            rejected.append(f)
        else:
            frames.append(df)
    if not frames:
        return None, rejected
    df = pd.concat(frames, ignore_index=True)
    return df.drop_duplicates("key", keep="first"), rejected


def merge(out: str, shards: list[str], fingerprint: str):
    """One row per input item of `shards` (pandas), in shard then item order, for the run keyed
    on `fingerprint`; raises FleetIncomplete if a shard was not read for it or some item has no
    row yet."""
    import pandas as pd

    df, _ = read_parts(out)
    keys, where = [], []
    for i, s in enumerate(shards):
        try:
            with open(_manifest(out, s)) as f:
                man = json.load(f)
        except (OSError, ValueError):
            man = None
        if man is None or man.get("shard") != s or man.get("fingerprint") != fingerprint:
            raise FleetIncomplete(f"{s}: not read yet; run again to resume")
        keys += man["keys"]
        where += [(s, j) for j in range(len(man["keys"]))]
    if df is None:  # nothing written: only correct when the shards hold no items
        df = pd.DataFrame({c: pd.Series(dtype=object) for c in ROW_COLUMNS})
    df = df.set_index("key")
    missing = [k for k in keys if k not in df.index]
    if missing:
        raise FleetIncomplete(f"{len(missing)} of {len(keys)} records have no result yet "
                              f"(first: {missing[0]}); run again to resume")
    df = df.loc[keys].reset_index()
    # the manifests say where each item sits now (a row may come from a run that read it elsewhere)
    df["shard"] = [s for s, _ in where]
    df["ordinal"] = [j for _, j in where]
    df = df[list(ROW_COLUMNS)]
    # A request_id already seen in an earlier shard: the later copy is rejected, as Batch.read does
    first: dict = {}
    for i, (rid, v, sh) in enumerate(zip(df["request_id"], df["verdict"], df["shard"])):
        if v == "error" or rid is None:
            continue
        if rid in first and first[rid] != sh:
            dup = RecordResult.error(RecordError(
                rid, "request_id", f"duplicate request_id in the batch (first at {first[rid]})",
                sh))
            for c, x in dup.to_dict().items():
                df.iloc[i, df.columns.get_loc(c)] = x
        first.setdefault(rid, sh)
    return df


# ---------------------------------------------------------------------------------------------
# the run

@dataclass
class FleetResult:
    out: str
    rows: object            # pandas DataFrame, one row per input item (ROW_COLUMNS)
    resumed: int            # rows of this run's keys that already existed when it started
    verified: int           # rows written by this run
    seconds: float
    workers: int
    rejected: int = 0       # part files set aside (unreadable, incomplete): their rows redone

    @property
    def counts(self) -> dict:
        v = self.rows["verdict"]
        return {"records": len(v), "pass": int((v == "pass").sum()),
                "fail": int((v == "fail").sum()), "error": int((v == "error").sum()),
                "tokens": int(self.rows["n_tokens"].sum())}

    @property
    def ok(self) -> bool:
        return bool((self.rows["verdict"] == "pass").all())

    def summary(self, max_lines: int = 10) -> str:
        c = self.counts
        lines = [f"replay verify --ray: {c['records']} records ({self.resumed} from an earlier "
                 f"run), {c['tokens']:,} output tokens, {self.workers} workers",
                 f"  records: {c['pass']} pass, {c['fail']} fail, {c['error']} malformed"]
        lines += failure_lines(self.rows.to_dict("records"), max_lines)
        if self.rejected:
            lines.append(f"  {self.rejected} part files could not be read and were set aside in "
                         f"{self.out}/parts-rejected/; their records were verified again")
        lines.append(f"  {self.seconds:.1f} s; results in {self.out}/records.parquet")
        return "\n".join(lines)


def verify_fleet(shards, model, out: str, address: str = "local", workers: int | None = None,
                 policy=None, *, options: Options | None = None, device: str | None = None,
                 num_cpus: int | None = None, threads_per_worker: int = 1,
                 stop_after: int | None = None, **settings) -> FleetResult:
    """Verify every record of `shards` (files or folders) on a Ray cluster; resumable.

    model:      a model directory (each actor loads it), a Model, or a callable returning one
    out:        results folder: records.parquet (one row per input item), report.json, parts/
    address:    "local" starts a local cluster (num_cpus CPUs; default all), anything else is a
                Ray address; if Ray is already initialised in this process, that cluster is used
    workers:    actors (default: one per GPU with device "cuda", else one per CPU)
    stop_after: stop after this many packs (FleetIncomplete): a crash, for tests
    policy, options, settings: the verifier's settings, as for replay.verify (Options)
    """
    from replay.extras import need

    ray = need("ray", "ray", "fleet verification (--ray)")
    from replay.verify import Options

    opts = Options.of(options, policy, **settings)
    shards = list(dict.fromkeys(list_shards(shards)))  # a shard named twice is read once
    for d in ("parts", "shards", "workers"):
        os.makedirs(os.path.join(out, d), exist_ok=True)
    for f in ("records.parquet", "report.json"):  # an earlier run's report must not outlive it
        if os.path.exists(os.path.join(out, f)):
            os.remove(os.path.join(out, f))
    prev, rejected = read_parts(out)
    done = set() if prev is None else set(prev["key"])

    started = not ray.is_initialized()
    if started:
        kw = dict(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        if address == "local":
            ray.init(num_cpus=num_cpus, **kw)
        else:
            ray.init(address=address, **kw)
    t0 = time.perf_counter()
    try:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        res = ray.cluster_resources()
        device = device or ("cuda" if res.get("GPU", 0) >= 1 else "cpu")
        identity = model_identity(model, device)
        fingerprint = opts.fingerprint(*identity)
        per = {"num_gpus": 1, "num_cpus": 1} if device == "cuda" else {"num_cpus": 1}
        n = workers or max(1, int(res.get("GPU", 0) if device == "cuda" else res.get("CPU", 1)))
        ds = ray.data.from_items([{"shard": s, "order": i} for i, s in enumerate(shards)])
        # num_cpus=0: reading is light, and must not wait behind actors that hold every CPU
        ds = ds.flat_map(_Reader, fn_constructor_args=(out, fingerprint, done, opts.token_budget), num_cpus=0,
                         compute=ray.data.ActorPoolStrategy(size=1))
        ds = ds.map_batches(
            _Verifier, batch_size=1, compute=ray.data.ActorPoolStrategy(size=n),
            fn_constructor_args=(model, device, opts, out, threads_per_worker, identity),
            # the C++ kernels' OpenMP threads: one actor per CPU must not use every core
            runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads_per_worker)}},
            **per)  # Ray Data's actor pools restart dead actors and retry their packs
        verified = 0
        for i, b in enumerate(ds.iter_batches(batch_size=1)):
            verified += int(b["n"][0])
            if stop_after is not None and i + 1 >= stop_after:
                raise FleetIncomplete(f"stopped after {i + 1} packs")
    finally:
        if started:
            ray.shutdown()
    rows = merge(out, shards, fingerprint)
    resumed = sum(k in done for k in rows["key"])
    result = FleetResult(out, rows, resumed, verified, time.perf_counter() - t0, n,
                         len(rejected))
    _atomic_write(os.path.join(out, "records.parquet"),
                  lambda p: rows.to_parquet(p, index=False))
    _atomic_write(os.path.join(out, "report.json"),
                  lambda p: _dump(p, {"counts": result.counts, "shards": shards,
                                      "model": identity[0], "stack": identity[1],
                                      "policy": opts.policy.to_dict(),
                                      "fingerprint": fingerprint, "ok": result.ok}))
    return result
