"""``make generate``: rewrite every generated file from its source.

- ``dashboards/*.json`` from the specs in :mod:`tools.dashboards.specs`;
- ``alerts/nico-task-exporter.rules.yml`` and ``deploy/prometheusrule.yaml`` from ``alerts/config.yml``;
- ``docs/metrics.md`` from the families in :mod:`exporter.metrics`.

The tests fail while a committed file differs from what this writes. The dashboard pictures
(``docs/img/*.png``) need a live Prometheus: ``python -m tools.dashboards --render-png URL``.
"""

from __future__ import annotations

import sys

from tools import alerts, metrics_doc
from tools.dashboards.__main__ import main as dashboards_main


def main() -> int:
    code = dashboards_main([]) or alerts.main([]) or metrics_doc.main()
    if code:
        return code
    print("every generated file is up to date", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
