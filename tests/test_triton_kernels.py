"""replay.kernels (Triton): numerics against float64 references and bitwise batch invariance.

Without CUDA the kernels run in Triton's CPU interpreter (float32, small shapes, small attention
blocks so that the shapes cross many blocks and splits); with CUDA the same bodies run on the GPU
in float32 and bfloat16 with the fixed default configurations. In the interpreter, tl.dot is
conftest.py's fixed-order reduction (numpy's matmul would make the bitwise checks test the CPU's
BLAS); each bitwise check is also run against a deliberately variant kernel, which it must catch.
"""
import dataclasses
import math
import os

import pytest
import torch

CUDA = torch.cuda.is_available()  # without it, conftest.py has set TRITON_INTERPRET=1
triton = pytest.importorskip("triton", reason="the Triton kernels need triton (pip install triton)")
import triton.language as tl  # noqa: E402

from replay.kernels.attention import ATTENTION_CONFIGS, AttentionConfig, attention  # noqa: E402
from replay.kernels.elementwise import rope_, silu_mul  # noqa: E402
from replay.kernels.log_softmax import log_softmax  # noqa: E402
from replay.kernels.matmul import addmm, matmul, mm  # noqa: E402
from replay.kernels.rmsnorm import add_rms_norm, rms_norm  # noqa: E402
from ref import attention as attention_ref, rms_norm as rms_ref  # noqa: E402

