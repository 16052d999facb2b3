"""Count the host reads of tensor values that replay's own code makes: each one is a
device-to-host sync on a GPU (the host waits for every queued kernel), so a forward should make
none (docs/gpu.md). On a GPU, torch.cuda.set_sync_debug_mode("error") says the same; this counter
shows it on any machine, the CPU included, where no read is a sync but each would be one.

    with hostsync.count() as reads:
        model.forward(plan, kv)
    assert not reads, reads.where      # ["replay/ops.py:212 in rope_: Tensor.__int__", ...]

Counted: item, tolist, numpy, cpu() and the bool / int / float / index conversions of a tensor
(on the CPU too: on a GPU each would be a sync), when called from a file of replay or
replay.kernels (Triton's interpreter reads tensors as it emulates the GPU: those are not the
library's reads).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

import torch
from torch.overrides import TorchFunctionMode

_READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__"}
# replay's own folders: replay/ and kernels/ (installed as replay.kernels, a folder of its own
# in an editable install)
_ROOTS = tuple(os.path.abspath(d) + os.sep for name in ("replay", "replay.kernels")
               for d in importlib.util.find_spec(name).submodule_search_locations)
_TORCH = os.path.dirname(torch.__file__) + os.sep


class Reads(list):
    """The reads seen, one "file:line in function: Tensor.method" string each."""

    @property
    def where(self) -> str:
        return "\n".join(self)


def _caller() -> str | None:
    """file:line in function of the first frame outside torch; None unless it is replay's."""
    f = sys._getframe(2)
    while f is not None and os.path.abspath(f.f_code.co_filename).startswith(_TORCH):
        f = f.f_back
    if f is None:
        return None
    path = os.path.abspath(f.f_code.co_filename)
    if not path.startswith(_ROOTS) or path == os.path.abspath(__file__):
        return None
    return f"{os.path.relpath(path)}:{f.f_lineno} in {f.f_code.co_name}"


class _Counter(TorchFunctionMode):
    def __init__(self, reads: Reads):
        super().__init__()
        self.reads = reads

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _READS:
            where = _caller()
            if where:
                self.reads.append(f"{where}: Tensor.{name}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def count():
    """Collect, in the list it yields, every host read of a tensor value that replay's code
    makes inside the block."""
    reads = Reads()
    with _Counter(reads):
        yield reads
