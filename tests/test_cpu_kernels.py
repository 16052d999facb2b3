"""The C++ CPU dense kernels (csrc/cpu/linalg.cpp, attention.cpp) through replay.ops.

Two kinds of checks:
- numerics against a float64 reference, with tolerances derived from float32 rounding (u = 2^-24)
  and the reduction order of csrc/cpu/simd.h: a length-n reduction is 16 chains of n/16 fmas, a
  4-level tree and up to 15 tail steps, so its error is at most about (n/16 + 20) u sum|terms|;
- the replay contract (DESIGN §2), bitwise with torch.equal: a row's result does not depend on the
  batch size, the row's place in the batch, the thread count, the SIMD code path, or (attention)
  on prefill vs chunked prefill vs decode and where the sequence sits in the KV buffer.
"""
import pytest
import torch

from replay import ops
from replay._ext import C
from helpers import split_k_linear
from ref import attention as attention64, rms_norm as rms_ref

U = 2.0 ** -24  # unit roundoff of float32


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=gen(seed)) * scale


def reduction_bound(n):
    """Relative error factor of one length-n reduction in the simd.h order."""
    return (n // 16 + 20) * U


@pytest.fixture
def threads():
    """Sets the kernels' OpenMP thread count inside a test and restores it afterwards."""
    before = C().get_num_threads()
    yield C().set_num_threads
    C().set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# linear


@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (3, 5, 15), (17, 37, 16), (97, 13, 257),
                                   (5, 70, 100)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_matches_float64(M, N, K, with_bias):
    x, w = randn(M, K, seed=1), randn(N, K, seed=2)
    b = randn(N, seed=3) if with_bias else None
    y = ops.linear(x, w, b)
    x64, w64 = x.double(), w.double()
    ref = x64 @ w64.T
    mag = x64.abs() @ w64.abs().T
    if b is not None:
        ref, mag = ref + b.double(), mag + b.double().abs()
    # one dot product (bound above), then the bias add and the final rounding
    tol = (reduction_bound(K) + 2 * U) * mag
    assert ((y.double() - ref).abs() <= tol).all()
    with ops.backend("torch"):
        yt = ops.linear(x, w, b)
    assert ((y - yt).abs().double() <= 2 * tol).all()
    # and no worse than twice torch's own float32 error (the bound above is a worst case)
    assert (y.double() - ref).abs().max() <= 2 * (yt.double() - ref).abs().max() + 1e-30


def assert_linear_rows_invariant(linear):
    K, N = 300, 37
    x, w, b = randn(97, K, seed=4), randn(N, K, seed=5), randn(N, seed=6)
    full = linear(x, w, b)
    for M in (1, 3, 17, 64, 97):
        for a in (0, 97 - M, (97 - M) // 2):
            assert torch.equal(linear(x[a:a + M], w, b), full[a:a + M]), (M, a)
    perm = torch.randperm(97, generator=gen(7))
    assert torch.equal(linear(x[perm], w, b), full[perm])
    # a row next to different neighbours, at every place of a 4x6 tile and of an edge tile
    for M in (5, 11):
        for i in range(M):
            xs = randn(M, K, seed=100 + M + i)
            xs[i] = x[40]
            assert torch.equal(linear(xs, w, b)[i], full[40])
    # output columns: w sliced at awkward places gives the same values
    for a, z in ((0, 1), (3, 20), (31, 37)):
        assert torch.equal(linear(x, w[a:z], b[a:z]), full[:, a:z])


def test_linear_rows_do_not_depend_on_batch():
    assert_linear_rows_invariant(ops.linear)


def test_linear_invariance_check_catches_split_k():
    """The check above fails for a linear that splits K below 8 rows (helpers.split_k_linear):
    a control that is batch-variant on every machine, unlike torch's BLAS, which may or may not
    be for a given shape."""
    with pytest.raises(AssertionError):
        assert_linear_rows_invariant(split_k_linear)


def test_linear_threads_do_not_matter(threads):
    x, w = randn(97, 300, seed=8), randn(70, 300, seed=9)
    threads(1)
    one = ops.linear(x, w)
    threads(2)
    assert torch.equal(ops.linear(x, w), one)


@pytest.mark.parametrize("M,N,K", [(9, 13, 100), (1, 40, 33), (14, 70, 257), (25, 33, 16),
                                   (3, 100, 1), (13, 48, 48),
                                   # K / 16 = 16 has its own kernels on the vector paths (the
                                   # scalar path has none): both ends and both neighbours
                                   (1, 40, 256), (15, 40, 271), (5, 33, 255), (11, 40, 272)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_code_paths_and_schedules_agree(M, N, K, with_bias):
    """Every code path this CPU runs (scalar, AVX2, AVX-512), each with every register-tile
    schedule (AVX2's 6 x 16 and 4 x 16, AVX-512's 12 x 32), gives the bits of ops.linear: full and edge
    tiles, 1-3 row slivers (several lane steps at once), odd panel counts, K tails."""
    x, w, b = randn(M, K, seed=10), randn(N, K, seed=11), randn(N, seed=12)
    ref = ops.linear(x, w, b if with_bias else None)
    wp = ops.pack_linear(w)
    bp = torch.nn.functional.pad(b, (0, -N % 16))
    runs = 0
    for isa in range(C().cpu_isa() + 1):
        for sched in range(C().linear_schedules):
            out = torch.empty(M, N)
            C().linear_sched(x.data_ptr(), M, wp.data.data_ptr(),
                             bp.data_ptr() if with_bias else 0, N, K, out.data_ptr(), isa, sched)
            assert torch.equal(out, ref), (isa, sched)
            runs += 1
    assert runs >= 6  # at least the scalar and AVX2 paths, three schedules each


def test_packed_linear_is_the_plain_linear():
    """ops.pack_linear once, then linear: the same bits as the plain weight, float32 and bfloat16
    (the kernel widens bfloat16 panels as it loads them: upcast-then-multiply's bits)."""
    for M, N, K in ((1, 1, 1), (7, 33, 100), (33, 130, 257)):
        x, w, b = randn(M, K, seed=M), randn(N, K, seed=N), randn(N, seed=K)
        p = ops.pack_linear(w)
        assert torch.equal(p.unpack(), w)
        assert torch.equal(ops.linear(x, p, b), ops.linear(x, w, b))
        wb = w.bfloat16()
        pb = ops.pack_linear(wb)
        assert pb.data.dtype == torch.bfloat16 and torch.equal(pb.unpack(), wb)
        assert torch.equal(ops.linear(x, pb, b), ops.linear(x, wb.float(), b))
        with ops.backend("torch"):  # the other backends unpack, once per device
            assert torch.equal(ops.linear(x, p, b), ops.linear(x, w, b))
            assert torch.equal(ops.linear(x, pb, b), ops.linear(x, wb.float(), b))
            assert p.plain("cpu") is p.plain(torch.device("cpu"))  # kept, not unpacked per call
            if M == 7:  # panels changed in place: unpacked again, never a stale copy
                p.data.mul_(2)
                assert torch.equal(ops.linear(x, p, b), ops.linear(x, 2 * w, b))
                p.data.div_(2)
            assert p.plain("cpu").dtype == pb.plain("cpu").dtype == torch.float32
        idx = torch.tensor([N - 1, 0, N // 2, N - 1])  # rows read back from the panels
        assert torch.equal(p.rows(idx), w[idx]) and torch.equal(pb.rows(idx), wb[idx])
    with pytest.raises(ValueError, match=r"rows: indices must be 1-D in \[0, 130\)"):
        p.rows(torch.tensor([130]))


# ---------------------------------------------------------------------------------------------
# row ops


@pytest.mark.parametrize("M,D", [(1, 1), (3, 17), (17, 64), (5, 1000)])
def test_rms_norm(M, D):
    x, w, eps = randn(M, D, seed=15), randn(D, seed=16), 1e-5
    y = ops.rms_norm(x, w, eps)
    # sum of squares (reduction), /D, +eps, sqrt, 1/, two multiplies: a few u beyond the sum
    tol = (reduction_bound(D) + 8 * U) * rms_ref(x, w, eps).abs()
    assert ((y.double() - rms_ref(x, w, eps)).abs() <= tol + 1e-30).all()
    with ops.backend("torch"):
        assert torch.allclose(ops.rms_norm(x, w, eps), y, rtol=4 * reduction_bound(D), atol=0)
    for i in (0, M - 1):  # a row alone gives the same bits as in its batch
        assert torch.equal(ops.rms_norm(x[i:i + 1], w, eps)[0], y[i])


def test_add_rms_norm():
    x, r, w = randn(17, 97, seed=17), randn(17, 97, seed=18), randn(97, seed=19)
    y, res = ops.add_rms_norm(x, r, w, 1e-6)
    assert torch.equal(res, x + r)
    assert torch.equal(y, ops.rms_norm(x + r, w, 1e-6))
    y3, res3 = ops.add_rms_norm(x[5:8], r[5:8], w, 1e-6)
    assert torch.equal(y3, y[5:8]) and torch.equal(res3, res[5:8])


def test_vectorised_exp_gives_rp_exp_bits():
    """silu_mul, log_softmax and attention call rp_exp in `omp simd` loops; the vector code must
    give the scalar function's bits, also at the range limits and on specials."""
    bits = torch.randint(-2 ** 31, 2 ** 31 - 1, (1 << 16,), generator=gen(38), dtype=torch.int64)
    x = torch.cat([bits.to(torch.int32).view(torch.float32),
                   torch.linspace(-110.0, 95.0, 20011),
                   torch.tensor([0.0, -0.0, 1e-30, 88.72, 89.0, 89.01, -87.34, -103.97, -104.0,
                                 -104.01, float("inf"), -float("inf"), float("nan")])])
    outs = []
    for vectorised in (False, True):
        out = torch.empty_like(x)
        C().exp_simd_f32(x.data_ptr(), out.data_ptr(), x.numel(), vectorised)
        outs.append(out.view(torch.int32))
    assert torch.equal(outs[0], outs[1])
    ok = x.abs() < 80
    assert torch.allclose(outs[1].view(torch.float32)[ok].double(), x[ok].double().exp(),
                          rtol=4 * U, atol=0)


def test_silu_mul():
    gu = randn(7, 2 * 97, seed=20, scale=6.0)
    y = ops.silu_mul(gu)
    g, u = gu.double().chunk(2, dim=-1)
    ref = g / (1 + torch.exp(-g)) * u
    # rp_exp <= 1.06 ulp, then +1, /, *: each rounds once
    assert ((y.double() - ref).abs() <= 6 * U * ref.abs() + 1e-38).all()
    assert torch.equal(ops.silu_mul(gu[3:4])[0], y[3])


def test_rope_matches_torch_backend_bitwise():
    x, cos, sin = randn(9, 3, 32, seed=21), randn(50, 16, seed=22), randn(50, 16, seed=23)
    pos = torch.tensor([0, 7, 49, 3, 3, 12, 1, 30, 8])
    y = ops.rope_(x.clone(), pos, cos, sin)
    with ops.backend("torch"):
        assert torch.equal(ops.rope_(x.clone(), pos, cos, sin), y)
    assert torch.equal(ops.rope_(x[2:3].clone(), pos[2:3], cos, sin), y[2:3])


@pytest.mark.parametrize("M,N", [(1, 1), (3, 17), (5, 509), (2, 4099)])
def test_log_softmax(M, N):
    x = randn(M, N, seed=24, scale=4.0)
    y = ops.log_softmax(x)
    ref = torch.log_softmax(x.double(), -1)
    lse = (x.double().max(-1, keepdim=True).values - ref).abs()
    # x - max rounds once; log(sum) carries the sum's relative error plus ~1 ulp of rp_log
    tol = reduction_bound(N) + 4 * U + 2 * U * (ref.abs() + lse)
    assert ((y.double() - ref).abs() <= tol).all()
    assert torch.equal(ops.log_softmax(x[M - 1:]), y[M - 1:])


# ---------------------------------------------------------------------------------------------
# attention


def attention_ref(q, k_buf, v_buf, cu_q, pos0, kv_start, window=0):
    """float64 reference (ref.attention), plus the per-output error bound of the float32
    kernel."""
    T, Hq, D = q.shape
    G = Hq // k_buf.shape[1]
    scale = D ** -0.5
    tol = torch.empty(T, Hq, 1, dtype=torch.float64)
    for s in range(len(pos0)):
        for t in range(int(cu_q[s]), int(cu_q[s + 1])):
            p = int(pos0[s]) + t - int(cu_q[s])
            lo = max(0, p - window + 1) if window else 0
            rows = slice(int(kv_start[s]) + lo, int(kv_start[s]) + p + 1)
            k = k_buf[rows].double().repeat_interleave(G, 1)  # (n, Hq, D)
            v = v_buf[rows].double().repeat_interleave(G, 1)
            qt = q[t].double()
            # score error: dot over D plus the scale multiply; exp, block sums, and the
            # (n/16 + block count)-deep accumulations of l and acc (relative), times max |v|
            es = (reduction_bound(D) + U) * scale * torch.einsum("hd,nhd->hn", qt.abs(), k.abs())
            n = p + 1 - lo
            rel = 2 * es.max(-1).values + (reduction_bound(64) + n // 64 + 64 + 8) * U
            tol[t, :, 0] = rel * v.abs().amax((0, 2))
    return attention64(q, k_buf, v_buf, cu_q, pos0, kv_start, scale, window), tol


def test_attention_matches_float64():
    T, Hq, Hkv, D = 60, 4, 2, 64
    q, k, v = randn(T, Hq, D, seed=25), randn(300, Hkv, D, seed=26), randn(300, Hkv, D, seed=27)
    cu_q, pos0, kv_start = torch.tensor([0, 20, 23, 60]), torch.tensor([0, 140, 60]), \
        torch.tensor([150, 0, 190])
    for window in (0, 50):
        y = ops.attention(q, k, v, cu_q, pos0, kv_start, window=window)
        ref, tol = attention_ref(q, k, v, cu_q, pos0, kv_start, window)
        assert ((y.double() - ref).abs() <= tol).all()
        with ops.backend("torch"):
            yt = ops.attention(q, k, v, cu_q, pos0, kv_start, window=window)
        assert ((y - yt).abs().double() <= 2 * tol).all()
        assert (y.double() - ref).abs().max() <= 2 * (yt.double() - ref).abs().max()


def run_chunked(q, k, v, chunk, window, kv_start=0, R=None):
    """One sequence of L tokens, processed `chunk` queries at a time. The buffer rows that a
    real engine would not have written yet hold NaN, to show that they are never read."""
    L, Hq, D = q.shape
    R = R or kv_start + L
    outs = []
    for a in range(0, L, chunk):
        b = min(L, a + chunk)
        kb = torch.full((R,) + k.shape[1:], float("nan"))
        vb = kb.clone()
        kb[kv_start:kv_start + b], vb[kv_start:kv_start + b] = k[:b], v[:b]
        outs.append(ops.attention(q[a:b], kb, vb, torch.tensor([0, b - a]), torch.tensor([a]),
                                  torch.tensor([kv_start]), window=window))
    return torch.cat(outs)


@pytest.mark.parametrize("Hq,Hkv,D,window", [(4, 2, 64, 0), (3, 1, 40, 0), (2, 2, 16, 70),
                                           (4, 2, 64, 70), (7, 1, 128, 70), (5, 1, 32, 70),
                                           # no GQA: a work item takes 32 tokens of one head
                                           (3, 3, 32, 0), (2, 2, 64, 70)])
def test_attention_prefill_chunked_decode_equal(Hq, Hkv, D, window):
    L = 150  # crosses two 64-key block boundaries
    q, k, v = randn(L, Hq, D, seed=28), randn(L, Hkv, D, seed=29), randn(L, Hkv, D, seed=30)
    full = run_chunked(q, k, v, L, window)
    ref, tol = attention_ref(q, k, v, torch.tensor([0, L]), torch.tensor([0]), torch.tensor([0]),
                             window)
    assert ((full.double() - ref).abs() <= tol).all()
    for chunk in (1, 7, 97):
        assert torch.equal(run_chunked(q, k, v, chunk, window), full), chunk
    # elsewhere in the buffer
    assert torch.equal(run_chunked(q, k, v, 97, window, kv_start=33, R=400), full)


def test_attention_without_query_heads_is_empty():
    # Hq = 0 passes the head checks (0 is a multiple of Hkv): nothing to compute, not a crash
    q, k, v = randn(3, 0, 32, seed=40), randn(3, 2, 32, seed=41), randn(3, 2, 32, seed=42)
    out = ops.attention(q, k, v, torch.tensor([0, 3]), torch.tensor([0]), torch.tensor([0]))
    assert out.shape == (3, 0, 32)


def test_attention_batch_composition_does_not_matter(threads):
    Hq, Hkv, D, L = 4, 2, 32, 130
    q, k, v = randn(L, Hq, D, seed=31), randn(L, Hkv, D, seed=32), randn(L, Hkv, D, seed=33)
    alone = run_chunked(q, k, v, L, 0)
    # the sequence's last 30 queries, packed between two other sequences, at buffer row 77
    R = 400
    kb, vb = randn(R, Hkv, D, seed=34), randn(R, Hkv, D, seed=35)
    kb[77:77 + L], vb[77:77 + L] = k, v
    qb = torch.cat([randn(5, Hq, D, seed=36), q[100:], randn(11, Hq, D, seed=37)])
    args = (qb, kb, vb, torch.tensor([0, 5, 35, 46]), torch.tensor([200, 100, 3]),
            torch.tensor([0, 77, 300]))
    for n in (1, 2):
        threads(n)
        assert torch.equal(ops.attention(*args)[5:35], alone[100:])
