"""A poller driven in simulated time against the in-process simulator, and its yardstick.

The harness steps the simulator's manual clock and runs each job when it is due, as the
scheduler would, so hours of NICo traffic replay in seconds and every run is reproducible.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from exporter.auth import StaticToken
from exporter.client import ClientHooks, NicoClient, RequestEvent, RetryPolicy
from exporter.persistence import NullPersistence, Persistence, SqlitePersistence, StateBatch
from exporter.poller import Intervals, Poller
from exporter.sharding import Shard
from exporter.simulator import ManualClock, ScenarioConfig, Simulation, SimulatorConfig, create_app
from exporter.state import Kind, Store, Transition
from tests.builders import ORG
from tests.builders import SIM_TOKEN as TOKEN

EXPIRE_EVERY = 30.0


def simulation(scenario: ScenarioConfig, **config: Any) -> tuple[Simulation, ManualClock]:
    clock = ManualClock()
    config.setdefault("tokens", (TOKEN,))
    return Simulation(SimulatorConfig(org=ORG, scenario=scenario, **config), clock=clock), clock


@dataclass
class Harness:
    """One exporter (client, store, poller) against ``sim``, in simulated time."""

    sim: Simulation
    clock: ManualClock
    intervals: Intervals = field(
        default_factory=lambda: Intervals(active=15, tray_attribution=60, reconcile=120, discovery=300)
    )
    persistence: Persistence | None = None
    shard: Shard | None = None
    sites: tuple[str, ...] = ()
    finished_ttl: float = 3600.0
    retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(max_attempts=3, base_delay_s=0.0, max_delay_s=0.0)
    )
    transitions: list[Transition] = field(default_factory=list)
    requests: list[RequestEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = NicoClient(
            "http://nico.test",
            ORG,
            auth=StaticToken(TOKEN),
            transport=httpx.ASGITransport(app=create_app(self.sim)),
            max_requests_per_second=0,
            retry=self.retry,
            hooks=ClientHooks(on_request=self.requests.append),
        )
        self.store = Store(self.persistence or NullPersistence(), finished_ttl=self.finished_ttl)
        self.store.subscribe(self.transitions.append)
        now = self.now
        self.poller = Poller(
            self.client,
            self.store,
            intervals=self.intervals,
            sites=self.sites,
            shard=self.shard,
            clock=now,
            monotonic=now,
        )
        self.started_at: float | None = None
        self._next: dict[str, float] = {}

    def now(self) -> float:
        return self.clock.now().timestamp()

    async def start(self) -> None:
        self.started_at = self.now()
        await self.poller.start()
        t = self.now()
        iv = self.intervals
        self._next = {
            "active": t + iv.active,
            "final": t + iv.final_fetch,
            "trays": t,
            "discovery": t + iv.discovery,
            "expire": t + EXPIRE_EVERY,
            "runs": t,
        }

    async def run(self, seconds: float, step: float = 1.0) -> None:
        """Advance simulated time by ``seconds``, running each job when it is due."""
        if self.started_at is None:
            await self.start()
        end = self.now() + seconds
        iv = self.intervals
        jobs = (
            ("discovery", self.poller.discover, iv.discovery),
            ("active", self._poll_due, 0.0),  # every step: each rack keeps its own schedule
            ("final", self.poller.fetch_finals, iv.final_fetch),
            ("trays", self.poller.attribute_trays, iv.tray_attribution),
            ("expire", self.poller.expire, EXPIRE_EVERY),
            ("runs", self.poller.poll_runs, iv.task_runs),
        )
        while self.now() < end:
            self.clock.advance(min(step, end - self.now()))
            for name, job, interval in jobs:
                if self.now() >= self._next[name]:
                    await job()
                    self._next[name] = self.now() + interval

    async def _poll_due(self) -> None:
        await self.poller.poll_due(wait=True)

    async def close(self) -> None:
        await self.client.aclose()

    # -- what the exporter concluded --------------------------------------------------------------

    def finished_ids(self) -> list[str]:
        return [t.record.id for t in self.transitions if t.kind is Kind.FINISHED]

    def finished_by(self) -> Counter[tuple[str, str]]:
        return Counter(
            (t.record.status.value, t.record.operation.value)
            for t in self.transitions
            if t.kind is Kind.FINISHED
        )


def expected_finished(sim: Simulation, since: float, *, racks: set[str] | None = None) -> dict[str, str]:
    """Ground truth: tasks that became terminal after ``since`` (and are not forgotten), by status."""
    out: dict[str, str] = {}
    for truth in sim.truth():
        if truth.finished is None or truth.forgotten:
            continue
        if racks is not None and truth.rack_id not in racks:
            continue
        if truth.finished.timestamp() > since:
            out[truth.id] = truth.status
    return out


class DiesBeforeCommit(SqlitePersistence):
    """The process is killed after ``survive`` commits: the next batch never reaches the disk."""

    def __init__(self, path: Path, survive: int) -> None:
        super().__init__(path)
        self.survive = survive

    def write(self, *batches: StateBatch) -> bool:
        if self.survive <= 0:
            raise KilledError
        self.survive -= 1
        return super().write(*batches)


class KilledError(BaseException):
    """Stands for kill -9: nothing after it runs, not even exception handlers for Exception."""
