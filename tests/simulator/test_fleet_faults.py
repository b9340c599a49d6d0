"""Fleet faults: the ways one site of a real NICo fleet breaks (docs/simulator.md, *Fleet faults*).

Expectations are written from the Go code (rest-api/ at release/v2.0 and main), not from the
simulator: TerminateWorkflowOnTimeOut's 500 (common.go:1170-1187), the handlers' object/workflow
names, the monitor's Error status (workflow/pkg/activity/site/site.go:515-589), UnwrapWorkflowError's
501 for a v2.0 Flow's run RPCs, Flow's unordered inventory lists, CancelTask's empty answer, the
Provider Admin / Infrastructure Provider checks and keycloak.go's login refusals. No test waits
the real 50 s: silent sites here time out in a fraction of a second.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from exporter.models import ComponentType
from exporter.simulator import ManualClock, ScenarioConfig, Simulation, SimulatorConfig, create_app
from exporter.simulator.fleet import SiteFaults, monitor_flip, parse_site_fault
from tests.servers import serve_app
from tests.simulator.world import AUTH, BASE, World, config, make_world, nico

FAST = 0.05  # workflowTimeoutSeconds in tests: real seconds a silent site's call hangs


def two_sites(**overrides: Any) -> SimulatorConfig:
    """Two Flow sites of two racks and one non-Flow site."""
    return config(scenario=ScenarioConfig.quiet(sites=2, racks_per_site=2, non_flow_sites=1), **overrides)


def timeout(objekt: str, workflow: str) -> dict[str, Any]:
    # common.go:1186 (main :1219): objectType, workflowName, then the context's error text.
    return nico(
        f"Failed to perform {objekt} {workflow} - timeout occurred executing workflow on Site: "
        "context deadline exceeded"
    )


async def put_faults(w: World, site_id: str, **faults: Any) -> httpx.Response:
    return await w.http.put(f"/_sim/sites/{site_id}/faults", json=faults)


async def post(w: World, path: str, payload: dict[str, Any]) -> httpx.Response:
    return await w.http.post(BASE + path, json=payload, headers=AUTH)


async def patch(w: World, path: str, payload: dict[str, Any]) -> httpx.Response:
    return await w.http.patch(BASE + path, json=payload, headers=AUTH)


# --- the control API ----------------------------------------------------------------------------


async def test_site_faults_control_api(w: World) -> None:
    url = f"/_sim/sites/{w.site_id}/faults"
    defaults: dict[str, Any] = {
        "silent": False,
        "workflowTimeoutSeconds": 50.0,  # common/pkg/util/workflow.go:14 WorkflowContextTimeout
        "siteStatus": None,
        "offlineAfterSeconds": 900.0,  # workflow/pkg/activity/site/site.go:36
        "agentLacks": [],
        "flowLacks": [],
        "clockSkewSeconds": 0.0,
        "unorderedInventory": False,
        "emptyCancel": False,
    }
    assert (await w.http.get(url)).json() == defaults
    changed = await w.http.put(url, json={"silent": True, "clockSkewSeconds": 8, "agentLacks": ["runs"]})
    assert changed.status_code == 200
    expected = {**defaults, "silent": True, "clockSkewSeconds": 8.0, "agentLacks": ["runs"]}
    assert changed.json() == expected
    assert (await w.http.get(url)).json() == expected  # partial updates keep the rest

    for bad in (
        {"bogus": True},
        {"silent": "yes"},
        {"silent": 1},
        {"clockSkewSeconds": "8"},
        {"clockSkewSeconds": True},
        {"siteStatus": "Online"},
        {"agentLacks": ["tasks"]},
        {"flowLacks": ["rules"]},
        {"workflowTimeoutSeconds": -1},
    ):
        refused = await w.http.put(url, json=bad)
        assert refused.status_code == 400, bad
        assert set(refused.json()) == {"error"}
    assert (await w.http.get(url)).json() == expected  # a refused change changes nothing

    missing = "00000000-0000-4000-8000-000000000001"
    assert (await w.http.get(f"/_sim/sites/{missing}/faults")).status_code == 404
    assert (await w.http.put(f"/_sim/sites/{missing}/faults", json={"silent": True})).status_code == 404
    # The site actions beside it are untouched.
    assert (await w.http.post(f"/_sim/sites/{w.site_id}/up")).status_code == 200


async def test_site_faults_at_start_are_keyed_by_flow_site_index() -> None:
    faults = {1: SiteFaults(silent=True, workflow_timeout_s=FAST), 0: SiteFaults(clock_skew_s=-2.5)}
    async for w in make_world(two_sites(site_faults=faults)):
        first, second = w.sim.flow_site_ids()
        assert w.sim.faults_of(first).clock_skew_s == -2.5
        assert w.sim.faults_of(second).silent
        truth = {s["id"]: s for s in (await w.http.get("/_sim/truth")).json()["sites"]}
        assert truth[first]["clockSkewSeconds"] == -2.5 and truth[second]["faults"]["silent"] is True
        assert truth[first]["status"] == "Registered"
    with pytest.raises(ValueError, match="no Flow site 2"):
        two_sites(site_faults={2: SiteFaults(silent=True)})


# --- silent: the agent stopped polling Temporal -------------------------------------------------


async def test_silent_site_hangs_while_other_sites_answer_at_once() -> None:
    async for w in make_world(two_sites()):
        silent, healthy = w.sim.flow_site_ids()
        await put_faults(w, silent, silent=True, workflowTimeoutSeconds=0.5)

        started = time.monotonic()
        hanging = asyncio.create_task(w.get("/rack", siteId=silent))
        await asyncio.sleep(0.05)
        quick = await w.get("/rack", siteId=healthy)
        quick_done = time.monotonic() - started
        assert quick.status_code == 200 and len(quick.json()) == 2
        assert not hanging.done()  # the silent site's call is still waiting for its workflow
        slow = await hanging
        slow_done = time.monotonic() - started
        assert (slow.status_code, slow.json()) == (500, timeout("Rack", "GetRacks"))
        assert slow_done >= 0.5 > quick_done


async def test_checks_before_the_workflow_answer_at_once() -> None:
    """Auth, unknown keys, siteId, org, the site and its Flow flag come before the workflow."""
    async for w in make_world(two_sites()):
        silent = w.sim.flow_site_ids()[0]
        non_flow = next(s.id for s in w.sim.sites() if not s.flow)
        await put_faults(w, silent, silent=True, workflowTimeoutSeconds=30.0)
        missing = "00000000-0000-4000-8000-000000000001"
        cases = [
            (w.http.get(f"{BASE}/rack", params={"siteId": silent}), 401),
            (w.get("/rack", siteId=silent, bogus="1"), 400),
            (w.get("/rack"), 400),
            (w.http.get("/v2/org/other/nico/rack", params={"siteId": silent}, headers=AUTH), 403),
            (w.get("/rack", siteId=missing), 400),
            (w.get("/rack", siteId=non_flow), 412),
            (w.get("/rack", siteId=silent, pageSize="500"), 400),  # paging is validated before Flow
            (w.get("/task/not-a-uuid", siteId=silent), 400),
            (w.get("/tray/not-a-uuid", siteId=silent), 400),
            (patch(w, f"/rack/{w.rack_id}/power", {"siteId": silent, "state": "sideways"}), 400),
        ]
        started = time.monotonic()
        for call, status in cases:
            assert (await call).status_code == status
        assert time.monotonic() - started < 5.0


async def test_every_flow_call_of_a_silent_site_times_out_with_its_workflow() -> None:
    """The objectType/workflowName pairs of handler/{task,rack,tray,taskrule,taskrun}.go and the
    power, firmware and bring-up helpers (common.go:1832-2024)."""
    async for w in make_world(two_sites(task_runs=True)):
        site = w.site_id
        rack, tray = w.rack_id, w.tray(ComponentType.COMPUTE)
        task_id = w.sim.create_task(site, rack, "power_on")
        rule_id = w.sim.runs.site_rules(site)[0].id if w.sim.runs else ""
        run_id = w.sim.create_task_run(site, version="1.2.3")
        await put_faults(w, site, silent=True, workflowTimeoutSeconds=FAST)
        calls = [
            (w.get(f"/rack/{rack}/task", siteId=site), "Task", "GetTasks"),
            (w.get(f"/tray/{tray}/task", siteId=site), "Task", "GetTasks"),
            (w.get(f"/task/{task_id}", siteId=site), "Task", "GetTask"),
            (w.get(f"/rack/task/{task_id}", siteId=site), "Task", "GetTask"),
            (post(w, f"/task/{task_id}/cancel", {"siteId": site}), "Task", "CancelTask"),
            (w.get("/rack", siteId=site), "Rack", "GetRacks"),
            (w.get(f"/rack/{rack}", siteId=site), "Rack", "GetRack"),
            (w.get("/tray", siteId=site), "Tray", "GetTrays"),
            (w.get(f"/tray/{tray}", siteId=site), "Tray", "GetTray"),
            (patch(w, f"/rack/{rack}/power", {"siteId": site, "state": "on"}), "Rack", "PowerOnRack"),
            (patch(w, f"/rack/{rack}/power", {"siteId": site, "state": "forceoff"}), "Rack", "PowerOffRack"),
            (patch(w, f"/tray/{tray}/power", {"siteId": site, "state": "cycle"}), "Tray", "PowerResetRack"),
            (patch(w, f"/rack/{rack}/firmware", {"siteId": site}), "Rack", "UpgradeFirmware"),
            (patch(w, f"/tray/{tray}/firmware", {"siteId": site}), "Tray", "UpgradeFirmware"),
            (post(w, f"/rack/{rack}/bringup", {"siteId": site}), "Rack", "BringUpRack"),
            (w.get("/task/rule", siteId=site), "TaskRule", "GetAllTaskRules"),
            (w.get(f"/task/rule/{rule_id}", siteId=site), "TaskRule", "GetTaskRule"),
            (w.get("/task/run", siteId=site), "Run", "GetAllTaskRuns"),
            (w.get(f"/task/run/{run_id}", siteId=site), "Run", "GetTaskRun"),
            (w.get(f"/task/run/{run_id}/target", siteId=site), "Run", "GetAllTaskRunTargets"),
            (post(w, f"/task/run/{run_id}/pause", {"siteId": site}), "Run", "PauseTaskRun"),
            (post(w, f"/task/run/{run_id}/resume", {"siteId": site}), "Run", "ResumeTaskRun"),
            (post(w, f"/task/run/{run_id}/advance", {"siteId": site}), "Run", "AdvanceTaskRunPhase"),
            (post(w, f"/task/run/{run_id}/cancel", {"siteId": site}), "Run", "CancelTaskRun"),
        ]
        for call, objekt, workflow in calls:
            response = await call
            assert (response.status_code, response.json()) == (500, timeout(objekt, workflow)), workflow
        # Nothing reached Flow: the task was not cancelled, no write created a task.
        truth = (await w.http.get("/_sim/truth")).json()
        assert len(truth["tasks"]) == 1 and truth["tasks"][0]["status"] != "Terminated"
        # Site lists are the REST server's own: no workflow, no hang.
        assert (await w.get("/site")).status_code == 200
        await put_faults(w, site, silent=False)
        assert (await w.get("/rack", siteId=site)).status_code == 200


# --- agentLacks / flowLacks ----------------------------------------------------------------------


async def test_an_agent_without_run_or_rule_workflows_hangs_only_those() -> None:
    """site-agent/pkg/components/managers/flowgrpc/subscriber.go: v2.0 registers no run workflows,
    v2.0.0-pr no rule workflows; the others are registered by every v2 agent."""
    async for w in make_world(two_sites(task_runs=True)):
        site, other = w.sim.flow_site_ids()
        rule_id = w.sim.runs.site_rules(site)[0].id if w.sim.runs else ""
        await put_faults(w, site, agentLacks=["runs"], workflowTimeoutSeconds=FAST)
        response = await w.get("/task/run", siteId=site)
        assert (response.status_code, response.json()) == (500, timeout("Run", "GetAllTaskRuns"))
        created = await post(
            w,
            "/task/run",
            {
                "siteId": site,
                "name": "fw",
                "selector": {"percentage": {"percent": 100}},
                "options": {
                    "maxConcurrentTargets": 1,
                    "safetyPolicy": {"gates": [{"failureRate": {"thresholdPercent": 50}}]},
                },
                "operation": {"firmware": {"version": "1.2.3"}},
            },
        )
        assert (created.status_code, created.json()) == (500, timeout("Run", "CreateTaskRun"))
        assert (await w.get("/task/rule", siteId=site)).status_code == 200
        assert (await w.get("/rack", siteId=site)).status_code == 200
        assert (await w.rack_tasks()).status_code == 200
        assert (await w.get("/task/run", siteId=other)).status_code == 200

        await put_faults(w, site, agentLacks=["rules"])
        assert (await w.get("/task/run", siteId=site)).status_code == 200
        listing = await w.get("/task/rule", siteId=site)
        assert (listing.status_code, listing.json()) == (500, timeout("TaskRule", "GetAllTaskRules"))
        single = await w.get(f"/task/rule/{rule_id}", siteId=site)
        assert (single.status_code, single.json()) == (500, timeout("TaskRule", "GetTaskRule"))


def unimplemented(action: str, desc: str = "operation run API is not implemented") -> dict[str, Any]:
    # taskrun.go main :303, :410, :530, :592 around UnwrapWorkflowError's NICoUnimplemented -> 501.
    return nico(
        f"Failed to execute Run {action} workflow on Site: rpc error: code = Unimplemented desc = {desc} "
        "(type: Error, retryable: true)"
    )


async def test_a_v2_flow_behind_a_newer_agent_answers_501_for_runs() -> None:
    """release/v2.0 flow/internal/service/server_impl_operation_run.go:18, :63-103: every run RPC
    but create is Unimplemented; AdvanceOperationRunPhase is not in v2.0's flow.proto at all."""
    async for w in make_world(config(task_runs=True)):
        site = w.site_id
        run_id = w.sim.create_task_run(site, version="1.2.3")
        await put_faults(w, site, flowLacks=["runs"])
        cases = [
            (w.get("/task/run", siteId=site), "list", None),
            (w.get(f"/task/run/{run_id}", siteId=site), "retrieval", None),
            (w.get(f"/task/run/{run_id}/target", siteId=site), "targets", None),
            (post(w, f"/task/run/{run_id}/pause", {"siteId": site}), "pause", None),
            (post(w, f"/task/run/{run_id}/resume", {"siteId": site}), "resume", None),
            (post(w, f"/task/run/{run_id}/cancel", {"siteId": site}), "cancel", None),
            (
                post(w, f"/task/run/{run_id}/advance", {"siteId": site}),
                "advance",
                "unknown method AdvanceOperationRunPhase for service v1.Flow",
            ),
        ]
        for call, action, desc in cases:
            response = await call
            expected = unimplemented(action) if desc is None else unimplemented(action, desc)
            assert (response.status_code, response.json()) == (501, expected), action
        # Request validation still comes first.
        assert (await w.get("/task/run", siteId=site, status="Nope")).status_code == 400
        # Create is implemented on v2.0 (:20-41), but v2.0 has no run dispatcher: the run never moves.
        created = await post(
            w,
            "/task/run",
            {
                "siteId": site,
                "name": "fw",
                "selector": {"percentage": {"percent": 100}},
                "options": {
                    "maxConcurrentTargets": 1,
                    "safetyPolicy": {"gates": [{"failureRate": {"thresholdPercent": 50}}]},
                },
                "operation": {"firmware": {"version": "1.2.3"}},
            },
        )
        assert created.status_code == 201
        w.advance(120)
        runs = {r["id"]: r for r in (await w.http.get("/_sim/truth")).json()["taskRuns"]}
        assert runs[created.json()["id"]]["status"] == "Pending"
        # Tasks and rules are untouched.
        assert (await w.get("/task/rule", siteId=site)).status_code == 200
        await put_faults(w, site, flowLacks=[])
        assert (await w.get("/task/run", siteId=site)).status_code == 200


