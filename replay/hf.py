"""replay inside Hugging Face transformers: a stock causal LM (Llama, Qwen2, Qwen3, Mistral
without sliding windows) that runs replay's kernels, generates with replay's seeded sampler, and
writes Records that replay.verify checks exactly, with replay's own Model or with the HF model.

    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    records = generate_records(hf, prompts, SamplingParams(0.8, seed=7), max_tokens=64,
                               stop_token_ids=[eos])
    report = replay.verify(records, model=Model.from_pretrained(path))     # or HFVerifierModel(hf)

What `replay_kernels(hf)` changes while it is active (and restores after):
- invariant mode (replay.invariant): every nn.Linear (q/k/v/o, gate/up/down, lm_head) runs
  replay's linear. Its output elements are independent fixed-order dot products, so HF's separate
  q/k/v and gate/up projections give the bits of replay's fused ones.
- RMSNorm modules run ops.rms_norm (HF computes x * rsqrt(mean(x^2) + eps) with torch ops,
  whose bits differ); MLP modules run ops.silu_mul on [gate | up] (replay's own exp).
- the rotary module returns replay's float64-derived cos/sin tables (model.rope_tables) at the
  position ids; HF's own rotation (x*cos + rotate_half(x)*sin) then does the same float32 mul,
  mul, add per element as ops.rope_, so the bits agree.
- attention is "replay", registered with transformers' AttentionInterface (and a mask function
  with AttentionMaskInterface that passes the 2D padding mask through). It calls ops.attention
  with each sequence's keys aligned to its first real token (kv_start = first unpadded column of
  the KV cache, pos0 = the query's position counted from there), so left padding never shifts the
  key blocks, and pad queries are not computed at all.
- generation passes position ids that count from each sequence's first real token.

Sampling: `ReplaySampler`, a LogitsProcessor, draws each row's token with replay.sampling.sample
(the row's seed, temperature, top_k, top_p and absolute position) and leaves only that token
allowed; generate runs greedy (do_sample=False), so HF's own sampling never chooses.
"""
from __future__ import annotations

import contextlib
import math
import os
import types

import torch

from replay import ops, sampling
from replay.model import Model, ModelConfig, Varlen, rope_tables
from replay.records import Record, SamplingParams

ATTN = "replay"


# ---------------------------------------------------------------------------------------------
# attention and mask, registered with transformers

def replay_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                attention_mask=None, **kwargs):
    """The "mask" handed to replay_attention: the 2D padding mask (B, kv_length) bool, True for
    real tokens, or None when nothing is padded. The causal structure is the kernel's own."""
    from transformers.masking_utils import causal_mask_function

    if mask_function is not None and mask_function is not causal_mask_function:
        raise NotImplementedError("replay attention: only plain causal masks (no sliding window, "
                                  "packed sequences or mask overlays)")
    if attention_mask is None:
        return None
    m = attention_mask.to(torch.bool)
    if m.shape[-1] < kv_offset + kv_length:
        m = torch.nn.functional.pad(m, (0, kv_offset + kv_length - m.shape[-1]), value=True)
    return m[:, kv_offset: kv_offset + kv_length]


def _pads(mask: torch.Tensor | None, B: int, Lk: int) -> torch.Tensor:
    """(B,) count of leading pad columns; raises unless every row is [pad..., real...]."""
    if mask is None:
        return torch.zeros(B, dtype=torch.int64)
    m = mask.to("cpu", torch.bool)
    n_real = m.sum(-1)
    pad = Lk - n_real
    cols = torch.arange(Lk).unsqueeze(0)
    if not torch.equal(m, cols >= pad.unsqueeze(1)):
        raise ValueError("replay attention needs left padding (each row: pads, then real tokens)")
    return pad


def replay_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                     **kwargs):
    """query (B, Hq, L, D), key/value (B, Hkv, Lk, D) with the L queries at the last L key
    columns; attention_mask from replay_mask. Returns ((B, L, Hq, D), None)."""
    B, Hq, L, D = query.shape
    Lk, Hkv = key.shape[2], key.shape[1]
    pad = _pads(attention_mask, B, Lk)                                   # (B,)
    qcol = torch.arange(L) + (Lk - L)                                    # key column of query i
    valid = qcol.unsqueeze(0) >= pad.unsqueeze(1)                        # (B, L) real queries
    n = valid.sum(1)
    cu = torch.zeros(B + 1, dtype=torch.int64)
    cu[1:] = n.cumsum(0)
    first = torch.clamp(pad - (Lk - L), min=0)                           # first real query
    pos0 = (Lk - L) + first - pad
    kv_start = torch.arange(B) * Lk + pad
    dev = query.device
    vmask = valid.to(dev)
    q = query.transpose(1, 2)[vmask].contiguous()                        # (T, Hq, D)
    kb = key.transpose(1, 2).reshape(B * Lk, Hkv, D).contiguous()        # (B*Lk, Hkv, D)
    vb = value.transpose(1, 2).reshape(B * Lk, Hkv, D).contiguous()
    # HF's scaling is head_dim ** -0.5; replay's model uses 1 / sqrt(D): take replay's when they
    # are the same number up to rounding, so the two agree on the last bit.
    ref = 1.0 / math.sqrt(D)
    scale = ref if scaling is None or abs(scaling - ref) <= 1e-12 * ref else float(scaling)
    window = getattr(module, "sliding_window", None) or 0
    o = ops.attention(q, kb, vb, cu.to(dev), pos0.to(dev), kv_start.to(dev), scale, window)
    out = torch.zeros(B, L, Hq, D, dtype=query.dtype, device=dev)
    out[vmask] = o
    return out, None


