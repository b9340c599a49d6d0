"""``nico-task-exporter demo``: the simulator and the exporter in one process, metrics on localhost.

Time is accelerated by compressing the simulated workload, not by running the simulator's clock
fast: stages take ``1/speed`` of their usual time, tasks arrive ``speed`` times as often and
queued tasks expire ``speed`` times sooner, while every timestamp stays wall-clock time. Ages,
`time() - created` in alerts and "now" in dashboards therefore stay right.

On top of the random traffic the demo follows a script, so that what the README promises shows
up in every run, whatever the seed (:func:`demo_simulation`):

- a **stuck** ``power_on``, created ``STUCK_AGE_S`` (20 min, wall clock) before the start on a
  rack where Flow accepts it: past ``NicoTaskStuck``'s 15-minute ``power_on`` threshold from the
  first scrape;
- a **failed** rack-wide ``firmware_update`` submitted ``FAILURE_AT_S`` after the start:
  ``nico_task_failure_info``, ``NicoTaskFailed``;
- a firmware **Task Run** on the last Flow site whose first phase fails: Flow's failure-rate
  safety gate pauses it (``nico_task_run_status{status="Paused"}``, reason ``SafetyGate``);
- an **overrun drill** on the last rack of the first site: ``DRILL_TASKS`` short tray-scoped
  ``power_off`` tasks, enough samples for the learner (it needs 20 per stage), then one whose
  stage takes ``DRILL_SLOW_STAGE_S``: ``nico_task_overrun_ratio`` passes ``NicoTaskOverrunning``'s
  ratio of 3 about a minute after the start (at speed 10).
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
from exporter.simulator import FaultConfig, Operation, Outcome, ScenarioConfig, Simulation, SimulatorConfig
from exporter.simulator.scenario import DEFAULT_STAGE_SECONDS, OverrunDrill, ScriptedTask
from exporter.simulator.server import simulator_server
from exporter.simulator.taskruns import ChildPlan, SafetyGate

TOKEN = "sim-token"  # noqa: S105 - the simulator's own demo token

# The exporter polls each rack this often in the demo: every task of the drill must outlive it.
POLL_INTERVAL_S = 2.0

# The script. Ages are wall clock (alerts compare them with time()) and the first moments wait for
# the exporter's first polls (what finished before a rack's baseline is history): neither scales
# with ``speed``. Workload durations are given as in reality and divided by ``speed``.
STUCK_AGE_S = 20 * 60.0
FAILURE_AT_S = 10.0
FAILURE_STAGE_S = 60.0
DRILL_AT_S = 5.0
DRILL_TASKS = 30
DRILL_EVERY_S = 10.0
DRILL_STAGE_S = (60.0, 80.0)
DRILL_SLOW_STAGE_S = 90 * 60.0
# A drill task shorter than two polls could end unseen, and teach the learner nothing.
DRILL_MIN_STAGE_S = 2 * POLL_INTERVAL_S
RUN_NAME = "demo-firmware-rollout"
RUN_CHILD_STAGE_S = 60.0
RUN_GATE_PERCENT = 50


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


def demo_scenario(speed: float, seed: int, sites: int = 2, racks: int = 8) -> ScenarioConfig:
    """2 sites x 8 racks, a realistic mix with some failures, ``speed`` times faster, and the
    script of the module docstring (the stuck and failed task, the overrun drill)."""
    drill_stage = tuple(max(s / speed, DRILL_MIN_STAGE_S) for s in DRILL_STAGE_S)
    return ScenarioConfig(
        seed=seed,
        sites=sites,
        racks_per_site=racks,
        non_flow_sites=1,
        arrivals_per_rack_per_hour=3.0 * speed,
        failure_rate=0.08,
        cancel_rate=0.03,
        history_hours=2.0,
        stage_seconds={
            family: (low / speed, high / speed) for family, (low, high) in DEFAULT_STAGE_SECONDS.items()
        },
        scripted=(
            ScriptedTask("stuck", -STUCK_AGE_S, Operation.POWER_ON, Outcome.STUCK),
            ScriptedTask(
                "failure",
                FAILURE_AT_S,
                Operation.FIRMWARE_UPDATE,
                Outcome.FAIL,
                stage_seconds=max(FAILURE_STAGE_S / speed, 1.0),
            ),
        ),
        drill=OverrunDrill(
            operation=Operation.POWER_OFF,
            at_s=DRILL_AT_S,
            tasks=DRILL_TASKS,
            every_s=DRILL_EVERY_S / speed,
            stage_seconds=(drill_stage[0], drill_stage[1]),
            slow_stage_s=max(DRILL_SLOW_STAGE_S / speed, 60 * DRILL_MIN_STAGE_S),
        ),
    )


def demo_simulation(speed: float, seed: int, sites: int = 2, racks: int = 8) -> Simulation:
    """The demo's simulated NICo (``main``, with Task Runs) on :func:`demo_scenario`, with the
    firmware Task Run of the module docstring created at the start."""
    config = SimulatorConfig(
        scenario=demo_scenario(speed, seed, sites, racks),
        faults=FaultConfig(),
        tokens=(TOKEN,),
        leak_queue_timeout_s=3600.0 / speed,
        task_runs=True,
    )
    sim = Simulation(config)
    flow_sites = sim.flow_site_ids()
    if flow_sites and sim.racks(flow_sites[-1]):
        sim.create_task_run(
            flow_sites[-1],
            version="1.4.2",
            name=RUN_NAME,
            description="fleet firmware rollout (demo: its first phase fails)",
            max_concurrent_targets=2,
            phases=min(4, len(sim.racks(flow_sites[-1]))),
            auto_advance=True,
            gates=(SafetyGate("failure_rate", RUN_GATE_PERCENT),),
            initial_retry_delay_s=10.0,
            max_retry_delay_s=60.0,
            child=ChildPlan(fail_phases=(0,), stage_seconds=max(RUN_CHILD_STAGE_S / speed, 1.0)),
        )
    return sim


def script_line(sim: Simulation) -> str:
    """What the script puts on ``/metrics``, for the banner (times as measured at speed 10)."""
    flow = [sim.site(site_id) for site_id in sim.flow_site_ids()]
    first, last = (flow[0].name, flow[-1].name) if flow and flow[0] and flow[-1] else ("", "")
    return (
        f"demo script:    a stuck power_on on {first} (from the start), a failed firmware_update (~25s), "
        f"a Task Run on {last} paused at its safety gate (~30s), a power_off overrunning its learned "
        "duration (~1 min)"
    )


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


def _tell_unplaced(sim: Simulation, told: int) -> int:
    """Print, loudly, each part of the script the simulator could not place since ``told``."""
    for why in sim.scenario.unplaced[told:]:
        print(f"!! the demo script could not place a task: {why}", flush=True)
    return len(sim.scenario.unplaced)


async def run_demo(
    options: DemoOptions, *, sim: Simulation | None = None, stop: asyncio.Event | None = None
) -> None:
    """Serve the simulator and run the exporter against it until Ctrl-C (or ``stop`` is set).

    ``sim``: the simulation to serve (default: :func:`demo_simulation` of the options).
    """
    sim = sim or demo_simulation(options.speed, options.seed, options.sites, options.racks)
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
            # The workload runs ``speed`` times faster: poll faster too (the simulator can take it).
            "polling.active_interval": f"{POLL_INTERVAL_S:g}s",
            "polling.reconcile_interval": "60s",
            "api.max_requests_per_second": 50,
            "api.burst": 50,
        }
        # No file and no environment: the demo's own settings only.
        config = load_config(None, env={}, overrides=[Override(k, v, "demo") for k, v in settings.items()])
        exporter = app.build(config)
        if stop is None:
            stop = asyncio.Event()
            app.stop_on_signals(stop)
        shown = "localhost" if ehost in ("127.0.0.1", "0.0.0.0") else ehost  # noqa: S104
        metrics_url = f"http://{shown}:{eport}/metrics"
        print(
            f"NICo simulator: http://{host}:{port}/v2/org/{sim.config.org}/nico (Bearer {TOKEN})", flush=True
        )
        print(f"ground truth:   http://{host}:{port}/_sim/truth", flush=True)
        print(f"metrics:        {metrics_url}   (Ctrl-C stops everything)", flush=True)
        print(script_line(sim), flush=True)
        serving = asyncio.create_task(app.serve(exporter, stop))
        told = _tell_unplaced(sim, 0)
        try:
            while not serving.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(serving), options.status_interval)
                if not serving.done():
                    print(_line(exporter, metrics_url), flush=True)
                told = _tell_unplaced(sim, told)
            await serving
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            sim_server.should_exit = True
            await sim_task
