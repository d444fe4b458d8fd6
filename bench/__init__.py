"""Benchmarks: `python -m bench.X` from the repo root (see bench/README.md)."""
