"""A real `vllm serve` (plugin on) behind `replay logger`, on 127.0.0.1, under load and faults.

220 requests from 24 concurrent clients: completions and chat, streaming and not, token-id and
text prompts of mixed lengths (a shared prefix: prefix caching; a 64-token step budget: chunked
prefill). Some clients drop their stream after the first chunk; the logger is killed (SIGKILL)
and restarted halfway; at the end the upstream is killed while streams are in flight.
Checks: every acknowledged response (a 200 body, or a stream's [DONE]) has exactly one record,
no record is partial or duplicated, every record verifies exact with the logger's key, the
dropped and killed requests left lines in errors.log, and `replay watch --once` passes the
shards.
"""
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

import replay
from replay.model import Model
from replay.policy import Policy
from replay.records import Batch
from replay.verify import verify

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from offline import workload  # noqa: E402

KEY = "serve-test-logger-key"
N, CLIENTS, DROPS = 220, 24, 5   # DROPS: streams the client leaves after the first chunk


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc, limit: float):
    t0 = time.time()
    while time.time() - t0 < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url}: not up after {limit} s")


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    vport, lport = _port(), _port()
    env = dict(os.environ, REPLAY_VLLM="1", VLLM_CPU_KVCACHE_SPACE="1")
    vlog = open(tmp / "vllm.log", "w")
    vllm = subprocess.Popen(
        [sys.executable, "-m", "replay.vllm.serve", replay.TINY_MODEL, "--dtype", "float32",
         "--host", "127.0.0.1", "--port", str(vport), "--gpu-memory-utilization", "0.1",
         "--max-model-len", "1024", "--max-num-batched-tokens", "64", "--max-num-seqs", "32",
         "--enable-prefix-caching", "--block-size", "128", "--skip-tokenizer-init",
         "--served-model-name", "tiny"], env=env, stdout=vlog, stderr=subprocess.STDOUT,
        start_new_session=True)
    out = tmp / "logs"
    (tmp / "key").write_text(KEY + "\n")
    cmd = [sys.executable, "-m", "replay.cli", "logger", "--upstream",
           f"http://127.0.0.1:{vport}", "--out", str(out), "--seed-key-file", str(tmp / "key"),
           "--served-model-name", "tiny", "--port", str(lport), "--timeout", "300"]

    def start_logger():
        p = subprocess.Popen(cmd, stdout=open(tmp / "logger.log", "a"),
                             stderr=subprocess.STDOUT, start_new_session=True)
        _wait(f"http://127.0.0.1:{lport}/health", p, 60)
        return p
    try:
        _wait(f"http://127.0.0.1:{vport}/v1/models", vllm, 600)
        state = {"logger": start_logger(), "vllm": vllm, "out": str(out), "tmp": tmp,
                 "url": f"http://127.0.0.1:{lport}", "restart": start_logger}
        yield state
    finally:
        _stop(state["logger"]) if "state" in locals() else None
        _stop(vllm)


def _body(i, prompt, T, k, p, m, rng):
    kind = i % 5
    chat = kind == 4
    body = {"model": "tiny", "max_tokens": m, "temperature": T, "top_k": k, "top_p": p,
            "stream": i % 2 == 0, "return_token_ids": True}
    if chat:
        body["messages"] = [{"role": "user", "content": f"question {i}: " + "x" * (i % 90)}]
    elif kind == 3:
        body["prompt"] = f"def f{i}(x):\n    return " + "y + " * (i % 40)
    else:
        body["prompt"] = prompt
    return "/v1/chat/completions" if chat else "/v1/completions", body


async def _one(client, url, path, body, drop: bool):
    """-> ("ack", id) for an acknowledged response, ("dropped"|"failed", None) otherwise."""
    try:
        if not body["stream"]:
            r = await client.post(url + path, json=body)
            return ("ack", r.json()["id"]) if r.status_code == 200 else ("failed", r.text)
        async with client.stream("POST", url + path, json=body) as r:
            if r.status_code != 200:
                return "failed", None
            rid = None
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return "ack", rid
                d = json.loads(data)
                rid = d.get("id", rid)
                if drop:
                    return "dropped", rid  # leaves the stream: the connection is closed
            return "failed", rid
    except httpx.HTTPError as e:
        return "failed", repr(e)


