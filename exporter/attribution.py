"""Which trays a task targets, for the fewest API calls (pure planning; the poller does the I/O).

A task carries no tray ids. Its report says, per step, how many components of each type it
targets (``totalComponents``). Where that equals the rack's count of trays of the type, the task
is rack-wide for that type (the usual "API ... Rack" operation) and every such tray is its
target: no call needed. Otherwise only some trays are targeted, and the poller scans
``GET /tray/{id}/task`` over trays of just those types until it has found that many. A
leak-detection task names its one component in its description. A task without a report yet
waits: its trays do not change while it runs, so this is settled once per task.

A task's trays are the trays its rule operates on: a rack firmware update targets the power
shelves too, but the default firmware rule has no step for them, so they are not blamed when it
fails.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from exporter.models import ComponentType, Task, Tray
from exporter.operations import leak_component_id


@dataclass(frozen=True)
class Plan:
    """Trays known without a call, and how many trays of which types remain to be found."""

    known: frozenset[str]
    scan: Mapping[ComponentType, int] = field(default_factory=dict)

    @property
    def settled(self) -> bool:
        return not self.scan


def plan(task: Task, rack_trays: Iterable[Tray]) -> Plan | None:
    """Plan the attribution of ``task`` on a rack with ``rack_trays``; ``None`` means wait."""
    trays = list(rack_trays)
    component = leak_component_id(task.description)
    if component is not None:
        named = [t.id for t in trays if t.component_id == component]
        if named:
            return Plan(frozenset(named))
    if task.report is None:
        return None
    wanted: dict[ComponentType, int] = {}
    for stage in task.report.stages:
        for step in stage.steps:
            if step.total_components > 0:
                wanted[step.component_type] = max(wanted.get(step.component_type, 0), step.total_components)
    by_type: dict[ComponentType, list[str]] = {}
    for tray in trays:
        by_type.setdefault(tray.type, []).append(tray.id)
    known: set[str] = set()
    scan: dict[ComponentType, int] = {}
    for kind, count in wanted.items():
        have = by_type.get(kind, [])
        if count >= len(have):
            known.update(have)  # every tray of the type (or the inventory is short: take them all)
        else:
            scan[kind] = count
    return Plan(frozenset(known), scan)
