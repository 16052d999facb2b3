import os

import pytest
import torch

from replay.model import Model, ModelConfig

# Keep the CPU suite reproducible and light on a 2-core machine.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def small_config(**kw) -> ModelConfig:
    """A small Llama-shaped config: big enough for GQA, awkward sizes, a real vocabulary."""
    base = dict(arch="llama", vocab_size=509, hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=2,
                intermediate_size=96, rms_norm_eps=1e-5, max_context=384)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="session")
def small_model() -> Model:
    # std 0.2: peaked enough that greedy and sampled tokens differ, flat enough that top-p keeps
    # several tokens.
    return Model.random(small_config(), seed=1, std=0.2)
