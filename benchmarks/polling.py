"""Polling economy and freshness: the real poller against a simulator process over loopback.

A 100-rack site with a realistic history (50 to 500 finished tasks per rack), on both kinds of
server: NICo v2.0 (task lists are their first 20 rows) and a server that pages task lists as
the spec says. NICo's own limiter is on (10 req/s per client, burst 30), and the exporter runs
with its production defaults (15 s active poll, 5 min counter reads and discovery, 10 req/s).

Time is scaled so a run takes a few minutes: the simulator runs ``SCALE`` times faster than real
time, the exporter's intervals are divided and every rate (the exporter's budget, NICo's
limiter) multiplied by the same factor; bursts stay as they are. Queueing under the budget then
behaves as at real speed, and every figure is in NICo's (simulated) seconds. Only HTTP latency
is not scaled, which makes the figures slightly pessimistic.

- freshness: for every status change, stage start and stage end the simulator made after the
  warm-up, the simulated seconds from the change (NICo's own timestamps) to the moment the
  exporter's store recorded it.
- calls: every API call in a window of ``WINDOW`` simulated seconds, at least twice the longest
  job interval, so counter reads of busy racks and discovery are in it; by endpoint.
- throttled: the share of those calls NICo's limiter answered 429.
- economy: calls per rack per minute of a real naive per-tray poller (every tray's active list
  with reports, every interval, and a ``GET /task/{id}`` for each task that leaves) run against
  the same simulator, at the interval that gives it the exporter's measured p99 freshness,
  divided by the exporter's. The naive poller runs on fewer racks (its cost per rack does not
  depend on how many there are) and without NICo's limiter, which it could not live under.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import httpx

from benchmarks._common import simulator_process
from exporter.auth import StaticToken
from exporter.client import ClientHooks, NicoClient, RequestEvent
from exporter.models import TaskStatus
from exporter.poller import Intervals, Poller
from exporter.scheduler import Runner
from exporter.state import Kind, Store, Transition

SCALE = 5.0
BUDGET_RPS = 10.0
NICO_BURST = 30
RACKS = 100
NAIVE_RACKS = 8
TRAYS_PER_RACK = 35
ACTIVE = 15.0
WARMUP = 60.0  # simulated seconds before samples count
WINDOW = 660.0  # > 2 x the longest interval (300 s): counter reads of busy racks, discovery
FRESHNESS_TARGET_P99 = 20.0
SERVERS = {"v2": (), "paged": ("--task-list-paging",)}


@dataclass
class RunResult:
    racks: int
    samples: list[float]
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    window: float = 0.0  # simulated seconds of the measured window
    # What the exporter's jobs did in the window (its PollerStats counters), by name.
    work: dict[str, int] = field(default_factory=dict)

    def quantile(self, q: float) -> float:
        if not self.samples:
            return float("nan")
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    @property
    def calls_per_rack_minute(self) -> float:
        return self.total / self.racks / (self.window / 60)

    @property
    def throttled_ratio(self) -> float:
        throttled = sum(n for (_, code), n in self.calls.items() if code == "429")
        return throttled / self.total if self.total else 0.0

    def per_endpoint(self) -> dict[str, float]:
        """Calls per rack per minute by endpoint template (all status codes)."""
        out: Counter[str] = Counter()
        for (endpoint, _), n in self.calls.items():
            out[endpoint] += n
        minutes = self.window / 60
        return {endpoint: n / self.racks / minutes for endpoint, n in sorted(out.items())}


class SimClock:
    """Maps real time to the simulator's time (anchored on one reading of its clock)."""

    def __init__(self, url: str) -> None:
        before = time.time()
        now = httpx.get(url + "/_sim/truth", timeout=60).json()["now"]
        after = time.time()
        self.anchor_real = (before + after) / 2
        self.anchor_sim = datetime.fromisoformat(now.replace("Z", "+00:00")).timestamp()

    def now(self) -> float:
        return self.anchor_sim + (time.time() - self.anchor_real) * SCALE


