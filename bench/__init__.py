"""Benchmark suite of issue 6: `python -m bench` (see run.py and README.md)."""
