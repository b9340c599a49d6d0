"""Healthy-site freshness while other sites hang: part of the fleet broken, the rest on time.

A 100-rack site polled with production defaults (15 s active interval, 10 req/s, 30 s request
timeout, 8 connection slots) beside 0, 1 and 3 sites whose agents are silent: NICo holds every
call to those for the Temporal workflow timeout (50 s) and then answers 500, and still lists them
online (NICo marks a site offline only after 15 minutes without inventory). Every figure is the
healthy site's freshness (as in ``polling``: simulated seconds from a task's change to the moment
the exporter's store recorded it), and the ratios compare each case with the 0 case of the same
run. Target: p99 ratio <= 1.2.

Time is scaled as in ``polling`` (``SCALE`` times faster; intervals, timeouts, the hold and the
breaker's probe interval divided by it, rates multiplied), so the three cases take a few minutes.
"""

from __future__ import annotations

import asyncio

from benchmarks._common import simulator_process
from benchmarks.polling import BUDGET_RPS, NICO_BURST, SCALE, RunResult, SimClock, _freshness_recorder
from exporter.auth import StaticToken
from exporter.client import NicoClient
from exporter.poller import Intervals, Poller
from exporter.scheduler import Runner
from exporter.state import Store

RACKS = 100
SILENT_CASES = (0, 1, 3)
WARMUP = 90.0  # simulated seconds: the silent sites' first calls time out and open their breakers
WINDOW = 420.0
NICO_HOLD_S = 50.0  # the Temporal workflow timeout NICo holds a silent site's calls for
TIMEOUT_S = 30.0  # api.timeout
PROBE_S = 15.0


def _sim_args(silent: int) -> list[str]:
    racks = ",".join([str(RACKS)] + ["6"] * silent)
    args = [
        "--sites", str(1 + silent), "--site-racks", racks, "--non-flow-sites", "0",
        "--speed", str(SCALE), "--arrivals-per-rack-per-hour", "12", "--stuck-tasks", "0",
        "--history-hours", "0.5", "--history-tasks-per-rack", "50:200",
        "--stage-seconds", "power=10:90,firmware=60:300,bring_up=60:300",
        "--rate-limit", str(BUDGET_RPS * SCALE), "--rate-limit-burst", str(NICO_BURST),
    ]  # fmt: skip
    for index in range(1, 1 + silent):
        args += ["--site-fault", f"{index}:silent=true,workflowTimeoutSeconds={NICO_HOLD_S / SCALE}"]
    return args


async def _measure(url: str) -> RunResult:
    sim = SimClock(url)
    client = NicoClient(
        url,
        "acme",
        auth=StaticToken("sim-token"),
        max_requests_per_second=BUDGET_RPS * SCALE,
        timeout_s=TIMEOUT_S / SCALE,
    )
    client.breakers.probe_interval = PROBE_S / SCALE
    store = Store()
    result = RunResult(RACKS, [])
    _freshness_recorder(sim, store, result.samples, sim.now() + WARMUP)
    intervals = Intervals(
        active=15 / SCALE, tray_attribution=60 / SCALE, reconcile=300 / SCALE, discovery=300 / SCALE,
        final_fetch=2 / SCALE,
    )  # fmt: skip
    poller = Poller(client, store, intervals=intervals, clock=sim.now)
    stop = asyncio.Event()
    job = asyncio.create_task(Runner(poller).run(stop))
    await asyncio.sleep((WARMUP + WINDOW) / SCALE)
    stop.set()
    await job
    await client.aclose()
    result.window = WINDOW
    return result


def run() -> dict[str, float]:
    results: dict[str, float] = {}
    base: RunResult | None = None
    for silent in SILENT_CASES:
        with simulator_process(*_sim_args(silent)) as url:
            measured = asyncio.run(_measure(url))
        p50, p99 = measured.quantile(0.5), measured.quantile(0.99)
        results[f"silent_{silent}_freshness_p50_s"] = round(p50, 2)
        results[f"silent_{silent}_freshness_p99_s"] = round(p99, 2)
        results[f"silent_{silent}_samples"] = float(len(measured.samples))
        if base is None:
            base = measured
        else:
            results[f"silent_{silent}_p50_ratio"] = round(p50 / base.quantile(0.5), 3)
            results[f"silent_{silent}_p99_ratio"] = round(p99 / base.quantile(0.99), 3)
        print(
            f"  {silent} silent: healthy p50 {p50:.1f}s p99 {p99:.1f}s ({len(measured.samples)})", flush=True
        )
    return results
