"""Every dashboard query returns data from a real Prometheus scraping the real exporter.

The simulator runs a busy workload (failures, one stuck task, tray-scoped tasks, a rate limiter that
throttles some calls, a few injected 5xx answers and unknown task statuses); the exporter polls it and Debian's
``prometheus`` scrapes the exporter, all on 127.0.0.1 and ended by PID. Each panel query, with the
Grafana variables substituted as the dashboard's defaults would (all sites, all racks), must return
at least one series, except the few listed in docs/dashboards.md whose reason is in the generator
(``Query.may_be_empty``).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.mixin import dashboards
from tests.e2e.test_prometheus import binary
from tests.processes import (
    Process,
    exporter_command,
    exporter_config,
    simulator,
    start_prometheus,
    truth,
    wait_until,
)
from tools.paths import DASHBOARD_DIR

pytestmark = pytest.mark.e2e

SIM_ARGS = [
    "--sites", "2", "--racks", "3", "--non-flow-sites", "1", "--seed", "5",
    "--arrivals-per-rack-per-hour", "400", "--failure-rate", "0.3", "--stuck-tasks", "1",
    "--history-hours", "0.02", "--horizon-hours", "0.1",
    "--operation-mix", "power_on=2,power_off=2,power_cycle=1,firmware_update=1,bring_up=1",
    "--stage-seconds", "power=1:3,firmware=2:4,bring_up=1:3", "--leak-queue-timeout", "8",
    "--rate-limit", "10", "--task-runs",
]  # fmt: skip
WINDOW = "1m"  # $__rate_interval and $__range: the whole run fits in it


class Prom:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, promql: str) -> list[dict[str, Any]]:
        body = httpx.get(self.url + "/api/v1/query", params={"query": promql}, timeout=10).json()
        assert body["status"] == "success", (promql, body)
        return list(body["data"]["result"])

    def has(self, promql: str) -> bool:
        return bool(self.query(promql))


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prom]:
    prometheus = binary("prometheus")
    tmp = tmp_path_factory.mktemp("dashboards-e2e")
    with simulator(tmp, *SIM_ARGS) as sim:
        # A few 5xx answers and unknown task statuses, so the failed-calls and parse-error panels
        # have something to show.
        faults = {"error_5xx": 0.03, "unknown_status": 0.05}
        assert httpx.put(sim + "/_sim/faults", json=faults, timeout=5).status_code == 200
        config, exporter_port = exporter_config(tmp, sim)
        exporter = Process(exporter_command("run", "--config.file", str(config)), tmp / "exporter.log")
        server, prom_url = start_prometheus(
            prometheus, tmp, exporter_port, "--enable-feature=exemplar-storage"
        )
        threading.Thread(target=_fail_one_tray_twice, args=(sim,), daemon=True).start()
        _start_a_rollout_that_trips_its_gate(sim)
        try:
            p = Prom(prom_url)
            yield p
        finally:
            server.stop()
            exporter.stop()


def _fail_one_tray_twice(sim: str) -> None:
    """Two failing rack-wide tasks, one after the other, on one rack.

    A rack-wide task's trays are known from its report without a call (every tray of the types it
    targets), so its failure is counted against them whatever the budget leaves the tray scans;
    a tray's failure counter is born at 1, which ``increase()`` cannot see, so the second failure
    is the increase the tray panels show. The random workload's tray failures depend on luck (a
    tray-scoped task that ends between two tray scans is never attributed). Flow refuses a
    conflicting submission, so each submission retries until the rack is free. The history above
    is short, so the rack's capped 20-row list (v2.0) still shows new tasks.
    """
    site = truth(sim)["sites"][0]
    rack = site["racks"][0]
    body = {"siteId": site["id"], "rackId": rack["id"], "operation": "power_off", "outcome": "fail",
            "failStage": 1, "error": "BMC unreachable", "stageSeconds": 4}  # fmt: skip
    for _ in range(2):
        task_id = _submit_when_free(sim, body)
        wait_until(lambda t=task_id: _finished(sim, t), 60, "the tray task to finish", interval=0.5)  # type: ignore[misc]


def _start_a_rollout_that_trips_its_gate(sim: str) -> None:
    """A firmware Task Run over the second site's racks whose first phase fails: the safety gate
    pauses it (the Rollouts dashboard's run, phase, target and gate panels have data)."""
    site = truth(sim)["sites"][1]
    body = {"siteId": site["id"], "version": "9.9.9", "name": "e2e-rollout", "phases": 2,
            "maxConcurrentTargets": 1, "failureRatePercent": 50, "childFailPhases": [0],
            "childStageSeconds": 1}  # fmt: skip
    resp = httpx.post(sim + "/_sim/task-runs", json=body, timeout=5)
    assert resp.status_code == 201, resp.text


def _submit_when_free(sim: str, body: dict[str, Any]) -> str:
    created: list[str] = []

    def submitted() -> bool:
        resp = httpx.post(sim + "/_sim/tasks", json=body, timeout=5)
        created.extend([resp.json()["taskId"]] if resp.status_code == 201 else [])
        return bool(created)

    wait_until(submitted, 60, "the rack to accept a tray task", interval=0.5)
    return created[0]


def _finished(sim: str, task_id: str) -> bool:
    return any(t["id"] == task_id and t["finished"] for t in truth(sim)["tasks"])


def _missing(prom: Prom, values: dict[str, str]) -> list[str]:
    return [
        f"{q.dashboard} / {q.panel} / {q.ref}"
        for q in dashboards.panel_queries()
        if not q.may_be_empty and not prom.has(dashboards.substitute(q.expr, values))
    ]


def test_every_panel_query_returns_data(prom: Prom) -> None:
    values = dashboards.example_values(window=WINDOW)
    values["__range"] = WINDOW
    # The workload needs time for failures, tray failures and the stuck task to show up.
    wait_until(lambda: prom.has("nico_task_failure_info"), 60, "a failed task", interval=1)
    wait_until(
        lambda: prom.has("increase(nico_tray_task_failures_total[1m]) > 0"), 90, "a tray failure", interval=1
    )
    # The rollout and its first targets (Flow's dispatcher claims them every 10 s; a busy rack
    # blocks its target for a while, so no target need have finished).
    wait_until(lambda: prom.has("nico_task_run_targets"), 90, "the rollout's targets", interval=1)
    missing: list[str] = []

    def complete() -> bool:
        nonlocal missing
        missing = _missing(prom, values)
        return not missing

    deadline = time.monotonic() + 30
    while not complete() and time.monotonic() < deadline:
        time.sleep(2)
    assert missing == [], "panel queries without data"


def test_trouble_panels_show_the_injected_trouble(prom: Prom) -> None:
    """Three of the may-be-empty panels are empty in a healthy fleet; this run provokes them."""
    values = dashboards.example_values(window=WINDOW)
    for panel in (
        "Throttled calls (HTTP 429)",
        "Failed calls by endpoint and code",
        "Parse errors by endpoint and reason",
    ):
        expr = dashboards.substitute(
            next(q.expr for q in dashboards.panel_queries() if q.panel == panel), values
        )
        wait_until(lambda e=expr: prom.has(e), 30, f"data in {panel!r}", interval=1)  # type: ignore[misc]


def test_expected_empty_queries_are_documented(prom: Prom) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "dashboards.md").read_text()
    values = dashboards.example_values(window=WINDOW)
    for q in dashboards.panel_queries():
        if q.may_be_empty:
            assert q.panel in doc and q.may_be_empty in doc, q.panel
            prom.query(dashboards.substitute(q.expr, values))  # runs without error, data or not


