"""Kernel benchmarks: replay's matmul and attention against torch's (cuBLAS, SDPA), side by side in
one run on the same inputs.

Matmul: on CUDA the replay side is replay.ops.linear (what the model runs; CUDA tensors go to the
Triton kernel). Attention: the Triton kernel itself against SDPA, and replay.ops.attention (the
kernel plus the argument checks the model pays for) in a second column; both planned once, as a
model plans once per forward.
In a dry run the Triton wrappers run in the Triton interpreter (TRITON_INTERPRET=1) on tiny
float32 CPU tensors, and replay.ops sends CPU tensors to the C++ kernels.
"""
from __future__ import annotations

import importlib
import importlib.util
import math

import torch
import torch.nn.functional as F

from gpu.util import Section, num, ratio, time_fn

# Llama-3.1-8B projections, (name, K, N): y[M, N] = x[M, K] @ w[N, K].T
LLAMA8B_LINEARS = [("qkv", 4096, 6144), ("o", 4096, 4096), ("gate_up", 4096, 28672),
                   ("down", 14336, 4096), ("lm_head", 4096, 128256)]
DRY_LINEARS = [("qkv", 64, 128), ("down", 96, 64)]

HQ, HKV, HEAD_DIM = 32, 8, 128  # Llama-3.1-8B attention: 32 query heads, 8 KV heads (GQA)


def triton_op(module: str, name: str):
    """The Triton wrapper replay.kernels.<module>.<name>, or (None, reason)."""
    if importlib.util.find_spec("triton") is None:
        return None, "triton is not installed"
    try:
        mod = importlib.import_module(f"replay.kernels.{module}")
    except ImportError as e:
        return None, f"replay.kernels.{module} cannot be imported ({e})"
    fn = getattr(mod, name, None)
    if fn is None:
        return None, f"replay.kernels.{module} has no function {name!r}"
    return fn, None


def replay_side(ctx, module: str, kernel: str, op: str):
    """(fn, reason): replay.ops.<op> on CUDA; the Triton wrapper replay.kernels.<module>.<kernel>
    in a dry run (both take the arguments of the replay.ops function)."""
    if ctx.device.type == "cuda":
        from replay import ops
        return getattr(ops, op), None
    return triton_op(module, kernel)


# ---------------------------------------------------------------------------------------------
# matmul

def bench_matmul(ctx) -> Section:
    sec = Section("matmul", "Matmul: replay (Triton, batch-invariant) vs torch.mm (cuBLAS)",
                  ["shape (K->N)", "M", "replay TFLOP/s", "cuBLAS TFLOP/s", "replay/cuBLAS",
                   "replay rows invariant", "cuBLAS rows invariant"])
    sec.notes.append(
        f"{ctx.dtype_name}, y = x @ w.T. TFLOP/s = 2*M*N*K / time; time is the best of 3 means "
        f"of {ctx.iters} calls after {ctx.warmup} warm-up calls (CUDA events on a GPU). 'rows "
        "invariant': "
        "the first row of the M-row product equals (torch.equal) the product of that row alone. "
        "Target: replay/cuBLAS >= 0.9x at M >= 256.")
    linear, why = replay_side(ctx, "matmul", "matmul", "linear")
    if linear is None:
        sec.skipped = why
        return sec
    shapes = DRY_LINEARS if ctx.dry else LLAMA8B_LINEARS
    if ctx.first and not ctx.dry:  # the first run: three projections, decode to long prefill
        shapes = [s for s in LLAMA8B_LINEARS if s[0] in ("qkv", "gate_up", "down")]
    Ms = [1, 3, 17] if ctx.dry else ([1, 256, 4096] if ctx.quick or ctx.first else
                                     [1, 16, 64, 256, 1024, 4096, 8192])
    g = torch.Generator(device=ctx.device).manual_seed(0)
    try:
        for name, K, N in shapes:
            w = torch.randn(N, K, device=ctx.device, dtype=ctx.dtype, generator=g) / math.sqrt(K)
            for M in Ms:
                if ctx.budget.out():
                    sec.notes.append(f"Stopped at {name} M={M}: time budget spent.")
                    return sec
                sec.rows.append([f"{name} {K}->{N}", M] + _matmul_point(ctx, linear, w, M, g))
            ctx.free()
    except Exception as e:  # keep the rows measured so far
        sec.fail(e)
    return sec


