"""The seeded sampler (replay/sampling.py, csrc/cpu/sampler.cpp) against its plain numpy reference
(tests/ref.py), Philox against Random123's known answers, replay's exp/log against float64.
"""
import math

import numpy as np
import pytest
import torch

import ref
from replay import sampling
from replay._ext import C

# Random123 known-answer vectors for philox4x32_10 (DEShawResearch/random123, examples/kat_vectors):
# counter (4 words), key (2 words) -> output (4 words).
KAT = [
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]

SEEDS = [0, 1, 12345, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 0x9E3779B97F4A7C15]


def test_philox_known_answers():
    ctr, key, want = (np.array(v, np.uint64) for v in zip(*KAT))
    assert sampling.philox4x32_10(ctr, key).tolist() == want.tolist()
    assert ref.philox(ctr, key).astype(np.int64).tolist() == want.tolist()


def test_philox_matches_reference_bitwise():
    rng = np.random.default_rng(1)
    ctr = rng.integers(0, 2**32, (2000, 4), dtype=np.uint64)
    key = rng.integers(0, 2**32, (2000, 2), dtype=np.uint64)
    assert np.array_equal(sampling.philox4x32_10(ctr, key).numpy(), ref.philox(ctr, key).astype(np.int64))


def _ulps(y: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """|y - exact| in units of the float32 spacing at the rounded exact value (finite results)."""
    r = np.abs(exact.astype(np.float32))
    spacing = np.spacing(np.minimum(r, np.float32(3.4e38))).astype(np.float64)
    return np.abs(y.astype(np.float64) - exact) / spacing


def _math_inputs():
    rng = np.random.default_rng(2)
    bits = rng.integers(0, 2**32, 400_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    edges = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 1e-45, 1.17549435e-38,
                      1.1754942e-38, 3.4028235e38, 88.72283, 88.722839, 88.72284, 89.0, -87.33655,
                      -103.27893, -103.97208, -104.0, -0.3465736, 0.3465736, 1.4142135, 0.70710677,
                      1 - 2**-24, 1 + 2**-23], np.float32)
    return np.concatenate([bits, edges, rng.uniform(-105, 90, 200_000).astype(np.float32),
                           rng.uniform(0.5, 2, 200_000).astype(np.float32)])


