"""Benchmarks: ``make bench`` runs :mod:`bench.run` and writes ``bench/results.json``."""
