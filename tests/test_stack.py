"""The kernel stack in every record and report (DESIGN §4): exact replay holds within one stack
(replay version, backend, device kind, dtype), so under the exact policy a record made on another
stack fails as "stack mismatch", unscored, instead of showing forged tokens; tolerant policies
score records from any stack."""
import dataclasses

import pytest
import torch

from replay import ops
from replay.engine import Engine, Request
from replay.policy import Policy
from replay.records import STACK_FORM, Batch, Record, RecordError, SamplingParams
from replay.verify import verify


def requests(V, n=3):
    g = torch.Generator().manual_seed(0)
    return [Request(f"r{i}", torch.randint(0, V, (5 + i,), generator=g).tolist(),
                    SamplingParams(temperature=0.8, seed=100 + i), max_tokens=6)
            for i in range(n)]


def test_stack_names_version_backend_device_and_dtype():
    from replay import __version__
    here = ops.stack("cpu", torch.float32)
    assert here == f"replay {__version__} / cpu / cpu / float32"
    with ops.backend("torch"):
        assert ops.stack("cpu", torch.float32) == (f"replay {__version__} / torch "
                                                   f"{torch.__version__} / cpu / float32")
    with ops.backend("triton"):
        assert ops.stack("cpu", torch.float32).split(" / ")[1] == "triton-interpreter"


def test_records_carry_the_stack_and_keep_it_on_disk(small_model, tmp_path):
    records = Engine(small_model, max_batch=2).run(requests(small_model.cfg.vocab_size))
    assert {r.stack for r in records} == {small_model.stack}
    Batch(records).to_jsonl(tmp_path / "r.jsonl")
    Batch(records).to_parquet(tmp_path / "r.parquet")
    for name in ("r.jsonl", "r.parquet"):
        assert [r.stack for r in Batch.read(tmp_path / name).records] == [small_model.stack] * 3
    bad = dataclasses.replace(records[0], stack=7)
    with pytest.raises(RecordError, match="stack"):
        bad.validate()


def test_a_stack_has_the_form_ops_writes_and_no_other(small_model):
    """The engine (the server) writes the stack: free text there would be a channel."""
    for name in ops.BACKENDS:
        with ops.backend(name):
            assert STACK_FORM.fullmatch(ops.stack("cpu", torch.float32)), name
    assert STACK_FORM.fullmatch("replay 0.1.0 / cuda-triton 3.6.0 / cuda sm_90 / bfloat16")
    r = Engine(small_model, max_batch=1).run(requests(small_model.cfg.vocab_size, 1))[0]
    here = r.stack
    for free in ("anything", here + " ", here + " secret", here.replace(" / ", "/"),
                 here.replace("float32", "float32x"), "replay 0.1.0 / cuda-triton " + "3" * 40
                 + " / cuda sm_90 / bfloat16", here.replace(" / cpu /", " / cpu\n /")):
        assert not STACK_FORM.fullmatch(free), free
        with pytest.raises(RecordError, match="stack") as e:
            dataclasses.replace(r, stack=free).validate()
        assert free not in e.value.message  # the refusal does not echo the server's text


def test_exact_policy_says_stack_mismatch_not_forged(small_model):
    with ops.backend("torch"):  # another stack: torch's ops, not batch invariant
        records = Engine(small_model, max_batch=3).run(requests(small_model.cfg.vocab_size))
    report = verify(records, small_model)
    assert report.stack == small_model.stack and report.to_dict()["stack"] == report.stack
    for row in report.records:
        assert row.verdict == "fail" and row.field == "stack", row
        assert row.reason.startswith("stack mismatch") and "sampler chose" not in row.reason
        assert row.n_tokens == 0  # not scored: no token is reported as forged
    assert "stack:" in report.summary()
    # the same records with the stack not recorded (older logs) are scored as before
    unknown = [dataclasses.replace(r, stack="") for r in records]
    assert all(row.field != "stack" for row in verify(unknown, small_model).records)


def test_a_stack_claim_skips_no_check_that_needs_no_logits(small_model):
    """Claiming another stack buys a record no check: it fails, and the seed and termination
    checks still name what else is wrong; the report counts the stacks records name."""
    with ops.backend("torch"):
        records = Engine(small_model, max_batch=3).run(requests(small_model.cfg.vocab_size))
    cut = dataclasses.replace(records[0], output=records[0].output[:-1])  # no stop, < max_tokens
    report = verify([cut] + records[1:], small_model, seed_key=b"logger key")
    for row in report.records:  # the seeds 100 + i are not the logger's
        assert row.verdict == "fail" and row.field == "stack", row
        assert row.reason.startswith("stack mismatch") and "params.seed" in row.reason, row
    assert "termination" in report.records[0].reason
    assert report.stacks == {records[0].stack: 3} and records[0].stack != small_model.stack
    assert "3 records name another stack (1 distinct" in report.summary()


def test_tolerant_policy_applies_across_stacks(small_model):
    with ops.backend("torch"):
        records = Engine(small_model, max_batch=3).run(requests(small_model.cfg.vocab_size))
    report = verify(records, small_model, Policy.tolerant())
    assert report.n_tokens == sum(len(r.output) for r in records)
    assert all(row.field != "stack" and row.verdict == "pass" for row in report.records)


def test_same_stack_passes(small_model):
    records = Engine(small_model, max_batch=3).run(requests(small_model.cfg.vocab_size))
    assert all(row.verdict == "pass" for row in verify(records, small_model).records)
