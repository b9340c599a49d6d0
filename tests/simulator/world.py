"""The simulator tests' world: a quiet simulation on a manual clock, spoken to over in-process HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import httpx

from exporter.models import ComponentType
from exporter.simulator import (
    ManualClock,
    ScenarioConfig,
    Simulation,
    SimulatorConfig,
    create_app,
)
from tests.builders import ORG
from tests.builders import SIM_TOKEN as TOKEN

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