# --- site status and the inventory monitor ------------------------------------------------------


async def site_row(w: World, site_id: str) -> dict[str, Any]:
    response = await w.get(f"/site/{site_id}")
    assert response.status_code == 200
    row: dict[str, Any] = response.json()
    return row


async def test_a_silent_site_turns_error_at_the_first_monitor_tick_past_15_minutes(w: World) -> None:
    start = w.sim.now()
    await put_faults(w, w.site_id, silent=True)
    # Silence from 18:00:00; the threshold is passed after 18:15:00 and the 3-minute monitor
    # (workflow/pkg/workflow/site/monitor.go:62) next runs at 18:18:00.
    flip = monitor_flip(start, 900.0)
    assert flip == start + timedelta(minutes=18)
    w.advance(18 * 60 - 1)
    row = await site_row(w, w.site_id)
    assert (row["status"], row["isOnline"]) == ("Registered", True)
    w.advance(1)
    row = await site_row(w, w.site_id)
    # model/site.go:270: isOnline is status == Registered.
    assert (row["status"], row["isOnline"]) == ("Error", False)
    entry = row["statusHistory"][0]
    assert entry == {
        "status": "Error",
        "message": "Site hasn't received inventory for longer than threshold period of: 15 minutes",
        "created": "2026-06-08T18:18:00Z",
        "updated": "2026-06-08T18:18:00Z",
    }
    assert row["updated"] == "2026-06-08T18:18:00Z"
    # GET /site's status filter (site.go:774-786) sees it.
    errors = (await w.get("/site", status="Error")).json()
    assert [s["id"] for s in errors] == [w.site_id]
    registered = (await w.get("/site", status="Registered")).json()
    assert w.site_id not in {s["id"] for s in registered} and len(registered) == 1

    # Inventory resumes: Registered again (machine.go:150-175), the Error row kept.
    w.advance(60)
    await put_faults(w, w.site_id, silent=False)
    row = await site_row(w, w.site_id)
    assert (row["status"], row["isOnline"]) == ("Registered", True)
    assert [(e["status"], e["message"]) for e in row["statusHistory"][:2]] == [
        ("Registered", "Site has been successfully paired"),
        ("Error", "Site hasn't received inventory for longer than threshold period of: 15 minutes"),
    ]
    assert row["statusHistory"][0]["created"] == "2026-06-08T18:19:00Z"


