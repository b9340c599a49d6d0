"""The Grafana dashboards, generated: ``python -m exporter.dashboards`` writes ``dashboards/*.json``.

Four dashboards (fleet, stages and steps, racks and trays, exporter health) for Grafana 11 and 12,
built as plain dicts from small specs so the JSON is reproducible and reviewable; the committed
files must equal :func:`render_all`'s output (``tests/test_dashboards.py`` checks it).

Every dashboard has the same variables: ``datasource`` (Prometheus), ``tempo`` (the trace links'
target), ``site`` and ``rack`` (values are ids, the text is the name from ``nico_site_info`` and
``nico_rack_info``), and a hidden ``runbook_base`` that the runbook links start with.

``python -m exporter.dashboards --render-png PROMETHEUS_URL`` draws each dashboard's main panels
from a live Prometheus with matplotlib (a test extra) into ``docs/img/<uid>.png``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "dashboards"
IMG_DIR = ROOT / "docs" / "img"

SCHEMA_VERSION = 39  # Grafana 11.0; Grafana 12 migrates it on load.
# Relative to the repository root; point it at where the docs are served (--runbook-base-url, or the
# ``runbook_base`` URL parameter, ``?var-runbook_base=https://...``).
DEFAULT_RUNBOOK_BASE = "docs/runbooks"
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


# --- building blocks -------------------------------------------------------------------------


def _link(title: str, url: str, tooltip: str = "") -> JSON:
    return {
        "asDropdown": False,
        "icon": "doc",
        "includeVars": False,
        "keepTime": False,
        "tags": [],
        "targetBlank": True,
        "title": title,
        "tooltip": tooltip,
        "type": "link",
        "url": url,
    }


def runbook_link(alert: str) -> JSON:
    """A link to ``docs/runbooks/<alert>.md`` under the dashboard's ``runbook_base`` variable."""
    return _link(f"Runbook: {alert}", "${runbook_base}/" + alert + ".md", f"What to do when {alert} fires")


def _target(query: Query, ref: str) -> JSON:
    target: JSON = {
        "datasource": PROMETHEUS,
        "refId": ref,
        "expr": query.expr,
        "legendFormat": query.legend,
        "range": not query.instant,
        "instant": query.instant,
        "editorMode": "code",
    }
    if query.table:
        target["format"] = "table"
    elif query.heatmap:
        target["format"] = "heatmap"
    if query.exemplar:
        target["exemplar"] = True
    return target


def _options(spec: PanelSpec) -> JSON:
    tooltip = {"mode": "multi", "sort": "desc"}
    if spec.kind == "timeseries":
        return {
            "legend": {
                "displayMode": "table",
                "placement": "right",
                "showLegend": True,
                "calcs": ["lastNotNull"],
            },
            "tooltip": tooltip,
        }
    if spec.kind == "stat":
        return {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "value_and_name",
            "wideLayout": True,
        }
    if spec.kind == "bargauge":
        return {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal",
            "displayMode": "gradient",
            "showUnfilled": True,
            "valueMode": "color",
            "namePlacement": "left",
            "sizing": "auto",
        }
    if spec.kind == "table":
        options: JSON = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
        if spec.sort_by:
            options["sortBy"] = [{"displayName": spec.sort_by, "desc": True}]
        return options
    if spec.kind == "heatmap":
        return {
            "calculate": False,
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "scale": "exponential", "exponent": 0.5},
            "yAxis": {"axisPlacement": "left", "unit": "s"},
            "rowsFrame": {"layout": "le"},
            "tooltip": {"mode": "single", "yHistogram": True},
            "legend": {"show": True},
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
        }
    raise ValueError(f"unknown panel kind {spec.kind!r}")


def _field_defaults(spec: PanelSpec) -> JSON:
    defaults: JSON = {
        "unit": spec.unit,
        "color": {"mode": "thresholds" if spec.kind in ("stat", "table", "bargauge") else "palette-classic"},
        "thresholds": {
            "mode": "absolute",
            "steps": [{"color": color, "value": value} for color, value in spec.thresholds],
        },
        "mappings": list(spec.mappings),
    }
    if spec.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if spec.stacked else 0,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if spec.stacked else "none", "group": "A"},
        }
    if spec.kind == "table":
        defaults["custom"] = {"align": "auto", "cellOptions": {"type": "auto"}, "filterable": True}
    if spec.min is not None:
        defaults["min"] = spec.min
    if spec.max is not None:
        defaults["max"] = spec.max
    return defaults


def _panel(spec: PanelSpec, panel_id: int, x: int, y: int) -> JSON:
    refs = "ABCDEFGHIJ"
    return {
        "type": spec.kind,
        "id": panel_id,
        "title": spec.title,
        "description": spec.description,
        "datasource": PROMETHEUS,
        "gridPos": {"h": spec.h, "w": spec.w, "x": x, "y": y},
        "targets": [_target(q, refs[i]) for i, q in enumerate(spec.queries)],
        "fieldConfig": {"defaults": _field_defaults(spec), "overrides": list(spec.overrides)},
        "options": _options(spec),
        "transformations": list(spec.transformations),
        "links": [runbook_link(alert) for alert in spec.runbooks],
    }


def _layout(rows: Sequence[Row]) -> list[JSON]:
    """Row headers and panels, flowed left to right in Grafana's 24-column grid."""
    panels: list[JSON] = []
    y, next_id = 0, 1
    for row in rows:
        panels.append(
            {
                "type": "row",
                "id": next_id,
                "title": row.title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            }
        )
        next_id += 1
        y += 1
        x, line_height = 0, 0
        for spec in row.panels:
            if x + spec.w > 24:
                x, y, line_height = 0, y + line_height, 0
            panels.append(_panel(spec, next_id, x, y))
            next_id += 1
            x += spec.w
            line_height = max(line_height, spec.h)
        y += line_height
    return panels


def _datasource_variable(name: str, label: str, plugin: str, description: str) -> JSON:
    return {
        "name": name,
        "label": label,
        "type": "datasource",
        "query": plugin,
        "description": description,
        "current": {"text": "default" if plugin == "prometheus" else "Tempo", "value": ""},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
    }


def _query_variable(name: str, label: str, query: str, regex: str, description: str) -> JSON:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": PROMETHEUS,
        "query": query,
        "regex": regex,
        "description": description,
        "current": {"text": ["All"], "value": ["$__all"]},
        "hide": 0,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "options": [],
        "refresh": 2,
        "sort": 1,
        "skipUrlSync": False,
    }


