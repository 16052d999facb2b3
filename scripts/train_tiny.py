"""Train the tiny Llama that ships in replay/assets/tiny/ so the demo runs offline.

Data: the Python standard library's own *.py sources (sysconfig stdlib dir; no test directories,
site-packages, or the encodings/ and pydoc_data/ data tables), read in sorted path order, one
document per file, separated by <|endoftext|>. Every 40th file in that order is held out for
validation.

Tokenizer: byte-level BPE (tokenizers), vocab 4096, "<|endoftext|>" = id 0 = BOS = EOS.
Model: LlamaForCausalLM, hidden 256, 4 layers, 8 heads, 2 KV heads, MLP 768, tied embeddings,
max positions 1024, rope_theta 1e4 -- about 4.1M parameters, float32.
Training: AdamW (lr 3e-3, betas 0.9/0.95, wd 0.1), linear warmup then cosine to 10%, context 256,
batch --batch, plain torch on CPU with --threads threads, seeded. The best weights by validation
loss are saved every --eval-every steps, so an interruption leaves a usable model.

The shipped model (README.md beside it has samples): 4,065,536 parameters; 595 train files /
2.61M tokens, 15 val files / 149k tokens; 1,600 steps of 16 x 256 tokens (6.6M tokens); final
val loss 3.852, train loss 3.16 (EMA); 23.8 min wall on a 2-core machine with two threads.
The time budget only ever shortens the schedule; with --minutes 0 the run depends only on the
seed and --steps.

    python scripts/train_tiny.py --threads 2 --batch 16 --steps 1600 --minutes 32 \
        --eval-every 100 --out replay/assets/tiny
"""

import argparse
import json
import math
import os
import sys
import sysconfig
import time
from pathlib import Path

SEP = "<|endoftext|>"
# Tests are not shipped everywhere; encodings/ (codec tables) and pydoc_data/ (one 750 kB string)
# are data, not code, and would spend the tiny model's capacity on tables.
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "encodings", "pydoc_data"}


def stdlib_files():
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if not SKIP_DIRS & set(p.relative_to(root).parts[:-1])]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def read_docs(every):
    train, val = [], []
    for i, p in enumerate(stdlib_files()):
        text = p.read_text(encoding="utf-8", errors="replace")
        (val if i % every == every - 1 else train).append(text)
    return train, val


def train_tokenizer(docs, vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SEP],  # first special token -> id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    assert tok.token_to_id(SEP) == 0
    return tok


def encode(tok, docs):
    import torch

    ids = []
    for enc in tok.encode_batch(docs):
        ids.extend(enc.ids)
        ids.append(0)  # document separator / EOS
    return torch.tensor(ids, dtype=torch.long)


def make_model(vocab_size):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, intermediate_size=768, max_position_embeddings=1024,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=0, pad_token_id=0, hidden_act="silu",
    )
    return LlamaForCausalLM(cfg)


def lr_at(step, total, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def fixed_windows(data, n, ctx):
    # Evenly spaced, non-overlapping windows: the same val set every eval.
    stride = max(ctx + 1, (len(data) - ctx - 1) // n)
    starts = list(range(0, len(data) - ctx - 1, stride))[:n]
    import torch
    return torch.stack([data[s:s + ctx + 1] for s in starts])  # (n, ctx+1)


def eval_loss(model, windows, bs):
    import torch

    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(windows), bs):
            w = windows[i:i + bs]
            total += _loss(model, w).item() * len(w)
    model.train()
    return total / len(windows)


def _loss(model, w):
    import torch.nn.functional as F

    logits = model(input_ids=w[:, :-1]).logits  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten())


def save(model, tok, out):
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save(str(out / "tokenizer.json"))


def samples(out, prompts, seed):
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"), eos_token=SEP)
    model = LlamaForCausalLM.from_pretrained(out).eval()
    res = []
    for p in prompts:
        torch.manual_seed(seed)
        ids = tok(p, return_tensors="pt").input_ids
        gen = model.generate(ids, max_new_tokens=80, do_sample=True, temperature=0.8, top_k=50,
                             pad_token_id=0, eos_token_id=0)
        res.append(tok.decode(gen[0], skip_special_tokens=True))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps (schedule length, at most)")
    ap.add_argument("--minutes", type=float, default=40.0,
                    help="wall-time budget, shortens the schedule to fit; 0 = none (bitwise-reproducible)")
    ap.add_argument("--out", type=Path, default=Path("replay/assets/tiny"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--val-every", type=int, default=40, help="hold out every Nth file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))  # tokenizers' thread pool
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()

    train_docs, val_docs = read_docs(args.val_every)
    tok = train_tokenizer(train_docs, 4096)
    train, val = encode(tok, train_docs), encode(tok, val_docs)
    print(f"docs train {len(train_docs)} val {len(val_docs)}; tokens train {len(train)} val {len(val)}; "
          f"prep {time.time() - t0:.0f}s", flush=True)

    model = make_model(tok.get_vocab_size())
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params}", flush=True)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # norms: no weight decay
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    val_w = fixed_windows(val, 64, args.ctx)
    gen = torch.Generator().manual_seed(args.seed)
    best, last_train, stats = float("inf"), float("nan"), {}
    deadline = t0 + args.minutes * 60
    model.train()
    total, step, t_train = args.steps, 0, time.time()
    for step in range(args.steps):
        if args.minutes and step and step % 25 == 0:
            # Shrink (never grow) the schedule so the cosine ends inside the budget: a few % worse
            # loss beats overrunning on a shared machine. Only this makes runs timing-dependent.
            rate = (time.time() - t_train) / step
            total = min(total, step + max(1, int(0.97 * (deadline - time.time()) / rate)))
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, args.lr, args.warmup)
        starts = torch.randint(0, len(train) - args.ctx - 1, (args.batch,), generator=gen)
        w = torch.stack([train[s:s + args.ctx + 1] for s in starts.tolist()])  # (B, ctx+1)
        loss = _loss(model, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        last_train = 0.9 * last_train + 0.1 * loss.item() if step else loss.item()
        done = step + 1 >= total or (args.minutes and time.time() > deadline)
        if (step + 1) % 10 == 0:
            print(f"step {step + 1} loss {loss.item():.3f} ema {last_train:.3f} "
                  f"{time.time() - t0:.0f}s", flush=True)
        if (step + 1) % args.eval_every == 0 or done:
            v = eval_loss(model, val_w, args.batch)
            print(f"step {step + 1} val {v:.4f}", flush=True)
            if v < best:
                best = v
                save(model, tok, args.out)
                stats = dict(step=step + 1, train_loss_ema=round(last_train, 4), val_loss=round(v, 4))
        if done:
            break
    wall = time.time() - t0
    stats.update(params=n_params, steps_run=step + 1, schedule_steps=total, wall_s=round(wall), seed=args.seed,
                 train_tokens=len(train), val_tokens=len(val), threads=args.threads)
    print(json.dumps(stats), flush=True)
    for s in samples(args.out, ["def ", "import os\n", "class "], args.seed):
        print("----\n" + s, flush=True)


if __name__ == "__main__":
    sys.exit(main())
