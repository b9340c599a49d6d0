"""The state store: what the exporter knows about every task, and what changed, once.

Successive observations of a task (from rack lists, tray lists and single fetches) become
*transitions*: it appeared, its status changed, a stage or step started or finished, it
finished, it vanished. Each transition has a key and is delivered to subscribers (metrics,
tracing) exactly once, also across restarts: delivered keys, terminal task ids, finished totals
and rack baselines are written to SQLite (:mod:`exporter.persistence`) in the same transaction.

The counting rule (PRODUCT.md): tasks already terminal at a rack's first full listing, or whose
``finished`` is before that listing began, are history (the baseline), not transitions; every
task that becomes terminal after that, however briefly it was active, is counted exactly once.

A task only *finishes* from an observation that carries its report (an ``includeReport`` list or
``GET /task/{id}``), so its stage and step transitions are complete when it does. Observations
without a report (full listings, tray lists) that show a task terminal ask for a final fetch.

No I/O and no clock reads here: the caller passes ``now`` (epoch seconds).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from exporter.models import ReportStage, ReportStatus, ReportStep, Task, TaskStatus
from exporter.operations import Classifier, Operation
from exporter.persistence import NullPersistence, Persistence, StateBatch

log = logging.getLogger(__name__)


class Kind(StrEnum):
    APPEARED = "appeared"
    STATUS_CHANGED = "status_changed"
    STARTED = "started"
    STAGE_STARTED = "stage_started"
    STAGE_FINISHED = "stage_finished"
    STEP_STARTED = "step_started"
    STEP_FINISHED = "step_finished"
    FINISHED = "finished"
    VANISHED = "vanished"


@dataclass
class TaskRecord:
    """The last observation of a task, with what the API does not say (site, rack, trays).

    ``trays`` is ``None`` until attribution settles it. ``finished_seen_at`` is when the store
    saw the task terminal (the TTL runs from there); ``observed_at`` when it was last observed.
    """

    site_id: str
    rack_id: str
    task: Task
    operation: Operation
    first_seen: float
    observed_at: float
    trays: frozenset[str] | None = None
    finished_seen_at: float | None = None

    @property
    def id(self) -> str:
        return self.task.id

    @property
    def status(self) -> TaskStatus:
        return self.task.status

    @property
    def is_terminal(self) -> bool:
        return self.task.status.is_terminal


@dataclass(frozen=True)
class Transition:
    """One change of one task, delivered once. ``stage``/``step`` are set for stage and step kinds."""

    kind: Kind
    key: str
    record: TaskRecord
    observed_at: float
    previous_status: TaskStatus | None = None
    stage: ReportStage | None = None
    step: ReportStep | None = None
    step_index: int | None = None


Subscriber = Callable[[Transition], None]


@dataclass
class RackState:
    """What the store knows of one rack: its baseline and the task count it expects."""

    site_id: str
    baselined_at: float | None = None
    known_count: int = 0
    # Non-terminal task ids of the last full listing, already part of ``known_count``.
    listed: set[str] = field(default_factory=set)


@dataclass
class FinishedTotals:
    """Terminal transitions by (site, status, operation), and failed tasks by tray."""

    tasks: dict[tuple[str, str, str], int] = field(default_factory=dict)
    tray_failures: dict[tuple[str, str, str, str], int] = field(default_factory=dict)


class Store:
    """Tracks tasks and turns observations into exactly-once transitions.

    Args:
        persistence: where exactly-once state survives restarts.
        classifier: description to operation.
        finished_ttl: seconds a finished task stays tracked (and in per-task series).
        terminal_retention: seconds a terminal task id is remembered; an unknown terminal task
            that finished longer ago than this is taken as old history, not counted.
        tray_types: tray id to its type, for per-tray failure totals (filled by discovery).
    """

    def __init__(
        self,
        persistence: Persistence | None = None,
        *,
        classifier: Classifier | None = None,
        finished_ttl: float = 3600.0,
        terminal_retention: float = 7 * 86400.0,
    ) -> None:
        self.persistence: Persistence = persistence or NullPersistence()
        self.classifier = classifier or Classifier()
        self.finished_ttl = finished_ttl
        self.terminal_retention = terminal_retention
        self.tasks: dict[str, TaskRecord] = {}
        self._by_rack: dict[str, set[str]] = {}
        self._subscribers: list[Subscriber] = []
        self._after_commit: list[Callable[[], None]] = []
        self.tray_types: dict[str, str] = {}
        loaded = self.persistence.load()
        self.racks: dict[str, RackState] = {
            rack_id: RackState(site, baselined, count)
            for rack_id, (site, baselined, count) in loaded.racks.items()
        }
        self.terminal: dict[str, float] = dict(loaded.terminal)
        # Delivered transition keys, by task: a task's keys are forgotten with the task.
        self._delivered: dict[str, set[str]] = {}
        for key, task_id in loaded.delivered:
            self._delivered.setdefault(task_id, set()).add(key)
        self.totals = FinishedTotals(dict(loaded.totals), dict(loaded.tray_failures))
        # Tasks that were being tracked when the last process stopped: fetch them again.
        self.recovered: dict[str, tuple[str, str, frozenset[str] | None]] = dict(loaded.tracked)
        self._batch = StateBatch()
        self.vanished = 0

    # -- subscribers ---------------------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> None:
        """Receive every transition once, in order, as the store records it."""
        self._subscribers.append(subscriber)

    def _claim(self, task_id: str, key: str) -> bool:
        """Mark ``key`` delivered for ``task_id``; False if it already was."""
        keys = self._delivered.setdefault(task_id, set())
        if key in keys:
            return False
        keys.add(key)
        self._batch.delivered.append((key, task_id))
        return True

    def _deliver(self, transition: Transition) -> bool:
        if not self._claim(transition.record.id, transition.key):
            return False
        for subscriber in self._subscribers:
            try:
                subscriber(transition)
            except Exception:  # a broken subscriber must not stop polling
                log.exception(
                    "subscriber failed", extra={"task_id": transition.record.id, "key": transition.key}
                )
        return True

    def after_commit(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after each commit that wrote transitions.

        For effects that must not repeat after a restart (exported spans): act on transitions only
        once they are on disk, so a crash before the commit redelivers them instead of repeating
        what was already sent.
        """
        self._after_commit.append(listener)

    def commit(self) -> None:
        """Write the transitions and state changes since the last commit in one transaction."""
        if self._batch.empty:
            return
        batch, self._batch = self._batch, StateBatch()
        if not self.persistence.write(batch):
            return  # not on disk: effects wait for a commit that is (they may repeat after a restart)
        for listener in self._after_commit:
            try:
                listener()
            except Exception:  # a broken listener must not stop polling
                log.exception("after-commit listener failed")

    # -- queries -------------------------------------------------------------------------------

    def rack_task_ids(self, rack_id: str) -> set[str]:
        return set(self._by_rack.get(rack_id, ()))

    def active_ids(self, rack_id: str) -> set[str]:
        """Tasks the rack's active list should show: tracked active tasks, and tasks the last full
        listing saw that no observation has tracked yet (a short task may end before one does)."""
        tracked = {tid for tid in self._by_rack.get(rack_id, ()) if not self.tasks[tid].is_terminal}
        rack = self.racks.get(rack_id)
        if rack is None:
            return tracked
        return tracked | {t for t in rack.listed if t not in self.tasks and t not in self.terminal}

    def records(self) -> Iterator[TaskRecord]:
        return iter(self.tasks.values())

    def is_known_terminal(self, task_id: str) -> bool:
        return task_id in self.terminal

    def rack(self, rack_id: str, site_id: str) -> RackState:
        state = self.racks.get(rack_id)
        if state is None:
            state = self.racks[rack_id] = RackState(site_id)
        return state

    # -- observations --------------------------------------------------------------------------

    def observe(
        self, site_id: str, rack_id: str, task: Task, now: float, *, with_report: bool = True
    ) -> bool:
        """Record one observation; returns True when the task needs a final fetch.

        ``with_report`` says the observation carries the task's report (or the task has none):
        only such an observation may finish a task.
        """
        if task.id in self.terminal and task.id not in self.tasks:
            return False  # counted (or baseline) already; its TTL has passed
        record = self.tasks.get(task.id)
        if record is None:
            if task.is_terminal and not with_report:
                return True  # new to us and already over: fetch it whole first
            record = self._track(site_id, rack_id, task, now)
            self._deliver(Transition(Kind.APPEARED, f"{task.id}/appeared", record, now))
            previous: Task | None = None
        else:
            if record.is_terminal:
                return False
            if task.is_terminal and not with_report:
                return True
            previous = record.task
            if with_report or task.report is not None:
                record.task = task
            else:
                # Keep the report we had: lists without reports must not erase it.
                record.task = task.model_copy(update={"report": record.task.report})
            record.observed_at = now
            if record.operation is Operation.OTHER:
                record.operation = self.classifier.classify(task.description, record.task.report)
        self._transitions(record, previous, now)
        return False

    def _track(self, site_id: str, rack_id: str, task: Task, now: float) -> TaskRecord:
        recovered = self.recovered.pop(task.id, None)
        record = TaskRecord(
            site_id=site_id,
            rack_id=rack_id,
            task=task,
            operation=self.classifier.classify(task.description, task.report),
            first_seen=now,
            observed_at=now,
            trays=recovered[2] if recovered else None,
        )
        self.tasks[task.id] = record
        self._by_rack.setdefault(rack_id, set()).add(task.id)
        rack = self.rack(rack_id, site_id)
        # The rack's expected total grows by tasks the last full listing did not include (a task
        # recovered after a restart was counted before it).
        if rack.baselined_at is not None and recovered is None and task.id not in rack.listed:
            rack.known_count += 1
            self._batch.racks[rack_id] = (site_id, rack.baselined_at, rack.known_count)
        rack.listed.discard(task.id)
        self._batch.tracked[task.id] = (site_id, rack_id, record.trays)
        return record

    def _transitions(self, record: TaskRecord, previous: Task | None, now: float) -> None:
        task = record.task
        tid = task.id
        old_status = previous.status if previous is not None else None
        if old_status != task.status:
            self._deliver(
                Transition(
                    Kind.STATUS_CHANGED,
                    f"{tid}/status/{task.status}",
                    record,
                    now,
                    previous_status=old_status,
                )
            )
        if task.started is not None:
            # Once per task, also across restarts: its queue wait is over.
            self._deliver(Transition(Kind.STARTED, f"{tid}/started", record, now))
        if task.report is not None:
            for stage in task.report.stages:
                base = f"{tid}/stage/{stage.number}"
                if stage.status not in (ReportStatus.PENDING, ReportStatus.SKIPPED, ReportStatus.UNKNOWN):
                    self._deliver(Transition(Kind.STAGE_STARTED, f"{base}/started", record, now, stage=stage))
                for index, step in enumerate(stage.steps):
                    step_base = f"{base}/step/{index}"
                    if step.status not in (ReportStatus.PENDING, ReportStatus.SKIPPED, ReportStatus.UNKNOWN):
                        self._deliver(
                            Transition(
                                Kind.STEP_STARTED,
                                f"{step_base}/started",
                                record,
                                now,
                                stage=stage,
                                step=step,
                                step_index=index,
                            )
                        )
                    if step.status.is_final and step.status is not ReportStatus.SKIPPED:
                        self._deliver(
                            Transition(
                                Kind.STEP_FINISHED,
                                f"{step_base}/finished",
                                record,
                                now,
                                stage=stage,
                                step=step,
                                step_index=index,
                            )
                        )
                if stage.status.is_final and stage.status is not ReportStatus.SKIPPED:
                    self._deliver(
                        Transition(Kind.STAGE_FINISHED, f"{base}/finished", record, now, stage=stage)
                    )
        if task.is_terminal:
            self._finish(record, now)

    def _finish(self, record: TaskRecord, now: float) -> None:
        record.finished_seen_at = now
        finished_at = record.task.finished.timestamp() if record.task.finished else now
        self.terminal[record.id] = finished_at
        self._batch.terminal[record.id] = (record.rack_id, finished_at)
        self._batch.untracked.add(record.id)
        if self._deliver(Transition(Kind.FINISHED, f"{record.id}/finished", record, now)):
            key = (record.site_id, record.status.value, record.operation.value)
            self.totals.tasks[key] = self.totals.tasks.get(key, 0) + 1
            self._batch.totals[key] = self.totals.tasks[key]
            self._count_tray_failures(record)

    def _count_tray_failures(self, record: TaskRecord) -> None:
        """A failed task counts once against each of its trays, when both are known."""
        if record.status is not TaskStatus.FAILED or record.trays is None:
            return
        if f"{record.id}/finished" not in self._delivered.get(record.id, ()):
            return
        if not self._claim(record.id, f"{record.id}/trays-failed"):
            return
        for tray in record.trays:
            key = (record.site_id, record.rack_id, tray, self.tray_types.get(tray, "Unknown"))
            self.totals.tray_failures[key] = self.totals.tray_failures.get(key, 0) + 1
            self._batch.tray_failures[key] = self.totals.tray_failures[key]

    def attribute(self, task_id: str, trays: Iterable[str]) -> None:
        """Settle a task's trays (once: a task's trays do not change while it runs)."""
        record = self.tasks.get(task_id)
        if record is None or record.trays is not None:
            return
        record.trays = frozenset(trays)
        self._batch.tracked[task_id] = (record.site_id, record.rack_id, record.trays)
        self._count_tray_failures(record)

    def vanish(self, task_id: str, now: float) -> None:
        """The final fetch answered 404: the task is gone from NICo. Recorded, never counted as finished."""
        record = self.tasks.get(task_id)
        self.recovered.pop(task_id, None)
        self.terminal[task_id] = now
        if record is None:
            self._batch.terminal[task_id] = ("", now)
            self._batch.untracked.add(task_id)
            return
        self._batch.terminal[task_id] = (record.rack_id, now)
        if self._deliver(Transition(Kind.VANISHED, f"{task_id}/vanished", record, now)):
            self.vanished += 1
        self._drop(task_id)

    # -- full listings -------------------------------------------------------------------------

    def baseline(
        self, site_id: str, rack_id: str, tasks: Iterable[Task], listing_started: float, total: int
    ) -> list[str]:
        """Apply a full listing of a rack; returns ids of tasks that need a final fetch.

        The first full listing of a rack sets its baseline: terminal tasks in it are history.
        Later listings find tasks that started and finished between active polls.
        """
        rack = self.rack(rack_id, site_id)
        first = rack.baselined_at is None
        baselined_at = listing_started if first else rack.baselined_at
        assert baselined_at is not None
        horizon = listing_started - self.terminal_retention
        fetch: list[str] = []
        listed: set[str] = set()
        seen = 0
        for task in tasks:
            seen += 1
            if task.id in self.tasks or task.id in self.terminal:
                continue
            if not task.is_terminal:
                listed.add(task.id)  # the active poll will track it
                continue
            finished = task.finished.timestamp() if task.finished else None
            if first or (finished is not None and (finished < baselined_at or finished < horizon)):
                # History: terminal at the first listing, finished before it, or too old to be new.
                self.terminal[task.id] = finished if finished is not None else listing_started
                self._batch.terminal[task.id] = (rack_id, self.terminal[task.id])
            else:
                fetch.append(task.id)
                listed.add(task.id)
                # Tracked until fetched, so a restart before the final fetch still fetches it.
                self._batch.tracked[task.id] = (site_id, rack_id, None)
        rack.baselined_at = baselined_at
        # A listing that saw fewer distinct tasks than the server counts (pages shift while the
        # set changes) expects only what it saw, so the next probe differs and lists again.
        rack.known_count = min(total, seen)
        rack.listed = listed
        self._batch.racks[rack_id] = (site_id, rack.baselined_at, rack.known_count)
        return fetch

    # -- housekeeping --------------------------------------------------------------------------

    def expire(self, now: float) -> list[str]:
        """Forget finished tasks past their TTL and terminal ids past retention; returns dropped ids."""
        dropped = [
            tid
            for tid, rec in self.tasks.items()
            if rec.finished_seen_at is not None and now - rec.finished_seen_at >= self.finished_ttl
        ]
        for tid in dropped:
            self._drop(tid)
        horizon = now - self.terminal_retention
        old = [tid for tid, finished in self.terminal.items() if finished < horizon and tid not in self.tasks]
        for tid in old:
            del self.terminal[tid]
            # Keys of a task that finished before a restart are not dropped with it: drop them here.
            self._delivered.pop(tid, None)
        if old:
            self._batch.forget_terminal.update(old)
            self._batch.forget_delivered.update(old)
        return dropped

    def _drop(self, task_id: str) -> None:
        record = self.tasks.pop(task_id, None)
        if record is not None:
            ids = self._by_rack.get(record.rack_id)
            if ids is not None:
                ids.discard(task_id)
        self._delivered.pop(task_id, None)
        self._batch.untracked.add(task_id)
        self._batch.forget_delivered.add(task_id)

    def drop_rack(self, rack_id: str) -> None:
        """A rack left the inventory: its tasks and their series go.

        Finished totals stay (counters never go down), and so does the rack's baseline: if the
        rack comes back, tasks that finished while it was away are found and counted.
        """
        for tid in list(self._by_rack.get(rack_id, ())):
            self._drop(tid)
        self._by_rack.pop(rack_id, None)
