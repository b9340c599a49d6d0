"""``nico-task-exporter tasks``: list, show and cancel against the simulator over a real socket."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from exporter.configload import load_config
from exporter.models import TaskStatus
from exporter.simulator import ManualClock, ScenarioConfig, Simulation, SimulatorConfig, create_app
from exporter.taskcmd import run_tasks_command
from tests.servers import serve_app


@pytest.fixture
def world() -> tuple[Simulation, ManualClock, str, str]:
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    sim = Simulation(SimulatorConfig(scenario=ScenarioConfig.quiet(sites=1, racks_per_site=2)), clock=clock)
    site = sim.flow_site_ids()[0]
    return sim, clock, site, sim.racks(site)[0].id


async def _run(url: str, action: str, **kwargs: object) -> tuple[int, str]:
    config = load_config(
        None, env={"NICO_EXPORTER_API__URL": url, "NICO_EXPORTER_API__ORG": "acme", "NICO_TOKEN": "sim-token"}
    )
    out = io.StringIO()
    code = await run_tasks_command(config, action, out=out, **kwargs)  # type: ignore[arg-type]
    return code, out.getvalue()


async def test_list_show_and_cancel(world: tuple[Simulation, ManualClock, str, str]) -> None:
    sim, clock, site, rack = world
    failed = sim.create_task(
        site,
        rack,
        "power_cycle",
        outcome="fail",
        fail_stage=2,
        error="BMC 10.0.0.7 timed out",
        stage_seconds=30,
    )
    clock.advance(200)
    stuck = sim.create_task(site, rack, "firmware_update", outcome="stuck")
    clock.advance(30)
    with serve_app(create_app(sim)) as url:
        code, listing = await _run(url, "list", site=None)
        assert code == 0 and stuck in listing and failed not in listing
        code, everything = await _run(url, "list", site=site, rack=rack, active_only=False)
        assert code == 0 and stuck in everything and failed in everything
        code, shown = await _run(url, "show", site=None, task_id=failed)
        assert code == 0
        assert "status      Failed" in shown and "operation   power_cycle" in shown
        assert "BMC 10.0.0.7 timed out" in shown and failed.replace("-", "") in shown
        assert "failed" in shown and "pending" in shown  # fail-fast: later stages never ran
        code, refused = await _run(url, "cancel", site=site, task_id=stuck)
        assert code == 2 and "--yes" in refused
        assert sim.task(stuck) is not None and sim.task(stuck).status is TaskStatus.RUNNING  # type: ignore[union-attr]
        code, done = await _run(url, "cancel", site=site, task_id=stuck, confirmed=True)
        assert code == 0 and "Terminated" in done
        code, _ = await _run(url, "show", site=site, task_id="00000000-0000-4000-8000-000000000000")
        assert code == 1
