"""Golden digests: the bits of replay's CPU kernels, pinned across machines.

The invariance tests compare one machine against itself (M, threads, the ISAs it has). These
compare every machine against committed values: SHA-256 of the output bytes of each kernel on
fixed inputs, in tests/golden/cpu.json. Inputs are built from integers (numpy's PCG64, then an
exact power-of-two scale), so they are the same bits everywhere; a machine whose scalar, AVX2
or AVX-512 path, compiler or libm gives other bits fails here by name.

The digests change only when replay's arithmetic is changed on purpose (a new replay version,
whose records are then another kernel stack). To rewrite them after such a change:
    REPLAY_WRITE_GOLDEN=1 python -m pytest tests/test_golden.py
and say why in the commit.
"""
import hashlib
import json
import os

import numpy as np
import pytest
import torch

import replay
from replay import ops, sampling
from replay._ext import C, ISAS
from replay.model import Model, ModelConfig

PATH = os.path.join(os.path.dirname(__file__), "golden", "cpu.json")
WRITE = os.environ.get("REPLAY_WRITE_GOLDEN") == "1"


def ints(seed: int, *shape, bits: int = 20, scale: float = 1.0) -> torch.Tensor:
    """Float32 values k * 2^-bits * scale, k uniform in [-2^bits, 2^bits): exact on every machine
    (scale a power of two)."""
    k = np.random.default_rng(seed).integers(-2 ** bits, 2 ** bits, size=shape, dtype=np.int64)
    return torch.from_numpy((k.astype(np.float64) * (2.0 ** -bits) * scale).astype(np.float32))


def digest(*ts) -> str:
    h = hashlib.sha256()
    for t in ts:
        t = t.detach().contiguous()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _linear(M, N, K, bias):
    x, w = ints(M * 7 + K, M, K), ints(N * 11 + K, N, K, scale=0.25)
    b = ints(N, N) if bias else None
    return ops.linear(x, w, b)


def _attention(window, D=64):
    T, Hq, Hkv = 60, 4, 2
    q, k, v = ints(1, T, Hq, D), ints(2, 300, Hkv, D), ints(3, 300, Hkv, D)
    cu, pos0, start = torch.tensor([0, 20, 23, 60]), torch.tensor([0, 140, 60]), \
        torch.tensor([150, 0, 190])
    return ops.attention(q, k, v, cu, pos0, start, window=window)


def _sampler_rows():
    logits = ints(5, 12, 1031, scale=8.0)
    T = [0.0, 0.7, 1.0, 1.3] * 3
    k = [0, 0, 5, 50, 0, 1, 0, 7, 0, 0, 100, 3]
    p = [1.0, 0.9, 1.0, 0.5, 0.95, 1.0, 0.3, 1.0, 1.0, 0.8, 0.99, 1.0]
    seed = [0, 1, 2 ** 32 + 5, 2 ** 64 - 1, 7, 8, 9, 10, 11, 12, 13, 14]
    pos = [0, 1, 17, 2 ** 31, 5, 6, 7, 8, 9, 10, 11, 4000]
    return logits, (T, k, p, seed, pos)


def _score():
    logits, params = _sampler_rows()
    sc = sampling.score(logits, *params, claimed=list(range(0, 1031, 86))[:12])
    return [sc[c] for c in ("choice", "logprob", "rank", "in_top_k", "in_top_p", "margin", "kept")]


def _model(model):
    prompts = [[1, 5, 9, 200, 13], list(range(3, 70, 3)), [7]]
    return model(prompts)


def _tiny():
    return _model(Model.from_pretrained(replay.TINY_MODEL))


def _random_model():
    cfg = ModelConfig(arch="qwen3", vocab_size=509, hidden_size=64, n_layers=2, n_heads=4,
                      n_kv_heads=2, intermediate_size=96, rms_norm_eps=1e-5, max_context=384,
                      tie_embeddings=True)
    return _model(Model.random(cfg, seed=3, std=0.2))


