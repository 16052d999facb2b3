"""A standing verifier for one machine: verify record shards as they appear in a folder.

    replay watch logs/ --out results/ --alarm-cmd 'curl -sf --data-binary @- https://alerts/...'

    w = Watcher("logs/", "results/", model="path/to/model")
    status = w.run(once=True)   # 0: every record passed; 1: an alarm; 2: a shard never settled

Shards are the files replay.records.list_shards takes (the fleet and Batch.read take the same):
*.jsonl / *.ndjson / *.parquet / *.pq, not hidden. Writers should write under a name that is not
a shard (`.name.jsonl`, `name.jsonl.tmp`) and rename it when complete (atomic on POSIX); a shard
written in place is read only once it is stable: its (size, mtime, ctime, inode) unchanged since
the previous scan and its mtime at least `settle` seconds old; and its content hash (SHA-256)
must be the same before and after reading, else it is read again later.

A verified shard is remembered by its content hash under the settings fingerprint
(Options.fingerprint: model identity, policy, seed key...). A shard whose stat changed is hashed
again (a restarted watcher hashes every shard once): same content, nothing to do; other content
(also a same-size copy with its old mtime restored) is an alarm, and it is verified again.
Other settings (another --seed-key, --model, --policy) verify every shard again.

Alarms: any record that does not pass (a failed token, a bad termination, a malformed record,
an unreadable file), and a shard that changed after it was verified. An alarm is one JSON object
of any size, written to out/alarms/pending/<id>.json (the outbox) and appended to out/ALARM before
the shard's state is written; with an alarm command it is delivered by running the command with
the JSON on its stdin and its path in REPLAY_ALARM_FILE (payloads never go through the
environment), in the background, killed after `alarm_timeout` seconds; on exit status 0 the file
moves to out/alarms/sent/, otherwise it is retried (each scan, after a back-off, and by the next
run) until it is delivered. A shard counts as done once its state is written and its alarms are
in sent/ (Watcher.done). The id is a digest of (shard, content hash, kind, fingerprint), so an
alarm raised again for the same content is not delivered twice.

out/state.jsonl: one JSON line per verification (shard, size, mtime_ns, ctime_ns, inode, sha256,
fingerprint, counts, alarm ids); the last line per shard holds.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

from replay.records import Batch, RecordError, shard_names
from replay.report import RecordResult, failure_lines


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _signature(st: os.stat_result) -> list:
    # ctime moves on every write and on every utime(), so a copy with its old mtime restored
    # still has a new signature (and is then hashed)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class Watcher:
    """policy, options, settings: the verifier's settings, as for replay.verify (Options).
    alarm_cmd: shell command per alarm (JSON on stdin, REPLAY_ALARM_FILE its path);
    alarm_timeout: seconds before a hanging alarm command is killed (and retried later)."""

    def __init__(self, folder: str, out: str, model, policy=None, *, options=None,
                 alarm_cmd: str | None = None, settle: float = 2.0, alarm_timeout: float = 30.0,
                 quiet: bool = False, **settings):
        from replay.fleet import load_model
        from replay.verify import Options

        self.folder, self.out = os.fspath(folder), os.fspath(out)
        self.model = load_model(model)
        self.options = Options.of(options, policy, **settings)
        self.fingerprint = self.options.fingerprint(self.model.identity,
                                                    getattr(self.model, "stack", ""))
        self.alarm_cmd, self.settle, self.quiet = alarm_cmd, settle, quiet
        self.alarm_timeout = alarm_timeout
        self.alarm_file = os.path.join(self.out, "ALARM")
        self.pending_dir = os.path.join(self.out, "alarms", "pending")
        self.sent_dir = os.path.join(self.out, "alarms", "sent")
        for d in (os.path.join(self.out, "shards"), self.pending_dir, self.sent_dir):
            os.makedirs(d, exist_ok=True)
        self.state: dict[str, dict] = {}
        self._seen: dict[str, list] = {}      # name -> stat signature at the previous scan
        self._checked: set[str] = set()      # shards whose content this process has hashed
        self._delivery: dict[str, dict] = {}  # alarm id -> {"thread", "rc", "tries", "next"}
        self._lock = threading.Lock()
        self.alarms = 0
        path = os.path.join(self.out, "state.jsonl")
        if os.path.exists(path):
            with open(path, "rb") as f:
                for n, line in enumerate(f, 1):
                    try:
                        d = json.loads(line)
                        self.state[d["shard"]] = d
                    except (ValueError, KeyError, TypeError):  # cut off by a crash mid-write
                        self._say(f"{path}:{n}: unreadable state line skipped")

    def _say(self, msg: str, always: bool = False):
        if always or not self.quiet:
            print(f"replay watch: {msg}", file=sys.stderr)

    # -- scanning -------------------------------------------------------------------------------

    def pending(self) -> tuple[list[str], list[str]]:
        """(shards to verify now, shards not yet stable). A shard is looked at when it is new,
        its stat changed since it was verified, it was verified under other settings, or this
        process has not hashed it yet; it is verified when it is stable and its content is not
        the content verified under these settings."""
        ready, unstable, now = [], [], time.time_ns()
        for name in shard_names(self.folder):
            try:
                st = os.stat(os.path.join(self.folder, name))
            except FileNotFoundError:  # removed between listing and stat
                continue
            sig = _signature(st)
            prev, self._seen[name] = self._seen.get(name), sig
            done = self.state.get(name)
            current = done is not None and done.get("fingerprint") == self.fingerprint
            if current and done.get("stat") == sig and name in self._checked:
                continue
            if prev != sig or now - st.st_mtime_ns < self.settle * 1e9:
                unstable.append(name)
                continue
            if current and file_sha256(os.path.join(self.folder, name)) == done.get("sha256"):
                self._checked.add(name)  # same content (touched, or first sight since start)
                if done.get("stat") != sig:
                    self._record(dict(done, stat=sig))
                continue
            ready.append(name)
        return ready, unstable

    # -- one shard ------------------------------------------------------------------------------

    def verify_shard(self, name: str) -> dict | None:
        """Verify one shard, write its tables, raise its alarms, then record it; None if it
        changed while it was read (it is read again once stable)."""
        from replay.verify import verify

        path = os.path.join(self.folder, name)
        try:
            st, before = os.stat(path), file_sha256(path)
        except OSError:  # removed or unreadable: looked at again next scan
            return None
        try:
            batch = Batch.read(path)
            report = verify(batch, self.model, options=self.options)
            rows = report.records
        except (RecordError, OSError, ValueError) as e:  # unreadable: one error for the file
            rows, report = [RecordResult.error(e, path)], None
        try:
            after_st, after = os.stat(path), file_sha256(path)
        except OSError:
            return None
        if after != before or _signature(after_st) != _signature(st):
            self._say(f"{name} changed while it was read; it is read again once stable")
            return None
        if report is not None:
            try:
                report.write(os.path.join(self.out, "shards", name))
            except (OSError, ValueError) as e:  # e.g. a request_id Parquet cannot encode
                self._say(f"{name}: tables not written ({e}); its verdicts are in the state "
                          "line and any alarm", always=True)
        prev = self.state.get(name)
        bad = [r for r in rows if r.verdict != "pass"]
        ids = []
        if prev is not None and prev.get("sha256") != before:
            ids.append(self.alarm(name, before, "changed",
                                  f"shard {name} changed after it was verified", []))
        if bad:
            ids.append(self.alarm(name, before, "records",
                                  f"{len(bad)} of {len(rows)} records in {name} did not pass",
                                  bad))
        else:
            self._say(f"{name}: {len(rows)} records pass")
        entry = {"shard": name, "stat": _signature(st), "sha256": before,
                 "fingerprint": self.fingerprint, "records": len(rows),
                 "pass": len(rows) - len(bad), "fail": sum(r.verdict == "fail" for r in rows),
                 "error": sum(r.verdict == "error" for r in rows), "alarms": ids,
                 "verified_at": time.time()}
        self._record(entry)
        self._checked.add(name)
        return entry

    def _record(self, entry: dict):
        self.state[entry["shard"]] = entry
        with open(os.path.join(self.out, "state.jsonl"), "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def done(self, name: str) -> bool:
        """Verified under these settings, at its current content, and its alarms delivered."""
        e = self.state.get(name)
        return (e is not None and e.get("fingerprint") == self.fingerprint and
                all(os.path.exists(os.path.join(self.sent_dir, a + ".json"))
                    for a in e.get("alarms", [])))

    # -- alarms ---------------------------------------------------------------------------------

    def alarm(self, shard: str, sha256: str, kind: str, message: str,
              rows: list[RecordResult]) -> str:
        """Queue one alarm (out/alarms/pending/, out/ALARM, stderr) and start delivering it;
        returns its id."""
        from replay.records import digest

        aid = digest("replay.watch alarm", shard, sha256, kind, self.fingerprint)[:16]
        self.alarms += 1
        self._say(f"ALARM: {message}", always=True)
        for text in failure_lines(rows, 5):
            print(text, file=sys.stderr)
        sent = os.path.join(self.sent_dir, aid + ".json")
        pend = os.path.join(self.pending_dir, aid + ".json")
        if not (os.path.exists(sent) or os.path.exists(pend)):
            a = {"id": aid, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "shard": shard, "folder": self.folder, "sha256": sha256, "kind": kind,
                 "message": message,
                 "records": [{k: getattr(r, k) for k in (
                     "request_id", "verdict", "reason", "field", "first_failure", "text_before",
                     "text_claimed", "text_choice")} for r in rows]}
            line = json.dumps(a, default=str)
            tmp = pend + ".tmp"
            with open(tmp, "w") as f:
                f.write(line + "\n")
            os.replace(tmp, pend)
            with open(self.alarm_file, "a") as f:
                f.write(line + "\n")
        self.deliver()
        return aid

    def undelivered(self) -> list[str]:
        return sorted(f[:-5] for f in os.listdir(self.pending_dir) if f.endswith(".json"))

    def deliver(self):
        """Start delivering every pending alarm that is neither in flight nor backing off;
        collect finished deliveries. Never waits for a command."""
        now = time.monotonic()
        for aid in self.undelivered():
            with self._lock:
                d = self._delivery.setdefault(aid, {"thread": None, "rc": None, "tries": 0,
                                                    "next": 0.0})
                if d["thread"] is not None:
                    if d["thread"].is_alive():
                        continue
                    d["thread"] = None
                    if d["rc"] == 0:
                        continue  # moved to sent/ by the thread
                    self._say(f"alarm {aid}: command failed ({d['rc']}); retried", always=True)
                    d["next"] = now + min(60.0, 2.0 ** d["tries"])
                if now < d["next"]:
                    continue
                if not self.alarm_cmd:
                    self._sent(aid)
                    continue
                d["tries"] += 1
                d["thread"] = threading.Thread(target=self._run_cmd, args=(aid, d),
                                               daemon=True)
                d["thread"].start()

    def _run_cmd(self, aid: str, d: dict):
        path = os.path.join(self.pending_dir, aid + ".json")
        try:
            with open(path, "rb") as stdin:  # a file, not a pipe: the command need not read it
                p = subprocess.Popen(self.alarm_cmd, shell=True, stdin=stdin,
                                     env=dict(os.environ, REPLAY_ALARM_FILE=path),
                                     start_new_session=True)
            try:
                rc = p.wait(timeout=self.alarm_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)  # the shell and whatever it started
                p.wait()
                rc = f"timed out after {self.alarm_timeout:g} s"
        except OSError as e:
            rc = str(e)
        if rc == 0:
            self._sent(aid)
        d["rc"] = rc

    def _sent(self, aid: str):
        os.replace(os.path.join(self.pending_dir, aid + ".json"),
                   os.path.join(self.sent_dir, aid + ".json"))

    def wait_for_alarms(self, timeout: float) -> list[str]:
        """Deliver what is pending, waiting for commands in flight (one attempt each, at most
        `timeout` seconds); returns the ids still undelivered."""
        deadline = time.monotonic() + timeout
        self.deliver()
        while time.monotonic() < deadline:
            with self._lock:
                live = [d["thread"] for d in self._delivery.values()
                        if d["thread"] is not None and d["thread"].is_alive()]
            if not live:
                break
            live[0].join(max(0.0, deadline - time.monotonic()))
        self.deliver()  # collect the results (failures back off: retried next run)
        return self.undelivered()

    # -- the loop -------------------------------------------------------------------------------

    def announce(self, once: bool, interval: float):
        """Say on stderr what is watched, with what, and where results and alarms go."""
        from replay.records import SUFFIXES

        o = self.options
        how = "once, now" if once else f"every {interval:g} s, a shard once unchanged for " \
                                       f"{self.settle:g} s"
        print(f"replay watch: watching {os.path.abspath(self.folder)} for "
              f"{' / '.join('*' + s for s in SUFFIXES)} shards ({how}); model "
              f"{self.model.identity}, policy {o.policy.kind}, seed check "
              f"{'on' if o.seed_key else 'OFF (no --seed-key-file or $REPLAY_SEED_KEY)'}; "
              f"results and ALARM in {os.path.abspath(self.out)}"
              + (f"; alarm command: {self.alarm_cmd}" if self.alarm_cmd else ""),
              file=sys.stderr)

    def run(self, once: bool = False, interval: float = 2.0, exit_on_alarm: bool = False,
            max_scans: int | None = None, once_wait: float = 60.0) -> int:
        """Scan and verify until interrupted, or with once until every shard present is verified
        (waiting up to once_wait seconds for shards still being written). Returns 1 if this run
        raised an alarm, else 2 if (once) some shard never became stable, else 0."""
        start, scans, unstable = self.alarms, 0, []
        deadline = time.monotonic() + once_wait
        if not self.quiet:
            self.announce(once, interval)
        try:
            while True:
                self.deliver()
                ready, unstable = self.pending()
                for name in ready:
                    self.verify_shard(name)
                    if exit_on_alarm and self.alarms > start:
                        return 1
                scans += 1
                if max_scans is not None and scans >= max_scans:
                    break
                if once and (not unstable or time.monotonic() > deadline):
                    break
                time.sleep(min(interval, max(self.settle / 4, 0.05)) if once else interval)
        except KeyboardInterrupt:
            pass
        finally:
            left = self.wait_for_alarms(self.alarm_timeout + 1)
            if left:
                self._say(f"{len(left)} alarms not delivered yet (kept in "
                          f"{self.pending_dir}; delivered by the next run)", always=True)
        if self.alarms > start:
            return 1
        if once and unstable:
            self._say(f"not verified, still being written after {once_wait:g} s: "
                      + ", ".join(unstable), always=True)
            return 2
        return 0
