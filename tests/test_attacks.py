"""Attackers (replay.attacks): each decodes its own message, the exact policy catches every record
that carries a bit, the tolerant policy lets through no more than the bound; plots are written."""
import random

import pytest
import torch

from replay import attacks as A
from replay import bound
from replay.engine import Engine, Request
from replay.policy import Policy
from replay.records import SamplingParams, derive_seed
from replay.verify import verify

KEY = b"logger-key"
STOP = 7
TOLERANT = Policy.tolerant(-5.0)


def _requests(n=8, max_tokens=24, temperature=1.0, top_k=0, top_p=1.0):
    rng = random.Random(3)
    return [Request(f"q{i}", [rng.randrange(1, 509) for _ in range(rng.choice([1, 4, 9]))],
                    SamplingParams(temperature, top_k, top_p, derive_seed(KEY, f"q{i}")),
                    max_tokens=max_tokens, stop_token_ids=[STOP]) for i in range(n)]


def _attackers(model):
    return [A.RankAttack(model, bits_per_token=2), A.RankAttack(model, bits_per_token=1),
            A.ArithmeticAttack(model, TOLERANT), A.SeedGrindAttack(model, bits_per_record=4),
            A.LengthAttack(model, bits_per_record=3, min_len=5),
            A.LengthAttack(model, bits_per_record=3, min_len=5, mode="truncate"),
            A.SubstitutionAttack(model), A.SubstitutionAttack(model, temperature=0.5)]


def _bits(n, seed=0):
    rng = random.Random(seed)
    return [rng.getrandbits(1) for _ in range(n)]


@pytest.fixture(scope="module")
def served(small_model):
    """Per attacker: (attacker, records, carried bits per record, honest records)."""
    reqs = _requests()
    honest = {r.request_id: r for r in Engine(small_model).run(reqs)}
    out = []
    for atk in _attackers(small_model):
        msg = _bits(2000, seed=len(out))  # more than any record holds: every record saturated
        recs = atk.encode(msg, reqs)
        carried = atk.decode_records(recs, len(msg))
        out.append((atk, recs, carried, honest, msg))
    return out


def test_round_trip_full_capacity(served):
    for atk, recs, carried, _, msg in served:
        assert atk.decode(recs, len(msg)) == atk.embedded(recs), atk.name
        assert [b for r in recs for b in carried[r.request_id]] == atk.embedded(recs)
        # the carried bits are each record's chunk prefix of the message
        for r, (a, n) in zip(recs, A.split(len(msg), len(recs))):
            c = carried[r.request_id]
            assert c == msg[a: a + len(c)], atk.name
        assert len(atk.embedded(recs)) >= len(recs), f"{atk.name} embedded almost nothing"


@pytest.mark.parametrize("n_bits", [1, 13])
def test_round_trip_small_message(small_model, n_bits):
    reqs = _requests()
    for atk in _attackers(small_model):
        msg = _bits(n_bits, seed=n_bits)
        recs = atk.encode(msg, reqs)
        assert atk.decode(recs, n_bits) == msg, atk.name


def test_measure_reports_decoded_capacity(served):
    for atk, recs, carried, _, msg in served[:3]:
        m = atk.measure(recs, len(msg))
        assert m["round_trip"] and m["bits"] == sum(map(len, carried.values())) > 0
        assert m["bits_per_token"] == m["bits"] / sum(len(r.output) for r in recs)


def test_rank_attack_is_exactly_b_bits_per_token(served):
    atk, recs, carried = served[0][:3]
    for r in recs:
        assert len(carried[r.request_id]) == min(2 * len(r.output), 250)


def test_exact_policy_catches_every_record_with_a_bit(served, small_model):
    for atk, recs, carried, honest, _ in served:
        rep = verify(recs, small_model)
        verdict = {x["request_id"]: x["verdict"] for x in rep.records}
        for r in recs:
            if not carried[r.request_id] or r.output == honest[r.request_id].output:
                continue  # carries nothing, or is the honest output (decodes from honest traffic)
            if atk.name == "seed_grinding":
                assert verdict[r.request_id] == "pass"  # a faithful sample for the logged seed
            else:
                assert verdict[r.request_id] == "fail", (atk.name, r.request_id)


def test_seed_grinding_caught_with_the_logger_key(served, small_model):
    atk, recs, carried, honest, _ = next(s for s in served if s[0].name == "seed_grinding")
    rep = verify(recs, small_model, seed_key=KEY)
    assert all(x["verdict"] == "fail" for x in rep.records)
    assert verify(list(honest.values()), small_model, seed_key=KEY).ok


