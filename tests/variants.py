"""Controls for the bitwise tests: implementations that are batch-variant by construction, and a
check that a run of the engine really varied what a contract test says it varies.

A bitwise test proves something only if it can fail. Showing that with torch's own CPU ops
would rest on the machine's BLAS, which may happen to be invariant for the shapes at hand;
these variants break the contract on every machine.
"""
import torch

from replay import ops

_linear = ops.linear  # replay's kernel, kept before a test swaps ops.linear for a variant


def split_k_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
                   below: int = 8) -> torch.Tensor:
    """replay's linear, except that for fewer than `below` rows the K reduction is split in two
    halves added at the end (split-K, as GEMM libraries do for skinny products): a row's bits
    then depend on how many rows share the call."""
    M, K = x.shape
    if M >= below or K < 2:
        return _linear(x, w, bias)
    h = K // 2
    out = _linear(x[:, :h].contiguous(), w[:, :h].contiguous()) + \
        _linear(x[:, h:].contiguous(), w[:, h:].contiguous())
    return out + bias if bias is not None else out


def assert_engine_varied(engine, *, batched: bool = True, chunked: bool = True,
                         placed: bool = False, capped: bool = False):
    """The run really had what the test claims to vary: several batch sizes (batched), prompts
    prefilled over several steps (chunked), slots other than the lowest free one (placed), and
    sequences held back by the per-step token cap (capped)."""
    st = engine.stats
    if batched:
        assert max(st["batch_sizes"]) > 1 and len(set(st["batch_sizes"])) > 1, st["batch_sizes"]
    if chunked:
        assert st["prompt_splits"] > 0, "no prompt was prefilled in chunks"
    if placed:
        assert st["off_lowest"] > 0, "every sequence took the lowest free slot"
    if capped:
        assert st["capped"] > 0, "the per-step token cap never held a sequence back"