def variables(runbook_base: str) -> list[JSON]:
    """The variables every dashboard shares, in display order."""
    return [
        _datasource_variable(
            "datasource", "Prometheus", "prometheus", "The Prometheus that scrapes the exporter."
        ),
        _datasource_variable(
            "tempo", "Tempo", "tempo", "The Tempo that receives the exporter's spans; trace links open it."
        ),
        _query_variable(
            "site",
            "Site",
            "query_result(max by (site_id, site_name) (nico_site_info))",
            '/site_id="(?<value>[^"]+)".*site_name="(?<text>[^"]+)"/',
            "Sites by name (the value is the site id).",
        ),
        _query_variable(
            "rack",
            "Rack",
            'query_result(max by (site_id, rack_id, rack_name) (nico_rack_info{site_id=~"$site"}))',
            '/rack_id="(?<value>[^"]+)".*rack_name="(?<text>[^"]+)"/',
            "Racks of the chosen sites, by name (the value is the rack id).",
        ),
        {
            "name": "runbook_base",
            "type": "textbox",
            "label": "Runbook base URL",
            "description": "Where docs/runbooks/ is served; runbook links append <Alert>.md.",
            "query": runbook_base,
            "current": {"text": runbook_base, "value": runbook_base},
            "options": [{"selected": True, "text": runbook_base, "value": runbook_base}],
            "hide": 2,
            "skipUrlSync": False,
        },
    ]


def build(spec: DashboardSpec, runbook_base: str = DEFAULT_RUNBOOK_BASE) -> JSON:
    """The dashboard JSON for ``spec``: importable by hand, by file provisioning or by the sidecar."""
    links = [
        {
            "asDropdown": True,
            "icon": "external link",
            "includeVars": True,
            "keepTime": True,
            "tags": ["nico"],
            "targetBlank": False,
            "title": "NICo dashboards",
            "tooltip": "The other NICo task dashboards",
            "type": "dashboards",
        },
        *(runbook_link(alert) for alert in spec.runbooks),
    ]
    return {
        "uid": spec.uid,
        "title": spec.title,
        "description": spec.description,
        "tags": [*TAGS, *spec.extra_tags],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "timezone": "browser",
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": links,
        "templating": {"list": [*variables(runbook_base), *spec.extra_variables]},
        "panels": _layout(spec.rows),
    }


# --- the four dashboards ---------------------------------------------------------------------


def _quantiles(
    family: str, by: str, selector: str, qs: Sequence[float], exemplar: bool = True
) -> tuple[Query, ...]:
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by ({by}, le) (rate({family}_bucket{{{selector}}}[$__rate_interval])))",
            legend=f"p{round(q * 100)} " + " ".join("{{" + label.strip() + "}}" for label in by.split(",")),
            exemplar=exemplar,
        )
        for q in qs
    )


def _organize(exclude: Sequence[str], rename: Mapping[str, str], order: Sequence[str]) -> JSON:
    return {
        "id": "organize",
        "options": {
            "excludeByName": dict.fromkeys(exclude, True),
            "renameByName": dict(rename),
            "indexByName": {name: i for i, name in enumerate(order)},
        },
    }


def _by_name(name: str, *properties: tuple[str, Any]) -> JSON:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": key, "value": value} for key, value in properties],
    }


_HIDDEN = ("Time", "__name__", "instance", "job", "site_id", "rack_id")
_UP_MAPPINGS = (
    {
        "type": "value",
        "options": {
            "0": {"text": "DOWN", "color": "red", "index": 0},
            "1": {"text": "UP", "color": "green", "index": 1},
        },
    },
)

_SITE_UP = PanelSpec(
    "stat",
    "Site up",
    "1 (UP) when the exporter's last poll of the site succeeded (most of its racks answered); "
    "DOWN means NICo or the network failed and every other panel for that site is going stale.",
    (
        Query(
            f"max by (site_id) (nico_site_up{{{S}}}) {WITH_SITE_NAME}", legend="{{site_name}}", instant=True
        ),
    ),
    w=8,
    h=4,
    thresholds=(("red", None), ("green", 1)),
    mappings=_UP_MAPPINGS,
    runbooks=("NicoSiteDown",),
    main=True,
)
_DATA_AGE = PanelSpec(
    "stat",
    "Data age per site",
    "Seconds since the exporter last polled the site successfully (freshness). It should stay near "
    "the active poll interval; orange past 2 minutes, red past 5.",
    (
        Query(
            f"time() - max by (site_id) (nico_exporter_last_successful_poll_timestamp_seconds{{{S}}}) "
            f"{WITH_SITE_NAME}",
            legend="{{site_name}}",
            instant=True,
        ),
    ),
    w=8,
    h=4,
    unit="s",
    thresholds=(("green", None), ("orange", 120), ("red", 300)),
    runbooks=("NicoExporterDataStale",),
    main=True,
)
_EXPORTER_UP = PanelSpec(
    "stat",
    "Exporter up",
    "Prometheus's `up` for the exporter's scrape job(s): DOWN means no metric on these dashboards is current.",
    (Query('max by (instance) (up{job=~".*nico.*"})', legend="{{instance}}", instant=True),),
    w=8,
    h=4,
    thresholds=(("red", None), ("green", 1)),
    mappings=_UP_MAPPINGS,
    runbooks=("NicoExporterDown",),
)

