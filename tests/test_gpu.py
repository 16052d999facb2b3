"""What only a GPU can check (run by bench/gpu_suite.sh; skipped without CUDA):

- the replay contract in bfloat16 on CUDA: the engine's logits rows equal the verifier's, bitwise,
  at batch sizes 1 to 256 and several prefill chunk sizes;
- numerics: the bf16 model's logits against a float64 reference forward of the same weights;
- the CUDA scoring kernel (replay._C.score_cuda_f32) against the C++ scoring code on the same
  logits: identical sampled tokens and verdicts.
"""
import random

import pytest
import torch

from replay import ops, sampling
from replay._ext import C
from replay.engine import Engine, Request
from replay.model import Model, ModelConfig, Varlen
from replay.records import SamplingParams
from replay.verify import verify
from helpers import assert_engine_varied
from ref import model_logits

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def model() -> Model:
    # std 0.2 as in the CPU tests: peaked enough that sampled tokens vary, flat enough that top-p
    # keeps several tokens.
    return Model.random(ModelConfig.preset("test-small"), seed=1, std=0.2, device="cuda",
                        dtype=torch.bfloat16)


def workload(V: int, n: int, seed: int, max_tokens: int = 8) -> list[Request]:
    """n requests with mixed prompt lengths (awkward sizes), sampling parameters and arrivals."""
    rng = random.Random(seed)
    reqs = []
    for i in range(n):
        P = rng.choice([1, 3, 17, 40, 97])
        params = SamplingParams(temperature=rng.choice([0.0, 0.7, 1.0]),
                                top_k=rng.choice([0, 7, 50]), top_p=rng.choice([1.0, 0.9]),
                                seed=rng.getrandbits(64))
        reqs.append(Request(f"r{i}", [rng.randrange(V) for _ in range(P)], params,
                            max_tokens=max_tokens, arrival=rng.randrange(4)))
    return reqs


def generate(model, reqs, **kw):
    engine = Engine(model, keep_logits=True, placement_seed=7, **kw)
    return engine.run(reqs), engine


# ---------------------------------------------------------------------------------------------
# the replay contract in bf16

# (max_batch, chunk_size, requests): batch sizes 1 to 256, chunks 1 (token by token), 16, 256
CONFIGS = [(1, 16, 4), (3, 1, 6), (17, 16, 40), (64, 256, 64), (256, 16, 256)]


@pytest.mark.parametrize("max_batch,chunk,n", CONFIGS)
def test_engine_rows_equal_verifier_rows_bf16(model, max_batch, chunk, n):
    reqs = workload(model.cfg.vocab_size, n, seed=max_batch)
    records, eng = generate(model, reqs, max_batch=max_batch, chunk_size=chunk)
    assert_engine_varied(eng, batched=max_batch > 1, chunked=chunk < 97, placed=max_batch > 1)
    report = verify(records, model=model, keep_logits=True, token_budget=2048)
    for r in records:
        a, b = eng.logits[r.request_id], report.logits[r.request_id]
        assert a.shape == b.shape == (len(r.output), model.cfg.vocab_size)
        for j in range(len(r.output)):
            assert torch.equal(a[j], b[j]), (r.request_id, j)
    assert report.ok, report.summary()
    assert report.counts()["exact_tokens"] == sum(len(r.output) for r in records)


def test_same_request_same_rows_in_any_batch_bf16(model):
    """One request's logits alone (batch 1, one prefill) and among 255 others (chunked)."""
    reqs = workload(model.cfg.vocab_size, 256, seed=99)
    _, crowd = generate(model, reqs, max_batch=256, chunk_size=7)
    assert_engine_varied(crowd, placed=True)
    for i in (0, 1, 128, 255):
        _, alone = generate(model, [reqs[i]], max_batch=1, chunk_size=256)
        rid = reqs[i].request_id
        assert torch.equal(alone.logits[rid], crowd.logits[rid]), rid


# ---------------------------------------------------------------------------------------------
# numerics against float64

