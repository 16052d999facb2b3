"""The whole model, engine and verifier on replay's Triton kernels (ops.backend("triton")).

Without CUDA the kernels run in Triton's CPU interpreter on float32: this is where CI checks that
the GPU path keeps the replay contract end to end (engine rows equal verifier rows bitwise) and
agrees with the C++ path numerically, before a GPU ever runs it.
"""
import pytest
import torch

# without CUDA, conftest.py has set TRITON_INTERPRET=1 and made the interpreter's dot fixed-order
pytest.importorskip("triton", reason="the Triton kernels need triton (pip install triton)")

from replay import ops  # noqa: E402
from replay.engine import Engine, Request  # noqa: E402
from replay.model import Model, ModelConfig  # noqa: E402
from replay.records import SamplingParams  # noqa: E402
from replay.verify import verify  # noqa: E402
from helpers import assert_engine_varied  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="with CUDA, tests/test_gpu.py runs this on the GPU")


@pytest.fixture(scope="module")
def model():
    return Model.random(ModelConfig.preset("test-triton"), seed=3, std=0.3)


def test_engine_rows_equal_verifier_rows_on_triton_kernels(model):
    reqs = [Request(f"t{i}", [(5 * i + j) % 97 for j in range(n)],
                    SamplingParams(temperature=[0.0, 0.9, 1.2][i % 3], top_k=[0, 0, 20][i % 3],
                                   seed=40 + i), max_tokens=8, arrival=i)
            for i, n in enumerate([1, 6, 17, 3, 29, 9])]
    with ops.backend("triton"):
        engine = Engine(model, max_batch=3, chunk_size=5, keep_logits=True, placement_seed=5)
        records = engine.run(reqs)
        report = verify(records, model=model, keep_logits=True)
    assert_engine_varied(engine, placed=True)
    assert report.ok, report.summary()
    for r in records:
        assert torch.equal(engine.logits[r.request_id], report.logits[r.request_id])
    # the same model on the C++ kernels: close (float32 reductions in other orders), not equal
    ref = model([r.prompt + r.output[:-1] for r in records])
    for r, logits in zip(records, ref):
        want = logits[len(r.prompt) - 1:]
        assert torch.allclose(report.logits[r.request_id], want, rtol=1e-4, atol=1e-4)
