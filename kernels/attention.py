"""Causal varlen attention of packed query chunks over a KV buffer, batch-invariant.

Every query row runs one code path, in prefill, chunked prefill and decode alike:

    keys of its sequence   | block 0 | block 1 | block 2 |...      blocks of BLOCK_N positions,
                           |<----- split 0 ----->|<-- split 1 ...  splits of SPLIT positions,
    query at position p    x x x x x x x x x x x x . . .           both aligned to position 0

- within a split, blocks are consumed in order into an online-softmax state (m, l, acc), started
  fresh at the split's first block;
- split states are merged in split order, with explicit fma, into the row's result.
A block or split that holds none of a row's keys leaves that row's state unchanged exactly, so
rows may share a tile of BLOCK_M queries with any other rows of their sequence (masking only).
The splits run either inside one program per (query tile, head) or, when there are too few tiles
to fill the GPU (decode), as separate programs whose states a second kernel merges in order: the
same arithmetic on the same values, so both give the same bits. Both kernels compile without
fp fusion (the fma that matter are written out), so the two variants cannot contract a*b+c
differently.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._common import check, check_float, next_pow2, num_sms, upload


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    BLOCK_M: int  # queries per tile
    BLOCK_N: int  # keys per block (the B of DESIGN §2)
    SPLIT: int  # keys per split, a multiple of BLOCK_N; fixed, never chosen from the batch
    num_warps: int
    num_stages: int
    PRECISION: str  # tl.dot input precision for float32 inputs ("ieee": no TF32)


# One configuration per dtype (the replay contract holds per dtype and device, DESIGN §2).
ATTENTION_CONFIGS = {
    torch.bfloat16: AttentionConfig(64, 64, 1024, num_warps=8, num_stages=2, PRECISION="tf32"),
    torch.float16: AttentionConfig(64, 64, 1024, num_warps=8, num_stages=2, PRECISION="tf32"),
    torch.float32: AttentionConfig(16, 32, 512, num_warps=8, num_stages=2, PRECISION="ieee"),
}
MERGE_BLOCK_R = 16  # rows per program of the merge kernel
SPLIT_PARTIAL_BYTES = 256 << 20  # most memory the split-program path may take for its states


@triton.jit
def _merge(M, L, ACC, m, l, acc):
    """Fold one split's state (m, l, acc) into the running (M, L, ACC), rows along dim 0. A
    split with no key of a row (m = -inf, l = 0, acc = 0) leaves that row unchanged."""
    M_new = tl.maximum(M, m)
    M_use = tl.where(M_new == float("-inf"), 0.0, M_new)
    a = tl.where(M == M_use, 1.0, tl.exp(M - M_use))
    b = tl.where(m == M_use, 1.0, tl.exp(m - M_use))
    L = tl.fma(L, a, l * b)
    ACC, a2 = tl.broadcast(ACC, a[:, None])
    ACC = tl.fma(ACC, a2, acc * b[:, None])
    return M_new, L, ACC


@triton.jit
def _split_state(q, qpos, k_base, v_base, stride_kt, n_kv, blk_lo, blk_hi, D, scale, window,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 PRECISION: tl.constexpr):
    """Online softmax of the query tile q (BLOCK_M, BLOCK_D) over key blocks blk_lo..blk_hi-1."""
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    for j in range(blk_lo, blk_hi):
        kpos = j * BLOCK_N + offs_n  # positions in the sequence
        rows = kpos.to(tl.int64) * stride_kt
        k = tl.load(k_base + rows[None, :] + offs_d[:, None],  # (BLOCK_D, BLOCK_N)
                    mask=(kpos[None, :] < n_kv) & (offs_d[:, None] < D), other=0.0)
        v = tl.load(v_base + rows[:, None] + offs_d[None, :],  # (BLOCK_N, BLOCK_D)
                    mask=(kpos[:, None] < n_kv) & (offs_d[None, :] < D), other=0.0)
        qk = tl.dot(q, k, input_precision=PRECISION)  # (BM, BN)
        vis = (kpos[None, :] <= qpos[:, None]) & (
            (window == 0) | (kpos[None, :] > qpos[:, None] - window))
        s = tl.where(vis, qk * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that have seen no key yet
        alpha = tl.where(m_i == m_use, 1.0, tl.exp(m_i - m_use))
        p = tl.exp(s - m_use[:, None])
        l_i = tl.fma(l_i, alpha, tl.sum(p, axis=1))
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    return m_i, l_i, acc


# window: never specialised (Triton makes an int argument equal to 1 a constant)
@triton.jit(do_not_specialize=["window"])
def _attention_kernel(
    # pointers: tensors, the split states (SPLIT_PROGRAMS), the tile table, per-sequence metadata
    q_ptr, k_ptr, v_ptr, out_ptr, part_m_ptr, part_l_ptr, part_acc_ptr,
    tile_seq_ptr, tile_q0_ptr, cu_q_ptr, pos0_ptr, kv_start_ptr,
    # sizes
    D, GROUP, n_slots, window, scale,
    # strides (elements; unit stride on D)
    stride_qt, stride_qh, stride_kt, stride_kh, stride_ot, stride_oh,
    # compile-time configuration
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, SPLIT: tl.constexpr,
    PRECISION: tl.constexpr, SPLIT_PROGRAMS: tl.constexpr,
):
    tile = tl.program_id(0)
    h = tl.program_id(1)
    Hq = tl.num_programs(1)
    seq = tl.load(tile_seq_ptr + tile)
    i0 = tl.load(tile_q0_ptr + tile)  # index of the tile's first query in its sequence
    t0 = tl.load(cu_q_ptr + seq)
    n = tl.load(cu_q_ptr + seq + 1) - t0
    p0 = tl.load(pos0_ptr + seq)
    r0 = tl.load(kv_start_ptr + seq)

    offs_m = i0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < n
    qpos = p0 + offs_m
    n_kv = p0 + n
    hi = p0 + tl.minimum(i0 + BLOCK_M, n) - 1  # last position queried in the tile
    lo = tl.where(window == 0, 0, tl.maximum(p0 + i0 - window + 1, 0))  # first key any row sees
    blk_first = lo // BLOCK_N
    blk_last = hi // BLOCK_N
    t_rows = (t0 + offs_m).to(tl.int64)
    io_ok = row_ok[:, None] & (offs_d[None, :] < D)
    q = tl.load(q_ptr + t_rows[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                mask=io_ok, other=0.0)
    kv_off = r0 * stride_kt + (h // GROUP) * stride_kh

    if SPLIT_PROGRAMS:
        sp = tl.program_id(2)  # an empty range when the tile needs no split sp: (-inf, 0, 0)
        m_i, l_i, acc = _split_state(
            q, qpos, k_ptr + kv_off, v_ptr + kv_off, stride_kt, n_kv,
            tl.maximum(sp * (SPLIT // BLOCK_N), blk_first),
            tl.minimum((sp + 1) * (SPLIT // BLOCK_N), blk_last + 1),
            D, scale, window, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION)
        slot = (t_rows * Hq + h) * n_slots + sp
        tl.store(part_m_ptr + slot, m_i, mask=row_ok)
        tl.store(part_l_ptr + slot, l_i, mask=row_ok)
        tl.store(part_acc_ptr + slot[:, None] * D + offs_d[None, :], acc, mask=io_ok)
    else:
        M = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        L = tl.zeros((BLOCK_M,), dtype=tl.float32)
        ACC = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        for sp in range(lo // SPLIT, hi // SPLIT + 1):
            m_i, l_i, acc = _split_state(
                q, qpos, k_ptr + kv_off, v_ptr + kv_off, stride_kt, n_kv,
                tl.maximum(sp * (SPLIT // BLOCK_N), blk_first),
                tl.minimum((sp + 1) * (SPLIT // BLOCK_N), blk_last + 1),
                D, scale, window, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION)
            M, L, ACC = _merge(M, L, ACC, m_i, l_i, acc)
        o = ACC / tl.where(L == 0.0, 1.0, L)[:, None]  # L = 0 only on rows past the sequence
        tl.store(out_ptr + t_rows[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=io_ok)


@triton.jit(do_not_specialize=["window"])
def _attention_merge_kernel(
    # pointers
    out_ptr, part_m_ptr, part_l_ptr, part_acc_ptr, row_pos_ptr,
    # sizes
    T, D, n_slots, window,
    # strides (elements)
    stride_ot, stride_oh,
    # compile-time configuration
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, SPLIT: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    h = tl.program_id(1)
    Hq = tl.num_programs(1)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < T
    p = tl.load(row_pos_ptr + rows, mask=row_ok, other=0)
    lo = tl.where(window == 0, 0, tl.maximum(p - window + 1, 0))
    s_first = lo // SPLIT
    s_last = p // SPLIT
    M = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    L = tl.zeros((BLOCK_R,), dtype=tl.float32)
    ACC = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    s_lo = tl.min(tl.where(row_ok, s_first, n_slots), axis=0)
    s_hi = tl.max(tl.where(row_ok, s_last, -1), axis=0) + 1
    rows64 = rows.to(tl.int64)
    for sp in range(s_lo, s_hi):
        use = row_ok & (sp >= s_first) & (sp <= s_last)  # other splits: the no-op state
        slot = (rows64 * Hq + h) * n_slots + sp
        m = tl.load(part_m_ptr + slot, mask=use, other=float("-inf"))
        l = tl.load(part_l_ptr + slot, mask=use, other=0.0)
        acc = tl.load(part_acc_ptr + slot[:, None] * D + offs_d[None, :],
                      mask=use[:, None] & (offs_d[None, :] < D), other=0.0)
        M, L, ACC = _merge(M, L, ACC, m, l, acc)
    o = ACC / tl.where(L == 0.0, 1.0, L)[:, None]  # L = 0 only on rows past T
    tl.store(out_ptr + rows64[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
             o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < D))


class Tiles(NamedTuple):
    """The tile table of one packed batch for one configuration, built on the host from the chunk
    lengths (`plan`) once per forward and shared by every layer, so that no launch reads a
    length back from the device."""
    seq: torch.Tensor      # (n_tiles,) int64: the sequence of each BLOCK_M-query tile
    q0: torch.Tensor       # (n_tiles,) int64: index of the tile's first query in its sequence
    row_pos: torch.Tensor  # (T,) int64: absolute position of every query
    n_slots: int           # the most splits any query needs
    block_m: int
    split: int


def plan(cu_q: torch.Tensor, pos0: torch.Tensor, device: torch.device,
         config: AttentionConfig) -> Tiles:
    """Tiles of the chunks cu_q (S+1,) at positions pos0 (S,) for `config`, on `device`. Pass
    host tensors: a device tensor is read back first (a sync)."""
    cu = cu_q.cpu().to(torch.int64)
    p0 = pos0.cpu().to(torch.int64)
    n = cu[1:] - cu[:-1]
    S, T = n.shape[0], int(cu[-1]) if len(cu) else 0
    bm, split = config.BLOCK_M, config.SPLIT
    tiles = (n + bm - 1) // bm
    tile_seq = torch.repeat_interleave(torch.arange(S), tiles)
    first_tile = torch.cumsum(tiles, 0) - tiles
    tile_q0 = (torch.arange(tile_seq.shape[0]) - first_tile[tile_seq]) * bm
    row_seq = torch.repeat_interleave(torch.arange(S), n, output_size=T)
    row_pos = p0[row_seq] + torch.arange(T) - cu[:-1][row_seq]
    n_slots = int(((row_pos // split) + 1).max()) if T else 0
    seq, q0, pos = upload((tile_seq, tile_q0, row_pos), device)
    return Tiles(seq, q0, pos, n_slots, bm, split)


def attention(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, cu_q: torch.Tensor,
              pos0: torch.Tensor, kv_start: torch.Tensor, scale: float, window: int = 0, *,
              split_kv: bool | None = None, config: AttentionConfig | None = None,
              tiles: Tiles | None = None) -> torch.Tensor:
    """Causal attention of packed variable-length query chunks over a KV buffer.

    q:        (T, Hq, D)   queries of S sequences, packed; sequence s owns rows cu_q[s]:cu_q[s+1]
    k_buf:    (R, Hkv, D)  keys; position j of sequence s is row kv_start[s] + j
    v_buf:    (R, Hkv, D)  values, same rows
    cu_q:     (S+1,)       query offsets (integers), cu_q[0] = 0, cu_q[S] = T
    pos0:     (S,)         absolute position of the first query of sequence s
    kv_start: (S,)         row of k_buf/v_buf that holds position 0 of sequence s
    scale:    softmax scale (usually 1/sqrt(D));  window: sliding window, 0 = none
    split_kv: run splits as separate programs (None: when the query tiles are too few to fill the
              GPU); the result is bitwise the same either way
    config:   tests only; the default is ATTENTION_CONFIGS[q.dtype], which the replay contract needs
    tiles:    plan(cu_q, pos0, ...) made once for the batch (replay.ops.plan_attention does, per
              forward); without it this call makes one, reading cu_q and pos0 back to the host
    returns   (T, Hq, D) in q.dtype

    The query at position p attends to positions max(0, p-window+1)..p of its sequence (see
    replay.ops.attention). Hq must be a multiple of Hkv (GQA). ops.attention checks the ranges.
    """
    for name, t in (("q", q), ("k_buf", k_buf), ("v_buf", v_buf)):
        check_float(name, t, 3)
        check(t.dtype == q.dtype and t.device == q.device,
              f"attention: {name} is {t.dtype} on {t.device}, q is {q.dtype} on {q.device}")
    T, Hq, D = q.shape
    Hkv = k_buf.shape[1]
    check(k_buf.shape == v_buf.shape and k_buf.shape[2] == D,
          f"attention: q is {tuple(q.shape)}, k_buf {tuple(k_buf.shape)}, v_buf "
          f"{tuple(v_buf.shape)}")
    check(Hkv > 0 and Hq % Hkv == 0, f"attention: {Hq} query heads, {Hkv} KV heads")
    cfg = config or ATTENTION_CONFIGS[q.dtype]
    check(cfg.SPLIT % cfg.BLOCK_N == 0, f"attention: SPLIT {cfg.SPLIT} is not a multiple of "
                                        f"BLOCK_N {cfg.BLOCK_N}")
    q = q if q.stride(2) == 1 else q.contiguous()
    k_buf, v_buf = k_buf.contiguous(), v_buf.contiguous()
    out = torch.empty_like(q)
    if T == 0 or Hq == 0 or D == 0:
        return out
    dev = q.device
    if tiles is None:
        tiles = plan(cu_q, pos0, dev, cfg)
    check((tiles.block_m, tiles.split) == (cfg.BLOCK_M, cfg.SPLIT) and tiles.row_pos.shape == (T,),
          f"attention: tiles planned for BLOCK_M {tiles.block_m}, SPLIT {tiles.split} and "
          f"{tiles.row_pos.shape[0]} queries; this call has {cfg.BLOCK_M}, {cfg.SPLIT}, {T}")
    n_slots, n_tiles = tiles.n_slots, tiles.seq.shape[0]
    state_bytes = T * Hq * n_slots * (D + 2) * 4
    if split_kv is None:
        split_kv = (n_slots > 1 and n_tiles * Hq < 2 * num_sms(dev)
                    and state_bytes <= SPLIT_PARTIAL_BYTES)
    BLOCK_D = max(16, next_pow2(D))  # tl.dot needs every dimension >= 16
    if split_kv:
        part_m = torch.empty(T, Hq, n_slots, dtype=torch.float32, device=dev)
        part_l = torch.empty_like(part_m)
        part_acc = torch.empty(T, Hq, n_slots, D, dtype=torch.float32, device=dev)
        grid = (n_tiles, Hq, n_slots)
    else:
        part_m = part_l = part_acc = out  # unused
        grid = (n_tiles, Hq)
    i64 = dict(dtype=torch.int64, device=dev)
    cu_q, pos0, kv_start = cu_q.to(**i64), pos0.to(**i64), kv_start.to(**i64)
    _attention_kernel[grid](
        q, k_buf, v_buf, out, part_m, part_l, part_acc,
        tiles.seq, tiles.q0, cu_q, pos0, kv_start,
        D, Hq // Hkv, n_slots, int(window), float(scale),
        q.stride(0), q.stride(1), k_buf.stride(0), k_buf.stride(1), out.stride(0), out.stride(1),
        BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_D=BLOCK_D, SPLIT=cfg.SPLIT,
        PRECISION=cfg.PRECISION, SPLIT_PROGRAMS=bool(split_kv),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, enable_fp_fusion=False)
    if split_kv:
        _attention_merge_kernel[(triton.cdiv(T, MERGE_BLOCK_R), Hq)](
            out, part_m, part_l, part_acc, tiles.row_pos,
            T, D, n_slots, int(window), out.stride(0), out.stride(1),
            BLOCK_R=MERGE_BLOCK_R, BLOCK_D=BLOCK_D, SPLIT=cfg.SPLIT, enable_fp_fusion=False)
    return out
