"""The reference engine: what an inference engine that embeds replay looks like.

Continuous batching of requests that arrive over time, a KV buffer with one slot per running
sequence, chunked prefill, the seeded sampler, stop tokens and max_tokens. Every finished request
becomes a Record that replay.verify can check token by token.

    engine = Engine(model, max_batch=32, chunk_size=64)
    records = engine.run([Request("r0", prompt, SamplingParams(0.8, seed=7), max_tokens=64)])

Each step packs, for every running sequence, either its next prompt chunk (at most chunk_size
tokens) or its one decode token into a single varlen batch, runs the model once, and samples for
every sequence whose prompt is fully in the buffer. Which sequences share a step, and where a
sequence's slot sits in the buffer, change from run to run; the logits do not (DESIGN §2).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from replay import sampling
from replay.model import Model, Varlen
from replay.records import LoggedRequest, Record, RecordError, SamplingParams


@dataclass
class Request:
    request_id: str
    prompt: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = 64
    stop_token_ids: list[int] = field(default_factory=list)
    arrival: int = 0  # engine step at which the request arrives


@dataclass
class _Seq:
    req: Request
    slot: int
    max_tokens: int          # capped so that prompt + output fits the slot
    tokens: list[int]        # prompt, then output as it is sampled
    computed: int = 0        # tokens whose keys and values are in the buffer
    logits: list = field(default_factory=list)

    @property
    def output(self) -> list[int]:
        return self.tokens[len(self.req.prompt):]


def seeded_sampler(logits: torch.Tensor, requests: list[Request], positions: list[int]
                   ) -> torch.Tensor:
    """replay's sampler (DESIGN §3) on logits [M, V]: one token per request at its position."""
    return sampling.sample(logits, **sampling.columns([r.params for r in requests]),
                           position=positions)


