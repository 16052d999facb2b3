"""The command line's contract with scripts and terminals (issue 8 s.2 and s.4): exit status 0 /
1 / 2, one escaped line instead of a traceback, and the logger key from a file or the
environment, never silently off."""
import json
import os

import pytest

from test_cli import replay_cli

import replay
from replay.cli import main
from replay.engine import Engine, Request
from replay.model import Model
from replay.records import Batch, SamplingParams, derive_seed

KEY = b"cli-key"


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    d = tmp_path_factory.mktemp("exit")
    model = Model.from_pretrained(replay.TINY_MODEL)
    reqs = [Request(f"c{i}", [17 + i, 250, 31], SamplingParams(0.9, 0, 1.0, derive_seed(KEY, f"c{i}")),
                    max_tokens=6) for i in range(3)]
    recs = Engine(model, max_batch=3).run(reqs)
    Batch(recs).to_jsonl(d / "good.jsonl")
    forged = [r.to_dict() for r in recs]
    forged[1]["output"][2] = (forged[1]["output"][2] + 1) % 4096
    forged[2]["request_id"] = "\x1b[2K\rOK c2 passes"  # would erase its own FAIL line
    forged[2]["request"] = None
    (d / "forged.jsonl").write_text("".join(json.dumps(x) + "\n" for x in forged))
    (d / "key").write_bytes(KEY + b"\n")
    return d


def test_help_documents_the_exit_status():
    for args in (["--help"], ["verify", "--help"]):
        r = replay_cli(*args)
        assert r.returncode == 0 and "exit status:" in r.stdout
        assert "1  some record failed verification" in r.stdout


def test_exit_0_1_and_escaped_ids(logs):
    r = replay_cli("verify", logs / "good.jsonl", "--quiet", "--seed-key-file", logs / "key")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARNING" not in r.stderr
    r = replay_cli("verify", logs / "forged.jsonl", "--quiet", "--seed-key-file", logs / "key")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "\x1b" not in r.stdout and "\r" not in r.stdout
    assert "FAIL  c1: token 2" in r.stdout
    assert "\\x1b[2K\\rOK c2 passes" in r.stdout  # shown, escaped, as what it is


def test_no_key_warns_and_an_empty_key_is_an_error(logs, tmp_path):
    r = replay_cli("verify", logs / "good.jsonl", "--quiet")
    assert r.returncode == 0 and "WARNING: no seed key" in r.stderr
    (tmp_path / "empty").write_bytes(b"\n")
    for args, env in ((["--seed-key-file", tmp_path / "empty"], {}), (["--seed-key", ""], {}),
                      ([], {"REPLAY_SEED_KEY": ""})):
        r = replay_cli("verify", logs / "good.jsonl", "--quiet", *args, env=env)
        assert r.returncode == 2 and "empty" in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_key_from_the_environment_and_the_deprecated_argument(logs):
    r = replay_cli("verify", logs / "good.jsonl", "--quiet", env={"REPLAY_SEED_KEY": "other"})
    assert r.returncode == 1 and "params.seed: not the logger's seed" in r.stdout
    assert str(derive_seed(b"other", "c0")) not in r.stdout + r.stderr
    assert str(derive_seed(KEY, "c0")) not in r.stdout + r.stderr
    r = replay_cli("verify", logs / "good.jsonl", "--quiet", "--seed-key", KEY.decode())
    assert r.returncode == 0 and "process list" in r.stderr


@pytest.mark.parametrize("kind", ["missing", "empty-folder", "gz", "no-suffix", "zero-parquet",
                                  "jsonl-as-parquet", "empty-jsonl", "only-bad-lines"])
def test_input_faults_exit_2_with_one_line(logs, tmp_path, kind, capsys):
    p = tmp_path / {"missing": "nope.jsonl", "empty-folder": "d", "gz": "r.jsonl.gz",
                    "no-suffix": "records", "zero-parquet": "z.parquet",
                    "jsonl-as-parquet": "j.parquet", "empty-jsonl": "e.jsonl",
                    "only-bad-lines": "b.jsonl"}[kind]
    if kind == "empty-folder":
        p.mkdir()
    elif kind == "zero-parquet" or kind == "empty-jsonl":
        p.write_bytes(b"")
    elif kind == "only-bad-lines":
        p.write_text("{not json\n[1]\n")
    elif kind != "missing":
        p.write_bytes((logs / "good.jsonl").read_bytes())
    # in-process (the subprocess tests above show main's status is the process's)
    status = main(["verify", str(p), "--quiet", "--seed-key-file", str(logs / "key")])
    out, err = capsys.readouterr()
    assert status == 2, (kind, out, err)
    assert "Traceback" not in err + out
    if kind != "only-bad-lines":  # that one verifies: two malformed rows in the summary
        assert len(err.strip().splitlines()) == 1 and str(p) in err, err
