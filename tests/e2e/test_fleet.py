"""A fleet with part of it broken, with real processes: the rest stays exact and says what broke.

One simulator process (NICo ``main``: Task Runs and Operation Rules) serves seven sites behind one
REST server, each broken the way a real fleet breaks (docs/simulator.md, "Fleet faults", cites
the Go code for each):

====  =====  =================================================================================
site  racks  what is wrong
====  =====  =================================================================================
0     100    nothing: the site whose data must stay exact and fresh
1     6      its agent goes silent mid-run (NICo holds each call 50 s, then a 500)
2     6      its agent is silent from the start, and NICo does not know yet (status Registered)
3     6      its clock is 8 s ahead of the REST server's
4     6      its clock is 8 s behind
5     6      its agent is older than the REST server: Task Run and Operation Rule calls hang 50 s
6     6      a v2.0 Flow behind a newer agent: Task Run calls answer 501
====  =====  =================================================================================

The exporter runs as its own process (``nico-task-exporter run``) at a 3 s active interval and a
5 s request timeout. Yardsticks: the simulator's ground truth (every task, its status and its
times), its count of the calls each site received, and the exporter's state file (each rack's
baseline). Stages last 7 to 12 s, so every task lives longer than two poll intervals.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import Process, exporter_command, free_port, http_ok, simulator, truth, wait_until

pytestmark = pytest.mark.e2e

ACTIVE = 3.0
TIMEOUT = 5.0
HEALTHY, SILENT_LATER, SILENT, AHEAD, BEHIND, OLD_AGENT, OLD_FLOW = range(7)
ANSWERING = (HEALTHY, AHEAD, BEHIND, OLD_AGENT, OLD_FLOW)
ARRIVALS_S = 50.0  # the scenario submits tasks for this long
SILENT_AT_S = 25.0  # site 1's agent goes silent this long after the exporter started
FAILURE_INFO = re.compile(r'^nico_task_failure_info\{site_id="([^"]+)",rack_id="[^"]+",task_id="([^"]+)"')


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass
class Watch:
    """Scrapes ``/metrics`` every half second in a thread: when each failure first showed."""

    url: str
    first_seen: dict[str, float] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                body = httpx.get(self.url + "/metrics", timeout=5).text
            except httpx.HTTPError:
                body = ""
            now = time.time()
            for line in body.splitlines():
                match = FAILURE_INFO.match(line)
                if match:
                    self.first_seen.setdefault(match.group(2), now)
            self.stop.wait(0.5)


@dataclass
class Fleet:
    sim: str
    exporter: str
    db: Path
    sites: list[str]
    ready_after: float
    started: float
    watch: Watch
    final: dict[str, Any]
    metrics: str

    def samples(self, family: str) -> list[tuple[dict[str, str], float]]:
        out = []
        for line in self.metrics.splitlines():
            if line.startswith(family + "{") or line.startswith(family + " "):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
                out.append((labels, float(line.rsplit(" ", 1)[1])))
        return out

    def by_site(self, family: str) -> dict[str, float]:
        return {labels["site_id"]: value for labels, value in self.samples(family)}


def _config(tmp: Path, sim: str, port: int) -> Path:
    path = tmp / "fleet.yaml"
    path.write_text(
        f"""
api: {{url: "{sim}", org: acme, token: sim-token, timeout: {TIMEOUT}s, max_requests_per_second: 60, burst: 10}}
polling: {{active_interval: {ACTIVE}s, tray_interval: 10s, reconcile_interval: 30s, discovery_interval: 60s,
  final_fetch_interval: 1s}}
