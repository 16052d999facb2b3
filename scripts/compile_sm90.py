"""Compile every Triton kernel of replay.kernels for sm_90 (H100 / H200) without a GPU, and fail on
a compile error or a register spill.

    python scripts/compile_sm90.py [--only attention] [--out table.md]

Triton compiles for a GPUTarget("cuda", 90, 32) and runs its own ptxas (shipped in the triton
wheel) on the PTX; TRITON_DUMP_PTXAS_LOG makes it print ptxas -v's report, read here: registers
per thread, spill stores / loads, and the shared memory Triton allocated. Each kernel is compiled
in the variants replay launches (every dtype's fixed configuration, every constexpr flag), with
the argument specialisation of a typical Llama-3.1-8B-shaped launch (pointers and strides that
are multiples of 16, unit strides as constants), as the GPU would see them.

Run by `make gpu-compile-check` with the pinned triton and with the GPU machine's (3.6), each in
its own venv. The kernels are loaded from kernels/ by path, so replay need not be installed.
Exit status: 0 when every variant compiled with no spill, 1 otherwise.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import os
import re
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMEM_LIMIT = 232448  # bytes of shared memory one block may use on sm_90 (227 KiB)


def load_kernels():
    """kernels/ as the package `replay_kernels` (the name replay installs it under is not needed)."""
    path = os.path.join(ROOT, "kernels")
    spec = importlib.util.spec_from_file_location(
        "replay_kernels", os.path.join(path, "__init__.py"), submodule_search_locations=[path])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["replay_kernels"] = pkg
    spec.loader.exec_module(pkg)
    return {m: importlib.import_module(f"replay_kernels.{m}")
            for m in ("matmul", "attention", "rmsnorm", "log_softmax", "elementwise")}


def P(dtype: str) -> str:
    """A pointer argument to `dtype` (16-byte aligned, as torch allocates)."""
    return f"*{dtype}"


def variants(k):
    """(label, kernel, example arguments, constexprs, launch options) for every launch variant.
    Example arguments stand for a Llama-3.1-8B-shaped call: they decide Triton's specialisation
    (an int equal to 1 becomes a constant, one divisible by 16 gets that hint)."""
    import torch

    names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    out = []
    for dt, cfg in k["matmul"].MATMUL_CONFIGS.items():
        c = dict(cfg)
        opts = dict(num_warps=c.pop("num_warps"), num_stages=c.pop("num_stages"))
        t = names[dt]
        for bias in (False, True):
            args = dict(x_ptr=P(t), w_ptr=P(t), bias_ptr=P(t), out_ptr=P(t), M=300, N=6144,
                        K=4096, stride_xm=4096, stride_xk=1, stride_wn=4096, stride_wk=1,
                        stride_om=6144, stride_on=1)
            out.append((f"matmul {t} bias={bias}", k["matmul"]._matmul_kernel, args,
                        dict(c, HAS_BIAS=bias), opts))
    a = k["attention"]
    for dt, cfg in a.ATTENTION_CONFIGS.items():
        t = names[dt]
        for D in (64, 128):
            args = dict(q_ptr=P(t), k_ptr=P(t), v_ptr=P(t), out_ptr=P(t), part_m_ptr=P("fp32"),
                        part_l_ptr=P("fp32"), part_acc_ptr=P("fp32"), tile_seq_ptr=P("i64"),
                        tile_q0_ptr=P("i64"), cu_q_ptr=P("i64"), pos0_ptr=P("i64"),
                        kv_start_ptr=P("i64"), D=D, GROUP=4, n_slots=3, window=0, scale=0.088,
                        stride_qt=32 * D, stride_qh=D, stride_kt=8 * D, stride_kh=D,
                        stride_ot=32 * D, stride_oh=D)
            const = dict(BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_D=D, SPLIT=cfg.SPLIT,
                         PRECISION=cfg.PRECISION)
            opts = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                        enable_fp_fusion=False)
            for split in (False, True):
                out.append((f"attention {t} D={D} {'split programs' if split else 'one program'}",
                            a._attention_kernel, args, dict(const, SPLIT_PROGRAMS=split), opts))
            margs = dict(out_ptr=P(t), part_m_ptr=P("fp32"), part_l_ptr=P("fp32"),
                         part_acc_ptr=P("fp32"), row_pos_ptr=P("i64"), T=300, D=D, n_slots=3,
                         window=0, stride_ot=32 * D, stride_oh=D)
            out.append((f"attention merge {t} D={D}", a._attention_merge_kernel, margs,
                        dict(BLOCK_R=a.MERGE_BLOCK_R, BLOCK_D=D, SPLIT=cfg.SPLIT),
                        dict(enable_fp_fusion=False)))
    r, ls, ew = k["rmsnorm"], k["log_softmax"], k["elementwise"]
    for t in ("bf16", "fp16", "fp32"):
        for res in (False, True):
            args = dict(x_ptr=P(t), res_ptr=P(t), w_ptr=P(t), out_ptr=P(t), res_out_ptr=P(t),
                        D=4096, stride_x=4096, stride_res=4096, stride_out=4096,
                        stride_res_out=4096, eps=1e-5)
            out.append((f"rms_norm {t} residual={res}", r._rms_norm_kernel, args,
                        dict(BLOCK_D=r.BLOCK_D, HAS_RESIDUAL=res), dict(num_warps=r.NUM_WARPS)))
        out.append((f"log_softmax {t}", ls._log_softmax_kernel,
                    dict(x_ptr=P(t), out_ptr=P(t), N=128256, stride_x=128256, stride_out=128256),
                    dict(BLOCK_N=ls.BLOCK_N), dict(num_warps=ls.NUM_WARPS)))
        out.append((f"silu_mul {t}", ew._silu_mul_kernel,
                    dict(gu_ptr=P(t), out_ptr=P(t), F=14336, stride_gu=28672, stride_out=14336),
                    dict(BLOCK=ew.SILU_BLOCK), {}))
        out.append((f"rope {t}", ew._rope_kernel,
                    dict(x_ptr=P(t), pos_ptr=P("i64"), cos_ptr=P("fp32"), sin_ptr=P("fp32"),
                         H=32, HALF=64, stride_xt=6144, stride_xh=128, stride_cs=64),
                    dict(BLOCK_H=ew.ROPE_BLOCK_H, BLOCK_HALF=64), {}))
    return out


def signature(fn, args: dict, const: dict):
    """Triton's (signature, constexprs, attrs) for a launch with these example arguments."""
    names = list(fn.arg_names)
    missing = set(names) - set(args) - set(const)
    if missing:
        raise ValueError(f"{fn.__name__}: no example value for {sorted(missing)}")
    keep = {names[i] if isinstance(i, int) else i for i in (fn.do_not_specialize or ())}
    sig, consts, attrs = {}, dict(const), {}
    for i, n in enumerate(names):
        if n in const:
            sig[n] = "constexpr"
            continue
        v = args[n]
        if isinstance(v, str):  # a pointer
            sig[n] = v
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, float):
            sig[n] = "fp32"
        elif v == 1 and n not in keep:
            sig[n] = "constexpr"
            consts[n] = 1
        else:
            sig[n] = "i32"
            if v % 16 == 0 and n not in keep:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, consts, attrs


