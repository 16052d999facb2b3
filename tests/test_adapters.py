"""Stock-engine adapters: the vLLM-style sampler inside replay's Engine, tolerant scoring of its
records with replay's model, and importers from vLLM / SGLang JSON."""
import json
import math

import pytest
import torch

from replay import ops
from replay.adapters import (VllmSampler, from_sglang, from_vllm, noise, score_stock,
                             stock_scores, vllm_kept)
from replay.engine import Engine, Request
from replay.policy import Policy
from replay.records import SamplingParams
from replay.verify import verify


def requests(n=6, max_tokens=20):
    return [Request(f"s{i}", [(5 * i + 7 * j) % 500 + 1 for j in range(3 + 5 * i)],
                    SamplingParams(temperature=[0.8, 1.0, 1.3][i % 3], top_k=[0, 50][i % 2],
                                   top_p=[1.0, 0.9][i % 3 == 1], seed=9000 + i),
                    max_tokens=max_tokens) for i in range(n)]


@pytest.fixture(scope="module")
def stock(small_model):
    return Engine(small_model, max_batch=3, chunk_size=8, sampler=VllmSampler()).run(requests())


def test_stock_records_are_safe_under_tolerant_and_not_exact_under_replay(stock, small_model):
    rep = score_stock(stock, small_model, Policy.tolerant(-5.0))
    assert rep.ok and rep.n_tokens == sum(len(r.output) for r in stock)
    # the same logits and the same noise: every token is the race's choice, margin 0
    assert all(rep.tokens["exact"]) and set(rep.tokens["margin"]) == {0.0}
    assert rep.tokens["gls"][0] == pytest.approx(math.log(0.5))
    exact = verify(stock, model=small_model)
    assert not exact.ok
    share = sum(exact.tokens["exact"]) / exact.n_tokens
    assert share < 0.9  # a different noise stream: most sampled tokens differ


def test_stock_generation_on_non_invariant_kernels_stays_safe(small_model):
    # generation with plain torch ops (not batch invariant), verification with replay's kernels
    with ops.backend("torch"):
        recs = Engine(small_model, max_batch=4, chunk_size=5, sampler=VllmSampler()).run(
            requests(4, 16))
    rep = score_stock(recs, small_model, Policy.tolerant(-5.0, sigma=0.01))
    assert rep.ok
    assert max(rep.tokens["margin"]) < 1e-3


def test_tampered_stock_token_is_flagged(stock, small_model):
    r = stock[1]
    bad = type(r)(**{**r.__dict__, "output": list(r.output)})
    bad.output[5] = (r.output[5] + 251) % small_model.cfg.vocab_size  # an unlikely token
    rep = score_stock([bad], small_model, Policy.tolerant())
    assert not rep.ok and rep.records[0]["first_failure"] == 5
    assert rep.tokens["verdict"][5] in ("suspicious", "dangerous")


def test_vllm_kept_by_hand():
    z = torch.tensor([[3.0, 2.0, 1.0, 0.0], [1.0, 1.0, 0.0, -1.0]])
    assert vllm_kept(z, [2, 1], [1.0, 1.0]).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0]]
    lp = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    # from the least likely up, drop while the cumulative mass stays <= 1 - top_p
    assert vllm_kept(lp, [0], [0.7]).tolist() == [[1, 1, 0, 0]]     # 0.05, 0.20 <= 0.3
    assert vllm_kept(lp, [0], [0.9]).tolist() == [[1, 1, 1, 0]]     # 0.05 <= 0.1
    assert vllm_kept(lp, [0], [0.01]).tolist() == [[1, 0, 0, 0]]    # the top one always kept
    assert vllm_kept(lp, [3], [0.9]).tolist() == [[1, 1, 1, 0]]


def test_exponential_race_samples_the_distribution():
    # argmax(p / q), q ~ Exp(1), picks token i with probability p_i
    p = torch.tensor([0.4, 0.3, 0.2, 0.1])
    q = noise(123, 20000, 4)
    counts = torch.bincount((p / q).argmax(1), minlength=4).double()
    se = torch.sqrt(20000 * p * (1 - p))
    assert ((counts - 20000 * p).abs() < 4 * se).all()


def test_greedy_and_filtered_margins():
    l = torch.tensor([[2.0, 1.0, 0.5, -1.0]] * 3)
    ps = [SamplingParams(0.0, seed=1), SamplingParams(1.0, top_k=2, seed=1),
          SamplingParams(1.0, seed=1)]
    q = torch.ones(3, 4)
    sc = stock_scores(l, ps, [1, 3, 0], q)
    assert sc["margin"][0] == 1.0 and sc["exact"].tolist() == [False, False, True]
    assert sc["margin"][1] == math.inf and sc["margin"][2] == 0.0
    assert sc["rank"].tolist() == [1, 3, 0] and sc["kept"].tolist() == [1, 2, 4]


