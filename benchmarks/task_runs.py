"""What the Task Runs feature costs in API calls: per active run, per minute, at a 15 s active interval.

The simulator (NICo main, Task Runs on) runs ``RUNS`` firmware rollouts at once, one per site, each
over 8 racks in 4 phases, 2 racks at a time, with 2-minute stages so they stay active for the
``MINUTES`` simulated minutes measured; the exporter's
poller runs only its ``task_runs`` job (and the final fetches it hands the targets' tasks) on the
simulated clock. Every call the feature made is counted by endpoint from the client's own hooks.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from exporter.client import ClientHooks, NicoClient, RequestEvent
from exporter.poller import Intervals, Poller
from exporter.simulator import ManualClock, ScenarioConfig, Simulation, SimulatorConfig, create_app
from exporter.simulator.taskruns import ChildPlan
from exporter.state import Store

RUNS = 4
MINUTES = 15
ACTIVE_S = 15.0
FEATURE = ("/task/run", "/task/run/{id}", "/task/run/{id}/target", "/task/rule")


async def _measure() -> dict[str, float]:
    clock = ManualClock()
    sim = Simulation(
        SimulatorConfig(
            task_runs=True, tokens=("t",), scenario=ScenarioConfig.quiet(sites=RUNS, racks_per_site=8)
        ),
        clock=clock,
    )
    calls: list[RequestEvent] = []
    client = NicoClient(
        "http://nico.test", "acme", transport=httpx.ASGITransport(app=create_app(sim)),
        max_requests_per_second=0, hooks=ClientHooks(on_request=calls.append),
    )  # fmt: skip
    from exporter.auth import StaticToken

    client.auth = StaticToken("t")
    store = Store()
    poller = Poller(
        client, store, intervals=Intervals(active=ACTIVE_S), clock=lambda: clock.now().timestamp()
    )
    await poller.discover_sites_and_racks()
    for site in sim.flow_site_ids():
        sim.create_task_run(site, version="1.0.1", phases=4, max_concurrent_targets=2, auto_advance=True,
                            child=ChildPlan(stage_seconds=120.0))  # fmt: skip
    calls.clear()
    active_minutes = 0.0
    elapsed = 0.0
    while elapsed < MINUTES * 60:
        await poller.poll_runs()
        await poller.fetch_finals()
        active = sum(
            1 for r in sim.truth_json()["taskRuns"] if r["status"] in ("Pending", "Running", "Paused")
        )
        active_minutes += active * ACTIVE_S / 60
        clock.advance(ACTIVE_S)
        elapsed += ACTIVE_S
    await client.aclose()
    by_endpoint = Counter(e.endpoint for e in calls)
    feature = sum(n for ep, n in by_endpoint.items() if ep in FEATURE)
    fetches = by_endpoint["/task/{id}"]
    per = max(active_minutes, 1e-9)
    assert active_minutes >= 0.9 * RUNS * MINUTES, "the runs ended early: the figure would mix in idle sites"
    return {
        "task_run_calls_per_active_run_per_minute": round(feature / per, 2),
        "task_run_task_fetches_per_active_run_per_minute": round(fetches / per, 2),
        "task_run_active_run_minutes": round(active_minutes, 1),
    }


def run() -> dict[str, float]:
    return asyncio.run(_measure())


if __name__ == "__main__":
    print(run())
