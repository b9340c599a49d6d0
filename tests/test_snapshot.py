"""Snapshots: what the incremental publisher serves equals a render from scratch, and a published
snapshot never changes.

The independent expectation is a fresh :class:`Publisher` over the same state: it has no cache,
so it renders every task's lines anew. A random walk over every way the store changes (new
tasks, stage moves, finishes, tray attribution, a tray's type learned, TTL expiry, a task that
vanished, a rack leaving) must leave the long-lived publisher's body identical to the fresh one
after every publish.
"""

from __future__ import annotations

import random

import httpx
import pytest

from exporter.client import NicoClient
from exporter.exposition import Format
from exporter.metrics import ClientMetrics, SeriesOptions, TaskMetrics, family_filter
from exporter.models import Rack, Site, Task
from exporter.poller import Poller, RackEntry, SiteHealth
from exporter.snapshot import Publisher
from exporter.state import Store
from tests.builders import T0, iso
from tests.builders import wire_task as task
from tests.scrape import Scrape

SITES = ("11111111-1111-4111-8111-111111111111", "44444444-4444-4444-8444-444444444444")
RACKS = [f"22222222-2222-4222-8222-{n:012x}" for n in range(6)]
TRAYS = {rack: [f"55555555-5555-4555-8555-{r:06x}{t:06x}" for t in range(4)] for r, rack in enumerate(RACKS)}
DESCRIPTIONS = ("API power on Rack", "API firmware update Rack", "Leak detection on Rack", "custom job")


def _report(rng: random.Random, status: str, at: float) -> dict[str, object]:
    stages = []
    running = rng.randrange(3)
    for number in range(1, 4):
        if status == "Succeeded" or number - 1 < running:
            stage_status = "completed"
        elif number - 1 == running:
            stage_status = "failed" if status == "Failed" else "running"
        else:
            stage_status = "pending"
        times = {} if stage_status == "pending" else {"startedAt": iso(at - 300 + 60 * number)}
        if stage_status in ("completed", "failed"):
            times["finishedAt"] = iso(at - 250 + 60 * number)
        error = {"error": "Timed out waiting for tray"} if stage_status == "failed" else {}
        kind = ("PowerShelf", "NVSwitch", "Compute")[number - 1]
        steps = [{"componentType": kind, "status": stage_status, **times, **error}]
        stages.append({"number": number, "status": stage_status, "steps": steps, **times})
    return {"version": 1, "stages": stages}


class World:
    def __init__(self, seed: int, options: SeriesOptions) -> None:
        self.rng = random.Random(seed)
        self.now = T0
        self.store = Store(finished_ttl=600)
        self.task_metrics = TaskMetrics()
        self.store.subscribe(self.task_metrics)
        self.client_metrics = ClientMetrics()
        client = NicoClient(
            "http://unused", "acme", transport=httpx.MockTransport(lambda r: httpx.Response(500))
        )
        self.poller = Poller(client, self.store)
        for n, site_id in enumerate(SITES):
            self.poller.health[site_id] = SiteHealth(
                Site(id=site_id, name=f"site-{n}"), up=True, last_success=T0
            )
        for n, rack_id in enumerate(RACKS):
            self.poller.racks[rack_id] = RackEntry(SITES[n % 2], Rack(id=rack_id, name=f"rack-{n}"))
        self.options = options
        self.publisher = self._publisher()
        self.live: dict[str, tuple[str, str, dict[str, object]]] = {}  # task id -> (site, rack, payload)

    def _publisher(self) -> Publisher:
        return Publisher(
            self.store,
            self.poller,
            self.task_metrics,
            self.client_metrics,
            options=self.options,
            clock=lambda: self.now,
        )

    def observe(self, site_id: str, rack_id: str, data: dict[str, object]) -> None:
        self.store.observe(site_id, rack_id, Task.parse(data), self.now)
        self.live[str(data["id"])] = (site_id, rack_id, data)

    def step(self) -> str:
        """One random change, as the poller would make it; returns its name."""
        rng, now = self.rng, self.now
        choice = rng.choice(
            ["new", "new", "move", "move", "finish", "attribute", "tray_type", "vanish", "drop_rack", "time"]
        )
        running = [tid for tid, (_, _, d) in self.live.items() if d["status"] in ("Running", "Pending")]
        if choice == "new" or not running:
            rack_n = rng.randrange(len(RACKS))
            status = rng.choice(["Running", "Pending", "Waiting"])
            extra = (
                {"started": iso(now - 60), "report": _report(rng, "Running", now)}
                if status == "Running"
                else {}
            )
            data = task(
                status,
                description=rng.choice(DESCRIPTIONS),
                created=iso(now - 120),
                updated=iso(now),
                **extra,
            )
            self.observe(SITES[rack_n % 2], RACKS[rack_n], data)
            return "new"
        task_id = rng.choice(running)
        site_id, rack_id, data = self.live[task_id]
        if choice == "move":
            self.observe(
                site_id,
                rack_id,
                {**data, "status": "Running", "started": iso(now - 60), "updated": iso(now),
                 "report": _report(rng, "Running", now)},
            )  # fmt: skip
        elif choice == "finish":
            status = rng.choice(["Succeeded", "Failed", "Terminated"])
            self.observe(
                site_id,
                rack_id,
                {**data, "status": status, "started": data["started"] or iso(now - 60), "updated": iso(now),
                 "finished": iso(now), "report": _report(rng, status, now)},
            )  # fmt: skip
        elif choice == "attribute":
            self.store.attribute(task_id, rng.sample(TRAYS[rack_id], rng.randrange(1, 4)))
        elif choice == "tray_type":
            self.store.learn_tray_type(rng.choice(TRAYS[rack_id]), rng.choice(["Compute", "NVSwitch"]))
        elif choice == "vanish":
            self.store.vanish(task_id, now)
            self.live.pop(task_id)
        elif choice == "drop_rack":
            self.store.drop_rack(rack_id)
            for gone in [t for t, (_, r, _) in self.live.items() if r == rack_id]:
                self.live.pop(gone)
        else:
            self.now += rng.choice([5.0, 200.0, 700.0])  # 700 s: past the finished-task TTL
            for gone in self.store.expire(self.now):
                self.live.pop(gone, None)
        return choice

    def fresh_body(self, fmt: Format) -> bytes:
        """The same state rendered by a publisher with nothing cached."""
        return self._publisher().publish().render(fmt, now=self.now)


