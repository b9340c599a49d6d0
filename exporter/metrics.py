"""Prometheus metrics, rendered from the state store's snapshot at scrape time.

A scrape never calls NICo: the collector reads what the poller and the store already hold.
Histograms are fed by transitions (each delivered once), so a task's duration is observed once
however often it is scraped. Per-task series exist only for tracked tasks (active, or finished
within ``state.finished_task_ttl``); no task id ever labels an aggregate.

``FAMILIES`` is the one list of every family, its type, labels and meaning: the collector emits
exactly these, and ``docs/metrics.md`` is generated from it (a test fails when they drift).
"""

from __future__ import annotations

import bisect
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Sample

from exporter import __version__
from exporter.client import ParseEvent, RequestEvent
from exporter.models import ReportStatus, Task, TaskStatus
from exporter.state import Kind, TaskRecord, Transition

if TYPE_CHECKING:
    from exporter.poller import Poller
    from exporter.state import Store

# Bucket bounds, in seconds. Power operations take seconds to minutes; firmware and bring-up
# minutes to hours; a queued task expires after about an hour.
TASK_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800)
QUEUE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 2700, 3600, 7200)
STAGE_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
API_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50)

ERROR_LABEL_MAX = 128
STATUSES = tuple(s.value for s in TaskStatus)


