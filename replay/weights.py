"""Hugging Face checkpoint names, shapes and loading for replay.model.

One table maps every tensor of a Hugging Face checkpoint to replay's layout (gpt-fast's
weight_map): q/k/v projections are fused into one matrix ("wqkv") and gate/up into another
("wgu"), so each layer runs four matmuls. The table drives random initialisation, loading and
fusing: every tensor of the checkpoint must be in it, and every tensor it lists must be present
with its exact shape.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch


def weight_map(cfg) -> dict[str, tuple[str, tuple[int, ...]]]:
    """HF tensor name -> (replay name, shape) for this config, in checkpoint order. Tensors
    that share a replay name are concatenated in this order along dim 0 (fusing)."""
    H, D, F, V = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size
    q, kv = cfg.n_heads * D, cfg.n_kv_heads * D
    top = [("model.embed_tokens.weight", "embed", (V, H), True),
           ("model.norm.weight", "norm", (H,), True),
           ("lm_head.weight", "lm_head", (V, H), not cfg.tie_embeddings)]
    layer = [  # under model.layers.{i}. -> layers.{i}. (Model.random draws in this order)
        ("input_layernorm.weight", "ln1", (H,), True),
        ("post_attention_layernorm.weight", "ln2", (H,), True),
        ("self_attn.q_proj.weight", "wqkv", (q, H), True),
        ("self_attn.k_proj.weight", "wqkv", (kv, H), True),
        ("self_attn.v_proj.weight", "wqkv", (kv, H), True),
        ("self_attn.o_proj.weight", "wo", (H, q), True),
        ("mlp.gate_proj.weight", "wgu", (F, H), True),
        ("mlp.up_proj.weight", "wgu", (F, H), True),
        ("mlp.down_proj.weight", "wdown", (H, F), True),
        ("self_attn.q_proj.bias", "bqkv", (q,), cfg.qkv_bias),
        ("self_attn.k_proj.bias", "bqkv", (kv,), cfg.qkv_bias),
        ("self_attn.v_proj.bias", "bqkv", (kv,), cfg.qkv_bias),
        ("self_attn.o_proj.bias", "bo", (H,), cfg.o_bias),
        ("self_attn.q_norm.weight", "qnorm", (D,), cfg.qk_norm),
        ("self_attn.k_norm.weight", "knorm", (D,), cfg.qk_norm),
    ]
    out = {hf: (ours, shape) for hf, ours, shape, used in top if used}
    for i in range(cfg.n_layers):
        out.update({f"model.layers.{i}.{hf}": (f"layers.{i}.{ours}", shape)
                    for hf, ours, shape, used in layer if used})
    return out


def hf_names(cfg) -> dict[str, tuple[int, ...]]:
    """Every tensor name a Hugging Face checkpoint of this config holds, with its shape."""
    return {hf: shape for hf, (_, shape) in weight_map(cfg).items()}


def fuse(hf: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """HF tensors -> replay's fused layout (dtype kept); a tied head is the embedding itself."""
    parts: dict[str, list] = {}
    for name, (ours, _) in weight_map(cfg).items():
        parts.setdefault(ours, []).append(hf[name])
    w = {k: (v[0] if len(v) == 1 else torch.cat(v)).contiguous() for k, v in parts.items()}
    if cfg.tie_embeddings:
        w["lm_head"] = w["embed"]
    return w


def _shards(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(path, x) for x in files]
    single = os.path.join(path, "model.safetensors")
    if os.path.exists(single):
        return [single]
    raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")


def _kept_bf16(ours: str) -> bool:
    """A bfloat16 checkpoint's matmul weights and embedding table stay bfloat16 in memory: the
    CPU kernels widen each value to float32 as they load it (exactly), so the results have the
    bits of the upcast weights at half the memory. Norms and biases are upcast (they are small,
    and their kernels take float32)."""
    return ours.rsplit(".", 1)[-1] in ("wqkv", "wo", "wgu", "wdown", "lm_head", "embed")


def load_hf_weights(path: str, cfg) -> dict[str, torch.Tensor]:
    """Read every shard, check names and shapes against the config, and fuse (float32, or
    bfloat16 where `_kept_bf16`)."""
    from safetensors import safe_open

    wmap = weight_map(cfg)
    expected = {hf: shape for hf, (_, shape) in wmap.items()}
    hf = {}
    for shard in _shards(path):
        with safe_open(shard, framework="pt") as f:
            for name in f.keys():
                if name not in expected:
                    if cfg.tie_embeddings and name == "lm_head.weight":
                        continue  # some tied checkpoints still store the head
                    if name.endswith("rotary_emb.inv_freq"):
                        continue  # derived, recomputed from the config
                    raise ValueError(f"{shard}: unexpected tensor {name!r} for a {cfg.arch} "
                                     "config; is config.json the right one?")
                t = f.get_tensor(name)
                if tuple(t.shape) != expected[name]:
                    raise ValueError(f"{shard}: {name} has shape {tuple(t.shape)}, the config "
                                     f"implies {expected[name]}")
                keep = t.dtype == torch.bfloat16 and _kept_bf16(wmap[name][0])
                hf[name] = t if keep else t.float()
    missing = sorted(set(expected) - set(hf))
    if missing:
        raise ValueError(f"{path}: {len(missing)} tensors missing from the checkpoint, e.g. "
                         f"{missing[:3]}")
    return fuse(hf, cfg)


def weights_identity(path: str) -> str:
    """A content hash of config.json and the weight files (first 16 hex digits of SHA-256)."""
    h = hashlib.sha256()
    for p in [os.path.join(path, "config.json")] + _shards(path):
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()[:16]
