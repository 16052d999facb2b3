"""replay logger: the trusted logger (DESIGN §4) as an OpenAI-compatible HTTP proxy in front of
an upstream vLLM server (docs/vllm.md).

    replay logger --upstream http://127.0.0.1:8000 --model path/to/model --seed-key-file key \\
                  --out logs/ --port 8100
    replay watch logs/ --out results/ --model path/to/model --seed-key-file key

Clients talk to the logger as to vLLM (/v1/completions, /v1/chat/completions, streaming or not).
For every request the logger, not the server, decides what a record says:
- request_id: assigned here ("cmpl-" + 32 random hex digits);
- seed: HMAC-SHA256(key, request_id) (records.derive_seed), injected; a client seed is refused;
- prompt: tokenized here (completions: the text, or the client's token ids; chat: the messages
  rendered with the logger's chat template) and sent upstream as token ids; a server that
  reports other prompt ids gets no record and the client an error;
- sampling parameters, max_tokens and stop token ids: the client's, sent explicitly (never the
  server's defaults); the model's EOS is a stop token unless ignore_eos;
- model: the identity of the weights the verifier must use (Model.identity_of: a hash of the
  weights and the config);
- the text the client receives: decoded here from the output token ids, so that the only
  channel left to the server is the token ids, which the verifier checks.
The server contributes only the output token ids (vLLM's return_token_ids) and the finish reason.
Features replay cannot replay (penalties, logit bias, min_p, n > 1, stop strings, ...) are
refused with a 400 that names the field.

Records are written to shards in `out` (JSONL, one or more records each) with an atomic rename
after fsync, before the response is acknowledged: the client's response (the JSON body, or every
chunk of a stream: the logger holds them until then) is only sent once its record is durable, so
every acknowledged response has exactly one record and no client sees a token no record holds.
Upstream errors and timeouts, a stream cut short and a client that disconnects before its record
is written produce no record and a line in out/errors.log; the client is told a fixed message,
never the server's text. Temporary files of a killed logger are never acknowledged and are
removed when it starts again. Left to the server: whether a response fails (a bit a request,
as with any refusal) and when.
"""

import asyncio
import json
import os
import time
import uuid
from dataclasses import dataclass, field

from replay.records import LoggedRequest, Record, SamplingParams, derive_seed

# OpenAI / vLLM request fields the logger passes on, and the neutral value of each field that
# replay cannot replay (anything else is refused)
_PASS = {"model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature",
         "top_p", "top_k", "stream", "stream_options", "stop_token_ids", "ignore_eos", "user",
         "return_token_ids", "logprobs", "top_logprobs", "skip_special_tokens"}
_NEUTRAL = {"n": 1, "best_of": None, "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "repetition_penalty": 1.0, "min_p": 0.0, "min_tokens": 0, "logit_bias": None,
            "stop": None, "echo": False, "suffix": None, "bad_words": None,
            "allowed_token_ids": None, "response_format": None, "structured_outputs": None,
            "guided_json": None, "guided_regex": None, "guided_choice": None,
            "guided_grammar": None, "tools": None, "tool_choice": None, "seed": None}
DEFAULT_CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n"
                         "{% endfor %}<|assistant|>\n")


class Refused(ValueError):
    """A client request the logger does not forward (HTTP 400); field names the culprit."""

    def __init__(self, field_: str, message: str):
        self.field = field_
        super().__init__(f"{field_}: {message}")


@dataclass
class Config:
    upstream: str                   # e.g. http://127.0.0.1:8000
    out: str                        # shard folder
    key: bytes                      # the HMAC key of the seeds
    model_dir: str                  # tokenizer.json, config.json (EOS) and the weights' identity
    served_model: str | None = None  # the upstream's model name (default: the folder's name)
    sampler: str = "replay"         # what the upstream samples with: meta.sampler of records
    max_tokens: int = 256           # when a client gives none
    timeout: float = 600.0          # seconds for one upstream response
    flush_ms: float = 5.0           # group commit window
    chat_template: str = DEFAULT_CHAT_TEMPLATE
    identity: str = field(default="", init=False)
    eos: list[int] = field(default_factory=list, init=False)

    def __post_init__(self):
        from replay.model import Model, eos_token_ids

        name = os.path.basename(os.path.normpath(self.model_dir))
        self.identity = Model.identity_of(self.model_dir)  # what the verifier's model must be
        self.served_model = self.served_model or name
        self.eos = eos_token_ids(self.model_dir)