VLLM_OFFLINE = [
    {"request_id": "0", "prompt_token_ids": [1, 15043, 29892],
     "outputs": [{"index": 0, "token_ids": [306, 626, 2], "finish_reason": "stop"}],
     "sampling_params": {"n": 1, "temperature": 0.7, "top_p": 0.95, "top_k": -1, "min_p": 0.0,
                         "seed": 42, "max_tokens": 64, "stop_token_ids": [],
                         "presence_penalty": 0.0, "frequency_penalty": 0.0,
                         "repetition_penalty": 1.0, "ignore_eos": False}},
    {"request_id": "1", "prompt_token_ids": [1, 3750],
     "outputs": [{"index": 0, "token_ids": [29871, 13, 13, 450], "finish_reason": "length"}],
     "sampling_params": {"temperature": 1.0, "top_k": 40, "seed": 7, "max_tokens": 4,
                         "repetition_penalty": 1.1}},
    {"request_id": "2", "prompt_token_ids": [1, 3750],
     "outputs": [{"index": 0, "token_ids": [29871], "finish_reason": "length"}],
     "sampling_params": {"temperature": 1.0, "max_tokens": 1}},
]

VLLM_SERVER = {
    "request": {"model": "tiny", "prompt": [1, 910, 338], "max_tokens": 3, "temperature": 0.8,
                "seed": 2**63 + 5, "stop_token_ids": [13], "return_token_ids": True},
    "response": {"id": "cmpl-8f3a", "object": "text_completion", "model": "tiny",
                 "choices": [{"index": 0, "text": " a test", "token_ids": [263, 1243, 1243],
                              "finish_reason": "length", "prompt_token_ids": [1, 910, 338]}],
                 "usage": {"prompt_tokens": 3, "completion_tokens": 3}},
}

SGLANG = [
    {"request": {"rid": "sg-1", "input_ids": [1, 22172, 3186],
                 "sampling_params": {"temperature": 0.6, "top_p": 0.9, "top_k": -1,
                                     "max_new_tokens": 8, "sampling_seed": 1234,
                                     "stop_token_ids": [2]}},
     "response": {"text": "Hi", "output_ids": [6324, 29991, 2],
                  "meta_info": {"id": "sg-1", "prompt_tokens": 3, "completion_tokens": 3,
                                "finish_reason": {"type": "stop", "matched": 2}}}},
    {"input_ids": [1, 5], "sampling_params": {"temperature": 0.0, "max_new_tokens": 2,
                                               "seed": 3, "ignore_eos": True},
     "output_ids": [7, 7], "meta_info": {"id": "sg-2",
                                         "finish_reason": {"type": "length", "length": 2}}},
]


def test_from_vllm_offline(tmp_path):
    path = tmp_path / "vllm.json"
    path.write_text(json.dumps(VLLM_OFFLINE))
    b = from_vllm(path, model="tiny@sha256:x", eos_token_id=2)
    assert [r.request_id for r in b.records] == ["0"]
    r = b.records[0]
    assert r.prompt == [1, 15043, 29892] and r.output == [306, 626, 2]
    assert r.params == SamplingParams(0.7, 0, 0.95, 42) and r.max_tokens == 64
    assert r.stop_token_ids == [2] and r.termination() == "stop"
    assert r.meta["sampler"] == "vllm-v1-cuda"
    assert [(e.record, e.field) for e in b.errors] == [("1", "params.repetition_penalty"),
                                                      ("2", "params.seed")]


def test_from_vllm_server_pair_jsonl(tmp_path):
    path = tmp_path / "server.jsonl"
    path.write_text(json.dumps(VLLM_SERVER) + "\n")
    b = from_vllm(path, model="tiny@sha256:x", eos_token_id=2)
    assert not b.errors
    r = b.records[0]
    assert r.request_id == "cmpl-8f3a" and r.prompt == [1, 910, 338]
    assert r.output == [263, 1243, 1243] and r.params.seed == 2**63 + 5
    assert r.stop_token_ids == [13, 2] and r.termination() == "length"
    text = dict(VLLM_SERVER, request=dict(VLLM_SERVER["request"], prompt="hello"))
    text["response"] = dict(text["response"], choices=[
        {k: v for k, v in text["response"]["choices"][0].items() if k != "prompt_token_ids"}])
    e = from_vllm(text, model="m").errors
    assert [x.field for x in e] == ["prompt"]