def test_bf16_logits_against_float64(model):
    """replay's bf16 error against float64 is at most about twice torch's own bf16 error on the
    same weights (ops.backend("torch"): cuBLAS, SDPA), plus a floor of a few bf16 ulps of the
    logits' scale. The absolute bound (5% of the largest logit) catches a model that is wrong in
    the same way under both backends: a wrong model is off by O(100%), bf16 rounding through two
    layers by about 2^-8 per op."""
    rng = random.Random(3)
    seqs = [[rng.randrange(model.cfg.vocab_size) for _ in range(n)] for n in (1, 17, 97)]
    ours = model(seqs)
    with ops.backend("torch"):
        theirs = model(seqs)
    for seq, a, b in zip(seqs, ours, theirs):
        ref = model_logits(model, seq)
        err = (a.double() - ref).abs().max().item()
        torch_err = (b.double() - ref).abs().max().item()
        scale = ref.abs().max().item()
        assert err <= 2 * torch_err + 4 * 2 ** -8 * scale, (len(seq), err, torch_err)
        assert err <= 0.05 * scale, (len(seq), err, scale)


def test_prefill_and_decode_rows_equal_bf16(model):
    """The last row of a prefill equals the row of the same position computed by decode steps
    over the KV buffer (the attention and matmul paths the engine mixes)."""
    rng = random.Random(4)
    seq = [rng.randrange(model.cfg.vocab_size) for _ in range(41)]
    full = model([seq])[0]
    kv = model.new_kv(len(seq))
    h = model.forward(Varlen.make([seq[:33]], [0], [0]), kv)
    assert torch.equal(model.logits(h[-1:])[0], full[32])
    for t in range(33, len(seq)):
        h = model.forward(Varlen.make([[seq[t]]], [t], [0]), kv)
        assert torch.equal(model.logits(h)[0], full[t]), t


# ---------------------------------------------------------------------------------------------
# samplers and scoring on CUDA against the C++ code

