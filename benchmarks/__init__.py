"""Benchmarks: ``python -m benchmarks.model_bench`` (model speed)."""
