"""replay's model agrees with transformers' own implementation of each family (float32, relative
error below 1e-4), on small random configs created offline, loaded from safetensors."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from replay import ops  # noqa: E402
from replay.model import Model, ModelConfig  # noqa: E402

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
    assert model.identity.startswith(tmp_path.name + "@")


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
