"""replay's model agrees with transformers' own implementation of each family (float32, relative
error below 1e-4), on small random configs created offline, loaded from safetensors."""
import json
import os
import re
import struct
import time

import pytest
import torch

transformers = pytest.importorskip("transformers")

from replay import ops  # noqa: E402
from replay.model import Model, ModelConfig  # noqa: E402
from replay.weights import WEIGHT_DTYPES  # noqa: E402

COMMON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=96, vocab_size=211, max_position_embeddings=256)
FAMILIES = {
    "llama3": ("LlamaConfig", dict(
        attention_bias=True, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", dict(head_dim=32)),
    "mistral": ("MistralConfig", dict(sliding_window=7)),
}


def hf_checkpoint(family: str, path, shards: bool = False):
    cls_name, extra = FAMILIES[family]
    cfg = getattr(transformers, cls_name)(**COMMON, **extra)
    torch.manual_seed(len(family))
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in hf.parameters():  # leave the init's zeros and ones: exercise every weight
            p.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(path, max_shard_size="100KB" if shards else "5GB")
    return hf


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("backend", ["replay", "torch"])
def test_logits_match_transformers(tmp_path, family, backend):
    hf = hf_checkpoint(family, tmp_path)
    model = Model.from_pretrained(str(tmp_path))
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 211, (n,), generator=g) for n in (1, 19, 40)]
    with ops.backend(backend):
        ours = model([s.tolist() for s in seqs])
    for s, mine in zip(seqs, ours):
        with torch.no_grad():
            ref = hf(s.unsqueeze(0)).logits[0].double()
        err = (mine.double() - ref).abs().max() / ref.abs().max()
        assert err < 1e-4, (family, len(s), float(err))


def test_sharded_checkpoint_loads(tmp_path):
    hf_checkpoint("qwen3", tmp_path, shards=True)
    assert (tmp_path / "model.safetensors.index.json").exists()
    model = Model.from_pretrained(str(tmp_path))
    assert model.cfg.qk_norm and model.cfg.head_dim == 32
    assert model.identity.startswith("sha256:") and model.name == tmp_path.name


def test_bad_checkpoints_give_clear_errors(tmp_path):
    hf_checkpoint("llama3", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 100
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"mlp\.\w+_proj\.weight has shape .* the config implies"):
        Model.from_pretrained(str(tmp_path))
    cfg["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not supported"):
        Model.from_pretrained(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        Model.from_pretrained(str(tmp_path / "nowhere"))


def test_config_rejects_bad_head_counts():
    with pytest.raises(ValueError, match="multiple"):
        ModelConfig(arch="llama", vocab_size=10, hidden_size=64, n_layers=1, n_heads=4,
                    n_kv_heads=3, intermediate_size=8)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_weight_map_names_every_tensor_transformers_has(tmp_path, family):
    """The one HF name table (replay.weights.weight_map) against transformers' own modules."""
    from replay.weights import hf_names

    hf = hf_checkpoint(family, tmp_path)
    cfg = ModelConfig.from_hf(hf.config.to_dict())
    want = {k: tuple(v.shape) for k, v in hf.state_dict().items()
            if not (cfg.tie_embeddings and k == "lm_head.weight")}
    assert hf_names(cfg) == want


def test_presets():
    import replay
    from replay.model import PRESETS

    assert Model.from_pretrained(replay.TINY_MODEL).cfg == ModelConfig.preset("tiny")
    assert ModelConfig.preset("test-small", vocab_size=97).vocab_size == 97
    assert {ModelConfig.preset(n).arch for n in PRESETS} == {"llama", "qwen2"}
    a = ModelConfig.preset("llama-3.1-8b")
    a.rope_scaling["factor"] = 2.0  # a preset's dicts are copies, never shared
    assert ModelConfig.preset("llama-3.1-8b").rope_scaling["factor"] == 8.0
    with pytest.raises(ValueError, match="unknown preset"):
        ModelConfig.preset("gpt-2")


# ---- what the model refuses, and what its identity hashes (issue 8 s.4) --------------------

def _config(tmp_path, family="llama3", **changes):
    hf_checkpoint(family, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(changes)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return cfg


@pytest.mark.parametrize("family,changes,field", [
    ("llama3", {"hidden_act": "gelu"}, "hidden_act"),
    ("qwen2", {"hidden_act": "gelu_pytorch_tanh"}, "hidden_act"),
    ("llama3", {"mlp_bias": True}, "mlp_bias"),
    ("llama3", {"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ("llama3", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}},
     "rope_scaling"),
    ("llama3", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "mscale": 2.0}},
     "rope_parameters.mscale"),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 16}, "use_sliding_window"),
    ("qwen3", {"layer_types": ["sliding_attention", "full_attention"]}, "layer_types"),
    ("qwen2", {"attention_bias": True}, "attention_bias"),      # not a Qwen2 field
    ("llama3", {"quantization_config": {"quant_method": "fp8"}}, "quantization_config"),
    ("llama3", {"final_logit_softcapping": 30.0}, "final_logit_softcapping"),
    ("llama3", {"max_position_embeddings": 10**8}, "max_position_embeddings"),
    ("llama3", {"head_dim": 1024}, "head_dim"),
])
def test_config_fields_replay_does_not_implement_are_refused(tmp_path, family, changes, field):
    _config(tmp_path, family, **changes)
    with pytest.raises(ValueError, match=field):
        Model.from_pretrained(str(tmp_path))


