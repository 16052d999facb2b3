"""CPU benchmark tables (bench/results/cpu-*.md): replay against what a user would run instead,
side by side in one process, at one and two threads.

    python bench/cpu.py matmul      # ops.linear (packed weights) vs torch F.linear (MKL)
    python bench/cpu.py e2e         # verifier vs transformers' forward, engine vs generate
    python bench/cpu.py context     # verifier time per output token vs total length, vs SDPA
    python bench/cpu.py memory      # resident weights and peak working set vs transformers
    python bench/cpu.py all         # matmul (the 0.5B shapes), e2e and context in one run

Each table gives the device, date, commit, command, load average, the clock and the peaks:
theoretical = clock x 32 flop/cycle (two 8-lane AVX2 FMA pipes), practical = torch.mm at
2048 x 2048 x 2048 on one thread, measured in the same run.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from common import write_table  # noqa: E402
from cpu_timing import clock_ghz, interleaved, load, mmm, set_threads  # noqa: E402

from replay import ops  # noqa: E402
from replay._ext import C  # noqa: E402

# (K, N) of the 0.5B (Qwen2.5-0.5B) layers as the issue names them, the fused ones the model runs,
# and the project's small shape; M = tokens in the call.
MATMUL = [("mlp up (896, 4864)", 896, 4864), ("mlp down (4864, 896)", 4864, 896),
          ("lm head (896, 151936)", 896, 151936), ("fused qkv (896, 1152)", 896, 1152),
          ("fused gate+up (896, 9728)", 896, 9728), ("small mlp (256, 1024)", 256, 1024)]
MS = (1, 16, 256, 2048)
COMMAND = ""


def peaks(ghz: float) -> tuple[float, float]:
    """(theoretical, practical) single-core GFLOP/s."""
    set_threads(1)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    t = interleaved({"mm": lambda: torch.mm(a, b)}, reps=5)["mm"]
    return ghz * 32, 2 * 2048 ** 3 / mmm(t["cpu"])[1] / 1e9


def header_notes(ghz, theo, prac, extra=""):
    return (f"Clock {ghz:.2f} GHz (dependent-add chain); theoretical peak {theo:.0f} GFLOP/s per "
            f"core (clock x 32: two 8-lane AVX2 FMA pipes); practical peak {prac:.0f} GFLOP/s "
            "(torch.mm 2048^3, one thread, CPU time). replay runs the "
            f"`{C().isa_name()}` code path. " + extra)


_PEAKS = None


def machine() -> tuple[float, float, float]:
    """(clock GHz, theoretical, practical peak), measured once per run."""
    global _PEAKS
    if _PEAKS is None:
        ghz = clock_ghz()
        _PEAKS = (ghz, *peaks(ghz))
    return _PEAKS


def matmul(args):
    ghz, theo, prac = machine()
    load0 = load()
    rows = []
    for threads in (1, 2):
        set_threads(threads)
        for name, K, N in [m for m in MATMUL if m[0] in args.matmul_shapes]:
            for M in MS:
                if N > 100_000 and M > 256:
                    continue  # the LM head runs on output rows in chunks of at most 512
                g = torch.Generator().manual_seed(0)
                x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g) * 0.05
                p = ops.pack_linear(w)
                flop = 2 * M * N * K
                reps = max(3, min(args.max_reps, int(args.seconds * 60e9 / flop)))
                t = interleaved({"replay": lambda: ops.linear(x, p), "torch": lambda: F.linear(x, w)},
                                reps=reps)
                r, tt = t["replay"], t["torch"]
                rc, tc = mmm(r["cpu"]), mmm(tt["cpu"])
                rw, tw = mmm(r["wall"]), mmm(tt["wall"])
                rows.append([threads, name, M, f"{flop / rc[1] / 1e9:.1f}", f"{flop / tc[1] / 1e9:.1f}",
                             f"**{tc[1] / rc[1]:.2f}**",
                             f"{tc[0] / rc[2]:.2f} / {tc[2] / rc[0]:.2f}",
                             f"{flop / rw[1] / 1e9:.1f}", f"{flop / tw[1] / 1e9:.1f}",
                             f"{tw[1] / rw[1]:.2f}", f"{100 * flop / rc[1] / 1e9 / prac:.0f}%",
                             reps])
                print(*rows[-1], flush=True)
    write_table("cpu-matmul.md", "CPU linear: replay (packed, invariant) vs torch F.linear (MKL), float32",
                ["threads", "shape (K, N)", "M", "replay GFLOP/s (CPU)", "torch GFLOP/s (CPU)",
                 "ratio (CPU, medians)", "ratio range (worst / best)", "replay GFLOP/s (wall)",
                 "torch GFLOP/s (wall)", "ratio (wall)", "replay / practical peak", "repeats"],
                rows, notes=header_notes(ghz, theo, prac,
                                         f"Load average (1/5/15 min) {load0} at the start, {load()} at "
                                         "the end: the machine is shared. GFLOP/s = 2MNK / median "
                                         "time; CPU time counts every thread (at two threads it "
                                         "includes spinning), so at two threads wall-clock is the "
                                         "figure to read; replay / practical peak is the CPU-time "
                                         "GFLOP/s over one core's practical peak. Ratio range: "
                                         "torch's fastest over replay's "
                                         "slowest repeat, and the reverse. Both sides alternate in "
                                         "one process on the same inputs."),
                command=COMMAND)


# ---------------------------------------------------------------------------------------------
# end to end

SHAPES = {  # name: transformers config fields; the engine's generate comparisons use `small`
    "0.5B": dict(model="qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, intermediate_size=4864, vocab_size=151936,
                 tie_word_embeddings=True),
    "small": dict(model="llama", hidden_size=256, num_hidden_layers=6, num_attention_heads=8,
                  num_key_value_heads=8, intermediate_size=1024, vocab_size=8192,
                  tie_word_embeddings=False),
}


def hf_and_replay(shape: str, layers: int | None = None, context: int = 1024):
    """A random transformers model of the shape, saved and loaded back by replay (same weights)."""
    import atexit
    import shutil
    import tempfile

    import transformers

    from replay.model import Model

    kw = dict(SHAPES[shape])
    arch = kw.pop("model")
    if layers:
        kw["num_hidden_layers"] = layers
    cls = {"qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
           "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM)}[arch]
    torch.manual_seed(0)
    hf = cls[1](cls[0](max_position_embeddings=context, **kw)).eval()
    d = tempfile.mkdtemp()
    atexit.register(shutil.rmtree, d, True)  # a 0.5B checkpoint is 2 GB of /tmp
    hf.save_pretrained(d)
    return hf, Model.from_pretrained(d), d


def hf_logprobs(hf, seqs: torch.Tensor, targets: torch.Tensor, P: int):
    """transformers' teacher-forced forward, logits at the output positions only."""
    with torch.no_grad():
        h = hf.model(seqs).last_hidden_state[:, P - 1:]
        logits = hf.lm_head(h)
        return torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1))


