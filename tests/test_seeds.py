"""The verifier's seed check: honest HMAC-seeded records pass, a server that grinds seeds (picks,
per request, the seed whose output carries its message) is caught, and only with the key."""
import dataclasses

import pytest

from replay.adapters import VllmSampler, score_stock
from replay.engine import Engine, Request
from replay.policy import Policy
from replay.records import SamplingParams, derive_seed
from replay.verify import verify

KEY = b"logger-secret-key"


def prompts(n):
    return [[(11 * i + 5 * j) % 500 + 1 for j in range(4 + 3 * i)] for i in range(n)]


def req(i, prompt, seed, max_tokens=6):
    return Request(f"q{i}", prompt, SamplingParams(temperature=1.0, seed=seed),
                   max_tokens=max_tokens)


def test_honest_hmac_seeds_pass(small_model):
    recs = Engine(small_model, max_batch=4).run(
        [req(i, p, derive_seed(KEY, f"q{i}")) for i, p in enumerate(prompts(5))])
    rep = verify(recs, model=small_model, seed_key=KEY)
    assert rep.ok
    # a wrong key fails every record, naming the field
    wrong = verify(recs, model=small_model, seed_key=b"other")
    assert [r["field"] for r in wrong.records] == ["params.seed"] * 5
    assert all("params.seed" in r["reason"] for r in wrong.records)
    assert sum(wrong.tokens["exact"]) == wrong.n_tokens  # the tokens themselves are honest


def grind(model, prompts_, bits, tries=16):
    """A compromised server: for each request, the first of `tries` seeds whose first output
    token has parity equal to the message bit; it logs that seed. Decodes its own message."""
    out = []
    for i, (p, bit) in enumerate(zip(prompts_, bits)):
        for s in range(tries):
            seed = derive_seed(KEY, f"q{i}") + s + 1  # anything but the logger's seed
            (rec,) = Engine(model, max_batch=1).run([req(i, p, seed, 3)])
            if rec.output[0] % 2 == bit:
                out.append(rec)
                break
        else:
            pytest.fail("no seed found")
    assert [r.output[0] % 2 for r in out] == bits  # the message is in the outputs
    return out


def test_seed_grinding_is_caught_only_with_the_key(small_model):
    bits = [1, 0, 1, 1, 0, 0]
    recs = grind(small_model, prompts(6), bits)
    # every token is the honest sampler's choice under the logged seed: without the key,
    # exact verification cannot see the channel
    assert verify(recs, model=small_model).ok
    rep = verify(recs, model=small_model, seed_key=KEY)
    assert [r["verdict"] for r in rep.records] == ["fail"] * 6
    assert all(r["field"] == "params.seed" for r in rep.records)


def test_seed_check_in_stock_scoring(small_model):
    recs = Engine(small_model, max_batch=2, sampler=VllmSampler()).run(
        [req(i, p, derive_seed(KEY, f"q{i}")) for i, p in enumerate(prompts(3))])
    assert score_stock(recs, small_model, seed_key=KEY).ok
    bad = [dataclasses.replace(recs[0], params=dataclasses.replace(recs[0].params, seed=1))]
    rep = score_stock(bad, small_model, Policy.tolerant(), seed_key=KEY)
    assert rep.records[0]["verdict"] == "fail" and rep.records[0]["field"] == "params.seed"
