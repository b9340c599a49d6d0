"""A real Prometheus scrapes the real exporter polling the simulator over HTTP.

Three processes (simulator, exporter, Debian's ``prometheus``) on 127.0.0.1, each started here
and ended by PID. PromQL answers must equal what the simulator's ground truth predicts;
``promtool check metrics`` must accept a full scrape; and ``/metrics`` must keep answering
quickly while NICo is down, slow or throttling, with ``nico_site_up`` going to 0.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import skip_or_fail
from tests.processes import (
    Process,
    exporter_command,
    exporter_config,
    http_ok,
    simulator,
    start_prometheus,
    truth,
    wait_until,
)

pytestmark = pytest.mark.e2e


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"`{name}` is not installed (Debian: apt-get install prometheus)")
    assert path is not None
    return path


@dataclass
class Stack:
    sim: str
    exporter: str
    prometheus: str
    db: Path
    exporter_proc: Process

    def query(self, promql: str) -> list[dict[str, Any]]:
        resp = httpx.get(self.prometheus + "/api/v1/query", params={"query": promql}, timeout=10)
        body = resp.json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def scalar(self, promql: str) -> float:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else float("nan")

    def metrics(self, **headers: str) -> httpx.Response:
        return httpx.get(self.exporter + "/metrics", headers=headers, timeout=10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus = binary("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus-e2e")
    sim_args = [
        "--sites", "2", "--racks", "3", "--non-flow-sites", "1", "--seed", "21",
        "--arrivals-per-rack-per-hour", "240", "--failure-rate", "0.25", "--stuck-tasks", "1",
        "--tray-scoped-fraction", "0.8",
        "--history-hours", "0.2", "--horizon-hours", "0.006",
        "--operation-mix", "power_on=2,power_off=2,power_cycle=1,firmware_update=1",
        "--stage-seconds", "power=1:4,firmware=2:6", "--leak-queue-timeout", "10",
    ]  # fmt: skip
    with simulator(tmp, *sim_args) as sim:
        config, exporter_port = exporter_config(tmp, sim)
        exporter = Process(exporter_command("run", "--config.file", str(config)), tmp / "exporter.log")
        prom, prom_url = start_prometheus(prometheus, tmp, exporter_port)
        try:
            s = Stack(sim, f"http://127.0.0.1:{exporter_port}", prom_url, tmp / "exporter.db", exporter)
            wait_until(lambda: http_ok(s.exporter + "/readyz"), 60, "the exporter to be ready")
            yield s
        finally:
            prom.stop()
            exporter.stop()


def _expected_finished(sim: str, db: Path, *, doubt: float = 0.0) -> Counter[tuple[str, str]]:
    """Tasks that finished after their rack's baseline, by (site, status).

    The baseline's time is the ``Date`` header of the first counter read: whole seconds. A task
    that finished within ``doubt`` seconds after it may have finished before the exporter's first
    list of the rack (then it is history), so the caller asks twice: with ``doubt`` 0 for the
    most that may be counted, with 1 s for the least.
    """
    import sqlite3

    with sqlite3.connect(db) as conn:
        baselines = {rack: float(at) for rack, at in conn.execute("SELECT rack_id, baselined_at FROM racks")}
    out = Counter[tuple[str, str]]()
    for task in truth(sim)["tasks"]:
        if task["finished"] is None or task["rackId"] not in baselines:
            continue
        finished = datetime.fromisoformat(task["finished"].replace("Z", "+00:00")).timestamp()
        if finished > baselines[task["rackId"]] + doubt:
            out[(task["siteId"], task["status"])] += 1
    return out


def test_promql_answers_match_the_simulators_ground_truth(stack: Stack) -> None:
    def settled() -> bool:
        tasks = truth(stack.sim)["tasks"]
        if sum(1 for t in tasks if t["finished"] is None) > 1:  # all over but the stuck task
            return False
        got = {
            (r["metric"]["site_id"], r["metric"]["status"]): int(float(r["value"][1]))
            for r in stack.query("sum by (site_id, status) (nico_tasks_finished_total)")
        }
        unobserved = {
            r["metric"]["site_id"]: int(float(r["value"][1]))
            for r in stack.query("nico_tasks_unobserved_total")
        }
        most = _expected_finished(stack.sim, stack.db)
        least = _expected_finished(stack.sim, stack.db, doubt=1.0)

        # Every finished task once: by status, or (no 20-row list could name it) as unobserved;
        # a task that ended in the baseline's second may be history.
        def by_site(counts: Counter[tuple[str, str]]) -> Counter[str]:
            out = Counter[str]()
            for (site, _), n in counts.items():
                out[site] += n
            return out

        named, low, high = by_site(Counter(got)), by_site(least), by_site(most)
        fits = all(n <= most.get(key, 0) for key, n in got.items())
        return fits and all(low[s] <= named[s] + unobserved.get(s, 0) <= high[s] for s in high)

    wait_until(settled, 120, "Prometheus's finished counts to match the ground truth", interval=1)
    state = truth(stack.sim)
    flow_sites = {s["id"] for s in state["sites"] if s["flow"]}
    racks = {r["id"] for s in state["sites"] if s["flow"] for r in s["racks"]}
    assert {r["metric"]["site_id"] for r in stack.query("nico_site_up == 1")} == flow_sites
    assert {r["metric"]["rack_id"] for r in stack.query("nico_rack_info")} == racks
    stuck = [t for t in state["tasks"] if t["finished"] is None]
    assert len(stuck) == 1
    running = stack.query('nico_task_status{status="Running"} == 1')
    assert [r["metric"]["task_id"] for r in running] == [stuck[0]["id"]]
    assert stack.scalar('sum(nico_tasks{status="Running"})') == 1
    failed = [t for t in state["tasks"] if t["status"] == "Failed" and t["finished"]]
    failure_ids = {r["metric"]["task_id"] for r in stack.query("nico_task_failure_info")}
    assert failure_ids and failure_ids <= {t["id"] for t in failed}
    # Every finished task that ran has one duration observation (expired Waiting tasks never ran).
    durations = stack.scalar("sum(nico_task_duration_seconds_count)")
    assert 0 < durations <= stack.scalar("sum(nico_tasks_finished_total)")
    assert stack.scalar('sum(nico_exporter_api_requests_total{endpoint="/rack/{id}/task",code="200"})') > 10
    assert stack.scalar("nico_exporter_build_info") == 1


def test_promtool_accepts_a_full_scrape(stack: Stack) -> None:
    promtool = binary("promtool")
    body = stack.metrics().text
    assert "nico_task_status" in body
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_openmetrics_scrape_carries_trace_exemplars(stack: Stack) -> None:
    body = stack.metrics(Accept="application/openmetrics-text; version=1.0.0").text
    exemplars = [
        line
        for line in body.splitlines()
        if line.startswith("nico_task_duration_seconds_bucket") and "#" in line
    ]
    assert exemplars and all('trace_id="' in line for line in exemplars)


@pytest.mark.parametrize(
    ("fault", "what"),
    [
        ({"down": True, "down_delay_s": 0.0}, "down"),
        ({"slow": 1.0, "slow_seconds": 8.0}, "slow"),
        ({"error_5xx": 1.0}, "throttled by errors"),
    ],
)
def test_metrics_answer_fast_while_nico_is_in_trouble(stack: Stack, fault: dict[str, Any], what: str) -> None:
    site = next(s["id"] for s in truth(stack.sim)["sites"] if s["flow"])
    before = stack.scalar(f'nico_exporter_last_successful_poll_timestamp_seconds{{site_id="{site}"}}')
    assert httpx.put(stack.sim + "/_sim/faults", json=fault, timeout=5).status_code == 200
    try:
        wait_until(
            lambda: stack.scalar(f'nico_site_up{{site_id="{site}"}}') == 0, 30, f"nico_site_up 0 ({what})"
        )
        stalled = stack.scalar(f'nico_exporter_last_successful_poll_timestamp_seconds{{site_id="{site}"}}')
        assert stalled >= before
        for _ in range(5):
            started = time.monotonic()
            resp = stack.metrics()
            assert resp.status_code == 200 and "nico_site_up" in resp.text
            assert time.monotonic() - started < 1.0
            time.sleep(0.5)
        # Freshness stops while NICo is unavailable.
        assert (
            stack.scalar(f'nico_exporter_last_successful_poll_timestamp_seconds{{site_id="{site}"}}')
            == stalled
        )
    finally:
        reset = {"down": False, "slow": 0.0, "error_5xx": 0.0}
        httpx.put(stack.sim + "/_sim/faults", json=reset, timeout=5)
    wait_until(lambda: stack.scalar(f'nico_site_up{{site_id="{site}"}}') == 1, 60, "the site to come back")
