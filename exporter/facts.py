"""Pure facts about a task, derived from its payload alone: what metrics and traces both say.

The trace id a metric's exemplar links to, where and why a failed task failed (the cause, out of
the wrapping :mod:`exporter.errortext` takes off), an error shortened for a label, the stage a
task is running. No clock, no state, no I/O: :mod:`exporter.metrics` and
:mod:`exporter.tracing` both use these, and neither imports the other.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from exporter.errortext import error_cause, one_line
from exporter.models import ReportStatus
from exporter.state import TaskRecord

# Longest error label value (characters); the full text is on the task's span. A cause that came
# through a step child workflow keeps only the ~100 bytes its wrapping leaves of Flow's 512
# (exporter/errortext.py), so it always fits; the room above that is for errors the task manager
# writes without the wrapping (manager.go:424-427, e.g. "component manager capability
# pre-dispatch validation failed: ..."), whose useful end lies past 128 characters.
ERROR_LABEL_MAX = 200


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
    """Where and why a task failed: ``error`` is the cause, ``full_error`` NICo's text as it came."""

    stage_number: str
    component_type: str
    error: str
    full_error: str = ""


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
            return FailureContext(str(stage.number), kinds, error_cause(error), error)
        if report.error:
            return FailureContext("", "unknown", error_cause(report.error), report.error)
    message = record.task.message or ""
    return FailureContext("", "unknown", error_cause(message), message)


def short_error(error: str) -> str:
    """An error as a label value or span status: one line, at most 200 characters, valid UTF-8."""
    return one_line(error, ERROR_LABEL_MAX)


def current_stage(record: TaskRecord) -> int | None:
    report = record.task.report
    if report is None:
        return None
    running = [s.number for s in report.stages if s.status is ReportStatus.RUNNING]
    return running[0] if running else None
