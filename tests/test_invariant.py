"""Invariant mode (replay/invariant.py): torch's own ops routed to replay's kernels on CPU.

Row invariance is checked bitwise (a row's result must not depend on the other rows of the batch);
numerics against float64 with float32 error bounds; the mode must restore torch's kernels on exit,
also when the body raises, and nest."""
import pytest
import torch
import torch.nn.functional as F

from replay import invariant

pytestmark = pytest.mark.skipif(not hasattr(torch.library, "get_kernel"),
                                reason="invariant mode needs torch >= 2.9")

EPS = 2.0 ** -24  # float32 unit roundoff


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def _dot_bound(a, b, K):
    """|fl(a @ b) - a @ b| <= gamma_K |a| @ |b| (any summation order, fma or not), plus slack."""
    return 1.01 * K * EPS * (a.double().abs() @ b.double().abs()) + 1e-30


@pytest.fixture(autouse=True)
def _mode_off_after():
    yield
    invariant.disable()  # a failing test must not leave the mode on for the others


@pytest.mark.parametrize("K", [1, 17, 300])
def test_mm_rows_invariant_and_accurate(K):
    a, b = _rand(97, K, seed=K), _rand(K, 65, seed=K + 1)
    with invariant.invariant_mode():
        full = torch.mm(a, b)
        for k in (1, 3, 7, 96):
            assert torch.equal(torch.mm(a[:k], b), full[:k]), k
            assert torch.equal(a[k:k + 1] @ b, full[k:k + 1]), k
    err = (full.double() - a.double() @ b.double()).abs()
    assert bool((err <= _dot_bound(a, b, K)).all())


def test_stock_mm_is_not_row_invariant_here():
    """What the mode fixes: stock CPU matmul (MKL/oneDNN) picks kernels by M."""
    a, b = _rand(97, 300, seed=1), _rand(300, 65, seed=2)
    full = torch.mm(a, b)
    differs = [k for k in (1, 3, 7) if not torch.equal(torch.mm(a[:k], b), full[:k])]
    if not differs:
        pytest.skip("stock torch.mm happens to be row-invariant on this machine and shape")
    with invariant.invariant_mode():
        full = torch.mm(a, b)
        assert all(torch.equal(torch.mm(a[:k], b), full[:k]) for k in differs)


def test_linear_addmm_bmm():
    x, w, bias = _rand(5, 7, 33, seed=3), _rand(19, 33, seed=4), _rand(19, seed=5)
    with invariant.invariant_mode():
        y3 = F.linear(x, w, bias)            # 3-D input: addmm on the flattened rows
        y2 = F.linear(x[1], w, bias)
        yn = F.linear(x[2, :3], w)            # no bias: mm
        yn1 = F.linear(x[2, 1:2], w)
        am = torch.addmm(bias, x[0], w.t(), beta=0.5, alpha=2.0)
        bm = torch.bmm(x, x.transpose(1, 2))
        bm1 = torch.bmm(x[:, :1], x.transpose(1, 2))
    ref = x.double() @ w.double().t() + bias.double()
    bound = _dot_bound(x.reshape(-1, 33), w.t(), 33).reshape(5, 7, 19) + bias.abs().double() * EPS
    assert bool(((y3.double() - ref).abs() <= bound).all())
    assert torch.equal(y2, y3[1])
    assert bool(((yn.double() - (ref[2, :3] - bias.double())).abs() <= bound[2, :3]).all())
    assert torch.equal(yn1, yn[1:2])
    am_ref = 0.5 * bias.double() + 2.0 * (x[0].double() @ w.double().t())
    torch.testing.assert_close(am.double(), am_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bm.double(), x.double() @ x.double().transpose(1, 2), rtol=1e-5,
                               atol=1e-4)
    assert torch.equal(bm1, bm[:, :1])


@pytest.mark.parametrize("N", [1, 3, 97, 1000])
def test_softmax_log_softmax_mean_rms_norm(N):
    x = _rand(11, N, seed=N) * 4
    w = _rand(N, seed=N + 1)
    with invariant.invariant_mode():
        outs = dict(ls=F.log_softmax(x, -1), sm=torch.softmax(x, dim=-1), mean=x.mean(-1),
                    meank=x.mean(dim=-1, keepdim=True), rms=F.rms_norm(x, (N,), w, 1e-6))
        parts = dict(ls=F.log_softmax(x[3:5], -1), sm=torch.softmax(x[3:5], dim=-1),
                     mean=x[3:5].mean(-1), meank=x[3:5].mean(dim=-1, keepdim=True),
                     rms=F.rms_norm(x[3:5], (N,), w, 1e-6))
    for k in outs:  # row-invariant
        assert torch.equal(parts[k], outs[k][3:5]), k
    xd = x.double()
    ls = torch.log_softmax(xd, -1)
    rms = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()
    # float32 results of O(1) computations: a few ulps, with the sums' gamma_N on top
    tol = dict(rtol=1e-5 + N * EPS, atol=1e-5 + N * EPS)
    torch.testing.assert_close(outs["ls"].double(), ls, **tol)
    torch.testing.assert_close(outs["sm"].double(), ls.exp(), **tol)
    torch.testing.assert_close(outs["mean"].double(), xd.mean(-1), **tol)
    assert outs["meank"].shape == (11, 1) and torch.equal(outs["meank"][:, 0], outs["mean"])
    torch.testing.assert_close(outs["rms"].double(), rms, **tol)


def test_uncovered_cases_fall_back_to_torch():
    a, b = _rand(9, 13, seed=7).double(), _rand(13, 5, seed=8).double()
    x = _rand(4, 6, 8, seed=9)
    stock = dict(mm=torch.mm(a, b), sm0=torch.softmax(x, dim=0), mean01=x.mean(dim=(0, 1)),
                 ls1=F.log_softmax(x, 1))
    with invariant.invariant_mode():
        got = dict(mm=torch.mm(a, b), sm0=torch.softmax(x, dim=0), mean01=x.mean(dim=(0, 1)),
                   ls1=F.log_softmax(x, 1))
    for k in stock:  # the original kernels, so the same bits
        assert torch.equal(got[k], stock[k]), k


def test_restores_state_even_when_body_raises_and_nests():
    a, b = _rand(33, 300, seed=11), _rand(300, 17, seed=12)
    stock = torch.mm(a, b)
    with invariant.invariant_mode():
        replayed = torch.mm(a, b)
    assert not invariant.is_enabled()
    assert torch.equal(torch.mm(a, b), stock)
    with pytest.raises(RuntimeError, match="boom"):
        with invariant.invariant_mode():
            assert invariant.is_enabled()
            raise RuntimeError("boom")
    assert not invariant.is_enabled()
    assert torch.equal(torch.mm(a, b), stock)

    with invariant.invariant_mode():
        with invariant.invariant_mode():
            assert invariant.is_enabled()
        assert invariant.is_enabled()  # the inner exit keeps the outer's state
        assert torch.equal(torch.mm(a, b), replayed)
        with invariant.invariant_mode(False):
            assert not invariant.is_enabled()
            assert torch.equal(torch.mm(a, b), stock)
        assert invariant.is_enabled()
    assert not invariant.is_enabled()

    invariant.enable()
    invariant.enable()  # idempotent
    assert invariant.is_enabled()
    invariant.disable()
    assert not invariant.is_enabled()
