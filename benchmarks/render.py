"""/metrics for 10,000 active tasks on 1,000 racks: render time, scrape latency under churn, the
poller's throughput while scrapers run, and the memory the state takes.

- ``render_ratio``: our scrape (a published snapshot written out: cached per-task bytes plus the
  aggregates rendered from frozen data) over prometheus_client's ``generate_latest`` of the very
  same series from families built beforehand. Best of several renders each, alternating; the two
  bodies, parsed, must hold the same samples.
- ``publish_cold_s`` / ``publish_warm_s``: building a snapshot when every task's lines must be
  rendered (the first one), and when none changed.
- Through the real HTTP server, while a churn thread (the poller's side) changes 200 tasks a
  second and publishes every 0.5 s: p50 and p99 scrape latency, plain and gzipped at levels 1
  and 6, and the gzip body sizes.
- ``poll_rate_under_scrape_ratio``: the poller's side, paced at 200 changes a second (5x the
  active polls a second of a storm), its rate while four scrapers run back to back over its rate
  with none (both in this run). ``flat_out_rate_under_scrape_ratio``: the same with the churn
  thread unpaced, CPU-bound: the worst case, where on a 2-core machine the scrapers' processes
  and the server's gzip compete with it for the cores, not only for the interpreter lock.
  ``poll_rate_under_plain_scrape_ratio``: four plain scrapers; ``..._static_scrape_ratio``: the
  same four scrapers pulling the same body from another process (a static file server), the
  machine's own cost of that load; ``poll_rate_exporter_share_ratio``: the first over the second,
  what serving the scrapes from this process costs the poller.
- ``bytes_per_task``: a ``tracemalloc`` delta, per task, of adding the 10k tasks to a state that
  already holds the 1,000 racks' inventory (35 trays each) and publishing; the inventory itself
  is ``inventory_bytes_per_rack``; ``rss_mb`` at that point.
- ``scrape_cold_s``: the first scrape through the server of a snapshot nothing has rendered yet.
- Scrapers are separate processes (benchmarks/scraper.py), as Prometheus is: only the exporter's
  own HTTP threads compete with the poller for the interpreter lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from exporter.client import NicoClient, RequestEvent
from exporter.exposition import Format
from exporter.learner import Learner, Window
from exporter.metrics import ClientMetrics, TaskMetrics
from exporter.models import Rack, Site, Task, Tray
from exporter.poller import Poller, RackEntry, SiteHealth
from exporter.snapshot import PREDICT_EVERY_S, Publisher, _predictions
from exporter.state import Store
from exporter.web import MetricsServer

RACKS = 1000
TASKS = 10_000
RENDERS = 5
SCRAPERS = 4
SCRAPE_SECONDS = 8.0
# The poller's side, paced: 5x the active polls a second of the held-out storm (about 37/s), each
# poll here a task re-parsed, observed and committed (a publish every 0.5 s).
POLLER_PER_S = 200
DESCRIPTIONS = ("API power on Rack", "API power off Rack", "API firmware update Rack", "API power cycle Tray")
LAYOUT = (("PowerShelf",), ("NVSwitch",), ("Compute",))


def _task(
    rng: random.Random, now: datetime, task_id: str | None = None, running: int | None = None
) -> dict[str, Any]:
    created = now - timedelta(seconds=rng.uniform(60, 7200))
    started = created + timedelta(seconds=rng.uniform(1, 60))
    running = rng.randrange(len(LAYOUT)) if running is None else running
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
        "id": task_id or str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "status": "Running",
        "description": rng.choice(DESCRIPTIONS),
        "ruleId": None,
        "created": created.isoformat(),
        "started": started.isoformat(),
        "updated": (started + timedelta(seconds=30 + rng.random())).isoformat(),
        "finished": None,
        "report": {"version": 1, "stages": stages},
    }


@dataclass
class State:
    store: Store
    poller: Poller
    publisher: Publisher
    tasks: list[tuple[str, str, str]]  # (site, rack, task id)
    racks: list[tuple[str, str]]  # (site, rack)
    rng: random.Random
    now: datetime


def build_inventory() -> State:
    """The 1,000 racks and their trays (as the poller knows them after discovery), no tasks yet."""
    rng = random.Random(1)
    now = datetime.now(UTC)
    store = Store()
    task_metrics = TaskMetrics()
    store.subscribe(task_metrics)
    client = NicoClient("http://127.0.0.1:9", "acme", max_requests_per_second=0)
    poller = Poller(client, store)
    sites = [
        Site.parse({"id": str(uuid.UUID(int=rng.getrandbits(128))), "name": f"site-{i}"}) for i in range(2)
    ]
    for site in sites:
        poller.health[site.id] = SiteHealth(site, up=True, last_success=now.timestamp())
    racks: list[tuple[str, str]] = []
    for n in range(RACKS):
        site = sites[n % 2]
        rack = Rack.parse({"id": str(uuid.UUID(int=rng.getrandbits(128))), "name": f"rack-{n:04d}"})
        trays = [
            Tray.parse({"id": str(uuid.UUID(int=rng.getrandbits(128))), "rackId": rack.id, "type": kind})
            for kind, count in (("Compute", 18), ("NVSwitch", 9), ("PowerShelf", 8))
            for _ in range(count)
        ]
        for tray in trays:
            store.learn_tray_type(tray.id, tray.type.value)
        poller.racks[rack.id] = RackEntry(site.id, rack, trays)
        racks.append((site.id, rack.id))
    client_metrics = ClientMetrics()
    for endpoint in ("/rack/{id}/task", "/task/{id}", "/tray/{id}/task", "/site", "/rack", "/tray"):
        for code in ("200", "500", "429"):
            client_metrics.on_request(RequestEvent(endpoint, "GET", code, 0.2, 1))
    publisher = Publisher(store, poller, task_metrics, client_metrics)
    return State(store, poller, publisher, [], racks, rng, now)


def add_tasks(state: State) -> None:
    """10,000 running tasks, a third of them attributed to all of their rack's trays."""
    stamp = state.now.timestamp()
    for n in range(TASKS):
        site_id, rack_id = state.racks[n % RACKS]
        task = Task.parse(_task(state.rng, state.now))
        state.store.observe(site_id, rack_id, task, stamp)
        if n % 3 == 0:
            state.store.attribute(task.id, [t.id for t in state.poller.racks[rack_id].trays])
        state.tasks.append((site_id, rack_id, task.id))
    state.store.commit()  # as the poller does after each poll (no persistence here: the batch goes)


