"""What replay accepts in a Hugging Face config.json: every field is implemented, known not to
change the math, or refused by name. A field replay does not know is refused too (unless it is
null or false): a model that silently ran other math than the checkpoint's would verify records
against the wrong logits.

    check(config_dict)      # ValueError naming the field, before anything is allocated
"""
from __future__ import annotations

# ModelConfig.max_context at most this (rotary tables are (max_context, head_dim / 2) float32,
# built in float64: 1M positions x 128 dims is about 1.5 GB while being built).
MAX_CONTEXT = 1 << 20
MAX_HEAD_DIM = 512   # the CPU attention kernel's limit (csrc/cpu/attention.cpp)

# Read by ModelConfig.from_hf (implemented and tested against transformers, tests/test_model.py).
USED = {"model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "intermediate_size", "head_dim", "rms_norm_eps", "rope_theta",
        "rope_scaling", "rope_parameters", "max_position_embeddings", "tie_word_embeddings"}
# Per family: fields transformers reads for that family only.
USED_BY = {"llama": {"attention_bias"}, "qwen3": {"attention_bias"},
           "mistral": {"sliding_window"},
           # Qwen's window fields are refused below when they turn a window on
           "qwen2": {"sliding_window", "use_sliding_window", "max_window_layers", "layer_types"}}
USED_BY["qwen3"] |= USED_BY["qwen2"]
# Fields that do not change the logits of a forward pass in evaluation.
IGNORED = {
    "_name_or_path", "architectures", "bos_token_id", "eos_token_id", "pad_token_id", "dtype",
    "torch_dtype", "transformers_version", "initializer_range", "use_cache", "id2label",
    "label2id", "is_encoder_decoder", "output_attentions", "output_hidden_states", "problem_type",
    "return_dict", "tie_encoder_decoder",
    "attention_dropout",          # dropout is off in evaluation
    "chunk_size_feed_forward",    # the same MLP, computed in chunks
    "pretraining_tp",             # transformers 4.x: the same matmuls, split in slices
}
# Fields that change the math: the values replay implements.
REQUIRED_VALUES = {"hidden_act": ("silu",), "mlp_bias": (False,),
                   "partial_rotary_factor": (1, 1.0)}
ROPE_KEYS = {"default": {"rope_type", "type", "rope_theta"},
             "llama3": {"rope_type", "type", "rope_theta", "factor", "low_freq_factor",
                        "high_freq_factor", "original_max_position_embeddings"}}


def refuse(field: str, msg: str):
    raise ValueError(f"config.json: {field}: {msg}")


def check(d: dict) -> None:
    """Raise ValueError naming the first config field replay does not implement."""
    arch = d.get("model_type")
    known = USED | USED_BY.get(arch, set()) | IGNORED | set(REQUIRED_VALUES)
    for k, v in d.items():
        if k not in known and v not in (None, False):
            refuse(k, f"{v!r} is not something replay implements for model_type {arch!r} (it "
                      "may change the math; refusing rather than guessing)")
    for k, allowed in REQUIRED_VALUES.items():
        if k in d and d[k] not in allowed:
            refuse(k, f"{d[k]!r} is not supported (replay implements {allowed[0]!r})")
    if "hidden_act" not in d:
        refuse("hidden_act", "missing (replay implements 'silu' and will not assume it)")
    rope = dict(d.get("rope_parameters") or {})
    rope.update(d.get("rope_scaling") or {})
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ROPE_KEYS:
        refuse("rope_scaling", f"rope type {kind!r} is not supported ({' and '.join(ROPE_KEYS)} "
                               "are)")
    for k in rope:
        if k == "partial_rotary_factor" and rope[k] in REQUIRED_VALUES[k]:
            continue
        if k not in ROPE_KEYS[kind]:
            refuse(f"rope_parameters.{k}", f"{rope[k]!r} is not part of {kind!r} rotary "
                                           "embeddings as replay implements them")
    if arch in ("qwen2", "qwen3"):
        if d.get("use_sliding_window"):
            refuse("use_sliding_window", "Qwen sliding-window layers are not supported")
        kinds = set(d.get("layer_types") or ["full_attention"])
        if kinds != {"full_attention"}:
            refuse("layer_types", f"{sorted(kinds)}: only full-attention layers are supported")
    n = d.get("max_position_embeddings", 2048)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CONTEXT:
        refuse("max_position_embeddings", f"{n!r} is outside [1, {MAX_CONTEXT}] (replay builds "
                                          "its rotary tables for every position)")
