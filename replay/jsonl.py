"""Reading JSONL record files line by line (records.Batch.from_jsonl, the importers): one JSON
value per line, and a named RecordError in place of whatever is not exactly that, so one bad
line never costs the others."""
from __future__ import annotations

import json
import os
from typing import Any, Iterator

from replay.records import RecordError, record_name


class _Repeated(dict):
    """A JSON object in which a key appeared twice (json keeps the last value silently: a reader
    that kept the first would see another record)."""
    repeated: str


def no_repeats(pairs):
    d = _Repeated(pairs) if len({k for k, _ in pairs}) < len(pairs) else dict(pairs)
    if isinstance(d, _Repeated):
        seen = set()
        d.repeated = next(k for k, _ in pairs if k in seen or seen.add(k))
    return d


def _repeated_key(v) -> str | None:
    # the dotted path of the first object (breadth first) that repeats a key
    todo = [("", v)]
    while todo:
        path, x = todo.pop(0)
        if isinstance(x, _Repeated):
            return path + x.repeated
        if isinstance(x, dict):
            todo += [(f"{path}{k}.", y) for k, y in x.items()]
        elif isinstance(x, list):
            todo += [(path, y) for y in x if isinstance(y, (dict, list))]
    return None


_DECODER = json.JSONDecoder(object_pairs_hook=no_repeats)


def _json_values(text: str, loc: str) -> list:
    """The JSON values of one line: [value], or a RecordError per value when the line holds
    several (each record on it gets its own error, none is silently merged or dropped), or one
    RecordError for text that is not JSON."""
    values, i, n = [], 0, len(text)
    while True:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i == n:
            break
        try:
            v, i = _DECODER.raw_decode(text, i)
        except ValueError as e:
            values.append(RecordError(loc, None, f"not valid JSON: {e}", loc))
            break
        except RecursionError:
            values.append(RecordError(loc, None, "not valid JSON: nested too deeply", loc))
            break
        values.append(v)
    if len(values) == 1:
        v = values[0]
        key = None if isinstance(v, RecordError) else _repeated_key(v)
        if key is not None:
            rid = v.get("request_id") if isinstance(v, dict) else None
            return [RecordError(record_name(rid, loc), key, "key appears twice in one JSON "
                                "object (readers disagree on which value counts)", loc)]
        return values
    return [v if isinstance(v, RecordError) else RecordError(
        record_name(v.get("request_id") if isinstance(v, dict) else None, loc), None,
        f"value {k + 1} of {len(values)} JSON values on one line (JSONL holds one record a "
        "line)", loc) for k, v in enumerate(values)]


def read_jsonl(path) -> Iterator[tuple[str, Any]]:
    """(file:line, a JSON value) for every value on a non-blank line; a line that is not JSON
    (or holds several values, or repeats a key) gives RecordErrors in place of values, so one bad
    line never costs the others. Lines end at \\n, \\r\\n or a lone \\r (JSON strings cannot
    hold a raw CR, so a CR always ends a line)."""
    path = os.fspath(path)
    lineno = 0
    with open(path, "rb") as f:  # bytes: split lines first, decode each on its own
        for chunk in f:
            for line in chunk.splitlines():
                lineno += 1
                if not line.strip():
                    continue
                loc = f"{path}:{lineno}"
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield loc, RecordError(loc, None, f"not valid JSON: not UTF-8 ({e})", loc)
                    continue
                for v in _json_values(text, loc):
                    yield loc, v
