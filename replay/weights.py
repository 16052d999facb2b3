"""Hugging Face checkpoint names, shapes and loading for replay.model.

The HF-to-replay mapping is explicit: q/k/v projections are fused into one matrix ("wqkv") and
gate/up into another ("wgu"), so each layer runs four matmuls. Every tensor of the checkpoint must
be used and every expected tensor must be present, with its exact shape.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch


def hf_names(cfg) -> dict[str, tuple[int, ...]]:
    """Every tensor name a Hugging Face checkpoint of this config holds, with its shape."""
    H, D, F, V = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size
    Hq, Hkv = cfg.n_heads, cfg.n_kv_heads
    names = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = (V, H)
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        names.update({
            p + "input_layernorm.weight": (H,),
            p + "post_attention_layernorm.weight": (H,),
            p + "self_attn.q_proj.weight": (Hq * D, H),
            p + "self_attn.k_proj.weight": (Hkv * D, H),
            p + "self_attn.v_proj.weight": (Hkv * D, H),
            p + "self_attn.o_proj.weight": (H, Hq * D),
            p + "mlp.gate_proj.weight": (F, H),
            p + "mlp.up_proj.weight": (F, H),
            p + "mlp.down_proj.weight": (H, F),
        })
        if cfg.qkv_bias:
            names.update({p + "self_attn.q_proj.bias": (Hq * D,),
                          p + "self_attn.k_proj.bias": (Hkv * D,),
                          p + "self_attn.v_proj.bias": (Hkv * D,)})
        if cfg.o_bias:
            names[p + "self_attn.o_proj.bias"] = (H,)
        if cfg.qk_norm:
            names.update({p + "self_attn.q_norm.weight": (D,), p + "self_attn.k_norm.weight": (D,)})
    return names


def fuse(hf: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """HF tensors -> replay's fused layout (dtype kept)."""
    w = {"embed": hf["model.embed_tokens.weight"], "norm": hf["model.norm.weight"]}
    w["lm_head"] = w["embed"] if cfg.tie_embeddings else hf["lm_head.weight"]
    for i in range(cfg.n_layers):
        p, a = f"model.layers.{i}.", f"model.layers.{i}.self_attn."
        r = f"layers.{i}."
        w[r + "ln1"] = hf[p + "input_layernorm.weight"]
        w[r + "ln2"] = hf[p + "post_attention_layernorm.weight"]
        w[r + "wqkv"] = torch.cat([hf[a + "q_proj.weight"], hf[a + "k_proj.weight"],
                                   hf[a + "v_proj.weight"]]).contiguous()
        if cfg.qkv_bias:
            w[r + "bqkv"] = torch.cat([hf[a + "q_proj.bias"], hf[a + "k_proj.bias"],
                                       hf[a + "v_proj.bias"]]).contiguous()
        w[r + "wo"] = hf[a + "o_proj.weight"]
        if cfg.o_bias:
            w[r + "bo"] = hf[a + "o_proj.bias"]
        if cfg.qk_norm:
            w[r + "qnorm"] = hf[a + "q_norm.weight"]
            w[r + "knorm"] = hf[a + "k_norm.weight"]
        w[r + "wgu"] = torch.cat([hf[p + "mlp.gate_proj.weight"],
                                  hf[p + "mlp.up_proj.weight"]]).contiguous()
        w[r + "wdown"] = hf[p + "mlp.down_proj.weight"]
    return {k: v.contiguous() for k, v in w.items()}


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


def load_hf_weights(path: str, cfg) -> dict[str, torch.Tensor]:
    """Read every shard, check names and shapes against the config, and fuse."""
    from safetensors import safe_open

    expected = hf_names(cfg)
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
                hf[name] = t.float()
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