def _matmul_point(ctx, linear, w, M: int, g) -> list:
    N, K = w.shape
    x = torch.randn(M, K, device=ctx.device, dtype=ctx.dtype, generator=g)
    t_r = time_fn(lambda: linear(x, w), ctx.device, ctx.warmup, ctx.iters)
    t_c = time_fn(lambda: torch.mm(x, w.t()), ctx.device, ctx.warmup, ctx.iters)
    inv_r = torch.equal(linear(x, w)[:1], linear(x[:1], w))
    inv_c = torch.equal(torch.mm(x, w.t())[:1], torch.mm(x[:1], w.t()))
    fl = 2.0 * M * N * K
    return [num(fl / t_r / 1e12), num(fl / t_c / 1e12), ratio(t_c, t_r), _yn(inv_r), _yn(inv_c)]


def _yn(b: bool) -> str:
    return "yes" if b else "no"


# ---------------------------------------------------------------------------------------------
# attention

def _rand(ctx, g, *shape):
    return torch.randn(*shape, device=ctx.device, dtype=ctx.dtype, generator=g)


def _sdpa(q, k, v, causal: bool):
    """torch's SDPA with GQA (flash on CUDA where it applies)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)


def _attn_point(ctx, kernel, g, B: int, L: int, heads: tuple, decode: bool):
    """Seconds per call of replay's attention kernel, of replay.ops.attention and of SDPA on the
    same data, and the largest difference between the kernel's output and SDPA's (a broken kernel
    shows here before anywhere else).

    B sequences of L tokens whose keys and values sit packed in one buffer, as replay lays them
    out; SDPA reads (B, H, L, D) views of the same memory. Prefill: every token is a query.
    Decode: one query per sequence, at position L - 1, which sees every key (no mask)."""
    from replay import ops

    hq, hkv, d = heads
    n_q = 1 if decode else L
    dev, i64 = ctx.device, torch.int64
    q = _rand(ctx, g, B * n_q, hq, d)                             # (T, Hq, D)
    k, v = _rand(ctx, g, B * L, hkv, d), _rand(ctx, g, B * L, hkv, d)  # (B*L, Hkv, D)
    cu = torch.arange(B + 1, device=dev, dtype=i64) * n_q
    pos0 = torch.full((B,), L - n_q, device=dev, dtype=i64)
    kv_start = torch.arange(B, device=dev, dtype=i64) * L
    qs = q.view(B, n_q, hq, d).transpose(1, 2)                    # (B, Hq, n_q, D)
    ks = k.view(B, L, hkv, d).transpose(1, 2)                     # (B, Hkv, L, D)
    vs = v.view(B, L, hkv, d).transpose(1, 2)
    scale = 1.0 / math.sqrt(d)

    # Planned once, as a model does per forward (the tile table from host-side lengths), so
    # that neither timed call reads lengths back from the device.
    plan = ops.plan_attention(cu.cpu(), pos0.cpu(), kv_start.cpu(), dev)
    from replay.kernels.attention import ATTENTION_CONFIGS, plan as plan_tiles
    tiles = plan_tiles(cu.cpu(), pos0.cpu(), dev, ATTENTION_CONFIGS[ctx.dtype])

    def ours():
        return kernel(q, k, v, cu, pos0, kv_start, scale, 0, tiles=tiles)

    def via_ops():
        return ops.attention(q, k, v, scale=scale, plan=plan)

    def theirs():
        return _sdpa(qs, ks, vs, not decode)

    t_r = time_fn(ours, dev, ctx.warmup, ctx.iters)
    t_o = time_fn(via_ops, dev, ctx.warmup, ctx.iters)
    t_s = time_fn(theirs, dev, ctx.warmup, ctx.iters)
    diff = (ours().float() - theirs().transpose(1, 2).reshape(B * n_q, hq, d).float()).abs().max()
    return t_r, t_o, t_s, float(diff)


def _heads(ctx) -> tuple:
    """(query heads, KV heads, head dim) of the attention sections: Llama-3.1-8B's, or small."""
    return (4, 2, 16) if ctx.dry else (HQ, HKV, HEAD_DIM)