def _change_time(t: Transition) -> float | None:
    task = t.record.task
    if t.kind is Kind.STATUS_CHANGED:
        when = {
            TaskStatus.RUNNING: task.started,
            TaskStatus.SUCCEEDED: task.finished,
            TaskStatus.FAILED: task.finished,
            TaskStatus.TERMINATED: task.finished,
        }.get(task.status)
        return when.timestamp() if when is not None else None
    if t.kind is Kind.STAGE_STARTED and t.stage is not None and t.stage.started_at is not None:
        return t.stage.started_at.timestamp()
    if t.kind is Kind.STAGE_FINISHED and t.stage is not None and t.stage.finished_at is not None:
        return t.stage.finished_at.timestamp()
    return None


def _freshness_recorder(sim: SimClock, store: Store, samples: list[float], measuring_from: float) -> None:
    def record(t: Transition) -> None:
        changed = _change_time(t)
        observed = sim.now()
        if changed is not None and changed >= measuring_from:
            samples.append(max(0.0, observed - changed))

    store.subscribe(record)


Starter = Callable[
    [NicoClient, Store, asyncio.Event], tuple[asyncio.Task[None], Callable[[], dict[str, int]]]
]
_WORK = (
    "rack_polls",
    "total_reads",
    "totals_moved",
    "active_lists",
    "full_listings",
    "tray_scans",
    "followed",
    "late_polls",
)


async def _measured(url: str, racks: int, run: Starter, rps: float) -> RunResult:
    """Start a poller with ``run``, warm up, then count its calls and freshness over the window."""
    sim = SimClock(url)
    events: list[RequestEvent] = []
    client = NicoClient(
        url,
        "acme",
        auth=StaticToken("sim-token"),
        max_requests_per_second=rps,
        hooks=ClientHooks(on_request=events.append),
        timeout_s=60.0,
    )
    store = Store()
    result = RunResult(racks, [])
    _freshness_recorder(sim, store, result.samples, sim.now() + WARMUP)
    stop = asyncio.Event()
    job, work = run(client, store, stop)
    await asyncio.sleep(WARMUP / SCALE)
    start_events, start_sim, start_work = len(events), sim.now(), work()
    await asyncio.sleep(WINDOW / SCALE)
    result.calls = Counter((e.endpoint, e.code) for e in events[start_events:])
    result.window = sim.now() - start_sim
    result.work = {k: v - start_work.get(k, 0) for k, v in work().items()}
    stop.set()
    await job
    await client.aclose()
    return result


def _exporter(
    client: NicoClient, store: Store, stop: asyncio.Event
) -> tuple[asyncio.Task[None], Callable[[], dict[str, int]]]:
    intervals = Intervals(
        active=ACTIVE / SCALE,
        tray_attribution=60 / SCALE,
        reconcile=300 / SCALE,
        discovery=300 / SCALE,
        final_fetch=2 / SCALE,
    )
    # Timestamps compared with NICo's must be NICo's (simulated) time; pacing stays real.
    sim = SimClock(str(client.base_url))
    poller = Poller(client, store, intervals=intervals, clock=sim.now)
    return asyncio.create_task(Runner(poller).run(stop)), lambda: {k: getattr(poller.stats, k) for k in _WORK}


class NaivePoller:
    """The baseline: every tray's active list with reports each interval, finals by id.

    What an exporter does that knows nothing of racks, counters or stage layouts: NICo's
    ``GET /tray/{id}/task?activeOnly=true&includeReport=true`` for all 35 trays of every rack,
    and ``GET /task/{id}`` for each task that left the lists.
    """

    def __init__(self, client: NicoClient, store: Store, interval: float, clock: Callable[[], float]) -> None:
        self.client, self.store, self.interval, self.clock = client, store, interval, clock

    async def run(self, stop: asyncio.Event) -> None:
        site = (await self.client.list_sites()).items[0].id
        trays = (await self.client.list_trays(site)).items
        active: dict[str, str] = {}  # task id -> rack id
        while not stop.is_set():
            started = time.monotonic()
            seen: dict[str, str] = {}
            lists = await asyncio.gather(
                *(self.client.list_tray_tasks(site, tray.id, include_report=True) for tray in trays),
                return_exceptions=True,
            )
            now = self.clock()
            for tray, listing in zip(trays, lists, strict=True):
                if isinstance(listing, BaseException) or tray.rack_id is None:
                    continue
                for task in listing.items:
                    seen[task.id] = tray.rack_id
                    self.store.observe(site, tray.rack_id, task, now)
            gone = [tid for tid in active if tid not in seen]
            finals = await asyncio.gather(
                *(self.client.get_task(site, tid) for tid in gone), return_exceptions=True
            )
            for tid, final in zip(gone, finals, strict=True):
                if not isinstance(final, BaseException):
                    self.store.observe(site, active[tid], final, self.clock())
            active = seen
            pause = self.interval - (time.monotonic() - started)
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)


