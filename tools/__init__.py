"""The repository's tools: ``make generate`` (the committed dashboards, alert rules and metrics
reference), the metrics reference, the demo stack and the dashboard pictures.

Not part of the runtime: nothing under ``exporter/`` imports this package, and the wheel leaves it
out (``tests/test_layout.py`` checks both). The rule and dashboard generators themselves ship in
the wheel as the monitoring mixin (:mod:`exporter.mixin`); ``make generate``
(``python -m tools.generate``) writes their output with the shipped variables where the
repository commits it.
"""