async def test_site_status_set_by_hand_and_the_status_filter(w: World) -> None:
    await put_faults(w, w.site_id, siteStatus="Pending")
    row = await site_row(w, w.site_id)
    assert (row["status"], row["isOnline"]) == ("Pending", False)
    assert row["statusHistory"][0]["message"] == "Registration token renewed, pending pairing"
    listed = {s["id"]: s for s in (await w.get("/site")).json()}
    assert listed[w.site_id]["status"] == "Pending" and listed[w.site_id]["isOnline"] is False
    assert [s["id"] for s in (await w.get("/site", status="Pending")).json()] == [w.site_id]
    both = (await w.http.get(f"{BASE}/site?status=Pending&status=Registered", headers=AUTH)).json()
    assert len(both) == 2
    bad = await w.get("/site", status="registered")  # case-sensitive, SiteStatusMap
    assert (bad.status_code, bad.json()) == (
        400,
        nico("Invalid Status value in query", {"status": "registered"}),
    )

    # An explicit status wins over the monitor; a shorter threshold flips sooner.
    await put_faults(w, w.site_id, siteStatus=None, silent=True, offlineAfterSeconds=60)
    assert (await site_row(w, w.site_id))["status"] == "Registered"
    w.advance(180)
    row = await site_row(w, w.site_id)
    assert row["status"] == "Error"
    assert row["statusHistory"][0]["message"].endswith("threshold period of: 1 minutes")
    # Flow calls are unaffected by the status: only silence hangs them (no handler checks it).
    await put_faults(w, w.site_id, silent=False, siteStatus="Error")
    assert (await w.get("/rack", siteId=w.site_id)).status_code == 200