state: {{path: "{tmp / "fleet.db"}"}}
web: {{listen_address: "127.0.0.1:{port}"}}
"""
    )
    return path


def _faults(sim: str, site: str, **faults: Any) -> None:
    resp = httpx.put(f"{sim}/_sim/sites/{site}/faults", json=faults, timeout=10)
    assert resp.status_code == 200, resp.text


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet-e2e")
    sim_args = [
        "--sites", "7", "--site-racks", "100,6,6,6,6,6,6", "--non-flow-sites", "0", "--task-runs",
        "--seed", "7", "--arrivals-per-rack-per-hour", "60", "--failure-rate", "0.25",
        "--stuck-tasks", "0", "--tray-scoped-fraction", "0.3", "--history-hours", "0",
        "--history-tasks-per-rack", "25:40", "--horizon-hours", str(ARRIVALS_S / 3600),
        "--operation-mix", "power_on=2,power_off=2,power_cycle=1,firmware_update=1",
        "--stage-seconds", "power=7:10,firmware=7:10",
        "--site-fault", f"{SILENT}:silent=true",
        "--site-fault", f"{AHEAD}:clockSkewSeconds=8",
        "--site-fault", f"{BEHIND}:clockSkewSeconds=-8",
        "--site-fault", f"{OLD_AGENT}:agentLacks=runs+rules",
        "--site-fault", f"{OLD_FLOW}:flowLacks=runs",
    ]  # fmt: skip
    with simulator(tmp, *sim_args) as sim:
        sites = [s["id"] for s in truth(sim)["sites"] if s["flow"]]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        exporter = Process(
            exporter_command("run", "--config.file", str(_config(tmp, sim, port))), tmp / "exporter.log"
        )
        watch = Watch(url)
        thread = threading.Thread(target=watch.run, daemon=True)
        try:
            wait_until(lambda: http_ok(url + "/readyz"), 60, "the exporter to be ready")
            ready_after = time.monotonic() - started
            thread.start()
            time.sleep(max(0.0, started + SILENT_AT_S - time.monotonic()))
            _faults(sim, sites[SILENT_LATER], silent=True)

            def over() -> bool:
                state = truth(sim)
                return state["now"] > (state["arrivalsEnd"] or "") and all(
                    t["finished"] is not None for t in state["tasks"] if t["siteId"] != sites[SILENT_LATER]
                )

            wait_until(over, 240, "every task of the answering sites to finish", interval=2)
            time.sleep(4 * ACTIVE)  # the last final fetches
            metrics = httpx.get(url + "/metrics", timeout=10).text
            yield Fleet(sim, url, tmp / "fleet.db", sites, ready_after, started, watch, truth(sim), metrics)
        finally:
            watch.stop.set()
            exporter.stop()


def _baselines(db: Path) -> dict[str, float]:
    with sqlite3.connect(db) as conn:
        return {rack: float(at) for rack, at in conn.execute("SELECT rack_id, baselined_at FROM racks")}


def test_ready_within_30_s_whatever_the_silent_sites_do(fleet: Fleet) -> None:
    assert fleet.ready_after < 30, f"ready after {fleet.ready_after:.1f} s"


def test_every_task_of_the_answering_sites_is_counted_once_by_name_with_its_status(fleet: Fleet) -> None:
    """Healthy and skewed sites, and the sites whose optional calls hang or answer 501: each task
    that finished after its rack's baseline is counted once, by name, with its real status."""
    baselines = _baselines(fleet.db)
    status = {
        labels["task_id"]: labels["status"] for labels, v in fleet.samples("nico_task_status") if v == 1
    }
    answering = {fleet.sites[i] for i in ANSWERING}
    expected: dict[str, str] = {}
    doubtful: set[str] = set()  # ended within the baseline's Date second: may be history
    for task in fleet.final["tasks"]:
        if task["siteId"] not in answering or task["finished"] is None or task["rackId"] not in baselines:
            continue
        finished, base = _ts(task["finished"]), baselines[task["rackId"]]
        if finished > base + 1.0:
            expected[task["id"]] = task["status"]
        elif finished > base:
            doubtful.add(task["id"])
    assert len(expected) > 60, "too few tasks to mean anything"
    by_id = {t["id"]: t for t in fleet.final["tasks"]}
    wrong = {
        t: (
            s,
            status.get(t),
            fleet.sites.index(by_id[t]["siteId"]),
            round(_ts(by_id[t]["created"]) - baselines[by_id[t]["rackId"]], 1),
            round(_ts(by_id[t]["finished"]) - baselines[by_id[t]["rackId"]], 1),
            by_id[t]["rackId"],
        )
        for t, s in expected.items()
        if status.get(t) != s
    }
    # (expected status, exporter's, site index, created and finished after the rack's baseline, rack)
    assert not wrong, (
        f"{len(wrong)} of {len(expected)} not counted with their status: {list(wrong.items())[:5]}"
    )
    # Nothing else was counted (a history task, or one counted twice would show in the totals).
    finished_total = Counter[str]()
    for labels, value in fleet.samples("nico_tasks_finished_total"):
        finished_total[labels["site_id"]] += int(value)
    site_of = {t["id"]: t["siteId"] for t in fleet.final["tasks"]}
    for site in answering:
        here = sum(1 for t in expected if site_of[t] == site)
        maybe = sum(1 for t in doubtful if site_of[t] == site)
        assert here <= finished_total[site] <= here + maybe, site
    # Every task lived longer than two poll intervals: none was left for the unobserved counter.
    unobserved = fleet.by_site("nico_tasks_unobserved_total")
    assert all(unobserved.get(site, 0) == 0 for site in answering), unobserved


