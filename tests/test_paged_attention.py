"""ops.paged_attention (the vLLM plugin's attention over vLLM's paged KV cache) against
ops.attention over a contiguous buffer: bit for bit, for chunked queries, GQA, shuffled pages and
vLLM's CPU layout (per page and KV head: the keys of every slot, then the values)."""
import pytest
import torch

from replay import ops
from replay._ext import C


def _case(seed, lens, q_lens, Hq=4, Hkv=2, D=32, P=64):
    g = torch.Generator().manual_seed(seed)
    S = len(lens)
    kv = [torch.randn(n, 2, Hkv, D, generator=g) for n in lens]            # per sequence
    pages_per = [(n + P - 1) // P for n in lens]
    N = sum(pages_per) + 3
    order = torch.randperm(N, generator=g).tolist()                        # pages shuffled
    bt = torch.full((S, max(pages_per)), -1, dtype=torch.int64)
    cache = torch.full((N, Hkv, 2 * P, D), float("nan"))                   # unused slots: NaN
    a = 0
    for s, n in enumerate(lens):
        for b in range(pages_per[s]):
            pg = order[a]
            a += 1
            bt[s, b] = pg
            blk = kv[s][b * P: (b + 1) * P]                                # (m, 2, Hkv, D)
            m = blk.shape[0]
            cache[pg, :, :m] = blk[:, 0].transpose(0, 1)
            cache[pg, :, P: P + m] = blk[:, 1].transpose(0, 1)
    k_pages, v_pages = cache[:, :, :P], cache[:, :, P:]
    # contiguous buffer for ops.attention
    kbuf = torch.cat([x[:, 0] for x in kv])
    vbuf = torch.cat([x[:, 1] for x in kv])
    starts = torch.tensor([0] + lens[:-1]).cumsum(0)
    pos0 = torch.tensor([n - q for n, q in zip(lens, q_lens)])
    cu = torch.tensor([0] + q_lens).cumsum(0)
    q = torch.randn(int(cu[-1]), Hq, D, generator=g)
    return q, k_pages, v_pages, kbuf, vbuf, cu, pos0, starts, bt


@pytest.mark.parametrize("lens,q_lens,P,D", [
    # a decode, a whole prefill, a chunk; D = 32, 64 and 128 run the register-tile paths
    ([1, 97, 200], [1, 97, 3], 64, 32),
    ([130, 64, 65, 300], [1, 1, 65, 17], 128, 64),
    ([1025], [33], 64, 128),
    ([70, 3], [9, 3], 64, 48),
])
def test_paged_equals_contiguous(lens, q_lens, P, D):
    q, kp, vp, kb, vb, cu, pos0, starts, bt = _case(len(lens) + P + D, lens, q_lens, D=D, P=P)
    want = ops.attention(q, kb, vb, cu, pos0, starts, 0.17)
    got = ops.paged_attention(q, kp, vp, cu, pos0, bt, 0.17)
    assert torch.equal(got, want)
    # control: two pages of the first long sequence swapped -> other keys, other bits
    s = max(range(len(lens)), key=lambda i: lens[i])
    bad = bt.clone()
    bad[s, 0], bad[s, 1] = bt[s, 1], bt[s, 0]
    assert not torch.equal(ops.paged_attention(q, kp, vp, cu, pos0, bad, 0.17), want)


def test_paged_gives_the_same_bits_on_every_path():
    """Every code path this CPU has (scalar, AVX2, AVX-512): paged == the default contiguous."""
    q, kp, vp, kb, vb, cu, pos0, starts, bt = _case(7, [1, 130, 300], [1, 70, 5], P=128)
    want = ops.attention(q, kb, vb, cu, pos0, starts, 0.17)
    before = C().isa()
    try:
        for isa in range(C().cpu_isa() + 1):
            C().select_isa(isa)
            assert torch.equal(ops.paged_attention(q, kp, vp, cu, pos0, bt, 0.17), want), isa
            assert torch.equal(ops.attention(q, kb, vb, cu, pos0, starts, 0.17), want), isa
    finally:
        C().select_isa(before)


def test_paged_rejects_unaligned_pages():
    q, kp, vp, *_rest, cu, pos0, _, bt = _case(0, [40], [40], P=32)
    with pytest.raises(ValueError, match="multiple of 64"):
        ops.paged_attention(q, kp, vp, cu, pos0, bt, 0.1)


def test_paged_rejects_pages_outside_the_cache():
    q, kp, vp, *_rest, cu, pos0, _, bt = _case(3, [130, 20], [2, 20], P=64)
    ops.paged_attention(q, kp, vp, cu, pos0, bt, 0.1)
    for bad_page in (kp.shape[0], -1):
        bad = bt.clone()
        bad[0, 2] = bad_page  # the third page of the first sequence: read by its last query
        with pytest.raises(ValueError, match="outside k_pages"):
            ops.paged_attention(q, kp, vp, cu, pos0, bad, 0.1)
    bad = bt.clone()
    bad[1, 1:] = kp.shape[0] + 5  # past the pages a sequence reads: never looked at
    ops.paged_attention(q, kp, vp, cu, pos0, bad, 0.1)
    with pytest.raises(ValueError, match="block_table row"):
        ops.paged_attention(q, kp, vp, cu, pos0, bt[:, :2], 0.1)
    with pytest.raises(ValueError, match="block_table row"):  # no int64 wrap-around past it
        ops.paged_attention(q, kp, vp, cu, torch.tensor([2**63 - 10, 0]), bt, 0.1)