def test_variables_list_sites_and_racks_by_name(prom: Prom) -> None:
    wait_until(lambda: prom.has("nico_rack_info"), 30, "rack info")
    for name in dashboards.render_all():
        board = json.loads((DASHBOARD_DIR / name).read_text())
        by_name = {v["name"]: v for v in board["templating"]["list"]}
        for var in ("site", "rack"):
            promql = dashboards.substitute(
                str(by_name[var]["query"])[len("query_result(") : -1], {"site": ".*"}
            )
            rows = prom.query(promql)
            assert rows, (name, var)
            regex = by_name[var]["regex"].strip("/").replace("(?<", "(?P<")
            for row in rows:
                # Grafana's query_result line: {label="value", ...} value timestamp
                line = "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(row["metric"].items())) + "} 1 0"
                match = re.search(regex, line)
                assert match is not None and match["text"] != match["value"], line


def test_task_duration_exemplars_carry_trace_ids(prom: Prom) -> None:
    def exemplars() -> list[dict[str, Any]]:
        now = time.time()
        params = {"query": "nico_task_duration_seconds_bucket", "start": str(now - 600), "end": str(now)}
        body = httpx.get(prom.url + "/api/v1/query_exemplars", params=params, timeout=10).json()
        return [e for series in body.get("data") or [] for e in series["exemplars"]]

    wait_until(lambda: bool(exemplars()), 60, "task duration exemplars", interval=1)
    assert all(re.fullmatch(r"[0-9a-f]{32}", e["labels"]["trace_id"]) for e in exemplars())


def test_recent_failures_trace_id_is_the_task_id_without_dashes(prom: Prom) -> None:
    expr = next(q.expr for q in dashboards.panel_queries() if q.panel == "Recent failures")
    rows = prom.query(dashboards.substitute(expr, dashboards.example_values(window=WINDOW)))
    assert rows
    for row in rows:
        assert row["metric"]["trace_id"] == row["metric"]["task_id"].replace("-", "")
        assert row["metric"]["rack_name"] and row["metric"]["site_name"]
