"""Every panel's queries, for the tests and the renderer, and the Grafana variable substitution."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporter.mixin.dashboards.model import DashboardSpec
from exporter.mixin.dashboards.specs import DASHBOARDS

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
        "__rate_interval": window,
        "__range": window,
        "__interval": interval,
        "__range_s": "300",
    }
