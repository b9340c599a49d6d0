"""The control API, the ground truth, scenarios, the accelerated clock, and a real socket.

Cited NICo behaviour: docs/simulator.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from exporter.simulator import (
    ManualClock,
    ScenarioConfig,
    Simulation,
    SimulatorConfig,
    create_app,
)
from exporter.simulator.clock import AcceleratedClock
from tests.builders import ORG
from tests.builders import SIM_TOKEN as TOKEN
from tests.servers import serve_app
from tests.simulator.world import FakeMonotonic, World, config

BASE = f"/v2/org/{ORG}/nico"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# --- control API and ground truth --------------------------------------------------------------


async def test_control_api_and_stats(w: World) -> None:
    created = await w.http.post(
        "/_sim/tasks",
        json={
            "siteId": w.site_id,
            "rackId": w.rack_id,
            "operation": "firmware_update",
            "outcome": "fail",
            "failStage": 2,
        },
    )
    assert created.status_code == 201
    task_id = created.json()["taskId"]
    truth = (await w.http.get("/_sim/truth")).json()
    (task,) = truth["tasks"]
    assert task["id"] == task_id and task["outcome"] == "fail" and task["failedStage"] == 2
    assert task["operation"] == "firmware_update" and task["operationCode"] == "upgrade"
    assert task["description"] == "API firmware update Rack" and len(task["trayIds"]) == 35
    assert truth["sites"][0]["racks"][0]["id"] == w.rack_id

    faults = await w.http.put("/_sim/faults", json={"error_5xx": 0.25})
    assert faults.status_code == 200 and faults.json()["error_5xx"] == 0.25
    assert (await w.http.put("/_sim/faults", json={"error_5xx": 2})).status_code == 400
    await w.http.put("/_sim/faults", json={"error_5xx": 0})

    assert (await w.http.post(f"/_sim/sites/{w.site_id}/down")).status_code == 200
    assert (await w.rack_tasks()).status_code == 500
    assert (await w.http.post(f"/_sim/sites/{w.site_id}/up")).status_code == 200

    await w.http.delete("/_sim/stats")
    await w.rack_tasks()
    await w.rack_tasks(pageSize=500)
    stats = (await w.http.get("/_sim/stats")).json()
    assert stats["total"] == 2
    rows = {(r["route"], r["status"]): r["count"] for r in stats["requests"]}
    assert rows[(f"{BASE.replace(ORG, '{org}')}/rack/{{id}}/task", 200)] == 1
    assert rows[(f"{BASE.replace(ORG, '{org}')}/rack/{{id}}/task", 400)] == 1


async def test_truth_tracks_outcomes(w: World) -> None:
    ok = w.sim.create_task(w.site_id, w.rack_id, "power_on", stage_seconds=5)
    bad = w.sim.create_task(w.site_id, w.rack2_id, "power_off", outcome="fail", fail_stage=3, stage_seconds=5)
    w.advance(60)
    truths = {t.id: t for t in w.sim.truth()}
    assert truths[ok].status == "Succeeded" and truths[ok].failed_stage is None
    assert truths[bad].status == "Failed" and truths[bad].failed_stage == 3
    assert truths[bad].error is not None and truths[bad].finished is not None
    report = truths[bad].report
    # Stage 3 of power_off acts on power shelves; the stage error names the type (helpers.go:342)
    # around the step child workflow's error (helpers.go:316-319), which ends in the cause.
    assert report is not None
    assert report["error"].startswith(
        "component type PowerShelf failed: child workflow execution error (type: GenericComponentStepWorkflow,"
        f" workflowID: component-step-{bad}-PowerShelf, "
    )
    assert f"): {truths[bad].error}" in report["error"]


def test_scenarios_are_reproducible_and_produce_history() -> None:
    def run() -> list[dict[str, Any]]:
        scenario = ScenarioConfig(seed=42, sites=1, racks_per_site=4, stuck_tasks=1, history_hours=3.0)
        sim = Simulation(SimulatorConfig(scenario=scenario), clock=ManualClock())
        return [t.as_json() for t in sim.truth()]

    first, second = run(), run()
    assert first == second
    statuses = {t["status"] for t in first}
    assert "Succeeded" in statuses and len(first) > 5
    assert sum(t["outcome"] == "stuck" for t in first) == 1


def test_accelerated_clock_scales_real_time() -> None:
    ticks = FakeMonotonic()
    start = datetime.fromisoformat("2026-06-08T18:00:00+00:00")
    clock = AcceleratedClock(start, speed=10.0, monotonic=ticks)
    ticks.value += 3.0
    assert (clock.now() - start).total_seconds() == 30.0


# --- over a real socket ------------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[str, Simulation]]:
    sim = Simulation(config(), clock=ManualClock())
    with serve_app(create_app(sim)) as url:
        yield url, sim


async def test_reset_fault_over_a_socket_closes_mid_body(served: tuple[str, Simulation]) -> None:
    url, sim = served
    site_id, rack_id = sim.sites()[0].id, sim.racks(sim.sites()[0].id)[0].id
    sim.create_task(site_id, rack_id, "power_on")
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as client:
        ok = await client.get(f"{BASE}/rack/{rack_id}/task", params={"siteId": site_id})
        assert ok.status_code == 200
        sim.configure_faults({"reset": 1.0})
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"{BASE}/rack/{rack_id}/task", params={"siteId": site_id})
        sim.configure_faults({"reset": 0.0})
        again = await client.get(f"{BASE}/rack/{rack_id}/task", params={"siteId": site_id})
        assert again.status_code == 200
