"""replay's batch-invariant CPU linear (csrc/cpu/linalg.cpp) against torch.mm (MKL), float32.

Both run in the same process on the same inputs, in GFLOP/s; the table in
bench/results/cpu-matmul.md gives the ratio replay / torch. Shapes: decode (M = 1), small and
large batches with N = K = 2048, and one Llama-MLP-like up projection (N = 5632, K = 2048).

    OMP_WAIT_POLICY=passive python -m pytest bench/test_bench_matmul.py --benchmark-only

OMP_WAIT_POLICY=passive: on a shared 2-core machine, OpenMP threads that spin between calls
steal the cores that the other threads of the same call need; both libraries use the one libgomp.
"""
import os

import pytest
import torch

from common import write_table  # bench/common.py
from replay import ops
from replay._ext import C

SHAPES = [(1, 2048, 2048), (16, 2048, 2048), (256, 2048, 2048), (2048, 2048, 2048),
          (256, 5632, 2048)]
RESULTS = {}


@pytest.fixture(scope="module", autouse=True)
def table():
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(threads)
    C().set_num_threads(threads)
    yield
    rows = []
    for M, N, K in SHAPES:
        r, t = RESULTS.get(("replay", M, N, K)), RESULTS.get(("torch", M, N, K))
        if r and t:
            rows.append([M, N, K, f"{r:.1f}", f"{t:.1f}", f"{r / t:.2f}"])
    if rows:
        write_table("cpu-matmul.md", "CPU linear: replay vs torch.mm (float32)",
                    ["M", "N", "K", "replay GFLOP/s", "torch GFLOP/s", "replay / torch"], rows,
                    notes="The machine has 2 cores and is shared with other users' jobs "
                          f"(load average {os.getloadavg()[0]:.1f} at the end of the run); "
                          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}. "
                          "GFLOP/s = 2MNK / median time. replay: x @ w.T with the fixed 16-lane "
                          "reduction order; torch: torch.nn.functional.linear (MKL sgemm).")


@pytest.mark.parametrize("impl", ["replay", "torch"])
@pytest.mark.parametrize("M,N,K", SHAPES, ids=[f"M{m}-N{n}-K{k}" for m, n, k in SHAPES])
def test_linear(benchmark, impl, M, N, K):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g)
    with ops.backend(impl):
        ops.linear(x, w)  # warm up: first touch of the output, thread team start
        rounds = max(3, min(50, int(2e9 / (2 * M * N * K))))
        benchmark.pedantic(ops.linear, args=(x, w), rounds=rounds, iterations=1, warmup_rounds=1)
    RESULTS[(impl, M, N, K)] = 2 * M * N * K / benchmark.stats.stats.median / 1e9
