"""Every failure panel shows the first failure of a new label set, and nothing for an old one.

A failure counter series is born at 1 with its first failure, which ``increase()`` alone reads as
0. Here Debian's ``prometheus`` holds a day of history, backfilled with ``promtool tsdb
create-blocks-from openmetrics``, of the "old" series of every failure family (at 1 since before
the range, with the exporter's scrapes failing for a while three hours ago), then scrapes a
static exposition in which a new label set of each family appears at 1, as the exporter creates
it. Each failure panel's query, read from the committed dashboard JSON with the Grafana variables
substituted, must show 1 for the new label set and 0 (or no row) for the old one, over a range
that starts in a healthy hour and over one that starts inside the failed scrapes.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.mixin import dashboards
from tests.e2e.test_prometheus import binary
from tests.processes import start_prometheus, wait_until
from tests.servers import serve_app
from tools.paths import DASHBOARD_DIR

pytestmark = pytest.mark.e2e

JOB = "nico-task-exporter"  # the scrape job tests.processes.start_prometheus configures
WINDOW = "1h"  # $__range and $__rate_interval: starts in the backfilled, healthy history
FAILED_SCRAPES_WINDOW = "3h"  # starts while the exporter's scrapes failed (up 0, series stale)
HISTORY_HOURS = 26  # covers the 24 h table's window too

# The exposition's series: the old ones have a history at the same value, the new ones do not.
# Each label set is as the exporter writes it.
OLD = (
    'nico_task_step_duration_seconds_count{site_id="s1", operation="power_cycle", component_type="Compute", status="failed"} 1',
    'nico_task_stage_duration_seconds_count{site_id="s1", operation="power_on", stage_number="1", status="failed"} 1',
    'nico_tray_task_failures_total{site_id="s1", rack_id="rA", tray_id="tray-old", tray_type="Compute"} 1',
    'nico_exporter_site_failures_total{site_id="s1", cause="timeout"} 1',
    'nico_exporter_self_failures_total{site_id="s1", cause="queue"} 1',
    'nico_exporter_api_requests_total{endpoint="/a", code="429"} 1',
    'nico_exporter_api_requests_total{endpoint="/d", code="500"} 1',
    'nico_exporter_api_requests_total{endpoint="/a", code="200"} 40',
    'nico_exporter_parse_errors_total{endpoint="/tasks", reason="unknown_status"} 1',
    'nico_exporter_jobs_shed_total{poll_job="discovery"} 1',
)
NEW = (
    'nico_task_step_duration_seconds_count{site_id="s1", operation="power_cycle", component_type="NVSwitch", status="failed"} 1',
    'nico_task_stage_duration_seconds_count{site_id="s1", operation="power_on", stage_number="2", status="failed"} 1',
    'nico_tray_task_failures_total{site_id="s1", rack_id="rB", tray_id="tray-new", tray_type="NVSwitch"} 1',
    'nico_exporter_site_failures_total{site_id="s1", cause="connection"} 1',
    'nico_exporter_self_failures_total{site_id="s1", cause="budget"} 1',
    'nico_exporter_api_requests_total{endpoint="/b", code="429"} 1',
    'nico_exporter_api_requests_total{endpoint="/c", code="503"} 1',
    'nico_exporter_parse_errors_total{endpoint="/racks", reason="bad_time"} 1',
    'nico_exporter_jobs_shed_total{poll_job="rack_poll"} 1',
)
INFO = (
    'nico_site_info{site_id="s1", site_name="site-1"} 1',
    'nico_rack_info{site_id="s1", rack_id="rA", rack_name="rack-a"} 1',
    'nico_rack_info{site_id="s1", rack_id="rB", rack_name="rack-b"} 1',
)  # fmt: skip

# Hand-written: what each failure panel's query shows, per row (its labels -> its value), over
# WINDOW. The 24 h table keeps only trays with a failure (`> 0`): the old tray has no row.
EXPECTED: dict[tuple[str, str, str], dict[tuple[str, ...], float]] = {
    ("nico-stages", "Failed steps by component type", "A"): {("Compute",): 0, ("NVSwitch",): 1},
    ("nico-stages", "Failed stages by operation and stage number", "A"): {
        ("power_on", "1"): 0,
        ("power_on", "2"): 1,
    },
    ("nico-racks", "Trays with repeated failures (24 h)", "A"): {("tray-new",): 1},
    ("nico-racks", "Tray failures per rack", "A"): {("rack-a",): 0, ("rack-b",): 1},
    ("nico-exporter", "Failed calls: NICo's and the exporter's own", "A"): {
        ("timeout",): 0,
        ("connection",): 1,
    },
    ("nico-exporter", "Failed calls: NICo's and the exporter's own", "B"): {("queue",): 0, ("budget",): 1},
    ("nico-exporter", "Throttled calls (HTTP 429)", "A"): {("/a",): 0, ("/b",): 1},
    ("nico-exporter", "Failed calls by endpoint and code", "A"): {
        ("/a", "429"): 0,
        ("/b", "429"): 1,
        ("/c", "503"): 1,
        ("/d", "500"): 0,
    },
    ("nico-exporter", "Parse errors by endpoint and reason", "A"): {
        ("/tasks", "unknown_status"): 0,
        ("/racks", "bad_time"): 1,
    },
    ("nico-exporter", "Jobs shed", "A"): {("discovery",): 0, ("rack_poll",): 1},
}
# The labels that name a row of each panel (its `sum by`, or the tray for the table).
ROW_LABELS = {
    "Failed steps by component type": ("component_type",),
    "Failed stages by operation and stage number": ("operation", "stage_number"),
    "Trays with repeated failures (24 h)": ("tray_id",),
    "Tray failures per rack": ("rack_name",),
    "Failed calls: NICo's and the exporter's own": ("cause",),
    "Throttled calls (HTTP 429)": ("endpoint",),
    "Failed calls by endpoint and code": ("endpoint", "code"),
    "Parse errors by endpoint and reason": ("endpoint", "reason"),
    "Jobs shed": ("poll_job",),
}


def _exposition() -> bytes:
    return ("\n".join((*OLD, *NEW, *INFO)) + "\n").encode()


async def _metrics_app(scope: Mapping[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app answering every request with the exposition, as the exporter's /metrics would."""
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")],
        }
    )
    await send({"type": "http.response.body", "body": _exposition()})


