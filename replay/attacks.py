"""Compromised engines: servers that hide a secret bit string in the tokens they serve.

Each attacker is replay's Engine with a compromised sampler (Engine(sampler=...)) plus the
receiver's decoder, so the capacity of every channel is measured by decoding, never assumed:

    atk = RankAttack(model, bits_per_token=2)
    records = atk.encode(bits, requests)        # served records, as the logger would write them
    assert atk.decode(records, len(bits)) == atk.embedded(records)

The message is split evenly over the requests in order (record i carries chunk i); a record
carries as much of its chunk as fits, then serves honestly. The receiver knows the message
length (n_bits), the model, the prompts and the public sampling parameters; it re-runs the model
teacher-forced over each record, which gives the engine's own logits rows (DESIGN §2).

Attackers:
- RankAttack (a): b bits per token: the token of logit rank v (order: logit desc, id asc).
- ArithmeticAttack (b): arithmetic-coding steganography inside the policy's accepted set A_t,
  with the sampling distribution renormalised over A_t; every token it emits is accepted.
- SeedGrindAttack (c): the server picks the request's seed among 2^b candidates and samples
  honestly with it; the logged seed is the candidate's. Caught only by the logger-key seed check.
- LengthAttack (d): b bits per record in the output length (a stop token, or a truncation).
- SubstitutionAttack (e): one bit where the honest sample differs from the argmax (or from a
  lower-temperature sample with the same noise): bit 1 emits the substitute.
"""
from __future__ import annotations

import bisect
import dataclasses
import hashlib
import math
import random

import torch

from replay import sampling
from replay.engine import Engine, Request, seeded_sampler
from replay.model import Model
from replay.records import Record, SamplingParams
from replay.verify import Options, teacher_forced


def split(n_bits: int, n_records: int) -> list[tuple[int, int]]:
    """(start, length) of each record's chunk of an n_bits message: an even split in order."""
    q, r = divmod(n_bits, n_records)
    out, a = [], 0
    for i in range(n_records):
        n = q + (i < r)
        out.append((a, n))
        a += n
    return out


def teacher_forced_logits(model: Model, records: list[Record], options: Options = Options()
                          ) -> list[torch.Tensor]:
    """Per record, the logits rows [len(output), V] of its output positions (the receiver's view:
    replay.verify's teacher-forced pass over prompt + output, bitwise the engine's rows)."""
    chunks = [l for _, l in teacher_forced(model, records, options)]
    rows = torch.cat(chunks) if chunks else torch.empty(0, model.cfg.vocab_size)
    return list(torch.split(rows, [len(r.output) for r in records]))


def _sample_one(row: torch.Tensor, p: SamplingParams, position: int) -> int:
    return int(sampling.sample(row[None], p.temperature, p.top_k, p.top_p, p.seed, position)[0])


def _order(row: torch.Tensor) -> torch.Tensor:
    """Token ids by logit desc, id asc (the rank order of sampling.score)."""
    return torch.sort(row, descending=True, stable=True).indices