CASES = [
    pytest.param("cpu", torch.float32, id="interpreter-f32",
                 marks=pytest.mark.skipif(CUDA, reason="the interpreter is for machines without "
                                                       "CUDA")),
    pytest.param("cuda", torch.float32, id="cuda-f32",
                 marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs CUDA")]),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16",
                 marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs CUDA")]),
]
case = pytest.mark.parametrize("device,dtype", CASES)


def randn(*shape, device, dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)


def assert_near(out, ref, torch_out):
    """The kernel's error against the float64 reference is at most about twice torch's own error
    in the same dtype (plus a few float32 ulps of the result's scale, where torch is exact)."""
    err = (out.double() - ref).abs().max().item()
    torch_err = (torch_out.double() - ref).abs().max().item()
    floor = 4 * torch.finfo(torch.float32).eps * ref.abs().max().item()
    assert err <= 2 * torch_err + floor, (err, torch_err)


# ---------------------------------------------------------------------------------------------
# matmul

@case
@pytest.mark.parametrize("with_bias", [False, True])
def test_matmul_matches_float64(device, dtype, with_bias):
    x = randn(97, 100, device=device, dtype=dtype, seed=1)
    w = randn(200, 100, device=device, dtype=dtype, seed=2)
    b = randn(200, device=device, dtype=dtype, seed=3) if with_bias else None
    ref = x.double() @ w.double().T + (b.double() if with_bias else 0)
    assert_near(matmul(x, w, b), ref, torch.nn.functional.linear(x, w, b))
    # aten adapters: b is (K, N) there
    assert torch.equal(mm(x, w.T), matmul(x, w))
    if with_bias:
        assert torch.equal(addmm(b, x, w.T), matmul(x, w, b))


def assert_matmul_rows_invariant(fn, device, dtype):
    """Row m of fn(x, w, b) has the same bits whatever M is and wherever the row sits."""
    x = randn(97, 100, device=device, dtype=dtype, seed=4)
    w = randn(200, 100, device=device, dtype=dtype, seed=5)
    b = randn(200, device=device, dtype=dtype, seed=6)
    full = fn(x, w, b)
    for m in (1, 3, 17, 64):
        assert torch.equal(fn(x[:m], w, b), full[:m]), m
    perm = torch.randperm(97, generator=torch.Generator().manual_seed(0)).to(device)
    assert torch.equal(fn(x[perm], w, b), full[perm])  # every row at another tile position


@case
def test_matmul_rows_do_not_depend_on_m_or_position(device, dtype):
    assert_matmul_rows_invariant(matmul, device, dtype)


@triton.jit
def _tile_order_matmul_kernel(x_ptr, w_ptr, out_ptr, M, N, K, BLOCK: tl.constexpr):
    """A deliberately broken matmul: odd row tiles reduce K from its last block down."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rm = pid_m * BLOCK + tl.arange(0, BLOCK)
    rn = pid_n * BLOCK + tl.arange(0, BLOCK)
    rk = tl.arange(0, BLOCK)
    n_k = tl.cdiv(K, BLOCK)
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for i in range(n_k):
        kb = tl.where(pid_m % 2 == 1, n_k - 1 - i, i)
        k = kb * BLOCK + rk
        a = tl.load(x_ptr + rm[:, None] * K + k[None, :], mask=(rm[:, None] < M) & (k[None, :] < K),
                    other=0.0)
        b = tl.load(w_ptr + rn[None, :] * K + k[:, None], mask=(rn[None, :] < N) & (k[:, None] < K),
                    other=0.0)
        acc = tl.dot(a, b, acc, input_precision="ieee")
    tl.store(out_ptr + rm[:, None] * N + rn[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


@case
def test_matmul_invariance_check_catches_variant_kernels(device, dtype, monkeypatch):
    """The bitwise check above fails for a kernel whose K order depends on M (a configuration
    picked per batch size, as autotuning keyed on M would) or on the row's tile."""
    import replay.kernels.matmul as mm_mod
    fixed = dict(mm_mod.MATMUL_CONFIGS[dtype])

    def by_m(x, w, b):  # BLOCK_K chosen from M
        monkeypatch.setitem(mm_mod.MATMUL_CONFIGS, dtype,
                            dict(fixed, BLOCK_K=16 if x.shape[0] < 32 else 32))
        return matmul(x, w, b)

    def by_tile(x, w, b):
        M, K = x.shape
        N = w.shape[0]
        out = torch.empty(M, N, dtype=dtype, device=device)
        grid = (triton.cdiv(M, 32), triton.cdiv(N, 32))
        _tile_order_matmul_kernel[grid](x.contiguous(), w.contiguous(), out, M, N, K, BLOCK=32)
        return out + b

    for variant in (by_m, by_tile):
        with pytest.raises(AssertionError):
            assert_matmul_rows_invariant(variant, device, dtype)


# ---------------------------------------------------------------------------------------------
# norms, log_softmax, elementwise

@case
def test_rms_norm(device, dtype):
    D, eps = 1500, 1e-5  # two 1024-wide blocks, the second partly masked
    x = randn(97, D, device=device, dtype=dtype, seed=7, scale=3.0)
    w = randn(D, device=device, dtype=dtype, seed=8)
    out = rms_norm(x, w, eps)
    torch_out = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
                 ).to(dtype) * w
    assert_near(out, rms_ref(x, w, eps), torch_out)
    for m in (1, 3, 17):
        assert torch.equal(rms_norm(x[:m], w, eps), out[:m]), m
    assert torch.equal(rms_norm(x.flip(0), w, eps), out.flip(0))


@case
def test_add_rms_norm_is_rms_norm_of_the_sum(device, dtype):
    D, eps = 1500, 1e-6
    x = randn(33, D, device=device, dtype=dtype, seed=9)
    r = randn(33, D, device=device, dtype=dtype, seed=10)
    w = randn(D, device=device, dtype=dtype, seed=11)
    out, res = add_rms_norm(x, r, w, eps)
    assert torch.equal(res, x + r)
    assert torch.equal(out, rms_norm(x + r, w, eps))
    o1, r1 = add_rms_norm(x[5:8], r[5:8], w, eps)
    assert torch.equal(o1, out[5:8]) and torch.equal(r1, res[5:8])


@case
def test_log_softmax(device, dtype):
    N = 2500  # three 1024-wide blocks
    x = randn(40, N, device=device, dtype=dtype, seed=12, scale=4.0)
    x[3, ::7] = float("-inf")  # masked logits
    x[5, :1100] = float("-inf")  # a whole block of a lane's first values
    out = log_softmax(x)
    ref = torch.log_softmax(x.double(), -1)
    fin = torch.isfinite(ref)
    assert torch.equal(fin, torch.isfinite(out))
    assert_near(out[fin], ref[fin], torch.log_softmax(x.float(), -1).to(dtype)[fin])
    for m in (1, 3, 17):
        assert torch.equal(log_softmax(x[:m]), out[:m]), m
    assert torch.equal(log_softmax(x[7:9]), out[7:9])


