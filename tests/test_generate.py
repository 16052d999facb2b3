"""replay generate and the CLI's habits, as a user runs them: stop tokens from the model's config,
request ids that do not collide across runs, only files verify reads, a missing tokenizer named,
--version, defaults in --help, --json on stdout."""
import json
import os
import shutil

import pytest

import replay
from test_cli import replay_cli


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    p = d / "prompts.txt"
    p.write_text("def main(\nimport os\n")
    return d, p


def _records(path):
    return [json.loads(line) for line in open(path)]


def test_stops_on_the_models_eos_ids_from_generation_config(prompts, tmp_path):
    d, p = prompts
    first = tmp_path / "greedy.jsonl"
    r = replay_cli("generate", "--prompts", p, "--out", first, "--temperature", 0,
                   "--max-tokens", 12, "--quiet")
    assert r.returncode == 0, r.stderr
    out = _records(first)[0]["output"]
    eos = out[4]  # a token the greedy output reaches: make it the model's EOS in a copy
    model = tmp_path / "tiny"
    shutil.copytree(replay.TINY_MODEL, model)
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, 0]}))
    stopped = tmp_path / "stopped.jsonl"
    r = replay_cli("generate", "--prompts", p, "--out", stopped, "--temperature", 0,
                   "--max-tokens", 12, "--model", model, "--quiet")
    assert r.returncode == 0, r.stderr
    rec = _records(stopped)[0]
    assert rec["stop_token_ids"] == [eos, 0]
    assert rec["output"] == out[: out.index(eos) + 1] and rec["meta"]["finish_reason"] == "stop"
    v = replay_cli("verify", stopped, "--model", model, "--quiet")
    assert v.returncode == 0, v.stdout + v.stderr


def test_two_runs_into_one_folder_do_not_share_request_ids(prompts, tmp_path):
    d, p = prompts
    for name in ("a.jsonl", "b.jsonl"):
        r = replay_cli("generate", "--prompts", p, "--out", tmp_path / name, "--max-tokens", 4,
                       "--quiet")
        assert r.returncode == 0, r.stderr
    a, b = ({r["request_id"] for r in _records(tmp_path / n)} for n in ("a.jsonl", "b.jsonl"))
    assert len(a) == len(b) == 2 and not a & b
    v = replay_cli("verify", tmp_path, "--quiet")  # the folder: both runs, no duplicate ids
    assert v.returncode == 0 and "4 pass" in v.stdout, v.stdout + v.stderr


def test_writes_only_what_verify_reads_and_says_so_before_any_work(prompts, tmp_path):
    d, p = prompts
    r = replay_cli("generate", "--prompts", p, "--out", tmp_path / "records.json")
    assert r.returncode != 0 and ".jsonl" in r.stderr and "replay verify" in r.stderr
    assert not (tmp_path / "records.json").exists()
    r = replay_cli("generate", "--prompts", p, "--out", tmp_path / "r.parquet", "--max-tokens", 3,
                   "--quiet", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["records"] == 2 and info["out"].endswith("r.parquet")
    assert replay_cli("verify", tmp_path / "r.parquet", "--quiet").returncode == 0


def test_a_missing_tokenizer_is_named(prompts, tmp_path):
    d, p = prompts
    model = tmp_path / "m"
    shutil.copytree(replay.TINY_MODEL, model)
    os.remove(model / "tokenizer.json")
    r = replay_cli("generate", "--prompts", p, "--out", tmp_path / "x.jsonl", "--model", model)
    assert r.returncode != 0
    assert str(model / "tokenizer.json") in r.stderr and "Traceback" not in r.stderr
    ids = tmp_path / "ids.jsonl"  # prompts given as ids need no tokenizer
    ids.write_text('{"prompt_ids": [5, 6, 7]}\n')
    r = replay_cli("generate", "--prompts", ids, "--out", tmp_path / "y.jsonl", "--model", model,
                   "--max-tokens", 3, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "output_text" not in _records(tmp_path / "y.jsonl")[0]["meta"]


def test_version_help_defaults_and_json(prompts, tmp_path):
    r = replay_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"replay {replay.__version__} (replay-verify)"
    h = replay_cli("generate", "--help").stdout.split("options:")[1]
    for flag, default in [("--temperature", "0.8"), ("--max-tokens", "64"), ("--top-p", "1.0"),
                          ("--chunk-size", "256")]:
        block = h[h.index(flag):][:300]
        assert f"(default: {default})" in " ".join(block.split()), flag
    h = " ".join(replay_cli("verify", "--help").stdout.split())
    assert "(default: exact; with --engine: tolerant)" in h and "(default: -5.0)" in h
    d, p = prompts
    out = tmp_path / "r.jsonl"
    replay_cli("generate", "--prompts", p, "--out", out, "--max-tokens", 3, "--quiet")
    r = replay_cli("verify", out, "--quiet", "--json")
    assert r.returncode == 0
    data = json.loads(r.stdout)  # stdout is the JSON object alone; the summary is on stderr
    assert data["counts"]["pass"] == 2 and len(data["records"]) == 2
    assert "replay verify: 2 records" in r.stderr
