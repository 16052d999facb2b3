"""The bound: accepted sets counted by hand on tiny rows, agreement with the verifier's verdicts
token by token, the charging rules, the sweep and the threshold choice."""
import math

import pytest
import torch

from replay import sampling
from replay import scores as S
from replay.bound import (accepted_mask, accepted_masks, accepted_sizes, bytes_per_day, capacity,
                          sweep, threshold_for_fpr)
from replay.policy import Policy, gls
from replay.records import SamplingParams
from replay.verify import ReplayScorer

P1 = SamplingParams(temperature=1.0, seed=12345)


def row(*v):
    return torch.tensor(v, dtype=torch.float32)


def test_exact_policy_accepts_only_the_sampler_choice():
    torch.manual_seed(0)
    l = torch.randn(17, 97)
    params = [SamplingParams(0.7 + 0.1 * (i % 5), [0, 5][i % 2], [1.0, 0.9][i % 3 == 0], 40 + i)
              for i in range(17)]
    pos = list(range(3, 20))
    m = accepted_masks(l, params, pos, Policy.exact())
    assert torch.equal(m.sum(1), torch.ones(17, dtype=torch.int64))
    choice = sampling.sample(l, [p.temperature for p in params], [p.top_k for p in params],
                             [p.top_p for p in params], [p.seed for p in params], pos)
    assert torch.equal(m.float().argmax(1), choice)
    b = capacity(accepted_sizes(l, params, pos, Policy.exact()), 97)
    assert b.hidden_bits == 0.0 and b.fraction == 0.0 and b.fpr == 0.0


def test_permissive_tolerant_accepts_the_whole_row():
    # no filter, a threshold below every finite gls: every token accepted, log2 V bits each
    l = row(0.3, -1.2, 2.0, 0.0)
    assert accepted_mask(l, P1, 5, Policy.tolerant(-1e9)).all()
    sizes = accepted_sizes(l.repeat(8, 1), P1, list(range(8)), Policy.tolerant(-1e9))
    b = capacity(sizes, 4)
    assert b.hidden_bits == pytest.approx(8 * 2.0) and b.fraction == pytest.approx(1.0)
    assert b.channel_bits == pytest.approx(16.0)


def test_tolerant_set_counted_by_hand():
    l, T, t = row(2.0, 1.0, 0.0, -1.0), 0.5, 9
    p = SamplingParams(temperature=T, seed=777)
    y = [float(l[i]) / T + float(sampling.gumbel(777, t, 4)[i]) for i in range(4)]
    delta = sorted(T * (max(y) - yi) for yi in y)       # 0 first (the choice)
    # a threshold whose Delta* lies between the 2nd and 3rd smallest margins: 2 tokens accepted
    cut = (delta[1] + delta[2]) / 2
    thr = float(gls(torch.tensor([cut], dtype=torch.float64), 1.0)[0])
    assert S.delta_star(thr, 1.0) == pytest.approx(cut, rel=1e-9)
    assert int(accepted_mask(l, p, t, Policy.tolerant(thr)).sum()) == 2
    # a threshold of log 0.5 or more accepts nothing (margins are >= 0); just below, the choice
    assert int(accepted_mask(l, p, t, Policy.tolerant(math.log(0.5))).sum()) == 0
    m = accepted_mask(l, p, t, Policy.tolerant(math.log(0.5) - 1e-12))
    assert m.nonzero().flatten().tolist() == [int(sampling.sample(l[None], T, 0, 1.0, 777, t))]


def test_filtered_tokens_are_never_accepted_by_gls():
    l = row(3.0, 2.0, 1.0, 0.0, -1.0)
    p = SamplingParams(temperature=1.0, top_k=2, seed=3)
    m = accepted_mask(l, p, 4, Policy.tolerant(-1e9))
    assert m.tolist() == [True, True, False, False, False]


def test_top_k_policy_counts_ties():
    assert int(accepted_mask(row(2, 1, 0, -1), P1, 0, Policy.top_k(2)).sum()) == 2
    assert int(accepted_mask(row(1, 1, 0, 0), P1, 0, Policy.top_k(1)).sum()) == 2
    assert int(accepted_mask(row(1, 1, 0, 0), P1, 0, Policy.top_k(3)).sum()) == 4


