"""Fleet verification on a local Ray cluster (2 CPUs): a worker killed mid-run and a driver that
stops early still give exactly one result row per input record, identical to a single-process
run; bad shards are reported with file and line and the rest verify."""
import json
import os
import signal
import threading
import time

import pytest

ray = pytest.importorskip("ray")

import helpers as fd  # noqa: E402
from replay.fleet import (FleetIncomplete, merge, pack_items, shard_items,  # noqa: E402
                          verify_fleet, verify_pack)
from replay.policy import Policy  # noqa: E402
from replay.records import Batch, RecordError  # noqa: E402
from replay.verify import Options, verify  # noqa: E402

COLS = ["request_id", "verdict", "reason", "field", "n_tokens", "n_exact", "n_suspicious",
        "n_dangerous", "first_failure", "termination"]


def _norm(rows):
    out = {}
    for r in rows:
        r = {k: (None if r[k] is None or r[k] != r[k] else r[k]) for k in COLS}  # NaN/NA -> None
        r = {k: int(v) if v is not None and (k.startswith("n_") or k == "first_failure") else v
             for k, v in r.items()}
        assert r["request_id"] not in out
        out[r["request_id"]] = r
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    model = fd.tiny_model()
    recs = fd.tamper(fd.records(model, 2000), 97, model.cfg.vocab_size)
    folder = str(tmp_path_factory.mktemp("shards"))
    paths = fd.write_shards(recs, folder, 12)
    single = verify(Batch.read(folder), model=model)
    return model, folder, paths, single


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


FP = Options().fingerprint("test")


def test_shard_items_name_the_file_and_line(data):
    _, folder, paths, _ = data
    bad_line = [it for it in shard_items(paths[0], FP) if "error" in it]
    assert len(bad_line) == 1 and bad_line[0]["error"]["request_id"] == f"{paths[0]}:168"
    assert "not valid JSON" in bad_line[0]["error"]["reason"]
    cut = shard_items(paths[-1], FP)
    assert len(cut) == 1 and "cannot read Parquet file" in cut[0]["error"]["reason"]
    assert paths[-1] in cut[0]["error"]["reason"]


def test_pack_checks_logger_seeds(data):
    """A fleet worker given the logger's key fails records whose seed it did not derive."""
    model, _, paths, _ = data
    pack = [dict(it, ordinal=i) for i, it in enumerate(shard_items(paths[1], FP))
            if "record" in it][:4]
    plain = verify_pack(model, pack, paths[1], Options())
    keyed = verify_pack(model, pack, paths[1], Options(seed_key=b"logger-key"))
    assert [r["field"] for r in plain] != ["params.seed"] * 4
    assert [r["field"] for r in keyed] == ["params.seed"] * 4
    assert all(r["verdict"] == "fail" for r in keyed)


def test_packs_keep_order_and_budget(data):
    items = shard_items(data[2][1], FP)
    packs = pack_items(items, 40)
    assert [it for p in packs for it in p] == items
    for p in packs:
        cost = sum(len(it["record"]["prompt"]) + len(it["record"]["output"]) - 1 for it in p)
        assert cost <= 40 or len(p) == 1


def _keys(path, fingerprint):
    return [it["key"] for it in shard_items(path, fingerprint)]


