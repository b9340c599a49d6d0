"""Tray attribution planning, and rack sharding (which replica owns which rack).

Both answer "which targets, for the fewest calls"; sharding has no module of tests of its own.
"""

from __future__ import annotations

from typing import Any

from exporter.attribution import plan
from exporter.models import NVL72_TRAYS, ComponentType, Task, Tray
from tests.builders import RACK

C, S, P = ComponentType.COMPUTE, ComponentType.NVSWITCH, ComponentType.POWERSHELF


def nvl72() -> list[Tray]:
    """A GB200 NVL72 rack's 35 trays; tray ``n`` has component id ``ext-<n>``."""
    trays: list[Tray] = []
    for kind, count in NVL72_TRAYS.items():
        for _ in range(count):
            n = len(trays) + 1
            trays.append(
                Tray.parse(
                    {
                        "id": f"00000000-0000-4000-9000-{n:012d}",
                        "rackId": RACK,
                        "componentId": f"ext-{n}",
                        "type": kind.value,
                    }
                )
            )
    return trays


def ids(trays: list[Tray], kind: ComponentType) -> frozenset[str]:
    return frozenset(t.id for t in trays if t.type is kind)


def step(component: str, total: int) -> dict[str, Any]:
    return {"componentType": component, "status": "pending", "totalComponents": total}


def task(description: str, *stages: list[dict[str, Any]], report: bool = True) -> Task:
    """A running task; stage ``n`` holds the ``n``-th list of steps."""
    data: dict[str, Any] = {
        "id": "00000000-0000-4000-8000-000000000001",
        "status": "Running",
        "description": description,
    }
    if report:
        data["report"] = {
            "version": 1,
            "stages": [
                {"number": n, "status": "pending", "steps": steps} for n, steps in enumerate(stages, start=1)
            ],
        }
    return Task.parse(data)


def test_rack_wide_power_on_knows_all_35_trays_without_a_scan() -> None:
    trays = nvl72()
    p = plan(
        task("API power on Rack", [step("PowerShelf", 8)], [step("NVSwitch", 9)], [step("Compute", 18)]),
        trays,
    )
    assert p is not None
    assert p.known == frozenset(t.id for t in trays) and len(p.known) == 35
    assert p.scan == {} and p.settled


def test_tray_scoped_task_scans_only_the_named_types() -> None:
    p = plan(task("API power cycle Tray", [step("Compute", 2)], [step("NVSwitch", 1)]), nvl72())
    assert p is not None
    assert p.known == frozenset()
    assert p.scan == {C: 2, S: 1}
    assert not p.settled


def test_rack_firmware_update_targets_compute_and_nvswitch_not_power_shelves() -> None:
    trays = nvl72()
    p = plan(task("API firmware update Rack", [step("Compute", 18)], [step("NVSwitch", 9)]), trays)
    assert p is not None and p.settled
    assert p.known == ids(trays, C) | ids(trays, S)
    assert not p.known & ids(trays, P)


def test_leak_detection_names_its_tray_without_a_report() -> None:
    trays = nvl72()
    leak = task("Leak detection: force power-off component ext-3 of type Compute", report=False)
    assert plan(leak, trays) == plan(leak, iter(trays))
    p = plan(leak, trays)
    assert p is not None and p.settled
    assert p.known == {trays[2].id}


def test_leak_detection_of_an_unknown_component_falls_back_to_the_report() -> None:
    leak = "Leak detection: force power-off component nowhere of type Compute"
    assert plan(task(leak, report=False), nvl72()) is None
    p = plan(task(leak, [step("Compute", 1)]), nvl72())
    assert p is not None and p.scan == {C: 1}


def test_no_report_means_wait() -> None:
    assert plan(task("API power on Tray", report=False), nvl72()) is None


def test_skipped_steps_are_ignored() -> None:
    trays = nvl72()
    p = plan(task("API power on Rack", [step("PowerShelf", 0)], [step("Compute", 18)]), trays)
    assert p is not None
    assert p.known == ids(trays, C) and p.scan == {}


def test_a_type_in_several_stages_counts_once_at_its_largest() -> None:
    p = plan(
        task("API power cycle Tray", [step("Compute", 2)], [step("NVSwitch", 1)], [step("Compute", 3)]),
        nvl72(),
    )
    assert p is not None and p.scan == {C: 3, S: 1}


def test_a_short_inventory_takes_every_tray_of_the_type() -> None:
    trays = [t for t in nvl72() if t.type is C][:4]
    p = plan(task("API power on Tray", [step("Compute", 6)]), trays)
    assert p is not None and p.known == frozenset(t.id for t in trays) and p.settled
