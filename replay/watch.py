"""A standing verifier for one machine: verify record shards as they appear in a folder.

    replay watch logs/ --out results/ --alarm-cmd 'curl -d @$REPLAY_ALARM_FILE https://...'

    w = Watcher("logs/", "results/", model="path/to/model")
    status = w.run(once=True)          # 0: every record passed; 1: an alarm was raised

Each new *.jsonl / *.parquet shard (hidden and *.tmp files skipped) is read once it has stopped
changing for `settle` seconds, verified with replay.verify, and its tables are written to
out/shards/<name>/ (Report.write). A shard with any record that does not pass (a failed token,
a bad termination, a malformed record or an unreadable file) raises an alarm: one JSON line
appended to out/ALARM, a line on stderr, and, if given, the alarm command run with
REPLAY_ALARM_FILE, REPLAY_ALARM_SHARD and REPLAY_ALARM_JSON in its environment. A shard that
changes after it was verified (logs are append-once) is an alarm too, and is verified again.

out/state.jsonl remembers what was verified (name, size, mtime), so a restarted watcher carries
on where it stopped.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from replay.records import Batch, RecordError, shard_names
from replay.report import RecordResult, failure_lines


class Watcher:
    """policy, options, settings: the verifier's settings, as for replay.verify (Options)."""

    def __init__(self, folder: str, out: str, model, policy=None, *, options=None,
                 alarm_cmd: str | None = None, settle: float = 2.0, quiet: bool = False,
                 **settings):
        from replay.fleet import load_model
        from replay.verify import Options

        self.folder, self.out = os.fspath(folder), os.fspath(out)
        self.model = load_model(model)
        self.options = Options.of(options, policy, **settings)
        self.alarm_cmd, self.settle, self.quiet = alarm_cmd, settle, quiet
        self.alarm_file = os.path.join(self.out, "ALARM")
        os.makedirs(os.path.join(self.out, "shards"), exist_ok=True)
        self.state: dict[str, dict] = {}
        self._seen: dict[str, tuple] = {}   # name -> (size, mtime_ns) at the previous scan
        self.alarms = 0
        path = os.path.join(self.out, "state.jsonl")
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    if line.strip():
                        d = json.loads(line)
                        self.state[d["shard"]] = d

    # -- scanning -------------------------------------------------------------------------------

    def pending(self, settled_only: bool = True) -> list[str]:
        """Shard names to verify now: new, or changed since verified; with settled_only, only
        those unchanged since the previous scan and older than `settle` seconds."""
        out, now = [], time.time()
        for name in shard_names(self.folder):
            try:
                st = os.stat(os.path.join(self.folder, name))
            except FileNotFoundError:  # removed between listdir and stat
                continue
            sig = (st.st_size, st.st_mtime_ns)
            prev, self._seen[name] = self._seen.get(name), sig
            done = self.state.get(name)
            if done and (done["size"], done["mtime_ns"]) == sig:
                continue
            if settled_only and (prev != sig or now - st.st_mtime < self.settle):
                continue
            out.append(name)
        return out

    # -- one shard ------------------------------------------------------------------------------

    def verify_shard(self, name: str) -> dict:
        """Verify one shard, write its tables, raise an alarm if any record does not pass."""
        from replay.verify import verify

        path = os.path.join(self.folder, name)
        st = os.stat(path)
        changed = name in self.state
        try:
            batch = Batch.read(path)
            report = verify(batch, self.model, options=self.options)
            rows = report.records
            report.write(os.path.join(self.out, "shards", name))
        except (RecordError, OSError, ValueError) as e:  # unreadable: one error for the file
            rows = [RecordResult.error(e, path)]
        bad = [r for r in rows if r.verdict != "pass"]
        entry = {"shard": name, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                 "records": len(rows), "pass": len(rows) - len(bad),
                 "fail": sum(r.verdict == "fail" for r in rows),
                 "error": sum(r.verdict == "error" for r in rows), "alarm": bool(bad),
                 "verified_at": time.time()}
        self.state[name] = entry
        with open(os.path.join(self.out, "state.jsonl"), "a") as f:
            f.write(json.dumps(entry) + "\n")
        if changed:
            self.alarm(name, f"shard {name} changed after it was verified", [])
        if bad:
            self.alarm(name, f"{len(bad)} of {len(rows)} records in {name} did not pass", bad)
        elif not self.quiet:
            print(f"replay watch: {name}: {len(rows)} records pass", file=sys.stderr)
        return entry

    def alarm(self, shard: str, message: str, rows: list[RecordResult]):
        self.alarms += 1
        a = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "shard": shard,
             "folder": self.folder, "message": message,
             "records": [{k: getattr(r, k) for k in ("request_id", "verdict", "reason", "field")}
                         for r in rows]}
        line = json.dumps(a, default=str)
        with open(self.alarm_file, "a") as f:
            f.write(line + "\n")
        print(f"replay watch: ALARM: {message}", file=sys.stderr)
        for text in failure_lines(rows, 5):
            print(text, file=sys.stderr)
        if self.alarm_cmd:
            env = dict(os.environ, REPLAY_ALARM_FILE=self.alarm_file, REPLAY_ALARM_SHARD=shard,
                       REPLAY_ALARM_JSON=line)
            try:
                rc = subprocess.run(self.alarm_cmd, shell=True, env=env, timeout=60).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            if rc != 0:
                print(f"replay watch: alarm command failed ({rc})", file=sys.stderr)

    # -- the loop -------------------------------------------------------------------------------

    def run(self, once: bool = False, interval: float = 2.0, exit_on_alarm: bool = False,
            max_scans: int | None = None) -> int:
        """Scan and verify until interrupted (or once). Returns 1 if this run raised an alarm."""
        start, scans = self.alarms, 0
        try:
            while True:
                for name in self.pending(settled_only=not once):
                    self.verify_shard(name)
                    if exit_on_alarm and self.alarms > start:
                        return 1
                scans += 1
                if once or (max_scans is not None and scans >= max_scans):
                    break
                time.sleep(interval)
        except KeyboardInterrupt:
            pass
        return 1 if self.alarms > start else 0
