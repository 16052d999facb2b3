"""Records: one served completion each, as the trusted logger wrote it, read from JSONL or Parquet.

    batch = Batch.read("logs/")                      # every *.jsonl / *.parquet shard, sorted
    good, errors = batch.validate(vocab_size=V, max_context=C)
    for e in errors:
        print(e.record, e.field, e.message)

Records are plain data: this module imports nothing from the rest of replay, so every layer may
use it. Reading never stops at a bad record: each malformed line or row becomes one RecordError
in Batch.errors (naming the record and the field), and the others are kept. Termination
(stop token or max_tokens) is judged by the verifier; Record.termination() says which case holds.
"""
from __future__ import annotations

import dataclasses
import glob as _glob
import hashlib
import hmac
import json
import math
import numbers
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

SEED_LIMIT = 2**64  # seeds are uint64: the Philox key is two 32-bit words
INT64_LIMIT = 2**63  # token ids, top_k and max_tokens are stored as Parquet int64
# temperature: 0 (greedy) or within these bounds. The sampler divides float32 logits by T: below
# 1e-6 l / T can overflow float32 (inf logits, NaN margins) and the noise is lost in z's rounding
# anyway; above 1e6 every realistic row is uniform to float32 precision.
TEMPERATURE_RANGE = (1e-6, 1e6)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES
# Top-level fields in file order. stack, request and meta are optional (logs written before the
# stack was recorded have none: such a record is verified as if made on the verifier's stack).
FIELDS = ("request_id", "prompt", "output", "params", "max_tokens", "stop_token_ids", "model",
          "stack", "request", "meta")
OPTIONAL = ("stack", "request", "meta")
PARAM_FIELDS = ("temperature", "top_k", "top_p", "seed")
# The trusted logger's copy of the client's request (docs/records.md): every field it owns but the
# request_id (the record's key) and the output (the server's).
REQUEST_FIELDS = ("prompt", "params", "max_tokens", "stop_token_ids")
# The form replay.ops.stack writes: "replay <version> / <backend> / <device kind> / <dtype>". The
# engine writes the stack, so a server could make it a free-text channel: anything else is refused.
_VERSION = r"[0-9][0-9A-Za-z.+_-]{0,31}"
STACK_FORM = re.compile(rf"replay {_VERSION} / (cpu|triton-interpreter|torch {_VERSION}|"
                        rf"cuda-triton {_VERSION}) / (cpu|cuda sm_[0-9]{{2,3}}|[a-z]{{1,16}}) / "
                        r"(float32|bfloat16|float16|float64)")


class RecordError(ValueError):
    """One malformed record. record: its request_id if known, else where it sits (file:line or
    file:row N); field: the offending field ("prompt", "params.seed", ...), None when the whole
    line or file is unreadable; location: file:line / file:row N when read from a file."""

    def __init__(self, record: str, field: str | None, message: str, location: str | None = None):
        self.record, self.field, self.message, self.location = record, field, message, location
        at = f" ({location})" if location and location != record else ""
        what = f"field {field!r}: " if field else ""
        super().__init__(f"record {record!r}{at}: {what}{message}")


def _is_int(x) -> bool:
    # bool is an int in Python but never a token id or a count; numpy integers are fine.
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _type(x) -> str:
    return type(x).__name__


def _f32(x: float) -> float:
    # x as the sampler sees it (float32); inf past float32's range
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def record_name(rid, where: str | None) -> str:
    """How errors and results name a record: its request_id when that is a non-empty UTF-8
    string, else where it sits (file:line or file:row N)."""
    return rid if isinstance(rid, str) and rid and _utf8(rid) else (where or "<record>")


def _token_ids(seq, fld: str, bad) -> None:
    if not isinstance(seq, (list, tuple)):
        bad(fld, f"must be a list of token ids, got {_type(seq)}")
    for i, t in enumerate(seq):
        if not _is_int(t):
            bad(fld, f"token id at index {i} must be an integer, got {_type(t)} {t!r}")
        if t < 0:
            bad(fld, f"token id {t} at index {i} is outside the vocabulary (negative)")
        if t >= INT64_LIMIT:
            bad(fld, f"token id {t} at index {i} is outside the vocabulary (>= 2**63)")


