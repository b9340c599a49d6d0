"""Part of the fleet broken, the rest exact: the whole exporter (build, its real scheduler and
loops) against the in-process simulator, in real time, for a few seconds each.

Independent expectations: the simulator's own record of what it was asked (every request, with
its site and time) and its ground truth; what NICo does to a silent site (holds the call, then a
500) comes from the simulator, cited to the Go code in docs/simulator.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from exporter.app import Exporter, build
from exporter.configload import load_config
from exporter.simulator import ScenarioConfig, Simulation, SimulatorConfig, create_app

ORG = "acme"


@dataclass
class Call:
    at: float
    site: str
    path: str
    status: int


@dataclass
class Recorder(httpx.AsyncBaseTransport):
    """The simulator in-process, recording every request it answered (or that was abandoned)."""

    inner: httpx.AsyncBaseTransport
    calls: list[Call] = field(default_factory=list)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        site = request.url.params.get("siteId", "")
        started = time.monotonic()
        status = 0
        try:
            response = await self.inner.handle_async_request(request)
            status = response.status_code
            return response
        finally:
            self.calls.append(Call(started, site, request.url.path, status))

    def to(self, site: str) -> list[Call]:
        return [c for c in self.calls if c.site == site]


def _config(tmp_path: Path, **env: str) -> dict[str, str]:
    return {
        "NICO_EXPORTER_API__URL": "http://nico.test",
        "NICO_EXPORTER_API__ORG": ORG,
        "NICO_TOKEN": "sim-token",
        "NICO_EXPORTER_API__TIMEOUT": "3s",
        "NICO_EXPORTER_API__MAX_REQUESTS_PER_SECOND": "200",
        "NICO_EXPORTER_API__BURST": "20",
        "NICO_EXPORTER_POLLING__ACTIVE_INTERVAL": "2s",
        "NICO_EXPORTER_POLLING__FINAL_FETCH_INTERVAL": "1s",
        "NICO_EXPORTER_STATE__PATH": str(tmp_path / "state.db"),
        **env,
    }


@asynccontextmanager
async def running(sim: Simulation, tmp_path: Path, **env: str) -> AsyncIterator[tuple[Exporter, Recorder]]:
    recorder = Recorder(httpx.ASGITransport(app=create_app(sim)))
    exporter = build(load_config(None, _config(tmp_path, **env)), transport=recorder, environ={})
    stop = asyncio.Event()
    task = asyncio.create_task(exporter.runner.run(stop))
    try:
        yield exporter, recorder
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await exporter.client.aclose()
        exporter.persistence.close()


async def _until(predicate: object, timeout: float) -> float:
    """Seconds until ``predicate()`` held (fails the test after ``timeout``)."""
    began = time.monotonic()
    while not predicate():  # type: ignore[operator]
        if time.monotonic() - began > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - began


def _sim(sites: int, racks: int) -> Simulation:
    scenario = ScenarioConfig.quiet(sites=sites, racks_per_site=racks)
    return Simulation(SimulatorConfig(org=ORG, scenario=scenario))


async def test_a_site_silent_from_the_start_holds_neither_readiness_nor_the_healthy_sites_polls(
    tmp_path: Path,
) -> None:
    sim = _sim(2, 12)
    healthy, silent = sim.flow_site_ids()
    # NICo holds each call to it (50 s for real; in-process, httpx's timeouts do not apply, so the
    # hold is shorter here and every call ends with NICo's own 500).
    sim.set_site_down(silent, True, delay_s=4.0)
    async with running(sim, tmp_path) as (exporter, calls):
        poller = exporter.poller
        ready_after = await _until(lambda: poller.ready, 5)
        assert ready_after < 3, "readiness waited for the silent site"
        await _until(lambda: all(e.polled for e in poller.racks.values() if e.site_id == healthy), 5)
        await asyncio.sleep(8)  # four active intervals while the silent site's calls hang
        view = poller.view()
    # Every healthy rack was polled every interval or so, all along.
    racks = {c.path for c in calls.to(healthy) if c.path.endswith("/task")}
    assert len(racks) == 12
    now = time.monotonic()
    for path in racks:
        times = sorted(c.at for c in calls.to(healthy) if c.path == path and c.at > now - 8)
        assert len(times) >= 3, f"{path} polled {len(times)} times in 8 s at a 2 s interval"
    sites = {s.site_id: s for s in view.sites}
    assert sites[healthy].up and not sites[silent].up
    assert sites[silent].breaker_open
    # The silent site: its discovery, retried with back-off, until its breaker opened; then a
    # probe per interval (15 s): a handful of calls in 12 s, not one per rack poll.
    assert len(calls.to(silent)) <= 6, [c.path for c in calls.to(silent)]


async def test_a_site_that_goes_silent_mid_run_is_cut_off_and_comes_back_in_seconds(tmp_path: Path) -> None:
    sim = _sim(2, 10)
    healthy, flaky = sim.flow_site_ids()
    async with running(sim, tmp_path) as (exporter, calls):
        poller = exporter.poller
        await _until(lambda: all(e.polled for e in poller.racks.values()), 5)
        sim.set_site_down(flaky, True, delay_s=4.0)
        went = time.monotonic()
        await _until(lambda: exporter.client.breakers.is_open(flaky), 12)
        opened = time.monotonic() - went
        # While it is cut off the healthy site's racks keep their interval.
        before = len([c for c in calls.to(healthy) if c.path.endswith("/task")])
        await asyncio.sleep(4)
        after = len([c for c in calls.to(healthy) if c.path.endswith("/task")])
        assert after - before >= 10 * 4 / 2 * 0.8  # 10 racks, every 2 s, for 4 s (a fifth of slack)
        assert not poller.view().sites[[s.site_id for s in poller.view().sites].index(flaky)].up
        sim.set_site_down(flaky, False)
        back = await _until(lambda: not exporter.client.breakers.is_open(flaky), 20)
        await _until(lambda: all(s.up for s in poller.view().sites), 10)
    assert opened < 8  # three rack polls (2 s interval, 3 s timeout) found it silent
    assert back <= 16  # the next probe (15 s at most) found it answering


async def test_a_budget_half_of_what_the_fleet_needs_baselines_every_rack_and_downs_no_site(
    tmp_path: Path,
) -> None:
    sim = _sim(1, 40)
    (site,) = sim.flow_site_ids()
    # 40 racks every 2 s need 20 req/s and more: a budget of 8 req/s is less than half.
    async with running(
        sim, tmp_path, NICO_EXPORTER_API__MAX_REQUESTS_PER_SECOND="8", NICO_EXPORTER_API__BURST="4"
    ) as (exporter, calls):
        poller = exporter.poller
        took = await _until(lambda: len(exporter.store.counting_racks()) == 40, 20)
        await asyncio.sleep(6)
        view = poller.view()
        failures = dict(exporter.publisher.client_metrics.site_failures)
    assert took < 15  # two calls per baseline, 80 calls at 8 req/s: about 10 s
    assert view.required_rps > 2 * view.budget_rps
    assert all(s.up for s in view.sites)  # the exporter's own budget is no site outage
    assert not failures, failures  # NICo failed nothing
    # Every rack kept getting its turn (fair rotation): each polled in the last 6 s.
    recent = {c.path for c in calls.to(site) if c.at > time.monotonic() - 6 and c.path.endswith("/task")}
    assert len(recent) == 40


@pytest.mark.parametrize("status", [401])
async def test_credentials_refused_mid_run_mark_no_site_down_and_cost_few_calls(
    tmp_path: Path, status: int
) -> None:
    sim = _sim(2, 4)
    async with running(sim, tmp_path) as (exporter, calls):
        poller = exporter.poller
        await _until(lambda: all(e.polled for e in poller.racks.values()), 5)
        assert sim.tokens.revoke_token("sim-token")  # as POST /_sim/auth/revoke {token} does
        revoked = time.monotonic()
        await _until(lambda: exporter.client.credentials.refused, 5)
        await asyncio.sleep(6)
        view = poller.view()
    assert view.credentials_refused and all(s.up for s in view.sites)
    refused = [c for c in calls.calls if c.at >= revoked and c.status == status]
    assert len(refused) <= 4, len(refused)  # a refused call, its one retry: then 30 s of quiet
