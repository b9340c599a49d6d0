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

A failed task is charged (:func:`charged_trays`) only to those of its trays that its failure
points at, never to every tray it targeted: a rack-wide power cycle that failed on an NVSwitch
step says nothing against the 18 compute trays. See the function for what NICo says and how.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from exporter.models import ComponentType, ReportStatus, Task, Tray
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


# -- which trays a failure is charged to ---------------------------------------------------------


@dataclass(frozen=True)
class TargetTray:
    """A tray a task targets, as discovery knows it: its type (a ``ComponentType`` value) and the
    component id NICo's errors and leak descriptions name it by (``Tray.component_id``)."""

    id: str
    type: str
    component_id: str | None = None


# NICo's code cited below is release/v2.0 of rest-api/flow/internal/task/. Flow puts the failed
# child workflow's component type in front of a stage's error, and the stage in front of the
# task's message (executor/temporalworkflow/workflow/helpers.go:342-343, :431).
_FAILED_TYPE = re.compile(r"^(?:stage \d+ failed: )?component type (\S+) failed: ")
# VerifyReachability names the component types that never answered, as Go prints a []string:
# "... waiting for components to become reachable: [Compute NVSwitch]".
_UNREACHABLE = re.compile(r"waiting for components to become reachable: \[([^\]]*)(\]?)")
# Report errors and task messages are cut to their first 512 bytes (report/report.go:306-315,
# message/message.go:51-56): an id at the very end of a text that long may be the cut front of a
# longer one.
_CUT_BYTES = 512


def _failure_texts(task: Task) -> list[str]:
    """Every error text NICo keeps about the failure: the failed stages' and steps' errors, the
    report's and the task's message, each once."""
    texts: list[str | None] = []
    report = task.report
    if report is not None:
        for stage in report.stages:
            if stage.status is ReportStatus.FAILED:
                texts.append(stage.error)
                texts += [s.error for s in stage.steps if s.status is ReportStatus.FAILED]
        texts.append(report.error)
    texts.append(task.message)
    return [text for text in dict.fromkeys(texts) if text]


def failed_types(task: Task) -> frozenset[str]:
    """The component types whose work failed: those the error names, else the report's failed steps.

    The error names one type: the first child workflow of the stage that failed (helpers.go:340-344),
    or the types VerifyReachability waited for in vain (workflow/actions.go:577-591). The report
    alone is coarser: FailStage marks every step still running failed, with the stage's one error
    (report/report.go:257-291), so in a stage of several types the failed steps name them all.
    """
    texts = _failure_texts(task)
    named: set[str] = set()
    for text in texts:
        unreachable = _UNREACHABLE.search(text)
        if unreachable is not None:
            kinds = unreachable.group(1).split()
            if not unreachable.group(2):
                kinds = kinds[:-1]  # the list was cut: its last name may be cut short
            if kinds:
                named.update(kinds)
                continue
        match = _FAILED_TYPE.match(text)
        if match is not None:
            named.add(match.group(1))
    if named or task.report is None:
        return frozenset(named)
    return frozenset(
        step.component_type.value
        for stage in task.report.stages
        if stage.status is ReportStatus.FAILED
        for step in stage.steps
        if step.status is ReportStatus.FAILED
    )


def _names(text: str, component_id: str) -> bool:
    """Whether ``text`` names ``component_id`` whole (not as part of a longer id, nor cut short)."""
    pattern = re.compile(rf"(?<![\w-]){re.escape(component_id)}(?![\w-])")
    cut = len(text.encode("utf-8", "replace")) >= _CUT_BYTES
    return any(not (cut and m.end() == len(text)) for m in pattern.finditer(text))


def charged_trays(task: Task, targets: Iterable[TargetTray]) -> frozenset[str]:
    """The ids of the trays, among ``targets`` (the trays ``task`` targets), its failure is charged to.

    1. The trays whose component the failure names: an error names it by its component id
       (the component managers' "power control failed for <id>: ...", "firmware update failed for
       components: [<id> ...]": componentmanager/{compute,nvswitch,powershelf}/nico/nico.go, e.g.
       nvswitch/nico/nico.go:257, :373, and workflow/actions.go:280), and a leak-detection task
       by its description (the one component it acts on).
    2. Otherwise every targeted tray of the component types whose work failed (:func:`failed_types`).
    3. Otherwise none: a failure NICo places on no component type (no report, a rule or
       validation error) is charged to no tray; the task still counts as failed for its rack.
    """
    trays = list(targets)
    texts = _failure_texts(task)
    leak = leak_component_id(task.description)
    named = frozenset(
        tray.id
        for tray in trays
        if tray.component_id
        and (tray.component_id == leak or any(_names(t, tray.component_id) for t in texts))
    )
    if named:
        return named
    kinds = failed_types(task)
    return frozenset(tray.id for tray in trays if tray.type in kinds)
