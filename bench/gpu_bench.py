"""GPU benchmarks of replay, each side by side with its baseline in one run, written as one
markdown table (bench/results/gpu-<device>-<date>.md) and printed.

    python bench/gpu_bench.py                    # every section, full grids (CUDA)
    python bench/gpu_bench.py --quick            # smaller grids
    python bench/gpu_bench.py --sections model   # one section; others already run are kept
    python bench/gpu_bench.py --dry              # CPU, tiny shapes, same code: checks the logic

Sections (DESIGN §7; docs/gpu.md says what each figure means):
    peak     the bf16 dense peak measured by a large torch.mm (the MFU denominator)
    matmul   replay's Triton matmul vs torch.mm (cuBLAS) at Llama-3.1-8B shapes
    prefill  replay's attention vs torch SDPA, causal prefill, 32/8 heads, d = 128
    decode   the same at one query per sequence, batch 1..256, context 512..32k
    model    engine generation and verifier on an 8B-shaped model, replay kernels vs torch ops
    verify   one verifier MFU point on the 8B-shaped model (the first run's; --first)

Each section is kept as a part file next to the table (<table>.parts/<section>.md), so sections
run by separate commands (the lent machine allows 10 minutes per command) end up in one table.
A section that raises keeps its rows, shows the error, and makes the exit status 1.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass

SECTIONS = ("peak", "matmul", "prefill", "decode", "model", "verify")
# part files, in table order; "first", "env" and "tests" are written by gpu_suite.sh
ORDER = ("first", "env", "tests") + SECTIONS


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry", action="store_true",
                   help="CPU, tiny shapes, float32; Triton kernels run under TRITON_INTERPRET=1")
    p.add_argument("--quick", action="store_true", help="smaller grids")
    p.add_argument("--first", action="store_true",
                   help="the first run's grids (bench/gpu_suite.sh first): matmul at 3 shapes x "
                        "M = 1, 256, 4096; verify at batch 64")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)}, or 'none' to only "
                        "rebuild the table from the part files")
    p.add_argument("--out", help="table path (default bench/results/gpu-<device>-<date>.md)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for this run (default 480, dry 120): sections start no new "
                        "point after it, so one command stays inside the lent machine's limit")
    p.add_argument("--command", default=None, help="command to record in the table")
    p.add_argument("--where", action="store_true", help="print the table path and exit")
    a = p.parse_args(argv)
    a.sections = [] if a.sections == "none" else [s for s in a.sections.split(",") if s]
    bad = [s for s in a.sections if s not in SECTIONS]
    if bad:
        p.error(f"unknown section(s) {bad}; choose from {SECTIONS}")
    return a


@dataclass
class Ctx:
    """What every section needs: device, dtype, grid size, timing and the run's budget."""
    device: object
    dtype: object
    dry: bool
    quick: bool
    first: bool
    budget: object
    warmup: int
    iters: int
    token_budget: int
    lm_chunk: int
    peak: float | None = None

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    def free(self):
        import torch
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def table_path(args, util, device) -> str:
    if args.out:
        return args.out
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    name = f"gpu-{util.slug(util.device_name(device, args.dry))}-{date}.md"
    if args.dry:  # a dry run's figures mean nothing: keep them out of bench/results
        return os.path.join(tempfile.gettempdir(), "replay-gpu-dry", name)
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", name)


def measure_peak(ctx, util):
    sec = util.Section("peak", "Device peak (measured in this run)",
                       ["op", "dtype", "TFLOP/s"])
    n = 256 if ctx.dry else 8192
    try:
        ctx.peak = util.peak_tflops(ctx.device, ctx.dtype, n)
        sec.rows.append([f"torch.mm {n}x{n}x{n}", ctx.dtype_name, util.num(ctx.peak)])
        sec.notes.append("The MFU denominator: torch.mm (cuBLAS on a GPU), best of 3 means after 5 "
                         "warm-up calls (a datasheet peak is above what any matmul reaches).")
    except Exception as e:
        sec.fail(e)
    return sec


def write_part(parts: str, sec, command: str):
    os.makedirs(parts, exist_ok=True)
    ignore = os.path.join(parts, ".gitignore")
    if not os.path.exists(ignore):  # scratch: the assembled table is what gets committed
        with open(ignore, "w") as f:
            f.write("*\n")
    now = datetime.datetime.now(datetime.timezone.utc)
    with open(os.path.join(parts, f"{sec.key}.md"), "w") as f:
        f.write(sec.markdown() + f"\n_Section run by `{command}` at {now:%H:%M} UTC._\n")


FIRST_PARTS = ("env", "tests", "peak", "matmul", "verify")  # what `gpu_suite.sh first` writes


def assemble(path: str, parts: str, head: list[str]) -> str:
    body, missing = [], []
    first = os.path.exists(os.path.join(parts, "first.md"))
    for key in ORDER:
        p = os.path.join(parts, f"{key}.md")
        if os.path.exists(p):
            with open(p) as f:
                body.append(f.read().rstrip() + "\n")
        elif first and key in FIRST_PARTS:
            missing.append(key)
    if missing:  # say so rather than leave a reader to notice a section is absent
        body.append("## Not run\n\nNo result for: " + ", ".join(missing) + " (the step failed "
                    "before writing it, ran out of time, or was not reached: see 'First run: "
                    "steps').\n")
    text = "\n".join(head) + "\n" + "\n".join(body)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    args = parse(argv)
    if args.dry:  # must be set before triton is first imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/gpu
    import torch
    from gpu import util

    if args.dry:
        device, dtype = torch.device("cpu"), torch.float32
    elif torch.cuda.is_available():
        device, dtype = torch.device("cuda"), torch.bfloat16
    else:
        print("gpu_bench: no CUDA device; run with --dry for a CPU check of the logic",
              file=sys.stderr)
        return 2
    path = table_path(args, util, device)
    if args.where:
        print(path)
        return 0
    parts = path[:-3] + ".parts" if path.endswith(".md") else path + ".parts"
    command = args.command or " ".join(["python bench/gpu_bench.py"] +
                                       [shlex.quote(a) for a in (argv or sys.argv[1:])])
    budget = util.Budget(args.budget or (120 if args.dry else 480))
    ctx = Ctx(device, dtype, args.dry, args.quick, args.first, budget,
              warmup=1 if args.dry else 3, iters=1 if args.dry else 10,
              token_budget=64 if args.dry else 16384, lm_chunk=16 if args.dry else 1024)

    failed = False
    if args.sections:
        from gpu import kernels_bench as kb
        from gpu import model_bench as mb
        run = {"matmul": kb.bench_matmul, "prefill": kb.bench_prefill, "decode": kb.bench_decode,
               "model": mb.bench_model, "verify": mb.bench_verify}
        todo = [s for s in SECTIONS if s in args.sections]
        if {"model", "verify"} & set(todo) and "peak" not in todo:
            todo.insert(0, "peak")  # MFU needs this run's peak
        for key in todo:
            print(f"gpu_bench: {key} ...", file=sys.stderr, flush=True)
            sec = measure_peak(ctx, util) if key == "peak" else run[key](ctx)
            failed |= sec.error is not None
            write_part(parts, sec, command)
    text = assemble(path, parts, util.header(device, args.dry, command))
    print(text)
    print(f"gpu_bench: wrote {path}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
