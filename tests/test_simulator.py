"""The NICo simulator behaves like the real server (docs/api-notes.md), in-process and exact.

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
    Rejected,
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


# --- pagination --------------------------------------------------------------------------------


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


# --- write endpoints and descriptions ----------------------------------------------------------


async def test_other_org_is_403(w: World) -> None:
    # Flow handlers: "Failed to validate membership for org: <org>" (handler/task.go:247-255);
    # the site handlers' role check sends no source (site.go:760-763, common.go:1486).
    rack = await w.http.get(f"/v2/org/other/nico/rack/{w.rack_id}/task?siteId={w.site_id}", headers=AUTH)
    assert (rack.status_code, rack.json()) == (403, nico("Failed to validate membership for org: other"))
    site = await w.http.get("/v2/org/other/nico/site", headers=AUTH)
    assert site.status_code == 403
    assert site.json() == {"source": "", "message": "Failed to validate membership for org", "data": None}


async def test_site_validation_messages(w: World) -> None:
    path = f"/rack/{w.rack_id}/task"
    missing = await w.get(path)
    assert (missing.status_code, missing.json()) == (400, nico("siteId query parameter is required"))
    unknown = await w.get(path, siteId="6f1c2a40-0000-4000-8000-000000000000")
    assert (unknown.status_code, unknown.json()) == (400, nico("Site specified in request does not exist"))
    bad = await w.get(path, siteId="not-a-uuid")
    assert (bad.status_code, bad.json()) == (
        400,
        nico("Failed to validate Site specified in request: invalid ID"),
    )
    tray_bad = await w.get("/tray", siteId="not-a-uuid")  # tray.go:377-384: a DB error
    assert (tray_bad.status_code, tray_bad.json()) == (500, nico("Failed to retrieve Site due to DB error"))
    no_flow = await w.get(path, siteId=w.other_site_id)
    assert (no_flow.status_code, no_flow.json()) == (412, nico("Site does not have NICo Flow enabled"))
    for kind, url in (("Task", "/task/x"), ("Rack", "/rack/x/task"), ("Tray", "/tray/x/task")):
        bad_id = await w.get(url, siteId=w.site_id)
        assert (bad_id.status_code, bad_id.json()) == (400, nico(f"Invalid {kind} ID specified in URL"))
    # A rack Flow does not know is an empty list, not a 404 (task.go:401-549 never looks it up).
    rack = await w.get("/rack/6f1c2a40-0000-4000-8000-000000000000/task", siteId=w.site_id)
    assert rack.status_code == 200 and rack.json() == []
    assert json.loads(rack.headers["X-Pagination"])["total"] == 0


async def test_a_missing_task_is_flows_no_rows_500(w: World) -> None:
    # GetTasksByIDs fails with gRPC Internal "sql: no rows in result set" (postgres.go:98-101),
    # which nothing maps, so GET /task/{id} is a 500 (task.go:176-178), never the 404.
    response = await w.get("/task/6f1c2a40-0000-4000-8000-000000000000", siteId=w.site_id)
    assert response.status_code == 500
    assert response.json() == nico(
        "Failed to execute Task retrieval workflow on Site: rpc error: code = Internal "
        "desc = sql: no rows in result set (type: Error, retryable: true)"
    )


async def test_task_of_another_site_is_not_on_that_site() -> None:
    async for w in make_world(config(scenario=ScenarioConfig.quiet(sites=2, racks_per_site=2))):
        task_id = w.sim.create_task(w.site_id, w.rack_id, "power_on")
        other = w.sim.sites()[1].id
        response = await w.get(f"/task/{task_id}", siteId=other)
        assert response.status_code == 500 and "no rows in result set" in response.json()["message"]


# --- known query parameters and pagination -----------------------------------------------------

UNKNOWN = "Unknown query parameter specified in request: {}"


@pytest.mark.parametrize(
    ("path", "param"),
    [
        # APIGetTasksRequest: siteId, activeOnly, includeReport (model/task.go:272-276).
        ("/rack/{rack}/task", "pageNumber"),
        ("/rack/{rack}/task", "pageSize"),
        ("/rack/{rack}/task", "orderBy"),
        ("/tray/{tray}/task", "pageSize"),
        ("/rack/{rack}/task", "SiteId"),  # case-sensitive
        # APIGetTaskRequest: siteId only (model/task.go:246-248).
        ("/task/{task}", "includeReport"),
        # APIRackGetRequest: siteId, includeComponents (model/rack.go:102-105).
        ("/rack/{rack}", "pageSize"),
        ("/rack", "foo"),
        ("/tray", "pretty"),
    ],
)
async def test_every_handler_refuses_keys_it_does_not_know(w: World, path: str, param: str) -> None:
    task_id = w.sim.create_task(w.site_id, w.rack_id, "power_on")
    url = path.format(rack=w.rack_id, tray=w.tray(ComponentType.COMPUTE), task=task_id)
    response = await w.get(url, siteId=w.site_id, **{param: "1"})
    assert (response.status_code, response.json()) == (400, nico(UNKNOWN.format(param)))


async def test_handlers_without_a_key_check_ignore_unknown_keys(w: World) -> None:
    assert (await w.get("/site", foo="1")).status_code == 200
    tray = w.tray(ComponentType.COMPUTE)
    assert (await w.get(f"/tray/{tray}", siteId=w.site_id, foo="1")).status_code == 200


async def test_a_bad_boolean_fails_the_bind(w: World) -> None:
    response = await w.rack_tasks(activeOnly="yes")
    assert (response.status_code, response.json()) == (400, nico("Failed to parse request data"))
    assert (await w.rack_tasks(activeOnly="T", includeReport="0")).status_code == 200


async def test_pagination_validation_bodies(w: World) -> None:
    # pagination.go:49-96: Go field names as data keys, the server's own typo.
    big = await w.get("/rack", siteId=w.site_id, pageSize=101)
    assert big.status_code == 400
    assert big.json() == nico(
        "Failed to validate pagination request data", {"PageSize": "must be less that or equal to: 100"}
    )
    lower = await w.get("/rack", siteId=w.site_id, orderBy="name_ASC")
    assert lower.json() == nico(
        "Failed to validate pagination request data",
        {"OrderByStr": "must be in the format of field_ASC or field_DESC"},
    )
    field = await w.get("/rack", siteId=w.site_id, orderBy="CREATED_DESC")
    assert field.json() == nico("Failed to validate pagination request data", {})
    not_int = await w.get("/rack", siteId=w.site_id, pageSize="ten")
    assert not_int.json() == nico("Failed to parse request pagination data")
    zero = await w.get("/rack", siteId=w.site_id, pageSize=0, pageNumber=0)  # zero is the default
    assert json.loads(zero.headers["X-Pagination"])["pageSize"] == 20
    sites = await w.get("/site", orderBy="NAME_DESC")
    assert sites.status_code == 200
    assert json.loads(sites.headers["X-Pagination"])["orderBy"] == "NAME_DESC"


async def test_task_lists_are_the_first_20_rows_with_an_exact_total() -> None:
    scenario = replace(
        ScenarioConfig.quiet(sites=1, racks_per_site=2, non_flow_sites=1), history_tasks_per_rack=(25, 25)
    )
    async for w in make_world(config(scenario=scenario)):
        history = [t.id for t in w.sim.world.rack_tasks(w.rack_id)]
        assert len(history) == 25
        response = await w.rack_tasks()
        # task.go:475-501 always asks Flow for offset 0, limit 20; the total is Flow's COUNT.
        assert response.headers["X-Pagination"] == '{"pageNumber":1,"pageSize":20,"total":25,"orderBy":null}'
        assert isinstance(response.json(), list)
        assert [t["id"] for t in response.json()] == history[:20]  # storage order: oldest first
        new = w.sim.create_task(w.site_id, w.rack_id, "power_on")
        all_tasks = await w.rack_tasks()
        assert json.loads(all_tasks.headers["X-Pagination"])["total"] == 26
        assert new not in {t["id"] for t in all_tasks.json()}  # a new row is at the end
        active = await w.rack_tasks(activeOnly="true")
        assert [t["id"] for t in active.json()] == [new]
        assert json.loads(active.headers["X-Pagination"])["total"] == 1


async def test_a_paging_server_pages_task_lists_as_the_spec_says() -> None:
    scenario = replace(
        ScenarioConfig.quiet(sites=1, racks_per_site=2, non_flow_sites=1), history_tasks_per_rack=(25, 25)
    )
    async for w in make_world(config(scenario=scenario, task_list_paging=True)):
        page2 = await w.rack_tasks(pageNumber=2, pageSize=10)
        assert page2.headers["X-Pagination"] == '{"pageNumber":2,"pageSize":10,"total":25,"orderBy":null}'
        assert len(page2.json()) == 10
        assert (await w.rack_tasks(orderBy="CREATED_DESC")).status_code == 400


async def test_nico_16_lists_take_no_include_report_and_tasks_have_no_report() -> None:
    # NVIDIA/infra-controller-rest v1.6.0: APIGetTasksRequest is siteId + activeOnly
    # (api/pkg/api/model/task.go:107-110); APIRackTask has no ruleId, no report (:41-50).
    async for w in make_world(config(nico_version="1.6")):
        task_id = w.sim.create_task(w.site_id, w.rack_id, "power_on")
        w.advance(5)
        refused = await w.rack_tasks(includeReport="true")
        assert refused.json() == nico(UNKNOWN.format("includeReport"))
        listed = (await w.rack_tasks(activeOnly="true")).json()
        assert [t["id"] for t in listed] == [task_id]
        body = await w.task(task_id)
        assert list(body) == [
            "id",
            "status",
            "description",
            "message",
            "started",
            "finished",
            "created",
            "updated",
        ]


async def test_heap_order_moves_updated_rows_to_the_end(w: World) -> None:
    trays = [w.tray(ComponentType.COMPUTE, i) for i in range(4)]
    ids = [w.sim.create_task(w.site_id, w.rack_id, "power_on", tray_ids=[t], stage_seconds=30) for t in trays]
    assert [t["id"] for t in (await w.rack_tasks()).json()] == ids
    w.advance(1.0)  # every workflow starts (admit delay 1 s): each row is rewritten, in that order
    assert [t["id"] for t in (await w.rack_tasks()).json()] == ids
    w.sim.cancel_task(ids[1])  # an update: its row goes to the end
    assert [t["id"] for t in (await w.rack_tasks()).json()] == [ids[0], ids[2], ids[3], ids[1]]


async def test_shuffle_order_permutes_per_request() -> None:
    async for w in make_world(config(list_order="shuffle")):
        ids = {
            w.sim.create_task(w.site_id, w.rack_id, "power_on", tray_ids=[w.tray(ComponentType.COMPUTE, i)])
            for i in range(8)
        }
        orders = {tuple(t["id"] for t in (await w.rack_tasks()).json()) for _ in range(5)}
        assert all(set(order) == ids for order in orders)
        assert len(orders) > 1


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
    # FailStage gets "component type <T> failed: <err>" (helpers.go:342-343), cut at 512 bytes
    # (report.go:306-315); the task message is "stage N failed: ..." (helpers.go:431, message.go:36-49).
    stage_error = f"component type NVSwitch failed: {error}"
    assert body["message"] == f"stage 2 failed: {stage_error}".encode()[:512].decode()
    report = body["report"]
    assert [s["status"] for s in report["stages"]] == ["completed", "failed", *["pending"] * 4]
    assert report["error"] == stage_error.encode()[:512].decode()
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


async def test_router_404s_carry_nico_bodies(w: World) -> None:
    # middleware/notfound.go:16-27 inside /v2, before auth; Echo's own 404 outside (api.go:20).
    unknown = await w.http.get(f"{BASE}/nothing/here")
    assert (unknown.status_code, unknown.json()) == (404, nico("The requested path could not be found"))
    wrong_method = await w.http.delete(f"{BASE}/site", headers=AUTH)  # no 405 inside the group
    assert (wrong_method.status_code, wrong_method.json()) == (
        404,
        nico("The requested path could not be found"),
    )
    task_run = await w.http.post(f"{BASE}/task/run", headers=AUTH)  # Task Runs are main-only
    assert task_run.json() == nico("The requested path could not be found")
    outside = await w.http.get("/v3/anything")
    assert (outside.status_code, outside.json()) == (404, nico("The requested path was not found"))


async def test_legacy_get_alias_and_legacy_routes_only() -> None:
    async for w in make_world(config(legacy_routes_only=True)):
        task_id = w.sim.create_task(w.site_id, w.rack_id, "power_on")
        legacy = await w.get(f"/rack/task/{task_id}", siteId=w.site_id)
        assert legacy.status_code == 200 and legacy.json()["id"] == task_id
        missing = await w.get(f"/task/{task_id}", siteId=w.site_id)
        assert (missing.status_code, missing.json()) == (404, nico("The requested path could not be found"))
        cancel = await w.cancel(task_id)
        assert cancel.status_code == 404


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
    # /healthz and /readyz share a handler that does not look at the sites (system.go).
    assert (await w.http.get("/readyz")).json() == {"is_healthy": True, "error": None}
    w.sim.configure_faults({"down": False})

    w.sim.set_site_down(w.site_id, delay_s=0.0)
    response = await w.rack_tasks()
    assert response.status_code == 500
    # TerminateWorkflowOnTimeOut (common.go:1186) ends with the timeout error's text.
    assert response.json() == nico(
        "Failed to perform Task GetTasks - timeout occurred executing workflow on Site: context deadline exceeded"
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


async def test_a_logical_call_fails_on_every_retry_until_its_window_ends() -> None:
    ticks = FakeMonotonic()
    async for w in make_world(config(), monotonic=ticks):
        w.sim.configure_faults({"call_failure": 1.0, "call_failure_seconds": 20.0, "seed": 4})
        kind = w.sim.faults.call(f"GET /v2/org/{ORG}/nico/rack/{w.rack_id}/task?siteId={w.site_id}")
        assert kind is not None and kind.failure is not None
        # Every attempt of the same call gets the same failure: a client's retries cannot absorb it.
        again = [
            w.sim.faults.call(f"GET /v2/org/{ORG}/nico/rack/{w.rack_id}/task?siteId={w.site_id}")
            for _ in range(5)
        ]
        assert again == [kind] * 5 and w.sim.faults.calls_failed == 1
        w.sim.configure_faults({"call_failure": 0.0})
        assert (await w.rack_tasks()).status_code == 200
        w.sim.configure_faults({"call_failure": 1.0})
        ticks.value += 100.0
        failed = [await w.get("/site", isFlowEnabled="true") for _ in range(3)]
        kinds = {r.status_code for r in failed}
        assert len(kinds) == 1 and kinds <= {500, 503, 200}  # one failure for the call (a cut body is a 200)
        assert w.sim.faults.calls_failed == 2
        ticks.value += 21.0  # the window is over: the call is drawn again (and fails again at 1.0)
        await w.get("/site", isFlowEnabled="true")
        assert w.sim.faults.calls_failed == 3


async def test_a_stalled_call_waits_on_every_attempt() -> None:
    ticks = FakeMonotonic()
    async for w in make_world(config(), monotonic=ticks):
        w.sim.configure_faults({"stall": 1.0, "stall_seconds": 0.05})
        began = time.monotonic()
        assert (await w.rack_tasks()).status_code == 200
        assert (await w.rack_tasks()).status_code == 200
        assert time.monotonic() - began >= 0.1
        assert w.sim.faults.calls_stalled == 1


async def test_bursts_and_429_storms_come_and_go_on_their_schedule() -> None:
    ticks = FakeMonotonic()
    async for w in make_world(config(), monotonic=ticks):
        w.sim.configure_faults({"burst_every_s": 100.0, "burst_seconds": 10.0})
        assert (await w.rack_tasks()).status_code == 500  # the window opens at once
        ticks.value += 10.0
        assert (await w.rack_tasks()).status_code == 200
        ticks.value += 90.0
        assert (await w.rack_tasks()).status_code == 500
        w.sim.configure_faults({"burst_every_s": 0.0, "burst_seconds": 0.0})
        w.sim.configure_faults({"throttle_every_s": 60.0, "throttle_seconds": 20.0})
        storm = await w.get("/site")
        assert storm.status_code == 429 and storm.json()["message"].startswith("Request rate limit exceeded")
        assert (await w.http.get("/healthz")).status_code == 429  # every route
        ticks.value += 20.0
        assert (await w.get("/site")).status_code == 200
    with pytest.raises(ValueError):
        FaultConfig(burst_every_s=10.0, burst_seconds=10.0)


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
    # Stage 3 of power_off acts on power shelves; the stage error names the type (helpers.go:342).
    assert report is not None and report["error"] == f"component type PowerShelf failed: {truths[bad].error}"


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