def _attn_section(ctx, sec: Section, heads: tuple, grid, decode: bool, seed: int, row
                  ) -> Section:
    """sec's rows: row(B, L, *_attn_point(...)) at each (batch B, context L) of grid, until the
    time budget is spent; skipped when the Triton kernel cannot be imported."""
    attention, why = triton_op("attention", "attention")
    if attention is None:
        sec.skipped = why
        return sec
    g = torch.Generator(device=ctx.device).manual_seed(seed)
    try:
        for B, L in grid:
            if ctx.budget.out():
                sec.notes.append(f"Stopped at batch {B}, context {L}: time budget spent.")
                return sec
            sec.rows.append(row(B, L, *_attn_point(ctx, attention, g, B, L, heads, decode)))
            ctx.free()
    except Exception as e:
        sec.fail(e)
    return sec


def bench_prefill(ctx) -> Section:
    sec = Section("prefill", "Attention prefill: replay vs torch SDPA (causal, GQA)",
                  ["context", "sequences", "replay TFLOP/s", "SDPA TFLOP/s", "replay/SDPA",
                   "ops.attention/SDPA", "max abs diff"])
    hq, hkv, d = heads = _heads(ctx)
    total = 48 if ctx.dry else 16384
    sec.notes.append(
        f"{ctx.dtype_name}, {hq} query heads, {hkv} KV heads, head dim {d}; sequences of one "
        f"length packed, {total:,} tokens in all. replay's Triton kernel runs on the packed batch "
        "(cu_q, pos0 = 0, kv_start = cu_q); SDPA runs on (B, H, L, D) views of the same "
        "data with is_causal and enable_gqa. TFLOP/s counts the causal half: "
        "4 * B * Hq * D * L * (L + 1) / 2. 'ops.attention/SDPA': the same through replay.ops, "
        "with the checks the model pays for (both planned once, as per forward). 'max abs "
        "diff': the kernel's output "
        "against SDPA's. Target: replay/SDPA >= 0.8x.")
    Ls = [16, 32] if ctx.dry else ([512, 2048, 8192] if ctx.quick else
                                   [512, 1024, 2048, 4096, 8192])

    def row(B, L, t_r, t_o, t_s, diff):
        fl = 4.0 * B * hq * d * L * (L + 1) / 2
        return [L, B, num(fl / t_r / 1e12), num(fl / t_s / 1e12), ratio(t_s, t_r),
                ratio(t_s, t_o), f"{diff:.2e}"]
    return _attn_section(ctx, sec, heads, [(max(1, total // L), L) for L in Ls], False, 1, row)


def bench_decode(ctx) -> Section:
    sec = Section("decode", "Attention decode: replay vs torch SDPA (one query per sequence)",
                  ["batch", "context", "replay GB/s", "SDPA GB/s", "replay/SDPA",
                   "ops.attention/SDPA", "max abs diff"])
    hq, hkv, d = heads = _heads(ctx)
    cap = 1 << 22  # KV rows: 4M rows of 8 x 128 bf16 keys and values is 16 GiB
    sec.notes.append(
        f"{ctx.dtype_name}, {hq}/{hkv} heads, head dim {d}. Each sequence has `context` tokens in "
        "the KV buffer and one new query at the last position. replay's kernel runs with "
        "cu_q = 0..B, pos0 = context - 1 (and again through replay.ops); SDPA runs on (B, H, 1, D) x (B, Hkv, context, D) views "
        "of the same buffers. GB/s = bytes of K and V read / time (decode is bandwidth-bound). "
        f"Points with batch x context > {cap:,} rows are left out (memory).")
    if ctx.dry:
        grid = [(1, 16), (3, 32)]
    else:
        bs = [1, 16, 256] if ctx.quick else [1, 4, 16, 64, 256]
        cs = [512, 4096, 32768] if ctx.quick else [512, 2048, 8192, 32768]
        grid = [(b, c) for b in bs for c in cs if b * c <= cap]
    esize = torch.tensor([], dtype=ctx.dtype).element_size()

    def row(B, L, t_r, t_o, t_s, diff):
        nbytes = 2.0 * B * L * hkv * d * esize
        return [B, L, num(nbytes / t_r / 1e9), num(nbytes / t_s / 1e9), ratio(t_s, t_r),
                ratio(t_s, t_o), f"{diff:.2e}"]
    return _attn_section(ctx, sec, heads, grid, True, 2, row)