# --- clock skew ----------------------------------------------------------------------------------


def shifted(stamp: str, seconds: float) -> str:
    value = datetime.fromisoformat(stamp.replace("Z", "+00:00")) + timedelta(seconds=seconds)
    text = value.strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


async def test_clock_skew_shifts_what_the_site_writes_but_not_date_or_truth() -> None:
    async for w in make_world(config(task_runs=True)):
        task_id = w.sim.create_task(w.site_id, w.rack_id, "firmware_update", stage_seconds=100)
        run_id = w.sim.create_task_run(w.site_id, version="1.2.3")
        w.advance(12.5)
        truth_before = (await w.http.get("/_sim/truth")).json()
        (task_truth,) = [t for t in truth_before["tasks"] if t["id"] == task_id]
        plain = await w.task(task_truth["id"])
        plain_run = (await w.get(f"/task/run/{run_id}", siteId=w.site_id)).json()
        plain_targets = (await w.get(f"/task/run/{run_id}/target", siteId=w.site_id)).json()
        plain_rules = (await w.get("/task/rule", siteId=w.site_id)).json()

        await put_faults(w, w.site_id, clockSkewSeconds=8)
        response = await w.get(f"/task/{task_truth['id']}", siteId=w.site_id)
        task = response.json()
        for key in ("created", "updated", "started"):
            assert task[key] == shifted(plain[key], 8), key
        assert task["finished"] is None
        stage = task["report"]["stages"][0]
        assert stage["startedAt"] == shifted(plain["report"]["stages"][0]["startedAt"], 8)
        assert stage["steps"][0]["startedAt"] == shifted(
            plain["report"]["stages"][0]["steps"][0]["startedAt"], 8
        )
        listed = (await w.rack_tasks(includeReport="true")).json()
        assert {t["created"] for t in listed} >= {task["created"]}
        # The Date header is the REST server's clock: unshifted.
        assert response.headers["date"] == format_datetime(w.sim.now(), usegmt=True)
        # Runs, their targets and rules are the site's rows too.
        run = (await w.get(f"/task/run/{run_id}", siteId=w.site_id)).json()
        for key in ("created", "updated", "started"):
            assert run[key] == shifted(plain_run[key], 8), key
        targets = (await w.get(f"/task/run/{run_id}/target", siteId=w.site_id)).json()
        assert targets[0]["created"] == shifted(plain_targets[0]["created"], 8)
        rules = (await w.get("/task/rule", siteId=w.site_id)).json()
        assert rules[0]["created"] == shifted(plain_rules[0]["created"], 8)
        # The truth keeps true time and says the skew.
        truth = (await w.http.get("/_sim/truth")).json()
        assert (
            next(t for t in truth["tasks"] if t["id"] == task_truth["id"])["created"] == task_truth["created"]
        )
        assert truth["taskRuns"][0]["created"] == plain_run["created"]
        assert truth["sites"][0]["clockSkewSeconds"] == 8.0

        await put_faults(w, w.site_id, clockSkewSeconds=-3.5)
        behind = await w.task(task_truth["id"])
        assert behind["created"] == shifted(plain["created"], -3.5)