def test_transformers_really_runs_other_math_for_a_refused_field(tmp_path):
    # the refusal is not pedantry: transformers' own Llama with gelu gives other logits
    hf = hf_checkpoint("llama3", tmp_path)
    cfg = hf.config
    cfg.hidden_act = "gelu"
    gelu = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    gelu.load_state_dict(hf.state_dict())
    x = torch.arange(1, 20).unsqueeze(0)
    with torch.no_grad():
        a, b = hf(x).logits, gelu(x).logits
    assert (a - b).abs().max() / a.abs().max() > 1e-2


def test_default_configs_of_every_family_are_accepted():
    for cls_name, extra in FAMILIES.values():
        d = getattr(transformers, cls_name)(**COMMON, **extra).to_dict()
        ModelConfig.from_hf(d)  # every field transformers writes is classified


def test_index_entries_outside_the_model_folder_are_refused(tmp_path):
    hf_checkpoint("qwen3", tmp_path, shards=True)
    index = tmp_path / "model.safetensors.index.json"
    d = json.loads(index.read_text())
    for bad in ("../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors"):
        name = next(iter(d["weight_map"]))
        index.write_text(json.dumps({**d, "weight_map": {**d["weight_map"], name: bad}}))
        with pytest.raises(ValueError, match="inside the model folder"):
            Model.from_pretrained(str(tmp_path))


def test_identity_is_the_weights_not_the_folder_or_the_shards(tmp_path):
    import shutil

    from replay.engine import Engine, Request
    from replay.records import SamplingParams
    from replay.verify import verify

    hf = hf_checkpoint("qwen3", tmp_path / "a")
    a = Model.from_pretrained(str(tmp_path / "a"))
    shutil.copytree(tmp_path / "a", tmp_path / "renamed")
    hf.save_pretrained(tmp_path / "resharded", max_shard_size="100KB")
    assert (tmp_path / "resharded" / "model.safetensors.index.json").exists()
    for other in ("renamed", "resharded"):
        assert Model.from_pretrained(str(tmp_path / other)).identity == a.identity
    recs = Engine(a, max_batch=2).run([Request("i0", [3, 4, 5], SamplingParams(1.0, seed=1),
                                               max_tokens=5)])
    assert verify(recs, Model.from_pretrained(str(tmp_path / "resharded"))).ok
    # one changed weight, or one changed config field, is another model
    with torch.no_grad():
        hf.model.norm.weight[0] += 1e-3
    hf.save_pretrained(tmp_path / "changed")
    assert Model.from_pretrained(str(tmp_path / "changed")).identity != a.identity
    _config(tmp_path / "eps", "qwen3", rms_norm_eps=1e-5)
    assert Model.from_pretrained(str(tmp_path / "eps")).identity != a.identity


