"""The ops layer: argument checks, output allocation and device dispatch for every kernel the
model runs. It and replay.sampling (the sampler's own kernels) are the callers of replay._C.

Three backends:
- "replay" (default): replay's batch-invariant kernels. On CPU, the C++ kernels in csrc/cpu
  (float32); on CUDA, the Triton kernels in replay.kernels (float32, bfloat16, float16).
- "torch": plain torch ops with the same signatures. Numerically close, but a row's result can
  depend on the batch it sits in; tests use it to show that the replay contract can fail.
- "triton": the Triton kernels for CPU tensors too, through Triton's interpreter
  (TRITON_INTERPRET=1): CI runs the whole model, engine and verifier on the GPU kernels this way.

    with ops.backend("torch"):
        logits = model(...)
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from replay._ext import C

_BACKEND = "replay"
BACKENDS = ("replay", "torch", "triton")


@contextlib.contextmanager
def backend(name: str):
    """Run the enclosed code with the named backend, restoring the previous one afterwards."""
    global _BACKEND
    if name not in BACKENDS:
        raise ValueError(f"unknown ops backend {name!r}; expected one of {BACKENDS}")
    prev = _BACKEND
    _BACKEND = name
    try:
        yield
    finally:
        _BACKEND = prev


def stack(device, dtype: torch.dtype) -> str:
    """The kernel stack that computes on `device` in `dtype` under the current backend, as a
    record names it: "replay <version> / <backend> / <device kind> / <dtype>". The replay contract
    (bitwise rows) holds within one stack; across stacks only tolerant policies apply.
    backend: "cpu" (the C++ kernels, the same bits on every x86-64), "cuda-triton <version>" (the
    Triton kernels on a GPU; a new compiler may pick other instructions), "triton-interpreter"
    or "torch <version>" (not batch invariant). device kind: "cpu", or "cuda sm_<cc>"."""
    from replay import __version__
    dev = torch.device(device)
    kind = "cpu"
    if dev.type == "cuda":
        major, minor = torch.cuda.get_device_capability(dev)
        kind = f"cuda sm_{major}{minor}"
    elif dev.type != "cpu":
        kind = dev.type
    if _BACKEND == "torch":
        backend = f"torch {torch.__version__}"
    elif dev.type == "cuda" or _BACKEND == "triton":
        import triton
        backend = (f"cuda-triton {triton.__version__}" if dev.type == "cuda"
                   else "triton-interpreter")
    else:
        backend = "cpu"
    return f"replay {__version__} / {backend} / {kind} / {str(dtype).replace('torch.', '')}"


# ---------------------------------------------------------------------------------------------
# checks

def _check(cond: bool, msg: str):
    if not cond:
        raise ValueError(msg)


_CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _f32(name: str, t: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """A float32 tensor; on CUDA also bfloat16 or float16 (the Triton kernels take all three)."""
    _check(isinstance(t, torch.Tensor), f"{name}: expected a tensor, got {type(t).__name__}")
    _check(t.dtype in _CUDA_DTYPES if t.is_cuda else t.dtype == torch.float32,
           f"{name}: expected float32 (or bfloat16/float16 on CUDA), got {t.dtype}")
    if dim is not None:
        _check(t.dim() == dim, f"{name}: expected {dim} dimensions, got shape {tuple(t.shape)}")
    return t.contiguous()


def _i64(name: str, t: torch.Tensor) -> torch.Tensor:
    _check(isinstance(t, torch.Tensor), f"{name}: expected a tensor, got {type(t).__name__}")
    _check(not t.is_floating_point(), f"{name}: expected an integer tensor, got {t.dtype}")
    return t.to(torch.int64).contiguous()


def _use_native(*ts: torch.Tensor) -> bool:
    """True when the replay kernels should run; raises for devices that have none yet."""
    if _BACKEND == "torch":
        return False
    dev = ts[0].device
    for t in ts:
        _check(t.device == dev, f"all tensors must be on one device, got {dev} and {t.device}")
    if dev.type in ("cpu", "cuda"):  # cuda: the Triton kernels, imported on first use
        return True
    raise NotImplementedError(
        f"replay has no kernels for device {dev.type!r} in this build; run on CPU, or use "
        "ops.backend('torch') for non-invariant execution")


def _triton(t: torch.Tensor) -> bool:
    """Whether the Triton kernels (replay.kernels) run this op: CUDA tensors, or any tensor
    under the "triton" backend."""
    return t.is_cuda or _BACKEND == "triton"


def _p(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


# ---------------------------------------------------------------------------------------------
# dense ops

class PackedLinear:
    """A linear layer's weight (N, K), packed once for the CPU matmul (csrc/cpu/gemm.cpp): panels
    of 16 output columns whose K rows come in the order in which the kernel reduces them.

    data: (ceil(N/16), K, 16) float32 or bfloat16 (a bfloat16 weight stays bfloat16: the kernel
          widens each panel row to float32 as it loads it, exactly, so the bits are those of the
          float32 weight). It is the only copy: `unpack()` rebuilds the (N, K) matrix.
    """

    def __init__(self, w: torch.Tensor):
        _check(isinstance(w, torch.Tensor) and w.dim() == 2 and w.device.type == "cpu",
               f"PackedLinear: expected a 2-D CPU tensor, got {getattr(w, 'shape', w)!r}")
        _check(w.dtype in (torch.float32, torch.bfloat16),
               f"PackedLinear: expected float32 or bfloat16, got {w.dtype}")
        if w.stride(1) != 1:
            w = w.contiguous()
        self.N, self.K = w.shape
        self._plain: dict[str, tuple] = {}  # plain(): unpacked copies by device
        self.data = torch.empty(-(-self.N // 16), self.K, 16, dtype=w.dtype)
        bf16 = w.dtype == torch.bfloat16
        if w.numel():
            C().pack_weights(w.data_ptr(), bf16, self.N, self.K, w.stride(0),
                             self.data.data_ptr(), bf16)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.N, self.K)

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    def _panel_rows(self) -> torch.Tensor:
        """(K,) the panel row that holds column k of the weight."""
        K = self.K
        k = torch.arange(K)
        q, K16 = K // 16, K // 16 * 16
        lane = k % 16
        rev = ((lane & 1) << 3) | ((lane & 2) << 1) | ((lane & 4) >> 1) | ((lane & 8) >> 3)
        return torch.where(k < K16, rev * q + k // 16, k)

    def unpack(self) -> torch.Tensor:
        """The (N, K) weight, in the packed dtype."""
        row = self._panel_rows()
        return self.data[:, row, :].permute(0, 2, 1).reshape(-1, self.K)[: self.N]

    def plain(self, device) -> torch.Tensor:
        """The (N, K) float32 weight on `device`, unpacked on first use and then kept, while the
        panels stay unchanged (a second float32 copy for the model's life, made only when a
        backend other than the replay CPU one runs a packed model: the gather of unpack() would
        otherwise cost 10-15x the torch matmul on every call)."""
        key = str(torch.device(device))
        stamp = tensor_stamp(self.data)
        if key not in self._plain or self._plain[key][0] != stamp:
            self._plain[key] = (stamp, self.unpack().to(device, torch.float32))
        return self._plain[key][1]

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows `idx` of the (N, K) weight, (len(idx), K) in the packed dtype: a gather from the
        panels, so a tied embedding table needs no copy beside its packed LM head."""
        idx = idx.to(torch.int64)
        ok = idx.dim() == 1 and (not len(idx) or (int(idx.min()) >= 0 and int(idx.max()) < self.N))
        _check(ok, f"PackedLinear.rows: indices must be 1-D in [0, {self.N})")
        return self.data[(idx // 16)[:, None], self._panel_rows()[None, :], (idx % 16)[:, None]]

    def __repr__(self):
        return f"PackedLinear(N={self.N}, K={self.K}, dtype={self.dtype})"


def tensor_stamp(t: torch.Tensor) -> tuple[int, int | None]:
    """(storage address, in-place version counter) of t: it changes when t is written in place
    or replaced, so a copy derived from t can tell it is stale. The version is None for an
    inference-mode tensor, which has none and cannot be changed in place outside inference
    mode."""
    try:
        return t.data_ptr(), t._version
    except RuntimeError:
        return t.data_ptr(), None


def pack_linear(w: torch.Tensor) -> PackedLinear:
    """Pack a CPU weight (N, K) once for `linear` (float32 or bfloat16)."""
    return PackedLinear(w)


def linear(x: torch.Tensor, w: torch.Tensor | PackedLinear,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ w.T + bias.   x: (M, K), w: (N, K) or a PackedLinear, bias: (N,) -> (M, N).

    Row m of y depends only on x[m], w and bias: K is reduced in one fixed order whatever M is.
    On CPU, a plain tensor w is packed on every call; pack it once with `pack_linear`.
    """
    x = _f32("x", x, 2)
    packed = isinstance(w, PackedLinear)
    if not packed:
        w = _f32("w", w, 2)
    _check(x.shape[1] == w.shape[1], f"linear: x is {tuple(x.shape)} but w is {tuple(w.shape)}")
    if bias is not None:
        bias = _f32("bias", bias, 1)
        _check(bias.shape[0] == w.shape[0], f"linear: bias has {bias.shape[0]} entries, w has "
                                            f"{w.shape[0]} rows")
    if packed and (_BACKEND != "replay" or not x.device.type == "cpu"):
        w = w.plain(x.device)  # the torch / triton backends take (N, K)
        packed = False
    if not _use_native(x, w if not packed else x):
        return F.linear(x, w, bias)
    if _triton(x):
        from replay.kernels.matmul import matmul
        return matmul(x, w, bias)
    M, K = x.shape
    N = w.shape[0]
    out = torch.empty(M, N, dtype=torch.float32, device=x.device)
    if not (M and N):
        return out
    if not packed:
        C().linear_f32(_p(x), _p(w), _p(bias), _p(out), M, N, K)
        return out
    if bias is not None and N % 16:  # the kernel reads the bias 16 columns at a time
        bias = F.pad(bias, (0, 16 - N % 16))
    C().linear_packed(_p(x), M, _p(w.data), w.dtype == torch.bfloat16, _p(bias), N, K, _p(out))
    return out


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) * w over the last dimension.  x: (M, D), w: (D,)."""
    x = _f32("x", x, 2)
    w = _f32("w", w, 1)
    _check(x.shape[1] == w.shape[0], f"rms_norm: x is {tuple(x.shape)}, w is {tuple(w.shape)}")
    if not _use_native(x, w):
        return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)) * w
    if _triton(x):
        from replay.kernels.rmsnorm import rms_norm as rms_norm_cuda
        return rms_norm_cuda(x, w, eps)
    out = torch.empty_like(x)
    if x.numel():
        C().rms_norm_f32(_p(x), _p(w), _p(out), x.shape[0], x.shape[1], float(eps))
    return out


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor, eps: float):
    """residual' = x + residual; returns (rms_norm(residual', w), residual')."""
    x = _f32("x", x, 2)
    residual = _f32("residual", residual, 2)
    _check(x.shape == residual.shape, f"add_rms_norm: x is {tuple(x.shape)}, residual is "
                                      f"{tuple(residual.shape)}")
    if not _use_native(x, residual, w):
        r = x + residual
        return rms_norm(r, w, eps), r
    w = _f32("w", w, 1)
    _check(x.shape[1] == w.shape[0], f"add_rms_norm: x is {tuple(x.shape)}, w is {tuple(w.shape)}")
    if _triton(x):
        from replay.kernels.rmsnorm import add_rms_norm as add_rms_norm_cuda
        return add_rms_norm_cuda(x, residual, w, eps)
    out = torch.empty_like(x)
    res_out = torch.empty_like(x)
    if x.numel():
        C().add_rms_norm_f32(_p(x), _p(residual), _p(w), _p(out), _p(res_out),
                             x.shape[0], x.shape[1], float(eps))
    return out, res_out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, where gate_up = [gate | up] along the last dim.  (M, 2F) -> (M, F)."""
    gate_up = _f32("gate_up", gate_up, 2)
    _check(gate_up.shape[1] % 2 == 0, f"silu_mul: last dim {gate_up.shape[1]} is odd")
    M, F2 = gate_up.shape
    if not _use_native(gate_up):
        g, u = gate_up.chunk(2, dim=-1)
        return F.silu(g) * u
    if _triton(gate_up):
        from replay.kernels.elementwise import silu_mul as silu_mul_cuda
        return silu_mul_cuda(gate_up)
    out = torch.empty(M, F2 // 2, dtype=torch.float32, device=gate_up.device)
    if out.numel():
        C().silu_mul_f32(_p(gate_up), _p(out), M, F2 // 2)
    return out


def rope_(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
          max_pos: int | None = None):
    """Rotary embedding in place, rotate-half convention (Llama, Qwen, Mistral in HF).

    x: (T, H, D) contiguous, positions: (T,) absolute positions, cos/sin: (max_pos, D/2).
    out[:h] = x[:h]*cos - x[h:]*sin ; out[h:] = x[h:]*cos + x[:h]*sin, with h = D/2.
    max_pos: the largest of `positions`, known on the host (a model plans it once per forward);
    without it it is read from `positions`, which on a GPU is a sync.
    """
    _check((x.dtype in _CUDA_DTYPES if x.is_cuda else x.dtype == torch.float32)
           and x.dim() == 3 and x.is_contiguous(),
           f"rope_: x must be a contiguous float32 (T, H, D) tensor, got {x.dtype} "
           f"{tuple(x.shape)}")
    T, H, D = x.shape
    positions = _i64("positions", positions)
    cos = _f32("cos", cos, 2)
    sin = _f32("sin", sin, 2)
    _check(cos.shape[1] * 2 == D and sin.shape == cos.shape,
           f"rope_: head dim {D} needs cos/sin tables of width {D // 2}, got {tuple(cos.shape)}")
    _check(positions.shape == (T,), f"rope_: positions is {tuple(positions.shape)}, expected ({T},)")
    if T and max_pos is None:
        max_pos = int(positions.max())
    if T and max_pos >= cos.shape[0]:
        raise ValueError(f"rope_: position {max_pos} is beyond the rotary table "
                         f"({cos.shape[0]} positions); the sequence exceeds the model's context")
    if not _use_native(x, positions):
        c = cos[positions].unsqueeze(1)  # (T, 1, D/2)
        s = sin[positions].unsqueeze(1)
        x1, x2 = x[..., : D // 2].clone(), x[..., D // 2:].clone()
        x[..., : D // 2] = x1 * c - x2 * s
        x[..., D // 2:] = x2 * c + x1 * s
        return x
    if _triton(x):
        from replay.kernels.elementwise import rope_ as rope_cuda
        return rope_cuda(x, positions, cos, sin)
    if x.numel():
        C().rope_f32(_p(x), _p(positions), _p(cos), _p(sin), T, H, D)
    return x


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    """Row-wise log-softmax over the last dim.  (M, N) -> (M, N)."""
    x = _f32("x", x, 2)
    if not _use_native(x):
        return torch.log_softmax(x, dim=-1)
    if _triton(x):
        from replay.kernels.log_softmax import log_softmax as log_softmax_cuda
        return log_softmax_cuda(x)
    out = torch.empty_like(x)
    if x.numel():
        C().log_softmax_f32(_p(x), _p(out), x.shape[0], x.shape[1])
    return out


# ---------------------------------------------------------------------------------------------
# the sampler

def sampler_kernel(logits: torch.Tensor, score: bool):
    """(kernel, extra keyword arguments) of replay._C that samples (score=False) or scores rows of
    `logits` on their device: csrc/cpu/sampler.cpp on CPU, csrc/cuda/score.cu on CUDA, whose
    per-row math is the same REPLAY_HD code (the one GPU sampler; kernels/README.md says why).
    Every backend uses it: the sampler is the definition (DESIGN §3), not an op that "torch" or
    "triton" may stand in for. replay.sampling checks the arguments and calls this."""
    if logits.device.type == "cpu":
        return (C().score_f32 if score else C().sample_f32), {}
    if logits.device.type != "cuda":
        raise NotImplementedError(f"replay's sampler has no kernel for device "
                                  f"{logits.device.type!r}; sample on CPU or CUDA")
    if not getattr(C(), "has_cuda", False):
        raise RuntimeError("logits are on CUDA but replay._C was built without CUDA kernels "
                           "(nvcc was not found at build time); rebuild with nvcc on PATH")
    extra = dict(stream=torch.cuda.current_stream(logits.device).cuda_stream,
                 bf16=logits.dtype == torch.bfloat16)
    return (C().score_cuda_f32 if score else C().sample_cuda_f32), extra


# ---------------------------------------------------------------------------------------------
# attention

@dataclass
class AttentionPlan:
    """One packed batch's attention metadata, checked and laid out on the host once per forward
    and shared by every layer (`plan_attention`): no op of the forward reads a length back from
    the device, which would stall the host once per layer."""
    cu_q: torch.Tensor       # (S+1,) int64 on the device: query offsets
    pos0: torch.Tensor       # (S,)   absolute position of each chunk's first query
    kv_start: torch.Tensor   # (S,)   buffer row of each sequence's position 0
    tok_seq: torch.Tensor    # (T,)   chunk of each query (the torch backend's gather)
    tok_idx: torch.Tensor    # (T,)   index of each query in its chunk
    host: tuple              # (cu_q, pos0) on the host, for kernel tile tables made later
    T: int                   # queries
    max_q: int               # longest chunk
    max_kv: int              # most keys a chunk reads (pos0 + chunk length)
    rows_needed: int         # buffer rows the batch reads: the KV buffer must have this many
    tiles: dict = field(default_factory=dict)  # dtype -> replay.kernels.attention.Tiles


def plan_attention(cu_q: torch.Tensor, pos0: torch.Tensor, kv_start: torch.Tensor,
                   device=None, dtype: torch.dtype | None = None) -> AttentionPlan:
    """Check the offsets of a packed batch and lay them out for `attention` on `device`.

    cu_q (S+1,), pos0 (S,), kv_start (S,): integer tensors, on the host (a device tensor is read
    back first, which is a sync). With `dtype`, the Triton kernel's tile table for that dtype is
    made now too (it would be on first use otherwise). Device copies do not make the host wait.
    """
    cu, p0, ks = (_i64(n, t).cpu() for n, t in (("cu_q", cu_q), ("pos0", pos0),
                                                ("kv_start", kv_start)))
    S = p0.shape[0]
    _check(cu.shape == (S + 1,) and ks.shape == (S,) and cu.dim() == 1,
           f"attention: cu_q must have S+1={S + 1} entries and kv_start S={S}")
    n = cu[1:] - cu[:-1]
    T = int(cu[-1])
    _check(int(cu[0]) == 0, "attention: cu_q must start at 0")
    _check(bool((n >= 0).all()), "attention: cu_q must be non-decreasing")
    _check(bool((ks >= 0).all()) and bool((p0 >= 0).all()),
           "attention: pos0 and kv_start must be >= 0")
    n_kv = p0 + n
    tok_seq = torch.repeat_interleave(torch.arange(S), n, output_size=T)  # (T,)
    tok_idx = torch.arange(T) - cu[:-1][tok_seq]
    device = torch.device(device) if device is not None else cu_q.device
    from replay.kernels._common import upload
    dev = upload((cu, p0, ks, tok_seq, tok_idx), device)
    plan = AttentionPlan(*dev, host=(cu, p0), T=T, max_q=int(n.max()) if S else 0,
                         max_kv=int(n_kv.max()) if S else 0,
                         rows_needed=int((ks + n_kv).max()) if S else 0)
    if dtype is not None and _BACKEND != "torch" and (device.type == "cuda"
                                                        or _BACKEND == "triton"):
        _tiles(plan, dtype, device)
    return plan


def _tiles(plan: AttentionPlan, dtype: torch.dtype, device: torch.device):
    """The Triton kernel's tile table for `dtype`, made from the plan's host copy once."""
    if dtype not in plan.tiles:
        from replay.kernels.attention import ATTENTION_CONFIGS, plan as plan_tiles
        plan.tiles[dtype] = plan_tiles(*plan.host, device, ATTENTION_CONFIGS[dtype])
    return plan.tiles[dtype]


def attention(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
              cu_q: torch.Tensor | None = None, pos0: torch.Tensor | None = None,
              kv_start: torch.Tensor | None = None, scale: float | None = None,
              window: int = 0, *, plan: AttentionPlan | None = None) -> torch.Tensor:
    """Causal attention of packed variable-length query chunks over a KV buffer.

    q:        (T, Hq, D)   queries of S sequences, packed; sequence s owns rows cu_q[s]:cu_q[s+1]
    k_buf:    (R, Hkv, D)  keys; position j of sequence s is row kv_start[s] + j
    v_buf:    (R, Hkv, D)  values, same rows
    cu_q:     (S+1,)       query offsets, cu_q[0] = 0, cu_q[S] = T
    pos0:     (S,)         absolute position of the first query of sequence s
    kv_start: (S,)         row of k_buf/v_buf that holds position 0 of sequence s
    window:   sliding window (0 = none): a query at p sees keys max(0, p-window+1)..p
    plan:     plan_attention(cu_q, pos0, kv_start, ...) made once for the batch, in place of the
              three offset tensors: a model plans once per forward and every layer reuses it.
              Without one, this call plans for itself (on GPU: a read-back, so a sync, per call)
    returns   (T, Hq, D)

    The query at position p of sequence s attends to positions 0..p of s:

        keys   0 1 2 3 4 5
        q@p=3  x x x x . .      (rows of the buffer past p are never read)

    The replay kernels consume keys in fixed blocks aligned to position 0 of each sequence, so a
    query row gets the same bits whether it runs in a prefill, a chunked prefill or a decode step,
    and wherever the sequence sits in the batch or the buffer. Hq must be a multiple of Hkv (GQA).
    """
    q = _f32("q", q, 3)
    k_buf = _f32("k_buf", k_buf, 3)
    v_buf = _f32("v_buf", v_buf, 3)
    if plan is None:
        _check(cu_q is not None and pos0 is not None and kv_start is not None,
               "attention: pass cu_q, pos0 and kv_start, or a plan")
        plan = plan_attention(cu_q, pos0, kv_start, q.device)
    T, Hq, D = q.shape
    R, Hkv, Dk = k_buf.shape
    _check(Dk == D and v_buf.shape == k_buf.shape,
           f"attention: q is {tuple(q.shape)}, k_buf {tuple(k_buf.shape)}, v_buf {tuple(v_buf.shape)}")
    _check(Hkv > 0 and Hq % Hkv == 0, f"attention: {Hq} query heads is not a multiple of {Hkv} "
                                      "KV heads")
    _check(plan.T == T, f"attention: cu_q must run from 0 to T={T}, it ends at {plan.T}")
    _check(plan.rows_needed <= R, f"attention: a sequence reads past the KV buffer (row "
                                  f"{plan.rows_needed - 1} of {R})")
    _check(plan.cu_q.device == q.device, f"attention: planned for {plan.cu_q.device}, q is on "
                                         f"{q.device}")
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    if not _use_native(q, k_buf, v_buf):
        return _attention_torch(q, k_buf, v_buf, plan, scale, window)
    if _triton(q):
        from replay.kernels.attention import attention as attention_cuda
        return attention_cuda(q, k_buf, v_buf, plan.cu_q, plan.pos0, plan.kv_start, scale,
                              window, tiles=_tiles(plan, q.dtype, q.device))
    out = torch.empty_like(q)
    if T:
        C().attention_f32(_p(q), _p(k_buf), _p(v_buf), _p(out), _p(plan.cu_q), _p(plan.pos0),
                          _p(plan.kv_start), plan.pos0.shape[0], T, Hq, Hkv, D, float(scale),
                          int(window))
    return out


def paged_attention(q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor,
                    cu_q: torch.Tensor, pos0: torch.Tensor, block_table: torch.Tensor,
                    scale: float, window: int = 0) -> torch.Tensor:
    """`attention` over a paged KV cache (vLLM's), with the same bits per query row.

    q:           (T, Hq, D)        queries, packed as in `attention`
    k_pages:     (N, Hkv, P, D)    keys: position j of sequence s is k_pages[block_table[s, j // P],
    v_pages:     (N, Hkv, P, D)    :, j % P]; any strides with the last dimension contiguous
    block_table: (S, max_pages)    page of each P positions of each sequence
    P must be a multiple of 64 (a key block of the replay contract never straddles two pages).
    CPU only (float32).
    """
    q = _f32("q", q, 3)
    _check(k_pages.dtype == torch.float32 and v_pages.dtype == torch.float32 and
           k_pages.dim() == 4 and v_pages.shape == k_pages.shape,
           f"paged_attention: k_pages and v_pages must be float32 (N, Hkv, P, D), got "
           f"{tuple(k_pages.shape)} and {tuple(v_pages.shape)}")
    _check(k_pages.stride() == v_pages.stride() and k_pages.stride(3) == 1,
           "paged_attention: k_pages and v_pages need one layout with D contiguous")
    T, Hq, D = q.shape
    N, Hkv, P, Dk = k_pages.shape
    _check(Dk == D and Hkv > 0 and Hq % Hkv == 0, f"paged_attention: q is {tuple(q.shape)}, "
                                                  f"pages {tuple(k_pages.shape)}")
    _check(P % 64 == 0, f"paged_attention: page size {P} is not a multiple of 64")
    cu_q, pos0, bt = _i64("cu_q", cu_q), _i64("pos0", pos0), _i64("block_table", block_table)
    S = pos0.shape[0]
    _check(cu_q.shape == (S + 1,) and bt.dim() == 2 and bt.shape[0] >= S,
           "paged_attention: cu_q must have S+1 entries and block_table at least S rows")
    _check(q.device.type == "cpu" and _BACKEND == "replay",
           "paged_attention: replay's CPU kernels only (the replay backend)")
    # every page a query reads must be one of k_pages (the kernel does not bound its reads)
    lens = cu_q[1:] - cu_q[:-1]
    _check(int(cu_q[0]) == 0 and int(cu_q[-1]) == T and bool((lens >= 0).all())
           and bool((pos0 >= 0).all()), "paged_attention: cu_q must rise from 0 to T and pos0 "
                                        "be >= 0")
    cap = bt.shape[1] * P  # positions a block_table row can name (bounded first: no overflow)
    _check(bool((pos0 <= cap).all()) and bool((lens <= cap - pos0).all()),
           "paged_attention: a sequence reads past its block_table row")
    need = (pos0 + lens + P - 1) // P  # pages of each sequence up to its last query (<= cap/P)
    used = bt[:S][torch.arange(bt.shape[1])[None, :] < need[:, None]]
    _check(bool(((used >= 0) & (used < N)).all()), f"paged_attention: block_table names a page "
                                                   f"outside k_pages' {N}")
    out = torch.empty_like(q)
    if T:
        C().attention_paged_f32(_p(q), _p(k_pages), _p(v_pages), _p(out), _p(cu_q), _p(pos0),
                                _p(bt), bt.stride(0), P, k_pages.stride(0), k_pages.stride(1),
                                k_pages.stride(2), S, T, Hq, Hkv, D, float(scale), int(window))
    return out


def _attention_torch(q, k_buf, v_buf, plan: AttentionPlan, scale, window):
    """Plain torch: every chunk and its keys padded into one batch, one SDPA call. The padded
    sizes come from the plan's host-side lengths, so this path does not sync either."""
    T, Hq, D = q.shape
    R, Hkv = k_buf.shape[:2]
    if T == 0:
        return torch.empty_like(q)
    dev = q.device
    cu_q, pos0, kv_start = plan.cu_q, plan.pos0, plan.kv_start
    n = cu_q[1:] - cu_q[:-1]                                       # (S,) queries per chunk
    n_kv = pos0 + n                                                # (S,) keys per chunk
    Lq, Lk = plan.max_q, plan.max_kv
    iq, ik = torch.arange(Lq, device=dev), torch.arange(Lk, device=dev)
    q_ok = iq < n[:, None]                                         # (S, Lq)
    rows_q = (cu_q[:-1, None] + iq).clamp(max=T - 1)
    rows_k = (kv_start[:, None] + ik).clamp(max=R - 1)             # (S, Lk)
    qpos = pos0[:, None] + iq                                      # (S, Lq)
    mask = (ik <= qpos[:, :, None]) & (ik < n_kv[:, None, None])   # (S, Lq, Lk)
    if window:
        mask &= ik > qpos[:, :, None] - window
    mask |= ~q_ok[:, :, None] & (ik == 0)  # padding rows attend somewhere; they are dropped
    # padding slots past a chunk's keys hold whatever the buffer holds (it is uninitialised):
    # zero them, since a masked weight of 0 times NaN is still NaN
    pad = (ik >= n_kv[:, None])[:, :, None, None]                  # (S, Lk, 1, 1)
    qs = q[rows_q].transpose(1, 2)                                 # (S, Hq, Lq, D)
    S, G = n.shape[0], Hq // Hkv

    def heads(buf):  # (S, Lk, Hkv, D) -> (S, Hq, Lk, D): query head h reads KV head h // G
        b = buf[rows_k].masked_fill(pad, 0).transpose(1, 2)
        return b[:, :, None].expand(S, Hkv, G, Lk, D).reshape(S, Hq, Lk, D)

    ks, vs = heads(k_buf), heads(v_buf)
    o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask[:, None], scale=scale)
    return o.transpose(1, 2)[plan.tok_seq, plan.tok_idx]           # (T, Hq, D), packed order