# --- unordered inventory -------------------------------------------------------------------------


async def page_ids(w: World, path: str, site_id: str, pages: int, **params: Any) -> list[str]:
    ids: list[str] = []
    for number in range(1, pages + 1):
        response = await w.get(path, siteId=site_id, pageNumber=number, pageSize=100, **params)
        assert response.status_code == 200
        ids += [row["id"] for row in response.json()]
    return ids


async def test_unordered_inventory_breaks_offset_paging_without_order_by() -> None:
    """flow/internal/db/model/rack.go:260-261, query.go:93-99: ORDER BY only from orderBy."""
    cfg = config(scenario=ScenarioConfig.quiet(sites=1, racks_per_site=120, non_flow_sites=1))
    async for w in make_world(cfg):
        everything = {rack.id for rack in w.sim.racks(w.site_id)}
        stable = await page_ids(w, "/rack", w.site_id, 2)
        assert sorted(stable) == sorted(everything)  # without the fault: one order, complete paging

        await put_faults(w, w.site_id, unorderedInventory=True)
        paged = await page_ids(w, "/rack", w.site_id, 2)
        assert len(paged) == 120
        assert len(set(paged)) < 120  # some racks twice, so others never
        by_name = await page_ids(w, "/rack", w.site_id, 2, orderBy="NAME_ASC")
        names = {rack.id: rack.name for rack in w.sim.racks(w.site_id)}
        assert set(by_name) == everything and [names[i] for i in by_name] == sorted(names.values())
        # Every rack has the same model: ties, in any order (Postgres leaves them unspecified).
        first = (await w.get("/rack", siteId=w.site_id, orderBy="MODEL_ASC", pageSize=100)).json()
        again = (await w.get("/rack", siteId=w.site_id, orderBy="MODEL_ASC", pageSize=100)).json()
        assert [r["id"] for r in first] != [r["id"] for r in again]

        # Trays without a target spec are SQL too; with rackId Flow slices in memory, stable.
        whole = [t["id"] for t in (await w.get("/tray", siteId=w.site_id, pageSize=100)).json()]
        whole2 = [t["id"] for t in (await w.get("/tray", siteId=w.site_id, pageSize=100)).json()]
        assert whole != whole2
        rack_trays = [t["id"] for t in (await w.get("/tray", siteId=w.site_id, rackId=w.rack_id)).json()]
        rack_trays2 = [t["id"] for t in (await w.get("/tray", siteId=w.site_id, rackId=w.rack_id)).json()]
        assert rack_trays == rack_trays2
        typed = await w.get("/tray", siteId=w.site_id, rackId=w.rack_id, orderBy="TYPE_DESC", pageSize=35)
        types = [t["type"] for t in typed.json()]
        assert types == sorted(types, reverse=True)


