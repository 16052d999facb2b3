"""Scores and policies against hand-computed values: gls, the IPT score, the verdicts of each
policy, and the verifier computing the whole-row columns that prob_threshold and ipt need."""
import math

import pytest
import torch

from replay import sampling
from replay import scores as S
from replay.engine import Engine, Request
from replay.policy import Policy, gls
from replay.records import SamplingParams
from replay.verify import verify


def test_gls_hand_values():
    m = torch.tensor([0.0, math.sqrt(2.0), 2 * math.sqrt(2.0), 1e4], dtype=torch.float64)
    g = gls(m, 1.0)
    assert g[0] == pytest.approx(math.log(0.5), abs=1e-15)          # an exact match
    assert g[1] == pytest.approx(math.log(0.15865525393145707))      # log Phi(-1)
    assert g[2] == pytest.approx(math.log(0.022750131948179195))     # log Phi(-2)
    assert g[3] < -1e7                                                # far off: very negative
    assert gls(torch.tensor([math.inf]), 1.0)[0] == -math.inf        # filtered out
    # sigma scales Delta: gls(Delta, s) = gls(Delta / s, 1)
    assert gls(torch.tensor([0.3]), 0.1)[0] == pytest.approx(float(gls(torch.tensor([3.0]), 1)[0]),
                                                            rel=1e-6)
    assert S.delta_star(math.log(0.15865525393145707), 1.0) == pytest.approx(math.sqrt(2.0))
    assert S.delta_star(math.log(0.5), 1.0) == 0.0


def test_ipt_hand_values():
    probs = torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)
    u = torch.tensor([0.6], dtype=torch.float64)     # inside token 1's interval [0.5, 0.75)
    s = 0.05
    Phi = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    want = [math.log(Phi((0.5 - 0.6) / s) - Phi((0.0 - 0.6) / s) + S.IPT_EPS),
            math.log(Phi((0.75 - 0.6) / s) - Phi((0.5 - 0.6) / s) + S.IPT_EPS),
            math.log(Phi((1.0 - 0.6) / s) - Phi((0.75 - 0.6) / s) + S.IPT_EPS)]
    got = S.ipt_all(probs, u, s)[0].tolist()
    assert got == pytest.approx(want, rel=1e-9)
    assert S.ipt_sample(probs, u).tolist() == [1] and got.index(max(got)) == 1
    assert S.ipt(probs, [1], u, 1e-6)[0] == pytest.approx(0.0, abs=1e-9)
    assert S.ipt(probs, [0], u, 1e-6)[0] == pytest.approx(math.log(S.IPT_EPS), rel=1e-6)


def test_ipt_uniform_is_philox_at_the_reserved_counter():
    seed, t = 2**40 + 17, 33
    x = int(sampling.philox4x32_10([[0, t, 1, 0]], [[seed & 0xFFFFFFFF, seed >> 32]])[0, 0])
    assert float(S.ipt_uniform([seed], [t])[0]) == (2 * (x >> 9) + 1) * 2.0 ** -24
    # a different word from the token noise of token 0 at the same position
    x0 = int(sampling.philox4x32_10([[0, t, 0, 0]], [[seed & 0xFFFFFFFF, seed >> 32]])[0, 0])
    assert x0 != x


def sc(**kw):
    return {k: torch.tensor(v) for k, v in kw.items()}


def test_verdicts_of_each_policy():
    s = sc(exact=[True, False, False, False], margin=[0.0, 0.5, 8.0, 8.0],
           rank=[0, 1, 3, 40], sample_prob=[0.6, 0.2, 0.01, 0.0])
    assert Policy.exact().verdicts(s) == ["safe", "dangerous", "dangerous", "dangerous"]
    assert Policy.tolerant(-5.0, 32).verdicts(s) == ["safe", "safe", "suspicious", "dangerous"]
    assert Policy.tolerant(-5.0, 2).verdicts(s) == ["safe", "safe", "dangerous", "dangerous"]
    assert Policy.prob_threshold(0.1).verdicts(s) == ["safe", "safe", "dangerous", "dangerous"]
    assert Policy.top_k(4).verdicts(s) == ["safe", "safe", "safe", "dangerous"]
    ipt = Policy.tolerant(-3.0, 32, sigma=0.01, score="ipt")
    s["ipt"] = torch.tensor([-0.1, -2.0, -27.0, -27.0], dtype=torch.float64)
    assert ipt.verdicts(s) == ["safe", "safe", "suspicious", "dangerous"]
    with pytest.raises(ValueError, match="sample_prob"):
        Policy.prob_threshold(0.1).verdicts(sc(rank=[0]))


def test_rank_threshold_is_inclusive():
    """A failing token of rank exactly rank_threshold is suspicious; one rank more is dangerous
    (the two-step bound charges suspicious tokens log2(rank_threshold + 1): ranks 0..thr)."""
    s = sc(exact=[False] * 4, margin=[9.0] * 4, rank=[6, 7, 8, 0])
    assert Policy.tolerant(-5.0, 7).verdicts(s) == ["suspicious", "suspicious", "dangerous",
                                                    "suspicious"]
    assert Policy.tolerant(-5.0, 0).verdicts(s) == ["dangerous", "dangerous", "dangerous",
                                                    "suspicious"]


@pytest.mark.parametrize("bad", [dict(kind="nope"), dict(kind="tolerant", sigma=0.0),
                                 dict(kind="tolerant", score="x"),
                                 dict(kind="prob_threshold", p_min=1.5),
                                 dict(kind="top_k", k=0)])
def test_policy_rejects_bad_parameters(bad):
    with pytest.raises(ValueError):
        Policy.from_dict(bad)


def test_verify_computes_whole_row_columns(small_model):
    reqs = [Request(f"p{i}", [3 + i, 9, 27], SamplingParams(0.9, 0, 0.95, 50 + i), max_tokens=8)
            for i in range(3)]
    recs = Engine(small_model, max_batch=3).run(reqs)
    for pol in (Policy.prob_threshold(1e-9), Policy.top_k(small_model.cfg.vocab_size)):
        assert verify(recs, model=small_model, policy=pol).ok
    # replay's engine is Gumbel-max, not an inverse-transform sampler: ipt rejects most tokens
    rep = verify(recs, model=small_model, policy=Policy.tolerant(-3.0, score="ipt", sigma=1e-3))
    assert rep.counts()["safe_tokens"] < rep.n_tokens


def ipt_engine_sampler(logits, requests, positions):
    """An inverse-transform engine: u from the reserved Philox counter, CDF in token-id order."""
    ps = [r.params for r in requests]
    probs = S.sample_probs(logits, ps, positions)
    return S.ipt_sample(probs, S.ipt_uniform([p.seed for p in ps], positions))


def test_ipt_policy_accepts_an_inverse_transform_engine(small_model):
    reqs = [Request(f"u{i}", [5 + i, 8, 13, 21], SamplingParams(1.1, [0, 20][i % 2], 0.9, 7 + i),
                    max_tokens=10) for i in range(4)]
    recs = Engine(small_model, max_batch=2, sampler=ipt_engine_sampler).run(reqs)
    pol = Policy.tolerant(-3.0, score="ipt", sigma=1e-3)
    rep = verify(recs, model=small_model, policy=pol)
    assert rep.ok and set(rep.tokens["verdict"]) == {"safe"}
    assert not verify(recs, model=small_model).ok  # not replay's Gumbel-max choices