PTXAS_USED = re.compile(r"Used (\d+) registers")
PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_one(triton, fn, args, const, opts):
    """Compile for sm_90; returns (registers, spill store bytes, spill load bytes, shared bytes,
    whether the PTX has wgmma (Hopper's tensor-core instruction), seconds)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, consts, attrs = signature(fn, args, const)
    src = ASTSource(fn, sig, consts, attrs)
    log = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(log):  # TRITON_DUMP_PTXAS_LOG prints ptxas -v here
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
    sec = time.perf_counter() - t0
    text = log.getvalue()
    regs = [int(x) for x in PTXAS_USED.findall(text)]
    spills = [(int(a), int(b)) for a, b in PTXAS_SPILL.findall(text)]
    if not regs:
        raise RuntimeError(f"no ptxas -v report in the compile log:\n{text[-2000:]}")
    return (max(regs), max(s for s, _ in spills or [(0, 0)]), max(s for _, s in spills or [(0, 0)]),
            int(kernel.metadata.shared), "wgmma" in kernel.asm["ptx"], sec)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="compile only the variants whose label contains this")
    p.add_argument("--out", help="also write the table (markdown) here")
    a = p.parse_args(argv)
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    os.environ.pop("TRITON_INTERPRET", None)  # real compiles
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when it is unset
    cache = tempfile.mkdtemp(prefix="replay-sm90-")  # a cached kernel would skip ptxas
    os.environ["TRITON_CACHE_DIR"] = cache
    import torch
    import triton

    k = load_kernels()
    rows, failed = [], []
    head = (f"sm_90 compile check: triton {triton.__version__}, torch {torch.__version__}, "
            f"python {sys.version.split()[0]}")
    print(head, flush=True)
    for label, fn, args, const, opts in variants(k):
        if a.only and a.only not in label:
            continue
        try:
            regs, st, ld, smem, wgmma, sec = compile_one(triton, fn, args, const, opts)
        except Exception as e:  # report every variant, then fail
            msg = str(e).strip().splitlines()
            failed.append(label)
            rows.append(f"| {label} | COMPILE ERROR: {msg[0] if msg else type(e).__name__} "
                        "| | | | | |")
            print(rows[-1], "\n" + str(e)[-3000:], flush=True)
            continue
        bad = []
        if st or ld:
            bad.append(f"spills {st} B stored / {ld} B loaded")
        if smem > SMEM_LIMIT:
            bad.append(f"shared memory {smem} B > {SMEM_LIMIT} B")
        if bad:
            failed.append(label)
        rows.append(f"| {label} | {'FAIL: ' + '; '.join(bad) if bad else 'ok'} | {regs} | "
                    f"{st}/{ld} | {smem / 1024:.1f} | {'yes' if wgmma else 'no'} | {sec:.1f} |")
        print(rows[-1], flush=True)
    table = "\n".join([head, "", "| kernel | result | registers | spill bytes (st/ld) | "
                       "shared KiB | wgmma | compile s |", "|---|---|---|---|---|---|---|"] + rows)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table + "\n")
    total = sum(float(r.rsplit("|", 2)[1]) for r in rows if "COMPILE ERROR" not in r)
    print(f"{len(rows)} variants, {len(failed)} failed, {total:.0f} s of compiling", flush=True)
    if failed:
        print("FAILED: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