def register():
    """Register "replay" with transformers' attention and mask interfaces (idempotent)."""
    from replay.extras import need

    need("transformers", "hf", "replay.hf")
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN, replay_attention)
    AttentionMaskInterface.register(ATTN, replay_mask)


# ---------------------------------------------------------------------------------------------
# module patches

def _rms_forward(self, x):
    w = self.weight
    eps = getattr(self, "variance_epsilon", getattr(self, "eps", 1e-6))
    return ops.rms_norm(x.reshape(-1, x.shape[-1]), w, eps).reshape(x.shape)


def _mlp_forward(self, x):
    x2 = x.reshape(-1, x.shape[-1])
    g = ops.linear(x2, self.gate_proj.weight)
    u = ops.linear(x2, self.up_proj.weight)
    h = ops.silu_mul(torch.cat([g, u], dim=1))   # the same bits as replay's fused wgu matmul
    return ops.linear(h, self.down_proj.weight).reshape(*x.shape[:-1], -1)


def _rotary_forward(self, x, position_ids):
    pos = position_ids.to(self._replay_cos.device)
    return (self._replay_cos[pos].to(x.device, x.dtype),
            self._replay_sin[pos].to(x.device, x.dtype))


def model_config(hf_model) -> ModelConfig:
    """replay's ModelConfig of an HF model (raises for architectures replay does not run)."""
    return ModelConfig.from_hf(hf_model.config.to_dict())


@contextlib.contextmanager
def replay_kernels(hf_model):
    """Run `hf_model` with replay's kernels inside the block (see the module doc)."""
    from replay.invariant import invariant_mode

    cfg = model_config(hf_model)
    if cfg.window:
        raise NotImplementedError("replay.hf: sliding-window attention is not supported")
    p = next(hf_model.parameters())
    if p.dtype != torch.float32 and p.device.type == "cpu":
        raise ValueError(f"replay's CPU kernels are float32; the model is {p.dtype}")
    register()
    cos, sin = rope_tables(cfg, cfg.max_context)
    cos, sin = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)   # HF's (.., D) layout
    patched = []
    for m in hf_model.modules():
        name = type(m).__name__
        if name.endswith("RMSNorm"):
            m.forward = types.MethodType(_rms_forward, m)
        elif all(hasattr(m, a) for a in ("gate_proj", "up_proj", "down_proj")):
            m.forward = types.MethodType(_mlp_forward, m)
        elif name.endswith("RotaryEmbedding"):
            m._replay_cos, m._replay_sin = cos.to(p.device), sin.to(p.device)
            m.forward = types.MethodType(_rotary_forward, m)
        else:
            continue
        patched.append(m)
    prev = hf_model.config._attn_implementation
    hf_model.set_attn_implementation(ATTN)
    try:
        with invariant_mode(), ops.backend("replay"):
            yield hf_model
    finally:
        hf_model.set_attn_implementation(prev)
        for m in patched:
            del m.forward
            for a in ("_replay_cos", "_replay_sin"):
                if hasattr(m, a):
                    delattr(m, a)


# ---------------------------------------------------------------------------------------------
# generation

def identity(hf_model) -> str:
    """The model identity replay.Model.from_pretrained gives the same directory, or a hash of
    the weights for a model that was never saved."""
    path = getattr(hf_model.config, "_name_or_path", "") or getattr(hf_model, "name_or_path", "")
    if path and os.path.isfile(os.path.join(path, "config.json")):
        return Model.identity_of(path)
    import hashlib
    h = hashlib.sha256()
    for k, v in sorted(hf_model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return f"{hf_model.config.model_type}-hf-{h.hexdigest()[:16]}"


class ReplaySampler:
    """LogitsProcessor: row b's next token is replay.sampling.sample(logits row, params[b],
    position = prompt_len[b] + tokens generated so far); every other token gets -inf, so greedy
    decoding returns exactly that token. keep_logits: the rows it sampled from, per step."""

    def __init__(self, params: list[SamplingParams], prompt_lens: list[int], input_len: int,
                 keep_logits: bool = False):
        self.params, self.prompt_lens, self.input_len = params, prompt_lens, input_len
        self.keep = keep_logits
        self.logits: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        B = scores.shape[0]
        done = input_ids.shape[1] - self.input_len
        rows = scores.float().cpu()
        if self.keep:
            self.logits.append(rows.clone())
        tok = sampling.sample(rows, **sampling.columns(self.params),
                              position=[n + done for n in self.prompt_lens])
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(B), tok.to(scores.device)] = 0.0
        return out


