"""The chaos proof: one exporter process against the v2.0 simulator, compared per task id with
the simulator's ground truth, under three conditions at once:

- 20 % of logical calls fail (every retry of a call fails for a few seconds), through the end;
- three SIGKILLs at seeded moments, one of them while spans wait in the outbox;
- the OTLP receiver is down (its port refuses connections) for a minute, then back.

Ground truth comes from the simulator (``/_sim/truth``) and the test's own clock, never from the
exporter's state file. Compared per task id: the finished count (one root span per task, with the
task's final status, or counted unobserved when no 20-row list could name it); failure infos
(stage and component type, present in every scrape from the first one that shows them, across
every restart); stage and step observations (a span for each final stage and step of the task's
report); root and child spans. Lost and doubled are reported separately for each.

Assumptions shared by the simulator and the exporter, checked against NICo's code in
docs/simulator.md: a task list is its first 20 rows with an exact total (``GetAllTask`` on v2.0);
a task never leaves the database.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.otlp import Received, receiver
from tests.processes import (
    Process,
    exporter_command,
    free_port,
    simulator,
    traffic_over,
    truth,
    wait_until,
)

pytestmark = pytest.mark.e2e

SEED = 23
RACKS = 50
SIM_ARGS = [
    "--sites", "1", "--racks", str(RACKS), "--non-flow-sites", "0", "--speed", "90", "--seed", str(SEED),
    "--arrivals-per-rack-per-hour", "70", "--failure-rate", "0.2", "--stuck-tasks", "0",
    "--tray-scoped-fraction", "0.6",
    "--history-hours", "0.5", "--horizon-hours", "2.6",
    "--operation-mix", "power_on=2,power_off=2,power_cycle=1,firmware_update=1",
    "--stage-seconds", "power=90:200,firmware=120:260",
]  # fmt: skip
FAULTS = {"call_failure": 0.2, "call_failure_seconds": 3.0, "seed": SEED}
OUTAGE_S = 60.0
FINAL = {"completed", "failed"}


def _ts(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _config(tmp: Path, sim_url: str, port: int) -> Path:
    path = tmp / "chaos.yaml"
    path.write_text(
        f"""
api: {{url: "{sim_url}", org: acme, token: sim-token, timeout: 3s, max_requests_per_second: 250}}
polling: {{active_interval: 1s, tray_interval: 2s, reconcile_interval: 3s, discovery_interval: 20s,
  final_fetch_interval: 1s}}
state: {{path: "{tmp / "chaos.db"}"}}
web: {{listen_address: "127.0.0.1:{port}"}}
"""
    )
    return path


@dataclass
class Scrapes:
    """The test's own scraper: /metrics every second, across restarts (failed scrapes skipped)."""

    url: str
    ok: int = 0
    # task id -> the scrape numbers that showed its failure info, and the labels shown
    failure_seen: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    failure_labels: dict[str, set[tuple[str, str]]] = field(default_factory=lambda: defaultdict(set))
    last: dict[str, float] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self.stop.is_set():
                try:
                    text = http.get(self.url).text
                except httpx.HTTPError:
                    self.stop.wait(0.5)
                    continue
                self.ok += 1
                last: dict[str, float] = {}
                for family in text_string_to_metric_families(text):
                    for sample in family.samples:
                        if sample.name == "nico_task_failure_info":
                            task_id = sample.labels["task_id"]
                            self.failure_seen[task_id].append(self.ok)
                            labels = (sample.labels["stage_number"], sample.labels["component_type"])
                            self.failure_labels[task_id].add(labels)
                        elif sample.name.startswith(("nico_tasks_", "nico_exporter_")):
                            key = sample.name + str(sorted(sample.labels.items()))
                            last[key] = sample.value
                self.last = last
                self.stop.wait(1.0)

    def total(self, name: str, **labels: str) -> float:
        """Sum of ``name`` in the last scrape over series carrying ``labels``."""
        out = 0.0
        for key, value in self.last.items():
            if key.startswith(name + "[") and all(f"('{k}', '{v}')" in key for k, v in labels.items()):
                out += value
        return out


def _failing_step(task: dict[str, Any]) -> tuple[str, str] | None:
    for stage in (task.get("report") or {}).get("stages", []):
        if stage["status"] == "failed":
            failed = [s for s in stage["steps"] if s["status"] == "failed"]
            return str(stage["number"]), failed[0]["componentType"] if failed else ""
    return None


