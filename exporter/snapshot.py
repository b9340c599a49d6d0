"""Immutable snapshots of everything ``/metrics`` shows, and the one thread that makes them.

Thread ownership (the rule of the whole exporter):

- the **poller's thread** (the asyncio event loop) owns every mutable object: the store, the
  poller, the client and its hooks' counters, the transition-fed histograms, and the
  :class:`Publisher` with its caches. Only that thread reads or writes them;
- the **HTTP server's threads** only ever read ``Publisher.latest``, a :class:`Snapshot` that is
  never changed after it is published (frozen dataclasses, tuples and bytes). Publishing is one
  reference assignment, atomic in CPython, so a scrape sees one whole snapshot or the previous one.

Everything in a snapshot is already bytes. Each tracked task's lines are rendered once, when the
task changes (kube-state-metrics' design); a rack's tasks and its per-tray counts are regrouped
only when one of them changes; an aggregate family is re-rendered only when its samples differ
from the last snapshot's. So publishing costs the poller what changed since the last publish, and
a scrape is a join of cached bytes that no churn can break.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

from exporter import __version__
from exporter.exposition import (
    EOF_MARKER,
    FamilySpec,
    Format,
    label_text,
    render_histograms,
    render_samples,
    sample_line,
)
from exporter.facts import short_error
from exporter.learner import Learner, predict
from exporter.metrics import (
    FAMILY,
    PER_TASK,
    RUN_STATUSES,
    ClientMetrics,
    HistogramSet,
    SeriesOptions,
    TaskMetrics,
    task_series,
)
from exporter.models import RUN_TERMINAL_STATUSES, TERMINAL_STATUSES, TargetStatus
from exporter.operations import RULE_OPERATIONS, Operation, builtin_layout
from exporter.outbox import SenderStats
from exporter.runs import Layout, RunsView, task_layout

if TYPE_CHECKING:
    from exporter.models import Task
    from exporter.poller import PollerView
    from exporter.state import Store, TaskRecord

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

# Flow's built-in rules' stage layouts per operation, as task_layout() gives a report's.
_BUILTIN_LAYOUTS: dict[Operation, Layout] = {
    operation: tuple((n, tuple(sorted(stage))) for n, stage in enumerate(layout, start=1))
    for operation in Operation
    if (layout := builtin_layout(operation)) is not None
}


class PollerSource(Protocol):
    """What the publisher needs of the poller: its state as a value (:meth:`Poller.view`)."""

    def view(self) -> PollerView: ...


PUBLISH_INTERVAL_S = 0.5
AGE_FAMILY = "nico_exporter_snapshot_age_seconds"
TRAY_FAMILY = "nico_tray_tasks"

Samples = tuple[tuple[tuple[str, ...], float], ...]
Chunks = tuple[bytes, ...]


@dataclass(frozen=True)
class Block:
    """One family of a snapshot, rendered: its headers and its sample lines in both formats.

    ``text`` and ``openmetrics`` are the lines as chunks (the same tuple when the formats agree,
    as they do for every family but histograms with exemplars). ``nested``: the chunks are
    tuples of chunks (a rack's tasks), flattened when written.
    """

    spec: FamilySpec
    text: tuple[bytes, ...] | tuple[Chunks, ...]
    openmetrics: tuple[bytes, ...] | tuple[Chunks, ...]
    nested: bool = False

    def write(self, parts: list[bytes], fmt: Format) -> None:
        parts.append(_header(self.spec, fmt))
        body = self.openmetrics if fmt is Format.OPENMETRICS else self.text
        if self.nested:
            parts.extend(itertools.chain.from_iterable(body))  # type: ignore[arg-type]
        else:
            parts.extend(body)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Snapshot:
    """One consistent view of the exporter, frozen and rendered: what a scrape writes.

    ``blocks`` are the families with samples, in the contract's order (only those allowed);
    ``with_age``: whether ``nico_exporter_snapshot_age_seconds`` is written (at scrape time).
    """

    published_at: float
    blocks: tuple[Block, ...]
    with_age: bool = True

    def render(
        self,
        fmt: Format,
        *,
        names: Iterable[str] | None = None,
        now: float | None = None,
        extra: bytes = b"",
    ) -> bytes:
        """The exposition of this snapshot (``names``: only these families, as ``name[]``).

        ``extra`` is appended before the OpenMetrics ``# EOF`` (the process collectors' output).
        """
        return b"".join(self.parts(fmt, names=names, now=now, extra=extra))

    def parts(
        self,
        fmt: Format,
        *,
        names: Iterable[str] | None = None,
        now: float | None = None,
        extra: bytes = b"",
    ) -> list[bytes]:
        """:meth:`render`'s body as the cached pieces it is made of, in order (not joined: the
        server sends them in chunks, so no thread holds the interpreter lock for a 30 MB join)."""
        wanted = None if names is None else set(names)
        parts: list[bytes] = []
        for block in self.blocks:
            if wanted is None or {block.spec.name, block.spec.base_name} & wanted:
                block.write(parts, fmt)
        age_spec = FAMILY[AGE_FAMILY]
        if self.with_age and (wanted is None or AGE_FAMILY in wanted):
            age = max(0.0, (time.time() if now is None else now) - self.published_at)
            parts.append(_header(age_spec, fmt))
            parts.append(render_samples(age_spec, (((), age),)))
        parts.append(extra)
        if fmt is Format.OPENMETRICS:
            parts.append(EOF_MARKER)
        return parts


def chunked(parts: Iterable[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    """``parts`` joined into chunks of about ``size`` bytes (a larger part is its own chunk)."""
    batch: list[bytes] = []
    length = 0
    for part in parts:
        batch.append(part)
        length += len(part)
        if length >= size:
            yield b"".join(batch)
            batch, length = [], 0
    if batch:
        yield b"".join(batch)


EMPTY = Snapshot(0.0, (), with_age=False)

# Every family's HELP/TYPE lines in both formats, built at import and never written again (the
# HTTP threads read it).
_HEADERS: dict[tuple[FamilySpec, Format], bytes] = {
    (spec, fmt): spec.header(fmt) for spec in FAMILY.values() for fmt in Format
}


def _header(spec: FamilySpec, fmt: Format) -> bytes:
    header = _HEADERS.get((spec, fmt))
    return spec.header(fmt) if header is None else header


@dataclass(slots=True)
class _TaskEntry:
    """A task's cached lines and what they were rendered from (tasks are frozen: identity)."""

    task: Task
    rack_id: str
    operation: str
    trays: frozenset[str] | None
    labels: tuple[str, str]  # (run_id, rule_name): what the Task Runs and Operation Rules say
    lines: tuple[bytes, ...]  # one per per-task family the options allow (b"" when none)
    active: tuple[str, str, str] | None  # (site, status, operation) while the task is active


