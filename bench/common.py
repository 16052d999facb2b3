"""Shared pieces of the CPU benchmarks: the machine description and the results tables.

Each benchmark module measures replay and its baseline side by side in one run, then writes a
markdown table to bench/results/ with the device, date, commit and command."""
import datetime
import os
import platform
import subprocess
import sys

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def device() -> str:
    name = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return f"{name}, {os.cpu_count()} cores (OMP_NUM_THREADS={threads})"


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=os.path.dirname(__file__), check=True).stdout.strip()
        # results being rewritten by this very run do not make the code dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ":/", ":(exclude,top)bench/results"],
                               capture_output=True, text=True, cwd=os.path.dirname(__file__)
                               ).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_table(name: str, title: str, header: list[str], rows: list[list], notes: str = "",
                command: str | None = None):
    import torch

    os.makedirs(RESULTS, exist_ok=True)
    lines = [f"# {title}", "",
             f"- device: {device()}",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- commit: {commit()}",
             f"- command: `{command or ' '.join(['python -m pytest'] + sys.argv[1:])}`",
             f"- torch {torch.__version__}, torch threads {torch.get_num_threads()}", ""]
    if notes:
        lines += [notes, ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        lines.append("| " + " | ".join(str(x) for x in r) + " |")
    path = os.path.join(RESULTS, name)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