def _expected_children(task: dict[str, Any]) -> set[str]:
    """The stage and step spans a finished task's report calls for: its final stages and steps."""
    names = set()
    for stage in (task.get("report") or {}).get("stages", []):
        if stage["status"] in FINAL:
            names.add(f"stage {stage['number']}")
        for step in stage["steps"]:
            if step["status"] in FINAL:
                names.add(f"stage {stage['number']} {step['componentType']}")
    return names


def test_chaos_per_task_id_against_the_ground_truth(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    received = Received()
    otlp_port = free_port()
    metrics_port = free_port()
    metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
        "OTEL_SDK_DISABLED": "",
    }
    scrapes = Scrapes(metrics)
    kills: list[str] = []
    pending_at_kills: list[float] = []
    with simulator(tmp_path, *SIM_ARGS) as url:
        assert httpx.put(url + "/_sim/faults", json=FAULTS, timeout=5).status_code == 200
        config = _config(tmp_path, url, metrics_port)
        n = 0

        def start() -> Process:
            nonlocal n
            n += 1
            return Process(
                exporter_command("run", "--config.file", str(config)), tmp_path / f"run-{n}.log", env
            )

        def pending() -> float:
            return scrapes.total("nico_exporter_spans_pending")

        kill_times: list[str] = []

        def kill(proc: Process, why: str) -> Process:
            pending_at_kills.append(pending())
            proc.kill9()
            kill_times.append(truth(url)["now"])
            kills.append(why)
            replacement = start()
            kill_times.append(truth(url)["now"])
            return replacement

        scraper = threading.Thread(target=scrapes.run, daemon=True)
        with receiver(received, otlp_port):
            proc = start()
            scraper.start()
            try:
                # Every rack baselined: every task finishing from now on must be counted. (The
                # one figure taken from the exporter: when it started counting, not what it counted.)
                wait_until(
                    lambda: scrapes.total("nico_exporter_racks_baselined") == RACKS,
                    90,
                    "every rack's baseline",
                )
                time.sleep(2)
                ready_at = _ts(truth(url)["now"])
                assert ready_at is not None
                time.sleep(rng.uniform(5, 15))
                proc = kill(proc, "at a seeded moment")
                time.sleep(rng.uniform(5, 10))
            except BaseException:
                proc.stop()
                raise
        # The receiver is down: its port refuses connections.
        outage_began = time.monotonic()
        try:
            wait_until(lambda: pending() > 0, 45, "spans waiting in the outbox")
            time.sleep(rng.uniform(5, 15))
            proc = kill(proc, "with spans pending, the collector down")
            wait_until(
                lambda: time.monotonic() - outage_began >= OUTAGE_S, OUTAGE_S + 5, "the outage to last"
            )
        except BaseException:
            proc.stop()
            raise
        with receiver(received, otlp_port):
            try:
                time.sleep(rng.uniform(5, 15))
                proc = kill(proc, "after the outage")
                wait_until(lambda: traffic_over(url), 240, "the simulated traffic to end")
                final = truth(url)["tasks"]

                due = {t["id"] for t in final if (f := _ts(t["finished"])) is not None and f > ready_at}

                def settled() -> bool:
                    named = len(set(received.roots()) & due)
                    return pending() == 0 and named + scrapes.total("nico_tasks_unobserved_total") >= len(due)

                # Every finished task counted and every span sent (the comparison below says what
                # is missing if that never happens).
                deadline = time.monotonic() + 90
                while not settled() and time.monotonic() < deadline:
                    time.sleep(1)
                time.sleep(3)  # two more scrapes, and nothing counted twice afterwards
                counters = {
                    status: scrapes.total("nico_tasks_finished_total", status=status)
                    for status in ("Succeeded", "Failed", "Terminated")
                }
                unobserved = scrapes.total("nico_tasks_unobserved_total")
                resent = scrapes.total("nico_exporter_spans_resent_total")
                dropped = scrapes.total("nico_exporter_spans_dropped_total")
                calls = httpx.get(url + "/_sim/stats", timeout=5).json()
            finally:
                scrapes.stop.set()
                code = proc.stop()
        scraper.join(10)
    assert code == 0, proc.output()[-3000:]
    assert len(kills) == 3 and pending_at_kills[1] > 0

    by_id = {t["id"]: t for t in final}
    expected = {t["id"] for t in final if (f := _ts(t["finished"])) is not None and f > ready_at}
    spans = received.snapshot()
    # A root span sent again after a kill (exported, killed before it was marked done) is the
    # identical span, which a deduplicating backend stores once: counted in spans_doubled below,
    # bounded by the exporter's own resent counter. A task counted twice would be two different
    # root spans (or a counter off by one), so roots are counted by distinct span id.
    roots = Counter(task_id for task_id, _ in {(s.task_id, s.span_id) for s in spans if not s.parent_span_id})
    root_status = {s.task_id: s.task_status for s in spans if not s.parent_span_id}
    children: dict[str, Counter[str]] = defaultdict(Counter)
    for s in spans:
        if s.parent_span_id:
            children[s.task_id][s.name] += 1

    # -- finished counts, per task id -----------------------------------------------------------
    named = set(roots) & expected
    missing = expected - set(roots)
    lost_tasks = max(0, len(missing) - int(unobserved))
    doubled_tasks = sum(n - 1 for n in roots.values() if n > 1)
    wrong_status = {
        t: (root_status[t], by_id[t]["status"]) for t in named if root_status[t] != by_id[t]["status"]
    }
    # The counters agree with the root spans (two paths from the same transitions), by status.
    root_by_status = Counter(root_status.values())
    counter_mismatch = {
        s: (counters[s], root_by_status.get(s, 0))
        for s in counters
        if counters[s] != root_by_status.get(s, 0)
    }

    # -- failure infos, per task id -------------------------------------------------------------
    failed = {t for t in named if by_id[t]["status"] == "Failed"}
    info_lost = {t for t in failed if t not in scrapes.failure_seen}
    info_gaps = {
        t: seen
        for t, seen in scrapes.failure_seen.items()
        if seen != list(range(seen[0], seen[0] + len(seen))) or seen[-1] != scrapes.ok
    }
    info_wrong = {
        t: (scrapes.failure_labels[t], _failing_step(by_id[t]))
        for t in failed - info_lost
        if scrapes.failure_labels[t] != {_failing_step(by_id[t])}
    }

    # -- stage and step spans, per task id ------------------------------------------------------
    spans_lost = {
        t: sorted(_expected_children(by_id[t]) - set(children[t]))
        for t in named
        if by_id[t]["status"] in ("Succeeded", "Failed") and _expected_children(by_id[t]) - set(children[t])
    }
    span_copies = Counter((s.trace_id, s.span_id) for s in spans)
    spans_doubled = sum(n - 1 for n in span_copies.values() if n > 1)

    report = {
        "tasks": len(final),
        "tasks_finished_after_ready": len(expected),
        "named": len(named),
        "unobserved": unobserved,
        "lost_tasks": lost_tasks,
        "doubled_tasks": doubled_tasks,
        "failed_named": len(failed),
        "failure_info_lost": len(info_lost),
        "failure_info_gaps": len(info_gaps),
        "spans": len(spans),
        "child_spans_lost": sum(len(v) for v in spans_lost.values()),
        "spans_doubled": spans_doubled,
        "spans_resent": resent,
        "spans_dropped": dropped,
        "calls_failed_by_the_simulator": calls.get("callsFailed"),
        "scrapes": scrapes.ok,
        "pending_at_kills": pending_at_kills,
        "pending_at_end": scrapes.total("nico_exporter_spans_pending"),
        "missing_sample": sorted(missing)[:5],
        "statuses_missing": Counter(by_id[t]["status"] for t in missing),
    }
    print("chaos:", report)  # the figures for the closing note (pytest -s shows them)
    (tmp_path / "chaos.json").write_text(repr(report))
    (tmp_path / "truth.json").write_text(json.dumps({"tasks": final, "kills": kill_times, "ready": ready_at}))
    assert len(final) >= 2_000 and len(expected) >= 1_000, report
    assert calls.get("callsFailed", 0) > 100, report  # the poller really saw failing calls
    assert (lost_tasks, doubled_tasks, wrong_status, counter_mismatch) == (0, 0, {}, {}), report
    assert (info_lost, info_gaps, info_wrong) == (set(), {}, {}), report
    assert spans_lost == {} and dropped == 0, report
    assert spans_doubled <= resent, report  # duplicates only from the window the exporter counts
    assert not any("Traceback" in log.read_text() for log in tmp_path.glob("run-*.log"))