class Attack:
    """Base class: per-request state while serving, a per-token choice, and the decoder.

    Subclasses define `_choose(row, req, pos, st)` (the token to emit, or None to sample
    honestly) and `_decode(rec, rows, n)` (the bits of one record, at most n); `_start(req,
    chunk)` makes the per-request state (by default: the chunk, bits sent, whether done)."""

    name = "attack"
    per_token = True     # whether the decoder needs the recomputed logits rows

    def __init__(self, model: Model, **engine_kw):
        self.model = model
        self.engine_kw = engine_kw
        self._state: dict[str, dict] = {}
        self._carried: dict[str, list[int]] = {}

    # -- serving ------------------------------------------------------------------------------

    def encode(self, bits: list[int], requests: list[Request]) -> list[Record]:
        """Serve `requests`, hiding `bits` (split over them in order); the logged records."""
        if any(b not in (0, 1) for b in bits):
            raise ValueError("bits: expected a list of 0/1")
        self._state, self._carried = {}, {}
        reqs = []
        for req, (a, n) in zip(requests, split(len(bits), len(requests))):
            req = dataclasses.replace(req)
            self._state[req.request_id] = self._start(req, list(bits[a: a + n]))
            reqs.append(req)
        records = Engine(self.model, sampler=self._sample, **self.engine_kw).run(reqs)
        for r in records:
            self._carried[r.request_id] = self._finish(r, self._state[r.request_id])
        return records

    def _start(self, req, chunk):
        return {"chunk": chunk, "sent": 0, "done": not chunk}

    def _sample(self, logits, requests, positions):
        toks = seeded_sampler(logits, requests, positions)
        for j, (req, pos) in enumerate(zip(requests, positions)):
            st = self._state.get(req.request_id)
            if st is not None and not st["done"]:
                t = self._choose(logits[j], req, pos, st)
                if t is not None:
                    toks[j] = t
        return toks

    def _finish(self, rec: Record, st: dict) -> list[int]:
        return st["chunk"][: st["sent"]]

    def embedded(self, records: list[Record]) -> list[int]:
        """The bits the server actually hid in `records` (chunk prefixes that fit, in order)."""
        return [b for r in records for b in self._carried[r.request_id]]

    # -- receiving ----------------------------------------------------------------------------

    def decode(self, records: list[Record], n_bits: int) -> list[int]:
        """The receiver: the bits hidden in `records` for an n_bits message, in order."""
        per = self.decode_records(records, n_bits)
        return [b for r in records for b in per[r.request_id]]

    def measure(self, records: list[Record], n_bits: int) -> dict:
        """Capacity by decoding: bits read back, output tokens, bits per token, and whether the
        bits read back are exactly the ones the server hid."""
        got = self.decode(records, n_bits)
        n_tok = sum(len(r.output) for r in records)
        return {"bits": len(got), "tokens": n_tok, "bits_per_token": len(got) / max(n_tok, 1),
                "round_trip": got == self.embedded(records)}

    def decode_records(self, records: list[Record], n_bits: int) -> dict[str, list[int]]:
        """Per record id, the bits the receiver reads from it."""
        rows = (teacher_forced_logits(self.model, records) if self.per_token
                else [None] * len(records))
        return {r.request_id: self._decode(r, l, n)[:n]
                for r, l, (_, n) in zip(records, rows, split(n_bits, len(records)))}


def _bits_to_int(bits: list[int]) -> int:
    v = 0
    for b in bits:
        v = 2 * v + b
    return v


def _int_to_bits(v: int, n: int) -> list[int]:
    return [(v >> (n - 1 - i)) & 1 for i in range(n)]


class RankAttack(Attack):
    """(a) b bits per token: emit the token of logit rank v, v the next b bits."""

    name = "rank"

    def __init__(self, model: Model, bits_per_token: int = 1, **engine_kw):
        super().__init__(model, **engine_kw)
        if bits_per_token < 1:
            raise ValueError("bits_per_token must be >= 1")
        self.b = bits_per_token

    def _choose(self, row, req, pos, st):
        group = st["chunk"][st["sent"]: st["sent"] + self.b]
        st["sent"] += len(group)
        st["done"] = st["sent"] >= len(st["chunk"])
        v = _bits_to_int(group + [0] * (self.b - len(group)))  # last group padded with zeros
        return int(_order(row)[v])

    def _decode(self, rec, rows, n):
        out = []
        for j, tok in enumerate(rec.output):
            if len(out) >= n:
                break
            rank = int((_order(rows[j]) == tok).nonzero()[0])
            out += _int_to_bits(rank, self.b) if rank < 2 ** self.b else [0] * self.b
        return out


