"""``nico-task-exporter tasks``: list, show and cancel against the simulator over a real socket."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from exporter.configload import load_config
from exporter.models import TaskStatus
from exporter.simulator import ManualClock, ScenarioConfig, Simulation, SimulatorConfig, create_app
from exporter.simulator.taskruns import ChildPlan, SafetyGate
from exporter.taskcmd import run_runs_command, run_tasks_command
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


async def test_a_cancel_answered_202_with_an_empty_task_is_a_cancel(
    world: tuple[Simulation, ManualClock, str, str],
) -> None:
    """Flow cancelled the task but could not read it back: NICo answers 202 with a zero-value task
    (docs/simulator.md, emptyCancel). The cancel went through: say so, not "bad payload"."""
    sim, clock, site, rack = world
    stuck = sim.create_task(site, rack, "firmware_update", outcome="stuck")
    clock.advance(30)
    sim.set_site_faults(site, {"emptyCancel": True})
    with serve_app(create_app(sim)) as url:
        code, done = await _run(url, "cancel", site=site, task_id=stuck, confirmed=True)
    assert code == 0, done
    assert f"{stuck} was cancelled (NICo sent no task back)" in done
    assert sim.task(stuck).status is TaskStatus.TERMINATED  # type: ignore[union-attr]


async def test_runs_list_and_show_a_rollout_with_its_failed_rack() -> None:
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    sim = Simulation(
        SimulatorConfig(task_runs=True, scenario=ScenarioConfig.quiet(sites=1, racks_per_site=2)), clock=clock
    )
    site = sim.flow_site_ids()[0]
    run_id = sim.create_task_run(
        site, version="3.1.4", name="cli-rollout", phases=2, max_concurrent_targets=1,
        gates=(SafetyGate("failure_rate", 50),), child=ChildPlan(fail_phases=(0,), stage_seconds=1.0),
    )  # fmt: skip
    for _ in range(120):
        clock.advance(1.0)
        if any(r["status"] == "Paused" for r in sim.truth_json()["taskRuns"]):
            break
    with serve_app(create_app(sim)) as url:
        config = load_config(
            None,
            env={"NICO_EXPORTER_API__URL": url, "NICO_EXPORTER_API__ORG": "acme", "NICO_TOKEN": "sim-token"},
        )
        listed, shown = io.StringIO(), io.StringIO()
        assert await run_runs_command(config, "list", site=None, out=listed) == 0
        assert await run_runs_command(config, "show", site=None, run_id=run_id, out=shown) == 0
    (row,) = [line for line in listed.getvalue().splitlines() if line.startswith(run_id)]
    assert "cli-rollout" in row and "Paused" in row and "SafetyGate" in row
    text = shown.getvalue()
    (truth,) = sim.truth_json()["taskRuns"]
    failed = [t for t in truth["targets"] if t["status"] == "Failed"]
    assert failed and all(f"rack {t['rackId']} phase 1" in text for t in failed)
    assert "phase       1 of 2" in text
    for t in truth["targets"]:
        if t["taskId"]:  # each target's child task with its status, as NICo says it
            status = next(x["status"] for x in sim.truth_json()["tasks"] if x["id"] == t["taskId"])
            assert any(t["taskId"] in line and line.rstrip().endswith(status) for line in text.splitlines())
