"""The replay contract end to end on CPU: the engine's logits rows equal the verifier's, bitwise,
under any batch composition, chunk size, arrival pattern and KV placement (each run asserts that
it really varied them); and every token of honest traffic verifies exactly. With a batch-variant
linear in place of replay's, rows differ.
"""
import random

import pytest
import torch

from replay import ops
from replay.engine import Engine, Request
from replay.records import SamplingParams
from replay.verify import verify
from helpers import assert_engine_varied, split_k_linear


def workload(V: int, n: int, seed: int, max_tokens: int = 16) -> list[Request]:
    """n requests: mixed prompt lengths, sampling parameters and arrival steps."""
    rng = random.Random(seed)
    reqs = []
    for i in range(n):
        P = rng.choice([1, 2, 5, 17, 40, 97, 131])
        params = SamplingParams(temperature=rng.choice([0.0, 0.5, 1.0, 1.3]),
                                top_k=rng.choice([0, 1, 7, 50]), top_p=rng.choice([1.0, 0.9, 0.5]),
                                seed=rng.getrandbits(64))
        reqs.append(Request(f"r{i}", [rng.randrange(V) for _ in range(P)], params,
                            max_tokens=rng.choice([1, 5, max_tokens]),
                            stop_token_ids=rng.sample(range(V), 4), arrival=rng.randrange(12)))
    return reqs


def generate(model, reqs, **engine_kw):
    engine = Engine(model, keep_logits=True, **engine_kw)
    return engine.run(reqs), engine


def mismatched_rows(model, records, engine_logits) -> int:
    report = verify(records, model=model, keep_logits=True, token_budget=300)
    bad = 0
    for r in records:
        a, b = engine_logits[r.request_id], report.logits[r.request_id]
        assert a.shape == b.shape == (len(r.output), model.cfg.vocab_size)
        bad += sum(not torch.equal(a[j], b[j]) for j in range(len(r.output)))
    return bad, report


# (max_batch, chunk_size, requests): batch sizes 1 to 64, chunks 1, 7 and 97
CONFIGS = [(1, 1, 6), (3, 7, 12), (17, 97, 32), (64, 7, 64), (64, 97, 64)]


@pytest.mark.parametrize("max_batch,chunk,n", CONFIGS)
def test_engine_rows_equal_verifier_rows_bitwise(small_model, max_batch, chunk, n):
    reqs = workload(small_model.cfg.vocab_size, n, seed=max_batch * 1000 + chunk)
    records, engine = generate(small_model, reqs, max_batch=max_batch, chunk_size=chunk,
                               placement_seed=chunk)
    assert sum(len(r.output) for r in records) > 2 * n
    assert_engine_varied(engine, batched=max_batch > 1, chunked=chunk < 131,
                         placed=max_batch > 1)
    bad, report = mismatched_rows(small_model, records, engine.logits)
    assert bad == 0
    assert report.ok, report.summary()
    c = report.counts()
    assert c["exact_tokens"] == c["tokens"] == sum(len(r.output) for r in records)


def test_tokens_do_not_depend_on_batch_composition(small_model):
    reqs = workload(small_model.cfg.vocab_size, 24, seed=5)
    outs = []
    for max_batch, chunk, placement, step_tokens in [(1, 1, None, None), (5, 7, 3, 12),
                                                      (24, 97, 9, None), (24, 3, 1, 17)]:
        records, engine = generate(small_model, [Request(**vars(r)) for r in reqs],
                                   max_batch=max_batch, chunk_size=chunk,
                                   placement_seed=placement, step_tokens=step_tokens)
        assert_engine_varied(engine, batched=max_batch > 1, chunked=chunk < 131,
                             placed=placement is not None, capped=step_tokens is not None)
        outs.append([r.output for r in records])
    assert all(o == outs[0] for o in outs[1:])


def test_a_batch_variant_kernel_breaks_the_contract(small_model, monkeypatch):
    """The same test with a linear whose K order depends on the row count (split-K below 8
    rows, helpers.split_k_linear): rows differ, so the bitwise test above can fail."""
    reqs = workload(small_model.cfg.vocab_size, 32, seed=7)
    monkeypatch.setattr(ops, "linear", split_k_linear)
    records, engine = generate(small_model, reqs, max_batch=17, chunk_size=7)
    bad, _ = mismatched_rows(small_model, records, engine.logits)
    assert bad > 0


def test_greedy_is_argmax_and_sampling_uses_the_seed(small_model):
    V = small_model.cfg.vocab_size
    prompt = list(range(1, 30))
    outs = {}
    for name, p in [("greedy", SamplingParams(0.0)), ("s1", SamplingParams(1.0, seed=1)),
                    ("s2", SamplingParams(1.0, seed=2))]:
        records, engine = generate(small_model, [Request(name, prompt, p, max_tokens=12)])
        outs[name] = records[0].output
        if name == "greedy":
            assert records[0].output == engine.logits[name].argmax(-1).tolist()
    assert outs["s1"] != outs["s2"]
    assert all(0 <= t < V for o in outs.values() for t in o)


@pytest.mark.parametrize("backend", ["replay", "torch"])
def test_unwritten_kv_rows_are_never_read(small_model, backend):
    """The KV buffer is allocated uninitialised; poison it with NaN: tokens and rows unchanged
    (the torch backend too: its padded attention must not multiply garbage by a zero weight)."""
    reqs = workload(small_model.cfg.vocab_size, 6, seed=11)
    with ops.backend(backend):
        clean, clean_engine = generate(small_model, [Request(**vars(r)) for r in reqs],
                                       max_batch=3, chunk_size=5)
        clean_logits = clean_engine.logits
        engine = Engine(small_model, max_batch=3, chunk_size=5, keep_logits=True)
        for t in engine.kv.k + engine.kv.v:
            t.fill_(float("nan"))
        poisoned = engine.run([Request(**vars(r)) for r in reqs])
    assert [r.output for r in poisoned] == [r.output for r in clean]
    assert all(torch.equal(engine.logits[r.request_id], clean_logits[r.request_id])
               for r in clean)
