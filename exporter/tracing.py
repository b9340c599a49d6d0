"""OpenTelemetry traces of tasks: one trace per task, spans built from the store's transitions.

A task becomes one trace whose id is the task UUID's 128 bits, so a metric exemplar's
``trace_id`` (:func:`exporter.facts.trace_id`) opens the same trace. The tree::

    <operation>                 root: the task, created -> finished
    ├── queue                   created -> started (-> finished if it never started)
    ├── stage 1                 stage startedAt -> finishedAt
    │   ├── stage 1 Compute     step startedAt -> finishedAt
    │   └── stage 1 NVSwitch
    └── stage 2 ...

Span ids are a hash of (task id, level, stage number, step index): a span built twice (another
replica, a restart) has the same id, and a child names its parent without the parent existing
yet. Spans are built directly as :class:`ReadableSpan` with NICo's timestamps; nothing reads a
clock, so :func:`stage_span`, :func:`step_span` and :func:`task_spans` are pure.

Emission follows the store's exactly-once transitions: a stage or step span when it is final
(``STAGE_FINISHED`` / ``STEP_FINISHED``), the root and queue spans when the task is terminal
(``FINISHED``). :class:`SpanBuilder` puts each span into the outbox in the same commit as its
transition, and the outbox's sender deletes it only after its export succeeded
(:mod:`exporter.outbox`): a kill at any moment loses no span, and the only duplicate is a span
exported but not yet marked sent, the identical span again.

Export (:func:`configure_tracing`) is OTLP over HTTP or gRPC, configured by the standard
``OTEL_*`` environment; without an endpoint tracing is off and nothing is subscribed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from exporter import __version__
from exporter.errortext import error_cause, valid_utf8
from exporter.facts import failure_context, short_error, trace_id_int
from exporter.models import (
    ReportStage,
    ReportStatus,
    ReportStep,
    TargetStatus,
    TaskRun,
    TaskRunStatus,
    TaskRunTarget,
    TaskStatus,
)
from exporter.outbox import Outbox, Sender
from exporter.state import Kind, TaskRecord, Transition

if TYPE_CHECKING:
    from exporter.state import Store

log = logging.getLogger(__name__)

SCOPE = InstrumentationScope("exporter.tracing", __version__)
DEFAULT_SERVICE_NAME = "nico"
# Status-change events kept per task until its root span is built, and tasks kept with events:
# a task changes status a handful of times; tasks that never finish must not grow memory.
MAX_EVENTS_PER_TASK = 16
MAX_TASKS_WITH_EVENTS = 10_000
SHUTDOWN_TIMEOUT_S = 5.0

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RESULT = {
    TaskStatus.SUCCEEDED: "success",
    TaskStatus.FAILED: "failure",
    TaskStatus.TERMINATED: "cancellation",
}
_RUN_RESULT = {ReportStatus.COMPLETED: "success", ReportStatus.FAILED: "failure"}

Attributes = dict[str, AttributeValue]
NameLookup = Callable[[str], str]


def _no_name(_: str) -> str:
    return ""


# -- ids and times ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def span_id(task_id: str, level: str, stage_number: int = 0, step_index: int = 0) -> int:
    """A deterministic, never-zero 64-bit span id for one span of one task.

    ``level`` is ``task``, ``queue``, ``stage`` or ``step``; names and finish times play no part,
    so the id is the same however often and wherever the span is built.
    """
    key = f"{task_id}/{level}/{stage_number}/{step_index}".encode()
    value = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")
    return value or 1


def _ns(when: datetime) -> int:
    """Epoch nanoseconds, exactly (no float rounding)."""
    return (when - _EPOCH) // timedelta(microseconds=1) * 1000


def _first(*candidates: datetime | None) -> datetime | None:
    for candidate in candidates:
        if candidate is not None:
            return candidate
    return None


def _seen(record: TaskRecord) -> datetime:
    """Last resort for a missing timestamp: when the task was last observed."""
    return datetime.fromtimestamp(record.observed_at, UTC)


def _context(task_id: str, level: str, stage_number: int = 0, step_index: int = 0) -> SpanContext:
    return SpanContext(
        trace_id_int(task_id),
        span_id(task_id, level, stage_number, step_index),
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )


# -- pure translation: task -> spans ---------------------------------------------------------------


@dataclass(frozen=True)
class SpanSettings:
    """What every span shares beyond its task: the resource, and inventory names by id."""

    resource: Resource
    site_name: NameLookup = _no_name
    rack_name: NameLookup = _no_name
    # The Task Run (id, 0-based phase index) whose target names the task, if any.
    run_of: Callable[[str], tuple[str, int] | None] = lambda task_id: None


def task_attributes(record: TaskRecord, settings: SpanSettings) -> Attributes:
    """Attributes every span of the task carries: where it ran and what it is."""
    task = record.task
    attrs: Attributes = {
        "nico.task.id": task.id,
        "nico.task.operation": record.operation.value,
        "nico.site.id": record.site_id,
        "nico.rack.id": record.rack_id,
    }
    if site_name := settings.site_name(record.site_id):
        attrs["nico.site.name"] = site_name
    if rack_name := settings.rack_name(record.rack_id):
        attrs["nico.rack.name"] = rack_name
    return attrs


def _span(
    name: str,
    context: SpanContext,
    parent: SpanContext | None,
    start: int,
    end: int,
    attrs: Attributes,
    status: Status,
    settings: SpanSettings,
    events: Sequence[Event] = (),
    links: Sequence[Link] = (),
) -> ReadableSpan:
    return ReadableSpan(
        name,
        context=context,
        parent=parent,
        resource=settings.resource,
        attributes=attrs,
        events=events,
        links=links,
        kind=SpanKind.INTERNAL,
        status=status,
        start_time=start,
        end_time=max(start, end),  # NICo's clocks may disagree by a second: never end before start
        instrumentation_scope=SCOPE,
    )


def _run_status(status: ReportStatus, error: str | None) -> Status:
    if status is ReportStatus.FAILED:
        return Status(StatusCode.ERROR, short_error(error_cause(error or "")) or None)
    if status is ReportStatus.COMPLETED:
        return Status(StatusCode.OK)
    return Status(StatusCode.UNSET)


def _stage_error(stage: ReportStage) -> str | None:
    failed = next((s.error for s in stage.steps if s.status is ReportStatus.FAILED and s.error), None)
    return stage.error or failed


def stage_span(
    record: TaskRecord, stage: ReportStage, settings: SpanSettings, *, ended: datetime | None = None
) -> ReadableSpan:
    """The span of one stage, child of the root.

    ``ended`` is given for a stage still ``running`` when its task ended: the span ends there,
    with status UNSET, result ``cancellation`` and ``nico.stage.unfinished=true``.
    """
    tid = record.id
    start = _first(
        stage.started_at, stage.finished_at, ended, record.task.started, record.task.created
    ) or _seen(record)
    end = _first(stage.finished_at, ended) or start
    attrs = task_attributes(record, settings)
    attrs.update(
        {
            "cicd.pipeline.task.name": f"stage {stage.number}",
            "cicd.pipeline.task.run.id": f"{tid}/stage/{stage.number}",
            "nico.stage.number": stage.number,
        }
    )
    if ended is not None:
        attrs["cicd.pipeline.task.run.result"] = "cancellation"
        attrs["nico.stage.unfinished"] = True
        status = Status(StatusCode.UNSET)
    else:
        if stage.status in _RUN_RESULT:
            attrs["cicd.pipeline.task.run.result"] = _RUN_RESULT[stage.status]
        status = _run_status(stage.status, _stage_error(stage))
    return _span(
        f"stage {stage.number}",
        _context(tid, "stage", stage.number),
        _context(tid, "task"),
        _ns(start),
        _ns(end),
        attrs,
        status,
        settings,
    )


def step_span(
    record: TaskRecord,
    stage: ReportStage,
    step: ReportStep,
    index: int,
    settings: SpanSettings,
    *,
    ended: datetime | None = None,
) -> ReadableSpan:
    """The span of one step (one component type within a stage), child of its stage.

    ``ended`` as for :func:`stage_span` (attribute ``nico.step.unfinished=true``).
    """
    tid = record.id
    name = f"stage {stage.number} {step.component_type.value}"
    start = _first(step.started_at, stage.started_at, step.finished_at, ended, record.task.started) or _seen(
        record
    )
    end = _first(step.finished_at, ended, stage.finished_at) or start
    attrs = task_attributes(record, settings)
    attrs.update(
        {
            "cicd.pipeline.task.name": name,
            "cicd.pipeline.task.run.id": f"{tid}/stage/{stage.number}/step/{index}",
            "nico.stage.number": stage.number,
            "nico.step.index": index,
            "nico.component.type": step.component_type.value,
            "nico.step.total_components": step.total_components,
        }
    )
    if ended is not None:
        attrs["cicd.pipeline.task.run.result"] = "cancellation"
        attrs["nico.step.unfinished"] = True
        status = Status(StatusCode.UNSET)
    else:
        if step.status in _RUN_RESULT:
            attrs["cicd.pipeline.task.run.result"] = _RUN_RESULT[step.status]
        status = _run_status(step.status, step.error)
    return _span(
        name,
        _context(tid, "step", stage.number, index),
        _context(tid, "stage", stage.number),
        _ns(start),
        _ns(end),
        attrs,
        status,
        settings,
    )


def status_event(transition: Transition) -> Event:
    """A status change seen while polling, as a root span event (time: when it was observed)."""
    attrs: Attributes = {"nico.task.status": transition.record.status.value}
    if transition.previous_status is not None:
        attrs["nico.task.previous_status"] = transition.previous_status.value
    return Event("nico.task.status_changed", attrs, int(transition.observed_at * 1e9))


def task_spans(
    record: TaskRecord,
    settings: SpanSettings,
    *,
    observed_at: float,
    events: Sequence[Event] = (),
) -> list[ReadableSpan]:
    """The spans of a terminal task: the root, the queue wait, and stages or steps left running.

    ``observed_at`` (epoch s) stands in for ``finished`` when NICo did not set it. Stages and
    steps still ``running`` when the task ended end with it (see :func:`stage_span`); pending,
    skipped and unknown ones never ran and get no span.
    """
    task = record.task
    tid = record.id
    finished = task.finished or datetime.fromtimestamp(observed_at, UTC)
    created = _first(task.created, task.started) or finished
    start_ns, end_ns = _ns(created), max(_ns(created), _ns(finished))
    common = task_attributes(record, settings)
    attrs: Attributes = {
        **common,
        "cicd.pipeline.name": record.operation.value,
        "cicd.pipeline.run.id": tid,
        "nico.task.description": task.description,
        "nico.task.status": task.status.value,
    }
    if task.status in _RESULT:
        attrs["cicd.pipeline.result"] = _RESULT[task.status]
    if task.rule_id:
        attrs["nico.rule.id"] = task.rule_id
    if record.trays is not None:
        attrs["nico.tray.ids"] = tuple(sorted(record.trays))
    if task.status is TaskStatus.FAILED:
        failure = failure_context(record)
        # The status reads as a label does (the cause, one line); the text as NICo gave it stays.
        status = Status(StatusCode.ERROR, short_error(failure.error) or None)
        if failure.full_error:
            attrs["nico.task.error"] = valid_utf8(failure.full_error)
    elif task.status is TaskStatus.SUCCEEDED:
        status = Status(StatusCode.OK)
    else:
        status = Status(StatusCode.UNSET)
    # Events outside the span look broken in trace views; observation times are clamped into it.
    clamped = [Event(e.name, e.attributes, min(max(e.timestamp, start_ns), end_ns)) for e in events]
    links: list[Link] = []
    if (run := settings.run_of(tid)) is not None:
        # The rollout's phase that submitted this task: a tracing UI walks from it to the run.
        attrs["nico.run.id"] = run[0]
        links.append(Link(_context(run[0], "phase", run[1] + 1), {"nico.run.phase": run[1] + 1}))
    root = _span(
        record.operation.value,
        _context(tid, "task"),
        None,
        start_ns,
        end_ns,
        attrs,
        status,
        settings,
        clamped,
        links,
    )
    spans = [root]
    if task.created is not None:
        queue_end = task.started or finished
        queue_attrs: Attributes = {**common, "nico.task.started": task.started is not None}
        spans.append(
            _span(
                "queue",
                _context(tid, "queue"),
                _context(tid, "task"),
                _ns(task.created),
                _ns(queue_end),
                queue_attrs,
                Status(StatusCode.UNSET),
                settings,
            )
        )
    if task.report is not None:
        for stage in task.report.stages:
            if stage.status is ReportStatus.RUNNING:
                spans.append(stage_span(record, stage, settings, ended=finished))
            for index, step in enumerate(stage.steps):
                if step.status is ReportStatus.RUNNING:
                    spans.append(step_span(record, stage, step, index, settings, ended=finished))
    return spans


_RUN_ERRORS = frozenset({TaskRunStatus.FAILED, TaskRunStatus.COMPLETED_WITH_FAILURES})


def run_spans(
    site_id: str, run: TaskRun, targets: Sequence[TaskRunTarget], settings: SpanSettings
) -> list[ReadableSpan]:
    """The spans of a final Task Run: one trace (the run id's 128 bits), a root and a span per
    phase begun; each child task's root span links to its phase's span (:func:`task_spans`)."""
    created = run.created or run.updated or run.finished
    if created is None:
        return []
    finished = run.finished or run.updated or created
    start = _first(run.started, created) or created
    common: Attributes = {"nico.run.id": run.id, "nico.site.id": site_id}
    if site_name := settings.site_name(site_id):
        common["nico.site.name"] = site_name
    attrs: Attributes = {
        **common,
        "nico.run.name": run.name,
        "nico.run.operation_type": run.operation_type,
        "nico.run.operation_code": run.operation_code,
        "nico.run.status": run.status.value,
        "nico.run.status_reason": run.status_reason.value,
        "nico.run.phases": run.total_phases,
        "nico.run.targets": len(targets),
    }
    if run.status in _RUN_ERRORS:
        status = Status(StatusCode.ERROR, run.status_message or run.status.value)
    elif run.status is TaskRunStatus.COMPLETED:
        status = Status(StatusCode.OK)
    else:
        status = Status(StatusCode.UNSET)
    root_context = _context(run.id, "run")
    spans = [
        _span(run.name or "task run", root_context, None, _ns(start), _ns(finished), attrs, status, settings)
    ]
    phases: dict[int, list[TaskRunTarget]] = {}
    for target in targets:
        phases.setdefault(target.phase_index, []).append(target)
    for index, members in sorted(phases.items()):
        begun = min((t.created for t in members if t.created is not None), default=start)
        ended = max((t.updated for t in members if t.updated is not None), default=finished)
        failed = sum(1 for t in members if t.status is TargetStatus.FAILED)
        phase_attrs: Attributes = {**common, "nico.run.phase": index + 1, "nico.run.targets": len(members),
                                   "nico.run.targets_failed": failed}  # fmt: skip
        phase_status = (
            Status(StatusCode.ERROR, f"{failed} targets failed") if failed else Status(StatusCode.UNSET)
        )
        spans.append(
            _span(f"phase {index + 1}", _context(run.id, "phase", index + 1), root_context,
                  _ns(begun), _ns(ended), phase_attrs, phase_status, settings)
        )  # fmt: skip
    return spans


# -- the subscriber --------------------------------------------------------------------------------


class SpanBuilder:
    """Store subscriber: each span made final by a transition goes into the outbox, in the
    transition's own commit (``Store.outbox``); :mod:`exporter.outbox` sends it from there.

    Args:
        settings: resource and name lookups shared by every span.
    """

    def __init__(self, settings: SpanSettings) -> None:
        self.settings = settings
        self._store: Store | None = None
        # Status changes by task until its root span is built (insertion order: oldest first).
        self.events: dict[str, list[Event]] = {}

    def attach(self, store: Store) -> None:
        """Subscribe to ``store``'s transitions."""
        self._store = store
        store.subscribe(self.on_transition)

    def _emit(self, spans: Sequence[ReadableSpan]) -> None:
        assert self._store is not None, "attach the builder to a store first"
        self._store.outbox([(span_key(span), encode_span(span)) for span in spans])

    def on_transition(self, t: Transition) -> None:
        record = t.record
        if t.kind is Kind.STAGE_FINISHED and t.stage is not None:
            self._emit([stage_span(record, t.stage, self.settings)])
        elif t.kind is Kind.STEP_FINISHED and t.stage is not None and t.step is not None:
            index = t.step_index if t.step_index is not None else 0
            self._emit([step_span(record, t.stage, t.step, index, self.settings)])
        elif t.kind is Kind.STATUS_CHANGED:
            self._remember(t)
        elif t.kind is Kind.FINISHED:
            events = self.events.pop(record.id, [])
            self._emit(task_spans(record, self.settings, observed_at=t.observed_at, events=events))
        elif t.kind is Kind.VANISHED:
            self.events.pop(record.id, None)

    def on_run_final(self, site_id: str, run: TaskRun, targets: Sequence[TaskRunTarget]) -> None:
        """A Task Run became final: its trace, in the commit that counts it."""
        self._emit(run_spans(site_id, run, targets, self.settings))

    def _remember(self, t: Transition) -> None:
        events = self.events.get(t.record.id)
        if events is None:
            if len(self.events) >= MAX_TASKS_WITH_EVENTS:
                del self.events[next(iter(self.events))]
            events = self.events[t.record.id] = []
        if len(events) < MAX_EVENTS_PER_TASK:
            events.append(status_event(t))


# -- the outbox's encoding -------------------------------------------------------------------------


def span_key(span: ReadableSpan) -> str:
    """The span's identity in the outbox: trace id and span id (deterministic, see span_id)."""
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}/{context.span_id:016x}"


