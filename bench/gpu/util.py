"""Timing, time budget, environment description and markdown sections for bench/gpu_bench.py."""
from __future__ import annotations

import datetime
import os
import re
import subprocess
import time
import traceback
from dataclasses import dataclass, field

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------------------------------------
# timing

def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device: torch.device, warmup: int = 3, iters: int = 10, repeats: int = 3) -> float:
    """Seconds per call of fn(): the best over `repeats` of the mean over `iters` calls, after
    `warmup` calls (Triton compiles and cuBLAS picks its algorithm on the first calls). On CUDA the
    interval is measured with events around the whole loop, after a synchronize, so host launch
    overhead counts only where it stalls the device."""
    for _ in range(warmup):
        fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            sec = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            sec = time.perf_counter() - t0
        best = min(best, sec / iters)
    return best


def wall(fn, device: torch.device):
    """(seconds, result) of one call, synchronized on both ends: for long end-to-end runs
    (a whole generation or verification), where host work is part of the cost."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def peak_tflops(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """The dense matmul peak measured here: torch.mm of two n x n matrices (cuBLAS on CUDA), best
    of three means. MFU is reported against this figure, not the datasheet's."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    iters = 20 if device.type == "cuda" else 2
    sec = time_fn(lambda: torch.mm(a, b), device, warmup=5, iters=iters)
    return 2 * n ** 3 / sec / 1e12


class Budget:
    """A deadline for the whole run: sections stop starting new grid points once it has passed, so
    one command stays inside the lent machine's per-command limit and still writes its table."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def out(self) -> bool:
        return self.left() <= 0


# ---------------------------------------------------------------------------------------------
# environment

def device_name(device: torch.device, dry: bool) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu (dry run)" if dry else "cpu"


def slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (safe in a file name)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def commit() -> str:
    # The lent machine gets a copy of the working tree without .git: the suite passes the commit in.
    if os.environ.get("REPLAY_COMMIT"):
        return os.environ["REPLAY_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=REPO, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=REPO).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git checkout)"


def versions() -> str:
    parts = [f"torch {torch.__version__}"]
    parts.append(f"CUDA {torch.version.cuda}" if torch.version.cuda else "CUDA none")
    try:
        import triton
        parts.append(f"triton {triton.__version__}")
    except ImportError:
        parts.append("triton not installed")
    try:
        from replay._ext import C
        C()
        parts.append("replay._C built" + (" with CUDA" if hasattr(C(), "score_cuda_f32") else
                                          " (CPU only)"))
    except RuntimeError:
        parts.append("replay._C not built")
    return ", ".join(parts)


def header(device: torch.device, dry: bool, command: str) -> list[str]:
    now = datetime.datetime.now(datetime.timezone.utc)
    lines = [f"# GPU suite: {device_name(device, dry)}", "",
             f"- device: {device_name(device, dry)}"]
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        lines[-1] += f" ({p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB)"
    lines += [f"- date: {now:%Y-%m-%d %H:%M} UTC",
              f"- commit: {commit()}",
              f"- command: `{command}`",
              f"- versions: {versions()}",
              f"- TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', 'unset')}", ""]
    if dry:
        lines += ["**Dry run: not run on a GPU.** CPU, tiny shapes, float32. It checks the "
                  "script's logic and times its steps; its figures mean nothing.", ""]
    elif device.type != "cuda":
        lines += ["**Not run on a GPU.**", ""]
    return lines


# ---------------------------------------------------------------------------------------------
# sections

@dataclass
class Section:
    """One benchmark's table. A section that cannot run says why (`skipped`); one that raised
    keeps the rows it had and the error (`error`), and the run exits non-zero."""
    key: str
    title: str
    header: list[str]
    rows: list[list] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)     # before the table
    footer: list[str] = field(default_factory=list)    # after it
    skipped: str | None = None
    error: str | None = None

    def fail(self, exc: BaseException):
        """Record an exception (each distinct message once) and print its traceback."""
        msg = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        if self.error is None:
            self.error = msg
        elif msg not in self.error:
            self.error += f"`; `{msg}"
        traceback.print_exc()

    def markdown(self) -> str:
        out = [f"## {self.title}", ""]
        if self.skipped:
            out += [f"SKIPPED: {self.skipped}", ""]
        out += [n + "\n" for n in self.notes]
        if self.rows:
            out.append("| " + " | ".join(self.header) + " |")
            out.append("|" + "|".join("---" for _ in self.header) + "|")
            out += ["| " + " | ".join(str(x) for x in r) + " |" for r in self.rows]
            out.append("")
        out += [n + "\n" for n in self.footer]
        if self.error:
            out += [f"FAILED: `{self.error}`", ""]
        return "\n".join(out)


def fmt(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def num(x: float) -> str:
    """A rate for a table: 612.3 -> '612', 3.14159 -> '3.14', 0.00123 -> '0.00123'."""
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.2f}" if x >= 1 else f"{x:.3g}"


def ratio(a: float, b: float) -> str:
    return num(a / b) + "x" if b > 0 else "-"
