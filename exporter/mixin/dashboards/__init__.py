"""The Grafana dashboards, generated: :func:`render_all` gives ``dashboards/*.json``.

Five dashboards (fleet, stages and steps, racks and trays, rollouts, exporter health) for Grafana 11
and 12, built as plain dicts from small specs so the JSON is reproducible and reviewable; the
committed files must equal :func:`render_all`'s output with the shipped variables
(``tests/test_dashboards.py`` checks it).

Every dashboard has the same variables: ``datasource`` (Prometheus), ``tempo`` (the trace links'
target), ``site`` and ``rack`` (values are ids, the text is the name from ``nico_site_info`` and
``nico_rack_info``), and a hidden ``runbook_base`` that the runbook links start with (the alerts'
``runbook_url_base``).

What the alerts' variables change here: NicoTaskStuck's thresholds (the Fleet dashboard's stuck
stat and table), NicoTaskOverrunning's ratio (where the overrun colour turns red) and the runbook
base. The dashboards filter by their Prometheus datasource, site and rack, never by job: the rules'
``selector`` does not apply to them.
"""

from __future__ import annotations

import json

from exporter.mixin.alerts import AlertConfig, load_alert_config
from exporter.mixin.dashboards.builder import build
from exporter.mixin.dashboards.queries import (
    PanelQuery,
    example_values,
    panel_queries,
    substitute,
    variable_queries,
)
from exporter.mixin.dashboards.specs import DASHBOARDS, dashboards

__all__ = [
    "DASHBOARDS",
    "PanelQuery",
    "build",
    "dashboards",
    "example_values",
    "panel_queries",
    "render_all",
    "substitute",
    "variable_queries",
]


def render_all(config: AlertConfig | None = None) -> dict[str, str]:
    """File name -> JSON text of every dashboard; with the shipped variables (no ``config``),
    exactly as committed."""
    config = config or load_alert_config()
    return {
        f"{spec.uid}.json": json.dumps(build(spec, config.runbook_url_base), indent=2, ensure_ascii=False)
        + "\n"
        for spec in dashboards(config)
    }