def _count(x, fld: str, bad) -> None:
    if not _is_int(x):
        bad(fld, f"must be an integer, got {_type(x)}")
    if not 0 <= x < INT64_LIMIT:  # 0 is allowed: an empty output, terminated by "length"
        bad(fld, f"must be in [0, 2**63), got {x}")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy (argmax, lowest index on ties)
    top_k: int = 0            # 0 keeps every token
    top_p: float = 1.0        # in (0, 1]
    seed: int = 0             # uint64, keys the Philox noise

    def validate(self, where: str) -> None:
        """Raise RecordError (record=where, field="params.<name>") on the first bad parameter."""
        def bad(name, msg):
            raise RecordError(where, f"params.{name}", msg)
        t, k, p, s = self.temperature, self.top_k, self.top_p, self.seed
        lo, hi = TEMPERATURE_RANGE
        if not _is_real(t):
            bad("temperature", f"must be a number, got {_type(t)}")
        if not (t == 0 or lo <= t <= hi):  # also rejects NaN, infinities and huge ints
            bad("temperature", f"must be 0 (greedy) or in [{lo:g}, {hi:g}], got {t!r}")
        if not _is_int(k):
            bad("top_k", f"must be an integer, got {_type(k)}")
        if not 0 <= k < INT64_LIMIT:
            bad("top_k", f"must be in [0, 2**63) (0 keeps all tokens), got {k}")
        if not _is_real(p):
            bad("top_p", f"must be a number, got {_type(p)}")
        if not 0 < p <= 1:  # also rejects NaN
            bad("top_p", f"must be in (0, 1], got {p!r}")
        if _f32(p) <= 0:  # the sampler reads float32(top_p)
            bad("top_p", f"{p!r} is 0 in float32, the sampler's precision")
        if not _is_int(s):
            bad("seed", f"must be an integer, got {_type(s)}")
        if not 0 <= s < SEED_LIMIT:
            bad("seed", f"must be in [0, 2**64), got {s}")

    def normalized(self) -> "SamplingParams":
        # After validate: plain Python scalars (a JSON temperature of 1 becomes 1.0).
        return SamplingParams(float(self.temperature), int(self.top_k), float(self.top_p),
                              int(self.seed))


@dataclass(frozen=True)
class LoggedRequest:
    """The trusted logger's copy of the client's request: the limits and parameters the logger
    saw, never the server's echo of them. The termination check reads its max_tokens and
    stop_token_ids; every field must equal the record's own (else the record fails)."""
    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    stop_token_ids: list[int]

    def to_dict(self) -> dict:
        return {"prompt": list(self.prompt), "params": dataclasses.asdict(self.params),
                "max_tokens": self.max_tokens, "stop_token_ids": list(self.stop_token_ids)}

    @classmethod
    def from_dict(cls, d: Any, name: str, where: str | None) -> "LoggedRequest":
        if not isinstance(d, dict):
            raise RecordError(name, "request", f"must be an object, got {_type(d)}", where)
        _names(d, REQUEST_FIELDS, "field", name, where, "request.", (),
               "unknown field of the logged request")
        return cls(d["prompt"], _params(d["params"], name, where, "request.params"),
                   d["max_tokens"], d["stop_token_ids"])

    def validate(self, bad) -> None:
        _token_ids(self.prompt, "request.prompt", bad)
        if not isinstance(self.params, SamplingParams):
            bad("request.params", f"must be SamplingParams, got {_type(self.params)}")
        try:
            self.params.validate("")
        except RecordError as e:
            bad(f"request.{e.field}", e.message)
        _count(self.max_tokens, "request.max_tokens", bad)
        _token_ids(self.stop_token_ids, "request.stop_token_ids", bad)

    def normalized(self) -> "LoggedRequest":
        return LoggedRequest([int(t) for t in self.prompt], self.params.normalized(),
                             int(self.max_tokens), [int(t) for t in self.stop_token_ids])


