"""The channels that records themselves open (issue 8 s.4): the output's length and the seed.

A server that may write a record's stop_token_ids or max_tokens can end any output where it likes
(a truncation is a choice among ~max_tokens lengths: bits), and one that reports its own seed can
grind it. The verifier judges termination by the trusted logger's copy of the request
(Record.request), and with the logger key it checks every seed and refuses records without the
logger's copy.

Figures (records tried, caught; with and without the logger's request and key):
`pytest -s tests/test_length_channel.py` prints them; REPLAY_ATTACK_RECORDS sets how many honest
records the forgeries are cut from (default 12, three cuts each)."""
import collections
import dataclasses
import os

import pytest

from replay.engine import Engine, Request
from replay.policy import Policy
from replay.records import LoggedRequest, SamplingParams, derive_seed
from replay.verify import Options, verify

KEY = b"logger-key"
STOP = 3
N = int(os.environ.get("REPLAY_ATTACK_RECORDS", "12"))
POLICIES = {"exact": Policy.exact(), "tolerant": Policy.tolerant(-5.0),
            "prob": Policy.prob_threshold(0.01), "top-k": Policy.top_k(8)}
FIGURES = collections.defaultdict(lambda: [0, 0])  # attack, setting -> [tried, caught]


def tally(attack, setting, report):
    f = FIGURES[attack, setting]
    f[0] += len(report.records)
    f[1] += sum(x.verdict != "pass" for x in report.records)
    return report


@pytest.fixture(scope="module", autouse=True)
def figures():
    yield
    for (attack, setting), (tried, caught) in sorted(FIGURES.items()):
        print(f"\n{attack}, {setting}: {caught}/{tried} caught")


def honest(model, n=12, max_tokens=10, key=KEY):
    reqs = [Request(f"len-{i}", [(7 * i + 3 * j) % 400 + 5 for j in range(3 + i % 5)],
                    SamplingParams(1.0, 0, 1.0, derive_seed(key, f"len-{i}")),
                    max_tokens=max_tokens, stop_token_ids=[STOP]) for i in range(n)]
    return Engine(model, max_batch=4).run(reqs)


def truncate(r, j, how):
    """The server's forgery: cut the output after index j and claim a limit that explains it."""
    out = r.output[: j + 1]
    if how == "stop":      # declare the last kept token a stop token
        return dataclasses.replace(r, output=out, stop_token_ids=[out[-1]] + r.stop_token_ids)
    return dataclasses.replace(r, output=out, max_tokens=len(out))     # "max_tokens"


@pytest.fixture(scope="module")
def records(small_model):
    recs = honest(small_model, n=N)
    assert all(r.request is not None for r in recs)
    assert [r.termination() for r in recs].count("length") >= N // 2  # most run to max_tokens
    return recs


def test_honest_records_pass_with_the_key(small_model, records):
    rep = verify(records, small_model, seed_key=KEY)
    assert rep.ok, rep.summary()