@dataclass(frozen=True)
class Family:
    """One metric family of the contract."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str


def _f(name: str, kind: str, labels: str, help_text: str) -> Family:
    return Family(name, kind, tuple(labels.split()) if labels else (), help_text)


FAMILIES: tuple[Family, ...] = (
    _f("nico_tasks", "gauge", "site_id status operation", "Tasks now Pending, Waiting or Running."),
    _f(
        "nico_tasks_finished_total",
        "counter",
        "site_id status operation",
        "Tasks seen becoming terminal (Succeeded, Failed, Terminated), each counted once; continues across restarts.",
    ),
    _f(
        "nico_tasks_unobserved_total",
        "counter",
        "site_id",
        "Tasks created and finished between two polls where no list could name them (NICo v2.0 "
        "lists stop at 20 rows), from each rack's creation counter; each counted once, across restarts.",
    ),
    _f(
        "nico_task_duration_seconds",
        "histogram",
        "site_id status operation",
        "Task run time, started to finished; exemplars carry the task's trace_id.",
    ),
    _f(
        "nico_task_queue_duration_seconds",
        "histogram",
        "site_id operation",
        "Time a task waited before it ran, created to started.",
    ),
    _f(
        "nico_task_stage_duration_seconds",
        "histogram",
        "site_id operation stage_number status",
        "Stage run time, from the task report.",
    ),
    _f(
        "nico_task_step_duration_seconds",
        "histogram",
        "site_id operation component_type status",
        "Step run time (one component type within a stage), from the task report.",
    ),
    _f(
        "nico_task_status",
        "gauge",
        "site_id rack_id task_id status",
        "One-hot status of each tracked task (active, or finished within the TTL).",
    ),
    _f(
        "nico_task_info",
        "gauge",
        "site_id rack_id task_id operation description rule_id",
        "Always 1: a tracked task's operation, description and rule, for joins.",
    ),
    _f(
        "nico_task_created_timestamp_seconds",
        "gauge",
        "site_id rack_id task_id",
        "When a tracked task was created.",
    ),
    _f(
        "nico_task_started_timestamp_seconds",
        "gauge",
        "site_id rack_id task_id",
        "When a tracked task started.",
    ),
    _f(
        "nico_task_updated_timestamp_seconds",
        "gauge",
        "site_id rack_id task_id",
        "When a tracked task last changed.",
    ),
    _f(
        "nico_task_finished_timestamp_seconds",
        "gauge",
        "site_id rack_id task_id",
        "When a tracked task finished.",
    ),
    _f(
        "nico_task_current_stage",
        "gauge",
        "site_id rack_id task_id",
        "The stage number an active task is running.",
    ),
    _f(
        "nico_task_failure_info",
        "gauge",
        "site_id rack_id task_id operation stage_number component_type reason error",
        "Always 1: why a failed task (within the TTL) failed; error without Flow's "
        "'stage N failed: component type T failed:' wrapping, cut to 128 characters.",
    ),
    _f(
        "nico_task_stage_status",
        "gauge",
        "site_id rack_id task_id stage_number status",
        "Per-task stage status (opt-in: metrics.per_task_stages), 1 for the stage's status.",
    ),
    _f(
        "nico_tray_tasks",
        "gauge",
        "site_id rack_id tray_id tray_type status",
        "Active tasks per tray (once the task's trays are known).",
    ),
    _f(
        "nico_tray_task_failures_total",
        "counter",
        "site_id rack_id tray_id tray_type",
        "Failed tasks per tray.",
    ),
    _f("nico_site_info", "gauge", "site_id site_name", "Always 1: a site's name, for joins."),
    _f(
        "nico_rack_info", "gauge", "site_id rack_id rack_name", "Always 1: a rack's name and site, for joins."
    ),
    _f(
        "nico_site_up",
        "gauge",
        "site_id",
        "1 if the last poll of the site succeeded (most of its racks answered).",
    ),
    _f(
        "nico_exporter_last_successful_poll_timestamp_seconds",
        "gauge",
        "site_id",
        "When the site was last polled successfully: freshness.",
    ),
    _f(
        "nico_exporter_api_requests_total",
        "counter",
        "endpoint code",
        "NICo API calls, by endpoint template and HTTP code.",
    ),
    _f(
        "nico_exporter_api_request_duration_seconds",
        "histogram",
        "endpoint",
        "NICo API call duration, by endpoint template.",
    ),
    _f(
        "nico_exporter_parse_errors_total",
        "counter",
        "endpoint reason",
        "Payload problems survived (an item skipped, a value tolerated), by reason.",
    ),
    _f("nico_exporter_spans_exported_total", "counter", "", "Spans exported over OTLP."),
    _f("nico_exporter_span_export_errors_total", "counter", "", "Spans that failed to export."),
    _f("nico_exporter_build_info", "gauge", "version", "Always 1: the exporter's version."),
    _f("nico_exporter_ready", "gauge", "", "1 once the first discovery succeeded."),
    _f(
        "nico_exporter_tracked_tasks",
        "gauge",
        "",
        "Tasks held in memory (active, and finished within the TTL).",
    ),
    _f("nico_exporter_racks", "gauge", "site_id", "Racks this replica polls."),
    _f("nico_exporter_shard", "gauge", "", "This replica's shard index."),
    _f("nico_exporter_total_shards", "gauge", "", "How many replicas share the racks."),
    _f(
        "nico_exporter_freshness_shortfall_seconds",
        "gauge",
        "",
        "Seconds by which the request budget cannot hold the configured active interval (0: it can).",
    ),
    _f(
        "nico_exporter_budget_required_requests_per_second",
        "gauge",
        "",
        "Requests per second the configured intervals need for the current fleet.",
    ),
    _f(
        "nico_exporter_budget_requests_per_second",
        "gauge",
        "",
        "The request budget (api.max_requests_per_second).",
    ),
    _f(
        "nico_exporter_active_poll_cycle_seconds",
        "gauge",
        "",
        "How long the last active poll of every rack took.",
    ),
    _f(
        "nico_exporter_jobs_shed_total",
        "counter",
        "job",
        "Job runs skipped because the request budget was saturated.",
    ),
    _f("nico_exporter_final_fetch_queue", "gauge", "", "Tasks waiting for their final fetch."),
    _f(
        "nico_exporter_tasks_vanished_total",
        "counter",
        "",
        "Tasks that left NICo (404) before their final fetch: recorded, never counted as finished.",
    ),
    _f("nico_exporter_state_write_errors_total", "counter", "", "Failed writes of the state file."),
    _f(
        "nico_exporter_state_persistent",
        "gauge",
        "",
        "1 when state survives restarts (the state file works).",
    ),
)

FAMILY = {f.name: f for f in FAMILIES}


# -- histograms fed by transitions ---------------------------------------------------------------


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0
    exemplars: list[Exemplar | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)
        self.exemplars = [None] * (len(self.bounds) + 1)

    def observe(self, value: float, exemplar: Exemplar | None) -> None:
        index = bisect.bisect_left(self.bounds, value)
        self.counts[index] += 1
        self.sum += value
        if exemplar is not None:
            self.exemplars[index] = exemplar

    def buckets(self) -> list[tuple[str, float] | tuple[str, float, Exemplar]]:
        out: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
        total = 0
        for index, count in enumerate(self.counts):
            total += count
            bound = "+Inf" if index == len(self.bounds) else _bound(self.bounds[index])
            exemplar = self.exemplars[index]
            out.append((bound, total) if exemplar is None else (bound, total, exemplar))
        return out


def _bound(value: float) -> str:
    return str(float(value))


class HistogramSet:
    """Histograms of one family, by label values."""

    def __init__(self, family: Family, bounds: Sequence[float]) -> None:
        self.family = family
        self.bounds = tuple(float(b) for b in bounds)
        self.series: dict[tuple[str, ...], _Histogram] = {}

    def observe(self, labels: tuple[str, ...], value: float, exemplar: Exemplar | None = None) -> None:
        hist = self.series.get(labels)
        if hist is None:
            hist = self.series[labels] = _Histogram(self.bounds)
        hist.observe(max(0.0, value), exemplar)

    def family_metric(self) -> HistogramMetricFamily:
        metric = HistogramMetricFamily(self.family.name, self.family.help, labels=list(self.family.labels))
        for labels, hist in self.series.items():
            metric.add_metric(list(labels), hist.buckets(), sum_value=hist.sum)
        return metric


def trace_id(task_id: str) -> str:
    """The task's trace id: its UUID's 128 bits as 32 hex digits."""
    return uuid.UUID(task_id).hex


def _exemplar(record: TaskRecord, value: float, at: float | None) -> Exemplar:
    return Exemplar({"trace_id": trace_id(record.id)}, value, at)


class TaskMetrics:
    """Subscriber: turns transitions into histogram observations, each exactly once."""

    def __init__(self) -> None:
        self.duration = HistogramSet(FAMILY["nico_task_duration_seconds"], TASK_BUCKETS)
        self.queue = HistogramSet(FAMILY["nico_task_queue_duration_seconds"], QUEUE_BUCKETS)
        self.stage = HistogramSet(FAMILY["nico_task_stage_duration_seconds"], STAGE_BUCKETS)
        self.step = HistogramSet(FAMILY["nico_task_step_duration_seconds"], STAGE_BUCKETS)

    def __call__(self, t: Transition) -> None:
        record, task = t.record, t.record.task
        site, op = record.site_id, record.operation.value
        if t.kind is Kind.FINISHED and task.started is not None and task.finished is not None:
            seconds = (task.finished - task.started).total_seconds()
            exemplar = _exemplar(record, seconds, task.finished.timestamp())
            self.duration.observe((site, task.status.value, op), seconds, exemplar)
        elif t.kind is Kind.STARTED and task.started is not None and task.created is not None:
            self.queue.observe((site, op), (task.started - task.created).total_seconds())
        elif t.kind is Kind.STAGE_FINISHED and t.stage is not None:
            stage = t.stage
            if stage.started_at is not None and stage.finished_at is not None:
                seconds = (stage.finished_at - stage.started_at).total_seconds()
                exemplar = _exemplar(record, seconds, stage.finished_at.timestamp())
                self.stage.observe((site, op, str(stage.number), stage.status.value), seconds, exemplar)
        elif t.kind is Kind.STEP_FINISHED and t.step is not None:
            step = t.step
            if step.started_at is not None and step.finished_at is not None:
                seconds = (step.finished_at - step.started_at).total_seconds()
                exemplar = _exemplar(record, seconds, step.finished_at.timestamp())
                self.step.observe((site, op, step.component_type.value, step.status.value), seconds, exemplar)

    def families(self) -> list[Metric]:
        return [h.family_metric() for h in (self.duration, self.queue, self.stage, self.step)]


# -- self-metrics fed by client hooks -------------------------------------------------------------


class ClientMetrics:
    """Client hooks: API calls by endpoint and code, their durations, payload problems."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()
        self.durations = HistogramSet(FAMILY["nico_exporter_api_request_duration_seconds"], API_BUCKETS)
        self.parse_errors: Counter[tuple[str, str]] = Counter()

    def on_request(self, event: RequestEvent) -> None:
        self.requests[(event.endpoint, event.code)] += 1
        self.durations.observe((event.endpoint,), event.duration_s)

    def on_parse_error(self, event: ParseEvent) -> None:
        self.parse_errors[(event.endpoint, event.reason)] += 1