def _attrs_out(attrs: Mapping[str, AttributeValue] | None) -> dict[str, object]:
    return {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in (attrs or {}).items()}


def _attrs_in(attrs: Mapping[str, object]) -> Attributes:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in attrs.items()}  # type: ignore[misc]


def encode_span(span: ReadableSpan) -> str:
    """A span as JSON, everything but its resource (the exporter's own, added back on decode)."""
    context = span.get_span_context()
    assert context is not None
    return json.dumps(
        {
            "name": span.name,
            "trace": f"{context.trace_id:032x}",
            "span": f"{context.span_id:016x}",
            "parent": f"{span.parent.span_id:016x}" if span.parent is not None else None,
            "start": span.start_time,
            "end": span.end_time,
            "kind": span.kind.name,
            "attributes": _attrs_out(span.attributes),
            "events": [[e.name, e.timestamp, _attrs_out(e.attributes)] for e in span.events],
            "links": [
                [f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}", _attrs_out(link.attributes)]
                for link in span.links
            ],
            "status": [span.status.status_code.name, span.status.description],
        },
        separators=(",", ":"),
    )


def decode_span(text: str, resource: Resource) -> ReadableSpan:
    """The span :func:`encode_span` wrote, with ``resource``; raises ValueError/KeyError if unreadable."""
    data = json.loads(text)
    trace = int(data["trace"], 16)

    def context(span: str) -> SpanContext:
        return SpanContext(trace, int(span, 16), is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))

    code, description = data["status"]
    return ReadableSpan(
        data["name"],
        context=context(data["span"]),
        parent=context(data["parent"]) if data["parent"] else None,
        resource=resource,
        attributes=_attrs_in(data["attributes"]),
        events=[Event(name, _attrs_in(attrs), timestamp) for name, timestamp, attrs in data["events"]],
        links=[
            Link(
                SpanContext(
                    int(t, 16), int(sp, 16), is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)
                ),
                _attrs_in(attrs),
            )
            for t, sp, attrs in data.get("links", ())  # spans written before links were kept have none
        ],
        kind=SpanKind[data["kind"]],
        status=Status(StatusCode[code], description),
        start_time=data["start"],
        end_time=data["end"],
        instrumentation_scope=SCOPE,
    )


