"""The client against the simulator, in-process (ASGITransport) and over a real socket (uvicorn).

Each test runs twice: ``asgi`` (fast, no network) and ``socket`` (a real HTTP server on
127.0.0.1, so connection handling, keep-alive and mid-body resets are real). The simulator's
state is changed only through its HTTP control API, from the event loop of the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from exporter.auth import ClientCredentials, StaticToken, TokenSource
from exporter.client import ClientHooks, NicoClient, ParseEvent, RequestEvent, RetryPolicy
from exporter.errors import FlowDisabled, ServerError, TaskNotCancellable, TaskNotOnSite, Unauthorized
from exporter.models import ComponentType, ReportStatus, TaskStatus
from exporter.simulator import ManualClock, ScenarioConfig, Simulation, SimulatorConfig, create_app
from tests.builders import ORG
from tests.builders import SIM_TOKEN as TOKEN
from tests.servers import serve_app

FAST_RETRY = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05)


@dataclass
class Nico:
    """A simulator reached over one transport, with the control API and hook recorders."""

    url: str
    transport_factory: Any
    control: httpx.AsyncClient
    site: str
    non_flow_site: str
    racks: list[str]
    requests: list[RequestEvent] = field(default_factory=list)
    parse_errors: list[ParseEvent] = field(default_factory=list)

    def client(self, auth: TokenSource | None = None, **kwargs: Any) -> NicoClient:
        kwargs.setdefault("max_requests_per_second", 0)
        kwargs.setdefault("retry", FAST_RETRY)
        return NicoClient(
            self.url,
            ORG,
            auth=auth or StaticToken(TOKEN),
            transport=self.transport_factory(),
            hooks=ClientHooks(on_request=self.requests.append, on_parse_error=self.parse_errors.append),
            **kwargs,
        )

    async def create(self, rack: str, operation: str, **extra: Any) -> str:
        resp = await self.control.post(
            "/_sim/tasks", json={"siteId": self.site, "rackId": rack, "operation": operation, **extra}
        )
        assert resp.status_code == 201, resp.text
        return str(resp.json()["taskId"])

    async def advance(self, seconds: float) -> None:
        resp = await self.control.post("/_sim/clock", json={"advanceSeconds": seconds})
        assert resp.status_code == 200, resp.text

    async def faults(self, **changes: Any) -> None:
        resp = await self.control.put("/_sim/faults", json=changes)
        assert resp.status_code == 200, resp.text

    async def truth(self) -> dict[str, Any]:
        return dict((await self.control.get("/_sim/truth")).json())

    @property
    def reasons(self) -> list[str]:
        return [e.reason for e in self.parse_errors]


def _simulation(**config: Any) -> Simulation:
    scenario = ScenarioConfig.quiet(sites=1, racks_per_site=3, non_flow_sites=1, seed=11)
    if "history" in config:
        scenario.history_tasks_per_rack = config.pop("history")
    config.setdefault("tokens", (TOKEN,))
    return Simulation(SimulatorConfig(org=ORG, scenario=scenario, **config), clock=ManualClock())


@contextlib.contextmanager
def _transport(kind: str, sim: Simulation) -> Iterator[tuple[str, Any]]:
    app = create_app(sim)
    if kind == "asgi":
        yield "http://nico.test", lambda: httpx.ASGITransport(app=app)
    else:
        with serve_app(app) as url:
            yield url, lambda: httpx.AsyncHTTPTransport()


@contextlib.asynccontextmanager
async def _nico(kind: str, **config: Any) -> AsyncIterator[Nico]:
    sim = _simulation(**config)
    site = sim.flow_site_ids()[0]
    non_flow = next(s.id for s in sim.sites() if not s.flow)
    racks = [r.id for r in sim.racks(site)]
    with _transport(kind, sim) as (url, factory):
        async with httpx.AsyncClient(base_url=url, transport=factory()) as control:
            yield Nico(url, factory, control, site, non_flow, racks)


@pytest.fixture(params=["asgi", "socket"])
async def nico(request: pytest.FixtureRequest) -> AsyncIterator[Nico]:
    async with _nico(request.param) as n:
        yield n


async def test_discovery(nico: Nico) -> None:
    async with nico.client() as client:
        sites = await client.list_sites()
        racks = await client.list_racks(nico.site)
        trays = await client.list_trays(nico.site)
        rack_trays = await client.list_trays(nico.site, rack_id=nico.racks[0])
        with pytest.raises(FlowDisabled):
            await client.list_racks(nico.non_flow_site)
    assert [s.id for s in sites.items] == [nico.site] and sites.items[0].flow_enabled
    assert sorted(r.id for r in racks.items) == sorted(nico.racks)
    assert len(trays.items) == 3 * 35 and trays.complete and trays.total == 105 and trays.pages == 2
    by_type: dict[ComponentType, int] = {}
    for tray in rack_trays.items:
        assert tray.rack_id == nico.racks[0]
        by_type[tray.type] = by_type.get(tray.type, 0) + 1
    assert by_type == {ComponentType.COMPUTE: 18, ComponentType.NVSWITCH: 9, ComponentType.POWERSHELF: 8}
    assert {e.endpoint for e in nico.requests} == {"/site", "/rack", "/tray"}


async def test_task_lifecycle_through_the_client(nico: Nico) -> None:
    rack, other = nico.racks[0], nico.racks[1]
    ok = await nico.create(rack, "power_on", stageSeconds=10)
    failing = await nico.create(
        other, "firmware_update", outcome="fail", failStage=2, error="NVSwitch tray 3 timed out"
    )
    await nico.advance(15)
    async with nico.client() as client:
        active = await client.list_rack_tasks(nico.site, rack)
        assert {t.id: t.status for t in active.items} == {ok: TaskStatus.RUNNING}
        running = active.items[0]
        assert running.report is not None and running.report.stages[0].status in (
            ReportStatus.RUNNING,
            ReportStatus.COMPLETED,
        )
        await nico.advance(3600)
        assert (await client.list_rack_tasks(nico.site, rack)).items == []
        done = await client.get_task(nico.site, ok)
        failed = await client.get_task(nico.site, failing)
        everything = await client.list_rack_tasks(nico.site, rack, active_only=False)
        counted = await client.list_rack_tasks(
            nico.site, other, active_only=False, include_report=False, first_page_only=True
        )
    assert done.status is TaskStatus.SUCCEEDED and done.finished is not None and done.report is not None
    assert [s.status for s in done.report.stages] == [ReportStatus.COMPLETED] * 3
    assert failed.status is TaskStatus.FAILED and failed.report is not None
    assert [s.status for s in failed.report.stages] == [ReportStatus.COMPLETED, ReportStatus.FAILED]
    assert failed.report.error is not None and "NVSwitch tray 3 timed out" in failed.report.error
    assert {t.id for t in everything.items} == {ok} and everything.complete
    assert counted.total == 1 and [t.id for t in counted.items] == [failing]
    assert nico.parse_errors == []


async def test_tray_tasks_name_their_trays(nico: Nico) -> None:
    async with nico.client() as client:
        trays = (await client.list_trays(nico.site, rack_id=nico.racks[1])).items
        compute = [t for t in trays if t.type is ComponentType.COMPUTE]
        tray_task = await nico.create(nico.racks[1], "power_cycle", trayIds=[compute[0].id, compute[1].id])
        await nico.advance(5)
        hit = await client.list_tray_tasks(nico.site, compute[0].id)
        miss = await client.list_tray_tasks(nico.site, compute[2].id)
        on_rack = await client.list_rack_tasks(nico.site, nico.racks[1])
    assert [t.id for t in hit.items] == [tray_task]
    assert miss.items == []
    assert [t.id for t in on_rack.items] == [tray_task]  # the rack list includes tray tasks
    assert on_rack.items[0].description == "API power cycle Tray"


@pytest.mark.parametrize("kind", ["asgi", "socket"])
async def test_a_v2_history_is_its_first_20_rows_and_an_exact_total(kind: str) -> None:
    async with _nico(kind, history=(230, 230)) as nico:
        rack = nico.racks[2]
        truth = [t["id"] for t in (await nico.truth())["tasks"] if t["rackId"] == rack]
        async with nico.client() as client:
            listing = await client.list_rack_tasks(nico.site, rack, active_only=False, include_report=False)
    assert listing.total == 230 == len(truth) and len(listing.items) == 20 and not listing.complete
    assert {t.id for t in listing.items} <= set(truth)
    assert [(e.endpoint, e.code) for e in nico.requests] == [
        ("/rack/{id}/task", "400"),
        ("/rack/{id}/task", "200"),
    ]


@pytest.mark.parametrize("kind", ["asgi", "socket"])
async def test_paging_a_long_history_on_a_paging_server_matches_ground_truth(kind: str) -> None:
    async with _nico(kind, history=(230, 230), task_list_paging=True) as nico:
        rack = nico.racks[2]
        truth = {t["id"] for t in (await nico.truth())["tasks"] if t["rackId"] == rack}
        async with nico.client() as client:
            listing = await client.list_rack_tasks(nico.site, rack, active_only=False, include_report=False)
    assert listing.total == 230 and listing.pages == 3 and listing.complete
    assert {t.id for t in listing.items} == truth


async def test_cancel(nico: Nico) -> None:
    rack = nico.racks[0]
    stuck = await nico.create(rack, "bring_up", outcome="stuck")
    quick = await nico.create(nico.racks[1], "power_on", stageSeconds=1)
    await nico.advance(60)
    async with nico.client() as client:
        first = await client.cancel_task(nico.site, stuck)
        again = await client.cancel_task(nico.site, stuck)  # idempotent
        with pytest.raises(TaskNotCancellable, match="cannot be cancelled"):
            await client.cancel_task(nico.site, quick)
        with pytest.raises(TaskNotOnSite):
            await client.get_task(nico.site, "00000000-0000-4000-8000-000000000000")
    assert first is not None and again is not None  # the task came back with the 202
    assert first.status is TaskStatus.TERMINATED and again.status is TaskStatus.TERMINATED
    assert first.report is not None  # cancel answers with the report included


@pytest.mark.parametrize("kind", ["asgi", "socket"])
async def test_legacy_route_fallback_against_an_older_server(kind: str) -> None:
    async with _nico(kind, legacy_routes_only=True) as nico:
        task_id = await nico.create(nico.racks[0], "power_on")
        async with nico.client() as client:
            first = await client.get_task(nico.site, task_id)
            second = await client.get_task(nico.site, task_id)
    assert first.id == second.id == task_id
    assert [e.endpoint for e in nico.requests] == ["/task/{id}", "/rack/task/{id}", "/rack/task/{id}"]
    assert [e.code for e in nico.requests] == ["404", "200", "200"]


@pytest.mark.parametrize("kind", ["asgi", "socket"])
async def test_login_refresh_and_expiry_against_the_simulator(kind: str) -> None:
    async with _nico(kind, token_ttl_s=1.0) as nico:
        auth = ClientCredentials(nico.url, "nico-exporter", "sim-secret")
        async with nico.client(auth=auth) as client:
            await client.list_sites()
            await asyncio.sleep(1.1)  # the 1 s token expired: refreshed before use
            await client.list_sites()
            await nico.control.post("/_sim/auth/revoke")  # every token revoked: 401, then login
            await client.list_sites()
        codes = [(e.endpoint, e.code) for e in nico.requests]
        assert codes.count(("/site", "401")) == 1
        assert codes.count(("/site", "200")) == 3
        async with nico.client(auth=StaticToken("wrong")) as client:
            with pytest.raises(Unauthorized, match="Invalid authorization token in request"):
                await client.list_sites()


@pytest.mark.parametrize("kind", ["asgi", "socket"])
async def test_throttled_by_nico_the_client_retries_and_its_own_limit_avoids_429(kind: str) -> None:
    async with _nico(kind, rate_limit=True, rate_limit_rate=20.0, rate_limit_burst=5) as nico:
        async with nico.client(
            retry=RetryPolicy(max_attempts=8, base_delay_s=0.05, max_delay_s=0.4)
        ) as client:
            await asyncio.gather(*(client.list_racks(nico.site) for _ in range(20)))
        throttled = sum(1 for e in nico.requests if e.code == "429")
        assert throttled > 0
        assert sum(1 for e in nico.requests if e.code == "200") == 20
        nico.requests.clear()
        await asyncio.sleep(0.5)  # let NICo's bucket refill
        # Half NICo's rate and a smaller burst: over a socket on a busy machine, requests the client
        # spaced out can still reach the server bunched together (CI saw a 429 at 15/s, burst 5).
        async with nico.client(max_requests_per_second=10, burst=3) as client:
            await asyncio.gather(*(client.list_racks(nico.site) for _ in range(20)))
        assert {e.code for e in nico.requests} == {"200"}


async def test_injected_payload_faults_are_survived_and_counted(nico: Nico) -> None:
    rack = nico.racks[0]
    # One running task with a report, two leak-detection tasks waiting behind it without one.
    await nico.create(rack, "power_on", outcome="stuck")
    async with nico.client() as lister:
        trays = [
            t.id
            for t in (await lister.list_trays(nico.site, rack_id=rack)).items
            if t.type is ComponentType.COMPUTE
        ]
    for tray in trays[:2]:
        await nico.create(rack, "leak_detection", source="leak_detection", trayIds=[tray])
    await nico.advance(30)
    async with nico.client() as client:
        await nico.faults(unknown_status=1.0, report_v2=1.0)
        tolerant = await client.list_rack_tasks(nico.site, rack)
        await nico.faults(unknown_status=0.0, report_v2=0.0, bad_pagination=1.0)
        no_header = await client.list_rack_tasks(nico.site, rack, include_report=False)
        await nico.faults(bad_pagination=0.0, truncated_json=0.5, seed=3)
        for _ in range(6):
            healed = await client.list_rack_tasks(nico.site, rack, include_report=False)
            assert len(healed.items) == 3
        await nico.faults(truncated_json=0.0, error_5xx=1.0)
        with pytest.raises(ServerError):
            await client.list_rack_tasks(nico.site, rack)
    assert len(tolerant.items) == 3
    assert sum(t.status is TaskStatus.UNKNOWN for t in tolerant.items) == 1
    running = [t for t in tolerant.items if t.status is not TaskStatus.WAITING]
    assert len(running) == 2 and all(t.report is None for t in tolerant.items)  # v2 dropped
    assert {"unknown_status", "unsupported_report_version"} <= set(nico.reasons)
    assert len(no_header.items) == 3 and no_header.total is None
    assert "bad_pagination" in nico.reasons
    assert "truncated_json" in nico.reasons
    assert sum(1 for e in nico.requests if e.code in ("500", "503")) == FAST_RETRY.max_attempts


async def test_site_outage_is_a_server_error_within_the_deadline(nico: Nico) -> None:
    async with nico.client(timeout_s=5) as client:
        await client.list_rack_tasks(nico.site, nico.racks[0])  # learns that lists do not page
        await nico.control.post(f"/_sim/sites/{nico.site}/down", json={"delaySeconds": 0.3})
        started = time.monotonic()
        with pytest.raises(ServerError, match="timeout occurred"):
            await client.list_rack_tasks(nico.site, nico.racks[0], deadline=time.monotonic() + 1.0)
        assert time.monotonic() - started < 1.5
        await nico.control.post(f"/_sim/sites/{nico.site}/up")
        assert (await client.list_rack_tasks(nico.site, nico.racks[0])).items == []


async def test_reset_mid_body_over_a_socket_is_retried() -> None:
    async with _nico("socket") as nico:
        await nico.create(nico.racks[0], "power_on")
        await nico.faults(reset=0.5, seed=1)
        async with nico.client(
            retry=RetryPolicy(max_attempts=10, base_delay_s=0.01, max_delay_s=0.02)
        ) as client:
            for _ in range(5):
                listing = await client.list_rack_tasks(nico.site, nico.racks[0])
                assert len(listing.items) == 1
    assert "connection" in {e.code for e in nico.requests}


async def test_credentials_never_reach_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    """A canary token and client secret through logins, 401s, faults and errors, at DEBUG."""
    canary_token, canary_secret = "canary-TOKEN-5f1e", "canary-SECRET-9a7c"
    caplog.set_level("DEBUG")
    texts: list[str] = []
    async with _nico("asgi", tokens=(canary_token,), client_credentials={"exporter": canary_secret}) as nico:
        await nico.create(nico.racks[0], "power_on", outcome="stuck")
        await nico.advance(30)
        clients = [
            nico.client(auth=StaticToken(canary_token)),
            nico.client(auth=ClientCredentials(nico.url, "exporter", canary_secret)),
            nico.client(auth=ClientCredentials(nico.url, "exporter", canary_secret + "-wrong")),
        ]
        await nico.faults(truncated_json=0.3, error_5xx=0.3, unknown_status=0.5, seed=5)
        for client in clients:
            async with client:
                texts.append(repr(client) + repr(client.auth))
                for call in (
                    client.list_sites(),
                    client.list_rack_tasks(nico.site, nico.racks[0]),
                    client.get_task(nico.site, "00000000-0000-4000-8000-000000000000"),
                ):
                    try:
                        await call
                    except Exception as exc:  # every failure's text is checked below
                        texts.append(f"{type(exc).__name__}: {exc} {exc.__dict__}")
    texts += [r.getMessage() + " " + str(r.__dict__) for r in caplog.records]
    # The credentials were really in use (so the check below means something).
    assert any(e.code == "200" for e in nico.requests) and any(e.code == "401" for e in nico.requests)
    assert len(texts) > 5
    joined = "\n".join(texts)
    assert canary_token not in joined and canary_secret not in joined


async def test_listings_carry_the_servers_clock(nico: Nico) -> None:
    """NICo's Date header (simulated time here) dates a listing in NICo's clock, not ours."""
    await nico.advance(7200)
    now = (await nico.truth())["now"]
    async with nico.client() as client:
        listing = await client.list_rack_tasks(nico.site, nico.racks[0], active_only=False)
    from datetime import datetime

    sim_now = datetime.fromisoformat(now.replace("Z", "+00:00")).timestamp()
    assert listing.server_date is not None and abs(listing.server_date - sim_now) <= 1.0
