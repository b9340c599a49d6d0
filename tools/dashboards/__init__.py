"""The Grafana dashboards, generated: ``python -m tools.dashboards`` writes ``dashboards/*.json``.

Five dashboards (fleet, stages and steps, racks and trays, rollouts, exporter health) for Grafana 11
and 12, built as plain dicts from small specs so the JSON is reproducible and reviewable; the
committed files must equal :func:`render_all`'s output (``tests/test_dashboards.py`` checks it).

Every dashboard has the same variables: ``datasource`` (Prometheus), ``tempo`` (the trace links'
target), ``site`` and ``rack`` (values are ids, the text is the name from ``nico_site_info`` and
``nico_rack_info``), and a hidden ``runbook_base`` that the runbook links start with.

``python -m tools.dashboards --render-png PROMETHEUS_URL`` draws each dashboard's main panels
from a live Prometheus with matplotlib (the ``docs`` extra) into ``docs/img/<uid>.png``.
"""

from __future__ import annotations

import json

from tools.dashboards.builder import build
from tools.dashboards.model import DEFAULT_RUNBOOK_BASE
from tools.dashboards.queries import PanelQuery, example_values, panel_queries, substitute, variable_queries
from tools.dashboards.specs import DASHBOARDS
from tools.paths import ROOT

DASHBOARD_DIR = ROOT / "dashboards"

__all__ = [
    "DASHBOARDS",
    "DASHBOARD_DIR",
    "DEFAULT_RUNBOOK_BASE",
    "PanelQuery",
    "build",
    "example_values",
    "panel_queries",
    "render_all",
    "substitute",
    "variable_queries",
]


def render_all(runbook_base: str = DEFAULT_RUNBOOK_BASE) -> dict[str, str]:
    """File name -> JSON text of every dashboard, exactly as committed."""
    return {
        f"{spec.uid}.json": json.dumps(build(spec, runbook_base), indent=2, ensure_ascii=False) + "\n"
        for spec in DASHBOARDS
    }
