"""Timing helpers of the CPU benchmark tables (bench/cpu.py): interleaved repeats, CPU time beside
wall-clock, min/median/max, and the machine's peaks.

On a shared machine wall-clock is noisy; the CPU time of the process is the steadier figure at one
thread (it still counts time lost to cache and memory contention). Both sides of a comparison run
alternately in one process, so the noise falls on both."""
import os
import statistics
import time

import torch

from replay._ext import C


def set_threads(n: int):
    torch.set_num_threads(n)
    C().set_num_threads(n)


def clock_ghz() -> float:
    """The core clock, from a chain of dependent integer adds (one per cycle) timed in this
    thread's CPU time (wall-clock would count the time others' jobs held the core): median of 5."""
    n = 200_000_000
    C().add_chain(1000)
    runs = []
    for _ in range(5):
        t0 = time.thread_time()
        C().add_chain(n)
        runs.append(n / (time.thread_time() - t0) / 1e9)
    return statistics.median(runs)


def interleaved(fns: dict, reps: int, warmup: int = 1) -> dict:
    """{name: fn} -> {name: {"wall": [...], "cpu": [...]}}, the fns called in turn `reps` times."""
    out = {k: {"wall": [], "cpu": []} for k in fns}
    for _ in range(warmup):
        for f in fns.values():
            f()
    for _ in range(reps):
        for k, f in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            f()
            out[k]["cpu"].append(time.process_time() - c0)
            out[k]["wall"].append(time.perf_counter() - w0)
    return out


def mmm(xs) -> tuple[float, float, float]:
    return min(xs), statistics.median(xs), max(xs)


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())
