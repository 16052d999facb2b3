"""Helpers shared by the tests (import them from here, never from conftest):

- controls for the bitwise tests: implementations that are batch-variant by construction, and a
  check that a run of the engine really varied what a contract test says it varies. A bitwise
  test proves something only if it can fail; showing that with torch's own CPU ops would rest on
  the machine's BLAS, which may happen to be invariant for the shapes at hand, while these
  variants break the contract on every machine;
- record shards for the fleet, watch and benchmark tests: a tiny random model, short outputs,
  some tampered records, and (optionally) a truncated Parquet shard and a JSONL line that is not
  JSON.
"""
import dataclasses
import os
import random

import torch

from replay import ops
from replay.engine import Engine, Request
from replay.model import Model, ModelConfig
from replay.records import Batch, SamplingParams

_linear = ops.linear  # replay's kernel, kept before a test swaps ops.linear for a variant


def split_k_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
                   below: int = 8) -> torch.Tensor:
    """replay's linear, except that for fewer than `below` rows the K reduction is split in two
    halves added at the end (split-K, as GEMM libraries do for skinny products): a row's bits
    then depend on how many rows share the call."""
    M, K = x.shape
    if M >= below or K < 2:
        return _linear(x, w, bias)
    if isinstance(w, ops.PackedLinear):  # a model's CPU weights are packed for replay's kernel
        w = w.unpack()
    h = K // 2
    out = _linear(x[:, :h].contiguous(), w[:, :h].contiguous()) + \
        _linear(x[:, h:].contiguous(), w[:, h:].contiguous())
    return out + bias if bias is not None else out


def assert_engine_varied(engine, *, batched: bool = True, chunked: bool = True,
                         placed: bool = False, capped: bool = False):
    """The run really had what the test claims to vary: several batch sizes (batched), prompts
    prefilled over several steps (chunked), slots other than the lowest free one (placed), and
    sequences held back by the per-step token cap (capped)."""
    st = engine.stats
    if batched:
        assert max(st["batch_sizes"]) > 1 and len(set(st["batch_sizes"])) > 1, st["batch_sizes"]
    if chunked:
        assert st["prompt_splits"] > 0, "no prompt was prefilled in chunks"
    if placed:
        assert st["off_lowest"] > 0, "every sequence took the lowest free slot"
    if capped:
        assert st["capped"] > 0, "the per-step token cap never held a sequence back"


def tiny_model() -> Model:
    return Model.random(ModelConfig.preset("test-tiny"), seed=3, std=0.3)


def records(model: Model, n: int, seed: int = 0, prefix: str = "r"):
    """n records, prompts of 3-10 tokens, 1-6 output tokens, greedy and sampled."""
    rng = random.Random(seed)
    V = model.cfg.vocab_size
    reqs = [Request(f"{prefix}{i:05d}", [rng.randrange(1, V) for _ in range(rng.randint(3, 10))],
                    SamplingParams(temperature=rng.choice([0.0, 0.7, 1.0]),
                                   top_k=rng.choice([0, 20]), top_p=rng.choice([1.0, 0.9]),
                                   seed=rng.randrange(2**64)),
                    max_tokens=rng.randint(1, 6), stop_token_ids=[0])
            for i in range(n)]
    return Engine(model, max_batch=128, chunk_size=16).run(reqs)


def tamper(recs, every: int, vocab: int):
    """Change the last output token of every `every`-th record (it must then fail)."""
    out = list(recs)
    for i in range(0, len(out), every):
        r = out[i]
        o = list(r.output)
        o[-1] = (o[-1] + 1) % vocab
        out[i] = dataclasses.replace(r, output=o)
    return out


def write_shards(recs, folder: str, n_shards: int, bad: bool = True) -> list[str]:
    """Alternate JSONL and Parquet shards; with bad=True one more Parquet shard is truncated and
    one JSONL shard has a line that is not JSON."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for s in range(n_shards):
        part = Batch(recs[s::n_shards])
        ext = "jsonl" if s % 2 == 0 else "parquet"
        p = os.path.join(folder, f"shard-{s:03d}.{ext}")
        part.to_jsonl(p) if ext == "jsonl" else part.to_parquet(p)
        paths.append(p)
    if bad:
        with open(paths[0], "a") as f:
            f.write('{"request_id": "cut-off", "prompt": [1, 2\n')
        p = os.path.join(folder, "shard-zzz-truncated.parquet")
        Batch(recs[:5]).to_parquet(p)
        with open(p, "rb") as f:
            data = f.read()
        with open(p, "wb") as f:
            f.write(data[: len(data) // 2])
        paths.append(p)
    return paths


def save_hf(path: str, arch: str = "llama", seed: int = 0, **kw) -> str:
    """A tiny Hugging Face checkpoint with random weights (config.json + model.safetensors),
    made offline with transformers; both replay.Model and transformers load it."""
    import torch
    import transformers

    cfg = dict(vocab_size=257, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=8,
               max_position_embeddings=128, rms_norm_eps=1e-5, initializer_range=0.3,
               tie_word_embeddings=False, bos_token_id=1, eos_token_id=0, pad_token_id=0)
    cfg.update(kw)
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
           "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}[arch]
    torch.manual_seed(seed)
    model = cls[1](cls[0](**cfg)).float()
    # norms are initialised to 1: make them random too, so that a wrong weight cannot hide
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return path