# ---- durable shards -------------------------------------------------------------------------

class ShardWriter:
    """Group commit: the records that complete within flush_ms go to one new shard, written to a
    hidden temporary file, fsynced, renamed into place and the folder fsynced; `commit` returns
    once its record is durable."""

    def __init__(self, out: str, flush_ms: float):
        self.out, self.window = out, flush_ms / 1000.0
        os.makedirs(out, exist_ok=True)
        for f in os.listdir(out):  # a killed logger's unfinished shards: never acknowledged
            if f.startswith(".") and f.endswith(".tmp"):
                os.remove(os.path.join(out, f))
        self._pending: list[tuple[dict, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self._n = 0
        self.written = 0

    async def commit(self, rec: Record) -> str:
        line = json.dumps(rec.to_dict(), ensure_ascii=False, allow_nan=False)
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((line, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush())
        return await fut

    async def _flush(self):
        await asyncio.sleep(self.window)
        batch, self._pending = self._pending, []
        try:
            name = await asyncio.to_thread(self._write, [line for line, _ in batch])
        except Exception as e:  # noqa: BLE001 - every waiter learns why
            for _, fut in batch:
                fut.set_exception(e)
            return
        self.written += len(batch)
        for _, fut in batch:
            fut.set_result(name)
        if self._pending:
            self._task = asyncio.create_task(self._flush())

    def _write(self, lines: list[str]) -> str:
        self._n += 1
        name = f"{time.time_ns()}-{os.getpid()}-{self._n:06d}.jsonl"
        tmp = os.path.join(self.out, f".{name}.tmp")
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(x + "\n" for x in lines))
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(self.out, name))
        fd = os.open(self.out, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return name


# ---- one request --------------------------------------------------------------------------

class Detokenizer:
    """The text of a growing list of token ids, emitted as deltas that never split a character."""

    def __init__(self, tok):
        self.tok, self.ids, self.sent = tok, [], ""

    def add(self, ids: list[int]) -> str:
        self.ids += ids
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta

    def text(self) -> str:
        return self.tok.decode(self.ids, skip_special_tokens=True)


@dataclass
class Job:
    """What the logger decided for one request: the upstream body and the record's fields."""
    request_id: str
    chat: bool
    stream: bool
    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    stop_token_ids: list[int]
    upstream: dict
    want_ids: bool           # the client asked for return_token_ids


def plan(cfg: Config, tok, body: dict, chat: bool) -> Job:
    """Check a client body and build the upstream request (raises Refused)."""
    if not isinstance(body, dict):
        raise Refused("body", "expected a JSON object")
    for k, v in body.items():
        if k in _PASS:
            continue
        if k not in _NEUTRAL:
            raise Refused(k, "unknown or unsupported field")
        if v is None or v == _NEUTRAL[k] or v in ([], {}, ""):
            continue
        why = ("the logger assigns seeds (HMAC of the request id)" if k == "seed" else
               "cannot be replayed: replay verifies temperature, top_k, top_p, max_tokens and "
               "stop token ids only")
        raise Refused(k, why)
    rid = "cmpl-" + uuid.uuid4().hex
    seed = derive_seed(cfg.key, rid)
    if chat:
        prompt = _render_chat(cfg, tok, body.get("messages"))
    else:
        prompt = _prompt_ids(tok, body.get("prompt"))
    T = _num(body, "temperature", 1.0)
    top_p = _num(body, "top_p", 1.0)
    top_k = body.get("top_k", 0)
    top_k = 0 if top_k is None or top_k == -1 else top_k
    mt = body.get("max_completion_tokens") if chat else None
    mt = mt if mt is not None else body.get("max_tokens")
    mt = cfg.max_tokens if mt is None else mt
    stops = body.get("stop_token_ids") or []
    ignore_eos = bool(body.get("ignore_eos", False))
    if not (isinstance(stops, list) and all(isinstance(t, int) for t in stops)):
        raise Refused("stop_token_ids", "expected a list of token ids")
    record_stops = list(stops) + [e for e in ([] if ignore_eos else cfg.eos) if e not in stops]
    params = SamplingParams(T, top_k, top_p, seed)
    rec = Record(rid, prompt, [], params, mt, record_stops, cfg.identity)
    try:
        rec.validate()
    except Exception as e:  # RecordError names the field
        raise Refused(getattr(e, "field", None) or "body", getattr(e, "message", str(e)))
    stream = bool(body.get("stream", False))
    up = {"model": cfg.served_model, "prompt": prompt, "max_tokens": mt, "temperature": T,
          "top_p": top_p, "top_k": top_k, "seed": seed - (1 << 64) if seed >= 1 << 63 else seed,
          # the record's stop set, not only the client's: vLLM would add its own EOS (from
          # generation_config.json), the logger's may also hold config.json's; one set for both
          "stop_token_ids": record_stops, "ignore_eos": ignore_eos, "return_token_ids": True,
          "stream": stream, "skip_special_tokens": True}
    if stream:
        up["stream_options"] = {"include_usage": False}
    for k in ("logprobs", "top_logprobs", "user"):
        if body.get(k) is not None and not chat:
            up[k] = body[k]
    return Job(rid, chat, stream, prompt, params, mt, record_stops, up,
               bool(body.get("return_token_ids", False)))


def _num(body, k, default):
    v = body.get(k, default)
    v = default if v is None else v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Refused(k, f"expected a number, got {type(v).__name__}")
    return float(v)


def _prompt_ids(tok, prompt) -> list[int]:
    if isinstance(prompt, str):
        return tok.encode(prompt).ids
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                   for t in prompt):
        return list(prompt)
    raise Refused("prompt", "expected one prompt: a string or a list of token ids")


def _render_chat(cfg: Config, tok, messages) -> list[int]:
    import jinja2

    if not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)):
        raise Refused("messages", "expected a list of {role, content} with text content")
    text = jinja2.Environment().from_string(cfg.chat_template).render(messages=messages)
    return tok.encode(text).ids


