"""Who may ask what: tokens, logins, the org, site validation, a missing task.

Cited NICo behaviour: docs/simulator.md.
"""

from __future__ import annotations

import json

from exporter.simulator import (
    ScenarioConfig,
)
from tests.builders import ORG
from tests.builders import SIM_TOKEN as TOKEN
from tests.simulator.world import FakeMonotonic, World, config, make_world, nico

BASE = f"/v2/org/{ORG}/nico"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


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
        # release/v2.0 rest-api/auth/pkg/api/handler/keycloak.go:88
        assert (bad.status_code, bad.json()) == (401, nico("Failed to authenticate using client credentials"))

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
        # release/v2.0 rest-api/auth/pkg/processors/keycloak.go:36-38
        assert expired.json() == nico("Authorization token in request has expired")

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


async def test_login_and_refresh_refuse_bad_bodies_as_keycloak_go_does() -> None:
    # keycloak.go:62-73 (login: Bind, then APILoginRequest.Validate, model/keycloak.go) and
    # :287-299 (refresh: Bind "Invalid request format", then Validate).
    async for w in make_world(config()):
        garbled = await w.http.post("/auth/login", content=b"{not json")
        assert garbled.json() == nico("Failed to parse request data, potentially invalid structure")
        number = await w.http.post("/auth/login", json={"clientId": 7, "clientSecret": "x"})
        assert number.json() == nico("Failed to parse request data, potentially invalid structure")
        no_secret = await w.http.post("/auth/login", json={"clientId": "nico-exporter"})
        assert (no_secret.status_code, no_secret.json()) == (
            400,
            nico(
                "Failed to validate request data",
                {"clientSecret": "clientSecret must be specified if clientId is specified"},
            ),
        )
        empty = (await w.http.post("/auth/login", json={})).json()
        assert empty["message"] == "Failed to validate request data"
        assert set(empty["data"]) == {"clientId", "email"}
        refresh = await w.http.post("/auth/refresh", content=b"[]")
        assert (refresh.status_code, refresh.json()) == (400, nico("Invalid request format"))
        missing = await w.http.post("/auth/refresh", json={})
        assert missing.json() == nico(
            "Failed to validate request data", {"refreshToken": "refreshToken is required"}
        )


async def test_auth_can_be_disabled() -> None:
    async for w in make_world(config(require_auth=False)):
        assert (await w.http.get(f"{BASE}/site")).status_code == 200


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
