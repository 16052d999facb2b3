"""End-to-end CPU benchmarks, each side by side in one run on the same model, prompts and lengths:

(a) replay's verifier against transformers' own teacher-forced forward pass (what a user would
    run instead), in output tokens per second;
(b) replay's engine against transformers' `generate` at the same batch size, tokens per second;
(c) the verifier against the engine: what verification costs relative to serving.

Model: a 6-layer, 256-wide Llama with an 8,192-token vocabulary and random weights, saved by
transformers and loaded by replay from the same safetensors.

    python -m pytest bench/test_bench_e2e.py --benchmark-only
"""
import os
import tempfile
import time

import pytest
import torch

from common import write_table  # bench/common.py

transformers = pytest.importorskip("transformers")

from replay.engine import Engine, Request  # noqa: E402
from replay.model import Model  # noqa: E402
from replay.records import SamplingParams  # noqa: E402
from replay.verify import verify  # noqa: E402

BATCH, PROMPT, NEW = 32, 64, 128
RESULTS = {}


@pytest.fixture(scope="module")
def models():
    cfg = transformers.LlamaConfig(hidden_size=256, num_hidden_layers=6, num_attention_heads=8,
                                   num_key_value_heads=8, intermediate_size=1024, vocab_size=8192,
                                   max_position_embeddings=1024)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    d = tempfile.mkdtemp()
    hf.save_pretrained(d)
    return hf, Model.from_pretrained(d)


def prompts():
    g = torch.Generator().manual_seed(1)
    return torch.randint(1, 8192, (BATCH, PROMPT), generator=g)


def params(i):
    return SamplingParams(temperature=0.8, top_k=50, top_p=1.0, seed=1000 + i)


def timed(fn, rounds=3):
    """Best of `rounds` after one warm-up call; returns (seconds, last result)."""
    out = fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


@pytest.fixture(scope="module")
def records(models):
    _, model = models
    reqs = [Request(f"b{i}", p.tolist(), params(i), max_tokens=NEW, stop_token_ids=[])
            for i, p in enumerate(prompts())]
    return Engine(model, max_batch=BATCH).run(reqs)


def test_generation(benchmark, models):
    hf, model = models
    p = prompts()

    def ours():
        reqs = [Request(f"b{i}", row.tolist(), params(i), max_tokens=NEW, stop_token_ids=[])
                for i, row in enumerate(p)]
        return Engine(model, max_batch=BATCH).run(reqs)

    def theirs():
        with torch.no_grad():
            return hf.generate(p, attention_mask=torch.ones_like(p), do_sample=True,
                               temperature=0.8, top_k=50, top_p=1.0, max_new_tokens=NEW,
                               min_new_tokens=NEW, pad_token_id=0, eos_token_id=None)

    t_hf, out = timed(theirs, rounds=2)
    assert out.shape == (BATCH, PROMPT + NEW)
    recs = benchmark.pedantic(ours, rounds=2, iterations=1, warmup_rounds=1)
    assert sum(len(r.output) for r in recs) == BATCH * NEW
    t_ours = benchmark.stats.stats.min
    RESULTS["generate"] = (BATCH * NEW / t_ours, BATCH * NEW / t_hf)


def test_verification(benchmark, models, records):
    hf, model = models
    seqs = torch.tensor([r.prompt + r.output[:-1] for r in records])
    targets = torch.tensor([r.output for r in records])

    def theirs():  # one teacher-forced forward and the claimed tokens' log-probabilities
        with torch.no_grad():
            logits = hf(seqs).logits[:, PROMPT - 1:]
            return torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1))

    t_hf, lp = timed(theirs, rounds=2)
    assert lp.shape == (BATCH, NEW, 1)
    report = benchmark.pedantic(lambda: verify(records, model=model), rounds=2, iterations=1,
                                warmup_rounds=1)
    assert report.ok and report.counts()["exact_tokens"] == BATCH * NEW
    RESULTS["verify"] = (BATCH * NEW / benchmark.stats.stats.min, BATCH * NEW / t_hf)
    if "generate" in RESULTS:  # the whole module ran: write the table
        write_results()


def write_results():
    (g_ours, g_hf), (v_ours, v_hf) = RESULTS["generate"], RESULTS["verify"]
    rows = [
        ["(a) verify: replay verifier vs transformers teacher-forced forward",
         f"{v_ours:,.0f}", f"{v_hf:,.0f}", f"{v_ours / v_hf:.2f}x", ">= 0.7x"],
        [f"(b) generate: replay engine vs transformers generate (batch {BATCH})",
         f"{g_ours:,.0f}", f"{g_hf:,.0f}", f"{g_ours / g_hf:.2f}x", ">= 1.0x"],
        ["(c) verify vs generate: replay verifier vs replay engine",
         f"{v_ours:,.0f}", f"{g_ours:,.0f}", f"{v_ours / g_ours:.2f}x", "-"],
    ]
    path = write_table(
        "cpu-e2e.md", "End to end on CPU: verifier and engine against transformers",
        ["comparison", "replay tokens/s", "baseline tokens/s", "ratio", "target"], rows,
        notes=(f"Llama, 6 layers, hidden 256, 8 heads, MLP 1024, vocab 8,192, random weights, "
               f"float32. {BATCH} requests x {PROMPT} prompt tokens x {NEW} output tokens; "
               "sampling T=0.8, top_k=50. Output tokens per second, best of 2 timed rounds after "
               f"a warm-up. transformers {transformers.__version__}. The verifier's figure "
               "includes validation, packing, the forward pass, the LM head and full scoring "
               "(sampler re-run, logprob, rank, margin) of every token."))
    print(open(path).read())