def test_identity_digests_are_cached_and_invalidated(tmp_path, monkeypatch):
    from replay import weights

    monkeypatch.setenv("REPLAY_CACHE", str(tmp_path / "cache"))
    hf_checkpoint("llama3", tmp_path / "m")
    calls = []
    real = weights._hash_tensors
    monkeypatch.setattr(weights, "_hash_tensors", lambda f: calls.append(f) or real(f))
    first = Model.identity_of(str(tmp_path / "m"))
    assert Model.identity_of(str(tmp_path / "m")) == first and len(calls) == 1
    # a loaded model hashes the bytes it read, not the cache's, and agrees with it
    assert Model.from_pretrained(str(tmp_path / "m")).identity == first and len(calls) == 1
    f = tmp_path / "m" / "model.safetensors"
    data = bytearray(f.read_bytes())
    st = os.stat(f)
    time.sleep(0.02)                   # past the ctime granularity of older kernels (4-10 ms)
    data[-1] ^= 1                      # same size, same mtime: a new ctime all the same
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert Model.identity_of(str(tmp_path / "m")) != first and len(calls) == 2
    assert Model.from_pretrained(str(tmp_path / "m")).identity == Model.identity_of(
        str(tmp_path / "m")) and len(calls) == 2


@pytest.mark.parametrize("how", ["rewritten", "replaced"])
def test_a_loaded_model_has_the_identity_of_the_bytes_it_read(tmp_path, monkeypatch, how):
    """The weights and the files can part ways while a model loads: a shard changed once it has
    been read must leave the model with the identity of the weights it holds, not the changed
    file's (records name the weights that verify them)."""
    import shutil

    from replay import weights

    monkeypatch.setenv("REPLAY_CACHE", "off")
    hf_checkpoint("qwen3", tmp_path / "m")
    shutil.copytree(tmp_path / "m", tmp_path / "orig")
    shard = tmp_path / "m" / "model.safetensors"
    real = weights.fuse

    def change_then_fuse(hf, cfg):  # every tensor has been read; the load has not returned
        data = bytearray(shard.read_bytes())
        data[-1] ^= 1
        if how == "rewritten":
            shard.write_bytes(bytes(data))
        else:
            (tmp_path / "new").write_bytes(bytes(data))
            os.replace(tmp_path / "new", shard)
        return real(hf, cfg)

    monkeypatch.setattr(weights, "fuse", change_then_fuse)
    m = Model.from_pretrained(str(tmp_path / "m"))
    monkeypatch.setattr(weights, "fuse", real)
    orig = Model.from_pretrained(str(tmp_path / "orig"))
    assert m.identity == orig.identity == Model.identity_of(str(tmp_path / "orig"))
    assert Model.identity_of(str(tmp_path / "m")) != m.identity  # the file did change
    prompts = [[3, 1, 4, 1, 5, 9, 2, 6]]
    assert torch.equal(m(prompts)[0], orig(prompts)[0])


# header dtype -> the torch dtype its bytes are made with (the others get random bytes)
_AS_TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
             "BF16": torch.bfloat16, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
             "F8_E4M3FNUZ": torch.float8_e4m3fnuz, "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
             "F8_E8M0": torch.float8_e8m0fnu, "I8": torch.int8, "U8": torch.uint8,
             "I16": torch.int16, "U16": torch.uint16, "I32": torch.int32, "U32": torch.uint32,
             "I64": torch.int64, "U64": torch.uint64, "BOOL": torch.bool, "C64": torch.complex64}
_BITS = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "Q4": 4}


