"""Tasks as Flow runs them: reports, stage layouts, conflicts, waiting, expiry, cancel, descriptions.

Cited NICo behaviour: docs/simulator.md.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import pytest

from exporter.models import ComponentType
from exporter.simulator import (
    Rejected,
    ScenarioConfig,
)
from tests.builders import ORG
from tests.builders import SIM_TOKEN as TOKEN
from tests.simulator.world import World, config, make_world, nico

BASE = f"/v2/org/{ORG}/nico"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# --- lifecycle and reports ---------------------------------------------------------------------


async def test_task_timestamps_carry_fractions_report_timestamps_do_not(w: World) -> None:
    w.advance(0.123456)
    task_id = w.sim.create_task(w.site_id, w.rack_id, "power_off", stage_seconds=5)
    w.advance(2.5)
    body = await w.task(task_id)
    assert body["created"] == "2026-06-08T18:00:00.123456Z"
    assert body["report"]["stages"][0]["startedAt"] == "2026-06-08T18:00:02Z"


async def test_nvlswitch_spelling_option() -> None:
    async for w in make_world(config(nvlswitch_spelling=True)):
        task_id = w.sim.create_task(w.site_id, w.rack_id, "power_on")
        w.advance(2)
        steps = [
            s["componentType"] for st in (await w.task(task_id))["report"]["stages"] for s in st["steps"]
        ]
        assert steps == ["PowerShelf", "NVLSwitch", "Compute"]


# --- lifecycle and reports ---------------------------------------------------------------------


async def test_report_lifecycle_with_all_skipped_stages_begun_and_completed(w: World) -> None:
    tray = w.tray(ComponentType.COMPUTE)
    task_id = w.sim.create_task(w.site_id, w.rack_id, "power_on", tray_ids=[tray], stage_seconds=20)
    pending = await w.task(task_id)
    # message.go:16-33: "Pending", "Running", "Succeeded"; ruleId never persisted (model/task.go:72-76).
    assert (pending["status"], pending["message"]) == ("Pending", "Pending")
    assert pending["ruleId"] is None and pending["started"] is None and pending["finished"] is None
    assert "report" not in pending
    assert pending["description"] == "API power on Tray"
    assert list(pending) == [
        "id",
        "status",
        "description",
        "message",
        "ruleId",
        "started",
        "finished",
        "created",
        "updated",
    ]

    w.advance(1.0)  # the workflow starts: initial report, Running
    running = await w.task(task_id)
    assert (running["status"], running["message"]) == ("Running", "Running")
    assert running["ruleId"] is None and running["started"] == "2026-06-08T18:00:01Z"
    stages = running["report"]["stages"]
    assert running["report"]["version"] == 1
    assert [s["status"] for s in stages] == ["pending", "pending", "pending"]
    assert stages[0]["steps"] == [{"componentType": "PowerShelf", "status": "skipped"}]
    assert stages[2]["steps"] == [{"componentType": "Compute", "status": "pending", "totalComponents": 1}]

    w.advance(1.0)  # stages 1 and 2 have no work: begun and completed at once (helpers.go:408-435)
    stages = (await w.task(task_id))["report"]["stages"]
    for skipped in stages[:2]:
        assert skipped["status"] == "completed"
        assert skipped["startedAt"] == skipped["finishedAt"] == "2026-06-08T18:00:02Z"
        assert skipped["steps"][0] == {
            "componentType": skipped["steps"][0]["componentType"],
            "status": "skipped",
        }
    assert stages[2]["status"] == "running" and stages[2]["startedAt"] == "2026-06-08T18:00:02Z"

    w.advance(20.0)
    done = await w.task(task_id)
    assert (done["status"], done["message"]) == ("Succeeded", "Succeeded")
    assert done["finished"] == "2026-06-08T18:00:22Z" == done["updated"]
    final = done["report"]["stages"][2]
    assert final["status"] == "completed" and final["finishedAt"] == "2026-06-08T18:00:22Z"
    assert final["steps"][0]["finishedAt"] == "2026-06-08T18:00:22Z"


async def test_fail_fast_leaves_later_stages_pending(w: World) -> None:
    error = "power control failed: " + "x" * 600
    task_id = w.sim.create_task(
        w.site_id, w.rack_id, "power_cycle", outcome="fail", fail_stage=2, error=error, stage_seconds=10
    )
    w.advance(2.0 + 10 + 10)  # the workflow starts at 1 s, stage 1 at 2 s, stage 2 fails at 22 s
    body = await w.task(task_id)
    assert body["status"] == "Failed" and body["finished"] == "2026-06-08T18:00:22Z"
    # FailStage gets "component type <T> failed: <err>" (helpers.go:342-343) where <err> is the
    # step child workflow's error as the SDK prints it: "child workflow execution error (type: ...,
    # workflowID: component-step-<task>-<T>, runID: ..., initiatedEventID: N, startedEventID: M): "
    # (helpers.go:316-319; sdk v1.39.0 internal/error.go:858-865), then "main operation failed: "
    # (genericcomponentstep.go:68) and the activity's "activity error (type: PowerControl, ...): "
    # (error.go:811-817) around the caller's error; cut at 512 bytes (report.go:306-315). The
    # message is "stage N failed: ..." (helpers.go:431), first line, 512 bytes (message.go:36-56).
    stage_error = re.compile(
        rf"component type NVSwitch failed: child workflow execution error \(type: GenericComponentStepWorkflow,"
        rf" workflowID: component-step-{task_id}-NVSwitch, runID: [0-9a-f-]{{36}}, initiatedEventID: \d+,"
        r" startedEventID: \d+\): main operation failed: activity error \(type: PowerControl,"
        r" scheduledEventID: \d+, startedEventID: \d+, identity: \d+@[^@]+@\): power control failed: x+"
    )
    assert re.fullmatch("stage 2 failed: " + stage_error.pattern, body["message"])
    assert len(body["message"].encode()) == 512
    report = body["report"]
    assert [s["status"] for s in report["stages"]] == ["completed", "failed", *["pending"] * 4]
    assert stage_error.fullmatch(report["error"]) and len(report["error"].encode()) == 512
    failed = report["stages"][1]
    assert failed["error"] == report["error"] and failed["steps"][0]["error"] == report["error"]
    assert failed["steps"][0] == {
        "componentType": "NVSwitch",
        "status": "failed",
        "totalComponents": 9,
        "startedAt": "2026-06-08T18:00:12Z",
        "finishedAt": "2026-06-08T18:00:22Z",
        "error": report["error"],
    }
    assert "startedAt" not in report["stages"][2]


async def test_stage_layouts_match_flow_defaults() -> None:
    layouts = {
        "power_on": [["PowerShelf"], ["NVSwitch"], ["Compute"]],
        "power_off": [["Compute"], ["NVSwitch"], ["PowerShelf"]],
        "power_cycle": [["Compute"], ["NVSwitch"], ["PowerShelf"], ["PowerShelf"], ["NVSwitch"], ["Compute"]],
        "firmware_update": [["Compute"], ["NVSwitch"]],
        "bring_up": [["PowerShelf"], ["Compute"], ["Compute"], ["NVSwitch"], ["NVSwitch"], ["Compute"]],
    }
    all3 = ["PowerShelf", "NVSwitch", "Compute"]
    layouts["force_power_off"] = [*layouts["power_off"], all3]
    layouts["force_power_cycle"] = [*layouts["power_off"], all3, *layouts["power_on"], all3]
    scenario = ScenarioConfig.quiet(sites=1, racks_per_site=len(layouts), non_flow_sites=1)
    async for w in make_world(config(scenario=scenario)):
        racks = [rack.id for rack in w.sim.racks(w.site_id)]
        ids = {op: w.sim.create_task(w.site_id, rack, op) for op, rack in zip(layouts, racks, strict=True)}
        w.advance(5)
        for op, expected in layouts.items():
            truth = next(t for t in w.sim.truth() if t.id == ids[op])
            assert truth.report is not None
            assert [
                [s["componentType"] for s in stage["steps"]] for stage in truth.report["stages"]
            ] == expected


async def test_a_conflicting_rest_submission_is_refused_and_creates_nothing(w: World) -> None:
    first = await w.http.patch(
        f"{BASE}/rack/{w.rack_id}/power", json={"siteId": w.site_id, "state": "off"}, headers=AUTH
    )
    assert first.status_code == 200
    before = len(w.sim.world.tasks)
    # Reject strategy (converter.go:1338-1343): no row; REST's fixed 500 (common.go:1893-1904).
    second = await w.http.patch(
        f"{BASE}/rack/{w.rack_id}/power", json={"siteId": w.site_id, "state": "on"}, headers=AUTH
    )
    assert (second.status_code, second.json()) == (500, nico("Failed to power control Rack"))
    firmware = await w.http.patch(
        f"{BASE}/rack/{w.rack_id}/firmware", json={"siteId": w.site_id, "version": "1"}, headers=AUTH
    )
    assert (firmware.status_code, firmware.json()) == (500, nico("Failed to upgrade firmware for Rack"))
    assert len(w.sim.world.tasks) == before
    (rejection, _) = w.sim.world.rejections
    assert rejection.reason == f"rack {w.rack_id} already has a conflicting task"


async def test_conflicts_are_selective_so_several_tasks_run_on_one_rack(w: World) -> None:
    # conflict.go:48-149: compute power conflicts only with overlapping compute work; a power
    # shelf's power task blocks all power and firmware work; bring-up blocks everything.
    a, b = w.tray(ComponentType.COMPUTE, 0), w.tray(ComponentType.COMPUTE, 1)
    switch = w.tray(ComponentType.NVSWITCH, 0)
    first = w.sim.create_task(w.site_id, w.rack_id, "power_on", tray_ids=[a])
    second = w.sim.create_task(w.site_id, w.rack_id, "power_off", tray_ids=[b])
    third = w.sim.create_task(w.site_id, w.rack_id, "firmware_update", tray_ids=[switch])
    with pytest.raises(Rejected):
        w.sim.create_task(w.site_id, w.rack_id, "firmware_update", tray_ids=[a])  # overlaps ``first``
    with pytest.raises(Rejected):
        w.sim.create_task(w.site_id, w.rack_id, "power_on", tray_ids=[w.tray(ComponentType.POWERSHELF)])
    w.advance(5)
    active = (await w.rack_tasks(activeOnly="true")).json()
    assert {t["id"] for t in active} == {first, second, third}
    assert {t["status"] for t in active} == {"Running"}
    w.sim.create_task(w.site_id, w.rack2_id, "bring_up")
    with pytest.raises(Rejected):
        w.sim.create_task(
            w.site_id, w.rack2_id, "power_on", tray_ids=[w.tray(ComponentType.COMPUTE, rack_id=w.rack2_id)]
        )


async def test_leak_detection_waits_behind_a_conflict_then_is_promoted(w: World) -> None:
    first = w.sim.create_task(w.site_id, w.rack_id, "power_off", stage_seconds=10)
    tray = w.tray(ComponentType.NVSWITCH)
    second = w.sim.create_task(
        w.site_id, w.rack_id, "leak_detection", tray_ids=[tray], source="leak_detection"
    )
    waiting = await w.task(second)
    # Queue strategy (leakdetection.go:192): Waiting, "Queued: ..." (message.go:19).
    assert (waiting["status"], waiting["message"]) == (
        "Waiting",
        "Queued: waiting for rack to become available",
    )
    assert waiting["ruleId"] is None and "report" not in waiting and waiting["started"] is None
    active = (await w.rack_tasks(activeOnly="true")).json()
    assert {t["id"] for t in active} == {first, second}
    # The tray list holds only tasks that target the tray; the rack list holds both.
    tray_list = (await w.get(f"/tray/{tray}/task", siteId=w.site_id)).json()
    assert {t["id"] for t in tray_list} == {first, second}
    other_tray = w.tray(ComponentType.COMPUTE)
    assert {t["id"] for t in (await w.get(f"/tray/{other_tray}/task", siteId=w.site_id)).json()} == {first}

    w.advance(1.0 + 1.0 + 30)  # the first task's three 10 s stages end at 32 s; promoted at once
    assert (await w.task(first))["status"] == "Succeeded"
    promoted = await w.task(second)
    assert (promoted["status"], promoted["message"]) == ("Pending", "Promoted: no conflicting active tasks")
    w.advance(1.0)
    running = await w.task(second)
    assert running["status"] == "Running" and running["started"] == "2026-06-08T18:00:33Z"
    assert running["report"]["version"] == 1


async def test_at_most_five_wait_per_rack(w: World) -> None:
    w.sim.create_task(w.site_id, w.rack_id, "power_off", stage_seconds=100)
    tray = w.tray(ComponentType.COMPUTE)
    for _ in range(5):
        w.sim.create_task(w.site_id, w.rack_id, "leak_detection", tray_ids=[tray], source="leak_detection")
    with pytest.raises(Rejected, match=r"waiting queue is full \(5/5 tasks\)"):  # manager.go:31, 328-333
        w.sim.create_task(w.site_id, w.rack_id, "leak_detection", tray_ids=[tray], source="leak_detection")


async def test_queue_expiry_lands_at_the_promoters_sweep() -> None:
    async for w in make_world(config(leak_queue_timeout_s=60.0)):
        blocker = w.sim.create_task(w.site_id, w.rack_id, "firmware_update", outcome="stuck", fail_stage=1)
        tray = w.tray(ComponentType.COMPUTE)
        queued = w.sim.create_task(
            w.site_id, w.rack_id, "leak_detection", tray_ids=[tray], source="leak_detection"
        )
        w.advance(61.0)
        assert (await w.task(queued))["status"] == "Waiting"  # due, but no sweep has run yet
        w.advance(300.0)  # the promoter sweeps every 5 minutes (promoter.go:20)
        expired = await w.task(queued)
        assert (expired["status"], expired["message"]) == ("Terminated", "Expired: queue timeout reached")
        finished = datetime.fromisoformat(expired["finished"])
        assert 60 < (finished - datetime.fromisoformat(expired["created"])).total_seconds() <= 360
        assert (await w.task(blocker))["status"] == "Running"  # stuck forever


async def test_cancel_semantics(w: World) -> None:
    running = w.sim.create_task(w.site_id, w.rack_id, "power_cycle", stage_seconds=60)
    w.advance(3.0)
    response = await w.cancel(running)
    assert response.status_code == 202
    body = response.json()
    # manager.go:464-483: Terminated, "Cancelled by user", the report left as it was.
    assert (body["status"], body["message"]) == ("Terminated", "Cancelled by user")
    assert body["finished"] == "2026-06-08T18:00:03Z"
    assert body["report"]["stages"][0]["status"] == "running"
    w.advance(5.0)
    again = await w.cancel(running)
    assert again.status_code == 202 and again.json() == body  # idempotent, unchanged (manager.go:454-456)

    done = w.sim.create_task(w.site_id, w.rack2_id, "power_on", stage_seconds=1)
    w.advance(10.0)
    refused = await w.cancel(done)
    # A plain error from Flow (manager.go:458-462): code Unknown, so a 500 (task.go:352-354).
    assert (refused.status_code, refused.json()) == (
        500,
        nico(
            "Failed to execute Task cancellation workflow on Site: rpc error: code = Unknown desc = "
            f"task {done} cannot be cancelled (status: completed) (type: Error, retryable: true)"
        ),
    )
    failed = w.sim.create_task(w.site_id, w.rack2_id, "power_on", outcome="fail", stage_seconds=1)
    w.advance(10.0)
    assert "(status: failed)" in (await w.cancel(failed)).json()["message"]

    pending = w.sim.create_task(w.site_id, w.rack2_id, "power_on")
    legacy = await w.cancel(pending, "/rack/task/{id}/cancel")
    assert legacy.status_code == 202 and legacy.json()["status"] == "Terminated"
    assert "report" not in legacy.json()

    no_site = await w.http.post(f"{BASE}/task/{running}/cancel", json={}, headers=AUTH)
    assert (no_site.status_code, no_site.json()) == (
        400,
        nico("Failed to validate cancel task request data", {}),
    )
    gone = await w.cancel("6f1c2a40-0000-4000-8000-000000000000")
    assert gone.status_code == 500 and "failed to get task" in gone.json()["message"]


async def test_cancelling_the_running_task_promotes_the_waiter(w: World) -> None:
    first = w.sim.create_task(w.site_id, w.rack_id, "power_on", stage_seconds=100)
    tray = w.tray(ComponentType.COMPUTE)
    second = w.sim.create_task(
        w.site_id, w.rack_id, "leak_detection", tray_ids=[tray], source="leak_detection"
    )
    w.advance(5)
    await w.cancel(first)
    w.advance(2)
    assert (await w.task(second))["status"] == "Running"


# --- write endpoints and descriptions ----------------------------------------------------------


async def test_write_endpoints_create_tasks_with_exact_descriptions(w: World) -> None:
    tray = w.tray(ComponentType.COMPUTE, 3)
    calls: list[tuple[str, str, dict[str, Any], str]] = []
    for state, words in (
        ("on", "power on"),
        ("off", "power off"),
        ("cycle", "power cycle"),
        ("forceoff", "force power off"),
        ("forcecycle", "force power cycle"),
    ):
        calls.append(("PATCH", f"/rack/{w.rack_id}/power", {"state": state}, f"API {words} Rack"))
        calls.append(("PATCH", f"/tray/{tray}/power", {"state": state}, f"API {words} Tray"))
    calls += [
        ("PATCH", f"/rack/{w.rack_id}/firmware", {"version": "24.11.0"}, "API firmware update Rack"),
        ("PATCH", f"/tray/{tray}/firmware", {"version": "24.11.0"}, "API firmware update Tray"),
        ("POST", f"/rack/{w.rack_id}/bringup", {}, f"API bring up Rack {w.rack_id}"),
        ("POST", f"/rack/{w.rack_id}/bringup", {"description": "Initial bring up"}, "Initial bring up"),
    ]
    for method, path, body, description in calls:
        response = await w.http.request(method, BASE + path, json={"siteId": w.site_id, **body}, headers=AUTH)
        assert response.status_code == 200, (path, response.text)
        (task_id,) = response.json()["taskIds"]
        assert (await w.task(task_id))["description"] == description
        truth = next(t for t in w.sim.truth() if t.id == task_id)
        assert truth.rack_id == w.rack_id
        assert truth.tray_ids == ((tray,) if path.startswith("/tray") else truth.tray_ids)
        w.advance(24 * 3600)  # done: the next write does not conflict with it
    bad = await w.http.patch(
        f"{BASE}/rack/{w.rack_id}/power", json={"siteId": w.site_id, "state": "up"}, headers=AUTH
    )
    assert (bad.status_code, bad.json()) == (400, nico("Invalid power control state: up"))


async def test_leak_detection_description_keeps_its_padding(w: World) -> None:
    # leakdetection.go:191 with ComponentType.String() padded to 10 (component.go:129-134).
    ids = []
    for kind, padded in ((ComponentType.COMPUTE, "   Compute"), (ComponentType.NVSWITCH, "  NVSwitch")):
        tray = w.sim.world.trays[w.tray(kind, 5)]
        ids.append(
            w.sim.create_task(
                w.site_id, w.rack_id, "leak_detection", tray_ids=[tray.id], source="leak_detection"
            )
        )
        body = await w.task(ids[-1])
        expected = f"Leak detection: force power-off component {tray.component_id} of type {padded}"
        assert body["description"] == expected
    w.advance(1.5)  # both started (disjoint trays), their first stage not begun yet
    stages = (await w.task(ids[0]))["report"]["stages"]
    assert [s["status"] for s in stages] == ["pending"] * 4