def _params(params: Any, name: str, where: str | None, fld: str = "params") -> SamplingParams:
    if not isinstance(params, dict):
        raise RecordError(name, fld, f"must be an object, got {_type(params)}", where)
    # an unknown one (min_p, a repetition penalty): the sampler cannot replay what it lacks
    _names(params, PARAM_FIELDS, "field", name, where, fld + ".", (),
           "unknown sampling parameter")
    return SamplingParams(**params)


@dataclass
class Record:
    request_id: str
    prompt: list[int]
    output: list[int]
    params: SamplingParams
    max_tokens: int
    stop_token_ids: list[int]
    model: str                # model identity (replay.weights.identity: a hash of the weights)
    meta: dict = field(default_factory=dict)  # free-form, kept on round trips
    # the kernel stack the output was generated on (replay.ops.stack: replay version, backend,
    # device kind, dtype); exact replay holds within one stack; "" = not recorded
    stack: str = ""
    request: LoggedRequest | None = None      # the trusted logger's copy of the request

    def to_dict(self) -> dict:
        d = {
            "request_id": self.request_id,
            "prompt": list(self.prompt),
            "output": list(self.output),
            "params": dataclasses.asdict(self.params),
            "max_tokens": self.max_tokens,
            "stop_token_ids": list(self.stop_token_ids),
            "model": self.model,
            "stack": self.stack,
        }
        if self.request is not None:
            d["request"] = self.request.to_dict()
        d["meta"] = self.meta
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str | None = None) -> "Record":
        """Build a validated Record from its JSON shape; raise RecordError on the first problem.
        where: the location (file:line) used to name the record while its request_id is unknown."""
        loc = where or "<dict>"
        if not isinstance(d, dict):
            raise RecordError(loc, None, f"expected a JSON object, got {_type(d)}", where)
        name = record_name(d.get("request_id"), loc)
        _names(d, FIELDS, "field", name, where)
        req = d.get("request")
        rec = cls(d["request_id"], d["prompt"], d["output"], _params(d["params"], name, where),
                  d["max_tokens"], d["stop_token_ids"], d["model"], d.get("meta", {}),
                  d.get("stack", ""),
                  None if req is None else LoggedRequest.from_dict(req, name, where))
        rec.validate(where=where)
        return rec.normalized()

    def normalized(self) -> "Record":
        """A copy with plain Python ints and floats (after validate: numpy ints, a JSON
        temperature of 1, ... become what the writers and the sampler expect)."""
        return Record(self.request_id, [int(t) for t in self.prompt],
                      [int(t) for t in self.output], self.params.normalized(),
                      int(self.max_tokens), [int(t) for t in self.stop_token_ids], self.model,
                      self.meta, self.stack,
                      self.request.normalized() if self.request else None)

    def validate(self, vocab_size: int | None = None, max_context: int | None = None,
                 where: str | None = None, model: str | None = None,
                 require_request: bool = False) -> None:
        """Raise RecordError on the first problem. Without vocab_size / max_context only the
        model-independent checks run; with model (an identity), the record must name it; with
        require_request, it must carry the logger's copy of the request (a logger key is set)."""
        rid = self.request_id
        name = record_name(rid, where)

        def bad(fld, msg):
            raise RecordError(name, fld, msg, where)
        if not isinstance(rid, str):
            bad("request_id", f"must be a string, got {_type(rid)}")
        if not rid:
            bad("request_id", "must not be empty")
        if not _utf8(rid):  # the seed derivation hashes these bytes
            bad("request_id", "is not encodable as UTF-8 (lone surrogate?)")
        for fld in ("prompt", "output", "stop_token_ids"):
            _token_ids(getattr(self, fld), fld, bad)
        if not self.prompt:
            bad("prompt", "is empty (the first output token needs a context)")
        if not isinstance(self.params, SamplingParams):
            bad("params", f"must be SamplingParams, got {_type(self.params)}")
        try:
            self.params.validate(name)
        except RecordError as e:
            raise RecordError(name, e.field, e.message, where) from None
        _count(self.max_tokens, "max_tokens", bad)
        if len(self.output) > self.max_tokens:
            bad("output", f"has {len(self.output)} tokens, more than max_tokens={self.max_tokens}")
        if not isinstance(self.model, str) or not self.model:
            bad("model", f"must be a non-empty string, got {self.model!r}")
        if not isinstance(self.stack, str):
            bad("stack", f"must be a string (replay.ops.stack), got {_type(self.stack)}")
        if self.stack and not STACK_FORM.fullmatch(self.stack):
            bad("stack", "is not 'replay <version> / <backend> / <device> / <dtype>' "
                "(replay.ops.stack)")
        if not isinstance(self.meta, dict):
            bad("meta", f"must be an object, got {_type(self.meta)}")
        try:
            json.dumps(self.meta, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as e:
            bad("meta", f"is not JSON-serialisable: {e}")
        if self.request is not None:
            if not isinstance(self.request, LoggedRequest):
                bad("request", f"must be a LoggedRequest, got {_type(self.request)}")
            self.request.validate(bad)
        elif require_request:
            bad("request", "missing: with a logger key every record must carry the logger's "
                           "copy of the request (prompt, params, max_tokens, stop_token_ids)")
        if vocab_size is not None:
            for fld in ("prompt", "output", "stop_token_ids"):
                seq = getattr(self, fld)
                hi = max(seq, default=-1)
                if hi >= vocab_size:
                    i = list(seq).index(hi)
                    bad(fld, f"token id {hi} at index {i} is outside the vocabulary "
                             f"(vocab_size={vocab_size})")
        if max_context is not None:
            n = len(self.prompt) + len(self.output)
            if n > max_context:
                bad("output" if len(self.prompt) <= max_context else "prompt",
                    f"prompt + output is {n} tokens, longer than the model's context "
                    f"({max_context})")
        if model is not None and self.model != model:
            bad("model", f"record was generated by {self.model!r}, verifier runs {model!r}")

    def limits(self) -> tuple[int, list[int]]:
        """(max_tokens, stop_token_ids) that termination is judged by: the logger's when the
        record carries its copy of the request, else the record's own."""
        if self.request is not None:
            return self.request.max_tokens, self.request.stop_token_ids
        return self.max_tokens, self.stop_token_ids

    def termination(self, max_context: int | None = None) -> str:
        """"stop": the output ends with its only stop token (also when that is at max_tokens);
        "length": exactly max_tokens and no stop token; "context": no stop token and prompt +
        output fills max_context, the verifier's model context (never a limit the record claims);
        else "bad:<reason>". Limits: Record.limits (the logger's). The stop token is part of the
        output: the engine samples it like any other token, so it is verified too."""
        max_tokens, stops = self.limits()
        n, stops = len(self.output), set(stops)
        if n > max_tokens:
            return "bad:longer_than_max_tokens"
        hits = [i for i, t in enumerate(self.output) if t in stops]
        if hits and hits[0] < n - 1:
            return "bad:stop_token_in_middle"
        if hits:
            return "stop"
        if n == max_tokens:
            return "length"
        if max_context is not None and len(self.prompt) + n == max_context:
            return "context"
        return "bad:neither_stop_nor_max_tokens"

    def claim_mismatches(self) -> list[tuple[str, str]]:
        """(field, reason) for each field where the record differs from the logger's copy of the
        request: the server changed what the client asked for."""
        req, out = self.request, []
        if req is None:
            return out
        for fld in REQUEST_FIELDS:
            mine, logged = getattr(self, fld), getattr(req, fld)
            if fld != "params":
                if mine != logged:
                    out.append((fld, f"{fld}: the record's differs from the logger's request"))
                continue
            for k in PARAM_FIELDS:
                a, b = getattr(mine, k), getattr(logged, k)
                if a != b:  # never print a seed: the server must not learn the logger's
                    out.append((f"params.{k}", f"params.{k}: the record's differs from the "
                                               "logger's request" if k == "seed" else
                                f"params.{k}: the record says {a!r}, the logger's request {b!r}"))
        return out


def derive_seed(key: bytes, request_id: str) -> int:
    """The recommended logger seed: the first 8 bytes (big-endian) of HMAC-SHA256(key, request_id).
    A server that chose its own seeds could grind them to encode bits; the logger's key stops
    that."""
    digest = hmac.new(key, request_id.encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big")


def digest(*parts) -> str:
    """SHA-256 (32 hex digits) of the JSON encoding of `parts` (JSON-serialisable values). The
    encoding is injective (strings are quoted and escaped, lone surrogates too), so different
    tuples never share a digest short of a SHA-256 collision: unlike "a#b" + "c" and "a" +
    "b#c", which join to the same string."""
    s = json.dumps(parts, ensure_ascii=True, sort_keys=True, separators=(",", ":"),
                   allow_nan=False)
    return hashlib.sha256(s.encode("ascii")).hexdigest()[:32]


def cost(record: Record) -> int:
    """Teacher-forced tokens of a record: prompt + output - 1 (none without an output)."""
    return len(record.prompt) + len(record.output) - 1 if record.output else 0


def packs(items: Iterable, token_budget: int, cost: Callable = cost) -> Iterator[list]:
    """Consecutive groups whose cost fits the budget (a costlier item alone), in order."""
    pack, used = [], 0
    for it in items:
        n = cost(it)
        if pack and used + n > token_budget:
            yield pack
            pack, used = [], 0
        pack.append(it)
        used += n
    if pack:
        yield pack


class Batch:
    """A list-like of Records plus the RecordErrors met while reading them."""

    def __init__(self, records: Iterable[Record] = (), errors: Iterable[RecordError] = ()):
        self.records: list[Record] = list(records)
        self.errors: list[RecordError] = list(errors)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __getitem__(self, i):
        return Batch(self.records[i]) if isinstance(i, slice) else self.records[i]

    def __repr__(self) -> str:
        return f"Batch({len(self.records)} records, {len(self.errors)} errors)"

    def validate(self, vocab_size: int | None = None, max_context: int | None = None,
                 model: str | None = None, require_request: bool = False
                 ) -> tuple[list[Record], list[RecordError]]:
        """(good records, errors): the read errors, then one error per record that fails the
        model's checks (Record.validate; model: the identity records must name; require_request:
        the logger's copy of the request must be there) or repeats an earlier request_id. Never
        raises for a bad record."""
        good, errors = [], list(self.errors)
        for r in self.records:
            try:
                r.validate(vocab_size, max_context, model=model, require_request=require_request)
                good.append(r)
            except RecordError as e:
                errors.append(e)
        good, dup = _drop_duplicates(good, [None] * len(good))
        return good, errors + dup

    # ---- JSONL ----------------------------------------------------------------------------

    @classmethod
    def from_jsonl(cls, path) -> "Batch":
        records, where, errors = [], [], []
        from replay.jsonl import read_jsonl

        for loc, d in read_jsonl(path):
            try:
                if isinstance(d, RecordError):
                    raise d
                records.append(Record.from_dict(d, where=loc))
                where.append(loc)
            except RecordError as e:
                errors.append(e)
        records, dup = _drop_duplicates(records, where)
        return cls(records, errors + dup)

    def to_jsonl(self, path) -> None:
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for r in _checked(self.records):
                f.write(json.dumps(r.to_dict(), ensure_ascii=False, allow_nan=False) + "\n")

    # ---- Parquet --------------------------------------------------------------------------

    @classmethod
    def from_parquet(cls, path) -> "Batch":
        """Per-row problems go to Batch.errors; an unreadable file (truncated, not Parquet,
        missing, unknown or repeated column) raises RecordError naming the file. A file that
        breaks part way keeps the rows read before and ends with one error naming the row."""
        pq, pa = _pyarrow()
        path = os.fspath(path)
        try:
            pf = pq.ParquetFile(path)
            names = [n for n in pf.schema_arrow.names if not n.startswith("__index_level_")]
        except (pa.ArrowException, OSError) as e:
            raise RecordError(path, None, f"cannot read Parquet file: {e}", path) from e
        for c in names:
            if names.count(c) > 1:  # to_pydict would silently keep one of them
                raise RecordError(path, c, f"column appears {names.count(c)} times", path)
        _names(names, _PARQUET_COLUMNS, "column", path, path)
        records, where, errors, row = [], [], [], 0
        try:
            for chunk in pf.iter_batches(batch_size=4096, columns=names):
                cols = chunk.to_pydict()
                for i in range(chunk.num_rows):
                    loc = f"{path}:row {row}"
                    row += 1
                    try:
                        records.append(Record.from_dict(_row_to_dict(cols, i, loc), where=loc))
                        where.append(loc)
                    except RecordError as e:
                        errors.append(e)
        except (pa.ArrowException, OSError) as e:
            loc = f"{path}:row {row}"
            errors.append(RecordError(loc, None, f"cannot read the Parquet file from row {row} "
                                      f"on: {e}", loc))
        records, dup = _drop_duplicates(records, where)
        return cls(records, errors + dup)

    def to_parquet(self, path) -> None:
        pq, pa = _pyarrow()
        rs, tok = _checked(self.records), pa.list_(pa.int64())
        cols = {
            "request_id": pa.array([r.request_id for r in rs], pa.string()),
            "prompt": pa.array([list(r.prompt) for r in rs], tok),
            "output": pa.array([list(r.output) for r in rs], tok),
            # float64 so that a temperature round-trips exactly; the sampler narrows it itself
            "temperature": pa.array([float(r.params.temperature) for r in rs], pa.float64()),
            "top_k": pa.array([int(r.params.top_k) for r in rs], pa.int64()),
            "top_p": pa.array([float(r.params.top_p) for r in rs], pa.float64()),
            "seed": pa.array([int(r.params.seed) for r in rs], pa.uint64()),
            "max_tokens": pa.array([int(r.max_tokens) for r in rs], pa.int64()),
            "stop_token_ids": pa.array([list(r.stop_token_ids) for r in rs], tok),
            "model": pa.array([r.model for r in rs], pa.string()),
            "stack": pa.array([r.stack for r in rs], pa.string()),
            "request": pa.array([json.dumps(r.request.to_dict()) if r.request else None
                                 for r in rs], pa.string()),
            "meta": pa.array([json.dumps(r.meta, ensure_ascii=False) for r in rs], pa.string()),
        }
        pq.write_table(pa.table(cols), path)

    # ---- any format -----------------------------------------------------------------------

    @classmethod
    def read(cls, path) -> "Batch":
        """One file (format by suffix), a directory (its shards, list_shards) or a glob. With
        several shards, an unreadable shard becomes one error and the others are kept; one file
        that cannot be read raises."""
        path = os.fspath(path)
        if not os.path.isdir(path) and not any(c in path for c in "*?["):
            return cls.read_shard(path)
        records, where, errors = [], [], []
        for f in list_shards(path):
            try:
                b = cls.read_shard(f)
            except RecordError as e:
                errors.append(e)
                continue
            records += b.records
            where += [f] * len(b.records)
            errors += b.errors
        # request ids must be unique across shards too
        records, dup = _drop_duplicates(records, where)
        return cls(records, errors + dup)

    @classmethod
    def read_shard(cls, path: str) -> "Batch":
        """One JSONL or Parquet file, by its suffix."""
        if path.endswith(JSONL_SUFFIXES):
            return cls.from_jsonl(path)
        if path.endswith(PARQUET_SUFFIXES):
            return cls.from_parquet(path)
        raise RecordError(path, None, f"unknown record format (expected a name ending in "
                          f"{', '.join(SUFFIXES)})", path)


def is_shard(path: str) -> bool:
    """The one rule of what a record shard is (Batch.read, the fleet and the watcher list folders
    with it): a *.jsonl / *.ndjson / *.parquet / *.pq name, not hidden (a logger's temporary
    files are)."""
    name = os.path.basename(path)
    return name.endswith(SUFFIXES) and not name.startswith(".")


def shard_names(folder: str) -> list[str]:
    """The record shards in a folder, sorted by name."""
    return sorted(f for f in os.listdir(folder) if is_shard(f))


def list_shards(paths) -> list[str]:
    """Record shards of a path or a list of paths: files as given, folders expanded to their
    shard_names, globs to their matching shards, in that order."""
    out = []
    for p in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            out += [os.path.join(p, f) for f in shard_names(p)]
        elif any(c in p for c in "*?["):
            out += sorted(f for f in _glob.glob(p) if is_shard(f))
        elif os.path.exists(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    if not out:
        raise FileNotFoundError(f"{paths}: no *.jsonl or *.parquet shards")
    return out


_PARQUET_COLUMNS = ("request_id", "prompt", "output", *PARAM_FIELDS, "max_tokens",
                    "stop_token_ids", "model", "stack", "request", "meta")
_JSON_COLUMNS = ("request", "meta")  # JSON strings; a null cell is an absent field


def _names(have, expected, what: str, name: str, where: str | None, prefix: str = "",
           optional=OPTIONAL, unknown: str | None = None) -> None:
    # The record's fields, the file's columns, or (prefix "params.", "request.") the keys of one
    # of its objects: every expected one but the optional, no other.
    for k in expected:
        if k not in have and k not in optional:
            raise RecordError(name, f"{prefix}{k}", f"missing {what}", where)
    for k in have:
        if k not in expected:
            raise RecordError(name, f"{prefix}{k}", unknown or f"unknown {what} (free-form "
                              "data belongs in 'meta')", where)


def _row_to_dict(cols: dict, i: int, loc: str) -> dict:
    # Parquet row -> the JSON shape. A null cell counts as a missing field.
    from replay.jsonl import no_repeats

    d = {k: v[i] for k, v in cols.items() if v[i] is not None and k not in PARAM_FIELDS}
    d["params"] = {k: cols[k][i] for k in PARAM_FIELDS if cols[k][i] is not None}
    for k in _JSON_COLUMNS:
        if k in d:
            try:
                d[k] = json.loads(d[k], object_pairs_hook=no_repeats)
            except (TypeError, ValueError, RecursionError) as e:
                raise RecordError(record_name(d.get("request_id"), loc), k,
                                  f"is not a JSON string: {e}", loc) from e
    return d


def _checked(records: list[Record]) -> list[Record]:
    # Never write what we would refuse to read.
    for r in records:
        r.validate()
    return [r.normalized() for r in records]


def _drop_duplicates(records: list[Record], where: list) -> tuple[list[Record], list[RecordError]]:
    # The first occurrence of a request_id is kept; each repeat is rejected (it is not the record
    # the logger registered first, and two verdicts for one id would be ambiguous).
    seen: dict[str, Any] = {}
    kept, errors = [], []
    for r, loc in zip(records, where):
        if r.request_id in seen:
            first = seen[r.request_id]
            msg = "duplicate request_id in the batch" + (f" (first at {first})" if first else "")
            errors.append(RecordError(r.request_id, "request_id", msg, loc))
        else:
            seen[r.request_id] = loc
            kept.append(r)
    return kept, errors


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:  # a core dependency; records import nothing of replay (extras.DIST)
        raise ImportError("Parquet records need pyarrow: pip install replay-verify") from e
    return pq, pa
