"""replay inside Hugging Face transformers: HF Llama and Qwen3 (random weights, made offline)
generate with replay's kernels and sampler at batch sizes 1, 7 and 32 with left padding; every
record verifies exactly with replay's own Model and with the HF model as the verifier, and the
logits rows the sampler saw are bitwise the verifier's. Stock transformers fails the same test."""
import random

import pytest
import torch

transformers = pytest.importorskip("transformers")

import helpers as fd  # noqa: E402
from replay.hf import HFVerifierModel, generate_records, replay_attention, replay_kernels  # noqa: E402
from replay.model import Model  # noqa: E402
from replay.records import Record, SamplingParams  # noqa: E402
from replay.verify import verify  # noqa: E402

STOP = list(range(8))   # several stop ids, so that some outputs end early


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def models(request, tmp_path_factory):
    path = fd.save_hf(str(tmp_path_factory.mktemp(request.param)), arch=request.param, seed=11)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return hf, Model.from_pretrained(path)


def _workload(n=32, seed=0):
    rng = random.Random(seed)
    prompts = [[rng.randrange(8, 257) for _ in range(rng.choice([1, 2, 5, 9, 17, 30]))]
               for _ in range(n)]
    params = [SamplingParams(temperature=rng.choice([0.0, 0.7, 1.3]), top_k=rng.choice([0, 25]),
                             top_p=rng.choice([1.0, 0.85]), seed=rng.randrange(2**64))
              for _ in range(n)]
    return prompts, params


def _generate_and_check(hf, verifier, prompts, params, kernels=True):
    """The must-show check: generate in one left-padded batch, verify every record exactly and
    compare the sampler's logits rows with the verifier's, bit for bit."""
    ids = [f"q{i}" for i in range(len(prompts))]
    recs, seen = generate_records(hf, prompts, params, max_tokens=10, stop_token_ids=STOP,
                                  request_ids=ids, keep_logits=True, kernels=kernels)
    rep = verify(recs, model=verifier, keep_logits=True)
    assert rep.ok, rep.summary()
    for r in recs:
        assert torch.equal(seen[r.request_id], rep.logits[r.request_id]), r.request_id
    return recs


@pytest.mark.parametrize("bs", [1, 7, 32])
def test_hf_generates_records_that_verify_exactly(models, bs):
    hf, rm = models
    prompts, params = _workload()
    full = _generate_and_check(hf, rm, prompts, params)
    assert any(len(r.output) < 10 for r in full) and any(len(r.output) == 10 for r in full)
    recs = full if bs == 32 else _generate_and_check(hf, rm, prompts[:bs], params[:bs])
    # batch invariance: the same prompt and seed give the same output at every batch size
    assert [r.output for r in recs] == [r.output for r in full[:bs]]
    # the HF model itself as the (teacher-forced) verifier
    hv = HFVerifierModel(hf)
    assert hv.identity == rm.identity
    assert verify(recs, model=hv).ok


def test_stock_transformers_fails_the_same_test(models):
    hf, rm = models
    prompts, params = _workload()
    # stock kernels, replay's sampler: tokens mostly agree, the logits rows do not
    with pytest.raises(AssertionError):
        _generate_and_check(hf, rm, prompts[:7], params[:7], kernels=False)
    # stock transformers end to end (its own sampler): the records fail verification
    torch.manual_seed(0)
    prompts = prompts[:7]
    L = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                      top_k=0, top_p=1.0, max_new_tokens=10, min_new_tokens=10, pad_token_id=0)
    p = SamplingParams(1.0, 0, 1.0, seed=0)
    recs = [Record(f"s{i}", prompts[i], out[i, L:].tolist(), p, 10, [], rm.identity)
            for i in range(len(prompts))]
    rep = verify(recs, model=rm)
    assert rep.counts()["fail"] > len(recs) // 2


def test_kernels_are_restored_and_padding_is_checked(models):
    hf, _ = models
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        before = hf(ids).logits
        with replay_kernels(hf):
            inside = hf(ids).logits
        after = hf(ids).logits
    assert torch.equal(before, after) and not torch.equal(before, inside)
    assert torch.allclose(before, inside, atol=1e-4, rtol=1e-4)
    assert hf.config._attn_implementation != "replay"
    q, k = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 3, 8)
    right_padded = torch.tensor([[True, True, False], [True, True, True]])
    with pytest.raises(ValueError, match="left padding"):
        replay_attention(hf.model.layers[0].self_attn, q, k, k, right_padded)
