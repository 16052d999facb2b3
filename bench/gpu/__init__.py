"""Pieces of bench/gpu_bench.py: timing and tables (util), kernel benchmarks (kernels_bench),
the whole-model benchmark (model_bench)."""
