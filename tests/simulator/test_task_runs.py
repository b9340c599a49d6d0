"""Task Runs and Task Rules as NICo ``main`` serves them (docs/simulator.md, *Task Runs and
Operation Rules*). Paths below are relative to ``rest-api/`` at ``main``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from exporter.simulator import ManualClock, ScenarioConfig, Simulation, SimulatorConfig
from exporter.simulator.taskruns import ChildPlan, SafetyGate
from tests.simulator.world import AUTH, BASE, World, config, make_world, nico

ZERO = "0001-01-01T00:00:00Z"
MISSING = "00000000-0000-4000-8000-000000000001"


def main_config(racks: int = 4, **overrides: Any) -> SimulatorConfig:
    return config(
        task_runs=True,
        scenario=ScenarioConfig.quiet(sites=1, racks_per_site=racks, non_flow_sites=1),
        **overrides,
    )


@pytest.fixture
async def m() -> Any:
    async for world in make_world(main_config()):
        yield world


def body(w: World, **overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "siteId": w.site_id,
        "name": "fw-rollout",
        "description": "fleet firmware",
        "selector": {"percentage": {"percent": 100, "seed": "s"}},
        "options": {
            "maxConcurrentTargets": 1,
            "safetyPolicy": {"gates": [{"failureRate": {"thresholdPercent": 50}}]},
        },
        "operation": {"firmware": {"version": "1.2.3"}},
    }
    out.update(overrides)
    return out


async def post(w: World, path: str, payload: dict[str, Any]) -> Any:
    return await w.http.post(BASE + path, json=payload, headers=AUTH)


async def run_json(w: World, run_id: str, **params: Any) -> dict[str, Any]:
    response = await w.get(f"/task/run/{run_id}", siteId=w.site_id, **params)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def targets(w: World, run_id: str, **params: Any) -> list[dict[str, Any]]:
    response = await w.get(f"/task/run/{run_id}/target", siteId=w.site_id, **params)
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()
    return result


async def until(w: World, run_id: str, status: str, limit_s: float = 600.0) -> dict[str, Any]:
    for _ in range(int(limit_s)):
        run = await run_json(w, run_id)
        if run["status"] == status:
            return run
        w.advance(1.0)
    raise AssertionError(f"run never reached {status}: {run}")


def new_run(w: World, **kwargs: Any) -> str:
    kwargs.setdefault("version", "1.2.3")
    kwargs.setdefault("child", ChildPlan(stage_seconds=10.0))
    return w.sim.create_task_run(w.site_id, **kwargs)


# --- v2.0 has none of it -------------------------------------------------------------------------


async def test_v2_0_has_no_task_run_routes_but_serves_its_rules(w: World) -> None:
    # Run routes: routes.go main :1060-1098 only; on release/v2.0 the paths fall to the router or
    # /task/{id}. Rule routes: release/v2.0 routes.go:945-970 as on main.
    response = await post(w, "/task/run", {"siteId": w.site_id})
    assert (response.status_code, response.json()) == (404, nico("The requested path could not be found"))
    response = await w.get(f"/task/run/{MISSING}", siteId=w.site_id)
    assert response.status_code == 404
    response = await post(w, f"/task/run/{MISSING}/pause", {"siteId": w.site_id})
    assert response.status_code == 404
    # GET /task/run matches GET /task/{id} (release/v2.0 handler/task.go:74-76, :111-114).
    response = await w.get("/task/run", siteId=w.site_id)
    assert (response.status_code, response.json()) == (400, nico("Invalid Task ID specified in URL"))
    response = await w.get("/task/run", siteId=w.site_id, pageSize=20)
    assert (response.status_code, response.json()) == (
        400,
        nico("Unknown query parameter specified in request: pageSize"),
    )
    assert w.sim.truth_json()["taskRuns"] == []
    rules = await w.get("/task/rule", siteId=w.site_id, pageSize=20)
    assert rules.status_code == 200 and {r["operationCode"] for r in rules.json()} >= {"upgrade"}
    made = await w.http.post("/_sim/rules", json={"siteId": w.site_id, "operation": "firmware_update",
                                                   "name": "switches-first", "isDefault": True,
                                                   "layout": [["NVSwitch"], ["Compute"]]})  # fmt: skip
    assert made.status_code == 201, made.text
    names = {r["name"] for r in (await w.get("/task/rule", siteId=w.site_id)).json()}
    assert "switches-first" in names


async def test_nico_16_has_no_rule_routes() -> None:
    # NVIDIA/infra-controller-rest v1.6.0 api/pkg/api/routes.go has no /task/rule: the GET matches
    # /task/{id}, whose handler refuses the paging key first.
    async for w in make_world(config(nico_version="1.6")):
        response = await w.get("/task/rule", siteId=w.site_id, pageSize=20)
        assert response.status_code == 400 and "Unknown query parameter" in response.json()["message"]
        assert w.sim.runs is None


# --- create --------------------------------------------------------------------------------------


async def test_create_answers_201_with_what_the_handler_knows(m: World) -> None:
    response = await post(m, "/task/run", body(m))
    assert response.status_code == 201, response.text
    created = response.json()
    # handler/taskrun.go:201-208: no operationCode, zero timestamps, Pending/None.
    assert created == {
        "id": created["id"],
        "name": "fw-rollout",
        "description": "fleet firmware",
        "operationType": "FirmwareControl",
        "operationCode": "",
        "status": "Pending",
        "statusReason": "None",
        "statusMessage": "",
        "totalPhases": 0,
        "created": ZERO,
        "updated": ZERO,
        "started": None,
        "finished": None,
    }
    run = await run_json(m, created["id"])
    assert run["operationCode"] == "upgrade" and run["created"] == "2026-06-08T18:00:00Z"
    assert "stats" not in run


async def test_create_validation_messages(m: World) -> None:
    # model/taskrun.go:605-612, 668-679: ozzo's "key: message; ..." with nested parentheses.
    response = await post(m, "/task/run", body(m, name="", options={}, operation={}))
    assert response.json()["message"] == (
        "name: name is required; operation: (firmware: firmware is required.); "
        "options: (maxConcurrentTargets: must be greater than zero.)."
    )
    # Flow requires a selector, which the handler only forwards when given
    # (model/taskrun.go:623-632; flow/internal/converter/protobuf/operationrun_converter.go:96-98).
    response = await post(m, "/task/run", {k: v for k, v in body(m).items() if k != "selector"})
    assert (response.status_code, response.json()["message"]) == (
        400,
        "Failed to execute Run creation workflow on Site: rpc error: code = InvalidArgument desc = "
        "selector is required (type: Error, retryable: true)",
    )
    options = {"maxConcurrentTargets": 1}
    response = await post(m, "/task/run", body(m, options=options))
    assert "options.safety_policy is required" in response.json()["message"]


# --- phases, concurrency, child tasks --------------------------------------------------------------


async def test_phases_concurrency_child_tasks_and_phase_gate(m: World) -> None:
    payload = body(m)
    payload["options"] = {**payload["options"], "phasePolicy": {"equal": {"phaseCount": 2}}}
    run_id = (await post(m, "/task/run", payload)).json()["id"]
    m.sim.plan_run_children(run_id, ChildPlan(stage_seconds=10.0))
    everything = await targets(m, run_id, phaseScope="currentAndCompletedPhases")
    # planner.go:375-385 (equal phases), store.go:254 (phase, sequence order): phase 0 only so far.
    assert [(t["sequenceIndex"], t["phaseIndex"]) for t in everything] == [(0, 0), (1, 0)]
    assert all(t["taskId"] is None and t["status"] == "Pending" for t in everything)
    m.advance(11)  # one dispatcher poll (dispatcher/config.go:9: every 10 s)
    run = await run_json(m, run_id)
    assert (run["status"], run["statusMessage"], run["totalPhases"]) == (
        "Running",
        "submitted 1 operation run target",  # execution.go:154-163
        2,
    )
    current = await targets(m, run_id)
    submitted = [t for t in current if t["status"] == "Submitted"]
    assert len(submitted) == 1 and submitted[0]["message"] == "submitted"  # maxConcurrentTargets 1
    task = await m.task(submitted[0]["taskId"])
    # task/operations/operations.go:272-274 with types.go:104-105.
    assert task["description"] == "FirmwareUpgrade, target version 1.2.3"
    assert task["ruleId"] is None
    listed = (await m.rack_tasks(submitted[0]["rackId"])).json()
    assert [t["id"] for t in listed] == [task["id"]]
    run = await until(m, run_id, "Paused")
    # phase.go:56-60: no autoAdvance -> a phase gate.
    assert (run["statusReason"], run["statusMessage"]) == ("PhaseGate", "waiting for phase advance")
    response = await post(m, f"/task/run/{run_id}/resume", {"siteId": m.site_id})
    assert response.status_code == 412
    assert response.json()["message"].endswith(
        f"desc = operation run is not in a valid state for the requested operation: {run_id} is paused "
        "at a phase gate; use AdvanceOperationRunPhase (type: Error, retryable: true)"
    )
    response = await post(m, f"/task/run/{run_id}/advance", {"siteId": m.site_id, "expectedPhaseIndex": 2})
    assert "expected phase 2, next phase is 1" in response.json()["message"]
    response = await post(m, f"/task/run/{run_id}/advance", {"siteId": m.site_id, "expectedPhaseIndex": 1})
    assert response.status_code == 202
    assert (response.json()["status"], response.json()["statusMessage"]) == ("Running", "advanced to phase 1")
    assert [t["phaseIndex"] for t in await targets(m, run_id, phaseScope="completedPhases")] == [0, 0]
    run = await until(m, run_id, "Completed")
    assert run["statusMessage"] == "operation run completed" and run["finished"] is not None
    stats = (await run_json(m, run_id, includeStats="true"))["stats"]
    assert stats["currentPhase"] == {
        "phaseIndex": 1,
        "selectedTargets": 2,
        "outcomeCounts": {"completed": 2, "failed": 0, "terminated": 0, "skipped": 0},
    }
    assert stats["cumulativePhase"]["selectedTargets"] == 4
    truth = m.sim.truth_json()["taskRuns"][0]
    assert all(t["taskId"] in {task["id"] for task in m.sim.truth_json()["tasks"]} for t in truth["targets"])


async def test_max_concurrent_targets_caps_active_children(m: World) -> None:
    run_id = new_run(m, max_concurrent_targets=3)
    m.advance(11)
    current = await targets(m, run_id)
    assert sorted(t["status"] for t in current) == ["Pending", "Submitted", "Submitted", "Submitted"]
    assert (await run_json(m, run_id))["statusMessage"] == "submitted 3 operation run targets"


# --- safety gate, pause, resume, cancel ----------------------------------------------------------


async def test_failure_rate_gate_pauses_run(m: World) -> None:
    run_id = new_run(
        m,
        max_concurrent_targets=2,
        phases=2,
        gates=[SafetyGate("failure_rate", 50)],
        child=ChildPlan(1.0, (), 10.0),
    )
    run = await until(m, run_id, "Paused")
    # dispatcher/safety.go:35-48, stats.go:126-134.
    assert run["statusReason"] == "SafetyGate"
    assert run["statusMessage"].startswith("failure_rate safety gate tripped for current_phase: ")
    assert run["statusMessage"].endswith("threshold 50%)")
    # Resume does not check the gates (manual_controls.go:449-451): the next poll pauses again.
    response = await post(m, f"/task/run/{run_id}/resume", {"siteId": m.site_id})
    assert (response.status_code, response.json()["status"]) == (202, "Running")
    m.advance(10)
    assert (await run_json(m, run_id))["statusReason"] == "SafetyGate"


async def test_failure_count_gate(m: World) -> None:
    run_id = new_run(
        m, max_concurrent_targets=4, gates=[SafetyGate("failure_count", 1)], child=ChildPlan(0, (0,), 10)
    )
    run = await until(m, run_id, "Paused")
    message = run["statusMessage"]
    assert message.startswith("failure_count safety gate tripped for current_phase: ")
    assert message.endswith("/4 targets failed (threshold 1)")  # stats.go:135-143


async def test_operator_pause_resume_and_cancel(m: World) -> None:
    run_id = new_run(m, max_concurrent_targets=2)
    m.advance(11)
    response = await post(m, f"/task/run/{run_id}/pause", {"siteId": m.site_id})
    assert (response.status_code, response.json()["statusReason"]) == (202, "OperatorPaused")
    assert response.json()["statusMessage"] == "operation run paused by operator"
    assert "stats" not in response.json()
    response = await post(m, f"/task/run/{run_id}/advance", {"siteId": m.site_id})
    assert "is not paused at a phase gate" in response.json()["message"]
    response = await post(m, f"/task/run/{run_id}/resume", {"siteId": m.site_id})
    assert (response.json()["status"], response.json()["statusMessage"]) == (
        "Running",
        "operation run resumed",
    )
    response = await post(m, f"/task/run/{run_id}/cancel", {"siteId": m.site_id, "reason": " bad image "})
    assert (response.json()["status"], response.json()["statusMessage"]) == (
        "Cancelled",
        "operation run cancelled: bad image",
    )
    # manual_controls.go:167-201: child tasks are cancelled, the targets are left as they were.
    for target in await targets(m, run_id):
        if target["taskId"]:
            assert (await m.task(target["taskId"]))["status"] == "Terminated"
            assert target["status"] == "Submitted"
    response = await post(m, f"/task/run/{run_id}/pause", {"siteId": m.site_id})
    assert response.status_code == 412 and "is in terminal state cancelled" in response.json()["message"]
    response = await post(m, f"/task/run/{run_id}/cancel", {"siteId": m.site_id})
    assert response.status_code == 202  # terminal runs are returned unchanged (:138-140)


async def test_conflict_retry_timeout_pauses_run(m: World) -> None:
    for rack in m.sim.racks(m.site_id):
        m.sim.create_task(m.site_id, rack.id, "firmware_update", outcome="stuck")
    payload = body(m)
    payload["options"] = {
        **payload["options"],
        "maxConcurrentTargets": 4,
        "conflictPolicy": {
            "retry": {"retryTimeout": "2m", "initialRetryDelay": "10s", "maxRetryDelay": "20s"}
        },
    }
    run_id = (await post(m, "/task/run", payload)).json()["id"]
    m.advance(11)
    blocked = await targets(m, run_id, status="Blocked")
    assert len(blocked) == 4
    # task/manager/manager.go:443-446 via dispatcher/conflict_policy.go:74.
    assert (
        blocked[0]["message"] == f"rack {blocked[0]['rackId']} already has a conflicting task: rack conflict"
    )
    assert (await run_json(m, run_id))["statusMessage"] == "4 targets waiting on rack conflicts"
    run = await until(m, run_id, "Paused", limit_s=200)
    assert run["statusReason"] == "ConflictRetryTimeout"
    assert run["statusMessage"].endswith("blocked by rack conflict for 2m0s")  # conflict_policy.go:152-156


# --- reads ---------------------------------------------------------------------------------------


async def test_missing_run(m: World) -> None:
    response = await m.get(f"/task/run/{MISSING}", siteId=m.site_id)
    # flow queries.go:31-33 -> NotFound -> 404 (common.go UnwrapWorkflowError); never "Run not found".
    assert (response.status_code, response.json()["message"]) == (
        404,
        "Failed to execute Run retrieval workflow on Site: rpc error: code = NotFound desc = operation run "
        f"not found: {MISSING} (type: Error, retryable: true)",
    )
    assert await targets(m, MISSING) == []  # the target query just filters on run_id
    response = await post(m, f"/task/run/{MISSING}/pause", {"siteId": m.site_id})
    assert response.status_code == 404 and "Run pause workflow" in response.json()["message"]
    response = await m.get("/task/run/nope", siteId=m.site_id)
    assert response.json() == nico("Invalid Run ID specified in URL")


async def test_list_runs_paging_filters_and_checks(m: World) -> None:
    ids = []
    for _ in range(3):
        ids.append(new_run(m))
        m.advance(1)
    response = await m.get("/task/run", siteId=m.site_id, pageSize=2)
    assert [r["id"] for r in response.json()] == ids[::-1][:2]  # store.go:177: created_at DESC
    assert response.headers["X-Pagination"] == '{"pageNumber":1,"pageSize":2,"total":3,"orderBy":null}'
    response = await m.get("/task/run", siteId=m.site_id, status="Pending", operationType="PowerControl")
    assert response.json() == []
    response = await m.get("/task/run", status="Bogus")
    assert response.json()["message"] == (
        "SiteID: siteId query parameter is required; Status: status must be one of "
        "[Pending Running Paused Completed Cancelled Failed CompletedWithFailures]."
    )
    response = await m.get("/task/run", siteId=m.site_id, activeOnly="true")
    assert response.json() == nico("Unknown query parameter specified in request: activeOnly")
    response = await m.get(f"/task/run/{ids[0]}/target", siteId=m.site_id, phaseScope="all")
    assert response.json()["message"] == (
        "PhaseScope: phaseScope must be one of [currentPhase completedPhases currentAndCompletedPhases]."
    )
    response = await m.get(f"/task/run/{ids[0]}", siteId=m.other_site_id)
    assert response.status_code == 412  # prepareRunHandler: Flow not enabled (taskrun.go:93-96)


# --- rules ---------------------------------------------------------------------------------------


async def test_rules_list_and_get(m: World) -> None:
    response = await m.get("/task/rule", siteId=m.site_id, pageSize=5)
    rules = response.json()
    assert len(rules) == 5 and response.headers["X-Pagination"].startswith(
        '{"pageNumber":1,"pageSize":5,"total":7'
    )
    assert all(rule["isDefault"] for rule in rules)
    firmware = (await m.get("/task/rule", siteId=m.site_id, operationType="FirmwareControl")).json()
    assert [r["operationCode"] for r in firmware] == ["upgrade"]
    assert [(s["componentType"], s["stage"]) for s in firmware[0]["ruleDefinition"]["steps"]] == [
        ("Compute", 1),
        ("NVSwitch", 2),
    ]
    assert m.sim.runs is not None
    custom = m.sim.runs.add_rule(m.site_id, m.sim.runs.rules[m.site_id][0].operation, name="custom")
    got = await m.get(f"/task/rule/{custom.id}", siteId=m.site_id)
    assert (got.json()["name"], got.json()["isDefault"]) == ("custom", False)
    response = await m.get(f"/task/rule/{MISSING}", siteId=m.site_id)
    assert (response.status_code, response.json()["message"]) == (
        404,
        "Failed to execute Rule retrieval workflow on Site: rpc error: code = NotFound desc = operation rule "
        "not found (type: Error, retryable: true)",
    )


async def test_submissions_run_the_rule_flows_resolver_picks(m: World) -> None:
    """Rack association, then the operation's default rule (``resolver.go:44-110``,
    ``postgres.go:465-500``); a new default unsets the old one (``postgres.go:399-446``)."""

    def layout_of(data: dict[str, Any]) -> list[list[str]]:
        return [
            sorted({step["componentType"] for step in stage["steps"]}) for stage in data["report"]["stages"]
        ]

    async def firmware_on(rack_id: str) -> list[list[str]]:
        created = await m.http.post("/_sim/tasks", json={"siteId": m.site_id, "rackId": rack_id,
                                                          "operation": "firmware_update"})  # fmt: skip
        assert created.status_code == 201, created.text
        m.advance(1.5)  # Running, with its report
        return layout_of(await m.task(created.json()["taskId"]))

    assert await firmware_on(m.rack_id) == [["Compute"], ["NVSwitch"]]  # the listed default
    made = await m.http.post("/_sim/rules", json={"siteId": m.site_id, "operation": "firmware_update",
                                                   "name": "switches-first", "isDefault": True,
                                                   "layout": [["NVSwitch"], ["Compute"]]})  # fmt: skip
    assert made.status_code == 201, made.text
    rules = (await m.get("/task/rule", siteId=m.site_id, operationType="FirmwareControl")).json()
    assert [(r["name"], r["isDefault"]) for r in rules] == [
        ("switches-first", True),
        ("Default Firmware Upgrade", False),
    ]
    assert await firmware_on(m.rack2_id) == [["NVSwitch"], ["Compute"]]
    racks = m.sim.racks(m.site_id)
    pinned = await m.http.post("/_sim/rules", json={"siteId": m.site_id, "operation": "firmware_update",
                                                     "name": "compute-only", "layout": [["Compute"]],
                                                     "rackIds": [racks[2].id]})  # fmt: skip
    assert pinned.status_code == 201, pinned.text
    assert await firmware_on(racks[2].id) == [["Compute"]]  # its association wins over the default
    assert await firmware_on(racks[3].id) == [["NVSwitch"], ["Compute"]]
    bad = await m.http.post("/_sim/rules", json={"siteId": m.site_id, "operation": "firmware_update",
                                                  "name": "x", "layout": [["Nope"]]})  # fmt: skip
    assert bad.status_code == 400


# --- the preset ----------------------------------------------------------------------------------


def test_rollout_gate_trip_preset() -> None:
    clock = ManualClock(datetime.fromisoformat("2026-06-08T18:00:00+00:00"))
    sim = Simulation(
        SimulatorConfig(task_runs=True, scenario=ScenarioConfig.rollout_gate_trip()), clock=clock
    )
    for _ in range(3600):
        clock.advance(1.0)
        runs = sim.truth_json()["taskRuns"]
        if runs and runs[0]["status"] == "Paused":
            break
    run = runs[0]
    assert (run["status"], run["statusReason"], run["currentPhaseIndex"]) == ("Paused", "SafetyGate", 1)
    assert len(run["targets"]) == 8 and run["totalPhases"] == 4
    phase0 = [t for t in run["targets"] if t["phaseIndex"] == 0]
    assert all(t["status"] == "Completed" and t["taskId"] for t in phase0)
    assert all(t["taskId"] is None for t in run["targets"] if t["phaseIndex"] >= 2)
