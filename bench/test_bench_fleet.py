"""Fleet throughput: replay verify --ray (a local Ray cluster, one actor per CPU) against the
single-process verifier, on the same records, side by side in one run.

Model: a 4-layer, 256-wide Llama with a 4,096-token vocabulary and random weights (replay's
shipped model's shape); 1,200 records of 48 prompt and 16 output tokens in 12 shards. Reported:
records and output tokens verified per second, wall time (the fleet's includes reading and
merging, not the cluster's start, which is listed on its own).

    OMP_NUM_THREADS=2 python -m pytest bench/test_bench_fleet.py --benchmark-only
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from common import write_table  # bench/common.py

ray = pytest.importorskip("ray")

from replay.engine import Engine, Request  # noqa: E402
from replay.fleet import verify_fleet  # noqa: E402
from replay.model import Model, ModelConfig  # noqa: E402
from replay.records import Batch, SamplingParams  # noqa: E402
from replay.verify import verify  # noqa: E402

N, PROMPT, NEW, SHARDS = 1200, 48, 16, 12
ROWS = []


def bench_model() -> Model:
    return Model.random(ModelConfig.preset("bench-fleet"), seed=0, std=0.05)


def single_process(folder: str) -> dict:
    """The baseline, run in a subprocess so that it gets its own OMP_NUM_THREADS: best of two."""
    model, batch = bench_model(), Batch.read(folder)
    best, rep = float("inf"), None
    for _ in range(2):
        t0 = time.perf_counter()
        rep = verify(batch, model=model)
        best = min(best, time.perf_counter() - t0)
    return {"seconds": best, "ok": rep.ok, "records": len(rep.records), "tokens": rep.n_tokens,
            "threads": torch.get_num_threads()}


def _run_single(folder: str, threads: int) -> dict:
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); "
            "from test_bench_fleet import single_process; "
            "print(json.dumps(single_process(sys.argv[2])))")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", code, os.path.dirname(__file__), folder],
                         env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def data():
    model = bench_model()
    rng = random.Random(0)
    reqs = [Request(f"b{i:05d}", [rng.randrange(1, 4096) for _ in range(PROMPT)],
                    SamplingParams(0.8, 50, 1.0, seed=i), max_tokens=NEW) for i in range(N)]
    recs = Engine(model, max_batch=64, chunk_size=256).run(reqs)
    d = tempfile.mkdtemp()
    for s in range(SHARDS):
        Batch(recs[s::SHARDS]).to_parquet(os.path.join(d, f"shard-{s:03d}.parquet"))
    yield model, d
    shutil.rmtree(d, ignore_errors=True)


def _row(mode, layout, res_records, tokens, seconds, base=None):
    r = [mode, layout, res_records, tokens, f"{seconds:.2f}", f"{res_records / seconds:,.0f}",
         f"{tokens / seconds:,.0f}", f"{base / seconds:.2f}x" if base else "1.00x"]
    ROWS.append(r)


def test_fleet_vs_single_process(benchmark, data):
    model, d = data
    t_single = None
    for threads in sorted({1, os.cpu_count()}):
        r = _run_single(d, threads)
        assert r["ok"] and r["records"] == N
        toks = r["tokens"]
        t_single = t_single or r["seconds"]   # the 1-thread process is the reference
        _row("single process", f"1 x {r['threads']} threads", N, toks, r["seconds"], t_single)

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    t_init = time.perf_counter() - t0
    try:
        for workers in sorted({1, os.cpu_count()}):
            out = tempfile.mkdtemp()

            def fleet():
                shutil.rmtree(out, ignore_errors=True)
                t = time.perf_counter()
                res = verify_fleet([d], model, out, workers=workers)
                return time.perf_counter() - t, res

            t, res = benchmark.pedantic(fleet, rounds=1, iterations=1) if workers == 1 else fleet()
            assert res.ok and len(res.rows) == N and res.counts["tokens"] == toks
            _row("ray fleet", f"{workers} actors x 1 thread", N, toks, t, t_single)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        ray.shutdown()
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else "?"
    write_table(
        "fleet-cpu.md", "Fleet verification (Ray) vs the single-process verifier, CPU",
        ["verifier", "layout", "records", "output tokens", "seconds", "records/s", "tokens/s",
         "vs single"], ROWS,
        notes=(f"{N} records ({PROMPT} prompt + {NEW} output tokens) in {SHARDS} Parquet shards; "
               f"4-layer 256-wide Llama, vocabulary 4,096, random weights; exact policy, token "
               f"budget 4,096. The fleet's time includes reading shards, writing result parts "
               f"and merging; starting the local Ray cluster took {t_init:.1f} s more (not "
               f"counted). Single-process times are the best of two runs in a subprocess with "
               f"that many OpenMP threads; the fleet's are one run. 'vs single' is against the "
               f"1-thread process. Load average at the end: {' '.join(load)}: the machine is "
               f"shared with other jobs, so a second OpenMP thread in one process often waits "
               f"for a core."))