def build_state() -> State:
    state = build_inventory()
    add_tasks(state)
    return state


class Prebuilt(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def _samples(body: bytes) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


class Churn:
    """The poller's side: changes tasks (new versions, observed) and publishes, on its own thread."""

    def __init__(self, state: State, per_s: float | None) -> None:
        self.state, self.per_s = state, per_s
        self.changes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._rng = random.Random(2)

    def _run(self) -> None:
        state, rng = self.state, self._rng
        now = datetime.now(UTC)
        last_publish = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            site_id, rack_id, task_id = rng.choice(state.tasks)
            task = Task.parse(_task(rng, now, task_id, rng.randrange(len(LAYOUT))))
            state.store.observe(site_id, rack_id, task, time.time())
            state.store.commit()
            self.changes += 1
            if time.monotonic() - last_publish >= 0.5:
                state.publisher.publish()
                last_publish = time.monotonic()
            if self.per_s:
                pause = 1.0 / self.per_s - (time.monotonic() - started)
                if pause > 0:
                    time.sleep(pause)

    def __enter__(self) -> Churn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _scrapers(url: str, gzipped: list[bool], seconds: float) -> list[list[float]]:
    """Run one scraper process per entry (benchmarks/scraper.py), back to back for ``seconds``;
    each one's latencies."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.scraper", url, str(seconds), *(["gzip"] if gz else [])],
            stdout=subprocess.PIPE,
            text=True,
        )
        for gz in gzipped
    ]
    latencies = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 120)
        if proc.returncode:
            raise RuntimeError(f"scraper exited {proc.returncode}")
        latencies.append([float(line) for line in out.split()])
    return latencies


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def _static_server(body: bytes) -> Iterator[str]:
    """The same body served by another process (Python's http.server, from a file): the control
    for what four scrapers cost this machine, whoever serves them."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "metrics").write_bytes(body)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            str(port),
            "--directory",
            folder,
        ]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            deadline = time.monotonic() + 10
            while True:
                try:
                    httpx.head(url, timeout=1).raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=10)