@pytest.mark.parametrize("how", ["stop", "max_tokens"])
def test_truncation_caught_when_the_logged_request_is_in_the_record(small_model, records, how):
    # one batch per cut (request ids are unique within a batch)
    cuts = [[truncate(r, j, how) for r in records if j < len(r.output) - 1] for j in (0, 3, 6)]
    forged = [r for batch in cuts for r in batch]
    assert len(forged) >= 2.5 * N
    attack = f"truncation + declared {how}"
    field = "stop_token_ids" if how == "stop" else "max_tokens"
    for key in (KEY, None):
        setting = f"logger's request, {'key' if key else 'no key'}"
        rows = [x for batch in cuts
                for x in tally(attack, setting, verify(batch, small_model, seed_key=key)).records]
        assert [x.verdict for x in rows] == ["fail"] * len(forged)
        assert all(x.termination == "bad:neither_stop_nor_max_tokens" for x in rows)
        assert all(x.field == field for x in rows)  # the claim that differs from the log is named
        # every token is still the sampler's honest choice: only the length carries the bits
        assert all(x.n_exact == x.n_tokens for x in rows)
    # termination does not depend on the policy (400/400 passed under every policy before)
    for name, pol in POLICIES.items():
        rep = tally(attack, f"logger's request, no key, policy {name}",
                    verify(cuts[0], small_model, pol))
        assert [x.verdict for x in rep.records] == ["fail"] * len(cuts[0]), name
    # Without the logger's copy the record has only the server's word for its limits: that is
    # the channel; with the key such a record is refused by name, never verified.
    for batch in cuts:
        b = [dataclasses.replace(r, request=None) for r in batch]
        assert tally(attack, "no request, no key (the channel)", verify(b, small_model)).ok
        refused = tally(attack, "no request, key", verify(b, small_model, seed_key=KEY))
        assert {(x.verdict, x.field) for x in refused.records} == {("error", "request")}


def test_context_limit_is_its_own_outcome(small_model):
    C = small_model.cfg.max_context
    (r,) = Engine(small_model, max_batch=1).run(
        [Request("ctx", list(range(5, C - 2)), SamplingParams(0.0), max_tokens=50,
                 stop_token_ids=[STOP])])
    if r.termination() == "stop":
        pytest.skip("the greedy output hit the stop token")  # not with this model and prompt
    assert len(r.prompt) + len(r.output) == C and r.max_tokens == 50     # not rewritten
    assert r.meta["finish_reason"] == "context"
    rep = verify([r], small_model)
    assert rep.ok and rep.records[0].termination == "context"
    short = dataclasses.replace(r, output=r.output[:-1], request=r.request)
    assert verify([short], small_model).records[0].termination.startswith("bad:")


def test_server_chosen_seed_caught_whenever_a_key_is_configured(small_model):
    # The server ran with seeds of its own and reported them (in the record and, where it could
    # reach it, in the logged copy too): exact verification alone cannot see it.
    recs = honest(small_model, n=N, key=b"the server's own key")
    both = [dataclasses.replace(r, request=LoggedRequest(r.prompt, r.params, r.max_tokens,
                                                         r.stop_token_ids)) for r in recs]
    bare = [dataclasses.replace(r, request=None) for r in recs]
    # the logged seed is the logger's, the record's is the server's
    logged = [dataclasses.replace(r, request=dataclasses.replace(
        r.request, params=dataclasses.replace(r.params, seed=derive_seed(KEY, r.request_id))))
        for r in both]
    attack = "server-chosen seed"
    assert tally(attack, "seed in record and request, no key (the channel)",
                 verify(both, small_model)).ok
    assert tally(attack, "no request, no key (the channel)", verify(bare, small_model)).ok
    reps = {setting: tally(attack, setting, verify(batch, small_model, seed_key=KEY))
            for setting, batch in (("seed in record and request, key", both),
                                   ("logged seed the logger's, record's the server's, key", logged),
                                   ("no request, key", bare))}
    for rep in reps.values():
        assert not any(x.verdict == "pass" for x in rep.records)
    rep = reps["seed in record and request, key"]
    assert {x.field for x in rep.records} == {"params.seed"}
    for r, x in zip(both, rep.records):  # the expected seed is never printed
        assert str(derive_seed(KEY, r.request_id)) not in x.reason
    assert all("differs from the logger's request" in x.reason
               for x in reps["logged seed the logger's, record's the server's, key"].records)
    assert {(x.verdict, x.field) for x in reps["no request, key"].records} == {("error",
                                                                               "request")}


def test_an_empty_key_is_an_error_not_no_check():
    with pytest.raises(ValueError, match="empty"):
        Options(seed_key=b"")
    with pytest.raises(ValueError, match="empty"):
        Options(seed_key="")
    assert Options(seed_key="k").seed_key == b"k"