@case
def test_silu_mul(device, dtype):
    gu = randn(17, 2 * 1100, device=device, dtype=dtype, seed=13, scale=3.0)
    g, u = gu.double().chunk(2, -1)
    ref = g / (1 + torch.exp(-g)) * u
    gf, uf = gu.chunk(2, -1)
    assert_near(silu_mul(gu), ref, torch.nn.functional.silu(gf) * uf)


@case
def test_rope(device, dtype):
    T, H, D, P = 19, 6, 48, 64  # D/2 = 24: a masked half block; 6 heads: a masked head block
    x = randn(T, H, D, device=device, dtype=dtype, seed=14)
    pos = torch.randint(0, P, (T,), generator=torch.Generator().manual_seed(0)).to(device)
    ang = torch.arange(P, dtype=torch.float64)[:, None] * 0.37 ** torch.arange(D // 2)
    cos, sin = ang.cos().float().to(device), ang.sin().float().to(device)
    c, s = cos[pos].double()[:, None], sin[pos].double()[:, None]
    x1, x2 = x.double()[..., : D // 2], x.double()[..., D // 2:]
    ref = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1)
    xf1, xf2 = x[..., : D // 2].float(), x[..., D // 2:].float()
    torch_out = torch.cat([xf1 * c.float() - xf2 * s.float(), xf2 * c.float() + xf1 * s.float()],
                          -1).to(dtype)
    y = x.clone()
    assert rope_(y, pos, cos, sin) is y
    assert_near(y, ref, torch_out)
    y3 = x[4:7].clone()
    assert torch.equal(rope_(y3, pos[4:7], cos, sin), y[4:7])


# ---------------------------------------------------------------------------------------------
# attention

# In the interpreter: small blocks so that short sequences cross many blocks and splits.
SMALL = AttentionConfig(BLOCK_M=16, BLOCK_N=16, SPLIT=32, num_warps=4, num_stages=2,
                        PRECISION="ieee")
ATOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}  # values O(1); bf16 output ulp is 2^-8


def attn_config(device, dtype):
    return SMALL if device == "cpu" else ATTENTION_CONFIGS[dtype]


def seq_data(L, Hq, Hkv, D, device, dtype, seed):
    return (randn(L, Hq, D, device=device, dtype=dtype, seed=seed),
            randn(L, Hkv, D, device=device, dtype=dtype, seed=seed + 1),
            randn(L, Hkv, D, device=device, dtype=dtype, seed=seed + 2))


def run(q, k, v, cu, pos0, kv_start, window, cfg, split_kv=None):
    dev = q.device
    t = lambda a: torch.tensor(a, dtype=torch.int64, device=dev)  # noqa: E731
    return attention(q, k, v, t(cu), t(pos0), t(kv_start), 1 / math.sqrt(q.shape[2]), window,
                     split_kv=split_kv, config=cfg)


@case
@pytest.mark.parametrize("window", [0, 1, 23])
def test_attention_matches_float64(device, dtype, window):
    """Three sequences (prefill, chunk after a cached prefix, decode), GQA, a NaN-filled buffer
    outside their rows (never read)."""
    Hq, Hkv, D = 4, 2, 24  # D pads to a 32-wide block
    cfg = attn_config(device, dtype)
    lens, pos0 = [37, 9, 1], [0, 30, 60]
    cu = [0, 37, 46, 47]
    kv_start = [5, 50, 100]
    R = 170
    g = torch.Generator().manual_seed(3)
    q = randn(47, Hq, D, device=device, dtype=dtype, seed=20)
    k = torch.full((R, Hkv, D), float("nan"), device=device, dtype=dtype)
    v = k.clone()
    for s in range(3):
        rows = slice(kv_start[s], kv_start[s] + pos0[s] + lens[s])
        k[rows] = torch.randn(k[rows].shape, generator=g).to(device, dtype)
        v[rows] = torch.randn(v[rows].shape, generator=g).to(device, dtype)
    ref = attention_ref(q, k, v, cu, pos0, kv_start, 1 / math.sqrt(D), window)
    for split_kv in (False, True):
        out = run(q, k, v, cu, pos0, kv_start, window, cfg, split_kv)
        assert (out.double().cpu() - ref).abs().max().item() <= ATOL[dtype], split_kv


def assert_chunks_equal_prefill(device, dtype, window, cfg_for):
    """One sequence computed as one prefill, as chunked prefills of 7 and 16, and token by token
    (decode): every query row has the same bits. The length crosses two split boundaries.
    cfg_for(n): the attention configuration a call with n queries runs."""
    cfg = attn_config(device, dtype)
    L = 2 * cfg.SPLIT + 13
    q, k, v = seq_data(L, 2, 1, 32, device, dtype, seed=30)
    full = run(q, k, v, [0, L], [0], [0], window, cfg_for(L))
    for chunk in (1, 7, 16):
        parts = [run(q[a:a + chunk], k, v, [0, min(chunk, L - a)], [a], [0], window,
                     cfg_for(min(chunk, L - a)))
                 for a in range(0, L, chunk)]
        assert torch.equal(torch.cat(parts), full), chunk


@case
@pytest.mark.parametrize("window", [0, 40])
def test_attention_rows_equal_across_prefill_chunks_and_decode(device, dtype, window):
    cfg = attn_config(device, dtype)
    assert_chunks_equal_prefill(device, dtype, window, lambda n: cfg)


@case
def test_attention_invariance_check_catches_a_variant_kernel(device, dtype):
    """The check above fails when decode (one query) reads keys in other blocks than prefill."""
    cfg = attn_config(device, dtype)
    decode = dataclasses.replace(cfg, BLOCK_N=2 * cfg.BLOCK_N)
    with pytest.raises(AssertionError):
        assert_chunks_equal_prefill(device, dtype, 0, lambda n: decode if n == 1 else cfg)


@case
def test_attention_rows_equal_across_batches_and_buffer_places(device, dtype):
    """A sequence's rows do not depend on its neighbours in the batch, its place in the packed
    queries or in the KV buffer, or on the split-program path."""
    cfg = attn_config(device, dtype)
    Hq, Hkv, D, window = 4, 2, 32, 0
    L = cfg.SPLIT + 21
    qa, ka, va = seq_data(L, Hq, Hkv, D, device, dtype, seed=40)  # the sequence under test
    qb, kb, vb = seq_data(50, Hq, Hkv, D, device, dtype, seed=50)  # a neighbour
    alone = run(qa, ka, va, [0, L], [0], [0], window, cfg, split_kv=False)
    assert torch.equal(run(qa, ka, va, [0, L], [0], [0], window, cfg, split_kv=True), alone)
    # a after b in the queries; b first in the buffer; a at an odd buffer row
    k = torch.cat([kb, ka[:3], ka])  # rows 50..52 are stale, a starts at 53
    v = torch.cat([vb, va[:3], va])
    both = run(torch.cat([qb, qa]), k, v, [0, 50, 50 + L], [0, 0], [0, 53], window, cfg)
    assert torch.equal(both[50:], alone)
    # a's last 5 queries as a chunk next to a decode of b
    last = run(torch.cat([qb[-1:], qa[-5:]]), k, v, [0, 1, 6], [49, L - 5], [0, 53], window,
               cfg)
    assert torch.equal(last[1:], alone[-5:])


def test_attention_default_configs_are_valid():
    for dtype, cfg in ATTENTION_CONFIGS.items():
        assert cfg.SPLIT % cfg.BLOCK_N == 0, dtype
        for b in (cfg.BLOCK_M, cfg.BLOCK_N):
            assert b >= 16 and b & (b - 1) == 0, dtype  # tl.dot: powers of two, >= 16
