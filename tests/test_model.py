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
