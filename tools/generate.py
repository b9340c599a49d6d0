"""``make generate``: rewrite every generated file from its source.

- ``dashboards/*.json``, ``alerts/nico-task-exporter.rules.yml`` and
  ``deploy/kubernetes/base/prometheusrule.yaml``: the mixin (:mod:`exporter.mixin`) with its shipped
  variables, ``exporter/mixin/config.yml``; what ``nico-task-exporter mixin`` writes without ``--config``;
- ``docs/metrics.md`` from the families in :mod:`exporter.metrics`.

The tests fail while a committed file differs from what this writes. The dashboard pictures
(``docs/img/*.png``) need a live Prometheus: ``python -m tools.render_png URL``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from exporter.mixin.alerts import load_alert_config
from exporter.mixin.command import DASHBOARD_DIR, PROMETHEUS_RULE_FILE, RULES_FILE, render_outputs
from tools import metrics_doc
from tools.paths import DASHBOARD_DIR as REPO_DASHBOARD_DIR
from tools.paths import PROMETHEUS_RULE_PATH, ROOT, RULES_PATH


def repository_path(name: str) -> Path:
    """Where the repository commits the mixin output ``name`` (a path relative to ``--output-dir``)."""
    if name == RULES_FILE:
        return RULES_PATH
    if name == PROMETHEUS_RULE_FILE:
        return PROMETHEUS_RULE_PATH
    return REPO_DASHBOARD_DIR / Path(name).relative_to(DASHBOARD_DIR)


def main() -> int:
    for name, text in render_outputs(load_alert_config()).items():
        path = repository_path(name)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    code = metrics_doc.main()
    if code:
        return code
    print("every generated file is up to date", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