def test_the_healthy_sites_failures_reach_metrics_within_30_s_while_others_hang(fleet: Fleet) -> None:
    healthy = fleet.sites[HEALTHY]
    baselines = _baselines(fleet.db)
    clock = _sim_clock(fleet.sim)
    late: list[tuple[str, float]] = []
    failures = 0
    for task in fleet.final["tasks"]:
        if task["siteId"] != healthy or task["status"] != "Failed" or task["rackId"] not in baselines:
            continue
        finished = _ts(task["finished"])
        if finished <= baselines[task["rackId"]] + 1:
            continue
        failures += 1
        seen = fleet.watch.first_seen.get(task["id"])
        took = None if seen is None else seen - clock(finished)
        if took is None or took > 30:
            late.append((task["id"], took if took is not None else float("inf")))
    assert failures >= 5, "too few failures to mean anything"
    assert not late, late


def _sim_clock(sim: str) -> Any:
    """Simulated seconds to this machine's clock (the simulator runs at real speed)."""
    before = time.time()
    now = _ts(truth(sim)["now"])
    offset = (before + time.time()) / 2 - now
    return lambda simulated: simulated + offset


def test_every_rack_of_every_site_stays_listed(fleet: Fleet) -> None:
    listed = Counter(labels["site_id"] for labels, _ in fleet.samples("nico_rack_info"))
    racks = {s["id"]: len(s["racks"]) for s in fleet.final["sites"]}
    for index in (*ANSWERING, SILENT_LATER):  # the silent one keeps the racks it had
        site = fleet.sites[index]
        assert listed[site] == racks[site], (index, listed[site], racks[site])
    assert listed[fleet.sites[SILENT]] == 0  # never listed: its discovery never answered


def test_site_up_is_0_exactly_for_the_silent_sites(fleet: Fleet) -> None:
    up = fleet.by_site("nico_site_up")
    down = {site for site, value in up.items() if value == 0}
    assert down == {fleet.sites[SILENT], fleet.sites[SILENT_LATER]}, up
    breaker = fleet.by_site("nico_exporter_site_breaker_open")
    assert {s for s, v in breaker.items() if v == 1} == down


def test_the_silent_sites_get_a_bounded_number_of_calls(fleet: Fleet) -> None:
    """Three calls that time out open a site's breaker; then one probe per 15 s (the probe
    interval: the active interval, at least 15 s). The bound: what that allows over the run, with
    a discovery retry or two in flight when the breaker opened."""
    stats = httpx.get(fleet.sim + "/_sim/stats", timeout=10).json()["sites"]
    elapsed = time.monotonic() - fleet.started
    silent_from_start = stats.get(fleet.sites[SILENT], 0)
    bound = 3 + 2 + int(elapsed / 15) + 1
    assert silent_from_start <= bound, (silent_from_start, bound, elapsed)
    print(
        f"fleet: silent from the start {silent_from_start} calls (bound {bound}), silent mid-run "
        f"{stats.get(fleet.sites[SILENT_LATER], 0)}, healthy {stats.get(fleet.sites[HEALTHY], 0)} in "
        f"{elapsed:.0f} s; ready after {fleet.ready_after:.1f} s"
    )
    healthy_rate = stats.get(fleet.sites[HEALTHY], 0) / elapsed
    assert healthy_rate > 100 / ACTIVE * 0.8  # the healthy site kept its rate (100 racks, 3 s)


def test_each_sites_clock_offset_is_found_and_optional_capabilities_are_switched_off(fleet: Fleet) -> None:
    offsets = fleet.by_site("nico_site_clock_offset_seconds")
    # About the counter's 2 s margin: under CPU load (both test workers busy) the answers' latency
    # and the gaps between a rack's polls widen the bracket, and the offset found stays on the side
    # of zero (corrected less, never more). CI measured -5.47 for the site 8 s behind once: 3 s.
    assert 8 - 3.0 <= offsets[fleet.sites[AHEAD]] <= 8 + 0.5, offsets
    assert -8 - 0.5 <= offsets[fleet.sites[BEHIND]] <= -8 + 3.0, offsets
    assert offsets[fleet.sites[HEALTHY]] == 0
    runs = fleet.by_site("nico_exporter_task_runs_supported")
    rules = fleet.by_site("nico_exporter_operation_rules_supported")
    assert runs[fleet.sites[HEALTHY]] == 1
    assert runs[fleet.sites[OLD_AGENT]] == 0 and rules[fleet.sites[OLD_AGENT]] == 0
    assert runs[fleet.sites[OLD_FLOW]] == 0 and rules[fleet.sites[OLD_FLOW]] == 1
