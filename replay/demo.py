"""The demo: generate with the shipped small model under changing batch compositions, then
verify every token.

Three engines serve the same requests with different batch sizes, prefill chunk sizes, arrival
patterns and KV-slot placement. Replay's kernels make every run produce the same tokens, and the
verifier recomputes each token's logits in one teacher-forced pass and accepts all of them.
Then one token of one record is changed, and the verifier points at it.
"""
from __future__ import annotations

import dataclasses
import os
import random
import sysconfig
import time

from replay.engine import Engine, Request
from replay.model import Model
from replay.records import Batch, SamplingParams
from replay.verify import verify

PROMPTS = [
    "import os\n", "def main(", "class Config:\n    def __init__(self", "for i in range(",
    "    def __repr__(self):\n        return ", "if __name__ == '__main__':\n", "try:\n    import ",
    "def read_file(path):\n    with open(", "    raise ValueError(", "import sys\nimport re\n\n",
]

# Engine settings for the three runs: (max_batch, chunk_size, arrivals per step, placement seed)
RUNS = [(1, 1, 1, None), (7, 7, 3, 11), (48, 97, 40, 23)]


def stdlib_prompts(n: int, rng: random.Random) -> list[str]:
    """Openings of standard-library modules: text every machine has, of mixed lengths."""
    root = sysconfig.get_paths()["stdlib"]
    files = sorted(f for f in os.listdir(root) if f.endswith(".py"))
    out = []
    for f in rng.sample(files, min(n, len(files))):
        with open(os.path.join(root, f), encoding="utf-8", errors="replace") as fh:
            text = fh.read(4000)
        start = rng.randrange(0, max(1, len(text) - 600))
        out.append(text[start: start + rng.choice([40, 150, 600])])
    return out


def make_requests(tok, n: int, max_tokens: int, stop: list[int], seed: int = 0) -> list[Request]:
    rng = random.Random(seed)
    texts = PROMPTS + stdlib_prompts(n, rng)
    reqs = []
    for i in range(n):
        ids = tok.encode(texts[i % len(texts)]).ids
        temperature = [0.0, 0.7, 1.0, 0.9][i % 4]
        params = SamplingParams(temperature=temperature, top_k=[0, 50, 0, 20][i % 4],
                                top_p=[1.0, 1.0, 0.95, 0.9][i % 4], seed=rng.getrandbits(64))
        reqs.append(Request(f"demo-{i:03d}", ids, params, max_tokens=max_tokens,
                            stop_token_ids=list(stop)))
    return reqs


def run(n_requests: int = 40, max_tokens: int = 64, out_dir: str = "runs/demo",
        model_dir: str | None = None, log=print) -> bool:
    import replay
    from replay.text import Text

    model_dir = model_dir or replay.TINY_MODEL
    model = Model.from_pretrained(model_dir)
    tok = Text.load(model_dir).tok
    log(f"model {model.identity}: {model.n_params / 1e6:.1f}M parameters, "
        f"vocab {model.cfg.vocab_size}, {model.cfg.n_layers} layers")

    outputs = []
    for max_batch, chunk, per_step, placement in RUNS:
        reqs = make_requests(tok, n_requests, max_tokens, model.eos_token_ids)
        for i, r in enumerate(reqs):
            r.arrival = i // per_step
        engine = Engine(model, max_batch=max_batch, chunk_size=chunk, placement_seed=placement)
        t0 = time.perf_counter()
        records = engine.run(reqs, progress=True)
        dt = time.perf_counter() - t0
        n_tok = sum(len(r.output) for r in records)
        sizes = engine.stats["batch_sizes"]
        log(f"generate: max_batch={max_batch:2d} chunk={chunk:2d}: {len(records)} requests, "
            f"{n_tok} tokens in {dt:.1f} s ({n_tok / dt:.0f} tokens/s), "
            f"{len(sizes)} steps, batch sizes {min(sizes)}..{max(sizes)}")
        outputs.append(records)

    first = outputs[0]
    same = all([r.output for r in o] == [r.output for r in first] for o in outputs[1:])
    log(f"same tokens under all {len(RUNS)} batch compositions: {same}")

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "records.jsonl")
    Batch(outputs[-1]).to_jsonl(path)
    report = verify(path, model=model, progress=True)
    log(report.summary())
    report.write(os.path.join(out_dir, "report"))

    sample = outputs[-1][1 % n_requests]
    log("\nsample (demo-001):\n" + tok.decode(sample.prompt) + "\u2192" + tok.decode(sample.output))

    # A compromised server changes one token: the verifier names the record and the position.
    bad = outputs[-1][5 % n_requests]  # any record, also with --requests below 6
    j = len(bad.output) // 2
    forged = dataclasses.replace(bad, output=list(bad.output))
    forged.output[j] = (forged.output[j] + 1) % model.cfg.vocab_size
    caught = verify([forged], model=model)
    log("\ntampering check (one token changed):\n" + caught.summary(max_lines=1))
    ok = same and report.ok and not caught.ok
    log(f"\ndemo {'OK' if ok else 'FAILED'}: records and report in {out_dir}/")
    return ok
