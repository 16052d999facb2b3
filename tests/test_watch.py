"""replay watch: shards verified as they appear, results written, alarms (exit status, ALARM file,
alarm command) on any record that does not pass, nothing verified twice, restarts resume."""
import dataclasses
import json
import os
import shlex
import sys
import threading
import time

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


def _py(code: str, **env) -> str:
    """A shell command running `code` with python, with `env` set (a webhook stand-in)."""
    pre = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items())
    return f"{pre} {shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def _alarm_cmd(log):
    # a webhook stand-in: appends the shard each alarm names and the alarm's JSON, read from
    # its stdin, to a file
    return _py("import json, os, sys; a = sys.stdin.read(); "
               "open(os.environ['LOG'], 'a').write(json.loads(a)['shard'] + '\\t' + a)", LOG=log)


def test_clean_then_failing_shards(setup, tmp_path):
    model_dir, model, recs = setup
    logs, out, hook = tmp_path / "logs", tmp_path / "out", tmp_path / "hook.log"
    logs.mkdir()
    Batch(recs[:20]).to_jsonl(logs / "a.jsonl")
    Batch(recs[20:40]).to_parquet(logs / "b.parquet")
    argv = ["watch", str(logs), "--out", str(out), "--model", model_dir, "--once", "--quiet",
            "--settle", "0.1", "--alarm-cmd", _alarm_cmd(hook)]
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
    told = sorted(line.split("\t") for line in open(hook).read().splitlines())  # in parallel
    assert [shard for shard, _ in told] == ["c.jsonl", "d.parquet"]
    # the alarm command gets the ALARM line
    assert sorted(js for _, js in told) == sorted(open(out / "ALARM").read().splitlines())
    # nothing new: no work, no alarm
    assert cli.main(argv) == 0
    assert len(open(out / "ALARM").readlines()) == 2


def test_waits_for_a_shard_to_settle_and_catches_changes(setup, tmp_path):
    model_dir, model, recs = setup
    logs, out = tmp_path / "logs", tmp_path / "out"
    logs.mkdir()
    w = Watcher(str(logs), str(out), model, settle=0.0, quiet=True)
    Batch(recs[:5]).to_jsonl(logs / "a.jsonl")
    assert w.pending() == ([], ["a.jsonl"])   # first sight: maybe still being written
    assert w.pending() == (["a.jsonl"], [])   # unchanged since the previous scan
    assert w.run(max_scans=1, interval=0) == 0
    assert w.pending() == ([], []) and w.done("a.jsonl")
    # a restarted watcher remembers what it verified (after hashing it once)
    w2 = Watcher(str(logs), str(out), model, settle=0.0, quiet=True)
    w2.pending()
    assert w2.pending() == ([], [])
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
    argv = ["watch", str(logs), "--out", str(out), "--model", model_dir, "--once", "--quiet",
            "--settle", "0"]
    assert cli.main(argv + ["--seed-key", "logger-key"]) == 1
    rows = json.loads(open(out / "ALARM").readline())["records"]
    assert len(rows) == 5 and all(r["field"] == "params.seed" for r in rows)


# ---------------------------------------------------------------------------------------------
# faults: the watcher must never report a stale or partial pass, nor lose an alarm (issue 8 s.3)

def _argv(logs, out, model_dir, *more):
    return ["watch", str(logs), "--out", str(out), "--model", model_dir, "--once", "--quiet",
            "--settle", "0", *more]


def test_an_alarm_of_any_size_reaches_the_command_by_stdin_and_file(setup, tmp_path):
    """1,500 bad lines: more than an environment variable holds (128 KiB a string on Linux)."""
    model_dir, model, recs = setup
    logs, out, got = tmp_path / "logs", tmp_path / "out", tmp_path / "got.json"
    logs.mkdir()
    Batch(recs[:2]).to_jsonl(logs / "big.jsonl")
    with open(logs / "big.jsonl", "a") as f:
        f.writelines(f'{{"request_id": "cut-{i:04d}", "prompt": [1, 2\n' for i in range(1500))
    hook = _py("import json, os, sys; a = json.load(sys.stdin); "
               "b = json.load(open(os.environ['REPLAY_ALARM_FILE'])); "
               "json.dump([len(a['records']), len(b['records']), "
               "any(len(v) > 4096 for v in os.environ.values())], open(os.environ['GOT'], 'w'))",
               GOT=got)
    assert cli.main(_argv(logs, out, model_dir, "--alarm-cmd", hook)) == 1
    assert json.load(open(got)) == [1500, 1500, False]
    w = Watcher(str(logs), str(out), model_dir, settle=0, quiet=True)
    assert w.done("big.jsonl") and w.undelivered() == []
    assert len(json.loads(open(out / "ALARM").readline())["records"]) == 1500