def replay_records(model, n: int, P: int, new: int, vocab: int):
    from replay.engine import Engine, Request
    from replay.records import SamplingParams

    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(1, vocab, (n, P), generator=g)
    reqs = [Request(f"r{i}", p.tolist(), SamplingParams(temperature=0.8, top_k=50, seed=100 + i),
                    max_tokens=new, stop_token_ids=[]) for i, p in enumerate(prompts)]
    return Engine(model, max_batch=n).run(reqs), prompts


def e2e(args):
    from replay.verify import verify

    ghz, theo, prac = machine()
    load0 = load()
    rows, notes = [], []
    for shape in args.shapes:
        hf, model, _ = hf_and_replay(shape)
        V = model.cfg.vocab_size
        n, P, new = 8, 128, 32
        recs, _ = replay_records(model, n, P, new, V)
        seqs = torch.tensor([r.prompt + r.output[:-1] for r in recs])
        targets = torch.tensor([r.output for r in recs])
        flop = 2 * (model.n_params - V * model.cfg.hidden_size) * seqs.numel() + \
            2 * V * model.cfg.hidden_size * targets.numel()  # matmul flops (attention aside)
        for threads in (1, 2):
            set_threads(threads)
            report = verify(recs, model=model)
            assert report.ok and report.counts()["exact_tokens"] == n * new
            fns = {"replay": lambda: verify(recs, model=model),
                   "hf": lambda: hf_logprobs(hf, seqs, targets, P),
                   "forward": lambda: model(list(map(list, seqs.tolist())))[0]}
            if threads > 1:
                del fns["forward"]  # the bare forward's share is read at one thread
            t = interleaved(fns, reps=args.reps)
            r, b, fw = (mmm(t[k]["cpu"]) if k in t else (0, float("nan"), 0)
                        for k in ("replay", "hf", "forward"))
            rw, bw = mmm(t["replay"]["wall"]), mmm(t["hf"]["wall"])
            rows.append([shape, "verify vs teacher-forced forward", threads, f"{n * new / r[1]:,.0f}",
                         f"{n * new / b[1]:,.0f}", f"**{b[1] / r[1]:.2f}**",
                         f"{b[0] / r[2]:.2f} / {b[2] / r[0]:.2f}", f"{bw[1] / rw[1]:.2f}",
                         f"{100 * flop / r[1] / 1e9 / prac:.0f}% / "
                         f"{100 * flop / b[1] / 1e9 / prac:.0f}%",
                         f"verify / bare forward {r[1] / fw[1]:.2f}" if "forward" in t else "-"])
            print(*rows[-1], flush=True)
        notes.append(f"Where the time goes in one {shape} verify (one thread, CPU time of "
                     f"replay.ops' kernels): {where_time_goes(model, recs)}.")
        print(notes[-1], flush=True)
        del hf, model
    if args.batches:
        generate(args, rows)
    write_table("cpu-e2e.md", "End to end on CPU: replay's verifier vs transformers",
                ["model", "comparison", "threads", "replay tokens/s (CPU)", "baseline tokens/s (CPU)",
                 "ratio (CPU, medians)", "ratio range", "ratio (wall)", "MFU replay / baseline",
                 "note"], rows,
                notes=header_notes(ghz, theo, prac,
                                   f"Load average {load0} at the start, {load()} at the end. "
                                   "8 requests x 128 prompt + 32 output tokens, random weights, "
                                   "float32, the same safetensors on both sides. Baseline: "
                                   "transformers' teacher-forced forward computing logits at the "
                                   "output positions only, then log-softmax and the claimed tokens' "
                                   "log-probabilities. replay: `replay.verify` (validation, packing, "
                                   "forward, LM head, the sampler re-run and every score). MFU: "
                                   "matmul flops (2 x params x tokens, the LM head on output rows "
                                   "only) / CPU time (summed over the threads) / the practical "
                                   "peak of one core. Engine rows: replay's "
                                   "Engine (seeded Gumbel-max sampler) against transformers' "
                                   "`generate` (do_sample) on the same prompts, output tokens per "
                                   "second.\n\n" + "\n\n".join(notes)),
                command=COMMAND)


