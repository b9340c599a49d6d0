"""Tray failures on the trays that failed: a rack's failed tasks through the state store.

The store is fed as the poller feeds it: discovery teaches it the rack's trays (type and
component id), attribution settles each task's trays with :func:`exporter.attribution.plan`, and
the rack poll observes the task running, then failed. Error texts are NICo's
(``tests/test_attribution.py`` builds them as the Go code does); the expectations are counted by
hand from the rack's 18 Compute, 9 NVSwitch and 8 PowerShelf trays.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from exporter.attribution import plan
from exporter.mixin.alerts import load_alert_config
from exporter.models import ComponentType, Task, TaskStatus, Tray
from exporter.persistence import SqlitePersistence
from exporter.state import Store
from tests.builders import RACK, SITE, T0, tid
from tests.test_attribution import (
    NVSWITCH_TIMEOUT,
    POWER_CYCLE,
    activity_error,
    cut,
    nvl72,
    step_error,
)
from tests.test_metrics import World

C, S, P = ComponentType.COMPUTE, ComponentType.NVSWITCH, ComponentType.POWERSHELF
TRAYS = nvl72()
BY_TYPE = {kind: {t.id for t in TRAYS if t.type is kind} for kind in (C, S, P)}


def power_cycle(n: int, status: str, failed_stage: int | None = None, error: str | None = None) -> Task:
    """Task ``n``, a rack-wide power cycle: running its second stage, or failed at ``failed_stage``."""
    totals = {"Compute": 18, "NVSwitch": 9, "PowerShelf": 8}
    stages: list[dict[str, Any]] = []
    for number, kinds in enumerate(POWER_CYCLE, start=1):
        if failed_stage is None:
            state = "completed" if number < 2 else "running" if number == 2 else "pending"
        else:
            state = (
                "completed" if number < failed_stage else "failed" if number == failed_stage else "pending"
            )
        fields = {"error": cut(error)} if state == "failed" and error else {}
        steps = [{"componentType": k, "status": state, "totalComponents": totals[k], **fields} for k in kinds]
        stages.append({"number": number, "status": state, "steps": steps, **fields})
    data: dict[str, Any] = {
        "id": tid(n),
        "status": status,
        "description": "API power cycle Rack",
        "report": {"version": 1, "stages": stages},
    }
    if failed_stage is not None and error:
        data["report"]["error"] = cut(error)
        data["message"] = cut(f"stage {failed_stage} failed: {error}")
    return Task.parse(data)


def discover(store: Store, trays: list[Tray] = TRAYS) -> None:
    """What discovery does with a rack's tray listing."""
    for tray in trays:
        store.learn_tray_type(tray.id, tray.type.value, tray.component_id)


def run_and_fail(store: Store, n: int, error: str, at: float, failed_stage: int = 2) -> None:
    """Task ``n`` seen running, its trays settled as the poller settles them, then seen failed."""
    store.observe(SITE, RACK, power_cycle(n, "Running"), at)
    p = plan(store.tasks[tid(n)].task, TRAYS)
    assert p is not None and p.settled  # rack-wide for every type: no scan
    store.attribute(tid(n), p.known)
    store.observe(SITE, RACK, power_cycle(n, "Failed", failed_stage, error), at + 60)
    store.commit()


def charged(store: Store) -> dict[str, int]:
    """Tray id to its failure count (every key is on the test's site and rack)."""
    assert {(site, rack) for site, rack, _, _ in store.totals.tray_failures} <= {(SITE, RACK)}
    return {tray: n for (_, _, tray, _), n in store.totals.tray_failures.items()}


def test_three_rack_wide_failures_on_an_nvswitch_step_charge_only_the_nvswitch_trays() -> None:
    world = World()
    discover(world.store)
    for n in (1, 2, 3):
        run_and_fail(world.store, n, NVSWITCH_TIMEOUT, T0 + 600 * n)
    assert world.store.totals.tasks == {(SITE, "Failed", "power_cycle"): 3}
    assert charged(world.store) == dict.fromkeys(BY_TYPE[S], 3)

    # What Prometheus scrapes: 9 NVSwitch series at 3, no series for a Compute or PowerShelf tray,
    # so NicoTrayRepeatedFailures (3 failures within its window) has nothing to fire on for them.
    threshold = load_alert_config().tray_failures
    reg = world.registry()
    samples = [
        (s.labels["tray_id"], s.labels["tray_type"], s.value)
        for family in reg.families
        for s in family.samples
        if s.name == "nico_tray_task_failures_total"
    ]
    assert sorted(samples) == sorted((tray, "NVSwitch", 3.0) for tray in BY_TYPE[S])
    assert all(value >= threshold for _, _, value in samples)
    assert not [tray for tray, kind, _ in samples if kind != "NVSwitch"]


