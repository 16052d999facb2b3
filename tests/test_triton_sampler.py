"""The Triton sampler (kernels/sampler.py) against the C++ sampler: Philox words, replay's exp/log,
the Gumbel noise and the chosen tokens, all bitwise. Without CUDA it runs in Triton's interpreter on
small float32 rows (conftest.py sets TRITON_INTERPRET=1 before any test imports triton)."""
import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from replay import sampling  # noqa: E402
from replay._ext import C  # noqa: E402
from replay.kernels import sampler as ks  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
SEEDS = [0, 1, 2**32 - 1, 2**32, 2**63, 2**64 - 1, 0x9E3779B97F4A7C15]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.cpu().view(torch.int32)


def test_philox_words_equal_cpp():
    rng = np.random.default_rng(3)
    ctr = rng.integers(0, 2**32, (777, 4), dtype=np.uint64)
    key = rng.integers(0, 2**32, (777, 2), dtype=np.uint64)
    ctr[:3] = [[0, 0, 0, 0], [2**32 - 1] * 4, [5, 2**31, 0, 0]]
    want = sampling.philox4x32_10(ctr, key)
    got = ks.philox4x32_10(torch.from_numpy(ctr.astype(np.int64)).to(DEV),
                           torch.from_numpy(key.astype(np.int64)).to(DEV))
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("position", [0, 17, 2**31 + 5, 2**32 - 1])
def test_gumbel_noise_equals_cpp(seed, position):
    want = sampling.gumbel(seed, position, 1000)
    got = ks.gumbel(seed, position, 1000, device=DEV)
    assert torch.equal(_bits(got), _bits(want))


@triton.jit
def _map_kernel(x_ptr, out_ptr, N, WHICH: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + i, mask=i < N, other=1.0)
    if WHICH == 0:
        y = ks.rp_exp(x)
    else:
        y = ks.rp_log(x)
    tl.store(out_ptr + i, y, mask=i < N)


def _awkward_floats(n: int, lo: float, hi: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    x = torch.empty(n).uniform_(lo, hi, generator=g)
    special = torch.tensor([0.0, -0.0, 1.0, -1.0, 88.7, 89.0, 89.5, -87.3, -103.9, -104.0,
                            -104.5, 1e-45, 1e-40, 1.17549435e-38, 3.4e38, float("inf"),
                            float("-inf"), float("nan"), 0.5, 2.0, 1.4142135])
    return torch.cat([special, x])


@pytest.mark.parametrize("which,lo,hi", [(0, -110.0, 95.0), (0, -20.0, 0.0), (1, 0.0, 50.0),
                                         (1, 0.0, 1e-3), (1, -1.0, 1.0)])
def test_exp_log_equal_cpp(which, lo, hi):
    x = _awkward_floats(4000, lo, hi)
    want = torch.empty_like(x)
    (C().exp_f32 if which == 0 else C().log_f32)(x.data_ptr(), want.data_ptr(), x.numel())
    xd = x.to(DEV)
    got = torch.empty_like(xd)
    _map_kernel[(triton.cdiv(x.numel(), 512),)](xd, got, x.numel(), WHICH=which, BLOCK=512,
                                                enable_fp_fusion=False)
    assert torch.equal(_bits(got), _bits(want))


def _rows(M, V, seed):
    g = torch.Generator().manual_seed(seed)
    l = torch.randn(M, V, generator=g) * 3
    l[::3] = (l[::3] * 2).round() / 2  # exact ties in l and in z
    l[-1, V // 2] = 40.0               # a dominant token
    s = [int(x) for x in torch.randint(0, 2**62, (M,), generator=g)]
    s[0] = 2**64 - 1
    pos = torch.randint(0, 2**32, (M,), generator=g)
    return l, s, pos, g


@pytest.mark.parametrize("V", [1, 3, 17, 97, 300])
def test_greedy_equals_cpp(V):
    l, s, pos, _ = _rows(7, V, V)
    want = sampling.sample(l, 0.0, 0, 1.0, s, pos)
    assert torch.equal(want, l.argmax(dim=1))  # lowest index on ties, as torch
    assert torch.equal(ks.sample(l.to(DEV), 0.0, 0, 1.0, s, pos).cpu(), want)


@pytest.mark.parametrize("V", [3, 17, 300])
def test_top_k_only_equals_cpp(V):
    l, s, pos, g = _rows(12, V, 10 + V)
    T = torch.tensor([0.3, 0.7, 1.0, 1.7])[torch.randint(0, 4, (12,), generator=g)]
    k = torch.tensor([0, 1, 2, 5, 50])[torch.randint(0, 5, (12,), generator=g)]
    want = sampling.sample(l, T, k, 1.0, s, pos)
    assert torch.equal(ks.sample(l.to(DEV), T, k, 1.0, s, pos).cpu(), want)


@pytest.mark.parametrize("V", [17, 300])
def test_top_p_equals_cpp(V):
    l, s, pos, g = _rows(12, V, 20 + V)
    l[1] *= 0.01  # a flat row: top-p keeps most of the vocabulary
    T = torch.tensor([0.3, 0.7, 1.0, 1.7])[torch.randint(0, 4, (12,), generator=g)]
    k = torch.tensor([0, 0, 5, 50])[torch.randint(0, 4, (12,), generator=g)]
    p = torch.tensor([0.95, 0.5, 0.05, 0.999])[torch.randint(0, 4, (12,), generator=g)]
    want = sampling.sample(l, T, k, p, s, pos)
    assert torch.equal(ks.sample(l.to(DEV), T, k, p, s, pos).cpu(), want)
    # the kept-set sizes differ across rows, so these rows exercise the top-p boundary
    kept = sampling.score(l, T, k, p, s, pos, want)["kept"]
    assert len(set(kept.tolist())) > 3


def test_batch_invariant():
    l, s, pos, g = _rows(9, 97, 5)
    T, k, p = 0.8, torch.tensor([0, 5, 0] * 3), torch.tensor([1.0, 1.0, 0.9] * 3)
    full = ks.sample(l.to(DEV), T, k, p, s, pos).cpu()
    for lo, hi in [(0, 1), (2, 5), (8, 9)]:
        part = ks.sample(l[lo:hi].to(DEV), T, k[lo:hi], p[lo:hi], s[lo:hi], pos[lo:hi]).cpu()
        assert torch.equal(part, full[lo:hi])
