"""The CUDA sampler/scoring kernel (csrc/cuda/score.cu) against the CPU one (csrc/cpu/sampler.cpp):
every output bitwise equal, on awkward vocabulary sizes and on rows whose top-p head is larger than
one sorted window (2048 keys). GPU only: skipped without CUDA or a CUDA build of replay._C.
"""
import pytest
import torch

from replay import sampling
from replay._ext import C

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
if not getattr(C(), "has_cuda", False):
    pytest.skip("replay._C was built without CUDA", allow_module_level=True)

FIELDS = ("choice", "logprob", "rank", "in_top_k", "in_top_p", "margin", "kept")


def _params(M, g):
    T = torch.tensor([0.0, 0.7, 1.0, 1.3, 2.5])[torch.randint(0, 5, (M,), generator=g)]
    top_k = torch.tensor([0, 0, 1, 5, 50, 3000])[torch.randint(0, 6, (M,), generator=g)]
    top_p = torch.tensor([1.0, 1.0, 0.9, 0.5, 0.999, 0.3])[torch.randint(0, 6, (M,), generator=g)]
    seed = torch.randint(0, 2**62, (M,), generator=g)
    pos = torch.randint(0, 2**31, (M,), generator=g)
    return T, top_k, top_p, seed, pos


def _cuda_score(l, T, top_k, top_p, seed, pos, claimed, bf16=False):
    d = "cuda"
    M, V = l.shape
    args = [t.to(d).contiguous() for t in (T, top_k, top_p, seed, pos, claimed)]
    o = dict(choice=torch.empty(M, dtype=torch.int64, device=d),
             logprob=torch.empty(M, device=d), rank=torch.empty(M, dtype=torch.int64, device=d),
             in_top_k=torch.empty(M, dtype=torch.bool, device=d),
             in_top_p=torch.empty(M, dtype=torch.bool, device=d), margin=torch.empty(M, device=d),
             kept=torch.empty(M, dtype=torch.int64, device=d))
    C().score_cuda_f32(l.data_ptr(), M, V, l.stride(0), *(a.data_ptr() for a in args),
                       *(o[f].data_ptr() for f in FIELDS),
                       stream=torch.cuda.current_stream().cuda_stream, bf16=bf16)
    tok = torch.empty(M, dtype=torch.int64, device=d)
    C().sample_cuda_f32(l.data_ptr(), M, V, l.stride(0), *(a.data_ptr() for a in args[:5]),
                        tok.data_ptr(), stream=torch.cuda.current_stream().cuda_stream, bf16=bf16)
    torch.cuda.synchronize()
    o = {k: v.cpu() for k, v in o.items()}
    assert torch.equal(tok.cpu(), o["choice"])
    return o


def _check_equal(l_cpu, l_dev, params, claimed, bf16=False):
    want = sampling.score(l_cpu, *params, claimed)
    got = _cuda_score(l_dev, *params, claimed, bf16=bf16)
    for f in FIELDS:
        w, g = want[f], got[f]
        if w.dtype == torch.float32:  # bitwise, infinities included
            assert torch.equal(w.view(torch.int32), g.view(torch.int32)), f
        else:
            assert torch.equal(w, g), f


@pytest.mark.parametrize("V", [1, 3, 17, 97, 2049, 5003, 32000])
@pytest.mark.parametrize("scale", [0.3, 3.0, 12.0])  # flat rows: heads of thousands of tokens
def test_cuda_score_equals_cpu(V, scale):
    g = torch.Generator().manual_seed(V * 7 + int(scale * 10))
    M = 37
    l = torch.randn(M, V, generator=g) * scale
    l[:, V // 3] = l[:, 0]  # a tie in the logits
    params = _params(M, g)
    claimed = torch.randint(0, V, (M,), generator=g)
    claimed[::3] = sampling.sample(l, *params)[::3]  # some claims are the sampler's choice
    _check_equal(l, l.cuda(), params, claimed)


def test_cuda_score_row_stride_and_bf16():
    g = torch.Generator().manual_seed(5)
    M, V = 19, 4099
    big = torch.randn(M, V + 13, generator=g) * 4
    params = _params(M, g)
    claimed = torch.randint(0, V, (M,), generator=g)
    _check_equal(big[:, :V], big.cuda()[:, :V], params, claimed)
    lb = big[:, :V].to(torch.bfloat16)
    _check_equal(lb.float(), lb.cuda(), params, claimed, bf16=True)


def test_cuda_score_is_batch_invariant():
    g = torch.Generator().manual_seed(9)
    M, V = 64, 3001
    l = (torch.randn(M, V, generator=g) * 2).cuda()
    params = _params(M, g)
    claimed = torch.randint(0, V, (M,), generator=g)
    full = _cuda_score(l, *params, claimed)
    for lo, hi in [(0, 1), (5, 8), (17, 64)]:
        part = _cuda_score(l[lo:hi], *(p[lo:hi] for p in params), claimed[lo:hi])
        for f in FIELDS:
            assert torch.equal(part[f], full[f][lo:hi]), f
