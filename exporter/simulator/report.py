"""``TaskReportV1`` as Flow builds it (``flow/internal/task/report/report.go``), and the error a
failed stage writes into it.

One stage per rule stage, one step per sequence step; a step whose component type the task
does not target is pre-marked ``skipped``. Every stage, even one whose steps are all skipped, is
begun and completed by the workflow: stages are never ``skipped``, only steps are.

A failed stage's error is the component step child workflow's error as the Temporal SDK hands
it to the parent workflow, wrapped by Flow (:func:`stage_error`); docs/simulator.md cites each
layer.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime

from exporter.models import ComponentType, ReportStatus
from exporter.simulator.operations import OPERATIONS, Operation

# ``maxErrLen`` (report.go) and ``maxLen`` (message.go): both cut at 512 bytes.
MAX_ERROR_BYTES = 512


def truncate_error(text: str) -> str:
    """Cut ``text`` to its first 512 UTF-8 bytes, as Go's ``msg[:512]`` does, then as JSON shows it.

    Go cuts bytes, so the cut may split a character; ``encoding/json`` writes each stray byte
    as U+FFFD (the report is a JSON document, ``report.go:172-182``).
    """
    raw = text.encode()
    if len(raw) <= MAX_ERROR_BYTES:
        return text
    head = raw[:MAX_ERROR_BYTES].decode(errors="ignore")
    return head + "\ufffd" * (MAX_ERROR_BYTES - len(head.encode()))


def failure_message(error: str) -> str:
    """``message.ForFailure``: trimmed, the first line only, at most 512 bytes; "Failed" if empty."""
    text = error.strip()
    if not text:
        return "Failed"
    return truncate_error(text.split("\n", 1)[0].strip())


# The component step child workflow (workflow/genericcomponentstep.go:17-20).
CHILD_WORKFLOW_TYPE = "GenericComponentStepWorkflow"
# The identity of the worker that ran an activity: the SDK's default "<pid>@<host>@" (sdk v1.39.0
# internal/internal_utils.go:139-141, internal/client.go:1109-1110, internal/internal_worker.go:
# 2034, 2093-2095; Flow sets none, flow/cmd/serve.go:252-257). The host, a pod's name, is invented.
WORKER_IDENTITY = "1@nico-flow-6f8b9c7d5-k2x9p@"
_RETRYABLE_TRAILER = " (type: {}, retryable: true)"


@dataclass(frozen=True)
class StepFailure:
    """Why a component step child workflow failed, and where in it.

    ``cause`` is the failing code's own error text: the activity's (``activity`` names it) or,
    with ``activity`` None, the workflow code's (a firmware poll, actions.go:279-282).
    ``phase`` is "main operation", "pre-operation" or "post-operation"
    (genericcomponentstep.go:58, :68, :80); ``action`` and ``action_index`` name the failing
    action of a pre- or post-operation list (actions.go:56-59). ``context`` is text the action
    itself puts before the activity's error ("failed to start firmware update: ",
    actions.go:222-225). ``cause_type`` is the Go type the SDK records for an activity error made
    with ``%w`` ("wrapError"), ``inner`` and ``inner_type`` the error it wraps (a gRPC status:
    "Error"); "" for ``errors.New`` or ``fmt.Errorf`` without ``%w`` (sdk internal/error.go:
    1019-1029). ``component_type`` is the type of the failing component, when known.
    """

    cause: str
    activity: str | None = "PowerControl"
    phase: str = "main operation"
    action: str | None = None
    action_index: int = 0
    context: str = ""
    cause_type: str = ""
    inner: str = ""
    inner_type: str = ""
    component_type: ComponentType | None = None

    def _activity_cause(self) -> str:
        """``ApplicationError.Error()`` of the activity's error (sdk internal/error.go:603-612)."""
        text = self.cause + (_RETRYABLE_TRAILER.format(self.cause_type) if self.cause_type else "")
        if self.cause_type and self.inner:
            text += f": {self.inner}" + (
                _RETRYABLE_TRAILER.format(self.inner_type) if self.inner_type else ""
            )
        return text

    def _base(self, scheduled_event_id: int) -> str:
        """The innermost error the step workflow saw: ``ActivityError.Error()`` (sdk internal/
        error.go:811-817) around the activity's, or the workflow code's own."""
        if self.activity is None:
            return self.cause
        return (
            f"activity error (type: {self.activity}, scheduledEventID: {scheduled_event_id}, "
            f"startedEventID: {scheduled_event_id + 1}, identity: {WORKER_IDENTITY}): {self._activity_cause()}"
        )

    def as_parent_sees_it(self) -> str:
        """The child workflow's error as ``future.Get`` returns it to the parent, after ``: ``.

        The workflow returns Go errors wrapped with ``%w``: the phase's, the action's, the
        action's context. The SDK sends each as a failure whose message is its whole
        ``Error()`` and whose cause is the error it wraps (internal/failure_converter.go:79-83,
        :178-186), and the parent rebuilds each as an ``ApplicationError`` of type "wrapError"
        (:210-231), which prints its message, ``(type: wrapError, retryable: true)``, ``: `` and
        its cause again (internal/error.go:603-612): the chain repeats once per layer.
        """
        prefixes = [f"{self.phase} failed: "]
        if self.action is not None:
            prefixes.append(f"action {self.action_index} ({self.action}) failed: ")
        if self.context:
            prefixes.append(self.context)
        # Event ids in the child's history: activities are scheduled after the start's workflow
        # task (5), main operations after pre-operation lists, post-operations after the main.
        index = self.action_index if self.action is not None else 0
        scheduled = {"pre-operation": 5 + 6 * index, "main operation": 5, "post-operation": 11 + 6 * index}
        base = self._base(scheduled.get(self.phase, 5))
        text = base
        for depth in range(len(prefixes) - 1, -1, -1):
            go_text = "".join(prefixes[depth:]) + base
            text = go_text + _RETRYABLE_TRAILER.format("wrapError") + ": " + text
        return text


def stage_error(task_id: str, stage_number: int, component_type: str, failure: StepFailure) -> str:
    """The error ``FailStage`` receives, before the 512-byte cut (helpers.go:340-344, :424-425).

    ``component type T failed: `` (helpers.go:342-343) around ``ChildWorkflowExecutionError.
    Error()`` (sdk internal/error.go:858-865) around :meth:`StepFailure.as_parent_sees_it`. The
    child's workflow id is ``component-step-<parent workflow id>-<T>`` (helpers.go:316-319), the
    parent's the task id (manager/helpers.go:88-90); the run id and event ids are plausible, not
    modelled (the exporter reads none of them).
    """
    workflow_id = f"component-step-{task_id}-{component_type}"
    run_id = uuid.UUID(bytes=hashlib.sha256(workflow_id.encode()).digest()[:16], version=4)
    initiated = 11 + 12 * (stage_number - 1)
    return (
        f"component type {component_type} failed: child workflow execution error (type: "
        f"{CHILD_WORKFLOW_TYPE}, workflowID: {workflow_id}, runID: {run_id}, initiatedEventID: "
        f"{initiated}, startedEventID: {initiated + 1}): {failure.as_parent_sees_it()}"
    )


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