class ArithmeticAttack(Attack):
    """(b) Arithmetic-coding steganography in the policy's accepted set.

    At each position the accepted set A_t (replay.bound.accepted_mask) gets the sampling
    distribution renormalised over it, quantised to integer counts of the current interval
    [low, high) of `precision` bits; the message, read as a binary fraction, picks the token whose
    sub-interval holds it, and the leading bits that low and high - 1 then share are sent. The
    receiver recomputes the same counts from the same logits and reads those bits back."""

    name = "arithmetic"

    def __init__(self, model: Model, policy, precision: int = 48, **engine_kw):
        super().__init__(model, **engine_kw)
        if not 8 <= precision <= 52:
            raise ValueError(f"precision: 8..52 bits (float64 counts), got {precision}")
        self.policy = policy
        self.prec = precision

    def _start(self, req, chunk):
        # Past the chunk the fraction continues with random bits, not zeros: a point strictly
        # inside its dyadic interval gets the interval inside it in fewer tokens than its edge.
        rng = random.Random(req.request_id)
        pad = [rng.getrandbits(1) for _ in range(self.prec)]
        return {"chunk": chunk, "stream": chunk + pad, "sent": 0, "done": not chunk, "low": 0,
                "high": 1 << self.prec}

    def _intervals(self, row, params, pos, low, high):
        """(token ids, cumulative counts [len + 1]) over the accepted set, counts >= 1."""
        from replay import scores
        from replay.bound import accepted_mask

        acc = accepted_mask(row, params, pos, self.policy)
        p = scores.sample_probs(row[None], [params], [pos])[0]
        toks = acc.nonzero()[:, 0]
        pa = p[toks]
        if float(pa.sum()) <= 0:  # accepted tokens outside the kept set: use softmax(l)
            pa = torch.softmax(row.double()[toks], 0)
        order = torch.sort(-pa, stable=True).indices  # (p desc, id asc): toks ascend
        toks, pa = toks[order], pa[order] / pa.sum()
        R = high - low  # < 2^precision <= 2^53: exact in float64, products floor exactly
        counts = torch.floor(pa * float(R)).long()
        counts[0] += R - int(counts.sum())  # the remainder goes to the most likely token
        keep = counts > 0
        cum = torch.cat([torch.zeros(1, dtype=torch.int64), counts[keep].cumsum(0)])
        return toks[keep].tolist(), cum.tolist()

    def _narrow(self, st, cum, k):
        """Narrow to sub-interval k; shift out the leading bits low and high - 1 share."""
        P, mask = self.prec, (1 << self.prec) - 1
        low = st["low"] + cum[k]
        high = st["low"] + cum[k + 1]
        n = P - (low ^ (high - 1)).bit_length()
        sent = low >> (P - n) if n else 0
        st["low"] = (low << n) & mask
        st["high"] = ((((high - 1) << n) & mask) | ((1 << n) - 1)) + 1
        return _int_to_bits(sent, n)

    def _choose(self, row, req, pos, st):
        toks, cum = self._intervals(row, req.params, pos, st["low"], st["high"])
        P, a = self.prec, st["sent"]
        m = _bits_to_int(st["stream"][a: a + P])  # the message as a P-bit fraction
        off = m - st["low"]
        k = bisect.bisect_right(cum, off) - 1  # cum[k] <= off < cum[k + 1]
        st["sent"] += len(self._narrow(st, cum, k))
        st["done"] = st["sent"] >= len(st["chunk"])
        return toks[k]

    def _finish(self, rec, st):
        return st["chunk"][: min(st["sent"], len(st["chunk"]))]

    def _decode(self, rec, rows, n):
        st = {"low": 0, "high": 1 << self.prec}
        out = []
        for j, tok in enumerate(rec.output):
            if len(out) >= n:
                break
            toks, cum = self._intervals(rows[j], rec.params, len(rec.prompt) + j,
                                        st["low"], st["high"])
            if tok not in toks:  # not a token the coder could have sent: the record is honest
                break
            out += self._narrow(st, cum, toks.index(tok))
        return out


def candidate_seeds(salt: bytes, request_id: str, n: int) -> list[int]:
    """The 2^b seeds a grinding server and its receiver agree on for a request."""
    return [int.from_bytes(hashlib.sha256(salt + request_id.encode() + j.to_bytes(4, "big"))
                           .digest()[:8], "big") for j in range(n)]