def generate(args, rows=None):
    """replay's engine against transformers' `generate` on the small shape, at batch 8 and 32
    (prompt 64, 128 new tokens, T = 0.8, top-k 50), one and two threads."""
    from replay.engine import Engine, Request
    from replay.records import SamplingParams

    hf, model, _ = hf_and_replay("small")
    P, new = 64, 128
    rows = [] if rows is None else rows
    for B in args.batches:
        g = torch.Generator().manual_seed(2)
        prompts = torch.randint(1, model.cfg.vocab_size, (B, P), generator=g)

        def ours():
            reqs = [Request(f"g{i}", p.tolist(), SamplingParams(temperature=0.8, top_k=50,
                                                                  seed=500 + i),
                            max_tokens=new, stop_token_ids=[]) for i, p in enumerate(prompts)]
            out = Engine(model, max_batch=B, max_seq_len=P + new).run(reqs)
            assert sum(len(r.output) for r in out) == B * new

        def theirs():
            with torch.no_grad():
                out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                                  temperature=0.8, top_k=50, top_p=1.0, max_new_tokens=new,
                                  min_new_tokens=new, pad_token_id=0, eos_token_id=None)
            assert out.shape == (B, P + new)

        for threads in (1, 2):
            set_threads(threads)
            t = interleaved({"replay": ours, "hf": theirs}, reps=args.reps)
            r, b = mmm(t["replay"]["cpu"]), mmm(t["hf"]["cpu"])
            rw, bw = mmm(t["replay"]["wall"]), mmm(t["hf"]["wall"])
            rows.append(["small", f"engine vs generate, batch {B}", threads,
                         f"{B * new / r[1]:,.0f}", f"{B * new / b[1]:,.0f}", f"**{b[1] / r[1]:.2f}**",
                         f"{b[0] / r[2]:.2f} / {b[2] / r[0]:.2f}", f"{bw[1] / rw[1]:.2f}", "-",
                         f"{B} x ({P} prompt + {new} new)"])
            print(*rows[-1], flush=True)
    return rows