def test_prob_threshold_uses_the_renormalised_kept_distribution():
    l = torch.log(torch.tensor([0.5, 0.25, 0.125, 0.125]))
    assert accepted_mask(l, P1, 0, Policy.prob_threshold(0.2)).tolist() == [1, 1, 0, 0]
    assert accepted_mask(l, P1, 0, Policy.prob_threshold(0.1)).sum() == 4
    # top_p 0.7 keeps {0, 1}: probabilities 2/3, 1/3
    p = SamplingParams(temperature=1.0, top_p=0.7, seed=1)
    probs = S.sample_probs(l[None], [p], [0])[0]
    assert probs.tolist() == pytest.approx([2 / 3, 1 / 3, 0, 0])
    assert int(accepted_mask(l, p, 0, Policy.prob_threshold(0.3)).sum()) == 2
    assert int(accepted_mask(l, p, 0, Policy.prob_threshold(0.5)).sum()) == 1
    # greedy: the argmax alone has probability 1
    g = SamplingParams(temperature=0.0)
    assert accepted_mask(l, g, 0, Policy.prob_threshold(0.01)).tolist() == [1, 0, 0, 0]


POLICIES = [Policy.exact(), Policy.tolerant(-3.0), Policy.tolerant(-8.0, sigma=0.3),
            Policy.tolerant(-2.0, score="ipt", sigma=0.05), Policy.prob_threshold(0.02),
            Policy.top_k(3)]


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
def test_accepted_set_equals_the_verdicts_token_by_token(policy):
    """Claim every token of the vocabulary in turn: the verifier's 'safe' verdicts are the set."""
    torch.manual_seed(1)
    V, n = 37, 6
    l = torch.randn(n, V) * 2
    params = [SamplingParams(*x) for x in [(1.0, 0, 1.0, 5), (0.7, 4, 1.0, 6), (1.3, 0, 0.8, 7),
                                           (0.0, 0, 1.0, 8), (0.9, 10, 0.6, 2**63 + 9),
                                           (2.0, 0, 0.95, 10)]]
    pos = [3, 17, 97, 1, 2**31, 40]
    masks = accepted_masks(l, params, pos, policy)
    for r in range(n):
        L = l[r].repeat(V, 1)
        p = params[r]
        sc = sampling.score(L, p.temperature, p.top_k, p.top_p, p.seed, pos[r],
                            claimed=list(range(V)))
        sc.update(ReplayScorer.row_columns(L, [p], [pos[r]] * V, list(range(V)), policy))
        safe = torch.tensor([v == "safe" for v in policy.verdicts(sc)])
        assert torch.equal(safe, masks[r]), (r, policy)
        # margins for every token equal the C++ margins bit for bit
        assert torch.equal(S.margins(l[r:r + 1], [p], [pos[r]])[0], sc["margin"])


def test_capacity_charging():
    sizes = torch.tensor([1, 4, 8, 2])
    b = capacity(sizes, 16)
    assert b.hidden_bits == pytest.approx(0 + 2 + 3 + 1) and b.fpr == 0
    acc = torch.tensor([True, True, False, False])
    b = capacity(sizes, 16, acc)
    assert b.hidden_bits == pytest.approx(0 + 2 + 4 + 4)
    assert b.false_positives == 2 and b.fpr == 0.5 and b.accepted_bits == pytest.approx(2)
    b = capacity(sizes, 16, acc, suspicious_honest=torch.tensor([0, 0, 1, 0]).bool(),
                 rank_threshold=7)
    assert b.hidden_bits == pytest.approx(0 + 2 + 3 + 4) and b.suspicious == 1
    assert b.fraction == pytest.approx(9 / 16)
    assert bytes_per_day(0.005, 1e9, 2**16) == pytest.approx(0.005 * 1e9 * 16 / 8)


def test_threshold_for_fpr_and_sweep():
    torch.manual_seed(2)
    V, n = 50, 40
    l = torch.randn(n, V)
    params = [SamplingParams(1.0, 0, 1.0, 100 + i) for i in range(n)]
    pos = list(range(n))
    # honest margins: the exact tokens (0) plus three off tokens
    mh = torch.zeros(n)
    mh[:3] = torch.tensor([0.5, 2.0, 6.0])
    for target, fails in [(0.0, 0), (1 / n, 1), (2.5 / n, 2), (3 / n, 3)]:
        thr = threshold_for_fpr(mh, 1.0, target)
        assert int((gls(mh, 1.0) <= thr).sum()) == fails
    thrs = [-0.7, -2.0, -5.0, -20.0]
    curve = sweep(l, params, pos, mh, thrs, sigma=1.0)
    assert [c[0] for c in curve] == thrs
    for th, fpr, frac in curve:
        b = capacity(accepted_sizes(l, params, pos, Policy.tolerant(th)), V, gls(mh, 1.0) > th)
        assert fpr == b.fpr and frac == pytest.approx(b.fraction)
    fprs = [c[1] for c in curve]
    assert fprs == sorted(fprs, reverse=True)  # stricter thresholds reject more honest tokens
