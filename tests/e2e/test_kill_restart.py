"""Exactly once for real: a real exporter process, 20 % injected API faults, kill -9, restart.

The simulator and the exporter run as separate processes talking HTTP over loopback. The
exporter is killed with SIGKILL mid-run and started again on the same state file; when the
simulated traffic has ended, its persisted finished totals must match the simulator's ground
truth: nothing lost, nothing doubled.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.processes import (
    Process,
    exporter_command,
    exporter_config,
    simulator,
    traffic_over,
    truth,
    wait_until,
)

pytestmark = pytest.mark.e2e


def _persisted(db: Path) -> tuple[Counter[str], dict[str, float]]:
    """Finished totals by status, plus ``unobserved`` (tasks no 20-row list could name)."""
    with sqlite3.connect(db) as conn:
        totals = Counter[str]()
        for status, count in conn.execute("SELECT status, SUM(count) FROM totals GROUP BY status"):
            totals[status] = int(count)
        for (count,) in conn.execute("SELECT SUM(count) FROM unobserved"):
            totals["unobserved"] = int(count or 0)
        baselines = {
            rack: float(at)
            for rack, at in conn.execute(
                "SELECT rack_id, baselined_at FROM racks WHERE baselined_at IS NOT NULL"
            )
        }
    return totals, baselines


# A task active at a rack's baseline counter read that finished before the active list right after
# it (moments later, in real time) is in the baseline's count and never listed: history
# (docs/polling.md). At --speed 20, 2 s between the two calls on a loaded machine is 40 s of NICo time.
BASELINE_GAP_S = 40.0


def _matches(totals: Counter[str], expected: Counter[str]) -> bool:
    """Every finished task once: by its status, or else as unobserved; never twice. Tasks in
    ``expected["doubtful"]`` (see BASELINE_GAP_S) may be counted or not."""
    named = {status: n for status, n in totals.items() if status != "unobserved"}
    doubtful = expected.get("doubtful", 0)
    sure = {status: n for status, n in expected.items() if status != "doubtful"}
    fits = all(n <= sure.get(status, 0) for status, n in named.items())
    counted = sum(named.values()) + totals["unobserved"]
    return fits and sum(sure.values()) - doubtful <= counted <= sum(sure.values())


def _expected(url: str, baselines: dict[str, float]) -> Counter[str]:
    out = Counter[str]()
    for task in truth(url)["tasks"]:
        if task["finished"] is None or task["rackId"] not in baselines:
            continue
        finished = datetime.fromisoformat(task["finished"].replace("Z", "+00:00")).timestamp()
        created = datetime.fromisoformat(task["created"].replace("Z", "+00:00")).timestamp()
        base = baselines[task["rackId"]]
        if finished > base:
            out[task["status"]] += 1
            if created <= base and finished <= base + BASELINE_GAP_S:
                out["doubtful"] += 1
    return out


def _explain(url: str, db: Path, baselines: dict[str, float]) -> str:
    """For a failure message: the expected tasks the state file does not hold, each with its
    created and finished time against its rack's baseline, and every rack's ledger."""
    with sqlite3.connect(db) as conn:
        held = {task for (task,) in conn.execute("SELECT task_id FROM terminal")}
        ledgers = conn.execute(
            "SELECT rack_id, baselined_at, baseline_total, last_total, seen_new, unobserved FROM racks"
        ).fetchall()
    missing = []
    for task in truth(url)["tasks"]:
        base = baselines.get(task["rackId"])
        if task["finished"] is None or base is None or task["id"] in held:
            continue
        finished = datetime.fromisoformat(task["finished"].replace("Z", "+00:00")).timestamp()
        created = datetime.fromisoformat(task["created"].replace("Z", "+00:00")).timestamp()
        if finished > base:
            missing.append(
                (task["id"][:8], task["status"], round(created - base, 1), round(finished - base, 1))
            )
    return (
        f"not in the state file (id, status, created and finished after baseline): {missing}; racks {ledgers}"
    )


def test_kill_minus_nine_then_restart_under_faults_counts_each_task_once(tmp_path: Path) -> None:
    sim_args = [
        "--sites", "1", "--racks", "3", "--non-flow-sites", "0", "--speed", "20", "--seed", "5",
        "--arrivals-per-rack-per-hour", "60", "--failure-rate", "0.15", "--stuck-tasks", "0",
        "--tray-scoped-fraction", "0.7",
        "--history-hours", "1", "--horizon-hours", "0.2",
        "--operation-mix", "power_on=2,power_off=2,power_cycle=1,force_power_off=1",
        "--stage-seconds", "power=5:40",
    ]  # fmt: skip
    with simulator(tmp_path, *sim_args) as url:
        faults = {"error_5xx": 0.1, "truncated_json": 0.05, "reset": 0.05, "seed": 9}
        assert httpx.put(url + "/_sim/faults", json=faults, timeout=5).status_code == 200
        config, _ = exporter_config(tmp_path, url)
        db = tmp_path / "exporter.db"
        first = Process(exporter_command("run", "--config.file", str(config)), tmp_path / "exporter-1.log")
        try:
            wait_until(
                lambda: db.exists() and sum(_persisted(db)[0].values()) >= 3, 60, "the first finished tasks"
            )
        except BaseException:
            first.stop()  # a failed wait must not leave the exporter running after the test
            raise
        first.kill9()
        killed_at = time.monotonic()
        second = Process(exporter_command("run", "--config.file", str(config)), tmp_path / "exporter-2.log")
        try:
            wait_until(lambda: traffic_over(url), 120, "the simulated traffic to end")
            httpx.put(url + "/_sim/faults", json={"error_5xx": 0, "truncated_json": 0, "reset": 0}, timeout=5)

            def settled() -> bool:
                totals, baselines = _persisted(db)
                return _matches(totals, _expected(url, baselines))

            try:
                wait_until(settled, 60, "the persisted totals to match the ground truth")
            except AssertionError:
                totals, baselines = _persisted(db)
                expected = _expected(url, baselines)
                raise AssertionError(
                    f"persisted {dict(totals)}, ground truth {dict(expected)}; {_explain(url, db, baselines)}"
                ) from None
            time.sleep(3)  # and stay matched: nothing counted twice afterwards
            totals, baselines = _persisted(db)
            assert _matches(totals, _expected(url, baselines))
            assert sum(totals.values()) - totals["unobserved"] > 10
        finally:
            code = second.stop()
        assert code == 0, second.output()[-3000:]
        assert time.monotonic() - killed_at > 1
        log = second.output()
        assert "stopped" in log and "Traceback" not in log