def _served(state: State, gzip_level: int, fn: Any) -> Any:
    async def main() -> Any:
        server = MetricsServer(lambda: state.publisher.latest, listen=("127.0.0.1", 0), gzip_level=gzip_level)
        await server.start()
        try:
            return await asyncio.to_thread(fn, server.url + "/metrics")
        finally:
            await server.stop()

    return asyncio.run(main())


def _prediction_cost(state: State) -> float:
    """Seconds to predict every running task once (overrun ratio, expected finish), with every
    stage of every (site, operation) learned: what a publish adds every ``PREDICT_EVERY_S``."""
    rng = random.Random(5)
    learner = Learner(window=50)
    for record in state.store.records():
        site, op = record.site_id, record.operation.value
        if (site, op) not in learner.tasks:
            learner.tasks[(site, op)] = window = Window(50)
            for _ in range(50):
                window.add(rng.uniform(300, 900))
        for number, kinds in enumerate(LAYOUT, start=1):
            for kind in kinds:
                if (site, op, number, kind) not in learner.stages:
                    learner.stages[(site, op, number, kind)] = window = Window(50)
                    for _ in range(50):
                        window.add(rng.uniform(30, 90))
    now = time.time()
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        predictions = _predictions(state.store.records(), learner, now)
        best = min(best, time.perf_counter() - began)
    assert predictions["nico_task_overrun_ratio"], "no task was predicted"
    return best


