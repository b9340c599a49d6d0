"""``TaskReportV1`` as Flow builds it (``report.go``): stages and steps mirroring the rule."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from exporter.models import ComponentType, ReportStatus
from exporter.simulator.operations import OPERATIONS, Operation

# The report producer truncates errors to 512 bytes (TaskReportV1.error).
MAX_ERROR_BYTES = 512


def truncate_error(text: str) -> str:
    """Cut ``text`` to at most 512 UTF-8 bytes without splitting a character."""
    raw = text.encode()
    if len(raw) <= MAX_ERROR_BYTES:
        return text
    return raw[:MAX_ERROR_BYTES].decode(errors="ignore")


@dataclass
class Step:
    """``TaskReportV1Step``: one rule sequence step, i.e. one component type in a stage."""

    component_type: ComponentType
    total: int
    status: ReportStatus
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None


@dataclass
class Stage:
    """``TaskReportV1Stage``: its steps run in parallel; completion is stage-granular."""

    number: int
    steps: list[Step]
    status: ReportStatus = ReportStatus.PENDING
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None

    @property
    def executable(self) -> bool:
        return any(step.status is not ReportStatus.SKIPPED for step in self.steps)


@dataclass
class Report:
    """``TaskReportV1`` as Flow keeps it; ``error`` is the first failing stage's, never overwritten."""

    stages: list[Stage]
    error: str | None = None
    version: int = 1


def initial_report(operation: Operation, totals: dict[ComponentType, int]) -> Report:
    """``report.NewInitial``: a step per rule step, pre-marked ``skipped`` where nothing is targeted.

    A stage whose every step is skipped is itself ``skipped`` (our choice: Flow's code for that
    case was not read) and the workflow passes over it without BeginStage.
    """
    stages: list[Stage] = []
    for number, types in enumerate(OPERATIONS[operation].stages, start=1):
        steps = [
            Step(
                kind, totals.get(kind, 0), ReportStatus.PENDING if totals.get(kind) else ReportStatus.SKIPPED
            )
            for kind in types
        ]
        stage = Stage(number, steps)
        if not stage.executable:
            stage.status = ReportStatus.SKIPPED
        stages.append(stage)
    return Report(stages)