def _naive(interval: float) -> Starter:
    def start(
        client: NicoClient, store: Store, stop: asyncio.Event
    ) -> tuple[asyncio.Task[None], Callable[[], dict[str, int]]]:
        sim = SimClock(str(client.base_url))
        return asyncio.create_task(NaivePoller(client, store, interval / SCALE, sim.now).run(stop)), dict

    return start


def _sim_args(racks: int, server: tuple[str, ...], *, limiter: bool) -> list[str]:
    args = [
        "--sites", "1", "--racks", str(racks), "--non-flow-sites", "0", "--speed", str(SCALE),
        "--arrivals-per-rack-per-hour", "12", "--stuck-tasks", "0", "--history-hours", "0.5",
        "--history-tasks-per-rack", "50:500",
        "--stage-seconds", "power=10:90,firmware=60:300,bring_up=60:300", *server,
    ]  # fmt: skip
    if limiter:
        args += ["--rate-limit", str(BUDGET_RPS * SCALE), "--rate-limit-burst", str(NICO_BURST)]
    return args


def _run(
    racks: int,
    server: tuple[str, ...],
    start: Starter,
    *,
    limiter: bool,
    rps: float,
) -> RunResult:
    with simulator_process(*_sim_args(racks, server, limiter=limiter)) as url:
        return asyncio.run(_measured(url, racks, start, rps))


def run() -> dict[str, float]:
    results: dict[str, float] = {}
    for name, server in SERVERS.items():
        ours = _run(RACKS, server, _exporter, limiter=True, rps=BUDGET_RPS * SCALE)
        p99 = ours.quantile(0.99)
        # The naive poller at the interval that gives it the same p99 (its p99 is about its
        # interval plus a list's latency), without a limit on its calls.
        naive = _run(NAIVE_RACKS, server, _naive(max(1.0, p99 - 1.0)), limiter=False, rps=0)
        results.update(
            {
                f"{name}_freshness_p50_s": round(ours.quantile(0.5), 2),
                f"{name}_freshness_p99_s": round(p99, 2),
                f"{name}_freshness_samples": float(len(ours.samples)),
                f"{name}_calls_per_rack_per_min": round(ours.calls_per_rack_minute, 3),
                f"{name}_throttled_ratio": round(ours.throttled_ratio, 4),
                f"{name}_naive_freshness_p99_s": round(naive.quantile(0.99), 2),
                f"{name}_naive_calls_per_rack_per_min": round(naive.calls_per_rack_minute, 2),
                f"{name}_economy_ratio": round(naive.calls_per_rack_minute / ours.calls_per_rack_minute, 1),
            }
        )
        for endpoint, rate in ours.per_endpoint().items():
            results[f"{name}_calls_per_rack_per_min {endpoint}"] = round(rate, 3)
        minutes = ours.window / 60
        for job, count in ours.work.items():
            results[f"{name}_per_rack_per_min {job}"] = round(count / RACKS / minutes, 3)
        print(
            f"  {name}: p99 {p99:.1f}s, {ours.calls_per_rack_minute:.2f} calls/rack/min "
            f"({ours.total} calls, {ours.throttled_ratio:.2%} throttled); naive p99 "
            f"{naive.quantile(0.99):.1f}s at {naive.calls_per_rack_minute:.1f} calls/rack/min",
            flush=True,
        )
    return results