async def test_order_by_is_validated_as_pagination_go_does(w: World) -> None:
    """pagination.go:28 (regex), :85-92 (field map); model/rack.go:60-64, model/tray.go:96-101."""
    regex = {"OrderByStr": "must be in the format of field_ASC or field_DESC"}
    for value in ("name_ASC", "NAME", "NAME_asc"):
        response = await w.get("/rack", siteId=w.site_id, orderBy=value)
        assert (response.status_code, response.json()) == (
            400,
            nico("Failed to validate pagination request data", regex),
        )
    field = await w.get("/rack", siteId=w.site_id, orderBy="TYPE_ASC")  # no type on racks
    assert (field.status_code, field.json()) == (400, nico("Failed to validate pagination request data", {}))
    for value in ("NAME_ASC", "MANUFACTURER_DESC", "MODEL_ASC"):
        ok = await w.get("/rack", siteId=w.site_id, orderBy=value)
        assert ok.status_code == 200 and f'"orderBy":"{value}"' in ok.headers["x-pagination"]
    for value in ("NAME_ASC", "MANUFACTURER_DESC", "MODEL_ASC", "TYPE_DESC"):
        assert (await w.get("/tray", siteId=w.site_id, orderBy=value)).status_code == 200
    assert (await w.get("/tray", siteId=w.site_id, orderBy="SLOT_ASC")).status_code == 400


# --- empty cancel --------------------------------------------------------------------------------


async def test_empty_cancel_answers_the_zero_value_task(w: World) -> None:
    """server_impl.go:954-957: cancelled, the re-read failed, an empty response; model/task.go:201-204."""
    task_id = w.sim.create_task(w.site_id, w.rack_id, "firmware_update", stage_seconds=100)
    w.advance(5)
    await put_faults(w, w.site_id, emptyCancel=True)
    response = await w.cancel(task_id)
    assert response.status_code == 202
    assert response.text.rstrip("\n") == (
        '{"id":"","status":"","description":"","message":"","ruleId":null,"started":null,'
        '"finished":null,"created":"0001-01-01T00:00:00Z","updated":"0001-01-01T00:00:00Z"}'
    )
    task = await w.task(task_id)
    assert (task["status"], task["message"]) == ("Terminated", "Cancelled by user")
    again = await w.cancel(task_id)  # a Terminated task: nil error, then the failed re-read again
    assert again.status_code == 202 and again.json()["id"] == ""
    done = w.sim.create_task(w.site_id, w.rack2_id, "power_on", stage_seconds=1)
    w.advance(60)
    refused = await w.cancel(done)  # a Succeeded task is still Flow's error, before any re-read
    assert refused.status_code == 500


# --- auth and provider --------------------------------------------------------------------------


async def login(w: World, secret: str = "sim-secret") -> httpx.Response:
    return await w.http.post("/auth/login", json={"clientId": "nico-exporter", "clientSecret": secret})