FLEET = DashboardSpec(
    uid="nico-fleet",
    title="NICo tasks / Fleet overview",
    description="What is running, what failed, what is stuck, where and why, across the chosen sites.",
    runbooks=(
        "NicoTaskFailed",
        "NicoTaskStuck",
        "NicoTaskWaitingTooLong",
        "NicoTaskFailureRateHigh",
        "NicoSiteDown",
        "NicoExporterDataStale",
    ),
    extra_variables=(
        {
            "name": "stuck_after",
            "label": "Stuck after",
            "type": "custom",
            "description": "A Running task older than this counts as stuck in the stat and is red in the table.",
            "query": "15m : 900, 30m : 1800, 1h : 3600, 2h : 7200, 4h : 14400, 8h : 28800",
            "current": {"text": "1h", "value": "3600"},
            "options": [],
            "hide": 0,
            "includeAll": False,
            "multi": False,
            "skipUrlSync": False,
        },
    ),
    rows=(
        Row("Exporter health", (_SITE_UP, _DATA_AGE, _EXPORTER_UP)),
        Row(
            "Now",
            (
                PanelSpec(
                    "stat",
                    "Active tasks",
                    "Tasks NICo reports as Pending (queued), Waiting (blocked by another task on the rack) or "
                    "Running, now, over the chosen sites.",
                    (Query(f"sum by (status) (nico_tasks{{{S}}})", legend="{{status}}", instant=True),),
                    w=8,
                    h=5,
                    thresholds=(("blue", None),),
                    main=True,
                ),
                PanelSpec(
                    "stat",
                    "Finished in the time range",
                    "Tasks that became Succeeded, Failed or Terminated within the dashboard's time range "
                    "(each counted once, also across exporter restarts).",
                    (
                        Query(
                            f"round(sum by (status) (increase(nico_tasks_finished_total{{{S}}}[$__range])))",
                            legend="{{status}}",
                            instant=True,
                        ),
                    ),
                    w=8,
                    h=5,
                    thresholds=(("green", None),),
                    overrides=(
                        {
                            "matcher": {"id": "byName", "options": "Failed"},
                            "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}}],
                        },
                    ),
                    runbooks=("NicoTaskFailed",),
                    main=True,
                ),
                PanelSpec(
                    "stat",
                    "Stuck tasks",
                    "Running tasks that started longer ago than the `Stuck after` variable. The table below "
                    "lists them with their stage and rack.",
                    (
                        Query(
                            f"count((time() - nico_task_started_timestamp_seconds{{{SR}}}) "
                            f"* on (site_id, rack_id, task_id) group_left () {RUNNING} > $stuck_after) "
                            "or vector(0)",
                            legend="stuck",
                            instant=True,
                        ),
                    ),
                    w=8,
                    h=5,
                    thresholds=(("green", None), ("red", 1)),
                    runbooks=("NicoTaskStuck",),
                    main=True,
                ),
            ),
        ),
        Row(
            "Throughput and outcomes",
            (
                PanelSpec(
                    "timeseries",
                    "Active tasks by status and operation",
                    "Pending, Waiting and Running tasks over time, stacked, by operation. A growing Pending or "
                    "Waiting band means work is queueing behind something.",
                    (
                        Query(
                            f"sum by (status, operation) (nico_tasks{{{S}}})",
                            legend="{{status}} {{operation}}",
                        ),
                    ),
                    w=24,
                    stacked=True,
                    runbooks=("NicoTaskWaitingTooLong",),
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Completions by status",
                    "Tasks finishing per minute, by final status.",
                    (
                        Query(
                            f"sum by (status) (rate(nico_tasks_finished_total{{{S}}}[$__rate_interval])) * 60",
                            legend="{{status}}",
                        ),
                    ),
                    unit="opm",
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Failure ratio by operation",
                    "Share of finished tasks that Failed, per operation, over a sliding window. Terminated "
                    "(cancelled) tasks count as finished, not failed.",
                    (
                        Query(
                            f'sum by (operation) (rate(nico_tasks_finished_total{{{S}, status="Failed"}}'
                            "[$__rate_interval])) / sum by (operation) "
                            f"(rate(nico_tasks_finished_total{{{S}}}[$__rate_interval]))",
                            legend="{{operation}}",
                        ),
                    ),
                    unit="percentunit",
                    min=0,
                    max=1,
                    runbooks=("NicoTaskFailureRateHigh",),
                    main=True,
                ),
            ),
        ),
        Row(
            "Durations",
            (
                PanelSpec(
                    "timeseries",
                    "Task duration percentiles by operation",
                    "p50 and p90 of task run time (started to finished) per operation. Exemplars (dots) "
                    "carry the task's trace id: click one to open the trace in Tempo.",
                    _quantiles("nico_task_duration_seconds", "operation", S, (0.5, 0.9)),
                    unit="s",
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Queue wait percentiles by operation",
                    "p50 and p90 of the time tasks waited before running (created to started): NICo's queue "
                    "plus the per-rack lock.",
                    _quantiles(
                        "nico_task_queue_duration_seconds", "operation", S, (0.5, 0.9), exemplar=False
                    ),
                    unit="s",
                    runbooks=("NicoTaskWaitingTooLong",),
                    main=True,
                ),
            ),
        ),
        Row(
            "Stuck and failed",
            (
                PanelSpec(
                    "table",
                    "Stuck tasks (longest running first)",
                    "Running tasks by age (now minus started), with operation, rack and the stage they are "
                    "in. Age turns red past 1 h; NicoTaskStuck pages on per-operation thresholds.",
                    (
                        Query(
                            f"topk(50, (time() - nico_task_started_timestamp_seconds{{{SR}}}) "
                            f"* on (site_id, rack_id, task_id) group_left () {RUNNING}) "
                            "* on (site_id, rack_id, task_id) group_left (operation) "
                            f"group by (site_id, rack_id, task_id, operation) (nico_task_info{{{SR}}}) "
                            f"{WITH_RACK_NAME} {WITH_SITE_NAME}",
                            instant=True,
                            table=True,
                        ),
                        Query(
                            f"max by (site_id, rack_id, task_id) (nico_task_current_stage{{{SR}}})",
                            instant=True,
                            table=True,
                        ),
                    ),
                    w=24,
                    h=8,
                    unit="s",
                    sort_by="Age",
                    thresholds=(("green", None), ("red", 3600)),
                    transformations=(
                        {"id": "merge", "options": {}},
                        {
                            "id": "filterByValue",
                            "options": {
                                "type": "include",
                                "match": "all",
                                "filters": [
                                    {
                                        "fieldName": "Value #A",
                                        "config": {"id": "greater", "options": {"value": 0}},
                                    }
                                ],
                            },
                        },
                        _organize(
                            _HIDDEN,
                            {
                                "Value #A": "Age",
                                "Value #B": "Stage",
                                "site_name": "Site",
                                "rack_name": "Rack",
                                "operation": "Operation",
                                "task_id": "Task",
                            },
                            ("Value #A", "operation", "Value #B", "site_name", "rack_name", "task_id"),
                        ),
                    ),
                    overrides=(
                        _by_name("Age", ("custom.cellOptions", {"type": "color-background"})),
                        _by_name("Stage", ("unit", "none"), ("decimals", 0)),
                    ),
                    runbooks=("NicoTaskStuck",),
                    main=True,
                ),
                PanelSpec(
                    "table",
                    "Recent failures",
                    "Failed tasks the exporter still tracks (finished within state.finished_task_ttl, 1 h by "
                    "default), newest first: the stage and component type that failed and NICo's error (cut "
                    "to 128 characters). Click the task id to open its trace in Tempo.",
                    (
                        Query(
                            WITH_TRACE_ID.format(
                                expr=f"max by (site_id, rack_id, task_id) "
                                f"(nico_task_finished_timestamp_seconds{{{SR}}}) * 1000 "
                                "* on (site_id, rack_id, task_id) group_left (operation, stage_number, "
                                "component_type, reason, error) group by (site_id, rack_id, task_id, operation, "
                                f"stage_number, component_type, reason, error) (nico_task_failure_info{{{SR}}}) "
                                f"{WITH_RACK_NAME} {WITH_SITE_NAME}"
                            ),
                            instant=True,
                            table=True,
                        ),
                    ),
                    w=24,
                    h=9,
                    unit="dateTimeAsIso",
                    sort_by="Finished",
                    transformations=(
                        _organize(
                            (*_HIDDEN, "trace_id"),
                            {
                                "Value": "Finished",
                                "site_name": "Site",
                                "rack_name": "Rack",
                                "operation": "Operation",
                                "stage_number": "Stage",
                                "component_type": "Component type",
                                "reason": "Reason",
                                "error": "Error",
                                "task_id": "Task",
                            },
                            (
                                "Value",
                                "operation",
                                "stage_number",
                                "component_type",
                                "reason",
                                "error",
                                "site_name",
                                "rack_name",
                                "task_id",
                            ),
                        ),
                    ),
                    overrides=(
                        _by_name(
                            "Task",
                            (
                                "links",
                                [
                                    {
                                        "title": "Open the trace in Tempo",
                                        "url": TEMPO_EXPLORE,
                                        "targetBlank": True,
                                    }
                                ],
                            ),
                        ),
                        _by_name("Error", ("custom.width", 520)),
                    ),
                    runbooks=("NicoTaskFailed",),
                    main=True,
                ),
            ),
        ),
    ),
)