def _apply(name: str, x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    getattr(C(), name)(x.ctypes.data, out.ctypes.data, len(x))
    return out


def test_exp_log_accuracy_against_float64():
    # An exhaustive run over all 2^32 inputs measured at most 1.06 ulp (exp) and 0.92 ulp (log).
    x = _math_inputs()
    with np.errstate(all="ignore"):
        x64 = x.astype(np.float64)
        e64, l64 = np.exp(x64), np.log(x64)
    e, l = _apply("exp_f32", x), _apply("log_f32", x)
    fin = np.isfinite(e64) & (np.abs(e64) < 3.4e38)
    assert _ulps(e[fin], e64[fin]).max() <= 1.1
    over = x64 > 88.8
    assert np.all(e[over & ~np.isnan(x)] == np.inf) and np.all(e[x64 < -104] == 0)
    assert np.isnan(e[np.isnan(x)]).all() and e[x == -np.inf].tolist() == [0.0]
    pos = (x64 > 0) & np.isfinite(x64)
    assert _ulps(l[pos], l64[pos]).max() <= 1.0
    assert np.isnan(l[(x < 0) | np.isnan(x)]).all()
    assert (l[x == 0] == -np.inf).all() and l[x == np.inf].tolist() == [np.inf]


def test_exp_log_match_reference_bitwise():
    x = _math_inputs()
    for name, f in (("exp_f32", ref.exp), ("log_f32", ref.log)):
        got, want = _apply(name, x), f(x)
        same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
        assert same.all(), (name, x[~same][:5])


def test_gumbel_bound_and_transform_over_every_uniform():
    # All 2^23 values of U: G stays below the search bound kGumbelBound = 17 (sampler_math.h).
    w = (np.arange(2**23, dtype=np.uint32) << np.uint32(9)) | np.uint32(0x1FF)
    g = np.empty(len(w), np.float32)
    C().gumbel_from_words_f32(w.ctypes.data, g.ctypes.data, len(w))
    assert np.isfinite(g).all() and g.max() < 17 and g.min() > -3
    sub = np.random.default_rng(3).choice(len(w), 20_000, replace=False)
    assert np.array_equal(g[sub], ref.gumbel_from_words(w[sub]))


@pytest.mark.parametrize("seed", SEEDS)
def test_gumbel_matches_reference(seed):
    for pos in (0, 7, 2**31 + 5, 2**32 - 1):
        assert np.array_equal(sampling.gumbel(seed, pos, 300).numpy(), ref.gumbel(seed, pos, np.arange(300)))


def _logits(rng, M: int, V: int, kind: str) -> torch.Tensor:
    if kind == "normal":
        x = rng.standard_normal((M, V)) * rng.uniform(0.5, 4)
    elif kind == "ties":  # coarse values: many equal z, so ties in the order and in top-p
        x = np.round(rng.standard_normal((M, V)) * 2) / 2
    elif kind == "rising":  # z increasing with the id: every token displaces one of the top-k so far
        x = np.sort(rng.standard_normal((M, V)) * 3, axis=1)
    else:  # "wide": a spread over hundreds of nats, so many e_i underflow to 0; some -inf
        x = rng.standard_normal((M, V)) * 80
        x[rng.random((M, V)) < 0.05] = -np.inf
        x[:, 0] = 1.0
    return torch.from_numpy(x.astype(np.float32))


def _params(rng, M: int):
    T = rng.uniform(0.0, 2.0, M).astype(np.float32)
    T[rng.random(M) < 0.15] = 0
    T[rng.random(M) < 0.1] = 0.05
    return dict(temperature=T, top_k=rng.choice([0, 1, 5, 50], M), top_p=rng.choice([1.0, 0.9, 0.5, 0.01], M),
                seed=[SEEDS[i] if i < len(SEEDS) else int(rng.integers(0, 2**63)) * 2 + int(i % 2)
                      for i in rng.integers(0, 2 * len(SEEDS), M)],
                position=rng.choice([0, 1, 17, 4095, 2**31, 2**32 - 1], M))


VOCABS = [1, 2, 3, 17, 97, 256, 1000, 1025, 4097]


def _case(V: int, kind: str, salt: int, M: int = 24):
    """(rng, logits [M, V], per-row parameters) of one seeded random case."""
    rng = np.random.default_rng(V * salt + len(kind))
    return rng, _logits(rng, M, V, kind), _params(rng, M)


def _ref_rows(fn, l, p, *extra):
    return [fn(l[m].numpy(), p["temperature"][m], int(p["top_k"][m]), p["top_p"][m], p["seed"][m],
               int(p["position"][m]), *(e[m] for e in extra)) for m in range(l.shape[0])]


@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("kind", ["normal", "ties", "wide", "rising"])
def test_sample_matches_reference(V, kind):
    _, l, p = _case(V, kind, 7)
    got = sampling.sample(l, **p)
    assert got.tolist() == _ref_rows(ref.sample, l, p)


@pytest.mark.parametrize("V", [1, 3, 97, 1025, 4097])
@pytest.mark.parametrize("kind", ["normal", "ties", "wide", "rising"])
def test_score_matches_reference(V, kind):
    rng, l, p = _case(V, kind, 11)
    M = l.shape[0]
    choice = sampling.sample(l, **p)
    # claim the sampler's token, a near neighbour in the order, or a random one
    claimed = [int(choice[m]) if m % 3 == 0 else
               int(torch.argsort(l[m], descending=True)[min(1, V - 1)]) if m % 3 == 1 else
               int(rng.integers(0, V)) for m in range(M)]
    got = sampling.score(l, **p, claimed=claimed)
    want = _ref_rows(ref.score, l, p, claimed)
    for k in ("choice", "logprob", "rank", "in_top_k", "in_top_p", "margin", "kept"):
        assert got[k].tolist() == [w[k] for w in want], k
    assert got["exact"].tolist() == [w["choice"] == c for w, c in zip(want, claimed)]
    exact = got["exact"]
    assert (got["margin"][exact] == 0).all() and (got["margin"] >= 0).all()
    assert (got["in_top_p"][exact]).all()


def test_logprob_and_rank_against_float64():
    rng = np.random.default_rng(5)
    l = _logits(rng, 16, 1000, "normal")
    T = rng.uniform(0.3, 2, 16).astype(np.float32)
    claimed = rng.integers(0, 1000, 16)
    s = sampling.score(l, T, 0, 1.0, 3, 9, claimed)
    want = torch.log_softmax(l.double() / torch.from_numpy(T).double()[:, None], dim=1)
    want = want[torch.arange(16), torch.from_numpy(claimed)]
    # float32: z and its max are rounded (|z| <~ 40, so ~4e-6), plus the sum and log (~2e-7 rel.)
    assert torch.allclose(s["logprob"].double(), want, rtol=1e-5, atol=2e-5)
    assert s["rank"].tolist() == [int((l[m] > l[m, c]).sum()) for m, c in enumerate(claimed)]


def test_greedy_takes_the_lowest_index_of_ties():
    l = torch.tensor([[1.0, 3.0, 3.0, 2.0], [5.0, 5.0, 5.0, 5.0], [-1.0, -2.0, -1.0, -0.5]])
    assert sampling.sample(l, 0.0, 0, 1.0, 1, 0).tolist() == [1, 0, 3]
    s = sampling.score(l, 0.0, 2, 1.0, 1, 0, [2, 1, 0])
    assert s["exact"].tolist() == [False, False, False]
    assert s["margin"].tolist() == [0.0, 0.0, 0.5] and s["rank"].tolist() == [0, 0, 1]
    assert s["in_top_k"].tolist() == [True, True, True] and s["kept"].tolist() == [1, 1, 1]


def test_sampled_tie_goes_to_the_lowest_index_in_top_p():
    # top_k = 1 over two equal logits keeps the lower id, whatever the seed
    l = torch.tensor([[0.0, 2.0, 2.0, 1.0]]).expand(50, 4).contiguous()
    assert sampling.sample(l, 1.0, 1, 1.0, list(range(50)), 3).tolist() == [1] * 50


@pytest.mark.parametrize("top_k", [1, 5, 50])
def test_top_k_cut_through_a_tie_keeps_the_lowest_ids(top_k):
    # 300 equal logits (past the first k, the kernel scans them 16 at a time): the kept set is
    # ids 0..k-1, so every choice falls there, whatever the seed
    V, n = 300, 64
    l = torch.full((n, V), 1.5)
    l[:, 7] = -3.0  # one lower logit: with k = 50 the cut moves to id 50, inside a block of 16
    p = dict(temperature=0.9, top_k=top_k, top_p=1.0, seed=list(range(n)), position=11)
    got = sampling.sample(l, **p)
    want = [ref.sample(l[0].numpy(), 0.9, top_k, 1.0, s, 11) for s in range(n)]
    assert got.tolist() == want
    kept = [i for i in range(V) if i != 7][:top_k]
    assert set(want) <= set(kept) and (top_k == 1 or len(set(want)) > 1)
    assert sampling.score(l, **p, claimed=want)["exact"].all()


def test_top_p_keeps_the_prefix_whose_mass_reaches_exactly_top_p():
    # e = [1, 1, 0, 0] (the last two underflow), S = 2: c_1 = 1 >= 0.5 * S keeps token 0 alone
    l = torch.tensor([[0.0, 0.0, -200.0, -200.0], [0.0, 0.0, -1.0, -1.0]])
    p = dict(temperature=1.0, top_k=[0, 2], top_p=0.5, position=3)
    for seed in range(40):
        s = sampling.score(l, seed=seed, claimed=[1, 1], **p)
        assert s["choice"].tolist() == [0, 0] and s["kept"].tolist() == [1, 1]
        assert s["in_top_p"].tolist() == [False, False] and s["in_top_k"].tolist() == [True, True]
        assert s["margin"].tolist() == [math.inf, math.inf]


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (3, 1.0), (0, 0.999), (4, 0.999)])
def test_ties_in_y_go_to_the_lowest_index(top_k, top_p):
    # Near 4e7 the float32 spacing is 4, so z + G often rounds to the same y for tokens with
    # different z: the lowest id must win, even where the search meets it after a higher one.
    l = torch.tensor([4e7, 4e7 + 4, 4e7 - 4, 4e7 + 4, 4e7, 0.0]).expand(64, 6).contiguous()
    p = dict(temperature=1.0, top_k=top_k, top_p=top_p, seed=list(range(64)), position=5)
    got = sampling.sample(l, **p)
    want = [ref.sample(l[0].numpy(), 1.0, top_k, top_p, s, 5) for s in range(64)]
    assert got.tolist() == want and len(set(want)) > 1


