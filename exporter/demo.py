"""``nico-task-exporter demo``: the simulator and the exporter in one process, metrics on localhost.

Time is accelerated by compressing the simulated workload, not by running the simulator's clock
fast: stages take ``1/speed`` of their usual time, tasks arrive ``speed`` times as often and
queued tasks expire ``speed`` times sooner, while every timestamp stays wall-clock time. Ages,
`time() - created` in alerts and "now" in dashboards therefore stay right.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from exporter import app
from exporter.configload import Override, load_config
from exporter.simulator import FaultConfig, ScenarioConfig, Simulation, SimulatorConfig
from exporter.simulator.scenario import DEFAULT_STAGE_SECONDS
from exporter.simulator.server import simulator_server

TOKEN = "sim-token"  # noqa: S105 - the simulator's own demo token


@dataclass(frozen=True)
class DemoOptions:
    simulator: tuple[str, int] = ("127.0.0.1", 8080)
    exporter: tuple[str, int] = ("127.0.0.1", 9842)
    speed: float = 10.0
    seed: int = 7
    sites: int = 2
    racks: int = 8
    status_interval: float = 5.0
    state_dir: Path | None = None


def demo_simulation(speed: float, seed: int, sites: int = 2, racks: int = 8) -> Simulation:
    """2 sites x 8 racks, a realistic mix with some failures and one stuck task, ``speed`` times faster."""
    scenario = ScenarioConfig(
        seed=seed,
        sites=sites,
        racks_per_site=racks,
        non_flow_sites=1,
        arrivals_per_rack_per_hour=3.0 * speed,
        failure_rate=0.08,
        cancel_rate=0.03,
        stuck_tasks=1,
        history_hours=2.0,
        stage_seconds={
            family: (low / speed, high / speed) for family, (low, high) in DEFAULT_STAGE_SECONDS.items()
        },
    )
    config = SimulatorConfig(
        scenario=scenario,
        faults=FaultConfig(),
        tokens=(TOKEN,),
        leak_queue_timeout_s=3600.0 / speed,
    )
    return Simulation(config)


def _line(exporter: app.Exporter, url: str) -> str:
    store, poller = exporter.store, exporter.poller
    active = Counter(r.status.value.lower() for r in store.records() if not r.is_terminal)
    finished = Counter[str]()
    for (_, status, _), count in store.totals.tasks.items():
        finished[status.lower()] += count
    up = sum(1 for h in poller.health.values() if h.up)
    act = ", ".join(f"{k} {v}" for k, v in sorted(active.items())) or "none"
    fin = ", ".join(f"{k} {v}" for k, v in sorted(finished.items())) or "none yet"
    return (
        f"sites up {up}/{len(poller.health)} | racks {len(poller.racks)} | active: {act} | "
        f"finished: {fin} | {url}"
    )


async def run_demo(options: DemoOptions) -> None:
    """Serve the simulator and run the exporter against it until Ctrl-C."""
    sim = demo_simulation(options.speed, options.seed, options.sites, options.racks)
    host, port = options.simulator
    sim_server = simulator_server(sim, host, port)
    sim_task = asyncio.create_task(sim_server.serve())
    while not sim_server.started:
        if sim_task.done():
            await sim_task  # raises why it could not start (port taken, ...)
            raise RuntimeError("the simulator stopped before it started")
        await asyncio.sleep(0.05)
    with contextlib.ExitStack() as stack:
        state_dir = options.state_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="nico-demo-"))
        )
        ehost, eport = options.exporter
        settings = {
            "api.url": f"http://{host}:{port}",
            "api.org": sim.config.org,
            "api.token": TOKEN,
            "state.path": str(state_dir / "state.db"),
            "web.listen_address": f"{ehost}:{eport}",
            # The workload runs ``speed`` times faster: poll a little faster too.
            "polling.active_interval": "5s",
            "polling.reconcile_interval": "60s",
        }
        # No file and no environment: the demo's own settings only.
        config = load_config(None, env={}, overrides=[Override(k, v, "demo") for k, v in settings.items()])
        exporter = app.build(config)
        stop = asyncio.Event()
        app.stop_on_signals(stop)
        shown = "localhost" if ehost in ("127.0.0.1", "0.0.0.0") else ehost  # noqa: S104
        metrics_url = f"http://{shown}:{eport}/metrics"
        print(
            f"NICo simulator: http://{host}:{port}/v2/org/{sim.config.org}/nico (Bearer {TOKEN})", flush=True
        )
        print(f"ground truth:   http://{host}:{port}/_sim/truth", flush=True)
        print(f"metrics:        {metrics_url}   (Ctrl-C stops everything)", flush=True)
        serving = asyncio.create_task(app.serve(exporter, stop))
        try:
            while not serving.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(serving), options.status_interval)
                if not serving.done():
                    print(_line(exporter, metrics_url), flush=True)
            await serving
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            sim_server.should_exit = True
            await sim_task