def where_time_goes(model, recs) -> str:
    """One verify at one thread with replay.ops' kernels wrapped in CPU-time counters: the share
    of each (the LM head apart from the layers' matmuls); the rest is Python, validation,
    packing, copies, the sampler re-run and the scores."""
    from replay import ops as o
    from replay.verify import verify

    set_threads(1)
    V = model.cfg.vocab_size
    spent: dict[str, float] = {}
    names = ("linear", "attention", "rms_norm", "add_rms_norm", "silu_mul", "rope_")
    saved = {n: getattr(o, n) for n in names}

    def wrap(n, f):
        def timed(*a, **k):
            key = "lm head" if n == "linear" and a[1].shape[0] == V else n
            c0 = time.process_time()
            out = f(*a, **k)
            spent[key] = spent.get(key, 0.0) + time.process_time() - c0
            return out
        return timed

    try:
        for n in names:
            setattr(o, n, wrap(n, saved[n]))
        c0 = time.process_time()
        verify(recs, model=model)
        total = time.process_time() - c0
    finally:
        for n, f in saved.items():
            setattr(o, n, f)
    parts = sorted(spent.items(), key=lambda kv: -kv[1])
    rest = total - sum(spent.values())
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in parts) + \
        f", everything else {100 * rest / total:.0f}% (of {total:.1f} s CPU)"


