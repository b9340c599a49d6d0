"""/metrics render time for 10,000 active tasks on 1,000 racks, and the memory that state takes.

``render_ratio`` compares our collector (which builds the families from the store at scrape
time) with bare prometheus_client rendering the very same series from families built
beforehand: the cost of building the snapshot on each scrape. Best of several renders each.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.client import NicoClient, RequestEvent
from exporter.metrics import ClientMetrics, NicoCollector, TaskMetrics
from exporter.models import Rack, Site, Task, Tray
from exporter.poller import Poller, RackEntry, SiteHealth
from exporter.state import Store

RACKS = 1000
TASKS = 10_000
RENDERS = 5
DESCRIPTIONS = ("API power on Rack", "API power off Rack", "API firmware update Rack", "API power cycle Tray")
LAYOUT = (("PowerShelf",), ("NVSwitch",), ("Compute",))


def _task(rng: random.Random, now: datetime) -> dict[str, Any]:
    created = now - timedelta(seconds=rng.uniform(60, 7200))
    started = created + timedelta(seconds=rng.uniform(1, 60))
    running = rng.randrange(len(LAYOUT))
    stages = []
    for number, kinds in enumerate(LAYOUT, start=1):
        status = "completed" if number - 1 < running else "running" if number - 1 == running else "pending"
        stage: dict[str, Any] = {
            "number": number,
            "status": status,
            "steps": [{"componentType": k, "status": status, "totalComponents": 9} for k in kinds],
        }
        if status != "pending":
            stage["startedAt"] = (started + timedelta(seconds=60 * (number - 1))).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
        if status == "completed":
            stage["finishedAt"] = (started + timedelta(seconds=60 * number)).strftime("%Y-%m-%dT%H:%M:%SZ")
        stages.append(stage)
    return {
        "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "status": "Running",
        "description": rng.choice(DESCRIPTIONS),
        "ruleId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "created": created.isoformat(),
        "started": started.isoformat(),
        "updated": (started + timedelta(seconds=30)).isoformat(),
        "finished": None,
        "report": {"version": 1, "stages": stages},
    }


def build_state() -> NicoCollector:
    rng = random.Random(1)
    now = datetime.now(UTC)
    store = Store()
    task_metrics = TaskMetrics()
    store.subscribe(task_metrics)
    client = NicoClient("http://127.0.0.1:9", "acme", max_requests_per_second=0)
    poller = Poller(client, store)
    sites = [Site.model_validate({"id": str(uuid.uuid4()), "name": f"site-{i}"}) for i in range(2)]
    for site in sites:
        poller.health[site.id] = SiteHealth(site, up=True, last_success=now.timestamp())
    racks: list[tuple[str, str]] = []
    for n in range(RACKS):
        site = sites[n % 2]
        rack = Rack.model_validate({"id": str(uuid.uuid4()), "name": f"rack-{n:04d}"})
        trays = [
            Tray.model_validate({"id": str(uuid.uuid4()), "rackId": rack.id, "type": kind})
            for kind, count in (("Compute", 18), ("NVSwitch", 9), ("PowerShelf", 8))
            for _ in range(count)
        ]
        for tray in trays:
            store.tray_types[tray.id] = tray.type.value
        poller.racks[rack.id] = RackEntry(site.id, rack, trays)
        racks.append((site.id, rack.id))
    stamp = now.timestamp()
    for n in range(TASKS):
        site_id, rack_id = racks[n % RACKS]
        task = Task.model_validate(_task(rng, now))
        store.observe(site_id, rack_id, task, stamp)
        entry = poller.racks[rack_id]
        if n % 3 == 0:
            store.attribute(task.id, [t.id for t in entry.trays])
    client_metrics = ClientMetrics()
    for endpoint in ("/rack/{id}/task", "/task/{id}", "/tray/{id}/task", "/site", "/rack", "/tray"):
        for code in ("200", "500", "429"):
            client_metrics.on_request(RequestEvent(endpoint, "GET", code, 0.2, 1))
    return NicoCollector(store, poller, task_metrics, client_metrics)


class Prebuilt(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def _render(registry: CollectorRegistry) -> tuple[float, int]:
    start = time.perf_counter()
    body = generate_latest(registry)
    return time.perf_counter() - start, len(body)


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run() -> dict[str, float]:
    collector = build_state()
    ours = CollectorRegistry(auto_describe=False)
    ours.register(collector)
    bare = CollectorRegistry(auto_describe=False)
    bare.register(Prebuilt(collector.collect()))
    _render(ours)  # the first scrape builds the per-task sample cache
    ours_s = bare_s = float("inf")
    size = bare_size = 0
    for _ in range(RENDERS):  # alternate, so a noisy moment hits both sides
        t, size = _render(ours)
        ours_s = min(ours_s, t)
        t, bare_size = _render(bare)
        bare_s = min(bare_s, t)
    assert size == bare_size, "both sides must render the same series"
    return {
        "render_10k_s": round(ours_s, 3),
        "render_bare_10k_s": round(bare_s, 3),
        "render_ratio": round(ours_s / bare_s, 3),
        "render_10k_bytes": float(size),
        "rss_mb": round(_rss_mb(), 1),
    }