class SeedGrindAttack(Attack):
    """(c) b bits per record: the server serves the request with candidate seed v (honestly) and
    the log carries that seed. The output is a faithful sample for the logged seed, so token
    checks pass; only the logger-key check (verify(..., seed_key=...)) sees the seed is not
    HMAC(key, request_id)."""

    name = "seed_grinding"
    per_token = False

    def __init__(self, model: Model, bits_per_record: int = 8, salt: bytes = b"grind",
                 **engine_kw):
        super().__init__(model, **engine_kw)
        self.b, self.salt = bits_per_record, salt

    def _start(self, req, chunk):
        chunk = chunk[: self.b]
        v = _bits_to_int(chunk + [0] * (self.b - len(chunk)))
        seed = candidate_seeds(self.salt, req.request_id, 2 ** self.b)[v]
        req.params = dataclasses.replace(req.params, seed=seed)
        return {"chunk": chunk, "sent": len(chunk), "done": True}

    def _decode(self, rec, rows, n):
        cands = candidate_seeds(self.salt, rec.request_id, 2 ** self.b)
        if rec.params.seed not in cands:
            return []
        return _int_to_bits(cands.index(rec.params.seed), self.b)


class LengthAttack(Attack):
    """(d) b bits per record in the output length n = min_len + v.

    mode "stop": emit a stop token as token n (and suppress honest stop tokens before it);
    mode "truncate": serve honestly and cut the output to n tokens (no stop token)."""

    name = "length"
    per_token = False

    def __init__(self, model: Model, bits_per_record: int = 4, min_len: int = 8,
                 mode: str = "stop", **engine_kw):
        super().__init__(model, **engine_kw)
        if mode not in ("stop", "truncate"):
            raise ValueError(f"mode: 'stop' or 'truncate', got {mode!r}")
        self.b, self.min_len, self.mode = bits_per_record, min_len, mode

    def _start(self, req, chunk):
        chunk = chunk[: self.b]
        n = self.min_len + _bits_to_int(chunk + [0] * (self.b - len(chunk)))
        if n > req.max_tokens:
            raise ValueError(f"request {req.request_id!r}: max_tokens {req.max_tokens} < "
                             f"{n} (min_len + 2^b - 1)")
        if self.mode == "stop" and not req.stop_token_ids:
            raise ValueError(f"request {req.request_id!r}: mode 'stop' needs stop tokens")
        return {"chunk": chunk, "sent": len(chunk), "done": False, "target": n,
                "prompt": len(req.prompt)}

    def _choose(self, row, req, pos, st):
        i = pos - st["prompt"]   # output index of this token
        if i == st["target"] - 1:
            st["done"] = True
            return req.stop_token_ids[0] if self.mode == "stop" else None
        t = _sample_one(row, req.params, pos)
        if t in req.stop_token_ids:  # an honest early stop would end the record too soon
            masked = row.clone()
            masked[req.stop_token_ids] = float("-inf")
            return _sample_one(masked, req.params, pos)
        return None

    def encode(self, bits, requests):
        records = super().encode(bits, requests)
        if self.mode == "truncate":
            records = [dataclasses.replace(r, output=r.output[: self._state[r.request_id]
                                                               ["target"]]) for r in records]
        return records

    def _decode(self, rec, rows, n):
        v = len(rec.output) - self.min_len
        return _int_to_bits(v, self.b) if 0 <= v < 2 ** self.b else []


class SubstitutionAttack(Attack):
    """(e) One bit wherever the honest sample and the substitute differ: the argmax
    (temperature=None) or the sample at a lower temperature with the same noise."""

    name = "substitution"

    def __init__(self, model: Model, temperature: float | None = None, **engine_kw):
        super().__init__(model, **engine_kw)
        self.t_low = temperature

    def _pair(self, row, params, pos):
        honest = _sample_one(row, params, pos)
        if self.t_low is None:
            alt = int(_order(row)[0])
        else:
            alt = _sample_one(row, dataclasses.replace(params, temperature=self.t_low), pos)
        return honest, alt

    def _choose(self, row, req, pos, st):
        honest, alt = self._pair(row, req.params, pos)
        if honest == alt:
            return None
        bit = st["chunk"][st["sent"]]
        st["sent"] += 1
        st["done"] = st["sent"] >= len(st["chunk"])
        return alt if bit else honest

    def _decode(self, rec, rows, n):
        out = []
        for j, tok in enumerate(rec.output):
            if len(out) >= n:
                break
            honest, alt = self._pair(rows[j], rec.params, len(rec.prompt) + j)
            if honest != alt:
                out.append(int(tok == alt))
        return out