def test_a_shard_is_done_only_once_its_alarm_was_delivered(setup, tmp_path):
    """The alarm command fails: the shard's alarm stays queued, and the next run delivers it
    (without verifying the shard again)."""
    model_dir, model, recs = setup
    logs, out, hook = tmp_path / "logs", tmp_path / "out", tmp_path / "hook.log"
    logs.mkdir()
    Batch(fd.tamper(recs[:6], 3, model.cfg.vocab_size)).to_jsonl(logs / "a.jsonl")
    assert cli.main(_argv(logs, out, model_dir, "--alarm-cmd", "exit 3")) == 1
    queued = Watcher(str(logs), str(out), model_dir, settle=0, quiet=True)
    assert not queued.done("a.jsonl") and len(queued.undelivered()) == 1
    assert cli.main(_argv(logs, out, model_dir, "--alarm-cmd", _alarm_cmd(hook))) == 0
    assert hook.exists() and [x.split("\t")[0] for x in open(hook)] == ["a.jsonl"]
    w = Watcher(str(logs), str(out), model_dir, settle=0, quiet=True)
    assert w.done("a.jsonl") and w.undelivered() == []
    assert len(open(out / "state.jsonl").readlines()) == 1  # verified once
    assert len(open(out / "ALARM").readlines()) == 1        # raised once


def _alive(marker: str) -> list[int]:
    pids = []
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and marker in open(f"/proc/{p}/cmdline").read():
                pids.append(int(p))
        except OSError:
            pass
    return pids


def test_a_hanging_alarm_command_times_out_and_blocks_no_other_shard(setup, tmp_path):
    model_dir, model, recs = setup
    logs, out = tmp_path / "logs", tmp_path / "out"
    logs.mkdir()
    for i, name in enumerate(("a.jsonl", "b.jsonl", "c.jsonl")):
        Batch(fd.tamper(recs[5 * i: 5 * i + 5], 5, model.cfg.vocab_size)).to_jsonl(logs / name)
    marker = f"hang-{os.getpid()}-{id(tmp_path)}"
    hang = _py(f"import time; time.sleep(600)  # {marker}")
    t0 = time.monotonic()
    assert cli.main(_argv(logs, out, model_dir, "--alarm-cmd", hang,
                          "--alarm-timeout", "5")) == 1
    took = time.monotonic() - t0
    state = [json.loads(x) for x in open(out / "state.jsonl")]
    assert [e["shard"] for e in state] == ["a.jsonl", "b.jsonl", "c.jsonl"]
    # the three shards were verified while the first command hung (not 5 s apart each)
    assert state[-1]["verified_at"] - state[0]["verified_at"] < 5
    assert took < 5 * 3, took
    assert len(Watcher(str(logs), str(out), model_dir, quiet=True).undelivered()) == 3
    assert _alive(marker) == []  # killed, with the shell that ran it