OPTIONS = {
    "default": SeriesOptions(),
    "current-status-with-stages": SeriesOptions(status_one_hot=False, per_task_stages=True),
    "denylist": SeriesOptions(families=family_filter(denylist=["nico_tray_.*", "nico_task_info"])),
}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_incremental_snapshots_equal_a_render_from_scratch(seed: int, options: SeriesOptions) -> None:
    world = World(seed, options)
    seen: set[str] = set()
    for n in range(120):
        for _ in range(world.rng.randrange(1, 6)):  # several changes between publishes
            seen.add(world.step())
        world.store.commit()
        snapshot = world.publisher.publish()
        for fmt in (Format.TEXT, Format.OPENMETRICS):
            assert snapshot.render(fmt, now=world.now) == world.fresh_body(fmt), (n, fmt)
    assert seen >= {"new", "move", "finish", "attribute", "tray_type", "vanish", "drop_rack", "time"}


def test_a_published_snapshot_never_changes() -> None:
    world = World(7, SeriesOptions())
    for _ in range(30):
        world.step()
    world.store.commit()
    first = world.publisher.publish()
    before = first.render(Format.TEXT, now=T0), first.render(Format.OPENMETRICS, now=T0)
    for _ in range(60):
        world.step()
        world.store.commit()
        world.publisher.publish()
    assert world.publisher.latest is not first
    assert (first.render(Format.TEXT, now=T0), first.render(Format.OPENMETRICS, now=T0)) == before


def _finished_series(publisher: Publisher, family: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(labels.items())): value for labels, value in Scrape(publisher.publish()).samples(family)
    }


def test_counters_start_at_zero_so_the_first_increment_is_seen_by_increase() -> None:
    # The alert rules' increase() over nico_tasks_finished_total (failure rate) and our promtool
    # tests of them assume each series is 0 before its first count; a series born at 1 would hide
    # a site's first failure. Checked here on the exposition itself.
    world = World(1, SeriesOptions())
    before = _finished_series(world.publisher, "nico_tasks_finished_total")
    statuses, operations = ("Failed", "Succeeded", "Terminated"), 12  # exporter.operations.Operation
    assert len(before) == len(SITES) * len(statuses) * operations
    assert set(before.values()) == {0.0}
    key = (("operation", "power_on"), ("site_id", SITES[0]), ("status", "Failed"))
    assert key in before

    data = task("Running", description="API power on Rack", created=iso(T0 - 120), started=iso(T0 - 60),
                report=_report(world.rng, "Running", T0))  # fmt: skip
    world.observe(SITES[0], RACKS[0], data)
    world.now += 30
    world.observe(SITES[0], RACKS[0], {**data, "status": "Failed", "finished": iso(world.now),
                                       "updated": iso(world.now), "report": _report(world.rng, "Failed", world.now)})  # fmt: skip
    world.store.commit()
    after = _finished_series(world.publisher, "nico_tasks_finished_total")
    assert after == {**before, key: 1.0}

    # Task Runs: each final status from the start, on the sites that serve them.
    world.poller.runs.supported.update({SITES[0]: True, SITES[1]: False})
    runs = _finished_series(world._publisher(), "nico_task_runs_finished_total")
    assert {dict(k)["site_id"] for k in runs} == {SITES[0]} and set(runs.values()) == {0.0}
    assert {dict(k)["status"] for k in runs} == {"Completed", "CompletedWithFailures", "Failed", "Cancelled"}
