"""replay: batch-invariant kernels and a teacher-forced verifier for LLM inference.

    import replay
    model = replay.Model.from_pretrained(replay.TINY_MODEL)
    records = replay.Engine(model).run(requests)        # generation with replay's kernels
    report = replay.verify(records, model=model)          # exact, token by token
    print(report.summary())

Attributes load lazily, so that `import replay` is cheap and a verifier process never loads the
engine (DESIGN §6: the verifier must not run the code it checks). `replay.verify` is always the
module replay.verify, whatever was imported first; the module is callable, replay.verify.verify.
Every submodule is an attribute too (`replay.bound`, `replay.invariant`, `replay.hf`, ...),
imported on first use.
"""
import importlib
import importlib.util
import os

__version__ = "0.1.0"

TINY_MODEL = os.path.join(os.path.dirname(__file__), "assets", "tiny")

_EXPORTS = {
    "verify": "replay.verify",
    "Report": "replay.report",
    "Policy": "replay.policy",
    "Model": "replay.model",
    "ModelConfig": "replay.model",
    "Engine": "replay.engine",
    "Request": "replay.engine",
    "Record": "replay.records",
    "Batch": "replay.records",
    "SamplingParams": "replay.records",
    "RecordError": "replay.records",
}

__all__ = sorted(_EXPORTS) + ["TINY_MODEL", "__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        mod = importlib.import_module(_EXPORTS[name])
        return mod if mod.__name__ == f"replay.{name}" else getattr(mod, name)
    if not name.startswith("_") and importlib.util.find_spec(f"replay.{name}") is not None:
        return importlib.import_module(f"replay.{name}")
    raise AttributeError(f"module 'replay' has no attribute {name!r}")