async def _load(state, jobs, clients, on_half=None):
    results = []
    q = asyncio.Queue()
    for j in jobs:
        q.put_nowait(j)
    half = asyncio.Event()

    async def worker():
        async with httpx.AsyncClient(timeout=360) as client:
            while not q.empty():
                path, body, drop = q.get_nowait()
                for attempt in range(60):  # the logger may be restarting: retry connects
                    res = await _one(client, state["url"], path, body, drop)
                    if res[0] != "failed" or "ConnectError" not in str(res[1]):
                        break
                    await asyncio.sleep(1)
                results.append(res)
                if len(results) >= len(jobs) // 2:
                    half.set()

    tasks = [asyncio.create_task(worker()) for _ in range(clients)]
    if on_half is not None:
        await half.wait()
        await asyncio.to_thread(on_half)
    await asyncio.gather(*tasks)
    return results


def test_logger_records_every_acknowledged_response(stack):
    rng = random.Random(7)
    jobs = []
    for i, (rid, prompt, (T, k, p, _), m) in enumerate(workload(N, seed=3)):
        path, body = _body(i, prompt, T, k, p, m, rng)
        jobs.append((path, body, body["stream"] and i % (N // DROPS) == 0))

    def restart():
        os.killpg(stack["logger"].pid, signal.SIGKILL)
        stack["logger"].wait(timeout=30)
        stack["logger"] = stack["restart"]()

    t0 = time.time()
    res = asyncio.run(_load(stack, jobs, CLIENTS, on_half=restart))
    load_s = time.time() - t0
    acked = [rid for kind, rid in res if kind == "ack"]
    dropped = sum(kind == "dropped" for kind, _ in res)
    # requests cut by the logger's kill (one per client at most) or timed out on a loaded
    # machine are not acknowledged; most must be
    failed = [rid for kind, rid in res if kind == "failed"]
    assert len(acked) >= 0.8 * N, failed[:10]
    assert DROPS - 1 <= dropped <= DROPS  # one may be cut by the logger's kill instead

    # the upstream dies while streams are in flight: none of them is acknowledged or recorded
    tail = [("/v1/completions", {"model": "tiny", "prompt": [5] * 20, "max_tokens": 1000,
                                 "temperature": 0.9, "stream": True, "ignore_eos": True},
             False) for _ in range(8)]

    async def kill_mid_run():
        task = asyncio.create_task(_load(stack, tail, 8))
        await asyncio.sleep(3)
        os.killpg(stack["vllm"].pid, signal.SIGKILL)
        return await task
    late = asyncio.run(kill_mid_run())
    assert not any(kind == "ack" for kind, _ in late)
    # and none of them got a token: the logger holds a stream's chunks until its record is
    # durable, so a server that streams and then aborts has delivered nothing unrecorded
    assert not [rid for _, rid in late if isinstance(rid, str) and rid.startswith("cmpl-")], late

    out = stack["out"]
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    batch = Batch.read(out)
    assert not batch.errors  # no partial, malformed or duplicated record
    ids = [r.request_id for r in batch]
    assert len(ids) == len(set(ids))
    assert set(acked) <= set(ids)
    # records without an acknowledgement: only requests cut by the logger's kill or a drop
    assert len(set(ids) - set(acked)) <= len(failed) + DROPS
    errors = [json.loads(x) for x in open(os.path.join(out, "errors.log"))]
    kinds = {e["kind"] for e in errors}
    assert "upstream-stream" in kinds

    model = Model.from_pretrained(replay.TINY_MODEL)
    rep = verify(batch, model=model, policy=Policy.exact(), seed_key=KEY.encode())
    print(f"serve+logger: {len(acked)} acknowledged, {len(failed)} failed, {len(batch)} records, "
          f"{rep.n_tokens} tokens, load {load_s:.0f} s; verify: {rep.summary(max_lines=3)}")
    assert rep.ok and all(rep.tokens["exact"])
    assert rep.n_tokens > 3000

    w = subprocess.run([sys.executable, "-m", "replay.cli", "watch", out, "--out",
                        str(stack["tmp"] / "watch"), "--once",
                        "--seed-key-file", str(stack["tmp"] / "key"), "--quiet"],
                       capture_output=True, text=True, timeout=600)
    assert w.returncode == 0, w.stdout[-2000:] + w.stderr[-2000:]