# ---- the HTTP service ---------------------------------------------------------------------

class Logger:
    """The service: `app` is the FastAPI application; every request is forwarded with httpx."""

    def __init__(self, cfg: Config):
        import httpx
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, StreamingResponse
        from tokenizers import Tokenizer

        self.cfg = cfg
        self.tok = Tokenizer.from_file(os.path.join(cfg.model_dir, "tokenizer.json"))
        self.writer = ShardWriter(cfg.out, cfg.flush_ms)
        self.errors_path = os.path.join(cfg.out, "errors.log")
        self.client: httpx.AsyncClient | None = None
        self.stats = {"records": 0, "errors": 0}
        self._httpx = httpx
        app = FastAPI(title="replay logger")

        @app.on_event("startup")
        async def _open():
            limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
            self.client = httpx.AsyncClient(base_url=cfg.upstream, limits=limits,
                                            timeout=httpx.Timeout(cfg.timeout, connect=10.0))

        @app.on_event("shutdown")
        async def _close():
            if self.client is not None:
                await self.client.aclose()

        @app.get("/health")
        async def health():
            return {"ok": True, **self.stats, "shards": self.writer._n}

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": cfg.served_model, "object": "model",
                                                "owned_by": "replay-logger"}]}

        async def handle(request: Request, chat: bool):
            try:
                body = await request.json()
            except ValueError:
                return JSONResponse(_error("body", "not valid JSON"), status_code=400)
            try:
                job = plan(cfg, self.tok, body, chat)
            except Refused as e:
                return JSONResponse(_error(e.field, str(e)), status_code=400)
            if job.stream:
                return StreamingResponse(self._stream(job, request),
                                         media_type="text/event-stream")
            return await self._once(job, JSONResponse)

        @app.post("/v1/completions")
        async def completions(request: Request):
            return await handle(request, chat=False)

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request):
            return await handle(request, chat=True)

        self.app = app

    # -- bookkeeping -----------------------------------------------------------------------

    def error(self, job: Job | None, kind: str, message: str):
        """A response without a record: one JSON line in out/errors.log."""
        self.stats["errors"] += 1
        line = json.dumps({"time": time.time(), "request_id": job.request_id if job else None,
                           "kind": kind, "message": message[:2000]})
        with open(self.errors_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def _record(self, job: Job, output: list[int], finish: str) -> Record:
        # nothing the server chose but the output and its finish reason ("stop" or "length",
        # checked): an upstream id or error text in a record would be a channel of its own
        meta = {"engine": "vllm", "sampler": self.cfg.sampler, "finish_reason": finish,
                "logger": "replay logger"}
        # request: the logger's own copy of what the client asked for (a seed key requires it)
        return Record(job.request_id, job.prompt, output, job.params, job.max_tokens,
                      job.stop_token_ids, self.cfg.identity, meta,
                      request=LoggedRequest(job.prompt, job.params, job.max_tokens,
                                            job.stop_token_ids))

    def _check_choice(self, job: Job, ch: dict, final: bool):
        """The upstream's choice must echo our prompt ids and carry token ids."""
        p = ch.get("prompt_token_ids")
        if p is not None and list(p) != job.prompt:
            raise Refused("prompt_token_ids", "the upstream reports other prompt token ids "
                                              "than the logger sent")
        if ch.get("token_ids") is None and (final or ch.get("text")):
            raise Refused("token_ids", "the upstream returned no output token ids "
                                       "(return_token_ids)")

    # -- non-streaming -----------------------------------------------------------------------

    async def _once(self, job: Job, JSONResponse):
        httpx = self._httpx
        try:
            r = await self.client.post("/v1/completions", json=job.upstream)
        except httpx.HTTPError as e:
            self.error(job, "upstream", f"{type(e).__name__}: {e}")
            return JSONResponse(_error("upstream", "the inference server did not answer"),
                                status_code=502)
        if r.status_code != 200:
            # the server's status and text go to errors.log only: passed to the client they
            # would carry what the verifier never sees
            self.error(job, "upstream", f"HTTP {r.status_code}: {r.text[:500]}")
            return JSONResponse(_error("upstream", "the inference server failed"),
                                status_code=502)
        try:
            d = r.json()
            ch = d["choices"][0]
            self._check_choice(job, ch, final=True)
            output, finish = list(ch["token_ids"]), ch.get("finish_reason")
            if finish not in ("stop", "length"):
                raise Refused("finish_reason", f"{finish!r}: the response did not complete")
            rec = self._record(job, output, finish)
            await self.writer.commit(rec)
        except (Refused, KeyError, IndexError, TypeError, ValueError) as e:
            self.error(job, "upstream-response", f"{type(e).__name__}: {e}")
            return JSONResponse(_error("upstream", _unusable(e)), status_code=502)
        except OSError as e:  # the record could not be made durable: no acknowledgement
            self.error(job, "shard", f"{type(e).__name__}: {e}")
            return JSONResponse(_error("logger", "the record could not be written"),
                                status_code=503)
        self.stats["records"] += 1
        text = self.tok.decode(output, skip_special_tokens=True)
        return JSONResponse(self._body(job, text, output, finish, final=True))

    def _body(self, job: Job, text: str, ids: list[int], finish, final: bool, first=False):
        now = int(time.time())
        if job.chat:
            if job.stream:
                delta = {"content": text}
                if first:
                    delta["role"] = "assistant"
                ch = {"index": 0, "delta": delta, "finish_reason": finish}
                obj = "chat.completion.chunk"
            else:
                ch = {"index": 0, "message": {"role": "assistant", "content": text},
                      "finish_reason": finish}
                obj = "chat.completion"
        else:
            ch = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            obj = "text_completion"
        if job.want_ids:
            ch["token_ids"] = ids
            if final or first:
                ch["prompt_token_ids"] = job.prompt
        out = {"id": job.request_id, "object": obj, "created": now,
               "model": self.cfg.served_model, "choices": [ch]}
        if final and not job.stream:
            out["usage"] = {"prompt_tokens": len(job.prompt), "completion_tokens": len(ids),
                            "total_tokens": len(job.prompt) + len(ids)}
        return out

    # -- streaming ---------------------------------------------------------------------------

    async def _stream(self, job: Job, request):
        """Server-sent events: the upstream chunks re-emitted with the logger's text, held back
        until the record is durable and then sent. A failure before that: no record, and the
        client has received no token (a server that streamed tokens and then aborted would
        otherwise have delivered tokens no record holds, so that no verifier checks them)."""
        httpx = self._httpx
        det, output, finish, first, held = Detokenizer(self.tok), [], None, True, []
        try:
            async with self.client.stream("POST", "/v1/completions", json=job.upstream) as r:
                if r.status_code != 200:
                    text = (await r.aread()).decode(errors="replace")
                    raise Refused("upstream", f"HTTP {r.status_code}: {text[:500]}")
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    d = json.loads(data)
                    if "error" in d and not d.get("choices"):
                        raise Refused("upstream", f"stream error: {d['error']}")
                    for ch in d.get("choices", []):
                        self._check_choice(job, ch, final=False)
                        ids = list(ch.get("token_ids") or [])
                        output += ids
                        finish = ch.get("finish_reason") or finish
                        delta = det.add(ids)
                        if delta or first or ids:
                            body = self._body(job, delta, ids, None, final=False, first=first)
                            first = False
                            held.append(f"data: {json.dumps(body)}\n\n")
            if finish not in ("stop", "length"):
                raise Refused("finish_reason", f"{finish!r}: the stream ended before the "
                                               "response completed")
            await self.writer.commit(self._record(job, output, finish))
        except asyncio.CancelledError:  # the client went away: nothing was sent, no record
            self.error(job, "client-disconnect", "the client closed the stream")
            raise
        except (httpx.HTTPError, Refused, ValueError, KeyError, TypeError, OSError) as e:
            self.error(job, "upstream-stream", f"{type(e).__name__}: {e}")
            yield f"data: {json.dumps(_error('upstream', _unusable(e)))}\n\n"
            return
        self.stats["records"] += 1
        try:
            for chunk in held:
                yield chunk
            tail = det.text()[len(det.sent):]
            yield f"data: {json.dumps(self._body(job, tail, [], finish, final=True))}\n\n"
            yield "data: [DONE]\n\n"
        except asyncio.CancelledError:  # after the record: the client saw part of a checked output
            self.error(job, "client-disconnect", "the client closed the stream after its record "
                                                 "was written")
            raise


def _unusable(e: Exception) -> str:
    """What the client learns of an upstream failure: the logger's own words and field name,
    never the server's text (errors.log has that)."""
    where = f" (field {e.field})" if isinstance(e, Refused) and e.field != "upstream" else ""
    return f"the inference server's response could not be used{where}"


def _error(field_: str, message: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error"
                      if field_ not in ("upstream", "logger") else "upstream_error",
                      "param": field_, "code": None}}


def serve(cfg: Config, host: str = "127.0.0.1", port: int = 8100, log_level: str = "warning"):
    """Run the logger with uvicorn until it is stopped (SIGINT / SIGTERM)."""
    import uvicorn

    uvicorn.run(Logger(cfg).app, host=host, port=port, log_level=log_level)
