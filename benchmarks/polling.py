"""Polling economy and freshness: the real poller against a simulator process over loopback.

Time is scaled so a run takes less than a minute: the simulator runs ``SCALE`` times faster than
real time, and the exporter's intervals are divided and its request budget multiplied by the same
factor. Queueing under the budget then behaves as at real speed; every figure is reported in
NICo's (simulated) seconds. Only HTTP latency is not scaled, which makes the figures slightly
pessimistic.

- freshness: for every status change, stage start and stage end the simulator made after the
  warm-up, the simulated seconds from the change (NICo's own timestamps) to the moment the
  exporter's store recorded it.
- economy: API calls per rack per minute in steady state, against naive per-tray polling at the
  same freshness (each of a rack's 35 trays listed with ``includeReport=true`` every active
  interval: 35 x 4 = 140 calls per rack per minute).
- capacity: the largest rack count whose p99 freshness stays within 20 s at 10 req/s.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
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
ACTIVE = 15.0
TRAYS_PER_RACK = 35
WARMUP = 60.0  # simulated seconds before samples count
FRESHNESS_TARGET_P99 = 20.0


@dataclass
class RunResult:
    racks: int
    samples: list[float]
    calls: int
    window: float  # simulated seconds of the measured window

    def quantile(self, q: float) -> float:
        if not self.samples:
            return float("nan")
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def calls_per_rack_minute(self) -> float:
        return self.calls / self.racks / (self.window / 60)


class SimClock:
    """Maps real time to the simulator's time (anchored on one reading of its clock)."""

    def __init__(self, url: str) -> None:
        before = time.time()
        now = httpx.get(url + "/_sim/truth", timeout=30).json()["now"]
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


async def _measure(url: str, racks: int, duration: float) -> RunResult:
    sim = SimClock(url)
    calls: list[RequestEvent] = []
    client = NicoClient(
        url,
        "acme",
        auth=StaticToken("sim-token"),
        max_requests_per_second=BUDGET_RPS * SCALE,
        burst=30,
        hooks=ClientHooks(on_request=calls.append),
    )
    store = Store()
    samples: list[float] = []
    measuring_from = sim.now() + WARMUP

    def record(t: Transition) -> None:
        changed = _change_time(t)
        observed = sim.now()
        if changed is not None and changed >= measuring_from:
            samples.append(max(0.0, observed - changed))

    store.subscribe(record)
    intervals = Intervals(
        active=ACTIVE / SCALE, trays=60 / SCALE, reconcile=300 / SCALE, discovery=300 / SCALE
    )
    poller = Poller(client, store, intervals=intervals, clock=sim.now)
    stop = asyncio.Event()
    runner = Runner(poller)
    task = asyncio.create_task(runner.run(stop))
    await asyncio.sleep(WARMUP / SCALE)
    start_calls, start_sim = len(calls), sim.now()
    await asyncio.sleep(duration / SCALE)
    window_calls, window = len(calls) - start_calls, sim.now() - start_sim
    stop.set()
    await task
    await client.aclose()
    return RunResult(racks, samples, window_calls, window)


def _simulate(racks: int, duration: float) -> RunResult:
    args = [
        "--sites", "1", "--racks", str(racks), "--non-flow-sites", "0", "--speed", str(SCALE),
        "--arrivals-per-rack-per-hour", "12", "--stuck-tasks", "0", "--history-hours", "0.5",
        "--stage-seconds", "power=10:90,firmware=60:300,bring_up=60:300",
    ]  # fmt: skip
    with simulator_process(*args) as url:
        return asyncio.run(_measure(url, racks, duration))


def run() -> dict[str, float]:
    steady = _simulate(100, duration=240.0)
    naive = TRAYS_PER_RACK * 60 / ACTIVE
    results = {
        "freshness_p50_s": round(steady.quantile(0.5), 2),
        "freshness_p99_s": round(steady.quantile(0.99), 2),
        "freshness_samples": float(len(steady.samples)),
        "calls_per_rack_per_min": round(steady.calls_per_rack_minute, 3),
        "economy_ratio": round(naive / steady.calls_per_rack_minute, 1),
    }
    # Capacity: grow the fleet until p99 freshness leaves the target.
    best = 100 if steady.quantile(0.99) <= FRESHNESS_TARGET_P99 else 0
    low, high = best, 200
    while best and high - low > 10:  # bisect between a passing and a failing rack count
        racks = (low + high) // 2
        trial = _simulate(racks, duration=150.0)
        ok = trial.quantile(0.99) <= FRESHNESS_TARGET_P99
        print(
            f"  {racks} racks: p99 {trial.quantile(0.99):.1f}s, {trial.calls_per_rack_minute:.2f} calls/rack/min"
            f" -> {'holds' if ok else 'misses'} 20s",
            flush=True,
        )
        low, high = (racks, high) if ok else (low, racks)
        best = low
    results["racks_per_replica_at_10rps"] = float(best)
    return results