def _store_one_as(path, dtype: str, extra_bytes: int = 0) -> str:
    """Rewrite a checkpoint with its first norm weight stored under the header dtype `dtype`
    (written by hand, so that any name a header can hold is tried, even one safetensors cannot
    read), its byte range `extra_bytes` longer than its dtype and shape take; the tensor's name."""
    from safetensors.torch import load_file

    shard = path / "model.safetensors"
    tensors = load_file(shard)
    name = sorted(n for n in tensors if n.endswith("norm.weight"))[0]
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for k, t in tensors.items():
        stored = "BF16" if t.dtype == torch.bfloat16 else "F32"
        if k == name:
            stored = dtype
            if dtype in _AS_TORCH:
                t = (t * 7).to(_AS_TORCH[dtype])
            else:
                g = torch.Generator().manual_seed(3)
                t = torch.randint(0, 256, (t.numel() * _BITS[dtype] // 8,), generator=g,
                                  dtype=torch.uint8)
        data = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        if k == name:
            data += bytes(extra_bytes)
        header[k] = {"dtype": stored, "shape": list(tensors[k].shape),
                     "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    shard.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return name


def test_the_weight_dtypes_are_the_one_value_per_element_floats():
    """The list the identities accept, spelled out: an entry dropped or added is a decision."""
    assert WEIGHT_DTYPES == ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ",
                             "F8_E5M2FNUZ", "F8_E8M0")


def test_identity_of_refuses_a_shape_the_config_does_not_imply(tmp_path, monkeypatch):
    """identity_of reads only the header, and must refuse what the load refuses: a used tensor of
    another shape than the config's (its bytes would hash, and name a model no load accepts)."""
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("REPLAY_CACHE", "off")
    hf_checkpoint("qwen3", tmp_path)
    shard = tmp_path / "model.safetensors"
    tensors = load_file(shard)
    name = sorted(n for n in tensors if n.endswith("norm.weight"))[0]
    tensors[name] = tensors[name][:-1].clone()
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(ValueError,
                       match=rf"{re.escape(name)} has shape \(\d+,\), the config implies"):
        Model.identity_of(str(tmp_path))
    with pytest.raises(ValueError, match=rf"{re.escape(name)} has shape"):
        Model.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("dtype", WEIGHT_DTYPES)
def test_a_loaded_model_names_every_stored_dtype_as_the_header_does(tmp_path, monkeypatch, dtype):
    """The identity hashes each tensor's dtype as the file's header names it: a loaded model and
    Model.identity_of (which reads the header) must agree on every weight dtype safetensors
    stores, not only on those in a table of names (float8 without one gave two identities)."""
    monkeypatch.setenv("REPLAY_CACHE", "off")
    hf_checkpoint("qwen3", tmp_path)
    _store_one_as(tmp_path, dtype)
    assert Model.from_pretrained(str(tmp_path)).identity == Model.identity_of(str(tmp_path))


@pytest.mark.parametrize("dtype", ["I8", "U8", "I16", "U16", "I32", "U32", "I64", "U64", "BOOL",
                                   "C64", "F4", "F6_E2M3", "F6_E3M2"])
def test_a_checkpoint_with_a_non_float_weight_is_refused_by_name(tmp_path, monkeypatch, dtype):
    """An integer, boolean or complex tensor is no weight of these models, and a packed sub-byte
    float has no one-value-per-element dtype to widen: both the load (with the shard) and the
    identity the logger takes (Model.identity_of, with the folder) refuse it, naming the tensor
    and the header's dtype, rather than converting it or naming a model no replay can run."""
    monkeypatch.setenv("REPLAY_CACHE", "off")
    hf_checkpoint("qwen3", tmp_path)
    name = _store_one_as(tmp_path, dtype)
    said = (rf"{re.escape(name)} is stored as {re.escape(dtype)}; "
            "a model's weights must be floating point")
    with pytest.raises(ValueError, match=rf"model\.safetensors: {said}"):
        Model.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path))}: {said}"):
        Model.identity_of(str(tmp_path))


def test_a_cached_digest_is_refused_as_a_fresh_one(tmp_path, monkeypatch):
    """The dtype check runs on the digests, not while hashing: a second identity_of, which reads
    the cache, refuses an integer weight as the first did."""
    monkeypatch.setenv("REPLAY_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "m"
    hf_checkpoint("qwen3", model)
    name = _store_one_as(model, "I32")
    for _ in range(2):
        with pytest.raises(ValueError, match=rf"{re.escape(name)} is stored as I32;"):
            Model.identity_of(str(model))
    # the first call wrote the digests, so the second refused what it read from the cache (a
    # check made while hashing would have written none)
    assert list((tmp_path / "cache").iterdir())


def test_identity_of_refuses_a_tensor_the_load_refuses(tmp_path, monkeypatch):
    """A tensor the config does not use (a q_proj bias beside a config without one) makes the
    load fail; identity_of, which skipped it, must fail too, or the logger would name a model
    no verifier can load."""
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("REPLAY_CACHE", "off")
    hf_checkpoint("qwen3", tmp_path)
    shard = tmp_path / "model.safetensors"
    tensors = load_file(shard)
    tensors["model.layers.0.self_attn.q_proj.bias"] = torch.ones(8)
    save_file(tensors, shard, metadata={"format": "pt"})
    for call in (Model.identity_of, Model.from_pretrained):
        with pytest.raises(ValueError, match=r"unexpected tensor 'model\.layers\.0\.self_attn"
                                             r"\.q_proj\.bias' for a qwen3 config"):
            call(str(tmp_path))


def test_a_byte_range_longer_than_its_tensor_is_refused(tmp_path, monkeypatch):
    """A header whose byte range for a tensor is not its dtype's size times its shape: safetensors
    refuses the file at load, and identity_of (which reads the header itself) refuses it too."""
    monkeypatch.setenv("REPLAY_CACHE", "off")
    hf_checkpoint("qwen3", tmp_path)
    name = _store_one_as(tmp_path, "F32", extra_bytes=4)
    with pytest.raises(ValueError,
                       match=rf"tensor {re.escape(name)} spans \d+ bytes; F32 of shape"):
        Model.identity_of(str(tmp_path))
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        Model.from_pretrained(str(tmp_path))


def test_a_header_dtype_safetensors_does_not_know_is_refused_by_name(tmp_path, monkeypatch):
    """A dtype name no safetensors release knows: the load names the shard (safetensors' own error
    names neither file nor tensor), and the identity names the tensor and the dtype."""
    monkeypatch.setenv("REPLAY_CACHE", "off")
    hf_checkpoint("qwen3", tmp_path)
    name = _store_one_as(tmp_path, "Q4")
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        Model.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match=rf"{re.escape(name)} is stored as Q4;"):
        Model.identity_of(str(tmp_path))


