"""Generators of the committed files: dashboards, alert rules and the metrics reference.

Not part of the runtime: nothing under ``exporter/`` imports this package, and the wheel leaves it
out (``tests/test_layout.py`` checks both). ``make generate`` runs them all (``python -m tools.generate``).
"""
