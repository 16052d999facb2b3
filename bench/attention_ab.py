"""Old against new: replay's CPU attention from two checkouts, on the same inputs, alternately.

    python bench/attention_ab.py OLD_TREE NEW_TREE [--rounds 12] [--shape T,Hq,Hkv,D,S ...]

Each tree is a replay checkout with its extension built in place (`python setup.py build_ext
--inplace`). One worker process per tree imports replay from it and keeps its inputs; the calls
alternate between the two (the order flips every round), one thread each, CPU time per call. A
change measured this way sees the same machine state on both sides, which two runs of the tables
an hour apart do not. Each shape is S sequences of T tokens (a prefill), Hq / Hkv heads, head dim
D, random N(0, 1) float32 queries, keys and values (the same on both sides: one seed; such scores
spread far less than a trained model's can). The workers also hash the output, so a change that
claims the same bits can be checked on the way.

Prints, per shape: min and median milliseconds per call of each side, the ratios old / new
(> 1: new is faster) and whether the outputs are equal; exits 1 if any differ.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

WORKER = r'''
import hashlib, json, sys, time
import torch
torch.set_num_threads(1)
from replay import ops
from replay._ext import C
C().set_num_threads(1)
cache = {}
for line in sys.stdin:
    T, Hq, Hkv, D, S = json.loads(line)
    key = (T, Hq, Hkv, D, S)
    if key not in cache:
        g = torch.Generator().manual_seed(1)
        q = torch.randn(S * T, Hq, D, generator=g)
        k = torch.randn(S * T, Hkv, D, generator=g)
        v = torch.randn(S * T, Hkv, D, generator=g)
        args = (q, k, v, torch.arange(S + 1) * T, torch.zeros(S, dtype=torch.int64),
                torch.arange(S) * T)
        digest = hashlib.sha256(ops.attention(*args).numpy().tobytes()).hexdigest()[:16]
        cache[key] = (args, digest)
    args, digest = cache[key]
    t0 = time.process_time()
    ops.attention(*args)
    print(json.dumps([time.process_time() - t0, digest, ops.__file__]), flush=True)
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--shape", nargs="+", default=["4096,14,2,64,1", "1024,14,2,64,1",
                                                   "160,8,8,32,8"],
                    help="T,Hq,Hkv,D,S (default: the 0.5B layer at 4,096 and 1,024 tokens, the "
                         "small model's 8 x 160 tokens)")
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    workers = []
    for tree in (args.old, args.new):
        # run in the tree: `python -c` puts the working directory first on sys.path
        tree = os.path.abspath(tree)
        workers.append(subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, cwd=tree,
                                        env=dict(env, PYTHONPATH=os.pathsep.join(
                                            [tree] + [p for p in [env.get("PYTHONPATH")] if p]))))
    differ = False
    for spec in args.shape:
        shape = [int(x) for x in spec.split(",")]
        times, digests, files = [[], []], [None, None], [None, None]
        for r in range(args.rounds):
            for i in ((0, 1) if r % 2 == 0 else (1, 0)):
                workers[i].stdin.write(json.dumps(shape) + "\n")
                workers[i].stdin.flush()
                line = workers[i].stdout.readline()
                if not line:
                    sys.exit(f"attention_ab: the worker of {(args.old, args.new)[i]} died")
                dt, digests[i], files[i] = json.loads(line)
                times[i].append(dt * 1e3)
        if files[0] == files[1]:
            sys.exit("attention_ab: both workers import the same replay: " + files[0])
        mn = [min(t) for t in times]
        md = [statistics.median(t) for t in times]
        print(f"T,Hq,Hkv,D,S={spec}: old min {mn[0]:.2f} med {md[0]:.2f} ms | new min {mn[1]:.2f}"
              f" med {md[1]:.2f} ms | old/new min {mn[0] / mn[1]:.3f} med {md[0] / md[1]:.3f}"
              f" | outputs {'equal' if digests[0] == digests[1] else 'DIFFER'}", flush=True)
        differ |= digests[0] != digests[1]
    for w in workers:
        w.stdin.close()
        w.wait()
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
