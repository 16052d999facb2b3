import hashlib
import hmac
import json

import numpy as np
import pytest

from replay.records import Batch, Record, RecordError, SamplingParams, derive_seed

pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")


def rec(rid="r0", **kw) -> Record:
    d = dict(request_id=rid, prompt=[5, 6, 7], output=[8, 9, 2],
             params=SamplingParams(0.7, 40, 0.9, 12345), max_tokens=16, stop_token_ids=[2],
             model="tiny@sha256:abc", meta={})
    d.update(kw)
    return Record(**d)


def good_dict(rid="r0", **kw) -> dict:
    d = rec(rid).to_dict()
    d.update(kw)
    return d


def with_param(**kw) -> dict:
    d = good_dict()
    d["params"] = {**d["params"], **kw}
    return d


def write_lines(path, objs):
    with open(path, "w", encoding="utf-8") as f:
        for o in objs:
            f.write(o if isinstance(o, str) else json.dumps(o, ensure_ascii=False))
            f.write("\n")


# ---- round trips -------------------------------------------------------------------------

def awkward_records() -> list[Record]:
    return [
        rec("plain"),
        rec("seed0", params=SamplingParams(1.0, 0, 1.0, 0)),
        rec("seed2^63", params=SamplingParams(0.0, 1, 0.5, 2**63)),
        rec("seedmax", params=SamplingParams(1e-3, 7, 1e-9, 2**64 - 1)),
        rec("ünï-cödé ✓ 请求",
            meta={"user": "Zoë", "tags": ["a", 1, None], "nested": {"x": 1.5}}),
        rec("empty-output", output=[], stop_token_ids=[]),
        rec("temp-third", params=SamplingParams(1 / 3, 3, 0.1 + 0.2, 99)),
        rec("long", prompt=list(range(1, 1000)), output=[3] * 500, max_tokens=500),
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_round_trip_exact(tmp_path, fmt):
    rs = awkward_records()
    path = tmp_path / f"b.{fmt}"
    getattr(Batch(rs), f"to_{fmt}")(path)
    back = Batch.read(path)
    assert back.errors == []
    assert back.records == rs  # dataclass equality: every field, floats bit for bit
    for a, b in zip(rs, back):
        assert type(b.params.seed) is int and type(b.params.temperature) is float
    # a second trip changes nothing either
    getattr(back, f"to_{fmt}")(tmp_path / f"c.{fmt}")
    assert Batch.read(tmp_path / f"c.{fmt}").records == rs


def test_parquet_schema(tmp_path):
    Batch(awkward_records()).to_parquet(tmp_path / "b.parquet")
    t = pq.read_table(tmp_path / "b.parquet")
    assert str(t.schema.field("seed").type) == "uint64"
    assert str(t.schema.field("meta").type) == "string"
    assert t.column("seed").to_pylist()[3] == 2**64 - 1


def test_jsonl_format_and_int_temperature(tmp_path):
    # integer temperature in JSON is fine and becomes a float; meta is optional
    d = good_dict()
    d["params"]["temperature"] = 1
    del d["meta"]
    write_lines(tmp_path / "a.jsonl", [d])
    (r,) = Batch.from_jsonl(tmp_path / "a.jsonl")
    assert r.params.temperature == 1.0 and type(r.params.temperature) is float and r.meta == {}
    Batch([r]).to_jsonl(tmp_path / "b.jsonl")
    line = json.loads((tmp_path / "b.jsonl").read_text().splitlines()[0])
    assert list(line) == ["request_id", "prompt", "output", "params", "max_tokens",
                          "stop_token_ids", "model", "stack", "meta"]
    assert list(line["params"]) == ["temperature", "top_k", "top_p", "seed"]


def test_batch_is_list_like():
    rs = [rec("a"), rec("b"), rec("c")]
    b = Batch(rs)
    assert len(b) == 3 and b[1] is rs[1] and list(b) == rs and b[1:].records == rs[1:]


def test_numpy_ints_accepted_and_normalized(tmp_path):
    r = rec(prompt=list(np.arange(1, 4)), max_tokens=np.int64(16))
    r.validate(vocab_size=10)
    Batch([r]).to_jsonl(tmp_path / "n.jsonl")
    (back,) = Batch.read(tmp_path / "n.jsonl")
    assert back.prompt == [1, 2, 3] and all(type(t) is int for t in back.prompt)


# ---- malformed records: one kind, one error naming record and field ------------------------

def drop(key):
    d = good_dict()
    del d[key]
    return d


def drop_param(key):
    d = good_dict()
    del d["params"][key]
    return d


MALFORMED = [
    # (dict, field, substring of the message)
    (drop("prompt"), "prompt", "missing field"),
    (drop("stop_token_ids"), "stop_token_ids", "missing field"),
    (drop("model"), "model", "missing field"),
    (drop_param("seed"), "params.seed", "missing field"),
    (good_dict(prompt="hello"), "prompt", "must be a list"),
    (good_dict(prompt=[1, 2.0]), "prompt", "must be an integer, got float"),
    (good_dict(output=[True]), "output", "must be an integer, got bool"),
    (good_dict(stop_token_ids=[-1]), "stop_token_ids", "outside the vocabulary"),
    (good_dict(prompt=[]), "prompt", "empty"),
    (good_dict(output=[1] * 17), "output", "more than max_tokens"),
    (good_dict(max_tokens=-1, output=[]), "max_tokens", "[0, 2**63)"),
    # what the sampler or Parquet's int64 cannot hold is refused here, per record, not later for
    # the whole file (issue 8 s.2)
    (good_dict(max_tokens=2**70), "max_tokens", "[0, 2**63)"),
    (good_dict(prompt=[1, 2**63]), "prompt", ">= 2**63"),
    (good_dict(max_tokens="16"), "max_tokens", "must be an integer"),
    (good_dict(model=""), "model", "non-empty"),
    (good_dict(meta=[1]), "meta", "must be an object"),
    (good_dict(params=[1, 2]), "params", "must be an object"),
    (good_dict(extra=1), "extra", "unknown field"),
    (with_param(min_p=0.1), "params.min_p", "unknown sampling parameter"),
    (with_param(temperature="0.7"), "params.temperature", "must be a number"),
    (with_param(temperature=-0.1), "params.temperature", "must be 0 (greedy) or in [1e-06, 1e+06]"),
    (with_param(temperature=float("nan")), "params.temperature", "must be 0"),
    (with_param(temperature=float("inf")), "params.temperature", "must be 0"),
    (with_param(temperature=1e39), "params.temperature", "must be 0"),
    (with_param(temperature=1e-37), "params.temperature", "must be 0"),
    (with_param(temperature=10**400), "params.temperature", "must be 0"),
    (with_param(top_p=1e-50), "params.top_p", "0 in float32"),
    (with_param(top_p=0.0), "params.top_p", "(0, 1]"),
    (with_param(top_p=1.5), "params.top_p", "(0, 1]"),
    (with_param(top_p=float("nan")), "params.top_p", "(0, 1]"),
    (with_param(top_k=-1), "params.top_k", "[0, 2**63)"),
    (with_param(top_k=2**63), "params.top_k", "[0, 2**63)"),
    (with_param(top_k=2.5), "params.top_k", "must be an integer"),
    (with_param(seed=-1), "params.seed", "[0, 2**64)"),
    (with_param(seed=2**64), "params.seed", "[0, 2**64)"),
    (with_param(seed=1.0), "params.seed", "must be an integer"),
]


@pytest.mark.parametrize("d,fld,msg", MALFORMED, ids=[f"{m[1]}:{m[2]}" for m in MALFORMED])
def test_malformed_raises_naming_record_and_field(d, fld, msg):
    with pytest.raises(RecordError) as ei:
        Record.from_dict(d, where="f.jsonl:3")
    e = ei.value
    assert (e.record, e.field, e.location) == ("r0", fld, "f.jsonl:3")
    assert msg in e.message and isinstance(e, ValueError)


@pytest.mark.parametrize("rid", [None, "", 7])
def test_bad_or_missing_request_id_named_by_location(rid):
    d = good_dict()
    if rid is None:
        del d["request_id"]
    else:
        d["request_id"] = rid
    with pytest.raises(RecordError) as ei:
        Record.from_dict(d, where="f.jsonl:9")
    assert (ei.value.record, ei.value.field) == ("f.jsonl:9", "request_id")


def test_model_dependent_checks():
    r = rec(prompt=[1, 2, 3], output=[4, 99], stop_token_ids=[2])
    r.validate()  # fine without a model
    r.validate(vocab_size=100, max_context=5)
    with pytest.raises(RecordError) as ei:
        r.validate(vocab_size=99)
    e = ei.value
    assert (e.record, e.field) == ("r0", "output") and "99" in e.message and "vocab" in e.message
    with pytest.raises(RecordError) as ei:
        rec(stop_token_ids=[1000]).validate(vocab_size=100)
    assert ei.value.field == "stop_token_ids"
    with pytest.raises(RecordError) as ei:
        r.validate(max_context=4)
    assert ei.value.field == "output" and "context" in ei.value.message
    with pytest.raises(RecordError) as ei:
        r.validate(max_context=2)
    assert ei.value.field == "prompt"


def test_batch_validate_keeps_the_good_ones():
    rs = [rec("a"), rec("big", prompt=[1, 500]), rec("b"), rec("a"), rec("long", prompt=[1] * 9)]
    good, errs = Batch(rs).validate(vocab_size=100, max_context=10)
    assert [r.request_id for r in good] == ["a", "b"]
    assert [(e.record, e.field) for e in errs] == [("big", "prompt"), ("long", "output"),
                                                   ("a", "request_id")]
    assert "duplicate" in errs[2].message


def test_sampling_params_validate():
    SamplingParams().validate("x")
    SamplingParams(0.0, 0, 1.0, 2**64 - 1).validate("x")
    with pytest.raises(RecordError) as ei:
        SamplingParams(top_p=0).validate("req-1")
    assert (ei.value.record, ei.value.field) == ("req-1", "params.top_p")


# ---- files: bad lines are collected, the rest kept ---------------------------------------

def test_jsonl_bad_lines_collected(tmp_path):
    p = tmp_path / "mixed.jsonl"
    write_lines(p, [good_dict("a"), "{not json", good_dict("b", prompt="oops"), "",
                    "[1, 2]", good_dict("c"), good_dict("a"), good_dict("d")])
    with open(p, "ab") as f:
        f.write(b'{"request_id": "\xff\xfe"}\n')  # not UTF-8
    b = Batch.from_jsonl(p)
    assert [r.request_id for r in b] == ["a", "c", "d"]
    got = [(e.record, e.field, e.location) for e in b.errors]
    assert got == [
        (f"{p}:2", None, f"{p}:2"),
        ("b", "prompt", f"{p}:3"),
        (f"{p}:5", None, f"{p}:5"),
        (f"{p}:9", None, f"{p}:9"),
        ("a", "request_id", f"{p}:7"),
    ]
    assert "not valid JSON" in b.errors[0].message
    assert "expected a JSON object" in b.errors[2].message
    assert f"{p}:1" in b.errors[4].message  # the duplicate says where the first one was
    assert str(p) in str(b.errors[0]) and "2" in str(b.errors[0])


def test_parquet_bad_rows_collected(tmp_path):
    import pyarrow as pa
    Batch([rec("a"), rec("b"), rec("c")]).to_parquet(tmp_path / "ok.parquet")
    t = pq.read_table(tmp_path / "ok.parquet")
    temps = pa.array([0.5, -1.0, None], pa.float64())
    t = t.set_column(t.schema.get_field_index("temperature"), "temperature", temps)
    pq.write_table(t, tmp_path / "bad.parquet")
    b = Batch.from_parquet(tmp_path / "bad.parquet")
    assert [r.request_id for r in b] == ["a"]
    assert [(e.record, e.field) for e in b.errors] == [("b", "params.temperature"),
                                                      ("c", "params.temperature")]
    assert "missing field" in b.errors[1].message
    assert b.errors[0].location == f"{tmp_path / 'bad.parquet'}:row 1"


def test_parquet_missing_column_names_file(tmp_path):
    Batch([rec("a")]).to_parquet(tmp_path / "ok.parquet")
    t = pq.read_table(tmp_path / "ok.parquet").drop_columns(["seed"])
    pq.write_table(t, tmp_path / "noseed.parquet")
    with pytest.raises(RecordError) as ei:
        Batch.from_parquet(tmp_path / "noseed.parquet")
    assert ei.value.field == "seed" and str(tmp_path / "noseed.parquet") == ei.value.record
    assert ei.value.message == "missing column"
    t = pq.read_table(tmp_path / "ok.parquet")
    pq.write_table(t.append_column("min_p", pa.array([0.1])), tmp_path / "extra.parquet")
    with pytest.raises(RecordError, match="unknown column") as ei:
        Batch.from_parquet(tmp_path / "extra.parquet")
    assert ei.value.field == "min_p"
    pq.write_table(t.drop_columns(["stack", "meta"]), tmp_path / "optional.parquet")
    assert [r.request_id for r in Batch.from_parquet(tmp_path / "optional.parquet")] == ["a"]


def test_truncated_parquet_names_file(tmp_path):
    p = tmp_path / "t.parquet"
    Batch(awkward_records()).to_parquet(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(RecordError) as ei:
        Batch.read(p)
    assert ei.value.record == str(p) and str(p) in str(ei.value)
    assert "cannot read Parquet" in ei.value.message


def test_read_directory_and_glob_of_shards(tmp_path):
    Batch([rec("a"), rec("b")]).to_jsonl(tmp_path / "0.jsonl")
    Batch([rec("c"), rec("a")]).to_parquet(tmp_path / "1.parquet")
    (tmp_path / "2.parquet").write_bytes(b"PAR1 truncated")
    (tmp_path / "notes.txt").write_text("ignored")
    b = Batch.read(tmp_path)
    assert [r.request_id for r in b] == ["a", "b", "c"]
    assert [(e.record, e.field) for e in b.errors] == [(str(tmp_path / "2.parquet"), None),
                                                      ("a", "request_id")]
    g = Batch.read(str(tmp_path / "*.jsonl"))
    assert [r.request_id for r in g] == ["a", "b"] and g.errors == []
    with pytest.raises(ValueError):
        Batch.read(tmp_path / "notes.txt")


# ---- termination and seeds -----------------------------------------------------------------

@pytest.mark.parametrize("output,max_tokens,want", [
    ([4, 5, 2], 8, "stop"),
    ([4, 5, 2], 3, "stop"),                         # stop token exactly at max_tokens
    ([2], 1, "stop"),
    ([4, 5, 6], 3, "length"),
    ([4, 2, 6], 3, "bad:stop_token_in_middle"),
    ([2, 2], 4, "bad:stop_token_in_middle"),
    ([4, 5], 8, "bad:neither_stop_nor_max_tokens"),
    ([], 8, "bad:neither_stop_nor_max_tokens"),
    ([], 0, "length"),
    ([4, 5, 6, 7], 3, "bad:longer_than_max_tokens"),
])
def test_termination(output, max_tokens, want):
    assert rec(output=output, max_tokens=max_tokens, stop_token_ids=[2, 3]).termination() == want


def test_termination_without_stop_tokens():
    assert rec(output=[2, 2], max_tokens=2, stop_token_ids=[]).termination() == "length"


def test_derive_seed():
    key, rid = b"logger-secret-key", "req-\u00e9-42"
    digest = hmac.new(key, rid.encode("utf-8"), hashlib.sha256).digest()
    want = int.from_bytes(digest[:8], "big")
    assert derive_seed(key, rid) == want
    assert 0 <= want < 2**64 and derive_seed(key, "other") != want
    assert derive_seed(b"k", "x") == int(hmac.new(b"k", b"x", "sha256").hexdigest()[:16], 16)


# ---- hostile files: one named error per line or record, nothing merged or lost (issue 8 s.2) --

def test_jsonl_hostile_lines(tmp_path):
    p = tmp_path / "hostile.jsonl"
    deep = "[" * 100_000 + "]" * 100_000
    dup_top = json.dumps(good_dict("dup")).replace('"model":', '"output": [1], "model":', 1)
    dup_param = json.dumps(good_dict("dup-p")).replace('"seed":', '"top_k": 3, "seed":', 1)
    two = json.dumps(good_dict("two-a")) + " " + json.dumps(good_dict("two-b"))
    surrogate = json.dumps(good_dict("x")).replace('"x"', '"\\ud800"', 1)
    write_lines(p, [good_dict("ok-1"), deep, dup_top, dup_param, two, surrogate, good_dict("ok-2")])
    b = Batch.from_jsonl(p)
    assert [r.request_id for r in b] == ["ok-1", "ok-2"]
    got = [(e.record, e.field, e.location) for e in b.errors]
    assert got == [(f"{p}:2", None, f"{p}:2"),
                   ("dup", "output", f"{p}:3"),
                   ("dup-p", "params.top_k", f"{p}:4"),
                   ("two-a", None, f"{p}:5"), ("two-b", None, f"{p}:5"),
                   (f"{p}:6", "request_id", f"{p}:6")]   # named where it is, printable
    assert "nested too deeply" in b.errors[0].message
    assert "twice" in b.errors[1].message
    assert "value 2 of 2" in b.errors[4].message


def test_jsonl_cr_only_line_endings(tmp_path):
    p = tmp_path / "cr.jsonl"
    p.write_bytes(b"\r".join(json.dumps(good_dict(f"c{i}")).encode() for i in range(3)) + b"\r")
    b = Batch.from_jsonl(p)
    assert [r.request_id for r in b] == ["c0", "c1", "c2"] and b.errors == []
    p.write_bytes(b"\r\n".join(json.dumps(good_dict(f"c{i}")).encode() for i in range(3)))
    assert len(Batch.from_jsonl(p)) == 3


def test_parquet_repeated_column_and_unknown_suffix(tmp_path):
    import pyarrow as pa
    Batch([rec("a")]).to_parquet(tmp_path / "ok.parquet")
    t = pq.read_table(tmp_path / "ok.parquet")
    t = pa.Table.from_arrays(t.columns + [t.column("prompt")], names=t.column_names + ["prompt"])
    pq.write_table(t, tmp_path / "dup.parquet")
    with pytest.raises(RecordError) as ei:
        Batch.read(tmp_path / "dup.parquet")
    assert ei.value.field == "prompt" and "2 times" in ei.value.message
    (tmp_path / "r.jsonl.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(RecordError, match="unknown record format"):
        Batch.read(tmp_path / "r.jsonl.gz")


def test_parquet_round_trips_the_logged_request(tmp_path):
    from replay.records import LoggedRequest
    r = rec("l", request=LoggedRequest([5, 6, 7], SamplingParams(0.7, 40, 0.9, 12345), 16, [2]))
    for fmt in ("jsonl", "parquet"):
        getattr(Batch([r, rec("plain")]), f"to_{fmt}")(tmp_path / f"l.{fmt}")
        assert Batch.read(tmp_path / f"l.{fmt}").records == [r, rec("plain")]