@pytest.mark.parametrize("top_k", [0, 2])
def test_frequencies_follow_softmax(top_k):
    # Gumbel-max: P(token i) = softmax(z)_i over the kept tokens. 20000 seeds, 5 tokens,
    # chi-square with 4 degrees of freedom (or 1 when top_k = 2): 30 is beyond p = 1e-5.
    n, l = 20_000, torch.tensor([1.0, 0.5, 2.0, -1.0, 0.0])
    T = 0.8
    toks = sampling.sample(l.expand(n, 5).contiguous(), T, top_k, 1.0, list(range(n)), 42)
    counts = np.bincount(toks.numpy(), minlength=5)
    z = (l / T).double()
    if top_k:
        z[torch.argsort(z, descending=True)[top_k:]] = -math.inf
    p = torch.softmax(z, 0).numpy()
    keep = p > 0
    assert counts[~keep].sum() == 0
    chi2 = ((counts[keep] - n * p[keep]) ** 2 / (n * p[keep])).sum()
    assert chi2 < 30, (counts, n * p)


def test_result_is_a_pure_function_of_the_row():
    # A row's token does not depend on M, on the other rows, on its place in the batch or on the
    # row stride: sample a batch, then each row alone, then a shuffled batch inside a wider buffer.
    rng = np.random.default_rng(9)
    M, V = 37, 1025
    l, p = _logits(rng, M, V, "normal"), _params(rng, M)
    full = sampling.sample(l, **p)
    for m in range(M):
        one = sampling.sample(l[m:m + 1], **{k: [v[m]] for k, v in p.items()})
        assert torch.equal(one, full[m:m + 1])
    perm = rng.permutation(M)
    wide = torch.randn(M, V + 13)
    wide[:, 5:5 + V] = l[perm]
    view = wide[:, 5:5 + V]  # row stride V + 13
    shuffled = sampling.sample(view, **{k: [v[i] for i in perm] for k, v in p.items()})
    assert torch.equal(shuffled, full[perm])
    s_full = sampling.score(l, **p, claimed=full)
    s_perm = sampling.score(view, **{k: [v[i] for i in perm] for k, v in p.items()}, claimed=full[perm])
    for k in s_full:
        assert torch.equal(s_perm[k], s_full[k][perm]), k


