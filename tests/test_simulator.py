"""The NICo simulator behaves like the real server (nico-api-notes.md), in-process and exact.

Every test builds its own quiet :class:`Simulation` on a :class:`ManualClock`, creates the tasks
it needs, steps time and asserts what a client would see over HTTP.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import httpx
import pytest

from exporter.models import ComponentType
from exporter.simulator import (
    FaultConfig,
    ManualClock,
    ScenarioConfig,
    Simulation,
    SimulatorConfig,
    create_app,
)
from exporter.simulator.access import RateLimiter
from exporter.simulator.clock import AcceleratedClock
from tests.servers import serve_app

TOKEN = "sim-token"
ORG = "acme"
BASE = f"/v2/org/{ORG}/nico"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# --- helpers -----------------------------------------------------------------------------------


class FakeMonotonic:
    """A hand-stepped real-time source for token expiry and the rate limiter."""

    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


def config(**overrides: Any) -> SimulatorConfig:
    """A quiet, deterministic config: one Flow site with two racks, one non-Flow site."""
    base = SimulatorConfig(
        org=ORG,
        scenario=ScenarioConfig.quiet(sites=1, racks_per_site=2, non_flow_sites=1),
        admit_delay_s=(1.0, 1.0),
        first_stage_delay_s=(1.0, 1.0),
    )
    return replace(base, **overrides)


class World:
    """A simulation, its clock and an HTTP client on its app, with shortcuts."""

    def __init__(self, sim: Simulation, clock: ManualClock, client: httpx.AsyncClient) -> None:
        self.sim = sim
        self.clock = clock
        self.http = client
        site = sim.sites()[0]
        self.site_id = site.id
        self.other_site_id = sim.sites()[1].id
        self.rack_id = sim.racks(site.id)[0].id
        self.rack2_id = sim.racks(site.id)[1].id

    def tray(self, kind: ComponentType, index: int = 0, rack_id: str | None = None) -> str:
        trays = [t for t in self.sim.trays(self.site_id, rack_id or self.rack_id) if t.type is kind]
        return trays[index].id

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.http.get(BASE + path, params=params, headers=AUTH)

    async def task(self, task_id: str) -> dict[str, Any]:
        response = await self.get(f"/task/{task_id}", siteId=self.site_id)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def rack_tasks(self, rack_id: str | None = None, **params: Any) -> httpx.Response:
        return await self.get(f"/rack/{rack_id or self.rack_id}/task", siteId=self.site_id, **params)

    async def cancel(self, task_id: str, path: str = "/task/{id}/cancel") -> httpx.Response:
        url = BASE + path.format(id=task_id)
        return await self.http.post(url, json={"siteId": self.site_id}, headers=AUTH)


def nico(message: str, data: Any = None) -> dict[str, Any]:
    return {"source": "nico", "message": message, "data": data}


async def make_world(cfg: SimulatorConfig | None = None, **kwargs: Any) -> AsyncIterator[World]:
    clock = ManualClock(datetime.fromisoformat("2026-06-08T18:00:00+00:00"))
    sim = Simulation(cfg or config(), clock=clock, **kwargs)
    transport = httpx.ASGITransport(app=create_app(sim))
    async with httpx.AsyncClient(transport=transport, base_url="http://nico.test") as client:
        yield World(sim, clock, client)


@pytest.fixture
async def w() -> AsyncIterator[World]:
    async for world in make_world():
        yield world


# --- auth, org, validation ---------------------------------------------------------------------


async def test_auth_failures_use_the_middleware_messages(w: World) -> None:
    url = f"{BASE}/site"
    cases = [
        ({}, "Request is missing authorization header"),
        ({"Authorization": f"Basic {TOKEN}"}, "Invalid Authorization header format"),
        ({"Authorization": f"Bearer {TOKEN} extra"}, "Invalid Authorization header format"),
        ({"Authorization": "Bearer not-a-token"}, "Invalid authorization token in request"),
    ]
    for headers, message in cases:
        response = await w.http.get(url, headers=headers)
        assert response.status_code == 401
        assert response.json() == nico(message)
    assert (await w.http.get(url, headers=AUTH)).status_code == 200


async def test_login_refresh_and_real_time_expiry() -> None:
    ticks = FakeMonotonic()
    async for w in make_world(config(token_ttl_s=60.0, refresh_ttl_s=120.0), monotonic=ticks):
        bad = await w.http.post("/auth/login", json={"clientId": "nico-exporter", "clientSecret": "wrong"})
        assert bad.status_code == 401
        assert bad.json()["source"] == "nico"

        login = await w.http.post(
            "/auth/login", json={"clientId": "nico-exporter", "clientSecret": "sim-secret"}
        )
        assert login.status_code == 200
        tokens = login.json()
        assert set(tokens) == {"accessToken", "refreshToken", "expiresIn", "tokenType"}
        assert tokens["tokenType"] == "Bearer" and tokens["expiresIn"] == 60
        assert tokens["accessToken"].count(".") == 2  # JWT-shaped
        bearer = {"Authorization": f"Bearer {tokens['accessToken']}"}
        assert (await w.http.get(f"{BASE}/site", headers=bearer)).status_code == 200

        ticks.value += 61  # real time, not simulated time, expires tokens
        expired = await w.http.get(f"{BASE}/site", headers=bearer)
        assert expired.status_code == 401
        assert expired.json() == nico("Invalid authorization token in request")

        refreshed = await w.http.post("/auth/refresh", json={"refreshToken": tokens["refreshToken"]})
        assert refreshed.status_code == 200
        bearer = {"Authorization": f"Bearer {refreshed.json()['accessToken']}"}
        assert (await w.http.get(f"{BASE}/site", headers=bearer)).status_code == 200

        invalid = await w.http.post("/auth/refresh", json={"refreshToken": "nope"})
        assert invalid.status_code == 401
        assert invalid.json() == nico("Invalid or expired refresh token")
        ticks.value += 121
        stale = await w.http.post("/auth/refresh", json={"refreshToken": tokens["refreshToken"]})
        assert stale.json() == nico("Invalid or expired refresh token")


async def test_auth_can_be_disabled() -> None:
    async for w in make_world(config(require_auth=False)):
        assert (await w.http.get(f"{BASE}/site")).status_code == 200


async def test_other_org_is_403(w: World) -> None:
    response = await w.http.get("/v2/org/other/nico/site", headers=AUTH)
    assert response.status_code == 403
    assert response.json() == nico("Failed to validate membership for org: other")


async def test_site_validation_messages(w: World) -> None:
    path = f"/rack/{w.rack_id}/task"
    missing = await w.get(path)
    assert (missing.status_code, missing.json()) == (400, nico("siteId query parameter is required"))
    unknown = await w.get(path, siteId="6f1c2a40-0000-4000-8000-000000000000")
    assert (unknown.status_code, unknown.json()) == (400, nico("Site specified in request does not exist"))
    no_flow = await w.get(path, siteId=w.other_site_id)
    assert (no_flow.status_code, no_flow.json()) == (412, nico("Site does not have NICo Flow enabled"))
    for kind, url in (("Task", "/task/x"), ("Rack", "/rack/x/task"), ("Tray", "/tray/x/task")):
        bad = await w.get(url, siteId=w.site_id)
        assert (bad.status_code, bad.json()) == (400, nico(f"Invalid {kind} ID specified in URL"))
    not_found = await w.get("/task/6f1c2a40-0000-4000-8000-000000000000", siteId=w.site_id)
    assert (not_found.status_code, not_found.json()) == (404, nico("Task not found"))
    rack = await w.get("/rack/6f1c2a40-0000-4000-8000-000000000000/task", siteId=w.site_id)
    assert rack.status_code == 404 and rack.json()["source"] == "nico"


async def test_task_of_another_site_is_not_found() -> None:
    async for w in make_world(config(scenario=ScenarioConfig.quiet(sites=2, racks_per_site=2))):
        task_id = w.sim.create_task(w.site_id, w.rack_id, "power_on")
        other = w.sim.sites()[1].id
        response = await w.get(f"/task/{task_id}", siteId=other)
        assert (response.status_code, response.json()) == (404, nico("Task not found"))


# --- pagination --------------------------------------------------------------------------------


async def test_pagination_validation_bodies(w: World) -> None:
    big = await w.rack_tasks(pageSize=101)
    assert big.status_code == 400
    assert big.json() == nico(
        "Failed to validate pagination request data", {"pageSize": "must be less that or equal to: 100"}
    )
    for params in ({"pageSize": 0}, {"pageNumber": 0}, {"orderBy": "CREATED_DESC"}, {"orderBy": "x"}):
        response = await w.rack_tasks(**params)
        assert response.status_code == 400, params
        assert response.json()["message"] == "Failed to validate pagination request data"
    assert (await w.rack_tasks(orderBy="NAME_ASC")).json()["data"] == {"orderBy": "must be a valid value"}
    # Discovery lists accept their own orderBy values.
    sites = await w.get("/site", orderBy="NAME_DESC")
    assert sites.status_code == 200
    assert json.loads(sites.headers["X-Pagination"])["orderBy"] == "NAME_DESC"


async def test_x_pagination_header_is_exact_and_body_is_a_bare_array(w: World) -> None:
    for _ in range(3):
        w.sim.create_task(w.site_id, w.rack_id, "power_on")
    response = await w.rack_tasks()
    assert response.headers["X-Pagination"] == '{"pageNumber":1,"pageSize":20,"total":3,"orderBy":null}'
    assert isinstance(response.json(), list) and len(response.json()) == 3
    page2 = await w.rack_tasks(pageNumber=2, pageSize=2)
    assert page2.headers["X-Pagination"] == '{"pageNumber":2,"pageSize":2,"total":3,"orderBy":null}'
    assert len(page2.json()) == 1


async def test_heap_order_pages_repeat_and_skip_when_rows_update(w: World) -> None:
    ids = [w.sim.create_task(w.site_id, w.rack_id, "power_on", stage_seconds=30) for _ in range(4)]
    w.advance(1.5)  # all admitted at the same instant, in creation order: row order unchanged
    page1 = [t["id"] for t in (await w.rack_tasks(pageSize=2)).json()]
    assert page1 == ids[:2]
    w.advance(1.0)  # the running task begins stage 1: its row moves to the end of the table
    page2 = [t["id"] for t in (await w.rack_tasks(pageSize=2, pageNumber=2)).json()]
    assert page2 == [ids[3], ids[0]]  # ids[0] repeated, ids[2] never seen
    # Stable while nothing changes.
    assert [t["id"] for t in (await w.rack_tasks()).json()] == [ids[1], ids[2], ids[3], ids[0]]
    assert [t["id"] for t in (await w.rack_tasks()).json()] == [ids[1], ids[2], ids[3], ids[0]]


async def test_shuffle_order_permutes_per_request() -> None:
    async for w in make_world(config(list_order="shuffle")):
        ids = {w.sim.create_task(w.site_id, w.rack_id, "power_on") for _ in range(8)}
        orders = {tuple(t["id"] for t in (await w.rack_tasks()).json()) for _ in range(5)}
        assert all(set(order) == ids for order in orders)
        assert len(orders) > 1


# --- lifecycle and reports ---------------------------------------------------------------------


async def test_report_lifecycle_with_skipped_steps(w: World) -> None:
    tray = w.tray(ComponentType.COMPUTE)
    task_id = w.sim.create_task(w.site_id, w.rack_id, "power_on", tray_ids=[tray], stage_seconds=20)
    pending = await w.task(task_id)
    assert pending["status"] == "Pending"
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

    w.advance(1.0)  # Flow admits it: rule resolved, initial report, Running
    running = await w.task(task_id)
    assert running["status"] == "Running" and running["ruleId"] is not None
    assert running["started"] == "2026-06-08T18:00:01Z"
    stages = running["report"]["stages"]
    assert running["report"]["version"] == 1
    assert [s["status"] for s in stages] == ["skipped", "skipped", "pending"]
    assert stages[0]["steps"] == [{"componentType": "PowerShelf", "status": "skipped"}]
    assert stages[2]["steps"] == [{"componentType": "Compute", "status": "pending", "totalComponents": 1}]

    w.advance(1.0)  # BeginStage 3 (1 and 2 are skipped)
    stage = (await w.task(task_id))["report"]["stages"][2]
    assert stage["status"] == "running" and stage["startedAt"] == "2026-06-08T18:00:02Z"
    assert stage["steps"][0]["status"] == "running"

    w.advance(20.0)
    done = await w.task(task_id)
    assert done["status"] == "Succeeded" and done["message"] == "Task completed successfully"
    assert done["finished"] == "2026-06-08T18:00:22Z" == done["updated"]
    final = done["report"]["stages"][2]
    assert final["status"] == "completed" and final["finishedAt"] == "2026-06-08T18:00:22Z"
    assert final["steps"][0]["finishedAt"] == "2026-06-08T18:00:22Z"


async def test_task_timestamps_carry_fractions_report_timestamps_do_not(w: World) -> None:
    w.advance(0.123456)
    task_id = w.sim.create_task(w.site_id, w.rack_id, "power_off", stage_seconds=5)
    w.advance(2.5)
    body = await w.task(task_id)
    assert body["created"] == "2026-06-08T18:00:00.123456Z"
    assert body["report"]["stages"][0]["startedAt"] == "2026-06-08T18:00:02Z"


async def test_fail_fast_leaves_later_stages_pending(w: World) -> None:
    error = "power control failed: " + "x" * 600
    task_id = w.sim.create_task(
        w.site_id, w.rack_id, "power_cycle", outcome="fail", fail_stage=2, error=error, stage_seconds=10
    )
    w.advance(2.0 + 10 + 10)  # admitted at 1 s, stage 1 at 2 s, stage 2 fails at 22 s
    body = await w.task(task_id)
    assert body["status"] == "Failed" and body["finished"] == "2026-06-08T18:00:22Z"
    report = body["report"]
    assert [s["status"] for s in report["stages"]] == ["completed", "failed", *["pending"] * 4]
    assert len(report["error"].encode()) == 512 and report["error"] == error[:512]
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


async def test_stage_layouts_match_flow_defaults(w: World) -> None:
    layouts = {
        "power_on": [["PowerShelf"], ["NVSwitch"], ["Compute"]],
        "power_off": [["Compute"], ["NVSwitch"], ["PowerShelf"]],
        "power_cycle": [["Compute"], ["NVSwitch"], ["PowerShelf"], ["PowerShelf"], ["NVSwitch"], ["Compute"]],
        "firmware_update": [["Compute"], ["NVSwitch"]],
        "bring_up": [["PowerShelf"], ["Compute"], ["Compute"], ["NVSwitch"], ["NVSwitch"], ["Compute"]],
    }
    all3 = ["Compute", "NVSwitch", "PowerShelf"]
    layouts["force_power_off"] = [*layouts["power_off"], all3]
    layouts["force_power_cycle"] = [*layouts["power_off"], all3, *layouts["power_on"], all3]
    racks = {op: w.rack_id if i % 2 else w.rack2_id for i, op in enumerate(layouts)}
    ids = {op: w.sim.create_task(w.site_id, racks[op], op) for op in layouts}
    w.advance(3600 * 24)  # let the queues drain
    for op, expected in layouts.items():
        truth = next(t for t in w.sim.truth() if t.id == ids[op])
        assert truth.report is not None
        assert [[s["componentType"] for s in stage["steps"]] for stage in truth.report["stages"]] == expected


async def test_nvlswitch_spelling_option() -> None:
    async for w in make_world(config(nvlswitch_spelling=True)):
        task_id = w.sim.create_task(w.site_id, w.rack_id, "power_on")
        w.advance(2)
        steps = [
            s["componentType"] for st in (await w.task(task_id))["report"]["stages"] for s in st["steps"]
        ]
        assert steps == ["PowerShelf", "NVLSwitch", "Compute"]


async def test_waiting_behind_active_task_then_promotion(w: World) -> None:
    first = w.sim.create_task(w.site_id, w.rack_id, "power_off", stage_seconds=10)
    tray = w.tray(ComponentType.NVSWITCH)
    second = w.sim.create_task(w.site_id, w.rack_id, "power_on", tray_ids=[tray], stage_seconds=10)
    w.advance(1.0)
    waiting = await w.task(second)
    assert waiting["status"] == "Waiting"
    assert waiting["message"] == f"Waiting for conflicting task {first}"
    assert waiting["ruleId"] is None and "report" not in waiting and waiting["started"] is None
    active = (await w.rack_tasks(activeOnly="true")).json()
    assert {t["id"] for t in active} == {first, second}
    # The tray list holds only tasks that target the tray; the rack list holds both.
    tray_list = (await w.get(f"/tray/{tray}/task", siteId=w.site_id)).json()
    assert {t["id"] for t in tray_list} == {first, second}
    other_tray = w.tray(ComponentType.COMPUTE)
    assert {t["id"] for t in (await w.get(f"/tray/{other_tray}/task", siteId=w.site_id)).json()} == {first}

    w.advance(1.0 + 30)  # the first task's three 10 s stages end at 32 s
    promoted = await w.task(second)
    assert (await w.task(first))["status"] == "Succeeded"
    assert promoted["status"] == "Running" and promoted["started"] == "2026-06-08T18:00:32Z"
    assert promoted["ruleId"] is not None and promoted["report"]["version"] == 1


async def test_tasks_are_admitted_in_creation_order() -> None:
    async for w in make_world(config(admit_delay_s=(0.5, 3.0))):
        ids = [w.sim.create_task(w.site_id, w.rack_id, op) for op in ("bring_up", "power_off", "power_on")]
        w.advance(5)
        assert [(await w.task(task_id))["status"] for task_id in ids] == ["Running", "Waiting", "Waiting"]
        second, third = (w.sim.world.tasks[task_id].updated for task_id in ids[1:])
        assert second is not None and third is not None and second <= third


async def test_waiting_task_expires_after_queue_timeout() -> None:
    async for w in make_world(config(queue_timeout_s=60.0)):
        blocker = w.sim.create_task(w.site_id, w.rack_id, "firmware_update", outcome="stuck", fail_stage=1)
        queued = w.sim.create_task(w.site_id, w.rack_id, "power_on")
        w.advance(1.0)
        assert (await w.task(queued))["status"] == "Waiting"
        w.advance(60.0)
        expired = await w.task(queued)
        assert expired["status"] == "Terminated"
        assert expired["message"] == "Expired: queue timeout reached"
        assert expired["finished"] == "2026-06-08T18:01:01Z"
        assert (await w.task(blocker))["status"] == "Running"  # stuck forever


async def test_cancel_semantics(w: World) -> None:
    running = w.sim.create_task(w.site_id, w.rack_id, "power_cycle", stage_seconds=60)
    w.advance(3.0)
    response = await w.cancel(running)
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "Terminated" and body["message"] == "Task terminated by user"
    assert body["finished"] == "2026-06-08T18:00:03Z"
    assert body["report"]["stages"][0]["status"] == "running"  # not rewritten on cancel
    w.advance(5.0)
    again = await w.cancel(running)
    assert again.status_code == 202 and again.json() == body  # idempotent, unchanged

    done = w.sim.create_task(w.site_id, w.rack2_id, "power_on", stage_seconds=1)
    w.advance(10.0)
    refused = await w.cancel(done)
    assert (refused.status_code, refused.json()) == (400, nico("Task in Succeeded state cannot be cancelled"))

    failed = w.sim.create_task(w.site_id, w.rack2_id, "power_on", outcome="fail", stage_seconds=1)
    w.advance(10.0)
    refused = await w.cancel(failed)
    assert refused.json() == nico("Task in Failed state cannot be cancelled")

    pending = w.sim.create_task(w.site_id, w.rack2_id, "power_on")
    legacy = await w.cancel(pending, "/rack/task/{id}/cancel")
    assert legacy.status_code == 202 and legacy.json()["status"] == "Terminated"
    assert "report" not in legacy.json()

    no_site = await w.http.post(f"{BASE}/task/{running}/cancel", json={}, headers=AUTH)
    assert no_site.status_code == 400 and no_site.json()["source"] == "nico"


async def test_cancel_refusal_status_is_configurable() -> None:
    async for w in make_world(config(cancel_refused_status=412)):
        task_id = w.sim.create_task(w.site_id, w.rack_id, "power_on", stage_seconds=1)
        w.advance(10)
        assert (await w.cancel(task_id)).status_code == 412


async def test_cancelling_the_running_task_promotes_the_waiter(w: World) -> None:
    first = w.sim.create_task(w.site_id, w.rack_id, "power_on", stage_seconds=100)
    second = w.sim.create_task(w.site_id, w.rack_id, "power_off", stage_seconds=100)
    w.advance(5)
    await w.cancel(first)
    assert (await w.task(second))["status"] == "Running"


async def test_legacy_get_alias_and_legacy_routes_only() -> None:
    async for w in make_world(config(legacy_routes_only=True)):
        task_id = w.sim.create_task(w.site_id, w.rack_id, "power_on")
        legacy = await w.get(f"/rack/task/{task_id}", siteId=w.site_id)
        assert legacy.status_code == 200 and legacy.json()["id"] == task_id
        missing = await w.get(f"/task/{task_id}", siteId=w.site_id)
        assert missing.status_code == 404
        with pytest.raises(ValueError):
            json.loads(missing.text)  # the router's 404, not a NICo "Task not found"
        cancel = await w.cancel(task_id)
        assert cancel.status_code == 404 and "source" not in cancel.text


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
    bad = await w.http.patch(
        f"{BASE}/rack/{w.rack_id}/power", json={"siteId": w.site_id, "state": "up"}, headers=AUTH
    )
    assert bad.status_code == 400 and bad.json()["data"] == {"state": "must be a valid value"}


async def test_leak_detection_description(w: World) -> None:
    tray_id = w.tray(ComponentType.COMPUTE, 5)
    tray = w.sim.world.trays[tray_id]
    task_id = w.sim.create_task(w.site_id, w.rack_id, "leak_detection", tray_ids=[tray_id])
    body = await w.task(task_id)
    assert (
        body["description"]
        == f"Leak detection: force power-off component {tray.component_id} of type Compute"
    )
    w.advance(1.5)  # admitted, first stage not begun yet
    stages = (await w.task(task_id))["report"]["stages"]
    assert [s["status"] for s in stages] == ["pending", "skipped", "skipped", "pending"]


# --- discovery ---------------------------------------------------------------------------------


async def test_discovery_shapes(w: World) -> None:
    sites = (await w.get("/site", isFlowEnabled="true")).json()
    assert [s["id"] for s in sites] == [w.site_id]
    assert sites[0]["capabilities"]["flow"] is True and sites[0]["status"] == "Registered"
    assert len((await w.get("/site")).json()) == 2

    racks = await w.get("/rack", siteId=w.site_id)
    assert racks.headers["X-Pagination"] == '{"pageNumber":1,"pageSize":20,"total":2,"orderBy":null}'
    rack = racks.json()[0]
    assert "siteId" not in rack and rack["model"] == "GB200 NVL72" and rack["manufacturer"] == "NVIDIA"
    assert set(rack["location"]) == {"region", "datacenter", "room", "position"}

    trays = await w.get("/tray", siteId=w.site_id, rackId=w.rack_id, pageSize=100)
    body = trays.json()
    assert json.loads(trays.headers["X-Pagination"])["total"] == 35
    assert {t["type"] for t in body} == {"Compute", "NVSwitch", "PowerShelf"}
    assert sum(t["type"] == "Compute" for t in body) == 18
    assert all(t["rackId"] == w.rack_id and "siteId" not in t for t in body)
    assert set(body[0]["position"]) == {"slotId", "trayIdx", "hostId"}
    switches = await w.get("/tray", siteId=w.site_id, type="NVSwitch", pageSize=100)
    assert json.loads(switches.headers["X-Pagination"])["total"] == 18  # two racks
    lower = await w.get("/tray", siteId=w.site_id, type="compute")
    assert lower.status_code == 400  # the server's type validation is case-sensitive


# --- rate limiting and faults ------------------------------------------------------------------


async def test_rate_limiter_429_without_retry_after() -> None:
    ticks = FakeMonotonic()
    cfg = config(rate_limit=True, rate_limit_rate=1.0, rate_limit_burst=2)
    async for w in make_world(cfg, monotonic=ticks):
        assert (await w.get("/site")).status_code == 200
        assert (await w.get("/site")).status_code == 200
        limited = await w.get("/site")
        assert limited.status_code == 429
        assert limited.content == (
            b'{"source":"nico","message":"Request rate limit exceeded, please re-evaluate your '
            b'request patterns","data":null}\n'
        )
        assert "retry-after" not in limited.headers
        ticks.value += 1.0
        assert (await w.get("/site")).status_code == 200
        other_ip = await w.http.get(f"{BASE}/site", headers={**AUTH, "X-Forwarded-For": "10.0.0.9"})
        assert other_ip.status_code == 200


def test_rate_limiter_refills_up_to_burst() -> None:
    ticks = FakeMonotonic()
    limiter = RateLimiter(rate=10.0, burst=30, monotonic=ticks)
    assert sum(limiter.allow("a") for _ in range(40)) == 30
    ticks.value += 0.5
    assert sum(limiter.allow("a") for _ in range(40)) == 5


async def test_fault_error_5xx(w: World) -> None:
    w.sim.configure_faults({"error_5xx": 1.0})
    statuses = {(await w.rack_tasks()).status_code for _ in range(20)}
    assert statuses == {500, 503}
    response = await w.rack_tasks()
    assert response.json()["source"] == "nico"


async def test_fault_slow(w: World) -> None:
    w.sim.configure_faults({"slow": 1.0, "slow_seconds": 0.05})
    started = time.monotonic()
    assert (await w.rack_tasks()).status_code == 200
    assert time.monotonic() - started >= 0.05


async def test_fault_reset_promises_more_body_than_sent(w: World) -> None:
    w.sim.create_task(w.site_id, w.rack_id, "power_on")
    w.sim.configure_faults({"reset": 1.0})
    response = await w.rack_tasks()
    assert int(response.headers["content-length"]) > len(response.content)


async def test_fault_truncated_json(w: World) -> None:
    w.sim.create_task(w.site_id, w.rack_id, "power_on")
    w.sim.configure_faults({"truncated_json": 1.0})
    response = await w.rack_tasks()
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    with pytest.raises(ValueError):
        response.json()


async def test_fault_bad_pagination(w: World) -> None:
    w.sim.configure_faults({"bad_pagination": 1.0})
    seen: set[str] = set()
    for _ in range(20):
        header = (await w.rack_tasks()).headers.get("X-Pagination")
        if header is None:
            seen.add("missing")
        else:
            with pytest.raises(ValueError):
                json.loads(header)
            seen.add("garbage")
    assert seen == {"missing", "garbage"}


async def test_fault_unknown_status_and_report_v2_touch_only_the_response(w: World) -> None:
    task_id = w.sim.create_task(w.site_id, w.rack_id, "power_on")
    w.advance(2)
    w.sim.configure_faults({"unknown_status": 1.0, "report_v2": 1.0})
    body = await w.task(task_id)
    assert body["status"] == "Paused" and body["report"]["version"] == 2
    w.sim.configure_faults({"unknown_status": 0.0, "report_v2": 0.0})
    clean = await w.task(task_id)
    assert clean["status"] == "Running" and clean["report"]["version"] == 1


async def test_global_down_and_site_outages(w: World) -> None:
    w.sim.configure_faults({"down": True})
    down = await w.rack_tasks()
    assert down.status_code == 500 and "timeout occurred executing workflow" in down.json()["message"]
    assert (await w.http.get("/readyz")).status_code == 503
    w.sim.configure_faults({"down": False})

    w.sim.set_site_down(w.site_id, delay_s=0.0)
    response = await w.rack_tasks()
    assert response.status_code == 500
    assert response.json() == nico(
        f"Failed to perform Task GetTasks - timeout occurred executing workflow on Site: {w.site_id}"
    )
    assert (await w.get("/site", isFlowEnabled="true")).json()[0]["isOnline"] is False
    w.sim.set_site_down(w.site_id, False)
    assert (await w.rack_tasks()).status_code == 200

    w.sim.remove_site(w.site_id)
    gone = await w.rack_tasks()
    assert (gone.status_code, gone.json()) == (400, nico("Site specified in request does not exist"))
    assert (await w.get("/site", isFlowEnabled="true")).json() == []
    w.sim.restore_site(w.site_id)
    assert (await w.rack_tasks()).status_code == 200


def test_fault_config_validation() -> None:
    with pytest.raises(ValueError):
        FaultConfig(error_5xx=1.5)
    with pytest.raises(ValueError):
        FaultConfig().updated({"nope": 1})
    assert FaultConfig().updated({"slow": 1}).slow == 1.0


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
    assert report is not None and report["error"] == truths[bad].error


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
