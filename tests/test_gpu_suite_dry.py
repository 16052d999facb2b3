"""The GPU suite's logic on CPU: `bench/gpu_bench.py --dry` runs every benchmark section at tiny
sizes (Triton kernels under TRITON_INTERPRET=1, the model on the C++ kernels) and writes a table
with every section; `bench/gpu_suite.sh all --dry` runs the phases and assembles the table.
A section that needs triton may say SKIPPED only when triton or its kernel module is missing.
"""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADINGS = {"peak": "## Device peak", "matmul": "## Matmul", "prefill": "## Attention prefill",
            "decode": "## Attention decode", "model": "## Whole model",
            "verify": "## Verifier MFU"}
TRITON_MODULE = {"matmul": "matmul", "prefill": "attention", "decode": "attention"}


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", REPLAY_SKIP_SETUP="1", PYTHON=sys.executable)
    e.pop("TRITON_INTERPRET", None)  # the dry run sets it itself
    return e


def sections(text: str) -> dict[str, str]:
    """Heading key -> the text of that section."""
    out = {}
    for key, head in HEADINGS.items():
        i = text.find(head)
        if i >= 0:
            j = text.find("\n## ", i + 1)
            out[key] = text[i: j if j >= 0 else len(text)]
    return out


def table_rows(body: str) -> list[list[str]]:
    """Data rows of the first markdown table in a section."""
    lines = body.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("|")), len(lines))
    rows = []
    for ln in lines[start + 2:]:  # past the header and the |---| line
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return rows


def missing_triton(module: str) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if not os.path.exists(os.path.join(ROOT, "kernels", f"{module}.py")):
        return f"kernels/{module}.py is not in this tree"
    return None


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-dry") / "table.md"
    r = subprocess.run([sys.executable, "bench/gpu_bench.py", "--dry", "--out", str(out)],
                       cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    text = out.read_text()
    assert text.strip() in r.stdout  # the table is also printed
    return text


def test_header_says_what_ran(dry):
    for field in ("- device: cpu (dry run)", "- date: ", "- commit: ", "- command: `python "
                  "bench/gpu_bench.py --dry --out", "- versions: torch ",
                  "**Dry run: not run on a GPU.**"):
        assert field in dry, field


def test_every_section_is_there_and_none_failed(dry):
    got = sections(dry)
    assert set(got) == set(HEADINGS), sorted(set(HEADINGS) - set(got))
    assert "FAILED" not in dry


@pytest.mark.parametrize("key", sorted(TRITON_MODULE))
def test_triton_sections_ran_unless_triton_is_missing(dry, key):
    body = sections(dry)[key]
    why = missing_triton(TRITON_MODULE[key])
    if why:
        assert "SKIPPED:" in body
        pytest.skip(f"{key}: {why}")
    assert "SKIPPED" not in body
    rows = table_rows(body)
    assert len(rows) >= 2
    for r in rows:  # rates are positive numbers, ratios end in x
        assert float(r[2].replace(",", "")) > 0 and float(r[3].replace(",", "")) > 0, r
        assert r[4].endswith("x"), r
    if key == "matmul":  # the replay kernel keeps rows independent of M
        assert all(r[5] == "yes" for r in rows), rows
    else:  # through replay.ops too, and the kernel agrees with SDPA to float32 rounding
        assert all(r[5].endswith("x") and float(r[6]) < 1e-4 for r in rows), rows


def test_model_section_measured_both_backends(dry):
    body = sections(dry)["model"]
    rows = table_rows(body)
    assert {(r[0], r[1]) for r in rows} == {("1", "replay"), ("1", "torch"), ("3", "replay"),
                                            ("3", "torch")}
    for r in rows:
        assert float(r[2].replace(",", "")) > 0 and float(r[3].replace(",", "")) > 0, r
        assert re.fullmatch(r"\d+\.\d%", r[5]), r
        if r[1] == "replay":
            assert r[6] == "100.00%", r  # the verifier recomputes every row exactly
    assert "generate time replay/torch" in body  # the summary with the targets


def test_verify_section_one_point(dry):
    rows = table_rows(sections(dry)["verify"])
    assert len(rows) == 1 and rows[0][0] == "3", rows
    assert re.fullmatch(r"\d+\.\d%", rows[0][8]) and rows[0][9] == "100.00%", rows


def first_dry(tmp_path, limit: int):
    out = tmp_path / "first.md"
    r = subprocess.run(["bash", "bench/gpu_suite.sh", "first", "--dry", "--out", str(out)],
                       cwd=ROOT, env=dict(env(), REPLAY_FIRST_LIMIT=str(limit)),
                       capture_output=True, text=True, timeout=limit + 120)
    return r, out.read_text() if out.exists() else ""


def test_first_dry_run(tmp_path):
    """`first`: every step ran within its box, and the table has each step's part."""
    r, text = first_dry(tmp_path, 360)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    steps = table_rows(text[text.index("## First run: steps"):])
    assert [s[0] for s in steps] == ["environment", "build", "bf16 bitwise replay",
                                     "matmul vs cuBLAS", "verifier MFU"], steps
    assert all(s[3] == "ok" for s in steps), steps
    assert sum(int(s[2].rstrip("s")) for s in steps) <= 360
    for head in ("## Environment", "## GPU tests", "## Device peak", "## Matmul",
                 "## Verifier MFU"):
        assert head in text, head
    assert "**Dry run: not run on a GPU.**" in text and "## Not run" not in text
    assert "test_engine_rows_equal_verifier_rows_bf16" in text  # the bitwise tests were asked for


@pytest.mark.slow
def test_first_never_aborts_and_says_what_did_not_run(tmp_path):
    """Out of time after the first steps: the later steps time out or get no time, the run goes
    on to the end, exits 1, and the table names what has no result. 4 s: the environment step
    alone (python importing torch) takes about that, so the verifier step gets the 1 s floor of
    `left`; with 12 s a quiet machine once finished every step's part in time (CI, 2026-12-02)."""
    r, text = first_dry(tmp_path, 4)
    assert r.returncode == 1
    assert "gpu_suite: FAILED" in r.stderr
    steps = table_rows(text[text.index("## First run: steps"):])
    assert len(steps) == 5, steps  # every step was tried
    assert any(s[3].startswith("TIMEOUT") for s in steps), steps
    assert "## Not run" in text and "verify" in text[text.index("## Not run"):]


def test_suite_script_dry_run(tmp_path):
    """The shell script: tests phase (GPU tests skip without CUDA and say why), a benchmark
    section, and the table assembled from both parts and printed last."""
    out = tmp_path / "suite.md"
    r = subprocess.run(["bash", "bench/gpu_suite.sh", "all", "--dry", "--sections", "peak",
                        "--out", str(out)], cwd=ROOT, env=env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    text = out.read_text()
    assert "command: `bench/gpu_suite.sh all --dry --sections peak --out" in text
    assert "## GPU tests" in text and "`python -m pytest -q -m gpu tests`" in text
    assert "needs a CUDA device" in text  # skip reasons are listed
    assert "## Device peak" in text
    assert r.stdout.rstrip().endswith(text.rstrip().splitlines()[-1])
    assert "gpu_suite: OK" in r.stderr
