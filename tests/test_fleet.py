"""Fleet verification on a local Ray cluster (2 CPUs): a worker killed mid-run and a driver that
stops early still give exactly one result row per input record, identical to a single-process
run; bad shards are reported with file and line and the rest verify."""
import os
import signal
import threading
import time

import pytest

ray = pytest.importorskip("ray")

import helpers as fd  # noqa: E402
from replay.fleet import (FleetIncomplete, merge, pack_items, shard_items,  # noqa: E402
                          verify_fleet, verify_pack)
from replay.records import Batch  # noqa: E402
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


def test_shard_items_name_the_file_and_line(data):
    _, folder, paths, _ = data
    bad_line = [it for it in shard_items(paths[0]) if "error" in it]
    assert len(bad_line) == 1 and bad_line[0]["key"] == f"!{paths[0]}:168"
    assert "not valid JSON" in bad_line[0]["error"]["reason"]
    cut = shard_items(paths[-1])
    assert len(cut) == 1 and "cannot read Parquet file" in cut[0]["error"]["reason"]
    assert paths[-1] in cut[0]["error"]["reason"]


def test_pack_checks_logger_seeds(data):
    """A fleet worker given the logger's key fails records whose seed it did not derive."""
    model, _, paths, _ = data
    pack = [dict(it, ordinal=i) for i, it in enumerate(shard_items(paths[1]))
            if "record" in it][:4]
    plain = verify_pack(model, pack, paths[1], Options())
    keyed = verify_pack(model, pack, paths[1], Options(seed_key=b"logger-key"))
    assert [r["field"] for r in plain] != ["params.seed"] * 4
    assert [r["field"] for r in keyed] == ["params.seed"] * 4
    assert all(r["verdict"] == "fail" for r in keyed)


def test_packs_keep_order_and_budget(data):
    items = shard_items(data[2][1])
    packs = pack_items(items, 40)
    assert [it for p in packs for it in p] == items
    for p in packs:
        cost = sum(len(it["record"]["prompt"]) + len(it["record"]["output"]) - 1 for it in p)
        assert cost <= 40 or len(p) == 1


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
        merge(out, paths)
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
    with pytest.raises(SystemExit, match="--out"):
        cli.main(argv + [a])