CASES = {
    **{f"linear_{M}x{N}x{K}{'_bias' if b else ''}": (lambda M=M, N=N, K=K, b=b: _linear(M, N, K, b))
       for M, N, K, b in [(1, 1, 1, False), (3, 5, 15, True), (17, 37, 16, False),
                          (97, 13, 257, True), (5, 70, 100, False), (64, 48, 1031, True)]},
    "rms_norm": lambda: ops.rms_norm(ints(6, 17, 1000, scale=4.0), ints(7, 1000), 1e-5),
    "add_rms_norm": lambda: ops.add_rms_norm(ints(8, 5, 97), ints(9, 5, 97), ints(10, 97), 1e-6),
    "silu_mul": lambda: ops.silu_mul(ints(11, 5, 600, scale=8.0)),
    "rope": lambda: ops.rope_(ints(12, 9, 3, 32), torch.tensor([0, 7, 49, 3, 3, 12, 1, 30, 8]),
                              ints(13, 50, 16), ints(14, 50, 16)),
    "log_softmax": lambda: ops.log_softmax(ints(15, 3, 4099, scale=16.0)),
    "attention": lambda: _attention(0),
    "attention_window": lambda: _attention(50),
    # head dim 32 runs the register path since 7cf603e; this digest was written by the build
    # before it (da42b50), whose generic path ran D = 32: the two paths give the same bits
    "attention_d32_window": lambda: _attention(50, D=32),
    "sample": lambda: sampling.sample(*(lambda l, p: (l, *p))(*_sampler_rows())),
    "score": _score,
    "gumbel": lambda: sampling.gumbel(2 ** 64 - 3, 123456, 4099),
    "philox": lambda: sampling.philox4x32_10([[i, 2 * i, 3, 2 ** 32 - 1 - i] for i in range(64)],
                                             [[i * 7919, 2 ** 31 + i] for i in range(64)]),
    "model_tiny": _tiny,
    "model_qwen3_random": _random_model,
}


def _out(name):
    out = CASES[name]()
    out = out if isinstance(out, (list, tuple)) else [out]
    return digest(*out)


@pytest.fixture(scope="module")
def golden():
    if WRITE:
        d = {name: _out(name) for name in CASES}
        os.makedirs(os.path.dirname(PATH), exist_ok=True)
        with open(PATH, "w") as f:
            json.dump(d, f, indent=1, sort_keys=True)
            f.write("\n")
    with open(PATH) as f:
        return json.load(f)


def test_golden_covers_every_case(golden):
    assert sorted(golden) == sorted(CASES)


@pytest.fixture(params=ISAS)
def path(request):
    """Each code path of the CPU kernels (scalar, AVX2, AVX-512): selected for the test, restored
    after it; skipped where this CPU lacks it."""
    isa = ISAS.index(request.param)
    if isa > C().cpu_isa():
        pytest.skip(f"this CPU has no {request.param} path")
    before = C().isa()
    C().select_isa(isa)
    yield request.param
    C().select_isa(before)


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_bits_match_golden(golden, name, path):
    assert _out(name) == golden[name], f"{name} on {path}: other bits than the golden digest"


@pytest.mark.parametrize("M,N,K,bias", [(3, 5, 15, True), (97, 13, 257, True),
                                        (64, 48, 1031, True)])
def test_linear_every_schedule_matches_golden(golden, M, N, K, bias, path):
    """Each register-tile schedule of the matmul (AVX2's 6 x 16 and 4 x 16, AVX-512's 12 x 32) on each code
    path gives the golden bits, not only the one this machine picks."""
    x, w, b = ints(M * 7 + K, M, K), ints(N * 11 + K, N, K, scale=0.25), ints(N, N)
    want = golden[f"linear_{M}x{N}x{K}_bias"]
    wp, bp = ops.pack_linear(w), torch.nn.functional.pad(b, (0, -N % 16))
    assert C().linear_schedules == 3
    for sched in range(C().linear_schedules):
        out = torch.empty(M, N)
        C().linear_sched(x.data_ptr(), M, wp.data.data_ptr(), bp.data_ptr(), N, K, out.data_ptr(),
                         ISAS.index(path), sched)
        assert digest(out) == want, f"{path}, schedule {sched}"
