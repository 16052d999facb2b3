"""replay.stock's sampler models inside replay's pipeline (CPU, no vLLM needed).

The bit-for-bit comparisons with vLLM's own samplers are in tests/vllm_stage/test_stock_samplers.py
(make test-vllm). Here: the scan that decides near-ties, records of a simulated stock deployment
(replay's Engine with a stock sampler model) scored by score_stock with the matching model (all
tokens predicted, 0 false alarms, an altered token caught) and with a mismatched one (it fails).
"""
import math

import numpy as np
import pytest
import torch

from replay import stock
from replay.adapters import score_stock
from replay.engine import Engine, Request
from replay.policy import Policy
from replay.records import Record, SamplingParams


def test_cpu_vectorised_choice_equals_the_scan():
    g = torch.Generator().manual_seed(0)
    for r in range(30):
        z = torch.randn(997, generator=g) * (0.1 + r)
        if r % 3 == 0:
            z[torch.rand(997, generator=g) < 0.7] = -math.inf
        seed = int(torch.randint(0, 2**31, (1,), generator=g))
        tok, y = stock.cpu_choice(z, seed)
        assert tok == stock._cpu_scan(z.double().numpy(), stock._cpu_bits(seed, 997))
        assert tok == int(np.argmax(y))


def test_cpu_near_ties_go_to_the_scan():
    # equal logits of 1e30: x + g rounds to the same double for every such token, so the first
    # argmax would pick the lowest index; the kernel's scan compares (x - x_b) + g and does not.
    z = torch.full((64,), -math.inf)
    z[::5] = 1e30
    picks = {stock.cpu_choice(z, s)[0] for s in range(40)}
    assert len(picks) > 3 and picks <= set(range(0, 64, 5))


def test_mrv2_noise_paths_are_gumbel():
    g32 = stock.mrv2_noise(123, 7, 200_000)
    g64 = stock.mrv2_noise(123, 7, 200_000, fp64=True)
    assert g32.dtype == np.float32 and g64.dtype == np.float64
    for g in (g32, g64):  # Gumbel(0, 1): mean = Euler's gamma, variance pi^2 / 6
        assert abs(g.mean() - 0.5772) < 0.01 and abs(g.var() - math.pi**2 / 6) < 0.03
    assert not np.array_equal(stock.mrv2_noise(123, 8, 100), stock.mrv2_noise(123, 7, 100))
    assert not np.array_equal(stock.mrv2_noise(124, 7, 100), stock.mrv2_noise(123, 7, 100))


def _requests(n=6, max_tokens=16):
    return [Request(f"q{i}", [(3 * i + 11 * j) % 500 + 1 for j in range(4 + 3 * i)],
                    SamplingParams(temperature=[0.8, 1.0, 0.0, 1.3][i % 4], top_k=[0, 20][i % 2],
                                   top_p=[1.0, 0.9][i % 3 == 1], seed=(1 << 63) + 77 * i),
                    max_tokens=max_tokens) for i in range(n)]


@pytest.mark.parametrize("name", ["vllm-cpu", "vllm-mrv2", "vllm-mrv2-fp64"])
def test_matching_model_predicts_every_token(small_model, name):
    recs = Engine(small_model, max_batch=3, chunk_size=8,
                  sampler=stock.EngineSampler(name)).run(_requests())
    rep = score_stock(recs, small_model, Policy.tolerant(), sampler=name)
    assert rep.ok and all(rep.tokens["exact"]) and rep.n_tokens == sum(len(r.output) for r in recs)
    # the same records under another sampler's model: sampled tokens are not predicted
    other = "vllm-mrv2" if name == "vllm-cpu" else "vllm-cpu"
    wrong = score_stock(recs, small_model, Policy.tolerant(), sampler=other)
    assert sum(wrong.tokens["exact"]) < 0.8 * wrong.n_tokens
    # one altered token is caught at its index
    r = recs[0]
    j = len(r.output) // 2
    bad = Record(r.request_id, r.prompt, r.output[:j] + [(r.output[j] + 1) % 509] +
                 r.output[j + 1:], r.params, r.max_tokens, r.stop_token_ids, r.model,
                 {"sampler": name})
    rep = score_stock([bad], small_model, Policy.exact())
    assert not rep.ok
    assert [i for i, e in enumerate(rep.tokens["exact"]) if not e][0] == j


def test_record_names_its_sampler(small_model):
    recs = Engine(small_model, max_batch=2, sampler=stock.EngineSampler("vllm-cpu")).run(
        _requests(2))
    for r in recs:
        r.meta["sampler"] = "vllm-cpu"
    assert score_stock(recs, small_model, Policy.exact()).ok          # from meta
    recs[1].meta["sampler"] = "mystery"
    with pytest.raises(ValueError, match="meta.sampler"):
        score_stock(recs, small_model, Policy.exact())
    with pytest.raises(ValueError, match="unknown sampler"):
        score_stock(recs, small_model, sampler="mystery")