def test_a_shard_still_being_written_is_not_verified_half_written(setup, tmp_path):
    """--once waits for a shard that a logger is still appending to (it must be unchanged for
    --settle seconds), and never reads a hidden or *.tmp file, which a logger renames when
    done."""
    model_dir, model, recs = setup
    logs, out = tmp_path / "logs", tmp_path / "out"
    logs.mkdir()
    lines = [json.dumps(r.to_dict()) + "\n" for r in recs[:20]]

    def write():
        with open(logs / "a.jsonl", "w") as f:
            for line in lines:  # half a line, a pause, the rest: never complete between writes
                for part in (line[: len(line) // 2], line[len(line) // 2:]):
                    f.write(part)
                    f.flush()
                    time.sleep(0.05)
    t = threading.Thread(target=write)
    t.start()
    Batch(recs[20:30]).to_jsonl(logs / ".b.jsonl")
    Batch(recs[30:40]).to_jsonl(logs / "c.jsonl.tmp")
    try:
        w = Watcher(str(logs), str(out), model_dir, settle=1.0, quiet=True)
        assert w.run(once=True) == 0
    finally:
        t.join()
    assert not (out / "ALARM").exists()
    assert list(w.state) == ["a.jsonl"] and w.state["a.jsonl"]["pass"] == 20
    os.replace(logs / ".b.jsonl", logs / "b.jsonl")          # the logger's rename: complete
    assert Watcher(str(logs), str(out), model_dir, settle=0, quiet=True).run(once=True) == 0
    assert json.load(open(out / "shards" / "b.jsonl" / "report.json"))["counts"]["pass"] == 10


def _same_size_tamper(rec, vocab):
    # another last token with as many digits, so the file keeps its size
    o = list(rec.output)
    o[-1] = next(t for t in range(vocab) if t != o[-1] and len(str(t)) == len(str(o[-1])))
    return dataclasses.replace(rec, output=o)


def test_a_same_size_replacement_with_its_old_mtime_is_verified_again(setup, tmp_path):
    model_dir, model, recs = setup
    logs, out = tmp_path / "logs", tmp_path / "out"
    logs.mkdir()
    shard = logs / "a.jsonl"
    Batch(recs[:5]).to_jsonl(shard)
    os.utime(shard, ns=(10**18, 10**18))
    w = Watcher(str(logs), str(out), model_dir, settle=0, quiet=True)
    assert w.run(once=True) == 0
    st = os.stat(shard)
    copy = logs / ".a.jsonl.new"
    Batch(recs[:4] + [_same_size_tamper(recs[4], model.cfg.vocab_size)]).to_jsonl(copy)
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(copy, shard)
    assert (os.stat(shard).st_size, os.stat(shard).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert w.run(once=True) == 1                              # the running watcher
    alarms = [json.loads(x) for x in open(out / "ALARM")]
    assert [a["message"].split()[-1] for a in alarms] == ["verified", "pass"]
    assert alarms[1]["records"][0]["request_id"] == recs[4].request_id
    os.utime(shard)                                          # touched only: nothing to do
    n = len(open(out / "state.jsonl").readlines())
    assert w.run(once=True) == 0 and len(open(out / "ALARM").readlines()) == 2
    assert len(open(out / "state.jsonl").readlines()) == n + 1  # its new stat, not a verdict
    assert w.state["a.jsonl"]["fail"] == 1
    # a restarted watcher, too, after the same swap back and forth
    Batch(recs[:5]).to_jsonl(copy)
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(copy, shard)
    assert Watcher(str(logs), str(out), model_dir, settle=0, quiet=True).run(once=True) == 1
    assert "changed after it was verified" in open(out / "ALARM").readlines()[-1]


def test_another_seed_key_or_model_verifies_every_shard_again(setup, tmp_path):
    """State is kept per settings fingerprint: a restart with --seed-key or another --model is
    not told 'already verified'; a state line cut off by a crash is skipped."""
    model_dir, model, recs = setup
    logs, out = tmp_path / "logs", tmp_path / "out"
    logs.mkdir()
    Batch(recs[:5]).to_jsonl(logs / "a.jsonl")
    assert cli.main(_argv(logs, out, model_dir)) == 0
    assert cli.main(_argv(logs, out, model_dir, "--seed-key", "logger-key")) == 1
    other = fd.save_hf(str(tmp_path / "other"), seed=5)
    assert cli.main(_argv(logs, out, other)) == 1
    kinds = [json.loads(x)["records"][0]["field"] for x in open(out / "ALARM")]
    assert kinds == ["params.seed", "model"]
    with open(out / "state.jsonl", "a") as f:
        f.write('{"shard": "a.jsonl", "sta')
    assert cli.main(_argv(logs, out, model_dir)) == 0


def test_another_kernel_stack_verifies_every_shard_again(setup, tmp_path):
    """A verdict depends on the stack the verifier runs on (an exact policy fails records from
    another): a restart on another ops backend is not told 'already verified'."""
    from replay import ops

    model_dir, model, recs = setup
    logs, out = tmp_path / "logs", tmp_path / "out"
    logs.mkdir()
    Batch(recs[:3]).to_jsonl(logs / "a.jsonl")
    assert Watcher(str(logs), str(out), model_dir, settle=0, quiet=True).run(once=True) == 0
    with ops.backend("torch"):
        w = Watcher(str(logs), str(out), model_dir, settle=0, quiet=True)
        assert w.run(once=True) == 1
    assert w.state["a.jsonl"]["fail"] == 3
    assert {r["field"] for r in json.loads(open(out / "ALARM").readline())["records"]} == {"stack"}


def test_a_record_parquet_cannot_store_still_alarms(setup, tmp_path):
    """A request_id with a lone surrogate: the shard's tables cannot be written, its alarm is."""
    model_dir, model, recs = setup
    logs, out = tmp_path / "logs", tmp_path / "out"
    logs.mkdir()
    d = dict(recs[0].to_dict(), request_id="x\ud800")
    (logs / "a.jsonl").write_text(json.dumps(d) + "\n")
    assert cli.main(_argv(logs, out, model_dir)) == 1
    rows = json.loads(open(out / "ALARM").readline())["records"]
    assert [r["field"] for r in rows] == ["request_id"]
