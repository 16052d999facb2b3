"""The CPU kernels' code paths (csrc/cpu/kernels.h): one build runs on any x86-64, and every path
gives the same bits.

- Each path this CPU supports (scalar always; AVX2, AVX-512 where present) runs every op and the
  whole model with the bits of the default path (the matmul's tile schedules: test_cpu_kernels).
- REPLAY_CPU_ISA caps the path at import, and a wrong value is a clear error.
- No baseline code uses an AVX instruction: only functions of the replay::avx2 / replay::avx512
  namespaces do, so a CPU without AVX never reaches one (disassembly of replay._C).
"""
import functools
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from replay import ops, sampling
from replay._ext import C, ISAS
from replay.model import Model, ModelConfig


def randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def every_op():
    """The outputs of every CPU kernel on awkward shapes (row ops, attention, sampler, model)."""
    out = {}
    x, r, w = randn(37, 100, seed=1), randn(37, 100, seed=2), randn(100, seed=3)
    out["rms_norm"] = ops.rms_norm(x, w, 1e-6)
    out["add_rms_norm"] = torch.cat(ops.add_rms_norm(x, r, w, 1e-5))
    out["silu_mul"] = ops.silu_mul(randn(9, 2 * 333, seed=4, scale=4))
    out["log_softmax"] = ops.log_softmax(randn(5, 1031, seed=5, scale=5))
    q = randn(37, 3, 64, seed=6)
    cos, sin = torch.cos(randn(64, 32, seed=7)), torch.sin(randn(64, 32, seed=8))
    ops.rope_(q, torch.arange(37) % 64, cos, sin)
    out["rope"] = q
    lens, pos0, starts = [1, 20, 16], [0, 5, 70], [0, 30, 100]
    T, R = sum(lens), 200
    kb, vb = randn(R, 1, 64, seed=9), randn(R, 1, 64, seed=10)
    cu = torch.tensor([0, 1, 21, 37])
    out["attention"] = ops.attention(q, kb, vb, cu, torch.tensor(pos0), torch.tensor(starts))
    out["attention_window"] = ops.attention(q, kb, vb, cu, torch.tensor(pos0),
                                            torch.tensor(starts), window=7)
    logits = randn(6, 777, seed=11, scale=3)
    kw = dict(temperature=[0, 0.7, 1.0, 1.3, 0.9, 2.0], top_k=[0, 0, 50, 0, 5, 0],
              top_p=[1, 0.9, 1, 0.5, 0.95, 0.3], seed=[1, 2, 3, 4, 5, 2 ** 64 - 1],
              position=[0, 1, 2, 3, 4, 5])
    out["sample"] = sampling.sample(logits, **kw)
    for k, v in sampling.score(logits, claimed=[1, 2, 3, 4, 5, 6], **kw).items():
        out["score_" + k] = v
    model = Model.random(ModelConfig.preset("test-small"), seed=2, std=0.2)
    for i, lg in enumerate(model([[3, 1, 4, 1, 5], list(range(70))])):
        out[f"model_{i}"] = lg
    return out


@pytest.fixture
def path():
    """Selects a code path inside a test and restores the default afterwards."""
    before = C().isa()
    yield C().select_isa
    C().select_isa(before)


def test_every_supported_path_gives_the_same_bits(path):
    ref = every_op()
    assert C().cpu_isa() >= 1, "this suite's machines have AVX2 at least"
    for isa in range(C().cpu_isa() + 1):
        path(isa)
        assert C().isa_name() == ISAS[isa]
        got = every_op()
        for k in ref:
            assert torch.equal(got[k], ref[k]), (ISAS[isa], k)


def test_unsupported_path_is_refused(path):
    if C().cpu_isa() == 2:
        pytest.skip("this CPU supports every path")
    with pytest.raises(ValueError, match="not supported by this CPU"):
        path(C().cpu_isa() + 1)


def _isa_in_subprocess(value):
    env = dict(os.environ, REPLAY_CPU_ISA=value)
    return subprocess.run([sys.executable, "-c", "from replay._ext import C; print(C().isa_name())"],
                          env=env, capture_output=True, text=True, timeout=120)


def test_environment_caps_the_path():
    r = _isa_in_subprocess("scalar")
    assert r.returncode == 0 and r.stdout.strip() == "scalar", r.stderr
    r = _isa_in_subprocess("avx512")  # a cap, not a demand: never above what the CPU has
    assert r.returncode == 0 and r.stdout.strip() == ISAS[C().cpu_isa()], r.stderr
    r = _isa_in_subprocess("sse9")
    assert r.returncode != 0 and "REPLAY_CPU_ISA='sse9'" in r.stderr


_AVX = re.compile(r"%[yz]mm|%k[0-7]")
_PATHS = r"replay::avx(2|512)::"


@functools.lru_cache(maxsize=1)
def _disassembly() -> str:
    import replay._C as ext
    return subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", ext.__file__],
                          capture_output=True, text=True, check=True).stdout


def avx_functions(exempt: str | None) -> dict[str, str]:
    """function -> its first AVX instruction, for the functions of replay._C whose demangled
    name does not match `exempt`."""
    head = re.compile(r"^[0-9a-f]+ <(.*)>:$")
    fn, found = "", {}
    for line in _disassembly().splitlines():
        m = head.match(line)
        if m:
            fn = m.group(1)
            continue
        parts = line.split("\t")
        if len(parts) < 2 or not parts[1].strip():
            continue
        ins = parts[1].strip()
        # VEX/EVEX-encoded instructions (AVX and later) are the ones whose mnemonic starts with v
        if (ins.split()[0].startswith("v") or _AVX.search(ins)) and not (
                exempt and re.search(exempt, fn)):
            found.setdefault(fn, ins)
    return found


needs_objdump = pytest.mark.skipif(shutil.which("objdump") is None,
                                   reason="needs objdump (binutils)")


@needs_objdump
def test_baseline_code_has_no_avx_instructions():
    if os.environ.get("REPLAY_NATIVE") == "1":
        pytest.skip("built with REPLAY_NATIVE=1 (-march=native): runs on this CPU only")
    bad = avx_functions(exempt=_PATHS)
    assert not bad, f"AVX instructions outside the AVX paths: {list(bad.items())[:5]}"


@needs_objdump
def test_the_disassembly_check_can_fail():
    """Without the exemption, the check finds the AVX2 path's own matmul kernel."""
    found = avx_functions(exempt=None)
    assert any(k.startswith("void replay::avx2::micro<float, 6, 1, 1, ") for k in found)