def test_keys_change_with_all_that_a_verdict_depends_on(data, tmp_path):
    """A row is found again only for the same record content under the same model, policy,
    check_model and seed key (never under another: that would be a stale verdict)."""
    model, _, paths, _ = data
    recs = Batch.read(paths[2]).records
    shard = str(tmp_path / "s.jsonl")
    Batch(recs).to_jsonl(shard)
    fp = Options().fingerprint(model.identity)
    k0 = _keys(shard, fp)
    assert _keys(shard, fp) == k0 and len(set(k0)) == len(k0) == len(recs)
    # packing never changes a verdict (DESIGN §2), so it does not change the keys
    assert Options(token_budget=7, lm_chunk=3).fingerprint(model.identity) == fp
    others = [Options(seed_key=b"logger-key"), Options(seed_key=b"logger-key2"),
              Options(policy=Policy.tolerant()), Options(policy=Policy.tolerant(-4.0)),
              Options(check_model=False)]
    fps = {fp} | {o.fingerprint(model.identity) for o in others}
    fps.add(Options().fingerprint(model.identity + "x"))
    fps.add(Options().fingerprint(model.identity, "replay 0 / torch / cpu / float32"))
    assert Options().fingerprint(model.identity, "") == fp
    assert len(fps) == len(others) + 3
    for f in fps - {fp}:
        assert set(_keys(shard, f)).isdisjoint(k0)
    # one record's tokens changed: that record alone gets a new key
    Batch(fd.tamper(recs, len(recs) + 1, model.cfg.vocab_size)).to_jsonl(shard)
    k1 = _keys(shard, fp)
    assert k1[0] != k0[0] and k1[1:] == k0[1:]


def test_keys_of_lookalike_shards_and_ids_differ(data, tmp_path):
    """'a.jsonl' + id 'x.jsonl#r1' and 'a.jsonl#x.jsonl' + id 'r1' joined to one key once."""
    import dataclasses

    model = data[0]
    r = fd.records(model, 1, seed=6)[0]
    a, b = str(tmp_path / "a.jsonl"), str(tmp_path / "a.jsonl#x.jsonl")
    Batch([dataclasses.replace(r, request_id="x.jsonl#r1")]).to_jsonl(a)
    Batch([dataclasses.replace(r, request_id="r1")]).to_jsonl(b)
    with open(a, "a") as f:  # and error items: a line that is not JSON in each
        f.write("{\n")
    with open(b, "a") as f:
        f.write("{\n")
    ka, kb = _keys(a, FP), _keys(b, FP)
    assert len(ka) == len(kb) == 2 and set(ka).isdisjoint(kb)


def test_equal_items_of_one_shard_get_their_own_keys(data, tmp_path, monkeypatch):
    """Two errors with one location and one message (a line holding two JSON values) are two
    input items: one key for both would leave one without a row."""
    path = str(tmp_path / "two.jsonl")
    open(path, "w").close()
    err = RecordError(f"{path}:1", None, "two JSON values on one line", f"{path}:1")
    monkeypatch.setattr(Batch, "read_shard", classmethod(lambda cls, p: Batch([], [err, err])))
    items = shard_items(path, FP)
    assert len(items) == 2 and items[0]["key"] != items[1]["key"]
    assert items[0]["error"] == items[1]["error"]


