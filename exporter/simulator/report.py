"""``TaskReportV1`` as Flow builds it (``flow/internal/task/report/report.go``).

One stage per rule stage, one step per sequence step; a step whose component type the task
does not target is pre-marked ``skipped``. Every stage, even one whose steps are all skipped, is
begun and completed by the workflow: stages are never ``skipped``, only steps are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from exporter.models import ComponentType, ReportStatus
from exporter.simulator.operations import OPERATIONS, Operation

# ``maxErrLen`` (report.go) and ``maxLen`` (message.go): both cut at 512 bytes.
MAX_ERROR_BYTES = 512


def truncate_error(text: str) -> str:
    """Cut ``text`` to at most 512 UTF-8 bytes without splitting a character."""
    raw = text.encode()
    if len(raw) <= MAX_ERROR_BYTES:
        return text
    return raw[:MAX_ERROR_BYTES].decode(errors="ignore")


def failure_message(error: str) -> str:
    """``message.ForFailure``: trimmed, the first line only, at most 512 bytes; "Failed" if empty."""
    text = error.strip()
    if not text:
        return "Failed"
    return truncate_error(text.split("\n", 1)[0])


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
    def has_work(self) -> bool:
        """Whether any step targets a component (a stage without work completes at once)."""
        return any(step.status is not ReportStatus.SKIPPED for step in self.steps)


@dataclass
class Report:
    """``TaskReportV1`` as Flow keeps it; ``error`` is the first failing stage's, never overwritten."""

    stages: list[Stage]
    error: str | None = None
    version: int = 1


Layout = tuple[tuple[ComponentType, ...], ...]


def initial_report(
    operation: Operation, totals: dict[ComponentType, int], layout: Layout | None = None
) -> Report:
    """``report.NewInitial``: every stage ``pending``, steps without targets ``skipped``.

    ``layout``: the stages of the rule the task runs (None: the operation's built-in default).
    """
    stages: list[Stage] = []
    for number, types in enumerate(layout or OPERATIONS[operation].stages, start=1):
        steps = [
            Step(
                kind, totals.get(kind, 0), ReportStatus.PENDING if totals.get(kind) else ReportStatus.SKIPPED
            )
            for kind in types
        ]
        stages.append(Stage(number, steps))
    return Report(stages)