def test_a_failure_naming_its_component_charges_that_tray_alone() -> None:
    store = Store()
    discover(store)
    named = next(t for t in TRAYS if t.type is S and t.component_id == "ext-22")
    cause = "power control failed for ext-22: Redfish request returned 500 Internal Server Error"
    run_and_fail(store, 1, step_error("NVSwitch", activity_error("PowerControl", cause)), T0)
    assert charged(store) == {named.id: 1}


def test_a_failure_nico_places_on_no_component_type_charges_no_tray() -> None:
    store = Store()
    discover(store)
    running = power_cycle(1, "Running")
    store.observe(SITE, RACK, running, T0)
    store.attribute(tid(1), {t.id for t in TRAYS})
    # The workflow ended outside any stage: its report still shows stage 2 running, no step failed.
    failed = dataclasses.replace(running, status=TaskStatus.FAILED, message="workflow execution timed out")
    store.observe(SITE, RACK, failed, T0 + 60)
    assert store.totals.tasks == {(SITE, "Failed", "power_cycle"): 1}
    assert charged(store) == {}


def test_a_failed_step_without_an_error_is_charged_to_its_type() -> None:
    store = Store()
    discover(store)
    run_and_fail(store, 1, "", T0)  # the report's failed NVSwitch step is all NICo says
    assert charged(store) == dict.fromkeys(BY_TYPE[S], 1)


def test_a_restart_before_discovery_charges_the_same_trays_once(tmp_path: Path) -> None:
    """Failures seen by a process that does not know the trays' types yet are charged once they
    are, also by the next process if this one stops first, never twice, and as an uninterrupted
    process charges them."""
    cause = "power control failed for ext-5: BMC did not respond within 300s"
    compute_error = step_error("Compute", activity_error("PowerControl", cause))
    failures = [power_cycle(1, "Failed", 2, NVSWITCH_TIMEOUT), power_cycle(2, "Failed", 6, compute_error)]
    ext5 = next(t.id for t in TRAYS if t.component_id == "ext-5")
    expected = {**dict.fromkeys(BY_TYPE[S], 1), ext5: 1}

    uninterrupted = Store()
    discover(uninterrupted)
    for n in (1, 2):
        uninterrupted.observe(SITE, RACK, power_cycle(n, "Running"), T0)
        uninterrupted.attribute(tid(n), {t.id for t in TRAYS})
    for task in failures:
        uninterrupted.observe(SITE, RACK, task, T0 + 60)
    assert charged(uninterrupted) == expected

    # First process: both tasks running with their trays settled; then it stops.
    db = tmp_path / "state.db"
    first = Store(p1 := SqlitePersistence(db))
    discover(first)
    for n in (1, 2):
        first.observe(SITE, RACK, power_cycle(n, "Running"), T0)
        first.attribute(tid(n), {t.id for t in TRAYS})
    first.commit()
    p1.close()

    # Second process: task 1 fails before discovery has typed the trays: not charged yet. Its
    # discovery comes, then task 2 fails.
    second = Store(p2 := SqlitePersistence(db))
    second.observe(SITE, RACK, failures[0], T0 + 60)
    second.commit()
    assert second.totals.tasks == {(SITE, "Failed", "power_cycle"): 1}
    assert charged(second) == {}
    discover(second)
    assert charged(second) == dict.fromkeys(BY_TYPE[S], 1)
    second.observe(SITE, RACK, failures[1], T0 + 60)
    second.commit()
    assert charged(second) == expected
    p2.close()

    # Third process: the same failures observed again are not charged again.
    third = Store(p3 := SqlitePersistence(db))
    discover(third)
    for task in failures:
        third.observe(SITE, RACK, task, T0 + 120)
    third.commit()
    assert charged(third) == expected
    p3.close()


def test_a_failure_seen_just_before_a_stop_is_charged_by_the_next_process(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    first = Store(p1 := SqlitePersistence(db))
    first.observe(SITE, RACK, power_cycle(1, "Running"), T0)
    first.attribute(tid(1), {t.id for t in TRAYS})
    first.observe(SITE, RACK, power_cycle(1, "Failed", 2, NVSWITCH_TIMEOUT), T0 + 60)  # no discovery yet
    first.commit()
    assert charged(first) == {}
    p1.close()

    second = Store(p2 := SqlitePersistence(db))  # the failed task is back from the state file
    assert charged(second) == {}
    discover(second)
    second.commit()
    assert charged(second) == dict.fromkeys(BY_TYPE[S], 1)
    p2.close()

    third = Store(p3 := SqlitePersistence(db))
    discover(third)
    assert charged(third) == dict.fromkeys(BY_TYPE[S], 1)
    p3.close()