def logits_and_params(M: int, V: int, seed: int):
    """Rows that stress the sampler: ties (values on a coarse grid), a very peaked row, and
    parameters covering greedy, top-k, top-p, both, and large seeds and positions."""
    g = torch.Generator().manual_seed(seed)
    l = torch.randn(M, V, generator=g) * 3
    l[::3] = (l[::3] * 2).round() / 2          # many exact ties
    l[-1, V // 2] = 40.0                        # one dominant token
    rng = random.Random(seed)
    T = torch.tensor([rng.choice([0.0, 0.3, 0.8, 1.0, 1.7]) for _ in range(M)])
    k = torch.tensor([rng.choice([0, 1, 5, 50, V]) for _ in range(M)])
    p = torch.tensor([rng.choice([1.0, 0.95, 0.5, 0.05]) for _ in range(M)])
    s = [rng.getrandbits(64) for _ in range(M)]
    pos = torch.tensor([rng.choice([0, 1, 17, 4095, 2 ** 31 + 5]) for _ in range(M)])
    return l.float().contiguous(), T, k, p, s, pos


def _as_int64_bits(seeds: list[int]) -> torch.Tensor:
    return torch.tensor([x - (1 << 64) if x >= 1 << 63 else x for x in seeds], dtype=torch.int64)


def _cuda_args(l, T, k, p, s, pos):
    dev = "cuda"
    return (l.to(dev), T.float().to(dev), k.to(dev, torch.int64), p.float().to(dev),
            _as_int64_bits(s).to(dev), pos.to(dev, torch.int64))


def _needs(name: str):
    # These tests run only where CUDA is: there, an extension without its CUDA kernels is a
    # broken build, not a reason to skip.
    assert hasattr(C(), name), (
        f"replay._C has no {name}: the extension was built without its CUDA sources (nvcc not "
        "found, or REPLAY_SKIP_CUDA_BUILD=1); rebuild with `python setup.py build_ext --inplace` "
        "on a machine with the CUDA toolkit")


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("M,V", [(1, 7), (33, 509), (64, 32000), (8, 128256)])
def test_cuda_score_matches_cpp(M, V, bf16):
    _needs("score_cuda_f32")
    l, T, k, p, s, pos = logits_and_params(M, V, seed=M + V)
    if bf16:  # the CUDA kernel reads bf16 rows; the C++ code gets the same values in float32
        l = l.bfloat16().float()
    claimed = torch.randint(0, V, (M,), generator=torch.Generator().manual_seed(V))
    claimed[::2] = sampling.sample(l, T, k, p, s, pos)[::2]  # half the claims are honest
    ref = sampling.score(l, T, k, p, s, pos, claimed)

    lc, Tc, kc, pc, sc, posc = _cuda_args(l, T, k, p, s, pos)
    if bf16:
        lc = lc.bfloat16()
    cc = claimed.cuda()
    out = dict(choice=torch.empty(M, dtype=torch.int64), logprob=torch.empty(M),
               rank=torch.empty(M, dtype=torch.int64), in_top_k=torch.empty(M, dtype=torch.bool),
               in_top_p=torch.empty(M, dtype=torch.bool), margin=torch.empty(M),
               kept=torch.empty(M, dtype=torch.int64))
    out = {n: t.cuda() for n, t in out.items()}
    stream = torch.cuda.current_stream().cuda_stream
    C().score_cuda_f32(lc.data_ptr(), M, V, lc.stride(0), Tc.data_ptr(), kc.data_ptr(),
                       pc.data_ptr(), sc.data_ptr(), posc.data_ptr(), cc.data_ptr(),
                       *(out[n].data_ptr() for n in ("choice", "logprob", "rank", "in_top_k",
                                                     "in_top_p", "margin", "kept")),
                       stream=stream, bf16=bf16)
    torch.cuda.synchronize()
    out = {n: t.cpu() for n, t in out.items()}
    # Sampled tokens, verdicts and scores: identical. The per-row math is written once for both
    # sides from IEEE-exact operations (csrc/common), and the two float sums run in the
    # definition's order on both (csrc/cuda/score.cu), so even logprob and margin (+inf where the
    # claim was filtered out) agree bit for bit.
    for n in ("choice", "rank", "in_top_k", "in_top_p", "kept", "logprob", "margin"):
        assert torch.equal(out[n], ref[n]), n
    assert torch.equal(out["choice"] == claimed, ref["exact"])


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("M,V", [(1, 7), (33, 509), (64, 128256)])
def test_sampling_on_cuda_matches_cpp(M, V, bf16):
    """replay.sampling's public functions on CUDA logits (the path the engine and the verifier
    take: ops.sampler_kernel picks csrc/cuda/score.cu) against the C++ sampler on the same
    values."""
    _needs("sample_cuda_f32")
    l, T, k, p, s, pos = logits_and_params(M, V, seed=7 * M + V)
    if bf16:
        l = l.bfloat16().float()
    lc = l.cuda().bfloat16() if bf16 else l.cuda()
    want = sampling.sample(l, T, k, p, s, pos)
    assert torch.equal(sampling.sample(lc, T, k, p, s, pos).cpu(), want)
    claimed = torch.randint(0, V, (M,), generator=torch.Generator().manual_seed(M))
    want = sampling.score(l, T, k, p, s, pos, claimed)
    got = sampling.score(lc, T, k, p, s, pos, claimed)
    for n, w in want.items():
        assert torch.equal(got[n].cpu(), w), n


# ---------------------------------------------------------------------------------------------
# a forward without host syncs, and in a CUDA graph

def _mixed_batch(model, long_context: int):
    """A prefill, a chunk after a cached prefix and two decode steps, one of them deep enough
    (past SPLIT keys) that attention takes its split-program path."""
    g = torch.Generator().manual_seed(5)
    V = model.cfg.vocab_size
    chunks = [torch.randint(0, V, (n,), generator=g).tolist() for n in (97, 17, 1, 1)]
    pos0 = [0, 40, 63, long_context]
    kv_start = [0, 100, 200, 300]
    kv = model.new_kv(300 + long_context + 1)
    for t in kv.k + kv.v:  # the cached prefixes
        t.normal_(generator=torch.Generator(device="cuda").manual_seed(6))
    return Varlen.make(chunks, pos0, kv_start), kv


@pytest.fixture(scope="module")
def deep_model() -> Model:
    return Model.random(ModelConfig.preset("test-small", max_context=4096), seed=2, std=0.2, device="cuda",
                        dtype=torch.bfloat16)


def test_forward_makes_no_device_sync(deep_model):
    """The whole forward, its planning included (host tables, one non-blocking copy each), runs
    under torch.cuda.set_sync_debug_mode("error"): any read-back or blocking copy raises."""
    batch, kv = _mixed_batch(deep_model, 3000)
    want = deep_model.forward(batch, kv)  # compiles the kernels first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = deep_model.forward(batch, kv)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(got, want)


def test_forward_runs_in_a_cuda_graph(deep_model):
    """A planned forward is captured once and replayed: the bits of an eager forward."""
    batch, kv = _mixed_batch(deep_model, 3000)
    plan = deep_model.plan(batch, kv)
    eager = deep_model.forward(plan, kv).clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as torch's docs ask
        deep_model.forward(plan, kv)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = deep_model.forward(plan, kv)
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)