_OPERATION_VARIABLE = _query_variable(
    "operation",
    "Operation",
    f"label_values(nico_task_stage_duration_seconds_count{{{S}}}, operation)",
    "",
    "Operations that ran stages on the chosen sites.",
)
SO = f'{S}, operation=~"$operation"'


def _step_heatmap(component: str) -> PanelSpec:
    return PanelSpec(
        "heatmap",
        f"{component} step durations",
        f"How long steps on {component} trays took, per time bucket: each cell counts steps that finished "
        "in that duration band. A band creeping upwards is a slowing firmware or BMC; exemplars link to traces.",
        (
            Query(
                f'sum by (le) (increase(nico_task_step_duration_seconds_bucket{{{SO}, component_type="{component}"}}'
                "[$__rate_interval]))",
                legend="{{le}}",
                heatmap=True,
                exemplar=True,
            ),
        ),
        w=8,
        h=9,
        unit="s",
        main=True,
    )


STAGES = DashboardSpec(
    uid="nico-stages",
    title="NICo tasks / Stages and steps",
    description="Where inside a task time goes and where it fails: stages by operation, steps by component type.",
    runbooks=("NicoTaskFailed", "NicoTaskStuck", "NicoTaskFailureRateHigh"),
    extra_variables=(_OPERATION_VARIABLE,),
    rows=(
        Row("Step durations by component type", tuple(_step_heatmap(c) for c in HEATMAP_COMPONENTS)),
        Row(
            "Stage durations",
            (
                PanelSpec(
                    "timeseries",
                    "Stage duration p90 by operation and stage",
                    "90th percentile of each stage's run time, per operation and stage number, from the "
                    "task reports. Exemplars link to the task's trace.",
                    _quantiles("nico_task_stage_duration_seconds", "operation, stage_number", SO, (0.9,)),
                    unit="s",
                    main=True,
                ),
                PanelSpec(
                    "bargauge",
                    "Mean stage duration over the time range",
                    "Average run time of each stage number per operation over the dashboard's time range: "
                    "which stage dominates an operation.",
                    (
                        Query(
                            f"sum by (operation, stage_number) (increase(nico_task_stage_duration_seconds_sum{{{SO}}}"
                            "[$__range])) / sum by (operation, stage_number) "
                            f"(increase(nico_task_stage_duration_seconds_count{{{SO}}}[$__range]))",
                            legend="{{operation}} stage {{stage_number}}",
                            instant=True,
                        ),
                    ),
                    unit="s",
                    thresholds=(("blue", None),),
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Step duration p90 by component type",
                    "90th percentile of step run time per component type (a step is one component type "
                    "within a stage).",
                    _quantiles("nico_task_step_duration_seconds", "component_type", SO, (0.9,)),
                    unit="s",
                ),
            ),
        ),
        Row(
            "Failures",
            (
                PanelSpec(
                    "bargauge",
                    "Failed steps by component type",
                    "Steps that failed within the time range, per component type: which kind of tray breaks.",
                    (
                        Query(
                            f"round(sum by (component_type) (increase(nico_task_step_duration_seconds_count"
                            f'{{{SO}, status="failed"}}[$__range])))',
                            legend="{{component_type}}",
                            instant=True,
                        ),
                    ),
                    w=8,
                    thresholds=(("orange", None), ("red", 5)),
                    runbooks=("NicoTaskFailed",),
                    main=True,
                ),
                PanelSpec(
                    "bargauge",
                    "Failed stages by operation and stage number",
                    "Stages that failed within the time range, per operation and stage number: where in a "
                    "rule tasks break.",
                    (
                        Query(
                            f"round(sum by (operation, stage_number) (increase(nico_task_stage_duration_seconds_count"
                            f'{{{SO}, status="failed"}}[$__range])))',
                            legend="{{operation}} stage {{stage_number}}",
                            instant=True,
                        ),
                    ),
                    w=8,
                    thresholds=(("orange", None), ("red", 5)),
                    main=True,
                ),
                PanelSpec(
                    "table",
                    "Recent failures by component type and stage",
                    "Failed tasks still tracked (within the finished-task TTL), counted by operation, stage "
                    "number, component type and reason.",
                    (
                        Query(
                            "count by (operation, stage_number, component_type, reason) "
                            f'(nico_task_failure_info{{{SR}, operation=~"$operation"}})',
                            instant=True,
                            table=True,
                        ),
                    ),
                    w=8,
                    sort_by="Failed tasks",
                    thresholds=(("orange", None), ("red", 3)),
                    transformations=(
                        _organize(
                            ("Time",),
                            {
                                "Value": "Failed tasks",
                                "operation": "Operation",
                                "stage_number": "Stage",
                                "component_type": "Component type",
                                "reason": "Reason",
                            },
                            ("operation", "stage_number", "component_type", "reason", "Value"),
                        ),
                    ),
                    runbooks=("NicoTaskFailed",),
                ),
            ),
        ),
    ),
)

