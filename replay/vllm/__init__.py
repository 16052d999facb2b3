"""replay inside vLLM: a `vllm.general_plugins` plugin that makes vLLM replay-exact (docs/vllm.md).

    pip install 'replay-verify[vllm]'
    REPLAY_VLLM=1 vllm serve MODEL --dtype float32 ...        # or LLM(...) in the same environment

vLLM loads the plugin in every process it starts (API server, engine core, workers); it does
nothing unless REPLAY_VLLM=1. Enabled, it makes vLLM run, for Llama and Qwen2/Qwen3 models:
- every linear layer and the LM head with replay's batch-invariant matmul (ops.linear),
- RMSNorm and its fused residual add, SiLU-mul, rotary embeddings (replay's float64-derived
  tables, the verifier's) with replay's kernels,
- attention with replay's kernel reading vLLM's own paged KV cache through its block table
  (ops.paged_attention: no second copy of K/V), which the plugin also writes,
- sampling with replay's seeded sampler at the sampled token's absolute position,
so that every record it serves verifies with replay.verify(Policy.exact()). The model runs eager
(torch.compile would trace through replay's kernel calls), on CPU in float32.

Requests that replay cannot replay are rejected when they arrive (VLLMValidationError, a 400
from `vllm serve`) rather than silently changed: penalties, logit bias, min_p, min_tokens, bad
words, allowed token ids, structured outputs, logits processors, n > 1, and sampled requests
without a seed. Speculative decoding, sliding windows, LoRA and quantized models are refused at
start-up.
"""
from __future__ import annotations

import os

ENV = "REPLAY_VLLM"
SAMPLER = "replay"  # the meta.sampler of records served with the plugin

_registered = False


def enabled() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def register() -> None:
    """The entry point vLLM calls in each of its processes (possibly several times)."""
    global _registered
    if _registered or not enabled():
        return
    from replay.vllm import patches

    patches.install()
    _registered = True


# name -> the value at which the parameter does nothing (vLLM's SamplingParams spelling)
_NEUTRAL = {"presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0,
            "min_p": 0.0, "min_tokens": 0, "n": 1, "logit_bias": None, "bad_words": None,
            "allowed_token_ids": None, "logits_processors": None, "structured_outputs": None}


def unreplayable(sp) -> tuple[str, str] | None:
    """(parameter, reason) for the first sampling feature of a vLLM SamplingParams that replay's
    sampler does not implement, else None."""
    for name, neutral in _NEUTRAL.items():
        v = getattr(sp, name, neutral)
        if v is None or v == neutral or v in ([], {}, ()):
            continue
        return name, (f"{name}={v!r} cannot be replayed: replay's sampler implements "
                      "temperature, top_k, top_p and a seed only (REPLAY_VLLM=1)")
    T = getattr(sp, "temperature", 1.0)
    if 0 < T < 1e-5:
        return "temperature", (f"temperature={T!r}: vLLM treats it as greedy, replay's sampler "
                               "as sampling; send 0 for greedy (REPLAY_VLLM=1)")
    if T > 0 and getattr(sp, "seed", None) is None:
        return "seed", ("a sampled request (temperature > 0) needs a seed to be replayed: the "
                        "trusted logger assigns one (REPLAY_VLLM=1)")
    return None
