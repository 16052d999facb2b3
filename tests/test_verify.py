"""The verifier catches tampering at the right position, and reports malformed records one by one
without costing the others their verdicts."""
import dataclasses
import json

import pytest
import torch

from replay import sampling
from replay.engine import Engine, Request
from replay.policy import Policy
from replay.records import Batch, SamplingParams
from replay.verify import verify


@pytest.fixture(scope="module")
def honest(small_model):
    """Sampled records (T > 0, long enough to tamper with) and the engine's logits rows."""
    reqs = [Request(f"h{i}", [(7 * i + 3 * j) % 500 + 1 for j in range(5 + 11 * i)],
                    SamplingParams(temperature=0.9 + 0.1 * (i % 3), top_k=[0, 40][i % 2],
                                   top_p=[1.0, 0.95][i % 2], seed=1000 + i),
                    max_tokens=24, stop_token_ids=[]) for i in range(6)]
    engine = Engine(small_model, max_batch=4, chunk_size=16, keep_logits=True)
    records = engine.run(reqs)
    assert all(len(r.output) == 24 for r in records)
    assert verify(records, model=small_model).ok
    return records, engine.logits


def first_change(rec, logits, params):
    """First output index where the sampler, given the honest logits rows and `params`, would not
    have chosen the recorded token."""
    P = len(rec.prompt)
    n = len(rec.output)
    choice = sampling.sample(logits, temperature=[params.temperature] * n,
                             top_k=[params.top_k] * n, top_p=[params.top_p] * n,
                             seed=[params.seed] * n, position=[P + j for j in range(n)])
    diff = (choice != torch.tensor(rec.output)).nonzero()
    return int(diff[0]) if len(diff) else None


def only_record(report):
    assert len(report.records) == 1
    return report.records[0]


@pytest.mark.parametrize("j", [0, 9, 23])
def test_one_changed_output_token_is_caught_at_its_index(small_model, honest, j):
    records, _ = honest
    rec = records[2]
    out = list(rec.output)
    out[j] = (out[j] + 1) % small_model.cfg.vocab_size
    r = only_record(verify([dataclasses.replace(rec, output=out)], model=small_model))
    assert r["verdict"] == "fail" and r["first_failure"] == j
    assert f"token {j}" in r["reason"]


