"""The vocabulary the dashboard specs are written in: queries, panels, rows, dashboards, shared filters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 39  # Grafana 11.0; Grafana 12 migrates it on load.
TAGS = ("nico", "nico-task-exporter")

JSON = dict[str, Any]

# Label filters every panel shares. ``rack`` only narrows families that carry rack_id.
S = 'site_id=~"$site"'
SR = 'site_id=~"$site", rack_id=~"$rack"'
# Joins that turn ids into names; ``group by`` keeps the join one-to-one when several exporter
# replicas (shards) each serve the info series.
SITE_NAMES = "group by (site_id, site_name) (nico_site_info)"
RACK_NAMES = "group by (site_id, rack_id, rack_name) (nico_rack_info)"
WITH_SITE_NAME = f"* on (site_id) group_left (site_name) {SITE_NAMES}"
WITH_RACK_NAME = f"* on (site_id, rack_id) group_left (rack_name) {RACK_NAMES}"
RUNNING = '(nico_task_status{status="Running"} == 1)'
# Trace id = the task UUID's 32 hex digits; label_replace cannot delete every dash, so match the
# five groups of the canonical UUID form.
WITH_TRACE_ID = (
    'label_replace({expr}, "trace_id", "$1$2$3$4$5", "task_id", '
    '"([0-9a-fA-F]{{8}})-([0-9a-fA-F]{{4}})-([0-9a-fA-F]{{4}})-([0-9a-fA-F]{{4}})-([0-9a-fA-F]{{12}})")'
)
# Component types whose steps get a heatmap: the trays of a GB200 NVL72 rack.
HEATMAP_COMPONENTS = ("Compute", "NVSwitch", "PowerShelf")

PROMETHEUS = {"type": "prometheus", "uid": "${datasource}"}
TEMPO_EXPLORE = (
    '/explore?schemaVersion=1&orgId=${__org}&panes={"trace":{"datasource":"${tempo}",'
    '"queries":[{"refId":"A","datasource":{"type":"tempo","uid":"${tempo}"},'
    '"queryType":"traceql","query":"${__data.fields.trace_id}"}],'
    '"range":{"from":"now-24h","to":"now"}}}'
)


@dataclass(frozen=True)
class Query:
    """One panel target: a PromQL expression and how Grafana should run it."""

    expr: str
    legend: str = "__auto"
    instant: bool = False
    table: bool = False
    heatmap: bool = False
    exemplar: bool = False
    # Why this query may legitimately return nothing (documented; the e2e test accepts empty).
    may_be_empty: str = ""


@dataclass(frozen=True)
class PanelSpec:
    """A panel: its kind, meaning, queries and the few display options that differ per panel."""

    kind: str  # timeseries | stat | table | heatmap | bargauge
    title: str
    description: str
    queries: tuple[Query, ...]
    w: int = 12
    h: int = 8
    unit: str = "short"
    main: bool = False  # drawn in docs/img/<uid>.png
    stacked: bool = False
    thresholds: tuple[tuple[str, float | None], ...] = (("green", None),)
    mappings: tuple[JSON, ...] = ()
    overrides: tuple[JSON, ...] = ()
    transformations: tuple[JSON, ...] = ()
    runbooks: tuple[str, ...] = ()
    sort_by: str = ""
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[PanelSpec, ...]


@dataclass(frozen=True)
class DashboardSpec:
    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    runbooks: tuple[str, ...]
    extra_tags: tuple[str, ...] = ()
    extra_variables: tuple[JSON, ...] = field(default_factory=tuple)
