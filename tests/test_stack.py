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
from replay.records import Batch, Record, RecordError, SamplingParams
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


def test_tolerant_policy_applies_across_stacks(small_model):
    with ops.backend("torch"):
        records = Engine(small_model, max_batch=3).run(requests(small_model.cfg.vocab_size))
    report = verify(records, small_model, Policy.tolerant())
    assert report.n_tokens == sum(len(r.output) for r in records)
    assert all(row.field != "stack" and row.verdict == "pass" for row in report.records)


def test_same_stack_passes(small_model):
    records = Engine(small_model, max_batch=3).run(requests(small_model.cfg.vocab_size))
    assert all(row.verdict == "pass" for row in verify(records, small_model).records)