def test_changed_prompt_token_is_caught(small_model, honest):
    records, _ = honest
    rec = records[3]
    prompt = list(rec.prompt)
    prompt[len(prompt) // 2] = (prompt[len(prompt) // 2] + 5) % small_model.cfg.vocab_size
    r = only_record(verify([dataclasses.replace(rec, prompt=prompt)], model=small_model))
    assert r["verdict"] == "fail" and r["first_failure"] is not None


@pytest.mark.parametrize("change", ["seed", "temperature"])
def test_other_seed_or_temperature_is_caught_where_the_sampler_diverges(small_model, honest,
                                                                        change):
    records, logits = honest
    rec = records[4]
    new = {"seed": dataclasses.replace(rec.params, seed=rec.params.seed + 1),
           "temperature": dataclasses.replace(rec.params, temperature=0.3)}[change]
    expected = first_change(rec, logits[rec.request_id], new)
    assert expected is not None
    r = only_record(verify([dataclasses.replace(rec, params=new)], model=small_model))
    assert r["verdict"] == "fail" and r["first_failure"] == expected


def test_truncated_and_extended_outputs_fail_termination(small_model, honest):
    records, _ = honest
    rec = records[1]
    short = dataclasses.replace(rec, output=rec.output[:-3])
    r = only_record(verify([short], model=small_model))
    # every remaining token is exact; the covert channel is the length itself
    assert r["verdict"] == "fail" and r["first_failure"] is None
    assert r["termination"].startswith("bad") and "termination" in r["reason"]
    # past max_tokens the record contradicts itself: malformed, naming the field
    longer = dataclasses.replace(rec, output=rec.output + [rec.output[-1]])
    r = only_record(verify([longer], model=small_model))
    assert r["verdict"] == "error" and r["field"] == "output"
    # with room left, an appended token ends neither at a stop token nor at max_tokens
    room = dataclasses.replace(rec, output=rec.output + [rec.output[-1]], max_tokens=40)
    r = only_record(verify([room], model=small_model))
    assert r["verdict"] == "fail" and r["termination"].startswith("bad")


def test_greedy_record_with_stop_token(small_model):
    V = small_model.cfg.vocab_size
    engine = Engine(small_model, max_batch=2)
    probe = engine.run([Request("p", [5, 6, 7], SamplingParams(0.0), max_tokens=8)])[0]
    stop = probe.output[4]
    rec = Engine(small_model).run([Request("s", [5, 6, 7], SamplingParams(0.0), max_tokens=8,
                                           stop_token_ids=[stop])])[0]
    assert rec.output[-1] == stop and len(rec.output) <= 5 and rec.meta["finish_reason"] == "stop"
    assert verify([rec], model=small_model).ok
    # dropping the stop token leaves an output that ends neither at a stop nor at max_tokens
    assert not verify([dataclasses.replace(rec, output=rec.output[:-1])], model=small_model).ok
    assert 0 <= stop < V


def test_report_tables_and_summary(small_model, honest, tmp_path):
    records, _ = honest
    report = verify(records, model=small_model)
    tok = report.tokens_df()
    assert len(tok) == sum(len(r.output) for r in records)
    assert tok["exact"].all() and (tok["margin"] == 0).all()
    assert (tok["gls"] - torch.log(torch.tensor(0.5, dtype=torch.float64)).item()).abs().max() < 1e-12
    assert set(report.records_df()["verdict"]) == {"pass"}
    report.write(str(tmp_path / "rep"))
    d = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert d["counts"]["pass"] == len(records) and d["counts"]["hidden_bits"] == 0.0
    assert "6 pass, 0 fail" in report.summary()


def test_tolerant_policy_accepts_honest_tokens(small_model, honest):
    records, _ = honest
    report = verify(records, model=small_model, policy=Policy.tolerant(-5.0, 32, 1.0))
    assert report.ok


# -- malformed input ---------------------------------------------------------------------------

def test_each_malformed_kind_is_reported_and_the_rest_verify(small_model, honest, tmp_path):
    records, _ = honest
    good = [r.to_dict() for r in records[:3]]
    V, ctx = small_model.cfg.vocab_size, small_model.cfg.max_context

    def variant(rid, **change):
        d = json.loads(json.dumps(good[0]))
        d["request_id"] = rid
        for k, v in change.items():
            if k in ("temperature", "seed"):
                d["params"][k] = v
            elif v is None:
                del d[k]
            else:
                d[k] = v
        return d

    bad = {
        "missing": (variant("missing", output=None), "output"),
        "type": (variant("type", prompt="hello"), "prompt"),
        "vocab": (variant("vocab", output=[1, 2, V]), "output"),
        "temp": (variant("temp", temperature=-0.5), "params.temperature"),
        "long": (variant("long", prompt=[1] * (ctx + 1)), "prompt"),
    }
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps(good[0])] + [json.dumps(d) for d, _ in bad.values()]
    lines += ["{not json", json.dumps(good[1]), json.dumps(good[2])]
    path.write_text("\n".join(lines) + "\n")

    report = verify(str(path), model=small_model)
    rows = report.records
    by_id = {r["request_id"]: r for r in rows}
    for rid, (_, field) in bad.items():
        assert by_id[rid]["verdict"] == "error", rid
        assert by_id[rid]["field"] == field, (rid, by_id[rid])
        assert rid in by_id[rid]["reason"]
    not_json = [r for r in rows if r["verdict"] == "error" and "mixed.jsonl:7" in str(r["request_id"])
                + r["reason"]]
    assert len(not_json) == 1
    passed = sorted(r["request_id"] for r in rows if r["verdict"] == "pass")
    assert passed == sorted(r.request_id for r in records[:3])
    assert len(rows) == len(lines)


def test_record_from_another_model_is_an_error(small_model, honest):
    records, _ = honest
    rec = dataclasses.replace(records[0], model="someone-else@0000")
    r = only_record(verify([rec], model=small_model))
    assert r["verdict"] == "error" and r["field"] == "model"
    assert verify([rec], model=small_model, check_model=False).ok


def test_duplicate_request_ids(small_model, honest):
    records, _ = honest
    report = verify(Batch([records[0], records[0]]), model=small_model)
    v = sorted(r["verdict"] for r in report.records)
    assert v == ["error", "pass"]


def test_verifier_never_imports_the_engine():
    """DESIGN §6: the verifier must not run the code it checks."""
    import subprocess
    import sys

    code = ("import sys, replay, replay.verify, replay.report; "
            "print('replay.engine' in sys.modules, 'replay.kernels' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
