"""A Llama-family decoder (Llama 3.x, Qwen2/2.5, Qwen3, Mistral) whose every op runs through
replay.ops, built from a Hugging Face config.json and loaded from *.safetensors.

The engine and the verifier share this model: both call `forward` on a packed batch of
variable-length chunks over a KV buffer, and `logits` on the rows they need. A row's logits are a
function of the sequence's tokens only, never of the batch around it (DESIGN §2).

    model = Model.from_pretrained("path/to/dir")
    batch = Varlen.prefill([prompt_a, prompt_b])             # fresh buffer, one chunk each
    kv = model.new_kv(rows=batch.rows)
    hidden = model.forward(batch, kv)                        # (T, hidden)
    logits = model.logits(hidden[batch.last_rows()])         # (S, vocab)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass

import torch

from replay import ops

SUPPORTED = ("llama", "qwen2", "qwen3", "mistral")

_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
_SMALL = dict(arch="llama", vocab_size=509, hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=2,
              intermediate_size=96, rms_norm_eps=1e-5)
_TINY = dict(arch="llama", vocab_size=4096, hidden_size=256, n_layers=4, n_heads=8, n_kv_heads=2,
             intermediate_size=768, rms_norm_eps=1e-5)
# Named shapes (ModelConfig.preset): the tests', the benchmarks' and real models'.
PRESETS = {
    # the shipped model, replay/assets/tiny (scripts/train_tiny.py)
    "tiny": dict(_TINY, max_context=1024, tie_embeddings=True),
    # the CPU tests: GQA, awkward sizes, a real vocabulary, light on 2 cores
    "test-small": dict(_SMALL, max_context=384),
    # the Triton interpreter tests (slow): narrower, a smaller vocabulary
    "test-triton": dict(_SMALL, vocab_size=97, hidden_size=32, intermediate_size=64,
                        max_context=64),
    # record shards for the fleet, watch and HF tests: one layer, short records
    "test-tiny": dict(arch="llama", vocab_size=257, hidden_size=32, n_layers=1, n_heads=2,
                      n_kv_heads=1, intermediate_size=48, rms_norm_eps=1e-5, max_context=64),
    # bench/test_bench_fleet.py: the shipped model's shapes, untied, short records
    "bench-fleet": dict(_TINY, max_context=256),
    # bench/gpu dry runs: test-small with Llama 3.1's rope scaling
    "bench-dry": dict(_SMALL, rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE, max_context=256),
    # config.json of meta-llama/Llama-3.1-8B
    "llama-3.1-8b": dict(arch="llama", vocab_size=128256, hidden_size=4096, n_layers=32,
                         n_heads=32, n_kv_heads=8, intermediate_size=14336, rms_norm_eps=1e-5,
                         rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE, max_context=131072),
    # config.json of Qwen/Qwen2.5-0.5B
    "qwen2.5-0.5b": dict(arch="qwen2", vocab_size=151936, hidden_size=896, n_layers=24,
                         n_heads=14, n_kv_heads=2, intermediate_size=4864, rms_norm_eps=1e-6,
                         rope_theta=1000000.0, max_context=32768, tie_embeddings=True,
                         qkv_bias=True),
}


@dataclass
class ModelConfig:
    arch: str
    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    intermediate_size: int
    head_dim: int = 0              # 0: hidden_size // n_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    max_context: int = 2048
    tie_embeddings: bool = False
    qkv_bias: bool = False         # Qwen2; Llama with attention_bias
    o_bias: bool = False           # Llama with attention_bias
    qk_norm: bool = False          # Qwen3
    window: int = 0                # sliding window (Mistral), 0 = none

    def __post_init__(self):
        from replay.hfconfig import MAX_CONTEXT, MAX_HEAD_DIM

        if self.arch not in SUPPORTED:
            raise ValueError(f"model_type {self.arch!r} is not supported; replay runs {SUPPORTED}")
        for k in ("vocab_size", "hidden_size", "n_layers", "n_heads", "n_kv_heads",
                  "intermediate_size", "max_context"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{k}: must be a positive integer, got {v!r}")
        if self.max_context > MAX_CONTEXT:  # rope_tables would allocate every position
            raise ValueError(f"max_context {self.max_context} is above replay's limit "
                             f"{MAX_CONTEXT}")
        if not self.head_dim:
            self.head_dim = self.hidden_size // self.n_heads
        if not 1 <= self.head_dim <= MAX_HEAD_DIM:
            raise ValueError(f"head_dim {self.head_dim} is outside [1, {MAX_HEAD_DIM}]")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"num_attention_heads {self.n_heads} is not a multiple of "
                             f"num_key_value_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")

    @classmethod
    def preset(cls, name: str, **fields) -> "ModelConfig":
        """The named shape of PRESETS, with `fields` replaced."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}: expected one of {tuple(PRESETS)}")
        d = {**PRESETS[name], **fields}
        return cls(**{k: dict(v) if isinstance(v, dict) else v for k, v in d.items()})

    @classmethod
    def from_hf(cls, d: dict) -> "ModelConfig":
        """From a Hugging Face config.json dict (transformers 4.x and 5.x spellings); a field
        that replay does not implement is refused by name (replay.hfconfig.check)."""
        from replay.hfconfig import check

        arch = d.get("model_type")
        if arch not in SUPPORTED:
            raise ValueError(f"config.json: model_type {arch!r} is not supported; replay runs "
                             f"{SUPPORTED}")
        check(d)
        rope = dict(d.get("rope_parameters") or {})
        if d.get("rope_scaling"):
            rope.update(d["rope_scaling"])
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))  # checked: default, llama3
        n_heads = d["num_attention_heads"]
        return cls(
            arch=arch,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            n_layers=d["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=d.get("num_key_value_heads") or n_heads,
            intermediate_size=d["intermediate_size"],
            head_dim=d.get("head_dim") or d["hidden_size"] // n_heads,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_scaling=rope if rope_type == "llama3" else None,
            max_context=d.get("max_position_embeddings", 2048),
            tie_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=arch == "qwen2" or bool(d.get("attention_bias", False)),
            o_bias=arch != "qwen2" and bool(d.get("attention_bias", False)),
            qk_norm=arch == "qwen3",
            window=int(d.get("sliding_window") or 0) if arch == "mistral" else 0,
        )


def rope_tables(cfg: ModelConfig, n_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables (n_pos, head_dim/2), computed once in float64 then rounded to float32, so
    generation and verification read the same bits."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    if cfg.rope_scaling:  # Llama 3.1 frequency scaling
        s = cfg.rope_scaling
        factor, lo, hi = s["factor"], s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
        old = s.get("original_max_position_embeddings", 8192)
        wavelen = 2 * math.pi / inv_freq
        scaled = inv_freq / factor
        smooth = (old / wavelen - lo) / (hi - lo)
        mid = (1 - smooth) * scaled + smooth * inv_freq
        inv_freq = torch.where(wavelen > old / lo, scaled,
                               torch.where(wavelen < old / hi, inv_freq, mid))
    ang = torch.arange(n_pos, dtype=torch.float64).unsqueeze(1) * inv_freq.unsqueeze(0)
    return ang.cos().float().contiguous(), ang.sin().float().contiguous()


# ---------------------------------------------------------------------------------------------
# packed batches and the KV buffer

@dataclass
class Varlen:
    """A packed batch of S chunks, one per sequence.

    tokens:   (T,)   input ids of every chunk, packed
    cu:       (S+1,) chunk offsets into tokens
    pos0:     (S,)   absolute position of each chunk's first token in its sequence
    kv_start: (S,)   buffer row that holds position 0 of each sequence
    """
    tokens: torch.Tensor
    cu: torch.Tensor
    pos0: torch.Tensor
    kv_start: torch.Tensor

    @classmethod
    def make(cls, chunks: list[list[int]], pos0: list[int], kv_start: list[int]) -> "Varlen":
        lens = [len(c) for c in chunks]
        cu = torch.zeros(len(chunks) + 1, dtype=torch.int64)
        cu[1:] = torch.tensor(lens, dtype=torch.int64).cumsum(0)
        flat = [t for c in chunks for t in c]
        return cls(torch.tensor(flat, dtype=torch.int64), cu,
                   torch.tensor(pos0, dtype=torch.int64), torch.tensor(kv_start, dtype=torch.int64))

    @classmethod
    def prefill(cls, seqs: list[list[int]]) -> "Varlen":
        """Whole sequences from position 0, each kept in the buffer at its own packed offset."""
        starts, acc = [], 0
        for s in seqs:
            starts.append(acc)
            acc += len(s)
        return cls.make(seqs, [0] * len(seqs), starts)

    @property
    def rows(self) -> int:
        """Buffer rows needed when the buffer holds exactly these chunks (see `prefill`)."""
        return int((self.kv_start + self.pos0 + (self.cu[1:] - self.cu[:-1])).max()) if len(
            self.pos0) else 0

    def positions_and_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(T,) absolute position of every token, and (T,) the buffer row where its key and
        value are written."""
        n = self.cu[1:] - self.cu[:-1]
        seq = torch.repeat_interleave(torch.arange(len(n)), n)   # (T,) chunk of each token
        pos = self.pos0[seq] + torch.arange(len(self.tokens)) - self.cu[seq]
        return pos, self.kv_start[seq] + pos

    def last_rows(self) -> torch.Tensor:
        """(S,) packed index of each chunk's last token."""
        return self.cu[1:] - 1


class KVBuffer:
    """Keys and values of every layer: (rows, n_kv_heads, head_dim) each, float32."""

    def __init__(self, cfg: ModelConfig, rows: int, device="cpu", dtype=torch.float32):
        # Uninitialised: attention reads only rows 0..p of a sequence, all written before use
        # (tests fill unwritten rows with NaN to prove it).
        shape = (rows, cfg.n_kv_heads, cfg.head_dim)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.rows = rows


@dataclass
class ForwardPlan:
    """One forward's inputs on the model's device, prepared on the host from a Varlen batch
    (`Model.plan`): everything the layers read, so that the forward never waits on the device.

    tokens, positions, rows: (T,) ids, absolute positions, KV-buffer rows (on the device)
    max_pos:                 the largest position (host int; the rotary table's bound)
    attn:                    the attention offsets and tile tables, shared by every layer
    """
    tokens: torch.Tensor
    positions: torch.Tensor
    rows: torch.Tensor
    max_pos: int
    attn: ops.AttentionPlan


# ---------------------------------------------------------------------------------------------
# the model

# Weights that ops.linear multiplies by: on CPU they are kept packed (ops.PackedLinear).
_MATMUL = ("wqkv", "wo", "wgu", "wdown", "lm_head")


class Model:
    def __init__(self, cfg: ModelConfig, weights: dict[str, torch.Tensor], identity: str = ""):
        self.cfg = cfg
        self.identity = identity or f"{cfg.arch}-random"
        self.name = self.identity   # for people: the folder's name when loaded from one
        self.w = weights
        self.cos, self.sin = rope_tables(cfg, cfg.max_context)
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.path: str | None = None  # the folder it was loaded from (its tokenizer.json: text)
        self.eos_token_ids: list[int] = []  # where generation stops (eos_token_ids)
        self._pack()

    def _pack(self):
        """On CPU, pack the matmul weights once for the kernels. The packed copy replaces the
        plain one, so each weight is resident once: a tied embedding table is dropped too, its
        rows gathered from the packed LM head (embed)."""
        for k, t in self.w.items():
            if (isinstance(t, torch.Tensor) and t.device.type == "cpu"
                    and k.rsplit(".", 1)[-1] in _MATMUL):
                self.w[k] = ops.pack_linear(t)
        if self.cfg.tie_embeddings and isinstance(self.w.get("lm_head"), ops.PackedLinear):
            self.w.pop("embed", None)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(T,) token ids -> (T, hidden) rows of the embedding table, in the compute dtype
        (a bfloat16 table's rows are widened exactly)."""
        t = self.w.get("embed")
        rows = t[tokens] if t is not None else self.w["lm_head"].rows(tokens)
        return rows.to(self.dtype)

    def to(self, device=None, dtype=None) -> "Model":
        """Move the weights (and cast them: bfloat16 / float16 on CUDA). The CPU kernels are
        float32; rotary tables stay float32 everywhere."""
        device = torch.device(device) if device is not None else self.device
        dtype = dtype or self.dtype
        if device.type == "cpu" and dtype != torch.float32:
            raise ValueError(f"replay's CPU kernels are float32; got {dtype}")
        if device == self.device and dtype == self.dtype:
            return self
        self.device, self.dtype = device, dtype
        moved, w = {}, {}
        for k, t in self.w.items():  # keep tied tensors tied
            if isinstance(t, ops.PackedLinear):
                t = t.unpack()
            w[k] = moved.setdefault(t.data_ptr(), t.to(self.device, self.dtype).contiguous())
        if self.cfg.tie_embeddings:
            w["embed"] = w["lm_head"]
        self.w = w
        self.cos, self.sin = self.cos.to(self.device), self.sin.to(self.device)
        self._pack()
        return self

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str, name: str | None = None) -> "Model":
        """Load config.json and *.safetensors (a single file, or shards with their index)."""
        from replay.weights import load_hf_weights

        cfg_path = os.path.join(path, "config.json")
        if not os.path.exists(cfg_path):
            raise FileNotFoundError(f"{path}: no config.json")
        with open(cfg_path) as f:
            cfg = ModelConfig.from_hf(json.load(f))
        weights, identity = load_hf_weights(path, cfg)  # the identity of the bytes it loaded
        m = cls(cfg, weights, identity)
        m.name = name or os.path.basename(os.path.normpath(path))
        m.path = os.fspath(path)
        m.eos_token_ids = eos_token_ids(path)
        return m

    @staticmethod
    def identity_of(path: str, name: str | None = None) -> str:
        """The identity that from_pretrained(path, name) gives, without loading the weights (the
        fleet's driver keys its results on it before any actor has loaded the model). The name is
        not part of it: a renamed copy of the same weights is the same model."""
        from replay.weights import weights_identity

        with open(os.path.join(path, "config.json")) as f:
            cfg = ModelConfig.from_hf(json.load(f))
        return weights_identity(path, cfg)

    @classmethod
    def random(cls, cfg: ModelConfig, seed: int = 0, std: float = 0.02, device="cpu",
               dtype=torch.float32) -> "Model":
        """Random weights (no download), for tests and benchmarks; drawn on `device`, so an
        8B-shaped model can be made directly on a GPU."""
        from replay.weights import fuse, hf_names

        g = torch.Generator(device=device).manual_seed(seed)
        hf = {}
        for name, shape in hf_names(cfg).items():
            t = torch.randn(shape, generator=g, device=device, dtype=dtype)
            if name.endswith("norm.weight") or "layernorm" in name:
                hf[name] = t.mul_(0.1).add_(1.0)
            else:
                hf[name] = t.mul_(std)
        h = hashlib.sha256(json.dumps(cfg.__dict__, sort_keys=True, default=str).encode())
        m = cls(cfg, fuse(hf, cfg), f"{cfg.arch}-random-{seed}-{h.hexdigest()[:12]}")
        return m.to(device, dtype)

    @property
    def stack(self) -> str:
        """The kernel stack this model computes on now (device, dtype, ops backend): ops.stack."""
        return ops.stack(self.device, self.dtype)

    def new_kv(self, rows: int) -> KVBuffer:
        return KVBuffer(self.cfg, rows, self.device, self.dtype)

    # -- forward -------------------------------------------------------------------------------

    def plan(self, batch: Varlen, kv: KVBuffer) -> ForwardPlan:
        """Check a batch against the model and the buffer, and lay it out on the device, on the
        host from the batch's host-side lengths: the only host work of a forward. A plan can be
        run again (a CUDA graph replays one) as long as the batch's tokens stay the same."""
        cfg = self.cfg
        T = len(batch.tokens)
        pos, rows = batch.positions_and_rows()
        max_pos = int(pos.max()) if T else 0
        if max_pos >= cfg.max_context:
            raise ValueError(f"position {max_pos} exceeds the model's context ({cfg.max_context})")
        if T and not (0 <= int(batch.tokens.min()) and int(batch.tokens.max()) < cfg.vocab_size):
            raise ValueError(f"batch: a token id is outside the vocabulary (0..{cfg.vocab_size - 1})")
        attn = ops.plan_attention(batch.cu, batch.pos0, batch.kv_start, self.device, self.dtype)
        if attn.rows_needed > kv.rows:
            raise ValueError(f"batch: a sequence needs buffer row {attn.rows_needed - 1}, the KV "
                             f"buffer has {kv.rows} rows")
        from replay.kernels._common import upload
        tokens, pos, rows = upload((batch.tokens, pos, rows), self.device)
        return ForwardPlan(tokens, pos, rows, max_pos, attn)

    def forward(self, batch: Varlen | ForwardPlan, kv: KVBuffer) -> torch.Tensor:
        """Hidden states after the final norm, (T, hidden). Writes each token's keys and values
        into kv at its buffer row (Varlen.positions_and_rows) and attends over the buffer.
        A Varlen is planned first (`plan`); the layers then read nothing back from the device."""
        cfg, w = self.cfg, self.w
        plan = batch if isinstance(batch, ForwardPlan) else self.plan(batch, kv)
        T = plan.tokens.shape[0]
        Hq, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        x = self.embed(plan.tokens)                                        # (T, hidden)
        residual = None
        for i in range(cfg.n_layers):
            p = f"layers.{i}."
            if residual is None:
                h, residual = ops.rms_norm(x, w[p + "ln1"], cfg.rms_norm_eps), x
            else:
                h, residual = ops.add_rms_norm(x, residual, w[p + "ln1"], cfg.rms_norm_eps)
            qkv = ops.linear(h, w[p + "wqkv"], w.get(p + "bqkv"))          # (T, (Hq+2Hkv)*D)
            q = qkv[:, : Hq * D].reshape(T, Hq, D).contiguous()
            k = qkv[:, Hq * D: (Hq + Hkv) * D].reshape(T, Hkv, D).contiguous()
            v = qkv[:, (Hq + Hkv) * D:].reshape(T, Hkv, D)
            if cfg.qk_norm:
                q = ops.rms_norm(q.view(T * Hq, D), w[p + "qnorm"], cfg.rms_norm_eps).view(T, Hq, D)
                k = ops.rms_norm(k.view(T * Hkv, D), w[p + "knorm"], cfg.rms_norm_eps).view(T, Hkv, D)
            ops.rope_(q, plan.positions, self.cos, self.sin, max_pos=plan.max_pos)
            ops.rope_(k, plan.positions, self.cos, self.sin, max_pos=plan.max_pos)
            kv.k[i][plan.rows] = k
            kv.v[i][plan.rows] = v
            o = ops.attention(q, kv.k[i], kv.v[i], scale=1.0 / math.sqrt(D), window=cfg.window,
                              plan=plan.attn)                       # (T, Hq, D)
            x = ops.linear(o.view(T, Hq * D), w[p + "wo"], w.get(p + "bo"))
            h, residual = ops.add_rms_norm(x, residual, w[p + "ln2"], cfg.rms_norm_eps)
            x = ops.linear(ops.silu_mul(ops.linear(h, w[p + "wgu"])), w[p + "wdown"])
        if residual is None:
            return ops.rms_norm(x, w["norm"], cfg.rms_norm_eps)
        return ops.add_rms_norm(x, residual, w["norm"], cfg.rms_norm_eps)[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head: (n, hidden) -> (n, vocab) float32 (the sampler's input dtype)."""
        return ops.linear(hidden, self.w["lm_head"]).float()

    def __call__(self, seqs: list[list[int]]) -> list[torch.Tensor]:
        """Teacher-forced logits of whole sequences: one (len, vocab) tensor each."""
        batch = Varlen.prefill(seqs)
        hidden = self.forward(batch, self.new_kv(batch.rows))
        logits = self.logits(hidden)
        return [logits[int(batch.cu[i]): int(batch.cu[i + 1])] for i in range(len(seqs))]

    @property
    def n_params(self) -> int:
        seen, n = set(), 0
        for k, t in self.w.items():
            if k == "lm_head" and self.cfg.tie_embeddings and "embed" in self.w:
                continue  # the embedding table, counted once
            if isinstance(t, ops.PackedLinear):
                n += t.N * t.K
            elif t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                n += t.numel()
        return n


def eos_token_ids(path: str) -> list[int]:
    """The model's end-of-sequence ids: eos_token_id (an int or a list) of generation_config.json
    and of config.json, in that order, without repeats; [] if neither has one."""
    out: list[int] = []
    for name in ("generation_config.json", "config.json"):
        f = os.path.join(path, name)
        if not os.path.exists(f):
            continue
        with open(f) as fh:
            eos = json.load(fh).get("eos_token_id")
        for t in eos if isinstance(eos, list) else [eos]:
            if isinstance(t, int) and not isinstance(t, bool) and t >= 0 and t not in out:
                out.append(t)
    return out
