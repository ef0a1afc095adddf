"""Benchmarks: load generators, baselines and the measurements in docs/performance.md."""
