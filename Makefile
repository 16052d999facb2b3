# make demo   set everything up (virtual environment, build) and run the demo
# make test   set everything up and run the tests
# make bench  run the CPU benchmarks and write bench/results/
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The C++ kernels parallelise with OpenMP over output tiles, rows and heads.
export OMP_NUM_THREADS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: demo test bench build setup clean

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
	$(PY) -m pytest -q tests

bench: build
	$(PY) -m pytest -q bench --benchmark-only

clean:
	rm -rf build replay/_C*.so *.egg-info
