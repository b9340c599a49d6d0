"""Pure facts about a task, derived from its payload alone: what metrics and traces both say.

The trace id a metric's exemplar links to, where and why a failed task failed, an error shortened
for a label, the stage a task is running. No clock, no state, no I/O: :mod:`exporter.metrics` and
:mod:`exporter.tracing` both use these, and neither imports the other.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from exporter.models import ReportStatus
from exporter.state import TaskRecord

# Longest error label value (characters); the full text is in the task's span.
ERROR_LABEL_MAX = 128


def trace_id(task_id: str) -> str:
    """The task's trace id: its UUID's 128 bits as 32 hex digits."""
    return uuid.UUID(task_id).hex


def trace_id_int(task_id: str) -> int:
    """The task's trace id as an int: its UUID's 128 bits (the same as :func:`trace_id`)."""
    return uuid.UUID(task_id).int


_REASONS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (reason, re.compile(pattern, re.IGNORECASE))
    for reason, pattern in (
        ("expired", r"queue timeout"),
        ("timeout", r"time(d)?[ -]?out|deadline"),
        ("unreachable", r"unreachable|connection|refused|no route|did not (answer|respond)"),
        ("auth", r"unauthori[sz]ed|forbidden|permission|credential|denied"),
        ("leak", r"\bleak"),
        ("firmware", r"firmware|image|version|checksum|flash"),
        ("power", r"power"),
    )
)


def failure_reason(error: str) -> str:
    """A small closed set of failure kinds, for grouping alerts (the error itself is a label too)."""
    if not error:
        return "unknown"
    return next((reason for reason, pattern in _REASONS if pattern.search(error)), "error")


@dataclass(frozen=True)
class FailureContext:
    stage_number: str
    component_type: str
    error: str


# Flow wraps a stage's error as "stage N failed: component type T failed: <cause>"
# (flow/internal/task/executor/temporalworkflow/workflow/helpers.go:342-343, :431).
_FLOW_WRAPPING = re.compile(r"^(stage \d+ failed: |component type \S+ failed: )+")


def error_cause(error: str) -> str:
    """Flow's error without its wrapping: the stage and component type are labels of their own."""
    return _FLOW_WRAPPING.sub("", error.strip(), count=1) or error


def failure_context(record: TaskRecord) -> FailureContext:
    """Where and why a failed task failed: the first failed stage and step of its report."""
    report = record.task.report
    if report is not None:
        for stage in report.stages:
            if stage.status is not ReportStatus.FAILED:
                continue
            failed_steps = [s for s in stage.steps if s.status is ReportStatus.FAILED]
            step = failed_steps[0] if failed_steps else None
            error = (step.error if step else None) or stage.error or report.error or record.task.message or ""
            kinds = ",".join(sorted({s.component_type.value for s in failed_steps})) or "unknown"
            return FailureContext(str(stage.number), kinds, error_cause(error))
        if report.error:
            return FailureContext("", "unknown", error_cause(report.error))
    return FailureContext("", "unknown", error_cause(record.task.message or ""))


def short_error(error: str) -> str:
    """An error as a label value: one line, at most 128 characters."""
    text = " ".join(error.split())
    return text if len(text) <= ERROR_LABEL_MAX else text[: ERROR_LABEL_MAX - 1] + "…"


def current_stage(record: TaskRecord) -> int | None:
    report = record.task.report
    if report is None:
        return None
    running = [s.number for s in report.stages if s.status is ReportStatus.RUNNING]
    return running[0] if running else None