async def test_auth_switches(w: World) -> None:
    assert (await w.http.get("/_sim/auth")).json() == {
        "keycloak": True,
        "serviceAccounts": True,
        "providerAdmin": True,
        "infrastructureProvider": True,
    }
    assert (await w.http.put("/_sim/auth", json={"serviceAccounts": False})).json()[
        "serviceAccounts"
    ] is False
    refused = await login(w)
    # keycloak.go:80-83
    assert (refused.status_code, refused.json()) == (401, nico("Service accounts are not enabled"))
    await w.http.put("/_sim/auth", json={"serviceAccounts": True})
    assert (await login(w)).status_code == 200

    await w.http.put("/_sim/auth", json={"keycloak": False})
    for path in ("/auth/login", "/auth/refresh"):
        gone = await w.http.post(path, json={"clientId": "nico-exporter", "clientSecret": "sim-secret"})
        # server.go:273-284 registers no /auth routes: Echo's own 404 (common/pkg/util/api.go:20).
        assert (gone.status_code, gone.json()) == (404, nico("The requested path was not found"))
    assert (await w.get("/rack", siteId=w.site_id)).status_code == 200  # static tokens still work
    await w.http.put("/_sim/auth", json={"keycloak": True})

    for bad in ({"bogus": True}, {"keycloak": "no"}, {"providerAdmin": 0}):
        assert (await w.http.put("/_sim/auth", json=bad)).status_code == 400


async def test_provider_admin_and_infrastructure_provider_checks_in_go_order(w: World) -> None:
    """task.go:96-110 and the same chain in rack.go, tray.go, taskrule.go: org 403, role 403,
    provider 400, then the site."""
    role = nico("User does not have Provider Admin role with org")
    provider = nico("Failed to retrieve Infrastructure Provider for org")
    await w.http.put("/_sim/auth", json={"providerAdmin": False})
    for response in (
        await w.get("/rack", siteId=w.site_id),
        await w.get(f"/rack/{w.rack_id}", siteId=w.site_id),
        await w.get("/tray", siteId=w.site_id),
        await w.rack_tasks(),
        await w.get("/task/rule", siteId=w.site_id),
        await w.cancel("00000000-0000-4000-8000-000000000001"),
        await patch(w, f"/rack/{w.rack_id}/power", {"siteId": w.site_id, "state": "on"}),
        await w.get("/rack", siteId="00000000-0000-4000-8000-000000000001"),  # before the site
    ):
        assert (response.status_code, response.json()) == (403, role)
    other_org = await w.http.get("/v2/org/other/nico/rack", params={"siteId": w.site_id}, headers=AUTH)
    assert other_org.json() == nico("Failed to validate membership for org: other")
    assert (await w.get("/rack", siteId=w.site_id, bogus="1")).status_code == 400  # keys first
    # The tray list checks the caller before its query keys (tray.go:342-362).
    assert (await w.get("/tray", siteId=w.site_id, bogus="1")).json() == role
    assert (await w.get("/site")).status_code == 200  # the site handlers' own checks

    await w.http.put("/_sim/auth", json={"infrastructureProvider": False})
    assert (await w.get("/rack", siteId=w.site_id)).json() == role  # the role comes first
    await w.http.put("/_sim/auth", json={"providerAdmin": True})
    response = await w.get("/rack", siteId=w.site_id)
    assert (response.status_code, response.json()) == (400, provider)
    missing_task = await w.get("/task/00000000-0000-4000-8000-000000000001", siteId=w.site_id)
    assert (missing_task.status_code, missing_task.json()) == (400, provider)
    await w.http.put("/_sim/auth", json={"infrastructureProvider": True})
    assert (await w.get("/rack", siteId=w.site_id)).status_code == 200


async def test_auth_at_start_and_revocation() -> None:
    async for w in make_world(config(service_accounts=False)):
        assert (await login(w)).json() == nico("Service accounts are not enabled")
    async for w in make_world(config(keycloak=False)):
        assert (await login(w)).status_code == 404

    async for w in make_world(config()):
        tokens = (await login(w)).json()
        bearer = {"Authorization": f"Bearer {tokens['accessToken']}"}
        assert (await w.http.get(f"{BASE}/site", headers=bearer)).status_code == 200
        revoked = await w.http.post("/_sim/auth/revoke", json={"clientId": "nico-exporter"})
        assert revoked.status_code == 200
        dead = await w.http.get(f"{BASE}/site", headers=bearer)
        assert (dead.status_code, dead.json()) == (401, nico("Invalid authorization token in request"))
        again = await login(w)  # keycloak.go:88: the client is gone, service accounts are not
        assert (again.status_code, again.json()) == (
            401,
            nico("Failed to authenticate using client credentials"),
        )
        refresh = await w.http.post("/auth/refresh", json={"refreshToken": tokens["refreshToken"]})
        assert refresh.json() == nico("Invalid or expired refresh token")
        assert (await w.http.post("/_sim/auth/revoke", json={"clientId": "nobody"})).status_code == 404

        assert (await w.get("/site")).status_code == 200
        assert (await w.http.post("/_sim/auth/revoke", json={"token": "sim-token"})).status_code == 200
        static = await w.get("/site")
        assert (static.status_code, static.json()) == (401, nico("Invalid authorization token in request"))
        assert (await w.http.post("/_sim/auth/revoke", json={"token": "sim-token"})).status_code == 404
        for bad in ({"clientId": 1}, {"clientId": "a", "token": "b"}, {"other": "x"}):
            assert (await w.http.post("/_sim/auth/revoke", json=bad)).status_code == 400
        # Without a body: as before, every issued token.
        assert (await w.http.post("/_sim/auth/revoke")).json() == {"revoked": True}