def left_pad(seqs, pad_id: int):
    """(ids, attention mask, position ids), each (B, L) int64, for token sequences padded on the
    left to the longest; positions count from each row's first real token."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.int64)
    mask = torch.zeros(len(seqs), L, dtype=torch.int64)
    for b, s in enumerate(seqs):
        ids[b, L - len(s):] = torch.as_tensor(s, dtype=torch.int64)
        mask[b, L - len(s):] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def generate_records(hf_model, prompts, params, max_tokens: int = 32,
                     stop_token_ids=(), request_ids=None, tokenizer=None,
                     pad_token_id: int | None = None, kernels: bool = True,
                     keep_logits: bool = False, model_identity: str | None = None):
    """Generate with `hf_model.generate` and replay's sampler; one Record per prompt.

    prompts:   token id lists, or strings with `tokenizer`
    params:    one SamplingParams for all, or one per prompt
    kernels:   False runs stock transformers (its own kernels) with the same sampler: what an
               engine without replay's kernels would log (tests use it to show a failure)
    keep_logits: return (records, logits) with logits[request_id] = (n_output, vocab), the rows
               the sampler saw
    All prompts run as one left-padded batch.
    """
    from transformers import GenerationConfig, LogitsProcessorList

    if prompts and isinstance(prompts[0], str):
        if tokenizer is None:
            raise ValueError("generate_records: string prompts need a tokenizer")
        enc = [tokenizer.encode(p) for p in prompts]   # transformers or tokenizers tokenizer
        prompts = [e.ids if hasattr(e, "ids") else e for e in enc]
    prompts = [list(map(int, p)) for p in prompts]
    if not prompts or any(not p for p in prompts):
        raise ValueError("generate_records: every prompt needs at least one token")
    B = len(prompts)
    params = list(params) if isinstance(params, (list, tuple)) else [params] * B
    if len(params) != B:
        raise ValueError(f"generate_records: {len(params)} params for {B} prompts")
    for i, p in enumerate(params):
        p.validate(f"prompt {i}")
    params = [p.normalized() for p in params]
    request_ids = list(request_ids) if request_ids is not None else [f"hf-{i}" for i in range(B)]
    stop = [int(s) for s in stop_token_ids]
    pad_id = pad_token_id if pad_token_id is not None else (hf_model.config.pad_token_id or 0)
    dev = next(hf_model.parameters()).device

    ids, mask, pos = left_pad(prompts, pad_id)
    L = ids.shape[1]
    sampler = ReplaySampler(params, [len(p) for p in prompts], L, keep_logits)
    gc = GenerationConfig(do_sample=False, max_new_tokens=max_tokens, min_new_tokens=0,
                          eos_token_id=stop or None, pad_token_id=pad_id, use_cache=True,
                          num_beams=1, temperature=None, top_k=None, top_p=None)
    ctx = replay_kernels(hf_model) if kernels else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        seqs = hf_model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                                 position_ids=pos.to(dev), generation_config=gc,
                                 logits_processor=LogitsProcessorList([sampler]))
    gen = seqs[:, L:].cpu().tolist()
    ident = model_identity or identity(hf_model)
    records, logits = [], {}
    for b in range(B):
        out = gen[b]
        cut = next((j + 1 for j, t in enumerate(out) if t in stop), len(out))
        out = out[:cut]
        records.append(Record(request_ids[b], prompts[b], out, params[b], max_tokens, stop, ident,
                              {"engine": "transformers" + ("+replay" if kernels else "")}))
        if keep_logits:
            logits[request_ids[b]] = (torch.stack([s[b] for s in sampler.logits[:len(out)]])
                                      if out else torch.empty(0, hf_model.config.vocab_size))
    return (records, logits) if keep_logits else records


# ---------------------------------------------------------------------------------------------
# the HF model as the verifier

class HFVerifierModel:
    """The subset of replay.Model that replay.verify uses (cfg, identity, new_kv, forward,
    logits), backed by an HF model under replay_kernels: teacher-forced, left-padded."""

    def __init__(self, hf_model, model_identity: str | None = None):
        self.hf = hf_model
        self.cfg = model_config(hf_model)
        self.identity = model_identity or identity(hf_model)

    def new_kv(self, rows: int):
        return None   # HF keeps its own cache; the verifier's forward is one prefill

    def forward(self, batch: Varlen, kv=None) -> torch.Tensor:
        """Hidden states after the final norm, (T, hidden), for whole sequences (pos0 == 0)."""
        if bool((batch.pos0 != 0).any()):
            raise ValueError("HFVerifierModel: only whole sequences from position 0")
        seqs = [batch.tokens[int(batch.cu[i]): int(batch.cu[i + 1])]
                for i in range(len(batch.pos0))]
        ids, mask, pos = left_pad(seqs, 0)
        dev = next(self.hf.parameters()).device
        with torch.no_grad(), replay_kernels(self.hf):
            h = self.hf.base_model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                              position_ids=pos.to(dev), use_cache=False).last_hidden_state
        return h[mask.to(dev).bool()]                                     # packed, (T, hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        w = self.hf.get_output_embeddings().weight
        return ops.linear(hidden.float(), w.float()).float()