def test_tolerant_escaping_capacity_within_the_bound(served, small_model):
    for atk, recs, carried, _, _ in served:
        rep = verify(recs, small_model, policy=TOLERANT, keep_logits=True)
        passed = {x["request_id"] for x in rep.records if x["verdict"] == "pass"}
        ok = [r for r in recs if r.request_id in passed and r.output]
        escaping = sum(len(carried[r.request_id]) for r in ok)
        if not ok:
            continue
        logits = torch.cat([rep.logits[r.request_id] for r in ok])
        params = [r.params for r in ok for _ in r.output]
        pos = [len(r.prompt) + j for r in ok for j in range(len(r.output))]
        capacity = float(torch.log2(bound.accepted_sizes(logits, params, pos, TOLERANT)
                                    .double()).sum())
        if atk.name == "seed_grinding":
            continue  # its bits are in the seed, not in the tokens: the seed check is its bound
        assert escaping <= capacity, (atk.name, escaping, capacity)
    # the coder inside the accepted set is never flagged and does carry bits
    atk, recs, carried = next(s for s in served if s[0].name == "arithmetic")[:3]
    assert verify(recs, small_model, policy=TOLERANT).ok
    assert sum(map(len, carried.values())) > 0


def test_arithmetic_attack_under_exact_policy_carries_nothing(small_model):
    reqs = _requests(n=3, max_tokens=12)
    atk = A.ArithmeticAttack(small_model, Policy.exact())
    recs = atk.encode(_bits(100), reqs)
    assert atk.embedded(recs) == [] and verify(recs, small_model).ok


def test_length_attack_needs_room():
    with pytest.raises(ValueError, match="max_tokens"):
        A.LengthAttack(None, bits_per_record=4, min_len=10)._start(_requests(1, 20)[0], [1, 1])


def test_plots_written(served, small_model, tmp_path):
    honest = list(served[0][3].values())
    rep_h = verify(honest, small_model, policy=TOLERANT, keep_logits=True)
    attacked = {atk.name: verify(recs, small_model, policy=TOLERANT)
                for atk, recs, *_ in served[:3]}
    paths = rep_h.plot(str(tmp_path), attacked=attacked, records=honest)
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == ["detection.png", "scores.png",
                                                          "sweep.png"]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert all((tmp_path / n).stat().st_size > 5000 for n in ("scores.png", "sweep.png"))


def test_detection_curve_counts_first_failures():
    from replay.plots import detection_curve

    x, y = detection_curve([0, 3, None, 1], [5, 5, 5, 5])
    assert x == [1, 2, 3, 4, 5]
    assert y == [0.25, 0.5, 0.5, 0.75, 0.75]
    assert detection_curve([], [], 3) == ([], [])  # no records: no curve ("no data")


def test_report_command_writes_table_and_plots(small_model, tmp_path, monkeypatch):
    from replay import cli
    from replay.records import Batch

    reqs = _requests(n=4, max_tokens=12)
    Batch(Engine(small_model).run(reqs)).to_jsonl(tmp_path / "honest.jsonl")
    Batch(A.RankAttack(small_model, 1).encode(_bits(40), reqs)).to_jsonl(tmp_path / "rank.jsonl")
    monkeypatch.setattr(cli, "_model", lambda path: small_model)
    out = tmp_path / "rep"
    assert cli.main(["report", str(tmp_path / "honest.jsonl"), "--attacked",
                     str(tmp_path / "rank.jsonl"), "--policy", "tolerant", "--out",
                     str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "| honest | 4 | 4 | 0 | 0 |" in md and "| rank | 4 | 0 | 4 |" in md
    for name in ("scores.png", "detection.png", "sweep.png"):
        assert (out / name).stat().st_size > 5000


@pytest.mark.slow
def test_exfil_bench_small(tmp_path):
    """bench/exfil.py end to end at toy sizes (the shipped model): the table and the plots."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "bench", "exfil.py")
    spec = importlib.util.spec_from_file_location("exfil_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--requests", "3", "--max-tokens", "8", "--min-tokens", "0",
                     "--attack-requests", "2", "--attack-tokens", "40",
                     "--out", str(tmp_path)]) == 0
    md = (tmp_path / "exfil-cpu.md").read_text()
    assert "| replay engine | 3 |" in md and "| rank b=1 | 1.000 |" in md
    for name in ("sweep.png", "scores.png", "detection.png"):
        assert (tmp_path / "exfil" / name).stat().st_size > 5000
