"""Task Runs end to end in simulated time: the poller against the simulator's Flow (NICo main).

Ground truth is the simulator's own (``truth_json()["taskRuns"]`` and its tasks), never the
exporter's state. The racks are full before the rollout starts (more than 20 tasks each), so on
this v2.0-style server no rack list can show the run's child tasks: only the targets name them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from exporter.models import TaskRunStatus
from exporter.persistence import SqlitePersistence
from exporter.poller import Intervals
from exporter.simulator import ScenarioConfig
from tests.pollharness import Harness, simulation
from tests.scrape import Scrape

ACTIVE = 15.0
FILLED_BY_S = 2400.0  # 8 racks x 21 tasks x 10 s = 1,680 s of filling, then the exporter starts


def h_now(clock: Any) -> float:
    return float(clock.now().timestamp())


def _full_racks(sim: Any, clock: Any, per_rack: int = 21) -> None:
    """``per_rack`` quick finished tasks on every rack, one after the other (Flow refuses overlap)."""
    site = sim.sites()[0]
    for rack in sim.racks(site.id):
        for _ in range(per_rack):
            sim.create_task(site.id, rack.id, "power_on", stage_seconds=0.01)
            clock.advance(10.0)


def _run_truth(sim: Any) -> dict[str, Any]:
    (run,) = sim.truth_json()["taskRuns"]
    return dict(run)


def _harness(sim: Any, clock: Any, db: Path) -> Harness:
    return Harness(
        sim,
        clock,
        intervals=Intervals(active=ACTIVE, tray_attribution=600, reconcile=120, discovery=300),
        persistence=SqlitePersistence(db),
    )


async def test_a_rollout_is_counted_once_through_its_targets_and_its_gate_trip_shows_in_one_interval(
    tmp_path: Path,
) -> None:
    # The preset's rollout, started once the racks are full and the exporter has its baseline.
    preset = ScenarioConfig.rollout_gate_trip()
    scenario = dataclasses.replace(
        preset, rollouts=(dataclasses.replace(preset.rollouts[0], at_s=FILLED_BY_S),)
    )
    sim, clock = simulation(scenario, task_runs=True)
    began = h_now(clock)
    _full_racks(sim, clock)
    assert h_now(clock) - began < FILLED_BY_S and not sim.truth_json()["taskRuns"]
    db = tmp_path / "state.db"
    h = _harness(sim, clock, db)
    paused_at: float | None = None
    seen_paused_at: float | None = None
    for _ in range(3600):  # up to an hour of simulated time, one second at a time
        await h.run(1.0)
        truth = sim.truth_json()["taskRuns"]
        if paused_at is None and truth and truth[0]["status"] == "Paused":
            paused_at = h.now()
        runs = h.poller.view().runs.runs
        if seen_paused_at is None and runs and runs[0][1].status is TaskRunStatus.PAUSED:
            seen_paused_at = h.now()
        if seen_paused_at is not None:
            break
    assert paused_at is not None and seen_paused_at is not None
    assert seen_paused_at - paused_at <= ACTIVE + 1  # within one active interval (and a step)
    (_, run, targets) = h.poller.view().runs.runs[0]
    assert run.status_reason.value == "SafetyGate"
    truth = _run_truth(sim)
    assert {t["taskId"]: t["status"] for t in truth["targets"] if t["taskId"]} == {
        t.task_id: t.status.value for t in targets if t.task_id
    }

    # Let the submitted children end, then compare the exporter's counts with the simulator's.
    await h.run(300)
    children = {t["taskId"] for t in _run_truth(sim)["targets"] if t["taskId"]}
    by_id = {t.id: t for t in sim.truth()}
    finished = [t for t in h.finished_ids() if t in children]
    assert len(finished) == len(set(finished))  # each child counted once
    final_children = {c for c in children if by_id[c].finished is not None}
    assert set(finished) == final_children  # every one that ended, although no list showed it
    counted = {t.record.id: t.record.status.value for t in h.transitions if t.kind.name == "FINISHED"}
    assert {c: counted[c] for c in final_children} == {c: str(by_id[c].status) for c in final_children}
    assert not any(h.store.totals.runs.values())  # paused, not final: no run counted yet
    # Every task created after the baseline is a child the targets name: none is unobserved.
    assert sum(h.store.totals.unobserved.values()) == 0
    h.store.commit()
    h.store.persistence.close()
    await h.close()

    # A restart: nothing counted again; the run is picked up where it was.
    again = _harness(sim, clock, db)
    await again.run(60)
    assert [t for t in again.finished_ids() if t in final_children] == []
    (_, run_after, _) = again.poller.view().runs.runs[0]
    assert run_after.status is TaskRunStatus.PAUSED
    await again.close()


async def test_short_children_are_counted_by_name_through_their_targets_not_as_unobserved() -> None:
    # Children of 2-4 s on racks with over 20 tasks of history: no rack list can show one, so
    # each moves its rack's creation counter unexplained until the run's targets name it. The
    # counter's reading waits for the runs job (Poller._settle_hold); without that wait about
    # half of them were counted unobserved first (then twice, or without their real status).
    preset = ScenarioConfig.rollout_gate_trip()
    scenario = dataclasses.replace(
        preset,
        stage_seconds={**preset.stage_seconds, "firmware": (1.0, 2.0)},
        rollouts=(dataclasses.replace(preset.rollouts[0], at_s=FILLED_BY_S, fail_phases=()),),
    )
    sim, clock = simulation(scenario, task_runs=True)
    _full_racks(sim, clock)
    h = Harness(
        sim, clock, intervals=Intervals(active=ACTIVE, tray_attribution=600, reconcile=120, discovery=300)
    )
    for _ in range(120):
        await h.run(30.0)
        truth = sim.truth_json()["taskRuns"]
        if truth and truth[0]["status"] in ("Completed", "CompletedWithFailures", "Failed"):
            break
    await h.run(120.0)
    children = {t["taskId"] for t in _run_truth(sim)["targets"] if t["taskId"]}
    by_id = {t.id: t for t in sim.truth()}
    ended = {c for c in children if by_id[c].finished is not None}
    assert len(ended) >= 8  # every rack's child ran
    counted = {t.record.id: t.record.status.value for t in h.transitions if t.kind.name == "FINISHED"}
    assert {c: counted.get(c) for c in ended} == {c: str(by_id[c].status) for c in ended}
    assert sum(h.store.totals.unobserved.values()) == 0 and h.store.absorbed == 0
    await h.close()


async def test_a_v2_server_switches_the_feature_off_after_one_probe() -> None:
    sim, clock = (
        simulation(ScenarioConfig.rollout_gate_trip(), task_runs=False)
        if False
        else simulation(
            ScenarioConfig(sites=1, racks_per_site=2, arrivals_per_rack_per_hour=0.0, history_hours=0.0)
        )
    )
    h = Harness(sim, clock)
    await h.run(600)
    asked = [r for r in h.requests if r.endpoint == "/task/run"]
    assert len(asked) == 1, asked
    assert h.poller.view().runs.supported == ((sim.sites()[0].id, False),)
    await h.close()


@pytest.mark.parametrize("task_runs", [False, True], ids=["v2.0", "main"])
async def test_tasks_under_an_operators_rules_carry_the_rule_name_the_simulator_ran(task_runs: bool) -> None:
    # Ground truth: the rule the simulator's Flow resolved for each submission (its layout). The
    # exporter only sees reports and GET /task/rule, and must name the same rule. v2.0 serves the
    # rules without Task Runs (release/v2.0 routes.go:945-970): the runs feature being off there
    # must not keep the rules out.
    from exporter.metrics import ClientMetrics, TaskMetrics
    from exporter.simulator.operations import Operation
    from exporter.snapshot import Publisher

    sim, clock = simulation(ScenarioConfig.quiet(sites=1, racks_per_site=3), task_runs=task_runs)
    site = sim.sites()[0]
    racks = [r.id for r in sim.racks(site.id)]
    sim.add_operation_rule(site.id, Operation.FIRMWARE_UPDATE, name="switches-first", is_default=True,
                           layout=[["NVSwitch"], ["Compute"]])  # fmt: skip
    h = Harness(
        sim, clock, intervals=Intervals(active=ACTIVE, tray_attribution=600, reconcile=120, discovery=300)
    )
    await h.run(30.0)
    # A rule made after the first discovery (and after the runs probe): the next discovery reads it.
    sim.add_operation_rule(site.id, Operation.POWER_ON, name="compute-first", rack_ids=[racks[1]],
                           layout=[["Compute"], ["NVSwitch"], ["PowerShelf"]])  # fmt: skip
    await h.run(300.0)
    ids = {
        sim.create_task(site.id, racks[0], "firmware_update", stage_seconds=600): "switches-first",
        sim.create_task(site.id, racks[1], "power_on", stage_seconds=600): "compute-first",
        sim.create_task(site.id, racks[2], "power_on", stage_seconds=600): "",  # Flow's built-in rule
    }
    await h.run(45.0)
    publisher = Publisher(h.store, h.poller, TaskMetrics(), ClientMetrics(), clock=h.now)
    names = {
        labels["task_id"]: labels["rule_name"]
        for labels, _ in Scrape(publisher.publish()).samples("nico_task_info")
    }
    assert names == ids
    await h.close()