_ACTIVE_PER_RACK = (
    f'sum by (rack_name, status) ((nico_task_status{{{SR}, status=~"Pending|Waiting|Running"}} == 1) '
    f"{WITH_RACK_NAME})"
)

RACKS = DashboardSpec(
    uid="nico-racks",
    title="NICo tasks / Racks and trays",
    description="Which racks are busy or failing, and which trays keep failing.",
    runbooks=("NicoTrayRepeatedFailures", "NicoTaskStuck", "NicoTaskFailed"),
    rows=(
        Row(
            "Racks now",
            (
                PanelSpec(
                    "bargauge",
                    "Active tasks per rack",
                    "Pending, Waiting and Running tasks on each rack now. NICo runs one task per rack at a "
                    "time, so more than one Running is unusual and a long Waiting list means a blocked rack.",
                    (Query(_ACTIVE_PER_RACK, legend="{{rack_name}} {{status}}", instant=True),),
                    thresholds=(("blue", None),),
                    main=True,
                ),
                PanelSpec(
                    "table",
                    "Trays with repeated failures (24 h)",
                    "The 20 trays with the most failed tasks in the last 24 hours (a task failing on a rack "
                    "counts against each tray it targeted). Two or more is red: NicoTrayRepeatedFailures.",
                    (
                        Query(
                            f"topk(20, round(sum by (site_id, rack_id, tray_id, tray_type) "
                            f"(increase(nico_tray_task_failures_total{{{SR}}}[24h]))) > 0) {WITH_RACK_NAME}",
                            instant=True,
                            table=True,
                        ),
                    ),
                    sort_by="Failures (24 h)",
                    thresholds=(("orange", None), ("red", 2)),
                    transformations=(
                        _organize(
                            _HIDDEN,
                            {
                                "Value": "Failures (24 h)",
                                "rack_name": "Rack",
                                "tray_type": "Tray type",
                                "tray_id": "Tray",
                            },
                            ("rack_name", "tray_type", "tray_id", "Value"),
                        ),
                    ),
                    overrides=(
                        _by_name(
                            "Failures (24 h)",
                            ("custom.cellOptions", {"type": "color-background"}),
                            ("decimals", 0),
                        ),
                    ),
                    runbooks=("NicoTrayRepeatedFailures",),
                    main=True,
                ),
            ),
        ),
        Row(
            "Per-rack history",
            (
                PanelSpec(
                    "timeseries",
                    "Active tasks per rack over time",
                    "Pending, Waiting and Running tasks per rack over time, stacked.",
                    (
                        Query(
                            f'sum by (rack_name) ((nico_task_status{{{SR}, status=~"Pending|Waiting|Running"}} == 1) '
                            f"{WITH_RACK_NAME})",
                            legend="{{rack_name}}",
                        ),
                    ),
                    stacked=True,
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Tray failures per rack",
                    "Failed tasks per rack over time, counted per targeted tray (so one rack-wide failure on "
                    "a 35-tray rack adds 35): a spike is a bad task, a steady stream a bad rack.",
                    (
                        Query(
                            f"sum by (rack_name) (increase(nico_tray_task_failures_total{{{SR}}}[$__rate_interval]) "
                            f"{WITH_RACK_NAME})",
                            legend="{{rack_name}}",
                        ),
                    ),
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Failed tasks per rack (within the TTL)",
                    "Failed tasks the exporter still tracks per rack (finished within state.finished_task_ttl).",
                    (
                        Query(
                            f"count by (rack_name) (nico_task_failure_info{{{SR}}} {WITH_RACK_NAME})",
                            legend="{{rack_name}}",
                        ),
                    ),
                    runbooks=("NicoTaskFailed",),
                ),
                PanelSpec(
                    "bargauge",
                    "Active tasks per tray type and rack",
                    "Tasks now active on each rack's trays, by tray type (known once the exporter has "
                    "attributed the task to its trays).",
                    (
                        Query(
                            f"sum by (rack_name, tray_type) (nico_tray_tasks{{{SR}}} {WITH_RACK_NAME})",
                            legend="{{rack_name}} {{tray_type}}",
                            instant=True,
                        ),
                    ),
                    thresholds=(("blue", None),),
                ),
            ),
        ),
    ),
)

_API = "nico_exporter_api_requests_total"