class Engine:
    """Continuous-batching generator over a replay Model.

    max_batch:   running sequences at once (KV slots)
    chunk_size:  prompt tokens a sequence may prefill per step (1 = token-by-token prefill)
    max_seq_len: rows per slot (default: the model's context)
    step_tokens: optional cap on tokens per step; sequences past it wait for the next step
    keep_logits: keep the logits row each output token was sampled from (for tests)
    placement_seed: if set, free slots are taken in a random order (tests that placement in
                 the buffer does not matter); otherwise lowest free slot first
    sampler:     optional replacement of the seeded sampler, called as
                 sampler(logits [M, V], requests [M], positions [M]) -> LongTensor [M]
                 (a stock engine's sampler, or a compromised one in replay.attacks); if it
                 has release(request_id), that is called when the request finishes
    """

    def __init__(self, model: Model, max_batch: int = 32, chunk_size: int = 256,
                 max_seq_len: int | None = None, step_tokens: int | None = None,
                 keep_logits: bool = False, placement_seed: int | None = None,
                 sampler=None):
        if max_batch < 1 or chunk_size < 1:
            raise ValueError(f"max_batch ({max_batch}) and chunk_size ({chunk_size}) must be >= 1")
        self.model = model
        self.max_batch = max_batch
        self.chunk_size = chunk_size
        self.max_seq_len = min(max_seq_len or model.cfg.max_context, model.cfg.max_context)
        self.step_tokens = step_tokens
        self.keep_logits = keep_logits
        self.sampler = sampler or seeded_sampler
        self.kv = model.new_kv(max_batch * self.max_seq_len)
        self._rng = random.Random(placement_seed) if placement_seed is not None else None
        self._free = list(range(max_batch))
        self._waiting: list[Request] = []
        self._running: list[_Seq] = []
        self.step_count = 0
        self.logits: dict[str, torch.Tensor] = {}  # request_id -> (n_output, vocab), keep_logits
        # What the runs varied, so that tests can check they did, per forward pass: sequences
        # (batch_sizes), prompt chunks that left part of their prompt for a later step
        # (prompt_splits), sequences a step_tokens cap cut short or left out (capped), and
        # admissions into a slot other than the lowest free one (off_lowest).
        self.stats = {"tokens_in": 0, "tokens_out": 0, "batch_sizes": [], "prompt_splits": 0,
                      "capped": 0, "off_lowest": 0}

    # -- requests -------------------------------------------------------------------------------

    def add(self, req: Request):
        """Queue a request; raise RecordError (a ValueError) naming it and the bad field, with the
        checks and messages of the records it will become (Record.validate)."""
        Record(req.request_id, req.prompt, [], req.params, req.max_tokens, req.stop_token_ids,
               self.model.identity).validate(self.model.cfg.vocab_size, self.max_seq_len)
        if len(req.prompt) >= self.max_seq_len:
            raise RecordError(req.request_id, "prompt", f"{len(req.prompt)} tokens leave no room "
                              f"for an output in a {self.max_seq_len}-token context")
        self._waiting.append(req)

    @property
    def idle(self) -> bool:
        return not self._waiting and not self._running

    # -- one step -------------------------------------------------------------------------------

    def _admit(self) -> list[Record]:
        done = []
        ready = [r for r in self._waiting if r.arrival <= self.step_count]
        for req in ready:
            if not self._free:
                break
            self._waiting.remove(req)
            lowest = min(self._free)
            slot = self._free.pop(self._rng.randrange(len(self._free)) if self._rng
                                  else self._free.index(lowest))
            self.stats["off_lowest"] += slot != lowest
            cap = min(req.max_tokens, self.max_seq_len - len(req.prompt))
            seq = _Seq(req, slot, cap, list(req.prompt))
            if cap == 0:
                done.append(self._finish(seq, "length" if req.max_tokens == 0 else "context"))
            else:
                self._running.append(seq)
        return done

    def step(self) -> list[Record]:
        """Admit arrivals, run one packed forward pass, sample; returns the finished records."""
        done = self._admit()
        seqs, chunks = self._schedule()
        self.step_count += 1
        if seqs:
            ready, logits = self._forward(seqs, chunks)
            done += self._sample(ready, logits)
        return done

    def _schedule(self) -> tuple[list[_Seq], list[list[int]]]:
        """The running sequences of this step and the tokens each runs: its next prompt chunk
        (at most chunk_size tokens) or its one decode token, within step_tokens."""
        chunks, seqs, budget = [], [], self.step_tokens
        for j, seq in enumerate(self._running):
            n = min(len(seq.tokens) - seq.computed, self.chunk_size)
            if budget is not None:
                if budget <= 0 and chunks:
                    self.stats["capped"] += len(self._running) - j
                    break
                self.stats["capped"] += budget < n
                n = max(1, min(n, budget))
                budget -= n
            self.stats["prompt_splits"] += seq.computed + n < len(seq.req.prompt)
            chunks.append(seq.tokens[seq.computed: seq.computed + n])
            seqs.append(seq)
        return seqs, chunks

    def _forward(self, seqs: list[_Seq], chunks: list[list[int]]):
        """One forward pass over the chunks, writing their keys and values into each sequence's
        slot; (the sequences whose prompt is now fully in the buffer, their next-token logits)."""
        batch = Varlen.make(chunks, [s.computed for s in seqs],
                            [s.slot * self.max_seq_len for s in seqs])
        hidden = self.model.forward(batch, self.kv)                          # (T, hidden)
        ready = []
        for i, (seq, chunk) in enumerate(zip(seqs, chunks)):
            seq.computed += len(chunk)
            if seq.computed == len(seq.tokens):  # caught up: the last row predicts a new token
                ready.append(i)
        self.stats["tokens_in"] += len(batch.tokens)
        self.stats["batch_sizes"].append(len(seqs))
        logits = self.model.logits(hidden[batch.last_rows()[ready]]) if ready else None
        return [seqs[i] for i in ready], logits                              # (R, vocab)

    def _sample(self, ready: list[_Seq], logits) -> list[Record]:
        """Sample each ready sequence's next token; the records of those that finish."""
        if not ready:
            return []
        toks = self.sampler(logits, [s.req for s in ready], [len(s.tokens) for s in ready])
        done = []
        for j, seq in enumerate(ready):
            tok = int(toks[j])
            seq.tokens.append(tok)
            if self.keep_logits:
                seq.logits.append(logits[j].clone())
            self.stats["tokens_out"] += 1
            if tok in seq.req.stop_token_ids:
                done.append(self._finish(seq, "stop"))
            elif len(seq.output) >= seq.max_tokens:  # the request's limit, or the slot's
                done.append(self._finish(seq, "length" if len(seq.output) >= seq.req.max_tokens
                                         else "context"))
        return done

    def _finish(self, seq: _Seq, reason: str) -> Record:
        if seq in self._running:
            self._running.remove(seq)
        self._free.append(seq.slot)
        if hasattr(self.sampler, "release"):  # a sampler with per-request state
            self.sampler.release(seq.req.request_id)
        if self.keep_logits:
            V = self.model.cfg.vocab_size
            self.logits[seq.req.request_id] = (torch.stack(seq.logits) if seq.logits
                                               else torch.empty(0, V))
        # The record keeps the client's max_tokens (an output cut by the context is its own
        # outcome, "context", never a rewritten limit) and, as replay's engine is also its own
        # logger, its copy of the request (Record.request).
        r = seq.req
        logged = LoggedRequest(list(r.prompt), r.params, r.max_tokens, list(r.stop_token_ids))
        return Record(request_id=r.request_id, prompt=list(r.prompt), output=seq.output,
                      params=r.params, max_tokens=r.max_tokens,
                      stop_token_ids=list(r.stop_token_ids), model=self.model.identity,
                      meta={"finish_reason": reason}, stack=self.model.stack,
                      request=logged)

    # -- a whole workload -----------------------------------------------------------------------

    def run(self, requests: list[Request], progress: bool = False) -> list[Record]:
        """Serve every request (each arrives at its `arrival` step); records in request order."""
        for r in requests:
            self.add(r)
        from tqdm import tqdm

        out: dict[str, Record] = {}
        bar = tqdm(total=len(requests), desc="generate", unit="req", leave=False,
                   disable=not progress)
        while not self.idle:
            for rec in self.step():
                out[rec.request_id] = rec
                bar.update(1)
        bar.close()
        return [out[r.request_id] for r in requests]
