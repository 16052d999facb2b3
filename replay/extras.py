"""The distribution's name, and the one install hint that every "missing package" error gives.

The import name and the command are `replay`; the distribution on PyPI is "replay-verify"
("replay" there is an unrelated project). Heavy parts are extras: hf (transformers), ray (fleet
verification), plots (matplotlib), vllm, logger.
"""
from __future__ import annotations

import importlib

DIST = "replay-verify"


def hint(extra: str | None = None) -> str:
    """The pip command that installs `extra` (None: the core package)."""
    return f"pip install '{DIST}[{extra}]'" if extra else f"pip install {DIST}"


def need(module: str, extra: str | None, what: str):
    """Import `module`, or raise ImportError saying that `what` needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{what} needs {module.split('.')[0]}: {hint(extra)}") from e
