"""Grafana JSON from the specs: panels, layout, variables and links, as plain dicts."""

from __future__ import annotations

from collections.abc import Sequence

from exporter.mixin.dashboards.model import (
    JSON,
    PROMETHEUS,
    SCHEMA_VERSION,
    TAGS,
    DashboardSpec,
    PanelSpec,
    Query,
    Row,
)

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


def query_variable(name: str, label: str, query: str, regex: str, description: str) -> JSON:
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
        query_variable(
            "site",
            "Site",
            "query_result(max by (site_id, site_name) (nico_site_info))",
            '/site_id="(?<value>[^"]+)".*site_name="(?<text>[^"]+)"/',
            "Sites by name (the value is the site id).",
        ),
        query_variable(
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


def build(spec: DashboardSpec, runbook_base: str) -> JSON:
    """The dashboard JSON for ``spec``: importable by hand, by file provisioning or by the sidecar.

    ``runbook_base`` is the hidden ``runbook_base`` variable's value, the alerts' ``runbook_url_base``.
    """
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