def resident_bytes(model) -> int:
    """Bytes of every distinct storage the model's weights hold."""
    seen = {}
    for t in model.w.values():
        t = t.data if isinstance(t, ops.PackedLinear) else t
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def checkpoint_bytes(path, tied: bool) -> int:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return sum(f.get_tensor(k).nbytes for k in f.keys()
                   if not (tied and k == "lm_head.weight"))


@pytest.mark.parametrize("family", ["llama3", "qwen3"])
def test_no_checkpoint_file_stays_mapped(tmp_path, family):
    """Loading copies each tensor out of safetensors' memory map of the file: once loaded, no
    shard is mapped in the process. (With safetensors' own tensors kept, a float32 norm held the
    map open, and the pages that loading touched stayed resident beside the packed copy: a 0.5B
    float32 model was resident at twice its size.)"""
    import gc

    hf_checkpoint(family, tmp_path, shards=True)
    model = Model.from_pretrained(str(tmp_path))
    gc.collect()
    with open("/proc/self/maps") as f:
        mapped = [line for line in f if ".safetensors" in line and str(tmp_path) in line]
    assert model.w and not mapped, mapped


@pytest.mark.parametrize("family", ["qwen2", "llama3"])  # tied and untied head
def test_weights_are_resident_once(tmp_path, family):
    """Each weight is held once: packed matmul weights replace the plain ones, and a tied
    embedding table is read from the packed LM head, not kept beside it."""
    hf = hf_checkpoint(family, tmp_path)
    model = Model.from_pretrained(str(tmp_path))
    tied = model.cfg.tie_embeddings
    assert ("embed" in model.w) != tied
    size = checkpoint_bytes(tmp_path, tied)
    assert size <= resident_bytes(model) <= 1.05 * size  # the panels pad N to 16 columns
    tokens = torch.tensor([210, 0, 5, 5, 77])
    assert torch.equal(model.embed(tokens), hf.model.embed_tokens.weight.detach()[tokens])


@pytest.mark.parametrize("family", ["qwen2", "llama3"])
def test_bf16_checkpoint_stays_bf16_with_the_bits_of_its_upcast(tmp_path, family):
    """A bfloat16 checkpoint keeps its matmul weights and embedding table in bfloat16 (half the
    memory), and gives bitwise the logits of the same checkpoint upcast to float32."""
    hf = hf_checkpoint(family, tmp_path / "f32")
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    hf.float().save_pretrained(tmp_path / "up")
    m16, m32 = (Model.from_pretrained(str(tmp_path / d)) for d in ("bf16", "up"))
    for k in ("layers.0.wqkv", "layers.1.wdown", "lm_head") + (() if m16.cfg.tie_embeddings
                                                              else ("embed",)):
        assert m16.w[k].dtype == torch.bfloat16, k
    assert m16.w["layers.0.ln1"].dtype == torch.float32
    assert resident_bytes(m16) < 0.55 * resident_bytes(m32)
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(0, 211, (n,), generator=g).tolist() for n in (1, 23, 70)]
    for a, b in zip(m16(seqs), m32(seqs)):
        assert a.dtype == torch.float32 and torch.equal(a, b)