def context(args):
    """Verifier time per output token as the context grows, against transformers' SDPA forward
    on the same model (the 0.5B layer shape, fewer layers: attention's share is per layer)."""
    from replay.records import Record, SamplingParams
    from replay.verify import verify

    ghz, theo, prac = machine()
    load0 = load()
    lengths = args.lengths
    hf, model, _ = hf_and_replay("0.5B", layers=args.layers, context=max(lengths))
    new = 32
    rows = []
    set_threads(1)
    for L in lengths:
        g = torch.Generator().manual_seed(L)
        P = L - new
        toks = torch.randint(1, model.cfg.vocab_size, (L,), generator=g).tolist()
        # teacher-forced verification needs no engine: score the tokens under T = 0 (greedy
        # verdicts are not the point here, the work is the same)
        rec = Record(request_id=f"L{L}", prompt=toks[:P], output=toks[P:],
                     params=SamplingParams(temperature=0.0, seed=0), max_tokens=new,
                     stop_token_ids=[], model=model.identity)
        seqs = torch.tensor([toks[:-1]])
        targets = torch.tensor([toks[P:]])
        reps = args.reps if L <= 4096 else 1  # one repeat at 8192 (minutes on one core)
        t = interleaved({"replay": lambda: verify([rec], model=model, token_budget=L),
                         "sdpa": lambda: hf_logprobs(hf, seqs, targets, P)}, reps=reps)
        r, b = mmm(t["replay"]["cpu"]), mmm(t["sdpa"]["cpu"])
        # the attention op alone, one layer's shape and L tokens, on random inputs: replay's
        # kernel against torch's SDPA (is_causal, GQA), so that the growth of attention's own
        # cost is read without the rest of the forward
        c = model.cfg
        q = torch.randn(L, c.n_heads, c.head_dim, generator=g)
        k = torch.randn(L, c.n_kv_heads, c.head_dim, generator=g)
        v = torch.randn(L, c.n_kv_heads, c.head_dim, generator=g)
        cu, p0 = torch.tensor([0, L]), torch.tensor([0])
        qt, kt, vt = (x.transpose(0, 1).unsqueeze(0).contiguous() for x in (q, k, v))
        ta = interleaved({"replay": lambda: ops.attention(q, k, v, cu, p0, p0),
                          "sdpa": lambda: F.scaled_dot_product_attention(
                              qt, kt, vt, is_causal=True, enable_gqa=True)}, reps=reps)
        ra, ba = mmm(ta["replay"]["cpu"]), mmm(ta["sdpa"]["cpu"])
        rows.append([L, new, f"{1e3 * r[1] / new:.1f}", f"{1e3 * b[1] / new:.1f}",
                     f"**{b[1] / r[1]:.2f}**", f"{b[0] / r[2]:.2f} / {b[2] / r[0]:.2f}",
                     f"{1e3 * ra[1]:.1f} / {1e3 * ba[1]:.1f}", f"{ba[1] / ra[1]:.2f}", reps])
        print(*rows[-1], flush=True)
    base = [float(x) for x in (rows[0][2], rows[0][3], *rows[0][6].split(" / "))]
    for row in rows:  # growth against the shortest context, both sides
        a = [float(x) for x in row[6].split(" / ")]
        row.insert(7, f"{a[0] / base[2]:.1f}x / {a[1] / base[3]:.1f}x")
        row.insert(4, f"{float(row[2]) / base[0]:.1f}x / {float(row[3]) / base[1]:.1f}x")
    write_table("cpu-context.md", "Verifier cost per output token against context length (CPU)",
                ["total length", "output tokens", "replay ms / output token (CPU)",
                 "transformers SDPA ms / output token (CPU)", "growth from shortest (replay / SDPA)",
                 "ratio (CPU, medians)", "ratio range",
                 "attention op alone, one layer, ms (replay / SDPA)",
                 "attention op growth (replay / SDPA)", "attention op ratio", "repeats"], rows,
                notes=header_notes(ghz, theo, prac,
                                   f"Load average {load0} at the start, {load()} at the end. One "
                                   f"record per length: prompt of L - {new} tokens, {new} output "
                                   f"tokens. Model: the 0.5B layer shape (hidden 896, 14/2 heads, "
                                   f"head dim 64, MLP 4864, vocab 151936, tied) with "
                                   f"{args.layers} layers, random weights, float32, one thread. "
                                   "Baseline: transformers (attn_implementation sdpa, the default) "
                                   "teacher-forced forward with logits at the output positions. "
                                   "The attention-op columns time replay's ops.attention against "
                                   "torch's scaled_dot_product_attention (is_causal, enable_gqa) "
                                   "on random queries, keys and values of one layer's shape at L "
                                   "tokens, one thread, CPU time."),
                command=COMMAND)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _memory_child(side: str, path: str):
    """In a fresh process: load the checkpoint, then one teacher-forced pass over 8 x 160 tokens
    (replay: verify; transformers: hf_logprobs). Prints JSON: RSS after the imports, after the
    load, the peak (VmHWM), and the bytes the weights' tensors hold."""
    import gc
    import json

    import transformers

    from replay.model import Model
    from replay.verify import verify

    set_threads(1)
    gc.collect()
    base = _status_kb("VmRSS")
    if side == "replay":
        model = Model.from_pretrained(path)
        held = {}
        for t in model.w.values():
            t = t.data if isinstance(t, ops.PackedLinear) else t
            held[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        weights = sum(held.values())
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype="auto").eval()
        weights = sum(p.nbytes for p in {p.data_ptr(): p for p in model.parameters()}.values())
    gc.collect()
    loaded = _status_kb("VmRSS")
    g = torch.Generator().manual_seed(1)
    seqs = torch.randint(1, 151936, (8, 160), generator=g)
    if side == "replay":  # greedy records of random tokens: the verdicts aside, the same work
        from replay.records import Record, SamplingParams

        recs = [Record(request_id=f"m{i}", prompt=s[:128], output=s[128:],
                       params=SamplingParams(temperature=0.0, seed=0), max_tokens=32,
                       stop_token_ids=[], model=model.identity) for i, s in enumerate(seqs.tolist())]
        verify(recs, model=model)
    else:
        hf_logprobs(model, seqs[:, :-1], seqs[:, 128:], 128)
    print(json.dumps(dict(base=base, loaded=loaded, peak=_status_kb("VmHWM"), weights=weights)))