def test_seed_and_position_change_the_noise():
    g = sampling.gumbel(5, 10, 64)
    assert not torch.equal(g, sampling.gumbel(6, 10, 64))
    assert not torch.equal(g, sampling.gumbel(5 + 2**32, 10, 64))  # the seed's high word counts
    assert not torch.equal(g, sampling.gumbel(5, 11, 64))


@pytest.mark.parametrize("bad, msg", [
    (dict(seed=-1), "seed"), (dict(seed=2**64), "seed"), (dict(seed=1.5), "seed"),
    (dict(temperature=-0.5), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-1), "top_k"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(position=-1), "position"), (dict(position=2**32), "position"),
    (dict(top_k=[1, 2]), "top_k"), (dict(claimed=3), "claimed"), (dict(claimed=-1), "claimed"),
])
def test_bad_arguments_raise(bad, msg):
    a = dict(temperature=1.0, top_k=0, top_p=1.0, seed=1, position=0, claimed=0)
    a.update(bad)
    with pytest.raises(ValueError, match=msg):
        sampling.score(torch.randn(3, 3), **a)


def test_bad_logits_raise():
    base = torch.randn(2, 5)
    for t, msg in [(base.double(), "float32"), (base[0], r"\[M, V\]"),
                   (torch.full((2, 5), float("nan")), "NaN"),
                   (torch.full((2, 5), float("inf")), r"\+inf"),
                   (torch.full((2, 5), float("-inf")), "all -inf")]:
        with pytest.raises(ValueError, match=msg):
            sampling.sample(t, 1.0, 0, 1.0, 1, 0)
