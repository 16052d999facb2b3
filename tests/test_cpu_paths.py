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
    # spreads past 87 (gaps to the max up to ~170 in attention): exps in the subnormals and at
    # rp_exp's -104 clamp, exp_nonpos's slow scaling (lanes.inc), in the row ops, the sampler's
    # scores and attention; 93 = 64 + 16 + 13 takes exp_shifted's three loops
    out["log_softmax_wide"] = ops.log_softmax(randn(3, 93, seed=12, scale=60))
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
    out["attention_wide"] = ops.attention(q * 24, kb, vb, cu, torch.tensor(pos0),
                                          torch.tensor(starts))
    logits = randn(6, 777, seed=11, scale=3)
    kw = dict(temperature=[0, 0.7, 1.0, 1.3, 0.9, 2.0], top_k=[0, 0, 50, 0, 5, 0],
              top_p=[1, 0.9, 1, 0.5, 0.95, 0.3], seed=[1, 2, 3, 4, 5, 2 ** 64 - 1],
              position=[0, 1, 2, 3, 4, 5])
    out["sample"] = sampling.sample(logits, **kw)
    for k, v in sampling.score(logits, claimed=[1, 2, 3, 4, 5, 6], **kw).items():
        out["score_" + k] = v
    for k, v in sampling.score(logits * 40, claimed=[1, 2, 3, 4, 5, 6], **kw).items():
        out["score_wide_" + k] = v
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


def _f32(bits):
    """float32 of the given 32-bit patterns (ints or an int64 tensor, 0 .. 2**32 - 1)."""
    t = torch.as_tensor(bits, dtype=torch.int64)
    return ((t + 2 ** 31) % 2 ** 32 - 2 ** 31).to(torch.int32).view(torch.float32)


def _bits(v: float) -> int:
    return int(torch.tensor([v]).view(torch.int32)) % 2 ** 32


def _softmax_exp_inputs():
    """Arguments of a softmax's exps (<= 0 or NaN) where exp_nonpos (lanes.inc) could go wrong:
    random negative floats of every exponent; every float of [-87.1, -86.9] (n = rint(x log2e)
    goes from -125 to -126 at -86.99: the exponent-field add stops there) and of [-87.5, -87.2]
    (n = -126, results leave the normal range at -87.34); NaNs of both signs, quiet and
    signalling; the range's edges."""
    bits = torch.randint(0, 2 ** 31, (1 << 16,), generator=torch.Generator().manual_seed(40))
    dense = torch.cat([torch.arange(_bits(-86.9), _bits(-87.1) + 1),
                       torch.arange(_bits(-87.2), _bits(-87.5) + 1)])
    nans = [0x7fc00000, 0x7f800001, 0x7fbfffff, 0xffc00000, 0xff800001, 0xffc12345, 0x7fc0beef]
    edges = torch.tensor([0.0, -0.0, -1e-45, -1e-38, -1.1754944e-38, -1e-7, -0.3465736, -0.5,
                          -1.0, -87.33654, -87.33655, -103.97, -103.972, -104.0, -104.00001,
                          -105.0, -150.0, -1e30, -3.4028235e38, -float("inf")])
    return torch.cat([_f32(bits + 2 ** 31), _f32(dense), _f32(nans), edges])


def _rp_exp_bits(x, softmax_exp):
    out = torch.empty_like(x)
    if softmax_exp:
        C().exp_nonpos_f32(x.data_ptr(), out.data_ptr(), x.numel())
    else:  # one scalar rp_exp call at a time
        C().exp_simd_f32(x.data_ptr(), out.data_ptr(), x.numel(), False)
    return out.view(torch.int32)


def test_softmax_exp_has_rp_exp_bits_on_every_path(path):
    """exp_nonpos, the exp of the attention / log-softmax / sampler softmaxes, gives rp_exp's bits
    on its range on every path: over the whole array (4 vectors at a time) and over short
    slices at odd offsets (one vector, the padded tail)."""
    x = _softmax_exp_inputs()
    ref = _rp_exp_bits(x, False)
    assert (ref.view(torch.float32) == 0).any() and (ref.view(torch.float32) < 1.2e-38).any()
    for isa in range(C().cpu_isa() + 1):
        path(isa)
        assert torch.equal(_rp_exp_bits(x, True), ref), ISAS[isa]
        for n in (1, 7, 15, 16, 17, 63, 64, 65, 100):
            for off in (3, 40000, x.numel() - n):
                assert torch.equal(_rp_exp_bits(x[off:off + n].clone(), True), ref[off:off + n]), \
                    (ISAS[isa], n, off)


@pytest.mark.slow
def test_softmax_exp_has_rp_exp_bits_over_every_input(path):
    """Every float32 with the sign bit set (-0, the negatives, -inf, the negative NaNs), +0 and
    the positive NaNs: exp_nonpos's bits are rp_exp's, on each vector path this CPU supports
    (the scalar path's exp_nonpos is rp_exp itself)."""
    chunk = 1 << 26
    for start in range(1 << 31, 1 << 32, chunk):
        x = _f32(torch.arange(start, start + chunk))
        ref = _rp_exp_bits(x, False)
        for isa in range(1, C().cpu_isa() + 1):
            path(isa)
            assert torch.equal(_rp_exp_bits(x, True), ref), (ISAS[isa], hex(start))
    x = _f32([0] + list(range(0x7f800001, 0x80000000, 97)) + [0x7fffffff])
    for isa in range(1, C().cpu_isa() + 1):
        path(isa)
        assert torch.equal(_rp_exp_bits(x, True), _rp_exp_bits(x, False)), ISAS[isa]


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
