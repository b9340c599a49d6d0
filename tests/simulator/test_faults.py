"""The rate limiter and the fault modes, per attempt and per logical call.

Cited NICo behaviour: docs/simulator.md.
"""

from __future__ import annotations

import json
import time

import pytest

from exporter.simulator import (
    FaultConfig,
)
from exporter.simulator.access import RateLimiter
from tests.builders import ORG
from tests.builders import SIM_TOKEN as TOKEN
from tests.simulator.world import FakeMonotonic, World, config, make_world, nico

BASE = f"/v2/org/{ORG}/nico"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


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
