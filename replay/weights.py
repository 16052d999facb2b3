"""Hugging Face checkpoint names, shapes and loading for replay.model.

One table maps every tensor of a Hugging Face checkpoint to replay's layout (gpt-fast's
weight_map): q/k/v projections are fused into one matrix ("wqkv") and gate/up into another
("wgu"), so each layer runs four matmuls. The table drives random initialisation, loading and
fusing: every tensor of the checkpoint must be in it, and every tensor it lists must be present
with its exact shape.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct

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
    """HF tensors -> replay's fused layout (dtype kept); a tied head is the embedding itself.
    Consumes `hf` (emptied as it goes): each part is freed once its fused weight is made, so the
    peak at load is the checkpoint plus one weight (a 0.5B float32 load: 3.9 GiB, not 4.8)."""
    parts: dict[str, list] = {}
    for name, (ours, _) in weight_map(cfg).items():
        parts.setdefault(ours, []).append(hf.pop(name))
    w = {}
    for k in list(parts):
        v = parts.pop(k)
        w[k] = (v[0] if len(v) == 1 else torch.cat(v)).contiguous()
    if cfg.tie_embeddings:
        w["lm_head"] = w["embed"]
    return w


def _shards(path: str) -> list[str]:
    """The weight files of a checkpoint folder: those its index names (every entry a plain name
    inside the folder: a malicious index must not make replay read other files), or
    model.safetensors."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        for x in files:
            parts = x.replace("\\", "/").split("/")
            if os.path.isabs(x) or ".." in parts or not x.endswith(".safetensors"):
                raise ValueError(f"{index}: weight_map entry {x!r} is not a .safetensors file "
                                 "inside the model folder")
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


# The header dtypes a weight may be stored as: the floating types of one value per element,
# which torch converts to float32 value by value (exactly, except F64, which is rounded).
# Integer, boolean and complex tensors are no weights of these models, and the packed sub-byte
# floats (F4 holds two values a byte, F6_* has no torch dtype) cannot be converted element by
# element. Both identities (load_hf_weights, weights_identity) refuse any other dtype, and any
# other shape than the config's, for a tensor the config uses, and both refuse a tensor the
# config neither uses nor may ignore (_unused).
_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
               "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "F8_E8M0": 1}  # bytes of one value
WEIGHT_DTYPES = tuple(_ITEM_BYTES)


def _check_dtype(where: str, name: str, dtype: str) -> None:
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"{where}: {name} is stored as {dtype}; a model's weights must be "
                         f"floating point, one value per element ({', '.join(WEIGHT_DTYPES)})")


def _unused(cfg, name: str) -> bool:
    """A tensor a checkpoint may hold that the config does not use (neither loaded nor part of
    the identity): a tied checkpoint's stored head, and rotary tables (recomputed)."""
    return (cfg.tie_embeddings and name == "lm_head.weight") or name.endswith("rotary_emb.inv_freq")


def _unexpected(where: str, cfg, name: str) -> str:
    return (f"{where}: unexpected tensor {name!r} for a {cfg.arch} config; is config.json the "
            "right one?")


def load_hf_weights(path: str, cfg) -> tuple[dict[str, torch.Tensor], str]:
    """Read every shard, check names and shapes against the config, fuse (float32, or bfloat16
    where `_kept_bf16`), and return the weights with their model identity (weights_identity's
    definition), hashed from the private copy that each tensor is read into: the identity is
    that of the weights the model holds, whatever happens to the files meanwhile (a shard
    rewritten, replaced, re-linked or re-indexed while it loads gives the identity of the bytes
    that were read, never that of other bytes)."""
    from safetensors import SafetensorError, safe_open

    wmap = weight_map(cfg)
    expected = {hf: shape for hf, (_, shape) in wmap.items()}
    hf, digests = {}, {}
    for shard in _shards(path):
        try:
            f = safe_open(shard, framework="pt")
        except SafetensorError as e:  # an unknown dtype in the header, a bad length, ...
            raise ValueError(f"{shard}: not a readable safetensors file ({e})") from None
        with f:
            for name in f.keys():
                if name not in expected:
                    if _unused(cfg, name):
                        continue
                    raise ValueError(_unexpected(shard, cfg, name))
                # a private copy, never safetensors' own tensor: those are backed by its memory
                # map of the file, so they change with the file, and one left alive (a float32
                # norm) kept the map open and every page that loading touched resident (test_model)
                dtype = f.get_slice(name).get_dtype()  # the header's name, which identity_of hashes
                _check_dtype(shard, name, dtype)
                t = f.get_tensor(name).clone()
                if tuple(t.shape) != expected[name]:
                    raise ValueError(f"{shard}: {name} has shape {tuple(t.shape)}, the config "
                                     f"implies {expected[name]}")
                digests[name] = (dtype, list(t.shape),
                                 hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy()).hexdigest())
                keep = t.dtype == torch.bfloat16 and _kept_bf16(wmap[name][0])
                hf[name] = t if keep or t.dtype == torch.float32 else t.float()
    missing = sorted(set(expected) - set(hf))
    if missing:
        raise ValueError(f"{path}: {len(missing)} tensors missing from the checkpoint, e.g. "
                         f"{missing[:3]}")
    return fuse(hf, cfg), _identity(path, cfg, digests)


