"""What each handler accepts and answers: known query parameters, the 20-row task lists, router 404s, discovery.

Cited NICo behaviour: docs/simulator.md.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from exporter.models import ComponentType
from exporter.simulator import (
    ScenarioConfig,
)
from tests.builders import ORG
from tests.builders import SIM_TOKEN as TOKEN
from tests.simulator.world import World, config, make_world, nico

BASE = f"/v2/org/{ORG}/nico"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


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