EXPORTER = DashboardSpec(
    uid="nico-exporter",
    title="NICo tasks / Exporter health",
    description="Is the exporter keeping up: NICo API calls, latency, throttling, freshness, budget, "
    "payload problems and span export.",
    runbooks=("NicoExporterDown", "NicoExporterDataStale", "NicoAPIThrottled", "NicoSiteDown"),
    rows=(
        Row("Freshness", (_SITE_UP, _DATA_AGE, _EXPORTER_UP)),
        Row(
            "NICo API",
            (
                PanelSpec(
                    "timeseries",
                    "API calls by endpoint and code",
                    "NICo API calls per second by endpoint template and HTTP code.",
                    (
                        Query(
                            f"sum by (endpoint, code) (rate({_API}[$__rate_interval]))",
                            legend="{{endpoint}} {{code}}",
                        ),
                    ),
                    unit="reqps",
                    stacked=True,
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "API latency by endpoint",
                    "p50 and p99 of NICo API call duration per endpoint template.",
                    _quantiles(
                        "nico_exporter_api_request_duration_seconds", "endpoint", "", (0.5, 0.99), False
                    ),
                    unit="s",
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Throttled calls (HTTP 429)",
                    "Calls NICo refused with 429 Too Many Requests: lower api.max_requests_per_second or "
                    "lengthen the poll intervals. Empty is good.",
                    (
                        Query(
                            f'sum by (endpoint) (rate({_API}{{code="429"}}[$__rate_interval]))',
                            legend="{{endpoint}}",
                            may_be_empty="NICo throttles nothing: no 429 series exists until a call is refused.",
                        ),
                    ),
                    unit="reqps",
                    runbooks=("NicoAPIThrottled",),
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Failed calls by endpoint and code",
                    "Calls that did not answer 2xx, by endpoint and code (`timeout` and `connection` when no "
                    "response came); 5xx and those mean NICo or the network is in trouble. Empty is good.",
                    (
                        Query(
                            f'sum by (endpoint, code) (rate({_API}{{code!~"2.."}}[$__rate_interval]))',
                            legend="{{endpoint}} {{code}}",
                            may_be_empty="NICo answered every call with 2xx: no other code has a series.",
                        ),
                    ),
                    unit="reqps",
                ),
            ),
        ),
        Row(
            "Budget and freshness",
            (
                PanelSpec(
                    "timeseries",
                    "Data age per site over time",
                    "Seconds since each site's last successful poll. A sawtooth at the poll interval is "
                    "healthy; a ramp is a site the exporter cannot reach.",
                    (
                        Query(
                            f"time() - max by (site_id) (nico_exporter_last_successful_poll_timestamp_seconds{{{S}}}) "
                            f"{WITH_SITE_NAME}",
                            legend="{{site_name}}",
                        ),
                    ),
                    unit="s",
                    runbooks=("NicoExporterDataStale",),
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Request budget: required vs available",
                    "Requests per second the configured poll intervals need for the current fleet, against "
                    "the budget (api.max_requests_per_second). Required above budget means polls slip.",
                    (
                        Query(
                            "sum by (instance) (nico_exporter_budget_required_requests_per_second)",
                            legend="required {{instance}}",
                        ),
                        Query(
                            "sum by (instance) (nico_exporter_budget_requests_per_second)",
                            legend="budget {{instance}}",
                        ),
                    ),
                    unit="reqps",
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Freshness shortfall and poll cycle",
                    "Shortfall: seconds by which the budget cannot hold the configured active interval (0 is "
                    "good). Poll cycle: how long the last active poll of every rack took.",
                    (
                        Query(
                            "max by (instance) (nico_exporter_freshness_shortfall_seconds)",
                            legend="shortfall {{instance}}",
                        ),
                        Query(
                            "max by (instance) (nico_exporter_active_poll_cycle_seconds)",
                            legend="poll cycle {{instance}}",
                        ),
                    ),
                    unit="s",
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Jobs shed",
                    "Scheduled job runs skipped because the request budget was saturated, per job.",
                    (
                        Query(
                            "sum by (job) (increase(nico_exporter_jobs_shed_total[$__rate_interval]))",
                            legend="{{job}}",
                            may_be_empty="The budget never saturates: no job is shed, so no series exists.",
                        ),
                    ),
                ),
            ),
        ),
        Row(
            "Payloads, spans and state",
            (
                PanelSpec(
                    "timeseries",
                    "Parse errors by endpoint and reason",
                    "Payload problems the exporter survived (an item skipped, a value tolerated). Any is worth "
                    "a look: NICo's API may have changed.",
                    (
                        Query(
                            "sum by (endpoint, reason) (increase(nico_exporter_parse_errors_total[$__rate_interval]))",
                            legend="{{endpoint}} {{reason}}",
                            may_be_empty="Clean payloads: a series appears only once a payload problem is seen.",
                        ),
                    ),
                    w=8,
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Spans exported and failed",
                    "Spans sent over OTLP per second and those that failed to export. Both stay 0 when "
                    "tracing is off (no OTEL_EXPORTER_OTLP_ENDPOINT).",
                    (
                        Query(
                            "sum(rate(nico_exporter_spans_exported_total[$__rate_interval]))",
                            legend="exported",
                        ),
                        Query(
                            "sum(rate(nico_exporter_span_export_errors_total[$__rate_interval]))",
                            legend="failed",
                        ),
                    ),
                    w=8,
                    unit="ops",
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Tracked tasks and final-fetch queue",
                    "Tasks held in memory (active, plus finished within the TTL) and tasks waiting for their "
                    "final fetch. The queue should drain to 0 between polls.",
                    (
                        Query("sum(nico_exporter_tracked_tasks)", legend="tracked"),
                        Query("sum(nico_exporter_final_fetch_queue)", legend="final-fetch queue"),
                    ),
                    w=8,
                ),
            ),
        ),
    ),
)

DASHBOARDS: tuple[DashboardSpec, ...] = (FLEET, STAGES, RACKS, EXPORTER)


def render_all(runbook_base: str = DEFAULT_RUNBOOK_BASE) -> dict[str, str]:
    """File name -> JSON text of every dashboard, exactly as committed."""
    return {
        f"{spec.uid}.json": json.dumps(build(spec, runbook_base), indent=2, ensure_ascii=False) + "\n"
        for spec in DASHBOARDS
    }


# --- queries, for tests and rendering --------------------------------------------------------


@dataclass(frozen=True)
class PanelQuery:
    """One target of one panel, as Grafana would send it (before variable substitution)."""

    dashboard: str
    panel: str
    ref: str
    expr: str
    instant: bool
    may_be_empty: str


def panel_queries(specs: Sequence[DashboardSpec] = DASHBOARDS) -> Iterator[PanelQuery]:
    """Every panel target of ``specs``."""
    for spec in specs:
        for row in spec.rows:
            for panel in row.panels:
                for i, query in enumerate(panel.queries):
                    yield PanelQuery(
                        spec.uid, panel.title, "ABCDEFGHIJ"[i], query.expr, query.instant, query.may_be_empty
                    )


def variable_queries(dashboard: Mapping[str, Any]) -> Iterator[str]:
    """The PromQL inside each query variable (``query_result(...)`` and ``label_values(...)`` unwrapped)."""
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = str(variable["query"])
        if query.startswith("query_result(") and query.endswith(")"):
            yield query[len("query_result(") : -1]
        elif match := re.fullmatch(r"label_values\((.*),\s*\w+\)", query):
            yield match.group(1)
        else:
            raise ValueError(f"unexpected variable query {query!r}")


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace Grafana variables (``$name`` and ``${name}``) named in ``values``; others stay as they are.

    ``$1``-style references in ``label_replace`` are not variables and are left alone.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)


def example_values(window: str = "5m", interval: str = "15s") -> dict[str, str]:
    """Concrete values for every variable the panel queries use: all sites and racks, every operation."""
    return {
        "site": ".*",
        "rack": ".*",
        "operation": ".*",
        "stuck_after": "3600",
        "__rate_interval": window,
        "__range": window,
        "__interval": interval,
        "__range_s": "300",
    }


# --- PNG rendering ---------------------------------------------------------------------------


def _legend(template: str, labels: Mapping[str, str]) -> str:
    if template in ("", "__auto"):
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip()