def _scraped(line: str, instance: str) -> str:
    """``line``'s series as Prometheus stores it after a scrape: target labels added; in
    OpenMetrics form (no spaces between labels)."""
    series = line.rsplit(" ", 1)[0]
    name, labels = series.split("{", 1)
    return f'{name}{{job="{JOB}",instance="{instance}",{labels.replace(", ", ",")}'


def _hours_ago(hours: float, now: int) -> int:
    return now - round(hours * 3600)


def _backfill(promtool: str, tsdb: Path, instance: str, now: int) -> None:
    """A day of history: ``up`` and every old series each minute, except that the scrapes failed
    from 3 h 8 min to 2 h 55 min ago (``up`` 0, no other sample: stale at the 3 h range's start)."""
    failed = (_hours_ago(3, now) - 8 * 60, _hours_ago(3, now) + 5 * 60)
    stamps = range(_hours_ago(HISTORY_HOURS, now), now - 60, 60)
    lines = [
        f'up{{job="{JOB}",instance="{instance}"}} {0 if failed[0] <= t <= failed[1] else 1} {t}'
        for t in stamps
    ]
    for line in OLD:
        series, value = _scraped(line, instance), line.rsplit(" ", 1)[1]
        lines += [f"{series} {value} {t}" for t in stamps if not failed[0] <= t <= failed[1]]
    source = tsdb.parent / "history.om"
    source.write_text("\n".join(lines) + "\n# EOF\n")
    result = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(tsdb)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@dataclass
class Prom:
    url: str

    def query(self, promql: str) -> list[dict[str, Any]]:
        body = httpx.get(self.url + "/api/v1/query", params={"query": promql}, timeout=10).json()
        assert body["status"] == "success", (promql, body)
        return list(body["data"]["result"])


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prom]:
    prometheus, promtool = binary("prometheus"), binary("promtool")
    tmp = tmp_path_factory.mktemp("failure-panels")
    with serve_app(_metrics_app) as url:
        instance = url.removeprefix("http://")
        _backfill(promtool, tmp / "tsdb", instance, int(time.time()))
        server, prom_url = start_prometheus(prometheus, tmp, int(instance.rsplit(":", 1)[1]))
        try:
            p = Prom(prom_url)
            # Two live scrapes: the new series exist, at 1, and nothing older of them.
            wait_until(
                lambda: bool(p.query(f'count_over_time(up{{job="{JOB}"}}[20s]) >= 2')), 30, "two scrapes"
            )
            yield p
        finally:
            server.stop()


def _committed_queries() -> dict[tuple[str, str, str], str]:
    """Every panel target of the committed dashboards: (uid, panel title, refId) -> expr."""
    out = {}
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out[(board["uid"], panel["title"], target["refId"])] = target["expr"]
    return out


def _rows(prom: Prom, expr: str, window: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    result = prom.query(dashboards.substitute(expr, dashboards.example_values(window=window)))
    return {tuple(r["metric"].get(name, "") for name in labels): float(r["value"][1]) for r in result}


def test_every_failure_panel_shows_a_new_label_sets_first_failure(prom: Prom) -> None:
    queries = _committed_queries()
    got = {key: _rows(prom, queries[key], WINDOW, ROW_LABELS[key[1]]) for key in EXPECTED}
    assert got == EXPECTED


def test_no_panel_counts_history_when_the_range_starts_in_failed_scrapes(prom: Prom) -> None:
    """Three hours ago every series was stale (its scrapes failed): the old series' values are
    history, not failures. The new ones count only from their second sample, as increase() does."""
    queries = _committed_queries()
    for key, rows in EXPECTED.items():
        got = _rows(prom, queries[key], FAILED_SCRAPES_WINDOW, ROW_LABELS[key[1]])
        if key[1] == "Trays with repeated failures (24 h)":  # a fixed 24 h, not the range
            assert got == rows, key
        else:
            assert got == dict.fromkeys(rows, 0.0), key


def test_increase_alone_misses_what_the_panels_show(prom: Prom) -> None:
    """The controls: plain increase() reads 0 for a new series, and ``x unless x offset range`` would
    count an old series whose scrapes failed at the range's start."""
    new = 'nico_task_step_duration_seconds_count{component_type="NVSwitch"}'
    assert [float(r["value"][1]) for r in prom.query(f"increase({new}[{WINDOW}])")] == [0.0]
    old = 'nico_task_step_duration_seconds_count{component_type="Compute"}'
    naive = prom.query(f"{old} unless {old} offset {FAILED_SCRAPES_WINDOW}")
    assert [float(r["value"][1]) for r in naive] == [1.0]