def test_bad_part_files_are_set_aside_not_fatal(data, tmp_path):
    """A truncated, empty, foreign (another pack's rows) or incomplete part file is moved to
    parts-rejected/ and its keys count as not done; reading the others still works."""
    import pandas as pd

    from replay.fleet import _part_name, _write_rows, read_parts

    model, _, paths, _ = data
    out = str(tmp_path)
    os.makedirs(os.path.join(out, "parts"))
    items = [dict(it, ordinal=i) for i, it in enumerate(shard_items(paths[1], FP))][:10]
    names = []
    for pack in pack_items(items, 24):
        names.append(_part_name(it["key"] for it in pack))
        _write_rows(os.path.join(out, "parts", names[-1]),
                    verify_pack(model, pack, paths[1], Options()))
    assert len(names) >= 5
    rows, rejected = read_parts(out)
    assert rejected == [] and sorted(rows["key"]) == sorted(it["key"] for it in items)
    part = [os.path.join(out, "parts", n) for n in names]
    raw = open(part[0], "rb").read()
    open(part[0], "wb").write(raw[: len(raw) // 2])
    open(part[1], "wb").close()
    open(part[2], "wb").write(open(part[3], "rb").read())
    pd.read_parquet(part[4]).drop(columns="verdict").to_parquet(part[4], index=False)
    rows, rejected = read_parts(out)
    assert sorted(rejected) == sorted(names[:3] + [names[4]])
    assert sorted(os.listdir(os.path.join(out, "parts-rejected"))) == sorted(rejected)
    kept = {k for p in [part[3]] + part[5:] for k in pd.read_parquet(p)["key"]}
    assert set(rows["key"]) == kept
    assert read_parts(out)[1] == []  # set aside once


def test_a_row_parquet_cannot_store_is_escaped(data, tmp_path):
    """A lone-surrogate request_id (an error row) must not fail its pack on every retry."""
    import pandas as pd

    from replay.fleet import _write_rows

    model = data[0]
    shard = tmp_path / "a.jsonl"
    r = fd.records(model, 1, seed=3)[0]
    shard.write_text(json.dumps(dict(r.to_dict(), request_id="x\ud800")) + "\n")
    pack = [dict(it, ordinal=i) for i, it in enumerate(shard_items(str(shard), FP))]
    rows = verify_pack(model, pack, str(shard), Options())
    # the line reader refuses the line (jsonl.read_jsonl: one named error, keyed by file:line)
    assert [r["verdict"] for r in rows] == ["error"] and "surrogate" in rows[0]["reason"]
    # a result that holds one all the same is escaped by the row, not fatal to the pack's write
    from replay.fleet import _row
    from replay.report import RecordResult

    rows = [_row(pack[0], str(shard), RecordResult("x\ud800", "error", "bad", "request_id"))]
    _write_rows(str(tmp_path / "p.parquet"), rows)
    back = pd.read_parquet(tmp_path / "p.parquet")
    assert list(back["request_id"]) == ["x\\ud800"] and list(back["verdict"]) == ["error"]


def _kill_one_worker(out: str, min_parts: int, killed: list):
    """SIGKILL one verifier actor once `min_parts` result files exist."""
    parts, workers = os.path.join(out, "parts"), os.path.join(out, "workers")
    deadline = time.time() + 120
    while time.time() < deadline:
        if os.path.isdir(parts) and len(os.listdir(parts)) >= min_parts:
            for pid in sorted(os.listdir(workers), key=int):
                if int(pid) in killed:
                    continue
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed.append(int(pid))
                return
        time.sleep(0.05)


@pytest.mark.slow
def test_killed_worker_and_resume_give_one_row_per_record(data, cluster, tmp_path):
    model, folder, paths, single = data
    out = str(tmp_path / "out")
    killed: list = []
    # Run 1: a worker is killed, then the driver stops early (a crash).
    t = threading.Thread(target=_kill_one_worker, args=(out, 4, killed))
    t.start()
    with pytest.raises(FleetIncomplete):
        verify_fleet([folder], model, out, token_budget=128, stop_after=25)
    t.join()
    with pytest.raises(FleetIncomplete, match="run again to resume"):
        merge(out, paths, Options().fingerprint(model.identity))
    # Run 2: resumes; another worker is killed while it runs.
    t = threading.Thread(target=_kill_one_worker, args=(out, len(os.listdir(out + "/parts")) + 4,
                                                        killed))
    t.start()
    res = verify_fleet([folder], model, out, token_budget=128)
    t.join()
    assert len(killed) == 2
    assert 0 < res.resumed < len(single.records) and res.verified < len(single.records)
    assert res.resumed + res.verified >= len(single.records)
    assert len(res.rows) == len(single.records) == 2002
    assert res.rows["key"].is_unique and res.rows["request_id"].is_unique
    assert _norm(res.rows.to_dict("records")) == _norm(single.records)
    c = res.counts
    assert (c["pass"], c["fail"], c["error"]) == (1979, 21, 2) and not res.ok
    # Run 3: nothing left to verify, the same table.
    again = verify_fleet([folder], model, out, token_budget=4096)
    assert again.verified == 0 and again.rows.equals(res.rows)


def test_cross_shard_duplicate_is_one_error(data, cluster, tmp_path):
    model = data[0]
    recs = fd.records(model, 30, seed=5)
    folder = str(tmp_path / "dup")
    fd.write_shards(recs, folder, 3, bad=False)
    Batch(recs[4:6]).to_jsonl(os.path.join(folder, "shard-009.jsonl"))  # repeats two records
    single = verify(Batch.read(folder), model=model)
    res = verify_fleet([folder], model, str(tmp_path / "out"), workers=1)
    assert len(res.rows) == 32 and res.counts["error"] == 2
    got = res.rows[res.rows["verdict"] == "error"]
    assert sorted(got["request_id"]) == [recs[4].request_id, recs[5].request_id]
    assert all("duplicate request_id" in r for r in got["reason"])
    assert len(single.records) == 32 and sum(r["verdict"] == "error" for r in single.records) == 2


def test_cli_verify_ray(cluster, tmp_path, capsys):
    from replay import cli
    from replay.model import Model

    model_dir = fd.save_hf(str(tmp_path / "model"))
    model = Model.from_pretrained(model_dir)
    recs = fd.records(model, 40, seed=9)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    fd.write_shards(recs[:20], a, 2, bad=False)
    fd.write_shards(fd.tamper(recs[20:], 10, model.cfg.vocab_size), b, 2, bad=False)
    argv = ["verify", "--ray", "local", "--model", model_dir, "--token-budget", "64"]
    assert cli.main(argv + [a, "--out", str(tmp_path / "ra")]) == 0
    assert cli.main(argv + [a, b, "--out", str(tmp_path / "rb")]) == 1
    out = capsys.readouterr().out
    assert "40 records" in out and "38 pass, 2 fail" in out
    assert cli.main(argv + [a]) == 2  # a usage error: exit status 2, one line naming --out
    assert "--out" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# faults: a fleet run must never report a stale or partial pass (issue 8 section 3)

@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Two saved checkpoints (other weights: other identities) and 20 honest records of the
    first, in two shards."""
    from replay.model import Model

    d = tmp_path_factory.mktemp("models")
    a, b = fd.save_hf(str(d / "a"), seed=0), fd.save_hf(str(d / "b"), seed=1)
    recs = fd.records(Model.from_pretrained(a), 20, seed=4)
    return a, b, recs


@pytest.mark.slow
def test_resume_is_keyed_on_seed_key_model_and_content(two_models, cluster, tmp_path):
    """The same --out re-used: another seed key, another model, or a shard replaced by a tampered
    copy verify again instead of reporting the first run's 20/20 pass; the same settings
    resume everything."""
    from replay.model import Model

    a, b, recs = two_models
    logs, out = str(tmp_path / "logs"), str(tmp_path / "out")
    paths = fd.write_shards(recs, logs, 2, bad=False)
    first = verify_fleet([logs], a, out, workers=1)
    assert first.ok and first.counts["pass"] == 20 and first.verified == 20

    keyed = verify_fleet([logs], a, out, workers=1, seed_key=b"logger-key")
    assert not keyed.ok and keyed.counts["fail"] == 20, "--seed-key reported the old pass"
    assert keyed.resumed == 0 and set(keyed.rows["field"]) == {"params.seed"}

    other = verify_fleet([logs], b, out, workers=1)
    assert not other.ok and other.counts["error"] == 20, "another --model reported the old pass"
    assert other.resumed == 0 and set(other.rows["field"]) == {"model"}

    tampered = fd.tamper(recs[0::2], 3, Model.from_pretrained(a).cfg.vocab_size)
    Batch(tampered).to_jsonl(paths[0])  # same path, same request ids, other tokens
    again = verify_fleet([logs], a, out, workers=1)
    assert not again.ok and again.counts["fail"] == 4, "a tampered copy reported the old pass"
    assert again.resumed == 16 and again.verified == 4  # only the 4 records that changed
    # the single-process verdicts, row by row
    single = verify(Batch.read(logs), model=Model.from_pretrained(a))
    assert _norm(again.rows.to_dict("records")) == _norm(single.records)

    # a run that stops early leaves no report behind (not the previous run's pass)
    assert os.path.exists(os.path.join(out, "records.parquet"))
    with pytest.raises(FleetIncomplete):
        verify_fleet([logs], a, out, workers=1, seed_key=b"other", stop_after=1)
    assert not os.path.exists(os.path.join(out, "records.parquet"))
    assert not os.path.exists(os.path.join(out, "report.json"))


def test_keys_do_not_collide(data, cluster, tmp_path):
    """a.jsonl holding id 'x.jsonl#r1' and a.jsonl#x.jsonl holding 'r1' (tampered) are two items:
    the fleet gives both a row and fails, as a single-process run does."""
    import dataclasses

    model = data[0]
    r = fd.records(model, 2, seed=6)
    logs = tmp_path / "logs"
    logs.mkdir()
    Batch([dataclasses.replace(r[0], request_id="x.jsonl#r1")]).to_jsonl(logs / "a.jsonl")
    bad = fd.tamper([dataclasses.replace(r[1], request_id="r1")], 1, model.cfg.vocab_size)
    Batch(bad).to_jsonl(logs / "a.jsonl#x.jsonl")
    single = verify(Batch.read(str(logs)), model=model)
    assert [x.verdict for x in single.records] == ["pass", "fail"]
    res = verify_fleet([str(logs)], model, str(tmp_path / "out"), workers=1)
    assert len(res.rows) == 2 and res.rows["key"].is_unique
    assert _norm(res.rows.to_dict("records")) == _norm(single.records) and not res.ok


@pytest.mark.slow
def test_truncated_empty_or_foreign_part_files_are_redone(data, cluster, tmp_path):
    model = data[0]
    recs = fd.tamper(fd.records(model, 24, seed=7), 5, model.cfg.vocab_size)
    logs, out = str(tmp_path / "logs"), str(tmp_path / "out")
    fd.write_shards(recs, logs, 2, bad=False)
    first = verify_fleet([logs], model, out, workers=1, token_budget=32)
    parts = sorted(os.listdir(os.path.join(out, "parts")))
    assert len(parts) >= 4
    p = [os.path.join(out, "parts", f) for f in parts]
    data0 = open(p[0], "rb").read()
    open(p[0], "wb").write(data0[: len(data0) // 2])   # truncated (a full disk, a bad copy)
    open(p[1], "wb").close()                           # empty
    open(p[2], "wb").write(open(p[3], "rb").read())    # another pack's rows under its name
    again = verify_fleet([logs], model, out, workers=1, token_budget=32)
    assert again.rejected == 3 and again.verified > 0
    assert sorted(os.listdir(os.path.join(out, "parts-rejected"))) == parts[:3]
    assert again.rows.equals(first.rows)
    assert "could not be read" in again.summary()
    # and the run after that is clean
    third = verify_fleet([logs], model, out, workers=1, token_budget=32)
    assert third.rejected == 0 and third.verified == 0 and third.rows.equals(first.rows)


def test_fleet_reads_the_files_a_single_process_reads(data, cluster, tmp_path):
    """Hidden files, a logger's *.tmp, other suffixes and subfolders: neither reads them."""
    model = data[0]
    recs = fd.records(model, 12, seed=8)
    logs = tmp_path / "logs"
    fd.write_shards(recs[:6], str(logs), 2, bad=False)
    Batch(recs[6:8]).to_jsonl(logs / ".half-written.jsonl")
    Batch(recs[8:10]).to_jsonl(logs / "c.jsonl.tmp")
    (logs / "sub").mkdir()
    Batch(recs[10:]).to_jsonl(logs / "sub" / "d.jsonl")
    (logs / "notes.txt").write_text("not records")
    single = verify(Batch.read(str(logs)), model=model)
    res = verify_fleet([str(logs)], model, str(tmp_path / "out"), workers=1)
    assert _norm(res.rows.to_dict("records")) == _norm(single.records)
    assert len(single.records) == 6
