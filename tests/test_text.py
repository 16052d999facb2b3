"""Text in the verifier's outputs (replay.text): pieces, a failing token in context, escaping, and
the report's text columns and FAIL lines with the shipped model's tokenizer."""
import dataclasses
import json
import os

import pytest

import replay
from replay.engine import Engine, Request
from replay.model import Model, eos_token_ids
from replay.records import SamplingParams
from replay.text import Context, Text, quote, tokenizer_path


@pytest.fixture(scope="module")
def text():
    return Text.load(replay.TINY_MODEL)


def one_token(text, s):
    ids = text.tok.encode(s).ids
    assert len(ids) == 1, f"{s!r} is {len(ids)} tokens in this vocabulary"
    return ids[0]


@pytest.fixture(scope="module")
def tiny():
    return Model.from_pretrained(replay.TINY_MODEL)


SAMPLES = ["def main(self, x):\n    return 'héllo wörld ✓ 日本'", "a\tb\r\nc", "<|endoftext|>x",
           "  leading spaces", "😀👍🏽 emoji with a modifier"]


@pytest.mark.parametrize("s", SAMPLES)
def test_pieces_join_to_the_decoded_text(text, s):
    ids = text.tok.encode(s).ids
    pieces = text.pieces(ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == text.decode(ids)
    assert not any("\ufffd" in p for p in pieces)  # no token shows half a character


def test_a_split_character_belongs_to_the_token_that_completes_it(text):
    ids = text.tok.encode("é").ids
    assert len(ids) == 2, "byte-level: é is two tokens in this vocabulary"
    assert text.pieces(ids) == ["", "é"]
    assert text.token(ids[0]) == text.tok.id_to_token(ids[0])  # shown as its entry, not U+FFFD


def test_context_of_a_failing_token(text):
    prompt = text.tok.encode("import os\nimport sys\n").ids
    output = text.tok.encode("def main():\n    return 1\n").ids
    j = 4
    choice = one_token(text, " return")
    ctx = text.context(prompt, output, j, choice, before=3)
    seq = prompt + output
    assert ctx.before == text.decode(seq[len(prompt) + j - 3: len(prompt) + j])
    assert ctx.claimed == text.pieces(seq[: len(prompt) + j + 1])[-1]
    assert ctx.choice == " return" and ctx.cut
    line = ctx.line()
    assert line.startswith('after "\u2026') and f'claimed {quote(ctx.claimed)}' in line
    assert line.endswith('sampler chose " return"')
    # at the very start the context comes from the prompt, nothing cut
    ctx0 = text.context(prompt[:2], output, 0, None, before=8)
    assert ctx0.before == text.decode(prompt[:2]) and not ctx0.cut and ctx0.choice is None
    assert Context.of(ctx.fields()) == ctx


def test_quote_escapes_what_could_rewrite_a_terminal_line():
    s = "ok\x1b[2K\rFAKE PASS\u202e\n\t\"\\"
    q = quote(s)
    assert q == '"ok\\x1b[2K\\rFAKE PASS\\u202e\\n\\t\\"\\\\"'
    assert all(c.isprintable() for c in q)


def test_tokenizer_path_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "tokenizer.json")):
        tokenizer_path(str(tmp_path))
    assert Text.find(str(tmp_path)) is None
    assert tokenizer_path(replay.TINY_MODEL) == os.path.join(replay.TINY_MODEL, "tokenizer.json")


def test_eos_token_ids_from_generation_config_and_config(tmp_path):
    (tmp_path / "config.json").write_text('{"eos_token_id": 7}')
    assert eos_token_ids(str(tmp_path)) == [7]
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [9, 7, 11]}')
    assert eos_token_ids(str(tmp_path)) == [9, 7, 11]
    (tmp_path / "config.json").write_text('{"eos_token_id": null}')
    assert eos_token_ids(str(tmp_path)) == [9, 7, 11]
    assert Model.from_pretrained(replay.TINY_MODEL).eos_token_ids == [0]


def _records(model, text, n=3):
    reqs = [Request(f"r{i}", text.tok.encode(p).ids, SamplingParams(0.8, seed=i), max_tokens=16,
                    stop_token_ids=[0])
            for i, p in enumerate(["def main(self):\n", "import os\n", "class A:\n"][:n])]
    return Engine(model).run(reqs)


def test_report_text_columns_and_fail_line(tiny, text):
    recs = _records(tiny, text)
    j = 6
    forged = dataclasses.replace(recs[1], output=list(recs[1].output))
    forged.output[j] = one_token(text, " return")
    assert forged.output[j] != recs[1].output[j]
    rep = replay.verify([recs[0], forged, recs[2]], model=tiny)
    df = rep.tokens_df()
    for r in recs[:1]:
        rows = df[df.request_id == r.request_id]
        assert "".join(rows.text) == text.decode(r.output)
        assert list(rows.choice_text) == list(rows.text)  # exact: the choice is the token
    res = rep.records[1]
    assert res.verdict == "fail" and res.first_failure == j
    want = text.context(forged.prompt, forged.output, j, recs[1].output[j])
    assert Context.of(res) == want and want.claimed == " return"
    assert want.choice == text.piece_at(recs[1].prompt + recs[1].output,
                                        len(recs[1].prompt) + j, recs[1].output[j])
    summary = rep.summary()
    assert f"FAIL  r1: token {j} " in summary
    assert want.line() in summary and 'claimed " return"' in summary
    assert rep.prompts["r0"] == text.decode(recs[0].prompt)


def test_without_a_tokenizer_ids_only(tiny, text):
    recs = _records(tiny, text, 1)
    forged = dataclasses.replace(recs[0], output=list(recs[0].output))
    forged.output[2] = (forged.output[2] + 1) % tiny.cfg.vocab_size
    rep = replay.verify([forged], model=tiny, tokenizer="")
    assert "text" not in rep.tokens_df().columns
    assert rep.records[0].text_claimed is None and rep.records[0].context_line() is None
    assert "after " not in rep.summary() and "claimed" in rep.summary()
    # a model without a folder (random weights) has no tokenizer either
    m = Model.random(tiny.cfg, seed=3)
    assert Text.find(m) is None


def test_watch_says_what_it_watches_and_alarms_quote_the_context(tiny, text, tmp_path, capsys):
    from replay.records import Batch
    from replay.watch import Watcher

    recs = _records(tiny, text, 2)
    forged = dataclasses.replace(recs[0], output=list(recs[0].output))
    forged.output[3] = one_token(text, " return")
    assert forged.output[3] != recs[0].output[3]
    logs = tmp_path / "logs"
    logs.mkdir()
    Batch([forged, recs[1]]).to_jsonl(logs / "shard-0.jsonl")
    w = Watcher(logs, tmp_path / "out", model=tiny)
    assert w.run(once=True) == 1
    err = capsys.readouterr().err
    assert f"watching {logs} for *.jsonl" in err and "seed check OFF" in err
    assert 'claimed " return", sampler chose "' in err
    alarm = json.loads((tmp_path / "out" / "ALARM").read_text().splitlines()[-1])
    row = alarm["records"][0]
    assert row["text_claimed"] == " return" and row["first_failure"] == 3
