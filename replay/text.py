"""Text for people: token ids decoded with the model's tokenizer, each token in its context.

    text = Text.find(model_dir)                  # the folder's tokenizer.json, or None
    text.pieces(prompt + output)                 # one string per token; they join to the text
    ctx = text.context(prompt, output, index, choice)
    print(ctx.line())       # after "…h open(": claimed "fi", sampler chose "pa"
    print(quote(s))         # one printable line: newlines, tabs, control characters escaped

Every human-facing output (the summary's FAIL lines, the token table's text column, report.md,
the HTML report, the watcher's alarms) shows decoded text when a tokenizer is there, ids only when
it is not. The verdicts never depend on it: the verifier checks token ids, text is for reading.

A token's piece is what it adds to the decoded text of the tokens before it (the incremental
detokenisation that servers stream with): a character split over several byte-level tokens
belongs to the token that completes it, the tokens before it have the empty piece, and special
tokens (<|endoftext|>) are shown as themselves.
"""
from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass

CONTEXT_TOKENS = 8   # tokens of context before a failing token
_WARMUP = 4          # tokens decoded before a window so that its first piece is right


def tokenizer_path(spec: str) -> str:
    """The tokenizer.json of `spec` (the file itself, or a folder holding one); FileNotFoundError
    naming the file that is missing."""
    path = os.path.join(spec, "tokenizer.json") if os.path.isdir(spec) else spec
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no tokenizer: {path} does not exist (give a tokenizer.json "
                                "with --tokenizer)")
    return path


class Text:
    """A tokenizers.Tokenizer's decoding, as pieces and in context."""

    _cache: dict[str, "Text"] = {}

    def __init__(self, tokenizer, path: str | None = None):
        self.tok, self.path = tokenizer, path

    @classmethod
    def load(cls, spec: str) -> "Text":
        """From a tokenizer.json or a folder holding one (loaded once per path)."""
        from tokenizers import Tokenizer

        path = os.path.abspath(tokenizer_path(spec))
        if path not in cls._cache:
            cls._cache[path] = cls(Tokenizer.from_file(path), path)
        return cls._cache[path]

    @classmethod
    def find(cls, spec) -> "Text | None":
        """A Text for `spec`: a Text, a tokenizer.json or folder path (None if it has no
        tokenizer.json), a model with a `path` folder, or None."""
        if spec is None or isinstance(spec, Text):
            return spec
        spec = getattr(spec, "path", spec)
        if not isinstance(spec, (str, os.PathLike)):
            return None
        try:
            return cls.load(os.fspath(spec))
        except FileNotFoundError:
            return None

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token(self, i: int) -> str:
        """One token on its own: its decoding, or its vocabulary entry when that is a partial
        character (a byte-level 'â')."""
        s = self.decode([i])
        if s and "\ufffd" not in s:
            return s
        return self.tok.id_to_token(int(i)) or s

    def pieces(self, ids) -> list[str]:
        """One string per token: what it adds to the decoded text (see the module doc)."""
        ids = [int(i) for i in ids]
        out, prefix, read = [], 0, 0
        for i in range(len(ids)):
            before = self.decode(ids[prefix:read])
            now = self.decode(ids[prefix:i + 1])
            if now.endswith("\ufffd") and i + 1 < len(ids):  # an incomplete character: wait
                out.append("")
                continue
            out.append(now[len(before):] if now.startswith(before) else self.token(ids[i]))
            prefix, read = read, i + 1
        return out

    def output_pieces(self, prompt, output) -> list[str]:
        """The pieces of the output tokens, decoded after the end of the prompt."""
        seq, P = list(prompt) + list(output), len(prompt)
        w = max(0, P - _WARMUP)
        return self.pieces(seq[w:])[P - w:]

    def piece_at(self, seq, at: int, token: int) -> str:
        """The piece of `token` decoded after seq[:at] (the entry itself if it adds nothing)."""
        w = max(0, at - _WARMUP)
        return self.pieces(list(seq[w:at]) + [int(token)])[-1] or self.token(token)

    def context(self, prompt, output, index: int, choice: int | None,
                before: int = CONTEXT_TOKENS) -> "Context":
        """The failing token output[index] in context: the `before` tokens ahead of it (from
        the prompt where the output is shorter), its piece and the sampler's choice's piece."""
        seq = [int(t) for t in prompt] + [int(t) for t in output]
        at = len(prompt) + index
        a = max(0, at - before)
        w = max(0, a - _WARMUP)
        lead = "".join(self.pieces(seq[w:at])[a - w:])
        chose = None if choice is None else self.piece_at(seq, at, choice)
        return Context(lead, self.piece_at(seq, at, seq[at]), chose, a > 0)


@dataclass(frozen=True)
class Context:
    """A failing token in its text: `before` (the text ahead of it, `cut`: text before that was
    left out), the claimed token's piece and the sampler's choice's piece (None: no choice)."""
    before: str
    claimed: str
    choice: str | None
    cut: bool = True

    def line(self) -> str:
        s = f"after {quote(self.lead)}: claimed {quote(self.claimed)}"
        return s + (f", sampler chose {quote(self.choice)}" if self.choice is not None else "")

    @property
    def lead(self) -> str:
        """`before` with a leading ellipsis when text before it was left out."""
        return ("\u2026" if self.cut else "") + self.before

    def fields(self) -> dict:
        """As the report's RecordResult stores it (text_before, text_claimed, text_choice)."""
        return {"text_before": self.lead, "text_claimed": self.claimed,
                "text_choice": self.choice}

    @classmethod
    def of(cls, row) -> "Context | None":
        """From a row with those three fields (None when it has no text; a table's missing
        values, NaN or None, count as no text)."""
        def get(k):
            v = row.get(k) if hasattr(row, "get") else getattr(row, k, None)
            return v if isinstance(v, str) else None
        if get("text_claimed") is None:
            return None
        lead = get("text_before") or ""
        cut = lead.startswith("\u2026")
        return cls(lead[cut:], get("text_claimed"), get("text_choice"), cut)


# Characters that must not reach a terminal raw: C0/C1 controls (DEL too), the bidirectional
# overrides and isolates that reorder what is displayed (U+202A-202E, U+2066-2069), line
# separators, and lone surrogates (which would crash the print).
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _visible(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
        o = ord(c)
        return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"
    return c


def printable(s) -> str:
    """str(s) on one line with nothing a terminal would act on: every character that could move
    the cursor, change colours, reorder the display or crash the print escaped (\\n, \\t,
    \\x1b, \\u202e, \\udc80 ...), and backslashes doubled, so that a record's text (a request id
    with ANSI escapes) cannot erase or reorder the lines around it."""
    return "".join(_visible(c) for c in str(s))


def quote(s: str) -> str:
    """printable(s) in double quotes (a quote inside escaped)."""
    return '"' + printable(s).replace('"', '\\"') + '"'
