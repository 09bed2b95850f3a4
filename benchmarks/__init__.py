"""Benchmarks of the compliance jobs, each figure next to its baseline (issue 9).

`python -m benchmarks.run --help`; method and results: benchmarks/README.md.
"""
