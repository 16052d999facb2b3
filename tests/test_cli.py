"""The command line as a user runs it: `python -m replay.cli ...` in a subprocess, with its exit
status (0: every record passed; 1: some record failed verification) and what it prints."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def replay_cli(*args, cwd=None, timeout=600, env=None):
    env = {**{k: v for k, v in os.environ.items() if k != "REPLAY_SEED_KEY"},
           "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "replay.cli", *map(str, args)], cwd=cwd or ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    prompts = d / "prompts.txt"
    prompts.write_text("def main(\nimport os\\nimport sys\nclass Point:\n")
    out = d / "records.jsonl"
    r = replay_cli("generate", "--prompts", prompts, "--out", out, "--max-tokens", 12,
                   "--temperature", 0.9, "--seed-key", "k3y", "--id-prefix", "req", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "wrote 3 records" in r.stdout
    return d, out


def test_generate_writes_records_that_verify(generated):
    d, out = generated
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["request_id"] for r in recs] == ["req-1", "req-2", "req-3"]
    assert all(0 < len(r["output"]) <= 12 for r in recs)
    r = replay_cli("verify", out, "--quiet", "--out", d / "report")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 pass, 0 fail, 0 malformed" in r.stdout
    assert (d / "report" / "records.parquet").exists()


def test_verify_exits_1_on_a_forged_token_and_names_it(generated, tmp_path):
    _, out = generated
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    j = len(recs[1]["output"]) // 2
    recs[1]["output"][j] = (recs[1]["output"][j] + 1) % 4096
    forged = tmp_path / "forged.jsonl"
    forged.write_text("".join(json.dumps(r) + "\n" for r in recs))
    r = replay_cli("verify", forged, "--quiet")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "2 pass, 1 fail" in r.stdout
    assert f"FAIL  req-2: token {j} " in r.stdout


def test_verify_seed_key(generated):
    _, out = generated
    assert replay_cli("verify", out, "--quiet", "--seed-key", "k3y").returncode == 0
    r = replay_cli("verify", out, "--quiet", "--seed-key", "another key")
    assert r.returncode == 1 and "params.seed" in r.stdout, r.stdout + r.stderr


def test_demo_runs_and_catches_its_forged_token(tmp_path):
    r = replay_cli("demo", "--requests", 6, "--max-tokens", 10, "--out", tmp_path / "demo")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "same tokens under all 3 batch compositions: True" in r.stdout
    assert "demo OK" in r.stdout
    assert (tmp_path / "demo" / "records.jsonl").exists()
