"""The teacher-forced verifier (DESIGN §5): one pipeline, which the CLI, the fleet, the watcher,
score_stock, the attackers' receiver and bench/exfil.py all run.

    report = replay.verify(batch, model=model)            # exact policy
    opts = Options(policy=Policy.tolerant(), seed_key=key)
    report = verify(batch, model, options=opts, scorer=ExponentialRace())   # a stock engine

validate (Batch.validate: a bad record is one error row, never the others' loss) -> pack
(`packs`, by a token budget; it lives in replay.records, plain data, so that the fleet's reader
packs without loading torch) -> forward (`teacher_forced`: one pass per pack, yielding Positions
with their logits rows chunk by chunk, so [tokens, vocab] logits are never held for a pack) ->
score (a `Scorer`) -> verdicts (the Policy) -> Report (the token table, one RecordResult per
input record). This module never imports the engine: it shares only the model, the sampler and
the ops with it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import importlib
import sys
import time
import types
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Protocol, Sequence

import torch

from replay import sampling
from replay import scores as S
from replay.model import Varlen
from replay.policy import Policy, gls
from replay.records import Batch, Record, SamplingParams, derive_seed, digest, packs
from replay.report import Report


@dataclass(frozen=True)
class Options:
    """The verifier's settings, passed whole from the CLI, the fleet and the watcher.

    policy:       Policy.exact() (default) or another Policy
    token_budget: teacher-forced tokens per forward pass (prompt + output - 1 per record)
    lm_chunk:     output rows per LM-head and scoring chunk
    check_model:  reject records whose `model` field is not the verifier's model identity
    seed_key:     the logger's HMAC key (bytes, not empty): each record's params.seed must
                  equal records.derive_seed(seed_key, request_id), else the record fails; and
                  every record must carry the logger's copy of its request (Record.request),
                  else it is refused by name
    tokenizer:    tokenizer.json (or a folder holding one) for the report's decoded text
                  (replay.text); None: the model folder's, if it has one; "": ids only. Text is
                  for reading: verdicts never depend on it
    """
    policy: Policy = field(default_factory=Policy.exact)
    token_budget: int = 4096
    lm_chunk: int = 512
    check_model: bool = True
    seed_key: bytes | None = None
    tokenizer: str | None = None

    def __post_init__(self):
        if not isinstance(self.policy, Policy):
            raise TypeError(f"policy: expected a Policy, got {type(self.policy).__name__}")
        if self.token_budget < 1 or self.lm_chunk < 1:
            raise ValueError("token_budget and lm_chunk must be >= 1")
        if isinstance(self.seed_key, str):
            object.__setattr__(self, "seed_key", self.seed_key.encode("utf-8"))
        if self.seed_key is not None and not isinstance(self.seed_key, bytes):
            raise TypeError(f"seed_key: expected bytes, got {type(self.seed_key).__name__}")
        if self.seed_key == b"":  # an empty key would silently turn the check off
            raise ValueError("seed_key: empty; give the logger's key, or None for no seed check")

    def fingerprint(self, model_identity: str, stack: str = "") -> str:
        """What a verdict depends on besides the record, as 32 hex digits: replay's version, the
        model identity, the kernel stack the verifier runs on (Model.stack: an exact policy fails
        records from another), the policy, check_model and the seed key (through an HMAC of it,
        never the key itself). Not token_budget or lm_chunk: verdicts do not depend on packing
        (DESIGN §2). The fleet and the watcher key stored results on it, so that a re-run with
        another key, model, stack or policy verifies again instead of reporting an old pass."""
        from replay import __version__

        key = (None if self.seed_key is None else
               hmac.new(self.seed_key, b"replay: seed key fingerprint", hashlib.sha256)
               .hexdigest())
        return digest("replay.verify.Options", __version__, model_identity, stack,
                      self.policy.to_dict(), self.check_model, key)

    @classmethod
    def of(cls, options: "Options | None" = None, policy: Policy | None = None,
           **settings) -> "Options":
        """`options` (default: the defaults) with the policy and the settings given replaced."""
        if policy is not None:
            settings["policy"] = policy
        return dataclasses.replace(options or cls(), **settings)


class Position(NamedTuple):
    """One output token to check: record.output[index], at absolute position len(prompt) + index."""
    record: Record
    index: int
    position: int
    token: int
    params: SamplingParams


def teacher_forced(model, records: Sequence[Record], options: Options = Options()
                   ) -> Iterator[tuple[list[Position], torch.Tensor]]:
    """(positions, logits [len(positions), V] float32) chunk by chunk: every output position of
    `records`, in order, with the logits row the model gives it teacher-forced over prompt +
    output (bitwise the engine's row, DESIGN §2). model: replay's Model or anything with cfg,
    forward(Varlen, kv), new_kv(rows) and logits(hidden) (replay.hf.HFVerifierModel)."""
    for pack in packs(records, options.token_budget):
        pack = [r for r in pack if r.output]
        if not pack:
            continue
        batch = Varlen.prefill([r.prompt + r.output[:-1] for r in pack])
        hidden = model.forward(batch, model.new_kv(batch.rows))              # (T, hidden)
        rows, where = [], []
        for s, r in enumerate(pack):
            P = len(r.prompt)
            first = int(batch.cu[s]) + P - 1   # the row that predicts output[0]
            rows += range(first, first + len(r.output))
            where += [Position(r, j, P + j, t, r.params) for j, t in enumerate(r.output)]
        for a in range(0, len(rows), options.lm_chunk):
            idx = torch.tensor(rows[a: a + options.lm_chunk], dtype=torch.int64)
            yield where[a: a + options.lm_chunk], model.logits(hidden[idx])


# ---------------------------------------------------------------------------------------------
# scorers

BASE_COLUMNS = ("choice", "exact", "logprob", "rank", "in_top_k", "in_top_p", "margin", "kept")


class Scorer(Protocol):
    """How the tokens of one engine's sampler are scored: a model of that sampler.

    score(logits, positions, policy) gets a chunk's logits rows [n, V] (float32, as the model
    computed them) and the n Positions (record, index, position, token, params) in record order,
    each record's positions in output order (a scorer may keep per-record state across chunks,
    e.g. a noise generator, and must drop it after a record's last position). It returns tensors
    [n] keyed by
    - choice (int64): the token the modelled sampler picks on that row; exact (bool): choice ==
      token;
    - logprob (float32), rank (int64: #{i : l_i > l_token}), in_top_k, in_top_p (bool), kept
      (int64: size of the set the sampler picks from);
    - margin (float32, logit units, >= 0, 0 when exact, +inf if the token could not be picked):
      the report's gls column and the tolerant policy are computed from it;
    - every column in policy.needs ("sample_prob": the token's probability under the distribution
      the sampler drew from; "ipt": the inverse-transform score at policy.sigma), or a ValueError
      saying that this sampler cannot give it.

    `sampler` names the sampler it models, as a record names its engine's sampler in
    meta["sampler"] (records without one come from replay's sampler); `scorer(name)` returns the
    registered scorer of that name. A new sampler model is a new class with these two members,
    registered in SCORERS.
    """
    sampler: str

    def score(self, logits: torch.Tensor, positions: Sequence[Position], policy: Policy
              ) -> dict[str, torch.Tensor]: ...


class ReplayScorer:
    """replay's seeded sampler (DESIGN §3), scored by the same C++/CUDA function the engine ran."""
    sampler = "replay"

    def score(self, logits, positions, policy):
        params = [p.params for p in positions]
        pos, tok = [p.position for p in positions], [p.token for p in positions]
        sc = sampling.score(logits, **sampling.columns(params), position=pos, claimed=tok)
        sc.update(self.row_columns(logits, params, pos, tok, policy))
        return sc

    @staticmethod
    def row_columns(logits, params, positions, claimed, policy: Policy) -> dict:
        """The whole-row columns that `policy` needs (sample_prob, ipt), {} when it needs none."""
        if not policy.needs:
            return {}
        return S.row_scores(logits, params, positions, claimed,
                            policy.sigma if "ipt" in policy.needs else None)


# name -> "module:class"; loaded on first use, so that the verifier imports no adapter it does
# not run
SCORERS = {"replay": "replay.verify:ReplayScorer", "vllm": "replay.adapters:ExponentialRace",
           "vllm-v1-cuda": "replay.adapters:ExponentialRace", "vllm-cpu": "replay.stock:CpuScorer",
           "vllm-mrv2": "replay.stock:Mrv2Scorer", "stock": "replay.stock:StockScorer"}


def scorer(name: str, **kw) -> Scorer:
    """The registered scorer for records whose meta["sampler"] is `name`."""
    if name not in SCORERS:
        raise ValueError(f"no scorer for sampler {name!r}: expected one of {tuple(SCORERS)}")
    mod, cls = SCORERS[name].split(":")
    return getattr(importlib.import_module(mod), cls)(**kw)


# ---------------------------------------------------------------------------------------------
# the pipeline

def as_batch(batch) -> Batch:
    """A Batch from a Batch, a list of Records, or a path (JSONL, Parquet, a folder of shards)."""
    if isinstance(batch, Batch):
        return batch
    if isinstance(batch, (str, bytes)) or hasattr(batch, "__fspath__"):
        return Batch.read(batch)
    return Batch(list(batch))


def claim_failures(records, seed_key: bytes | None) -> dict[str, list[tuple[str, str]]]:
    """request_id -> [(field, reason)] for what a record claims that the logger did not log: a
    seed that is not HMAC-SHA256(seed_key, request_id) (records.derive_seed; a server that picks
    its own seeds can grind them to steer outputs), or a field that differs from the logger's copy
    of the request (Record.claim_mismatches). Reasons never name the expected seed."""
    out: dict[str, list] = {}
    for r in records:
        bad = r.claim_mismatches()
        if seed_key is not None and r.params.seed != derive_seed(seed_key, r.request_id):
            bad.insert(0, ("params.seed", "params.seed: not the logger's seed for this "
                                          "request_id (HMAC-SHA256 of the logger key)"))
        if bad:
            out[r.request_id] = bad
    return out


def verify(batch, model, policy: Policy | None = None, *, options: Options | None = None,
           scorer: Scorer | None = None, keep_logits: bool = False, progress: bool = False,
           **settings) -> Report:
    """Verify every output token of every record in `batch`.

    batch:       a Batch, a list of Records, or a path (JSONL, Parquet, or a folder of shards)
    model:       the replay Model the records claim to come from
    policy:      Policy.exact() (default) or another Policy (replay.policy)
    options:     an Options; `policy` and keyword settings (token_budget, lm_chunk, check_model,
                 seed_key: see Options) given here replace its fields
    scorer:      the model of the engine's sampler (default: replay's, ReplayScorer)
    keep_logits: keep the recomputed logits rows on the report (report.logits[request_id])
    progress:    a progress bar over the output tokens
    """
    opts = Options.of(options, policy, **settings)
    pol, scorer = opts.policy, scorer or ReplayScorer()
    b = as_batch(batch)
    t0 = time.perf_counter()
    cfg = model.cfg
    good, errors = b.validate(cfg.vocab_size, cfg.max_context,
                              model=model.identity if opts.check_model else None,
                              require_request=opts.seed_key is not None)
    here = getattr(model, "stack", "")  # a model without one (replay.hf's) checks no stack
    report = Report(policy=pol, model=model.identity, vocab_size=cfg.vocab_size, stack=here)
    for e in errors:
        report.add_error(e)
    # A policy that accepts one token per position needs the engine's exact rows, which only the
    # same kernel stack recomputes; tolerant policies score records from any stack. A record's
    # stack is the server's claim (docs/records.md): a mismatch fails, so no claim can pass a
    # record that exact replay would fail.
    report.stacks = dict(Counter(r.stack for r in good))
    mismatch = [bool(pol.single and here and r.stack and r.stack != here) for r in good]
    elsewhere = [r for r, m in zip(good, mismatch) if m]
    good = [r for r, m in zip(good, mismatch) if not m]
    from tqdm import tqdm

    bar = tqdm(total=sum(len(r.output) for r in good), desc="verify", unit="tok", leave=False,
               disable=not progress)
    kept: dict[str, list] = {}
    for where, logits in teacher_forced(model, good, opts):
        sc = scorer.score(logits, where, pol)
        missing = [k for k in BASE_COLUMNS + tuple(sorted(pol.needs)) if k not in sc]
        if missing:
            raise ValueError(f"{type(scorer).__name__} gave no {missing} columns (Scorer)")
        sc["gls"] = gls(sc["margin"], pol.gls_sigma)
        report.add_tokens(where, sc, pol.verdicts(sc))
        if keep_logits:
            for p, row in zip(where, logits):
                kept.setdefault(p.record.request_id, []).append(row)
        bar.update(len(where))
    bar.close()
    report.logits = {r.request_id: (torch.stack(kept[r.request_id]) if r.output
                                    else torch.empty(0, cfg.vocab_size))
                     for r in good} if keep_logits else {}
    claims = claim_failures(good + elsewhere, opts.seed_key)
    report.finish(good, time.perf_counter() - t0, claims, max_context=cfg.max_context,
                  text=text_of(opts, model))
    for r in elsewhere:
        report.add_stack_mismatch(r, claims.get(r.request_id, ()), cfg.max_context)
    return report


def text_of(options: Options, model):
    """The replay.text.Text for the report (Options.tokenizer), or None for ids only."""
    from replay.text import Text

    if options.tokenizer == "":
        return None
    return Text.load(options.tokenizer) if options.tokenizer else Text.find(model)


class _CallableModule(types.ModuleType):
    # `import replay.verify` binds the module to the package's name `verify`, which would hide
    # the function replay.verify(...): so the module calls it.
    def __call__(self, *args, **kwargs) -> Report:
        return verify(*args, **kwargs)

    @property
    def __signature__(self):  # help() and inspect show the function's arguments
        import inspect
        return inspect.signature(verify)


sys.modules[__name__].__class__ = _CallableModule