@dataclass
class SpanCounters:
    """Filled by the tracing exporter (when tracing is on)."""

    exported: int = 0
    errors: int = 0


# -- failure context ------------------------------------------------------------------------------

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


F = TypeVar("F", GaugeMetricFamily, CounterMetricFamily)


def _filled(family: F, counts: Iterable[tuple[tuple[str, ...], int | float]]) -> F:
    """``family`` with one sample per (label values, value), in label order."""
    for labels, value in sorted(counts):
        family.add_metric(list(labels), float(value))
    return family


_PER_TASK = (
    "nico_task_status",
    "nico_task_info",
    "nico_task_created_timestamp_seconds",
    "nico_task_started_timestamp_seconds",
    "nico_task_updated_timestamp_seconds",
    "nico_task_finished_timestamp_seconds",
    "nico_task_current_stage",
    "nico_task_failure_info",
    "nico_task_stage_status",
)


@dataclass
class _TaskSamples:
    """The per-task samples of one observation of one task, reused until it changes."""

    task: Task
    operation: str
    samples: dict[str, list[Sample]]

    def matches(self, record: TaskRecord) -> bool:
        return record.task is self.task and record.operation.value == self.operation

    @classmethod
    def build(cls, r: TaskRecord, per_task_stages: bool) -> _TaskSamples:
        task = r.task
        ids = {"site_id": r.site_id, "rack_id": r.rack_id, "task_id": task.id}
        out: dict[str, list[Sample]] = {}

        def add(name: str, labels: dict[str, str], value: float) -> None:
            out.setdefault(name, []).append(Sample(name, labels, value, None, None))

        current = task.status.value
        for value in STATUSES:
            add("nico_task_status", {**ids, "status": value}, 1.0 if value == current else 0.0)
        add(
            "nico_task_info",
            {
                **ids,
                "operation": r.operation.value,
                "description": task.description,
                "rule_id": task.rule_id or "",
            },
            1.0,
        )
        for key, when in (
            ("created", task.created),
            ("started", task.started),
            ("updated", task.updated),
            ("finished", task.finished),
        ):
            if when is not None:
                add(f"nico_task_{key}_timestamp_seconds", ids, when.timestamp())
        if not task.status.is_terminal:
            number = current_stage(r)
            if number is not None:
                add("nico_task_current_stage", ids, float(number))
        elif task.status is TaskStatus.FAILED:
            ctx = failure_context(r)
            labels = {
                **ids,
                "operation": r.operation.value,
                "stage_number": ctx.stage_number,
                "component_type": ctx.component_type,
                "reason": failure_reason(ctx.error),
                "error": short_error(ctx.error),
            }
            add("nico_task_failure_info", labels, 1.0)
        if per_task_stages and task.report is not None:
            for stage in task.report.stages:
                add(
                    "nico_task_stage_status",
                    {**ids, "stage_number": str(stage.number), "status": stage.status.value},
                    1.0,
                )
        return cls(task, r.operation.value, out)


