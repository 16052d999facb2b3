"""replay watch: shards verified as they appear, results written, alarms (exit status, ALARM file,
alarm command) on any record that does not pass, nothing verified twice, restarts resume."""
import json
import os
import shlex
import sys

import pytest

import helpers as fd
from replay import cli
from replay.model import Model
from replay.records import Batch
from replay.watch import Watcher


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("watch")
    model_dir = fd.save_hf(str(d / "model"))
    model = Model.from_pretrained(model_dir)
    recs = fd.records(model, 60, seed=2)
    return model_dir, model, recs


def _alarm_cmd(log):
    # a webhook stand-in: appends what it was told (the shard, the alarm's JSON) to a file
    code = ("import os; open(os.environ['LOG'], 'a').write(os.environ['REPLAY_ALARM_SHARD'] + "
            "'\\t' + os.environ['REPLAY_ALARM_JSON'] + '\\n')")
    return f"LOG={shlex.quote(str(log))} {shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def test_clean_then_failing_shards(setup, tmp_path):
    model_dir, model, recs = setup
    logs, out, hook = tmp_path / "logs", tmp_path / "out", tmp_path / "hook.log"
    logs.mkdir()
    Batch(recs[:20]).to_jsonl(logs / "a.jsonl")
    Batch(recs[20:40]).to_parquet(logs / "b.parquet")
    argv = ["watch", str(logs), "--out", str(out), "--model", model_dir, "--once", "--quiet",
            "--alarm-cmd", _alarm_cmd(hook)]
    assert cli.main(argv) == 0
    assert not (out / "ALARM").exists() and not hook.exists()
    assert len(Batch.read(str(logs)).records) == 40
    for name in ("a.jsonl", "b.parquet"):
        assert json.load(open(out / "shards" / name / "report.json"))["counts"]["pass"] == 20

    # new shards: one tampered record, one truncated Parquet file, a line that is not JSON
    Batch(fd.tamper(recs[40:50], 4, model.cfg.vocab_size)).to_jsonl(logs / "c.jsonl")
    with open(logs / "c.jsonl", "a") as f:
        f.write("{not json\n")
    Batch(recs[50:60]).to_parquet(logs / "d.parquet")
    data = (logs / "d.parquet").read_bytes()
    (logs / "d.parquet").write_bytes(data[:100])
    (logs / ".e.jsonl.tmp").write_text("ignored: the logger has not finished this one")
    assert cli.main(argv) == 1
    alarms = [json.loads(x) for x in open(out / "ALARM")]
    assert [a["shard"] for a in alarms] == ["c.jsonl", "d.parquet"]
    c = alarms[0]["records"]
    assert sorted(r["request_id"] for r in c if r["verdict"] == "fail") == [
        recs[i].request_id for i in (40, 44, 48)]
    assert any(r["verdict"] == "error" and "c.jsonl:11" in r["reason"] for r in c)
    assert "cannot read Parquet file" in alarms[1]["records"][0]["reason"]
    told = [line.split("\t") for line in open(hook).read().splitlines()]
    assert [shard for shard, _ in told] == ["c.jsonl", "d.parquet"]
    assert [json.loads(js) for _, js in told] == alarms  # the alarm command gets the ALARM line
    # nothing new: no work, no alarm
    assert cli.main(argv) == 0
    assert len(open(out / "ALARM").readlines()) == 2


def test_waits_for_a_shard_to_settle_and_catches_changes(setup, tmp_path):
    model_dir, model, recs = setup
    logs, out = tmp_path / "logs", tmp_path / "out"
    logs.mkdir()
    w = Watcher(str(logs), str(out), model, settle=0.0, quiet=True)
    Batch(recs[:5]).to_jsonl(logs / "a.jsonl")
    assert w.pending() == []               # first sight: maybe still being written
    assert w.pending() == ["a.jsonl"]      # unchanged since the previous scan
    assert w.run(max_scans=1, interval=0) == 0
    assert w.pending() == []
    # a restarted watcher remembers what it verified
    w2 = Watcher(str(logs), str(out), model, settle=0.0, quiet=True)
    w2.pending()
    assert w2.pending() == []
    # an append to a verified shard is an alarm, and the shard is verified again
    with open(logs / "a.jsonl", "a") as f:
        f.write(json.dumps(recs[5].to_dict()) + "\n")
    os.utime(logs / "a.jsonl", ns=(0, 0))  # also old enough to have settled
    assert w2.run(max_scans=2, interval=0) == 1
    alarm = json.loads(open(out / "ALARM").read().splitlines()[-1])
    assert "changed after it was verified" in alarm["message"]
    assert w2.state["a.jsonl"]["records"] == 6 and w2.state["a.jsonl"]["pass"] == 6


def test_seed_key_alarms_on_seeds_the_logger_did_not_derive(setup, tmp_path):
    """The records' seeds are not HMAC-derived: with the logger's key every record alarms."""
    model_dir, model, recs = setup
    logs, out = tmp_path / "logs", tmp_path / "out"
    logs.mkdir()
    Batch(recs[:5]).to_jsonl(logs / "a.jsonl")
    argv = ["watch", str(logs), "--out", str(out), "--model", model_dir, "--once", "--quiet"]
    assert cli.main(argv + ["--seed-key", "logger-key"]) == 1
    rows = json.loads(open(out / "ALARM").readline())["records"]
    assert len(rows) == 5 and all(r["field"] == "params.seed" for r in rows)
