"""The monitoring mixin: the alert rules and the Grafana dashboards, rendered from one variables file.

Generators, not runtime: nothing the exporter runs imports this package (``tests/test_layout.py``
checks it); ``nico-task-exporter mixin`` loads it when asked, so an installed exporter renders
the rules and dashboards with a user's selectors and thresholds, without this repository.
The shipped variables are ``config.yml`` here (package data); the repository's committed outputs
are these generators' output with them (``make generate``).

Python rather than a jsonnet mixin: the rules and dashboards are some 2,500 lines of generators
already, and a jsonnet copy would be a second source of truth to keep equal to the first.
"""
