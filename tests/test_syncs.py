"""A forward reads nothing back from the device: Model.plan lays the batch out once, on the host,
and the layers run on what it made. On a GPU every read-back is a sync (the host waits for all
queued kernels; ~4 per layer before the plan existed); here replay.hostsync counts the reads that
replay's code makes, which are syncs on a GPU (tests/test_gpu.py checks the GPU itself with
torch.cuda.set_sync_debug_mode("error") and a CUDA-graph capture)."""
import importlib.util

import pytest
import torch

from replay import hostsync, ops
from replay.model import Model, ModelConfig, Varlen

# "triton" on CPU tensors runs in Triton's interpreter (conftest.py sets TRITON_INTERPRET=1)
BACKENDS = ["replay", "torch",
            pytest.param("triton", marks=pytest.mark.skipif(
                importlib.util.find_spec("triton") is None,
                reason="the triton backend needs triton"))]


@pytest.fixture(scope="module")
def model():
    return Model.random(ModelConfig.preset("test-small", n_layers=3, qk_norm=True), seed=4, std=0.2)


def batch_and_kv(model):
    """A prefill, a chunk after a cached prefix, and a decode step, in one batch."""
    g = torch.Generator().manual_seed(0)
    V = model.cfg.vocab_size
    chunks = [torch.randint(0, V, (n,), generator=g).tolist() for n in (17, 5, 1)]
    batch = Varlen.make(chunks, [0, 30, 61], [0, 40, 120])
    kv = model.new_kv(200)
    for t in kv.k + kv.v:  # the cached prefixes: random keys and values
        t.normal_(generator=g)
    return batch, kv


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_reads_nothing_back(model, backend):
    batch, kv = batch_and_kv(model)
    with ops.backend(backend):
        plan = model.plan(batch, kv)
        with hostsync.count() as reads:
            hidden = model.forward(plan, kv)
        assert not reads, "host reads inside the forward:\n" + reads.where
        assert torch.equal(hidden, model.forward(batch, kv))  # the plan is what forward makes


def test_the_counter_sees_reads():
    """What the forward no longer does, each counted: the rotary bound read from the positions,
    and attention planning its own tiles from device offsets."""
    x = torch.randn(5, 2, 8)
    pos = torch.tensor([3, 1, 4, 1, 5])
    cos, sin = torch.randn(9, 4), torch.randn(9, 4)
    with hostsync.count() as reads:
        ops.rope_(x, pos, cos, sin, max_pos=5)
    assert not reads
    with hostsync.count() as reads:
        ops.rope_(x, pos, cos, sin)
    assert len(reads) == 1 and "rope_: Tensor.__int__" in reads[0], reads.where
    q = torch.randn(5, 2, 8)
    cu, pos0, kv_start = torch.tensor([0, 5]), torch.tensor([0]), torch.tensor([0])
    plan = ops.plan_attention(cu, pos0, kv_start)
    with hostsync.count() as reads:
        out = ops.attention(q, q, q, plan=plan)
    assert not reads
    with hostsync.count() as reads:
        assert torch.equal(ops.attention(q, q, q, cu, pos0, kv_start), out)
    assert any("plan_attention" in r for r in reads), reads.where


def test_plan_rejects_what_the_device_would_not_check(model):
    """A plan's checks replace the device's: an id past the embedding, a row past the buffer or
    a position past the rotary table would read out of bounds on a GPU, unchecked."""
    kv = model.new_kv(64)
    V = model.cfg.vocab_size
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.plan(Varlen.prefill([[1, V]]), kv)
    with pytest.raises(ValueError, match="buffer row 64"):
        model.plan(Varlen.make([[1, 2]], [63], [0]), kv)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        model.plan(Varlen.make([[1]], [model.cfg.max_context], [0]), model.new_kv(400))
    with pytest.raises(ValueError, match="non-decreasing"):
        ops.plan_attention(torch.tensor([0, 3, 2]), torch.tensor([0, 0]), torch.tensor([0, 9]))