class _Prometheus:
    def __init__(self, url: str, end: float, span: float) -> None:
        import httpx

        self._client = httpx.Client(base_url=url.rstrip("/"), timeout=30)
        self.end, self.span = end, span

    def instant(self, expr: str) -> list[dict[str, Any]]:
        return self._get("/api/v1/query", {"query": expr, "time": str(self.end)})

    def range(self, expr: str) -> list[dict[str, Any]]:
        step = max(self.span / 120, 2.0)
        params = {"query": expr, "start": str(self.end - self.span), "end": str(self.end), "step": str(step)}
        return self._get("/api/v1/query_range", params)

    def _get(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        body = self._client.get(path, params=params).json()
        if body.get("status") != "success":
            raise RuntimeError(f"{params['query']}: {body}")
        return list(body["data"]["result"])


def _fmt(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "-"
    if unit == "s":
        if 0 < abs(value) < 1:
            return f"{value * 1000:.0f} ms"
        if value >= 3600:
            return f"{value / 3600:.1f} h"
        if value >= 60:
            return f"{value / 60:.1f} min"
        return f"{value:.1f} s"
    if unit == "percentunit":
        return f"{value * 100:.0f}%"
    if unit == "dateTimeAsIso":
        from datetime import UTC, datetime

        return datetime.fromtimestamp(value / 1000, UTC).strftime("%H:%M:%S")
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _render_png(spec: DashboardSpec, prom: _Prometheus, values: Mapping[str, str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    panels = [p for row in spec.rows for p in row.panels if p.main]
    columns = 3
    places: list[tuple[int, int]] = []  # (first slot, span) of each panel in a 3-column grid
    slot = 0
    for panel in panels:
        span = 3 if panel.kind == "table" or panel.w == 24 else 1
        if slot % columns + span > columns:
            slot += columns - slot % columns
        places.append((slot, span))
        slot += span
    rows = -(-slot // columns)
    fig = plt.figure(figsize=(19, 4.1 * rows), facecolor="#111217")
    fig.suptitle(f"{spec.title}  ({spec.uid})", color="white", fontsize=15, x=0.01, ha="left")
    grid = fig.add_gridspec(rows, columns, hspace=0.55, wspace=0.28)
    for panel, (first, span) in zip(panels, places, strict=True):
        ax: Axes = fig.add_subplot(grid[first // columns, first % columns : first % columns + span])
        ax.set_facecolor("#181b1f")
        ax.set_title(panel.title, color="white", fontsize=11, loc="left")
        ax.tick_params(colors="#ccccdc", labelsize=8)
        for side in ax.spines.values():
            side.set_color("#333")
        exprs = [(substitute(q.expr, values), q) for q in panel.queries]
        try:
            _draw(panel, exprs, prom, ax)
        except Exception as exc:  # a panel that cannot render says so instead of sinking the page
            ax.text(0.5, 0.5, f"error: {exc}"[:120], color="red", ha="center", transform=ax.transAxes)
    for extra in range(slot, rows * columns):
        fig.add_subplot(grid[extra // columns, extra % columns]).set_visible(False)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72, facecolor=fig.get_facecolor(), bbox_inches="tight")
    plt.close(fig)


def _no_data(ax: Any, why: str = "") -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(
        0.5,
        0.5,
        "No data" + (f"\n{why}" if why else ""),
        color="#8e8e8e",
        ha="center",
        va="center",
        transform=ax.transAxes,
        fontsize=10,
        wrap=True,
    )


def _draw(panel: PanelSpec, exprs: Sequence[tuple[str, Query]], prom: _Prometheus, ax: Any) -> None:
    from datetime import datetime

    from matplotlib.patches import Rectangle

    colors = [
        "#73bf69",
        "#f2cc0c",
        "#8ab8ff",
        "#ff9830",
        "#f2495c",
        "#5794f2",
        "#b877d9",
        "#fade2a",
        "#37872d",
        "#c4162a",
        "#1f60c4",
        "#8f3bb8",
    ]
    if panel.kind == "timeseries":
        series = [(s, q) for expr, q in exprs for s in prom.range(expr)]
        if not series:
            _no_data(ax, exprs[0][1].may_be_empty)
            return
        base = None
        for i, (s, q) in enumerate(sorted(series, key=lambda sq: _legend(sq[1].legend, sq[0]["metric"]))):
            xs = [float(t) for t, _ in s["values"]]
            ys = [float(v) for _, v in s["values"]]
            label = _legend(q.legend, s["metric"])
            color = colors[i % len(colors)]
            if panel.stacked:
                import numpy as np

                # Range results skip steps where a series is absent: that is 0, not a gap to bridge.
                if base is None:
                    base_t = np.array(sorted({float(t) for s2, _q in series for t, _ in s2["values"]}))
                    base = np.zeros_like(base_t)
                present = {float(t): float(v) for t, v in s["values"]}
                vals = np.array([present.get(t, 0.0) for t in base_t])
                ax.fill_between(
                    base_t,
                    base,
                    base + vals,
                    color=color,
                    alpha=0.55,
                    label=label,
                    step="post",
                    linewidth=0,
                )
                base = base + vals
            else:
                ax.plot(xs, ys, color=color, linewidth=1.4, label=label)
        ax.set_xlim(prom.end - prom.span, prom.end)
        ax.xaxis.set_major_formatter(lambda v, _pos: datetime.fromtimestamp(v).strftime("%H:%M"))
        ax.yaxis.set_major_formatter(lambda v, _pos: _fmt(v, panel.unit))
        ax.grid(color="#2a2d33", linewidth=0.6)
        ax.legend(
            fontsize=7,
            loc="upper left",
            facecolor="#181b1f",
            labelcolor="#ccccdc",
            edgecolor="#333",
            ncol=2 if len(series) > 6 else 1,
        )
        return
    if panel.kind == "heatmap":
        import numpy as np

        buckets = prom.range(exprs[0][0])
        if not buckets:
            _no_data(ax)
            return
        bounds = sorted({float(s["metric"]["le"]) for s in buckets})
        finite = [b for b in bounds if b != float("inf")]
        by_le = {float(s["metric"]["le"]): s["values"] for s in buckets}
        stamps = sorted({float(t) for s in buckets for t, _ in s["values"]})
        cum = np.zeros((len(bounds), len(stamps)))
        index = {t: i for i, t in enumerate(stamps)}
        for row_i, le in enumerate(bounds):
            for t, v in by_le[le]:
                cum[row_i, index[float(t)]] = float(v)
        cells = np.diff(np.vstack([np.zeros(len(stamps)), cum]), axis=0).clip(min=0)
        labels = [_fmt(b, "s") for b in finite] + ["+Inf"]
        ax.imshow(
            cells,
            aspect="auto",
            origin="lower",
            cmap="Oranges",
            interpolation="nearest",
            extent=(0, len(stamps), 0, len(bounds)),
        )
        ax.set_yticks([i + 0.5 for i in range(len(bounds))], labels=labels)
        ticks = list(range(0, len(stamps), max(len(stamps) // 5, 1)))
        ax.set_xticks(ticks, labels=[datetime.fromtimestamp(stamps[i]).strftime("%H:%M") for i in ticks])
        ax.set_ylabel("step duration (≤)", color="#ccccdc", fontsize=8)
        return
    results = [(s, q) for expr, q in exprs for s in prom.instant(expr)]
    if not results:
        _no_data(ax, exprs[0][1].may_be_empty)
        return
    if panel.kind in ("stat", "bargauge"):
        items = sorted(
            ((_legend(q.legend, s["metric"]), float(s["value"][1])) for s, q in results), key=lambda kv: kv[0]
        )
        if panel.kind == "bargauge" or len(items) > 4:
            names = [k for k, _ in items][-14:]
            bar_values = [v for _, v in items][-14:]
            ax.barh(names, bar_values, color=[_threshold_color(panel, v) for v in bar_values])
            for y, v in enumerate(bar_values):
                ax.text(v, y, " " + _fmt(v, panel.unit), color="white", va="center", fontsize=8)
            ax.xaxis.set_major_formatter(lambda v, _pos: _fmt(v, panel.unit))
            ax.tick_params(axis="y", labelsize=7)
            return
        ax.set_xticks([])
        ax.set_yticks([])
        width = 1 / len(items)
        for i, (name, value) in enumerate(items):
            mapped = _mapped(panel, value)
            ax.add_patch(
                Rectangle(
                    (i * width + 0.01, 0.05),
                    width - 0.02,
                    0.9,
                    color=_threshold_color(panel, value),
                    transform=ax.transAxes,
                )
            )
            ax.text(
                i * width + width / 2,
                0.62,
                mapped or _fmt(value, panel.unit),
                color="white",
                fontsize=20,
                ha="center",
                va="center",
                transform=ax.transAxes,
                weight="bold",
            )
            ax.text(
                i * width + width / 2,
                0.25,
                name,
                color="white",
                fontsize=9,
                ha="center",
                transform=ax.transAxes,
            )
        return
    _draw_table(panel, exprs, results, ax)


def _mapped(panel: PanelSpec, value: float) -> str:
    for mapping in panel.mappings:
        hit = mapping["options"].get(str(int(value)) if value == int(value) else str(value))
        if hit:
            return str(hit["text"])
    return ""


def _threshold_color(panel: PanelSpec, value: float) -> str:
    palette = {"green": "#37872d", "red": "#c4162a", "orange": "#fa6400", "blue": "#1f60c4"}
    color = panel.thresholds[0][0]
    for name, bound in panel.thresholds[1:]:
        if bound is not None and value >= bound:
            color = name
    return palette.get(color, color)


def _draw_table(
    panel: PanelSpec, exprs: Sequence[tuple[str, Query]], results: Sequence[Any], ax: Any
) -> None:
    """A table the way the panel's organize transformation shows it (merged on shared labels)."""
    organize = next((t for t in panel.transformations if t["id"] == "organize"), None)
    rename: dict[str, str] = organize["options"]["renameByName"] if organize else {}
    order: dict[str, int] = organize["options"]["indexByName"] if organize else {}
    hidden = set(organize["options"]["excludeByName"]) if organize else set()
    rows: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
    for expr_i, (_expr, _q) in enumerate(exprs):
        value_col = "Value" if len(exprs) == 1 else f"Value #{'ABCDEFGHIJ'[expr_i]}"
        for s in (r for r in results if r[1] is _q):
            key = tuple(
                sorted((k, v) for k, v in s[0]["metric"].items() if k in ("site_id", "rack_id", "task_id"))
            )
            row = rows.setdefault(key, {})
            row.update({k: v for k, v in s[0]["metric"].items() if k not in hidden})
            unit = panel.unit if value_col in ("Value", "Value #A") else "none"
            row[value_col] = (
                _fmt(float(s[0]["value"][1]), unit) if unit != "none" else f"{float(s[0]['value'][1]):.0f}"
            )
            row["_sort"] = s[0]["value"][1] if value_col in ("Value", "Value #A") else row.get("_sort", "0")
    body = [r for r in rows.values() if "Value" in r or "Value #A" in r]
    body.sort(key=lambda r: float(r["_sort"]), reverse=True)
    columns = sorted(
        {c for r in body for c in r if c != "_sort" and c not in hidden}, key=lambda c: order.get(c, 99)
    )
    ax.axis("off")
    if not body:
        _no_data(ax)
        return
    cells = [
        [(r.get(c, "")[:70] + ("…" if len(r.get(c, "")) > 70 else "")) for c in columns] for r in body[:10]
    ]
    table = ax.table(
        cellText=cells,
        colLabels=[rename.get(c, c) for c in columns],
        loc="upper left",
        cellLoc="left",
        colLoc="left",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(columns))))
    for (r, _c), cell in table.get_celld().items():
        cell.set_edgecolor("#333")
        cell.set_facecolor("#22252b" if r == 0 else "#181b1f")
        cell.get_text().set_color("white")


def render_pngs(prometheus_url: str, window_s: float = 900.0, out_dir: Path = IMG_DIR) -> list[Path]:
    """Draw each dashboard's main panels from ``prometheus_url`` over the last ``window_s`` seconds."""
    import time

    prom = _Prometheus(prometheus_url, end=time.time(), span=window_s)
    values = example_values(window=f"{max(int(window_s / 15), 60)}s")
    values["__range"] = f"{int(window_s)}s"
    written = []
    for spec in DASHBOARDS:
        path = out_dir / f"{spec.uid}.png"
        _render_png(spec, prom, values, path)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter.dashboards", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--runbook-base-url", default=DEFAULT_RUNBOOK_BASE, help="where docs/runbooks/ is served"
    )
    parser.add_argument("--out", type=Path, default=DASHBOARD_DIR, help="directory for the JSON files")
    parser.add_argument(
        "--render-png", metavar="PROMETHEUS_URL", help="draw docs/img/<uid>.png from this Prometheus"
    )
    parser.add_argument("--window", type=float, default=900.0, help="seconds of history the PNGs show")
    args = parser.parse_args(argv)
    if args.render_png:
        for path in render_pngs(args.render_png, args.window):
            print(f"wrote {path}", file=sys.stderr)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in render_all(args.runbook_base_url).items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