def test_the_logged_request_is_the_clients_half_only():
    """A pair's request half is the logger's copy (Record.request): a prompt the server echoes
    differently fails on `prompt`; an entry the engine wrote whole (offline) has no copy; a client
    that set no max_tokens leaves the output no length to stop at but its stop tokens or the
    context (not the length it happened to have)."""
    from replay.verify import claim_failures

    r = from_vllm(VLLM_SERVER, model="m", eos_token_id=2).records[0]
    assert r.request is not None and r.request.prompt == [1, 910, 338]
    assert not claim_failures([r], None)
    echo = dict(VLLM_SERVER["response"], choices=[
        dict(VLLM_SERVER["response"]["choices"][0], prompt_token_ids=[9, 9, 9, 9])])
    r = from_vllm(dict(VLLM_SERVER, response=echo), model="m", eos_token_id=2).records[0]
    assert r.prompt == [9, 9, 9, 9] and r.request.prompt == [1, 910, 338]
    assert [f for f, _ in claim_failures([r], None)[r.request_id]] == ["prompt"]
    assert all(r.request is None for r in from_vllm(VLLM_OFFLINE, model="m").records)
    unbounded = dict(VLLM_SERVER, request=dict(VLLM_SERVER["request"], max_tokens=None))
    r = from_vllm(unbounded, model="m", eos_token_id=2).records[0]
    assert r.request.max_tokens == r.max_tokens > 2**62 and r.termination().startswith("bad")


def test_from_sglang():
    b = from_sglang(SGLANG, model="tiny@sha256:x", eos_token_id=2)
    assert not b.errors
    a, g = b.records
    assert a.request_id == "sg-1" and a.params == SamplingParams(0.6, 0, 0.9, 1234)
    assert a.output == [6324, 29991, 2] and a.termination() == "stop"
    assert g.request_id == "sg-2" and g.stop_token_ids == [] and g.termination() == "length"
    bad = from_sglang({**SGLANG[1], "sampling_params": {"temperature": 1.0, "seed": 1,
                                                         "frequency_penalty": 0.5}}, model="m")
    assert [e.field for e in bad.errors] == ["params.frequency_penalty"]


def test_imported_records_score(small_model):
    """Importer -> score_stock end to end: a vLLM log of a run of the vLLM-style engine."""
    recs = Engine(small_model, max_batch=2, sampler=VllmSampler()).run(requests(2, 6))
    log = [{"request_id": r.request_id, "prompt_token_ids": r.prompt,
            "outputs": [{"token_ids": r.output, "finish_reason": "length"}],
            "sampling_params": {"temperature": r.params.temperature, "top_k": r.params.top_k or -1,
                                "top_p": r.params.top_p, "seed": r.params.seed,
                                "max_tokens": r.max_tokens}} for r in recs]
    b = from_vllm(log, model=small_model.identity)
    assert not b.errors and score_stock(b, small_model).ok


def test_vllm_log_read_line_by_line(tmp_path):
    """A log read like Batch.read: a bad line, an aborted response and an unseeded one each cost
    only themselves (one named error), whatever the file's suffix; a .json array is one log."""
    lines = [json.dumps(VLLM_OFFLINE[0]), "{not json", json.dumps(
        {**VLLM_OFFLINE[0], "request_id": "ab", "outputs": [
            {"token_ids": [306], "finish_reason": "abort"}]}), json.dumps(VLLM_OFFLINE[2])]
    for name in ("vllm.jsonl", "vllm.json", "vllm.log"):
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        b = from_vllm(tmp_path / name, model="m", eos_token_id=2)
        assert [r.request_id for r in b.records] == ["0"], name
        assert [(e.record, e.field) for e in b.errors] == [
            (f"{tmp_path / name}:2", None), ("ab", "finish_reason"), ("2", "params.seed")]
    e = from_vllm(tmp_path / "missing.jsonl", model="m").errors
    assert len(e) == 1 and "cannot read" in e[0].message


def test_importers_take_the_model_and_its_eos_ids(small_model):
    """With the Model itself, no identity string is needed and an honest output that ended on
    any of the model's EOS ids terminates by 'stop' (vLLM stops there by itself)."""
    small_model.eos_token_ids = [5, 2]
    try:
        b = from_vllm(VLLM_OFFLINE[0], model=small_model)
        r = b.records[0]
        assert r.model == small_model.identity and r.stop_token_ids == [5, 2]
        assert r.termination() == "stop"
        g = from_sglang(SGLANG[1], model=small_model).records[0]  # ignore_eos: no stop ids
        assert g.stop_token_ids == [] and g.termination() == "length"
    finally:
        small_model.eos_token_ids = []