# --- per-site call counts ------------------------------------------------------------------------


async def test_stats_count_calls_per_site() -> None:
    async for w in make_world(two_sites()):
        first, second = w.sim.flow_site_ids()
        await w.http.delete("/_sim/stats")
        await w.get("/rack", siteId=first)  # 200
        await w.http.get(f"{BASE}/rack", params={"siteId": first})  # 401: counted all the same
        await w.http.get("/v2/org/other/nico/rack", params={"siteId": first}, headers=AUTH)  # 403
        await w.get("/rack", siteId="not-a-uuid")  # 400
        await post(w, "/task/00000000-0000-4000-8000-000000000001/cancel", {"siteId": second})
        second_rack = w.sim.racks(second)[0].id
        power = await patch(w, f"/rack/{second_rack}/power", {"siteId": second, "state": "on"})
        assert power.status_code == 200
        await w.get("/site")  # names no site
        await w.http.get("/_sim/truth")  # not /v2
        stats = (await w.http.get("/_sim/stats")).json()
        assert stats["sites"] == {first: 3, second: 2, "not-a-uuid": 1}
        # The write's body, read for the count, still reached the handler.
        truth = (await w.http.get("/_sim/truth")).json()
        assert [t["rackId"] for t in truth["tasks"]] == [second_rack]
        await w.http.delete("/_sim/stats")
        assert (await w.http.get("/_sim/stats")).json()["sites"] == {}


# --- the simulate flag ---------------------------------------------------------------------------


def test_site_fault_specs() -> None:
    assert parse_site_fault("1:silent=true,siteStatus=Error") == (1, {"silent": True, "siteStatus": "Error"})
    assert parse_site_fault("2:clockSkewSeconds=8") == (2, {"clockSkewSeconds": 8.0})
    assert parse_site_fault("0:agentLacks=runs+rules,siteStatus=null") == (
        0,
        {"agentLacks": ["runs", "rules"], "siteStatus": None},
    )
    for bad in (
        "silent=true",
        "x:silent=true",
        "1:",
        "1:silent",
        "1:bogus=1",
        "1:silent=maybe",
        "1:siteStatus=Up",
    ):
        with pytest.raises(ValueError):
            parse_site_fault(bad)


def test_simulate_flags() -> None:
    from exporter.cli import _simulation, build_parser

    args = build_parser().parse_args(
        [
            "simulate",
            "--sites",
            "3",
            "--site-fault",
            "1:silent=true,siteStatus=Error",
            "--site-fault",
            "2:clockSkewSeconds=8",
            "--site-fault",
            "2:agentLacks=runs",
            "--no-service-accounts",
            "--quiet-scenario",
        ]
    )
    sim = _simulation(args)
    flow = sim.flow_site_ids()
    assert sim.faults_of(flow[0]) == SiteFaults()
    assert sim.faults_of(flow[1]) == SiteFaults(silent=True, site_status="Error")
    assert sim.faults_of(flow[2]) == SiteFaults(clock_skew_s=8.0, agent_lacks=("runs",))
    assert not sim.tokens.service_accounts_enabled and sim.access.keycloak
    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulate", "--site-fault", "1:bogus=1"])
    with pytest.raises(SystemExit):
        _simulation(build_parser().parse_args(["simulate", "--sites", "2", "--site-fault", "2:silent=true"]))


async def test_site_counts_bodies_and_silent_hangs_over_a_socket() -> None:
    """The body read for the per-site count is replayed to the handler under uvicorn too, and a
    silent site's hang does not hold up other connections."""
    sim = Simulation(two_sites(), clock=ManualClock(datetime.fromisoformat("2026-06-08T18:00:00+00:00")))
    first, second = sim.flow_site_ids()
    sim.set_site_faults(first, {"silent": True, "workflowTimeoutSeconds": 0.5})
    rack = sim.racks(second)[0].id
    with serve_app(create_app(sim)) as url:
        async with httpx.AsyncClient(base_url=url, headers=AUTH) as client:
            hanging = asyncio.create_task(client.get(f"{BASE}/rack", params={"siteId": first}))
            await asyncio.sleep(0.05)
            written = await client.patch(f"{BASE}/rack/{rack}/power", json={"siteId": second, "state": "on"})
            assert written.status_code == 200 and len(written.json()["taskIds"]) == 1
            assert not hanging.done()
            assert (await hanging).json() == timeout("Rack", "GetRacks")
            stats = (await client.get("/_sim/stats")).json()
    assert stats["sites"] == {first: 1, second: 1}