@dataclass(slots=True, eq=False)
class _RackEntry:
    """A rack's tasks, regrouped when one changes: their lines per family, and tray counts."""

    site_id: str
    rack_id: str
    tasks: dict[str, _TaskEntry] = field(default_factory=dict)
    lines: tuple[Chunks, ...] = ()
    trays: bytes = b""


class _Memo:
    """Rendered bytes of a family, reused while what they were rendered from is unchanged."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[Hashable | object, tuple[Chunks, Chunks]]] = {}

    def get(
        self, name: str, source: object, render: Callable[[], tuple[Chunks, Chunks]]
    ) -> tuple[Chunks, Chunks]:
        cached = self._cache.get(name)
        if cached is not None and cached[0] == source:
            return cached[1]
        rendered = render()
        self._cache[name] = (source, rendered)
        return rendered


class Publisher:
    """Builds and publishes snapshots. Lives on the poller's thread; see the module docstring.

    Args:
        store: the state (read on this thread only, through its methods).
        poller: gives its state as an immutable :class:`~exporter.poller.PollerView`.
        task_metrics, client_metrics: the counters and histograms fed on this thread.
        spans: the span sender's latest stats (a frozen value the sender replaces).
        options: what the per-task generator emits (allow/deny lists, one-hot status, stages).
        persistent: whether state survives restarts (``nico_exporter_state_persistent``).
        clock: epoch seconds, stamped on each snapshot.
    """

    def __init__(
        self,
        store: Store,
        poller: PollerSource,
        task_metrics: TaskMetrics,
        client_metrics: ClientMetrics,
        *,
        spans: Callable[[], SenderStats] | None = None,
        learner: Learner | None = None,
        options: SeriesOptions | None = None,
        persistent: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.poller = poller
        self.task_metrics = task_metrics
        self.client_metrics = client_metrics
        self.spans = spans or SenderStats
        self.learner = learner
        self._predicted_at = float("-inf")
        self._predictions: dict[str, Samples] = {}
        self.options = options or SeriesOptions()
        self.persistent = persistent
        self.clock = clock
        self.latest: Snapshot = EMPTY
        wanted = self.options.families
        self.order = tuple(f for f in FAMILY if f in wanted)
        self._task_families = tuple(f for f in PER_TASK if f in wanted)
        self._tasks: dict[str, _TaskEntry] = {}
        self._racks: dict[str, _RackEntry] = {}
        self._rack_order: list[_RackEntry] = []
        self._active: Counter[tuple[str, str, str]] = Counter()
        self._tray_types_version = -1
        self._memo = _Memo()
        self._run_of: dict[str, str] = {}
        self._rule_names: dict[tuple[str, Operation, Layout], str] = {}
        self._per_task_blocks: dict[str, Block] = {}

    # -- per-task and per-rack lines ------------------------------------------------------------

    def _labels(self, record: TaskRecord) -> tuple[str, str]:
        """The run that created the task, and the custom rule its report's layout matches."""
        layout = task_layout(record.task)
        rule = self._rule_names.get((record.site_id, record.operation, layout), "") if layout else ""
        return self._run_of.get(record.id, ""), rule

    def _learn_runs(self, view: RunsView) -> set[str]:
        """Take the runs' targets and the sites' rules; the tasks whose labels may have moved."""
        run_of = {t.task_id: run.id for _, run, targets in view.runs for t in targets if t.task_id}
        names: dict[tuple[str, Operation, Layout], list[str]] = {}
        for site_id, rule in view.rules:
            # Every listed rule is an operator's (Flow's built-in rules are code, not rows), the
            # site's default or not. One with its operation's built-in layout cannot be told
            # apart from the built-in rule by a task's report, so it names nothing.
            layout = rule.layout()
            for operation in RULE_OPERATIONS.get(rule.operation_code, ()):
                if layout != _BUILTIN_LAYOUTS.get(operation):
                    names.setdefault((site_id, operation, layout), []).append(rule.name)
        # A layout two custom rules of one operation share names neither (it would be a guess).
        rule_names = {key: found[0] for key, found in names.items() if len(found) == 1}
        moved = {t for t in run_of.keys() ^ self._run_of.keys()} | {
            t for t in run_of.keys() & self._run_of.keys() if run_of[t] != self._run_of[t]
        }
        if rule_names != self._rule_names:
            moved |= set(self._tasks)
        self._run_of, self._rule_names = run_of, rule_names
        return moved

    def _entry(self, record: TaskRecord) -> _TaskEntry:
        labels = self._labels(record)
        rendered = task_series(record, self.options, run_id=labels[0], rule_name=labels[1])
        status = record.task.status
        return _TaskEntry(
            record.task,
            record.rack_id,
            record.operation.value,
            record.trays,
            labels,
            tuple(rendered.get(name, b"") for name in self._task_families),
            (record.site_id, status.value, record.operation.value) if status.is_active else None,
        )

    def _update_tasks(self, runs: RunsView) -> set[_RackEntry]:
        """Re-render the tasks that changed; returns the racks to regroup."""
        store = self.store
        dirty = self._update(store.take_touched() | self._learn_runs(runs))
        if len(self._tasks) != len(ids := store.tracked_ids()):
            # A change the store did not announce (a record set from outside its methods):
            # look at every task, as the first publish does.
            dirty |= self._update(ids | self._tasks.keys())
        return dirty

    def _update(self, task_ids: Iterable[str]) -> set[_RackEntry]:
        dirty: set[_RackEntry] = set()
        tasks, active = self._tasks, self._active
        for task_id in task_ids:
            record = self.store.record(task_id)
            old = tasks.get(task_id)
            if (
                old is not None
                and record is not None
                and (
                    old.labels == self._labels(record)
                    and old.task is record.task
                    and old.operation == record.operation.value
                    and old.trays is record.trays
                )
            ):
                continue
            if old is not None:
                rack = self._racks[old.rack_id]
                del rack.tasks[task_id], tasks[task_id]
                if old.active is not None:
                    active[old.active] -= 1
                    if not active[old.active]:
                        del active[old.active]
                dirty.add(rack)
            if record is not None:
                entry = tasks[task_id] = self._entry(record)
                rack = self._rack(record.site_id, record.rack_id)
                rack.tasks[task_id] = entry
                if entry.active is not None:
                    active[entry.active] += 1
                dirty.add(rack)
        return dirty

    def _rack(self, site_id: str, rack_id: str) -> _RackEntry:
        rack = self._racks.get(rack_id)
        if rack is None:
            rack = self._racks[rack_id] = _RackEntry(site_id, rack_id)
            self._rack_order = []
        return rack

    def _regroup(self, rack: _RackEntry) -> None:
        tasks = [rack.tasks[task_id] for task_id in sorted(rack.tasks)]
        rack.lines = tuple(
            tuple(line for t in tasks if (line := t.lines[index]))
            for index in range(len(self._task_families))
        )
        rack.trays = self._tray_lines(rack, tasks)

    def _tray_lines(self, rack: _RackEntry, tasks: list[_TaskEntry]) -> bytes:
        if TRAY_FAMILY not in self.options.families:
            return b""
        tray_type = self.store.tray_type
        counts: Counter[tuple[str, str, str]] = Counter()
        for t in tasks:
            if t.active is not None and t.trays is not None:
                status = t.active[1]
                for tray in t.trays:
                    counts[(tray, tray_type(tray), status)] += 1
        if not counts:
            return b""
        spec = FAMILY[TRAY_FAMILY]
        # The rack's labels are escaped once; the family's labels are (site, rack, tray, type, status).
        prefix = spec.name + label_text(spec.labels[:2], (rack.site_id, rack.rack_id))[:-1] + ","
        names = spec.labels[2:]
        return "".join(
            sample_line(prefix, label_text(names, key)[1:], n) for key, n in sorted(counts.items())
        ).encode()

    def _task_blocks(self, runs: RunsView) -> dict[str, Block]:
        """Regroup the racks that changed and assemble the per-task and per-tray families."""
        dirty = self._update_tasks(runs)
        if self.store.tray_types_version != self._tray_types_version:
            self._tray_types_version = self.store.tray_types_version
            dirty |= set(self._racks.values())
        if not dirty and self._rack_order:
            return self._per_task_blocks
        for rack in dirty:
            if rack.tasks:
                self._regroup(rack)
            elif self._racks.get(rack.rack_id) is rack:
                del self._racks[rack.rack_id]
                self._rack_order = []
        if not self._rack_order:
            self._rack_order = sorted(self._racks.values(), key=lambda r: (r.site_id, r.rack_id))
        blocks: dict[str, Block] = {}
        for index, name in enumerate(self._task_families):
            chunks = tuple(lines for r in self._rack_order if (lines := r.lines[index]))
            if chunks:
                blocks[name] = Block(FAMILY[name], chunks, chunks, nested=True)
        trays = tuple(r.trays for r in self._rack_order if r.trays)
        if trays:
            blocks[TRAY_FAMILY] = Block(FAMILY[TRAY_FAMILY], trays, trays)
        self._per_task_blocks = blocks
        return blocks

    # -- the aggregates -------------------------------------------------------------------------

    def _aggregates(self, p: PollerView) -> dict[str, Samples]:
        totals = self.store.totals
        # Every watched site has the unobserved counter from the start (0 until a task goes unseen).
        site_ids = {site.site_id for site in p.sites}
        unobserved = {site: totals.unobserved.get(site, 0) for site in set(totals.unobserved) | site_ids}
        per_site: Counter[str] = Counter(rack.site_id for rack in p.racks)
        baselined: Counter[str] = Counter({site: 0 for site in per_site})
        counting = self.store.counting_racks()
        baselined.update(rack.site_id for rack in p.racks if rack.rack_id in counting)
        return {
            "nico_tasks": _sorted(self._active.items()),
            "nico_tasks_finished_total": _sorted(_from_zero(totals.tasks, _finished_keys(site_ids)).items()),
            "nico_tasks_unobserved_total": _sorted(((site,), n) for site, n in unobserved.items()),
            "nico_site_info": tuple(((site.site_id, site.name), 1.0) for site in p.sites),
            "nico_rack_info": _sorted(((rack.site_id, rack.rack_id, rack.name), 1.0) for rack in p.racks),
            "nico_site_up": tuple(((site.site_id,), 1.0 if site.up else 0.0) for site in p.sites),
            "nico_site_online": tuple(
                ((site.site_id,), 1.0 if site.online else 0.0) for site in p.sites if site.online is not None
            ),
            "nico_site_clock_offset_seconds": tuple(((site.site_id,), site.clock_offset) for site in p.sites),
            "nico_exporter_site_breaker_open": tuple(
                ((site.site_id,), 1.0 if site.breaker_open else 0.0) for site in p.sites
            ),
            "nico_exporter_last_successful_poll_timestamp_seconds": tuple(
                ((site.site_id,), site.last_success) for site in p.sites if site.last_success is not None
            ),
            "nico_exporter_racks": _sorted(((site_id,), float(n)) for site_id, n in per_site.items()),
            "nico_exporter_racks_baselined": _sorted(
                ((site_id,), float(n)) for site_id, n in baselined.items()
            ),
            "nico_exporter_racks_not_baselined": _sorted(
                ((site_id,), float(per_site[site_id] - n)) for site_id, n in baselined.items()
            ),
            **_runs(p.runs),
            **self._learned(),
            **self._self(p),
        }

    def _learned(self) -> dict[str, Samples]:
        """Learned durations, and each running task's overrun and expected finish.

        The per-task part depends on the time, so it cannot be cached with the task's lines; it is
        computed again at most every ``PREDICT_EVERY_S`` (the overrun alert waits minutes anyway).
        """
        learner = self.learner
        if learner is None:
            return {}
        now = self.clock()
        if now - self._predicted_at >= PREDICT_EVERY_S:
            self._predicted_at = now
            self._predictions = _predictions(self.store.records(), learner, now)
        return {
            **self._predictions,
            "nico_task_duration_expected_seconds": _sorted(
                ((site, op, _q(q)), v)
                for (site, op), values in learner.learned_tasks()
                for q, v in values.items()
            ),
            "nico_stage_duration_expected_seconds": _sorted(
                ((site, op, str(n), kind, _q(q)), v)
                for (site, op, n, kind), values in learner.learned_stages()
                for q, v in values.items()
            ),
        }

    def _self(self, p: PollerView) -> dict[str, Samples]:
        c, s = self.client_metrics, self.store.health()
        spans = self.spans()
        scalars: dict[str, float] = {
            "nico_exporter_spans_exported_total": float(spans.exported),
            "nico_exporter_span_export_errors_total": float(spans.errors),
            "nico_exporter_spans_pending": float(spans.pending),
            "nico_exporter_spans_dropped_total": float(s.spans_dropped),
            "nico_exporter_spans_resent_total": float(spans.resent),
            "nico_exporter_ready": 1.0 if p.ready else 0.0,
            "nico_exporter_credentials_refused": 1.0 if p.credentials_refused else 0.0,
            "nico_exporter_rack_polls_waiting": float(p.polls_waiting),
            "nico_exporter_tracked_tasks": float(s.tracked),
            "nico_exporter_shard": float(p.shard_index),
            "nico_exporter_total_shards": float(p.shard_total),
            "nico_exporter_freshness_shortfall_seconds": p.freshness_shortfall_seconds,
            "nico_exporter_budget_required_requests_per_second": p.required_rps,
            "nico_exporter_budget_requests_per_second": p.budget_rps,
            "nico_exporter_active_poll_cycle_seconds": p.last_cycle_seconds,
            "nico_exporter_rack_polls_late_total": float(p.late_polls),
            "nico_exporter_final_fetch_queue": float(p.final_fetch_queue),
            "nico_exporter_tasks_vanished_total": float(s.vanished),
            "nico_exporter_state_write_errors_total": float(s.write_errors),
            "nico_exporter_state_pending_writes": float(s.pending_writes),
            "nico_exporter_state_persistent": 1.0 if self.persistent else 0.0,
        }
        out: dict[str, Samples] = {name: (((), value),) for name, value in scalars.items()}
        out["nico_exporter_api_requests_total"] = _sorted(c.requests.items())
        out["nico_exporter_parse_errors_total"] = _sorted(c.parse_errors.items())
        out["nico_exporter_site_failures_total"] = _sorted(c.site_failures.items())
        out["nico_exporter_self_failures_total"] = _sorted(c.self_failures.items())
        out["nico_exporter_jobs_shed_total"] = tuple(((job,), float(n)) for job, n in p.shed)
        out["nico_exporter_build_info"] = (((__version__,), 1.0),)
        return out

    def _sample_block(self, name: str, source: object, samples: Callable[[], Samples]) -> Block | None:
        spec = FAMILY[name]

        def render() -> tuple[Chunks, Chunks]:
            body = render_samples(spec, samples())
            return ((body,), (body,)) if body else ((), ())

        text, om = self._memo.get(name, source, render)
        return Block(spec, text, om) if text else None

    def _histogram_block(self, histograms: HistogramSet) -> Block | None:
        spec = histograms.family

        def render() -> tuple[Chunks, Chunks]:
            series = histograms.frozen()
            if not series:
                return (), ()
            return (
                (render_histograms(spec, series, Format.TEXT),),
                (render_histograms(spec, series, Format.OPENMETRICS),),
            )

        text, om = self._memo.get(spec.name, histograms.version, render)
        return Block(spec, text, om) if text else None

    # -- publishing -----------------------------------------------------------------------------

    def publish(self) -> Snapshot:
        """Build a snapshot of the current state and make it the one scrapes read."""
        wanted = self.options.families
        view = self.poller.view()
        blocks: dict[str, Block | None] = dict(self._task_blocks(view.runs))
        for name, samples in self._aggregates(view).items():
            if name in wanted:
                blocks[name] = self._sample_block(name, samples, lambda s=samples: s)  # type: ignore[misc]
        failures = self.store.totals.tray_failures
        if "nico_tray_task_failures_total" in wanted:
            # The largest aggregate: compared as a dict, sorted and rendered only when it moved.
            blocks["nico_tray_task_failures_total"] = self._sample_block(
                "nico_tray_task_failures_total", dict(failures), lambda: _sorted(failures.items())
            )
        for histograms in (*self.task_metrics.histograms(), self.client_metrics.durations):
            if histograms.family.name in wanted:
                blocks[histograms.family.name] = self._histogram_block(histograms)
        snapshot = Snapshot(
            published_at=self.clock(),
            blocks=tuple(block for name in self.order if (block := blocks.get(name)) is not None),
            with_age=AGE_FAMILY in wanted,
        )
        self.latest = snapshot
        return snapshot

    async def run(self, stop: asyncio.Event, interval: float = PUBLISH_INTERVAL_S) -> None:
        """Publish every ``interval`` seconds until ``stop`` is set (and once more at the end)."""
        while not stop.is_set():
            try:
                self.publish()
            except Exception:  # a bad publish keeps the last snapshot; the next one tries again
                log.exception("snapshot publish failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
        self.publish()


PREDICT_EVERY_S = 5.0


def _q(q: float) -> str:
    return f"{q:g}"


def _predictions(records: Iterable[TaskRecord], learner: Learner, now: float) -> dict[str, Samples]:
    Rows = list[tuple[tuple[str, ...], float]]
    ratio: Rows = []
    info: Rows = []
    expected: Rows = []
    started: Rows = []
    finish: Rows = []
    for record in records:
        guess = predict(record, learner, now)
        if guess is None:
            continue
        key = (record.site_id, record.rack_id, record.id)
        ratio.append((key, guess.overrun_ratio))
        info.append(((*key, str(guess.stage_number), guess.component_type), 1.0))
        expected.extend((((*key, "0.5"), guess.stage_p50), ((*key, "0.99"), guess.stage_p99)))
        started.append((key, guess.stage_started))
        if guess.expected_finish is not None:
            finish.append((key, guess.expected_finish))
    return {
        "nico_task_overrun_ratio": _sorted(ratio),
        "nico_task_overrun_info": _sorted(info),
        "nico_task_current_stage_expected_seconds": _sorted(expected),
        "nico_task_current_stage_started_timestamp_seconds": _sorted(started),
        "nico_task_expected_finish_timestamp_seconds": _sorted(finish),
    }


def _runs(view: RunsView) -> dict[str, Samples]:
    """The Task Run families: a few runs per site, so rendered in full at each publish."""
    Rows = list[tuple[tuple[str, ...], float]]
    info: Rows = []
    status: Rows = []
    reason: Rows = []
    phase: Rows = []
    phases: Rows = []
    targets: Rows = []
    outcomes: Rows = []
    failed: Rows = []
    stamps: dict[str, Rows] = {"created": [], "started": [], "finished": []}
    for site_id, run, run_targets in view.runs:
        key = (site_id, run.id)
        info.append(((*key, run.name, run.operation_type, run.operation_code), 1.0))
        status.extend(((*key, s), 1.0 if s == run.status.value else 0.0) for s in RUN_STATUSES)
        reason.append(((*key, run.status_reason.value, short_error(run.status_message)), 1.0))
        if run.stats is not None:
            phase.append((key, float(run.stats.current_phase.phase_index + 1)))
            counts = run.stats.cumulative_phase.outcome_counts
            outcomes.extend(
                ((*key, name), float(getattr(counts, name)))
                for name in ("completed", "failed", "terminated", "skipped")
            )
        phases.append((key, float(run.total_phases)))
        by_status = Counter(t.status.value for t in run_targets)
        targets.extend(((*key, s), float(n)) for s, n in by_status.items())
        failed.extend(
            ((*key, t.rack_id, t.task_id or "", str(t.phase_index + 1)), 1.0)
            for t in run_targets
            if t.status is TargetStatus.FAILED
        )
        for name, when in (("created", run.created), ("started", run.started), ("finished", run.finished)):
            if when is not None:
                stamps[name].append((key, when.timestamp()))
    return {
        "nico_task_run_info": _sorted(info),
        "nico_task_run_status": _sorted(status),
        "nico_task_run_status_reason_info": _sorted(reason),
        "nico_task_run_phase": _sorted(phase),
        "nico_task_run_phases": _sorted(phases),
        "nico_task_run_targets": _sorted(targets),
        "nico_task_run_outcomes": _sorted(outcomes),
        "nico_task_run_failed_target_info": _sorted(failed),
        **{f"nico_task_run_{name}_timestamp_seconds": _sorted(rows) for name, rows in stamps.items()},
        "nico_task_runs_finished_total": _sorted(
            _from_zero(
                dict(view.finished),
                (
                    (site, status.value)
                    for site, on in view.supported
                    if on
                    for status in RUN_TERMINAL_STATUSES
                ),
            ).items()
        ),
        "nico_operation_rule_info": _sorted(
            ((site_id, r.id, r.name, r.operation_type, r.operation_code, str(r.is_default).lower()), 1.0)
            for site_id, r in view.rules
        ),
        "nico_exporter_task_runs_supported": _sorted(
            ((site_id,), 1.0 if ok else 0.0) for site_id, ok in view.supported
        ),
        "nico_exporter_operation_rules_supported": _sorted(
            ((site_id,), 1.0 if ok else 0.0) for site_id, ok in view.rules_supported
        ),
    }


def _from_zero(counts: Mapping[K, int], keys: Iterable[K]) -> dict[K, int]:
    """``counts`` with every one of ``keys`` present, at 0 where nothing was counted yet.

    A counter series that is born at 1 hides its first increment from ``increase()`` and
    ``rate()`` (no earlier sample to compare with): a site's first failure would not move the
    failure-rate alert. Series whose label values are known in advance start at 0 instead.
    """
    return {**dict.fromkeys(keys, 0), **counts}


def _finished_keys(site_ids: Iterable[str]) -> Iterator[tuple[str, str, str]]:
    """Every (site, terminal status, operation) of ``nico_tasks_finished_total``: 36 per site."""
    for site in site_ids:
        for status in sorted(TERMINAL_STATUSES):
            for operation in Operation:
                yield site, status.value, operation.value


def _sorted(items: Iterable[tuple[tuple[str, ...], float]]) -> Samples:
    return tuple(sorted((labels, float(value)) for labels, value in items))


__all__ = ["EMPTY", "Block", "Publisher", "Snapshot"]