# -- the collector --------------------------------------------------------------------------------


class NicoCollector(Collector):
    """Renders every family of ``FAMILIES`` from the store, the poller and the hooks' counters."""

    def __init__(
        self,
        store: Store,
        poller: Poller,
        task_metrics: TaskMetrics,
        client_metrics: ClientMetrics,
        *,
        spans: SpanCounters | None = None,
        per_task_stages: bool = False,
        persistent: bool = True,
    ) -> None:
        self.store = store
        self.poller = poller
        self.task_metrics = task_metrics
        self.client_metrics = client_metrics
        self.spans = spans or SpanCounters()
        self.per_task_stages = per_task_stages
        self.persistent = persistent
        self._samples: dict[str, _TaskSamples] = {}

    def describe(self) -> Iterable[Metric]:
        return []  # do not render at registration time

    def collect(self) -> Iterator[Metric]:
        yield from self._task_families()
        yield from self.task_metrics.families()
        yield from self._inventory_families()
        yield from self._self_families()

    # Gauge/counter families with labels, in the contract's label order.
    @staticmethod
    def _gauge(name: str) -> GaugeMetricFamily:
        f = FAMILY[name]
        return GaugeMetricFamily(f.name, f.help, labels=list(f.labels))

    @staticmethod
    def _counter(name: str) -> CounterMetricFamily:
        f = FAMILY[name]
        return CounterMetricFamily(f.name, f.help, labels=list(f.labels))

    def _task_families(self) -> Iterator[Metric]:
        families = {name: self._gauge(name) for name in _PER_TASK}
        active: Counter[tuple[str, str, str]] = Counter()
        trays: Counter[tuple[str, str, str, str, str]] = Counter()
        tray_types = self.store.tray_types
        cache: dict[str, _TaskSamples] = {}
        for r in self.store.records():
            # A task's samples change only when its observation, operation or trays do: most
            # scrapes reuse them, so a scrape costs little more than rendering.
            cached = self._samples.get(r.id)
            if cached is None or not cached.matches(r):
                cached = _TaskSamples.build(r, self.per_task_stages)
            cache[r.id] = cached
            for name, samples in cached.samples.items():
                families[name].samples.extend(samples)
            if r.task.status.is_active:
                status = r.task.status.value
                active[(r.site_id, status, r.operation.value)] += 1
                if r.trays is not None:
                    for tray in r.trays:
                        trays[(r.site_id, r.rack_id, tray, tray_types.get(tray, "Unknown"), status)] += 1
        self._samples = cache
        tasks = _filled(self._gauge("nico_tasks"), active.items())
        finished = _filled(self._counter("nico_tasks_finished_total"), self.store.totals.tasks.items())
        # Every watched site has the counter from the start (0 until a task goes unseen).
        counted = self.store.totals.unobserved
        unobserved = _filled(
            self._counter("nico_tasks_unobserved_total"),
            (((site,), counted.get(site, 0)) for site in set(counted) | set(self.poller.health)),
        )
        tray_tasks = _filled(self._gauge("nico_tray_tasks"), trays.items())
        tray_failures = _filled(
            self._counter("nico_tray_task_failures_total"), self.store.totals.tray_failures.items()
        )
        yield tasks
        yield finished
        yield unobserved
        for name in _PER_TASK:
            if name != "nico_task_stage_status" or self.per_task_stages:
                yield families[name]
        yield from (tray_tasks, tray_failures)

    def _inventory_families(self) -> Iterator[Metric]:
        p = self.poller
        site_info = self._gauge("nico_site_info")
        up = self._gauge("nico_site_up")
        last = self._gauge("nico_exporter_last_successful_poll_timestamp_seconds")
        for site_id, health in sorted(p.health.items()):
            site_info.add_metric([site_id, health.site.name], 1.0)
            up.add_metric([site_id], 1.0 if health.up else 0.0)
            if health.last_success is not None:
                last.add_metric([site_id], health.last_success)
        rack_info = self._gauge("nico_rack_info")
        per_site: Counter[str] = Counter()
        for rack_id, entry in sorted(p.racks.items()):
            rack_info.add_metric([entry.site_id, rack_id, entry.rack.name], 1.0)
            per_site[entry.site_id] += 1
        racks = self._gauge("nico_exporter_racks")
        for site_id, count in sorted(per_site.items()):
            racks.add_metric([site_id], float(count))
        yield from (site_info, rack_info, up, last, racks)

    def _self_families(self) -> Iterator[Metric]:
        c, p, s = self.client_metrics, self.poller, self.store
        requests = _filled(self._counter("nico_exporter_api_requests_total"), c.requests.items())
        parse = _filled(self._counter("nico_exporter_parse_errors_total"), c.parse_errors.items())
        shed = _filled(
            self._counter("nico_exporter_jobs_shed_total"), (((j,), n) for j, n in p.stats.shed.items())
        )
        build = self._gauge("nico_exporter_build_info")
        build.add_metric([__version__], 1.0)
        yield from (requests, c.durations.family_metric(), parse, shed, build)
        scalars: tuple[tuple[str, float], ...] = (
            ("nico_exporter_spans_exported_total", self.spans.exported),
            ("nico_exporter_span_export_errors_total", self.spans.errors),
            ("nico_exporter_ready", 1.0 if p.ready else 0.0),
            ("nico_exporter_tracked_tasks", float(len(s.tasks))),
            ("nico_exporter_shard", float(p.shard.index)),
            ("nico_exporter_total_shards", float(p.shard.total)),
            ("nico_exporter_freshness_shortfall_seconds", p.stats.freshness_shortfall_seconds),
            ("nico_exporter_budget_required_requests_per_second", p.stats.required_rps),
            ("nico_exporter_budget_requests_per_second", p.client.limiter.rate),
            ("nico_exporter_active_poll_cycle_seconds", p.stats.last_cycle_seconds),
            ("nico_exporter_final_fetch_queue", float(len(p.final_fetches))),
            ("nico_exporter_tasks_vanished_total", float(s.vanished)),
            ("nico_exporter_state_write_errors_total", float(getattr(s.persistence, "write_errors", 0))),
            ("nico_exporter_state_persistent", 1.0 if self.persistent else 0.0),
        )
        for name, value in scalars:
            f = FAMILY[name]
            family: Metric = (
                CounterMetricFamily(f.name, f.help, value=value)
                if f.type == "counter"
                else GaugeMetricFamily(f.name, f.help, value=value)
            )
            yield family