# -- export ----------------------------------------------------------------------------------------


@dataclass
class TracingHandle:
    """Tracing when it is on: the OTLP exporter, the resource, and (once wired) the sender."""

    exporter: SpanExporter
    resource: Resource
    protocol: str
    endpoint: str
    sender: Sender | None = None

    def builder(
        self,
        *,
        site_name: NameLookup = _no_name,
        rack_name: NameLookup = _no_name,
        run_of: Callable[[str], tuple[str, int] | None] = lambda task_id: None,
    ) -> SpanBuilder:
        return SpanBuilder(SpanSettings(self.resource, site_name, rack_name, run_of))

    def start_sender(self, outbox: Outbox, *, durable: bool) -> Sender:
        """Start sending ``outbox``'s pending spans (its own thread)."""
        self.sender = Sender(
            outbox, self.exporter, functools.partial(decode_span, resource=self.resource), durable=durable
        )
        self.sender.start()
        return self.sender

    def shutdown(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Send what is pending for up to ``timeout_s`` (even if the receiver is down), then stop.
        Whatever is left stays in the outbox for the next start."""
        if self.sender is not None:
            self.sender.stop(timeout_s)
        with contextlib.suppress(Exception):
            self.exporter.shutdown()


GRPC_INSTALL_HINT = "pip install 'nico-task-exporter[grpc]'"


class TracingConfigError(Exception):
    """The ``OTEL_*`` environment asks for an export this installation cannot make."""


def _env(environ: Mapping[str, str], *names: str) -> str:
    return next((v.strip() for n in names if (v := environ.get(n, "")).strip()), "")


def configure_tracing(
    service_name: str = DEFAULT_SERVICE_NAME,
    environ: Mapping[str, str] | None = None,
) -> TracingHandle | None:
    """Tracing as the standard ``OTEL_*`` environment asks, or ``None`` when it is off.

    Off when ``OTEL_SDK_DISABLED=true``, ``OTEL_TRACES_EXPORTER=none``, or neither
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` nor ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set. The
    protocol (``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL``) is ``http/protobuf`` (default) or
    ``grpc``; headers, timeout, compression and TLS are read by the OTLP exporter itself. Export
    runs on the sender's thread (:mod:`exporter.outbox`): it never blocks polling or scrapes.

    Raises:
        TracingConfigError: ``grpc`` is asked for but the ``grpc`` extra is not installed.
    """
    env = os.environ if environ is None else environ
    if _env(env, "OTEL_SDK_DISABLED").lower() == "true":
        return None
    if _env(env, "OTEL_TRACES_EXPORTER").lower() == "none":
        return None
    traces_endpoint = _env(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base_endpoint = _env(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
    if not (traces_endpoint or base_endpoint):
        return None
    protocol = (
        _env(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    )
    inner: SpanExporter
    if protocol == "grpc":
        # The gRPC exporter (and grpcio) is an optional extra: imported only when asked for.
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        except ImportError as exc:
            raise TracingConfigError(
                "OTLP protocol grpc (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL / OTEL_EXPORTER_OTLP_PROTOCOL) "
                f"needs the optional gRPC exporter: {GRPC_INSTALL_HINT}, or use http/protobuf"
            ) from exc

        endpoint = traces_endpoint or base_endpoint
        inner = GrpcExporter(endpoint=endpoint)
    else:
        if protocol != "http/protobuf":
            log.error("unsupported OTLP protocol: using http/protobuf", extra={"protocol": protocol})
            protocol = "http/protobuf"
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        endpoint = traces_endpoint or base_endpoint.removesuffix("/") + "/v1/traces"
        inner = HttpExporter(endpoint=endpoint)
    resource = Resource.create({"service.name": service_name, "service.version": __version__})
    handle = TracingHandle(inner, resource, protocol, endpoint)
    log.info("tracing on", extra={"endpoint": endpoint, "protocol": protocol})
    return handle