def run() -> dict[str, float]:
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    state = build_inventory()
    state.publisher.publish()
    inventory = tracemalloc.get_traced_memory()[0]
    add_tasks(state)
    snapshot = state.publisher.publish()
    bytes_per_task = (tracemalloc.get_traced_memory()[0] - inventory) / TASKS
    bytes_per_rack = (inventory - start) / RACKS
    tracemalloc.stop()
    rss = _rss_mb()
    # The first scrape of a fresh snapshot through the server (no body cached anywhere).
    scrape_cold = min(_served(state, 1, lambda url: _scrapers(url, [False], 0.0))[0][:1] or [float("nan")])
    warm = time.perf_counter()
    snapshot = state.publisher.publish()
    publish_warm = time.perf_counter() - warm
    predict_s = _prediction_cost(state)

    # Render: ours against prometheus_client on the same series, families built beforehand.
    at = snapshot.published_at  # a fixed render time: the snapshot's age is the same in every body
    ours_body = snapshot.render(Format.TEXT, now=at)
    bare = CollectorRegistry(auto_describe=False)
    bare.register(Prebuilt(text_string_to_metric_families(ours_body.decode())))
    ours_s = bare_s = float("inf")
    bare_body = b""
    for _ in range(RENDERS):
        t = time.perf_counter()
        ours_body = snapshot.render(Format.TEXT, now=at)
        ours_s = min(ours_s, time.perf_counter() - t)
        t = time.perf_counter()
        bare_body = generate_latest(bare)
        bare_s = min(bare_s, time.perf_counter() - t)
    assert _samples(ours_body) == _samples(bare_body), "both sides must render the same samples"
    om_start = time.perf_counter()
    snapshot.render(Format.OPENMETRICS)
    om_s = time.perf_counter() - om_start
    sizes = {level: len(gzip.compress(ours_body, compresslevel=level)) for level in (1, 6)}
    gzip_s = {}
    for level in (1, 6):
        t = time.perf_counter()
        gzip.compress(ours_body, compresslevel=level)
        gzip_s[level] = time.perf_counter() - t

    # Scrape latency through the server while the state churns.
    results: dict[str, float] = {}
    for name, level, headers in (
        ("plain", 1, {}),
        ("gzip1", 1, {"Accept-Encoding": "gzip"}),
        ("gzip6", 6, {"Accept-Encoding": "gzip"}),
    ):
        with Churn(state, POLLER_PER_S):
            latencies = _served(
                state, level, lambda url, gz=bool(headers): _scrapers(url, [gz], SCRAPE_SECONDS)
            )[0]
        results[f"scrape_{name}_p50_s"] = round(statistics.median(latencies), 3)
        results[f"scrape_{name}_p99_s"] = round(_quantile(latencies, 0.99), 3)

    # The poller side's throughput with four scrapers back to back, and with none.
    def churn_rate(scrapers: int, per_s: float | None, gzip_every: int = 2, static: str = "") -> float:
        gzipped = [gzip_every > 0 and i % gzip_every == 1 for i in range(scrapers)]
        with Churn(state, per_s) as churn:
            start_changes, start = churn.changes, time.monotonic()
            if static:
                _scrapers(static, gzipped, SCRAPE_SECONDS)
            elif scrapers:
                _served(state, 1, lambda url: _scrapers(url, gzipped, SCRAPE_SECONDS))
            else:
                time.sleep(SCRAPE_SECONDS)
            return (churn.changes - start_changes) / (time.monotonic() - start)

    paced_quiet = churn_rate(0, POLLER_PER_S)
    paced_busy = churn_rate(SCRAPERS, POLLER_PER_S)
    paced_plain = churn_rate(SCRAPERS, POLLER_PER_S, gzip_every=0)
    with _static_server(ours_body) as static_url:
        paced_control = churn_rate(SCRAPERS, POLLER_PER_S, gzip_every=0, static=static_url)
    quiet = churn_rate(0, None)
    busy = churn_rate(SCRAPERS, None)
    # Cold: a publisher with nothing cached renders every task's lines (outside tracemalloc).
    fresh = Publisher(state.store, state.poller, state.publisher.task_metrics, state.publisher.client_metrics)
    cold = time.perf_counter()
    fresh.publish()
    publish_cold = time.perf_counter() - cold
    results.update(
        {
            "render_10k_s": round(ours_s, 4),
            "render_openmetrics_10k_s": round(om_s, 4),
            "render_bare_10k_s": round(bare_s, 3),
            "render_ratio": round(ours_s / bare_s, 4),
            "render_10k_bytes": float(len(ours_body)),
            "gzip1_bytes": float(sizes[1]),
            "gzip6_bytes": float(sizes[6]),
            "gzip1_s": round(gzip_s[1], 3),
            "gzip6_s": round(gzip_s[6], 3),
            "publish_cold_s": round(publish_cold, 3),
            "publish_warm_s": round(publish_warm, 4),
            "predict_10k_s": round(predict_s, 4),
            "predict_share_of_poller": round(predict_s / PREDICT_EVERY_S, 4),
            "poll_rate_quiet_per_s": round(paced_quiet, 1),
            "poll_rate_under_scrape_per_s": round(paced_busy, 1),
            "poll_rate_under_scrape_ratio": round(paced_busy / paced_quiet, 3),
            "poll_rate_under_plain_scrape_ratio": round(paced_plain / paced_quiet, 3),
            "poll_rate_under_static_scrape_ratio": round(paced_control / paced_quiet, 3),
            "poll_rate_exporter_share_ratio": round(paced_plain / paced_control, 3),
            "flat_out_rate_quiet_per_s": round(quiet, 1),
            "flat_out_rate_under_scrape_per_s": round(busy, 1),
            "flat_out_rate_under_scrape_ratio": round(busy / quiet, 3),
            "bytes_per_task": round(bytes_per_task),
            "inventory_bytes_per_rack": round(bytes_per_rack),
            "scrape_cold_s": round(scrape_cold, 3),
            "rss_mb": round(rss, 1),
        }
    )
    return results