IDENTITY_CACHE_ENV = "REPLAY_CACHE"  # a folder for the tensor digests, or "off"
_HEADER_LIMIT = 100 << 20            # a safetensors header above 100 MB is not a checkpoint


def weights_identity(path: str, cfg) -> str:
    """The model identity: "sha256:" + 32 hex digits of SHA-256 over the config the model runs
    (ModelConfig's fields, which are what changes the math) and, for every tensor the config
    uses, in name order, its name, stored dtype, shape and the SHA-256 of its stored bytes. It
    does not depend on the folder's name, the file names or how the tensors are split into
    shards, so a renamed or re-sharded copy of the same weights is the same model; a changed
    value, dtype or config field is another. This one reads the files without loading them
    (Model.identity_of: the logger, the fleet's driver), with the per-tensor digests of each file
    cached (tensor_digests); a loaded model's identity comes from the bytes it loaded
    (load_hf_weights)."""
    digests = {}
    for shard in _shards(path):
        digests.update(tensor_digests(shard))
    return _identity(path, cfg, digests)


def _identity(path: str, cfg, digests: dict[str, tuple[str, list, str]]) -> str:
    h = hashlib.sha256(b"replay model identity v1\n")
    h.update(json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str).encode() + b"\n")
    names = hf_names(cfg)
    for name in sorted(digests):  # what the load refuses (a loaded model's digests have none)
        if name not in names and not _unused(cfg, name):
            raise ValueError(_unexpected(path, cfg, name))
    for name in sorted(names):
        if name not in digests:
            raise ValueError(f"{path}: tensor {name} is missing from the checkpoint")
        dtype, shape, digest = digests[name]
        _check_dtype(path, name, dtype)
        if tuple(shape) != tuple(names[name]):
            raise ValueError(f"{path}: {name} has shape {tuple(shape)}, the config implies "
                             f"{tuple(names[name])}")
        h.update(f"{name} {dtype} {list(shape)} {digest}\n".encode())
    return "sha256:" + h.hexdigest()[:32]


def tensor_digests(file: str) -> dict[str, tuple[str, list, str]]:
    """name -> (dtype, shape, SHA-256 of the tensor's bytes) of one safetensors file, read from
    its header and byte ranges (no tensor is built). Cached in $REPLAY_CACHE (default
    ~/.cache/replay) under the file's path, device, inode, size, mtime and ctime: a file changed
    in place with write(2) has a new ctime, which no user can set back. The cache is trusted:
    keep it writable by its user only (a loaded model's identity does not use it)."""
    st = os.stat(file)
    key = json.dumps([os.path.realpath(file), st.st_dev, st.st_ino, st.st_size,
                      st.st_mtime_ns, st.st_ctime_ns])
    root = os.environ.get(IDENTITY_CACHE_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "replay")
    cache = None if root == "off" else os.path.join(
        root, "tensors-" + hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")
    if cache and os.path.exists(cache):
        try:
            with open(cache) as f:
                d = json.load(f)
            if d.get("key") == key:
                return {k: tuple(v) for k, v in d["tensors"].items()}
        except (OSError, ValueError):
            pass  # unreadable: compute again
    out = _hash_tensors(file)
    if cache:
        try:
            os.makedirs(root, exist_ok=True)
            tmp = f"{cache}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump({"key": key, "tensors": out}, f)
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only home: no cache, same identity
    return out


def _hash_tensors(file: str) -> dict[str, tuple[str, list, str]]:
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > _HEADER_LIMIT:
            raise ValueError(f"{file}: safetensors header of {n} bytes")
        header = json.loads(f.read(n))
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            size = _ITEM_BYTES.get(info["dtype"])
            if size is not None and b - a != size * math.prod(info["shape"]):
                # safetensors refuses such a file at load: so does the identity
                raise ValueError(f"{file}: tensor {name} spans {b - a} bytes; {info['dtype']} of "
                                 f"shape {info['shape']} takes {size * math.prod(info['shape'])}")
            f.seek(8 + n + a)
            h, left = hashlib.sha256(), b - a
            while left > 0:
                block = f.read(min(left, 1 << 24))
                if not block:
                    raise ValueError(f"{file}: tensor {name} is truncated")
                h.update(block)
                left -= len(block)
            out[name] = (info["dtype"], list(info["shape"]), h.hexdigest())
    return out