def memory(args):
    """Resident weights against the checkpoint's size, and the peak working set of a
    teacher-forced pass, replay beside transformers, each side in a fresh process: the 0.5B
    shape in float32 and in bfloat16."""
    import json
    import subprocess

    hf, _, d = hf_and_replay("0.5B")
    d16 = d + "-bf16"
    hf.to(torch.bfloat16).save_pretrained(d16)
    del hf
    rows = []
    for label, path in (("float32", d), ("bfloat16", d16)):
        ckpt = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
                   if f.endswith(".safetensors"))
        for side in ("replay", "transformers"):
            out = subprocess.run([sys.executable, __file__, "_memory", side, path], check=True,
                                 capture_output=True, text=True).stdout
            m = json.loads(out.strip().splitlines()[-1])
            gib = 1 << 30
            rows.append([label, side, f"{ckpt / gib:.2f}", f"{m['weights'] / gib:.2f}",
                         f"**{m['weights'] / ckpt:.3f}**",
                         f"{(m['loaded'] - m['base']) / (1 << 20):.2f}", f"{m['peak'] / (1 << 20):.2f}"])
            print(*rows[-1], flush=True)
    import shutil

    shutil.rmtree(d16, True)
    write_table("cpu-memory.md", "Memory on CPU: resident weights and peak working set (0.5B shape)",
                ["checkpoint", "side", "checkpoint GiB", "weights' tensors GiB",
                 "weights / checkpoint", "RSS growth at load GiB", "peak RSS GiB (VmHWM)"], rows,
                notes=(f"Load average {load()}. Each side in a fresh process: import, load the "
                       "checkpoint (random weights, the 0.5B shape: hidden 896, 24 layers, vocab "
                       "151936, tied), then one teacher-forced pass over 8 x (128 + 32) random "
                       "tokens (replay: `replay.verify` of greedy records; transformers: its "
                       "forward with logits at the output positions), one thread. Weights' "
                       "tensors: the bytes of every distinct storage the model's weights hold "
                       "(replay: packed panels, bfloat16 kept bfloat16). RSS growth: VmRSS after the load minus after the imports "
                       "(includes the allocator's retained pages). transformers loads with "
                       "dtype='auto' (the checkpoint's dtype)."),
                command=COMMAND)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "_memory":  # memory()'s child process
        return _memory_child(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", choices=["matmul", "e2e", "context", "memory", "all"],
                    help="all: the matmul (the 0.5B shapes), e2e and context tables in one run")
    ap.add_argument("--seconds", type=float, default=1.0, help="rough time per side per row")
    ap.add_argument("--max-reps", type=int, default=15)
    ap.add_argument("--reps", type=int, default=3, help="repeats per side (e2e, context)")
    ap.add_argument("--shapes", nargs="+", default=["0.5B", "small"], choices=list(SHAPES))
    ap.add_argument("--lengths", nargs="+", type=int, default=[256, 1024, 4096, 8192])
    ap.add_argument("--layers", type=int, default=2, help="layers of the context model")
    ap.add_argument("--batches", nargs="*", type=int, default=[8, 32],
                    help="engine vs generate batch sizes (e2e; none to skip)")
    ap.add_argument("--matmul-shapes", nargs="+", default=[m[0] for m in MATMUL],
                    choices=[m[0] for m in MATMUL], metavar="SHAPE")
    args = ap.parse_args()
    if args.table == "all" and "--matmul-shapes" not in sys.argv:
        args.matmul_shapes = [m[0] for m in MATMUL[:3]]  # the three 0.5B shapes
    global COMMAND
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY",) if k in os.environ)
    COMMAND = (env + " " if env else "") + "python bench/cpu.py " + " ".join(sys.argv[1:])
    for table in ("matmul", "e2e", "context") if args.table == "all" else (args.table,):
        {"matmul": matmul, "e2e": e2e, "context": context, "memory": memory}[table](args)


if __name__ == "__main__":
    main()
