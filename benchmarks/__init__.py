"""Benchmarks: ``make bench`` prints a table and writes ``benchmarks/results.json``."""
