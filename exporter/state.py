"""The state store: what the exporter knows about every task, and what changed, once.

Successive observations of a task (from rack lists, tray lists and single fetches) become
*transitions*: it appeared, its status changed, a stage or step started or finished, it
finished, it vanished. Each transition has a key and is delivered to subscribers (metrics,
tracing) exactly once, also across restarts: delivered keys, terminal task ids, finished totals
and rack ledgers are written to SQLite (:mod:`exporter.persistence`) in the same transaction.

The counting rule (docs/polling.md): a rack's *baseline* is the NICo time of its first active
listing. Tasks that finished before it are history, never counted. Every task that becomes
terminal after it and is seen (active, or by name in a list) is counted exactly once in the
finished totals. NICo never deletes a task, so a rack's all-tasks ``total`` is a creation
counter: its growth since the baseline, less the tasks created since then that were seen,
is the number of tasks nobody could name (created and finished between two polls, which a
v2.0 server's 20-row lists cannot show). The :class:`RackLedger` keeps those numbers, and
:meth:`Store.settle` counts each such task once in ``nico_tasks_unobserved_total``.

A task only *finishes* from an observation that carries its report (an ``includeReport`` list or
``GET /task/{id}``), so its stage and step transitions are complete when it does. Observations
without a report (all-tasks lists, tray lists) that show a task terminal ask for a final fetch.

No I/O and no clock reads here: the caller passes ``now`` (epoch seconds).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, KeysView
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from exporter.attribution import TargetTray, charged_trays
from exporter.models import ReportStage, ReportStatus, ReportStep, Task, TaskStatus
from exporter.operations import Classifier, Operation
from exporter.persistence import FinishedRow, NullPersistence, Persistence, RackRow, StateBatch

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
    """One change of one task, delivered once. ``stage``/``step`` are set for stage and step kinds.

    ``key`` names the change within its task (``status/Running``, ``stage/2/finished``): the task's
    delivered keys are kept, and persisted, under its id.
    """

    kind: Kind
    key: str
    record: TaskRecord
    observed_at: float
    previous_status: TaskStatus | None = None
    stage: ReportStage | None = None
    step: ReportStep | None = None
    step_index: int | None = None


Subscriber = Callable[[Transition], None]


# A task created this close before a rack's baseline (NICo's clock) may or may not be in the
# baseline count: it is taken as created after, which can only undercount unobserved tasks.
CLOCK_MARGIN_S = 2.0


@dataclass
class RackLedger:
    """One rack's creation counter, as the store needs it to count unobserved tasks.

    ``baselined_at``: NICo's time of the rack's first active listing (None: not yet).
    ``baseline_total``: its all-tasks total read right after that listing (None: not yet).
    ``last_total``: the all-tasks total last read. ``seen_new``: tasks first seen on the rack
    that were created after the baseline. ``unobserved``: tasks counted as unobserved so far.
    ``explained_through``: NICo's time of the newest total a ``settle`` found explained in full
    (every task created before it was seen or counted unobserved), less the clock margin; kept
    across restarts, so a task named by id after one is still told apart from a newer task.
    Not persisted: ``total_read_at``, NICo's time of the last total, and the recent readings and
    sightings a deferred settle uses (after a restart the estimate only starts lower).
    """

    site_id: str
    baselined_at: float | None = None
    baseline_total: int | None = None
    last_total: int | None = None
    seen_new: int = 0
    unobserved: int = 0
    total_read_at: float | None = None
    explained_through: float | None = None
    # Recent totals (local time read, NICo's time, total), newest last, for a deferred settle,
    # and the creation times of the new tasks first seen meanwhile (which totals include them).
    readings: deque[tuple[float, float | None, int]] = field(default_factory=lambda: deque(maxlen=32))
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=4096))

    def seen_since(self, at: float) -> int:
        """New tasks seen that were created at or after ``at`` (NICo's time)."""
        return sum(1 for created in self.recent if created >= at)

    def prune(self) -> None:
        """Forget creation times older than any reading kept (no settle can ask about them)."""
        oldest = self.readings[0][1] if self.readings else None
        if oldest is None:
            return
        while self.recent and self.recent[0] < oldest - CLOCK_MARGIN_S - 1:
            self.recent.popleft()

    @property
    def counting(self) -> bool:
        return self.baselined_at is not None and self.baseline_total is not None

    @classmethod
    def from_row(cls, row: RackRow) -> RackLedger:
        site_id, baselined_at, baseline_total, last_total, seen_new, unobserved, explained = row
        return cls(
            site_id,
            baselined_at,
            baseline_total,
            last_total,
            seen_new,
            unobserved,
            explained_through=explained,
        )

    def row(self) -> RackRow:
        return (
            self.site_id,
            self.baselined_at,
            self.baseline_total,
            self.last_total,
            self.seen_new,
            self.unobserved,
            self.explained_through,
        )


@dataclass
class FinishedTotals:
    """Terminal transitions by (site, status, operation), and failed tasks by tray."""

    tasks: dict[tuple[str, str, str], int] = field(default_factory=dict)
    tray_failures: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    # Tasks created and finished where no poll could name them, by site.
    unobserved: dict[str, int] = field(default_factory=dict)
    # Task Runs seen becoming final, by (site, status), each counted once.
    runs: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class StoreHealth:
    tracked: int
    vanished: int
    write_errors: int
    spans_dropped: int
    pending_writes: int


class Store:
    """Tracks tasks and turns observations into exactly-once transitions.

    Args:
        persistence: where exactly-once state survives restarts.
        classifier: description to operation.
        finished_ttl: seconds a finished task stays tracked (and in per-task series).
        terminal_retention: seconds a terminal task id is remembered; an unknown terminal task
            that finished longer ago than this is taken as old history, not counted.
        tray_types: tray id to its type, for per-tray failure totals (filled by discovery, with
            ``tray_components``: tray id to its component id).
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
        self._rack_trays: dict[str, frozenset[str]] = {}  # the last tray set attributed per rack
        self._subscribers: list[Subscriber] = []
        self._after_commit: list[Callable[[], None]] = []
        self.tray_types: dict[str, str] = {}
        self.tray_types_version = 0
        self.tray_components: dict[str, str] = {}
        # Failed tasks whose trays discovery has not typed yet (after a restart): charged once it has.
        self._uncharged: dict[str, TaskRecord] = {}
        # Per site, how far its clock is ahead of the REST server's (seconds; absent: none).
        self.clock_offsets: dict[str, float] = {}
        # Ids of tasks whose record was added, changed or dropped since the snapshot publisher
        # last took them (it re-renders only those tasks' series).
        self.touched: set[str] = set()
        loaded = self.persistence.load()
        self.racks: dict[str, RackLedger] = {
            rack_id: RackLedger.from_row(row) for rack_id, row in loaded.racks.items()
        }
        self.terminal: dict[str, float] = dict(loaded.terminal)
        # Delivered transition keys, by task: a task's keys are forgotten with the task. A tuple of
        # interned strings (a task has a few dozen keys at most; a set would weigh 5x more).
        self._delivered: dict[str, tuple[str, ...]] = {}
        for key, task_id in loaded.delivered:
            # Rows carry the task id in front of the key (see _claim).
            key = sys.intern(key.removeprefix(f"{task_id}/"))
            if key not in self._delivered.get(task_id, ()):
                self._delivered[task_id] = (*self._delivered.get(task_id, ()), key)
        self.totals = FinishedTotals(
            dict(loaded.totals), dict(loaded.tray_failures), dict(loaded.unobserved), dict(loaded.run_totals)
        )
        # Task Runs: when each site's runs were first listed (runs final before it are history),
        # and every run seen final (counted, or history), so none is counted twice.
        self._learned: dict[str, bytes] = dict(loaded.learned)
        self._run_baselines: dict[str, float] = dict(loaded.run_sites)
        self._runs_final: dict[str, tuple[str, float]] = dict(loaded.runs_final)
        # Tasks that were being tracked, or named and waiting for their final fetch, when the
        # last process stopped: fetch them again.
        self.recovered: dict[str, tuple[str, str, frozenset[str] | None]] = dict(loaded.tracked)
        # Tasks named terminal by a list without report, waiting for their final fetch.
        self.pending: dict[str, tuple[str, str]] = {}
        self._batch = StateBatch()
        # Batches whose write failed, oldest first: written, in order, with the next commit.
        self.unwritten: list[StateBatch] = []
        for task_id, row in loaded.finished.items():
            self._restore_finished(task_id, row)
        self.vanished = 0
        # Finished tasks named after they were counted unobserved (not counted twice).
        self.absorbed = 0

    # -- subscribers ---------------------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> None:
        """Receive every transition once, in order, as the store records it."""
        self._subscribers.append(subscriber)

    def _claim(self, task_id: str, key: str) -> bool:
        """Mark ``key`` delivered for ``task_id``; False if it already was."""
        keys = self._delivered.get(task_id, ())
        if key in keys:
            return False
        key = sys.intern(key)
        self._delivered[task_id] = (*keys, key)
        # The table's key column is unique across tasks: rows carry the task id in front.
        self._batch.delivered.append((f"{task_id}/{key}", task_id))
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
        """Write the transitions and state changes since the last commit in one transaction.

        A batch that could not be written is kept and written, before the new one and in the
        same transaction, by the next commit: after a full disk clears nothing is lost, and
        nothing is counted twice after a restart. Effects that wait for the disk (span export)
        wait with it.
        """
        if self._batch.empty and not self.unwritten:
            return
        batches = [*self.unwritten, self._batch] if not self._batch.empty else list(self.unwritten)
        self._batch = StateBatch()
        if not self.persistence.write(*batches):
            self.unwritten = batches
            return
        self.unwritten = []
        for listener in self._after_commit:
            try:
                listener()
            except Exception:  # a broken listener must not stop polling
                log.exception("after-commit listener failed")

    def learned(self) -> dict[str, bytes]:
        """What subscribers asked the state file to keep (:meth:`remember`), as loaded at start."""
        return dict(self._learned)

    def remember(self, key: str, body: bytes) -> None:
        """Keep ``body`` under ``key`` in the state file, written with the current transition."""
        self._learned[key] = body
        self._batch.learned[key] = body

    def outbox(self, spans: Iterable[tuple[str, str]]) -> None:
        """Spans (key, encoded) made final by the transition being delivered: written with it."""
        self._batch.spans.extend(spans)

    def take_touched(self) -> set[str]:
        """The ids of tasks added, changed or dropped since the last call (and forget them)."""
        touched, self.touched = self.touched, set()
        return touched

    # -- task runs -----------------------------------------------------------------------------

    def run_baseline(self, site_id: str, server_time: float) -> float:
        """The site's runs baseline: set at the first listing (NICo's clock), kept across restarts."""
        if site_id not in self._run_baselines:
            self._run_baselines[site_id] = server_time
            self._batch.run_sites[site_id] = server_time
        return self._run_baselines[site_id]

    def run_is_final(self, run_id: str) -> bool:
        """The run was seen final already (counted, or history at the baseline)."""
        return run_id in self._runs_final

    def run_finished(self, site_id: str, run_id: str, status: str, finished_at: float) -> bool:
        """Count a run that became final, once; a run that finished before its site's baseline is
        history (remembered, not counted). True when it was counted now."""
        if run_id in self._runs_final:
            return False
        self._runs_final[run_id] = (site_id, finished_at)
        self._batch.runs_final[run_id] = (site_id, finished_at)
        baseline = self._run_baselines.get(site_id)
        if baseline is None or finished_at < baseline:
            return False
        key = (site_id, status)
        self.totals.runs[key] = self.totals.runs.get(key, 0) + 1
        self._batch.run_totals[key] = self.totals.runs[key]
        return True

    def health(self) -> StoreHealth:
        """The store's own numbers for the self-metrics, as a value."""
        return StoreHealth(
            tracked=len(self.tasks),
            vanished=self.vanished,
            write_errors=int(getattr(self.persistence, "write_errors", 0)),
            spans_dropped=int(getattr(self.persistence, "spans_dropped", 0)),
            pending_writes=len(self.unwritten),
        )

    def counting_racks(self) -> set[str]:
        """Racks whose baseline is taken: their finished tasks are counted."""
        return {rack_id for rack_id, ledger in self.racks.items() if ledger.counting}

    def record(self, task_id: str) -> TaskRecord | None:
        return self.tasks.get(task_id)

    def tracked_ids(self) -> KeysView[str]:
        """The ids of every tracked task (a live read-only view: read it on the poller's thread)."""
        return self.tasks.keys()

    def tray_type(self, tray_id: str) -> str:
        return self.tray_types.get(tray_id, "Unknown")

    def learn_tray_type(self, tray_id: str, tray_type: str, component_id: str | None = None) -> None:
        """Record a tray's type and component id (discovery); ``tray_types_version`` moves when a
        type changes."""
        if self.tray_types.get(tray_id) != tray_type:
            self.tray_types[tray_id] = tray_type
            self.tray_types_version += 1
        if component_id:
            self.tray_components[tray_id] = component_id
        for record in [r for r in self._uncharged.values() if r.trays and tray_id in r.trays]:
            self._count_tray_failures(record)

    # -- queries -------------------------------------------------------------------------------

    def rack_task_ids(self, rack_id: str) -> set[str]:
        return set(self._by_rack.get(rack_id, ()))

    def active_ids(self, rack_id: str) -> set[str]:
        """Tracked tasks of the rack that are not terminal: what its active list should show."""
        return {tid for tid in self._by_rack.get(rack_id, ()) if not self.tasks[tid].is_terminal}

    def records(self) -> Iterator[TaskRecord]:
        return iter(self.tasks.values())

    def is_known(self, task_id: str) -> bool:
        """Tracked, terminal, or named and awaiting its final fetch."""
        return task_id in self.tasks or task_id in self.terminal or task_id in self.pending

    def is_known_terminal(self, task_id: str) -> bool:
        return task_id in self.terminal

    def awaiting_fetch(self) -> Iterator[tuple[str, str, str]]:
        """(task id, site id, rack id) of every task known by name whose state must be fetched:
        named by a list without its report, or tracked when the last process stopped."""
        for task_id, (site_id, rack_id) in self.pending.items():
            yield task_id, site_id, rack_id
        for task_id, (site_id, rack_id, _) in self.recovered.items():
            if task_id not in self.pending:
                yield task_id, site_id, rack_id

    def ledger(self, rack_id: str) -> RackLedger | None:
        return self.racks.get(rack_id)

    # -- the creation counter ------------------------------------------------------------------

    def begin_baseline(self, rack_id: str, site_id: str, server_time: float) -> RackLedger:
        """Start a rack's baseline at ``server_time`` (NICo's clock), before its first active list
        is observed; a rack whose baseline total was read keeps it (restarts do not re-baseline)."""
        ledger = self.racks.get(rack_id)
        if ledger is None:
            ledger = self.racks[rack_id] = RackLedger(site_id)
        if ledger.baseline_total is None:
            # No baseline yet, or one whose total was never read (the read failed, or the
            # process died first): start it again now. A total read later would count tasks
            # created in between as part of the baseline, and they would never be counted.
            ledger.baselined_at, ledger.seen_new, ledger.unobserved = server_time, 0, 0
            ledger.explained_through = None
            ledger.recent.clear()
            self._batch.racks[rack_id] = ledger.row()
        return ledger

    def observe_total(
        self, rack_id: str, total: int, at: float | None = None, *, local: float | None = None
    ) -> bool:
        """Record a rack's all-tasks ``total`` (read at NICo's time ``at``, our ``local`` time);
        True when it moved since the last reading.

        The first reading after the baseline is the baseline count. The total only grows (NICo
        never deletes a task); one that shrinks means the server's database changed under us,
        and the rack's ledger starts again from it.
        """
        ledger = self.racks.get(rack_id)
        if ledger is None or ledger.baselined_at is None:
            return False
        moved = ledger.last_total is not None and total != ledger.last_total
        if ledger.baseline_total is None:
            ledger.baseline_total = total
        elif ledger.last_total is not None and total < ledger.last_total:
            log.warning(
                "rack task total went down: counting unobserved tasks from here",
                extra={"rack_id": rack_id, "total": total, "previous": ledger.last_total},
            )
            ledger.baseline_total, ledger.seen_new, ledger.unobserved = total, 0, 0
            ledger.explained_through = None
            ledger.readings.clear()
            ledger.recent.clear()
        ledger.last_total = total
        ledger.total_read_at = at
        if local is not None:
            ledger.readings.append((local, at, total))
            ledger.prune()
        self._batch.racks[rack_id] = ledger.row()
        return moved

    def settle(self, rack_id: str, unseen_active: int = 0, *, hold: float = 0.0, now: float = 0.0) -> int:
        """Count the rack's tasks that were created since the baseline and never seen.

        Call it right after an active listing that followed the latest ``observe_total``:
        every task that total includes and that is still active was then seen, unless the
        listing was incomplete (``unseen_active`` rows it did not show, subtracted as if each
        were new). The estimate can only be low, never high, and the counter only grows, so
        each such task is counted once. Returns how many were counted now.

        ``hold``: judge the newest total read at least ``hold`` seconds before ``now`` (local
        time), not the latest, so that a task someone else can still name by id (a Task Run's
        target) gets that time to be named and counted by name. Every sighting since is
        subtracted all the same, so the estimate stays low, and a later settle counts the rest.
        """
        ledger = self.racks.get(rack_id)
        if ledger is None or not ledger.counting or ledger.last_total is None:
            return 0
        assert ledger.baseline_total is not None
        total, read_at = ledger.last_total, ledger.total_read_at
        if hold > 0:
            old = [r for r in ledger.readings if r[0] <= now - hold]
            if not old:
                return 0
            _, read_at, total = old[-1]
            while ledger.readings[0] is not old[-1]:
                ledger.readings.popleft()
            ledger.prune()
        created = total - ledger.baseline_total
        # Sightings of tasks created clearly after the read are not in its total; those in doubt
        # (the Date header's second, the clock margin) count as in it: the estimate stays low.
        after = 0 if read_at is None else ledger.seen_since(read_at + 1 + CLOCK_MARGIN_S)
        unnamed = created - (ledger.seen_new - after) - max(0, unseen_active)
        added = max(0, unnamed - ledger.unobserved)
        if added:
            ledger.unobserved = unnamed
            site = ledger.site_id
            self.totals.unobserved[site] = self.totals.unobserved.get(site, 0) + added
            self._batch.racks[rack_id] = ledger.row()
            self._batch.unobserved[site] = self.totals.unobserved[site]
        # Explained in full: every task the total counts and nobody saw has been counted, judged
        # by the sightings clearly older than the read only (those may not be in it).
        if read_at is not None and unseen_active <= 0:
            before = ledger.seen_new - ledger.seen_since(read_at - CLOCK_MARGIN_S)
            if before + ledger.unobserved >= created and ledger.explained_through != read_at - CLOCK_MARGIN_S:
                ledger.explained_through = read_at - CLOCK_MARGIN_S
                self._batch.racks[rack_id] = ledger.row()
        return added

    def unexplained(self, rack_id: str) -> int:
        """Tasks the last total includes that no sighting explains yet (before ``settle``)."""
        ledger = self.racks.get(rack_id)
        if ledger is None or not ledger.counting or ledger.last_total is None:
            return 0
        assert ledger.baseline_total is not None
        return max(0, ledger.last_total - ledger.baseline_total - ledger.seen_new - ledger.unobserved)

    def set_clock_offset(self, site_id: str, seconds: float) -> None:
        """How far ``site_id``'s clock is ahead of the REST server's (exporter.clockskew): its tasks'
        times are moved onto the REST server's clock before they are compared with a rack's
        baseline or counter readings (which carry the REST server's ``Date``)."""
        if seconds:
            self.clock_offsets[site_id] = seconds
        else:
            self.clock_offsets.pop(site_id, None)

    def _rest_time(self, ledger: RackLedger, when: datetime) -> float:
        """A site timestamp on the REST server's clock."""
        return when.timestamp() - self.clock_offsets.get(ledger.site_id, 0.0)

    def _first_sighting(self, rack_id: str, task: Task) -> None:
        """A task the store has never seen: if it is new since the baseline, it explains one step
        of the rack's creation counter."""
        ledger = self.racks.get(rack_id)
        if ledger is None or ledger.baselined_at is None or task.created is None:
            return
        created = self._rest_time(ledger, task.created)
        if created >= ledger.baselined_at - CLOCK_MARGIN_S:
            ledger.seen_new += 1
            ledger.recent.append(created)
            self._batch.racks[rack_id] = ledger.row()

    def _absorbed(self, rack_id: str, task: Task, *, by_id: bool = False) -> bool:
        """A finished task named only now, when the creation counter is already explained in full:
        it was counted unobserved before (a server whose list order changes can name it later).
        Counting it again would count it twice: it is recorded, not counted.

        A row of a total listing is judged against that total, which includes it, or against
        ``explained_through``. A task fetched by id (``by_id``: a Task Run's target names it) may
        be newer than any total: it was counted unobserved only if it was created before
        ``explained_through`` (a reading explained in full, less the clock margin) and clearly
        after the baseline. Doubt counts a task rather than drops it.
        """
        ledger = self.racks.get(rack_id)
        if ledger is None or not ledger.counting or ledger.last_total is None or task.created is None:
            return False
        if ledger.unobserved <= 0:
            return False  # nothing was counted unobserved: it cannot be one of them
        assert ledger.baselined_at is not None and ledger.baseline_total is not None
        created = self._rest_time(ledger, task.created)
        if by_id:
            # Clearly after the baseline (one around it may be in the baseline count, never
            # counted), and clearly before a reading whose count was explained in full.
            if created < ledger.baselined_at + 1 + CLOCK_MARGIN_S:
                return False
            if ledger.explained_through is None or created >= ledger.explained_through:
                return False
        else:
            if created < ledger.baselined_at - CLOCK_MARGIN_S:
                return False
            explained_now = ledger.seen_new + ledger.unobserved >= ledger.last_total - ledger.baseline_total
            explained_then = ledger.explained_through is not None and created < ledger.explained_through
            if not (explained_now or explained_then):
                return False
        finished = self._rest_time(ledger, task.finished) if task.finished else ledger.baselined_at
        self.terminal[task.id] = finished
        self._batch.terminal[task.id] = (rack_id, finished)
        self.absorbed += 1
        log.info("task named after it was counted unobserved", extra={"task_id": task.id, "rack_id": rack_id})
        return True

    def _history(self, rack_id: str, task: Task, now: float) -> bool:
        """An unknown terminal task that finished before the rack's baseline, or so long ago that
        its id would have been forgotten: history, never counted."""
        if task.finished is None:
            return False
        finished = task.finished.timestamp()
        ledger = self.racks.get(rack_id)
        margin = 0.0
        if ledger is not None:
            finished = self._rest_time(ledger, task.finished)
            # A corrected clock is known to about a second: doubt counts a task rather than drops it.
            margin = CLOCK_MARGIN_S if ledger.site_id in self.clock_offsets else 0.0
        before_baseline = (
            ledger is not None and ledger.baselined_at is not None and finished < ledger.baselined_at - margin
        )
        return before_baseline or finished < now - self.terminal_retention

    # -- observations --------------------------------------------------------------------------

    def observe(
        self,
        site_id: str,
        rack_id: str,
        task: Task,
        now: float,
        *,
        with_report: bool = True,
        in_baseline: bool = False,
    ) -> bool:
        """Record one observation; returns True when the task needs a final fetch.

        ``with_report`` says the observation carries the task's report (or the server has none):
        only such an observation may finish a task. ``in_baseline``: the observation comes from
        the lists that set the rack's baseline, so the task is part of the baseline count.
        """
        if task.id in self.terminal and task.id not in self.tasks:
            return False  # counted (or history) already; its TTL has passed
        record = self.tasks.get(task.id)
        if record is None:
            if task.id not in self.pending and task.id not in self.recovered:
                if task.is_terminal and self._history(rack_id, task, now):
                    return False
                if task.is_terminal and not in_baseline and self._absorbed(rack_id, task, by_id=with_report):
                    return False
                if not in_baseline:
                    self._first_sighting(rack_id, task)
            if task.is_terminal and not with_report:
                # Named, over, and not complete: keep the name (a restart fetches it again).
                if task.id not in self.pending:
                    self.pending[task.id] = (site_id, rack_id)
                    self._batch.tracked[task.id] = (site_id, rack_id, None)
                return True
            self.pending.pop(task.id, None)
            record = self._track(site_id, rack_id, task, now)
            self._deliver(Transition(Kind.APPEARED, "appeared", record, now))
            previous: Task | None = None
        else:
            if record.is_terminal:
                return False
            if task.is_terminal and not with_report:
                return True
            previous = record.task
            had_report = record.task.report is not None
            if with_report or task.report is not None:
                record.task = task
            else:
                # Keep the report we had: lists without reports must not erase it.
                record.task = dataclasses.replace(task, report=record.task.report)
            record.observed_at = now
            self.touched.add(task.id)
            if (
                not had_report
                and record.task.report is not None
                and not self.classifier.exact(task.description)
            ):
                # Free text named the operation only provisionally: the layout now can.
                record.operation = self.classifier.classify(task.description, record.task.report)
        self._transitions(record, previous, now)
        return False

    def _register(
        self,
        site_id: str,
        rack_id: str,
        task: Task,
        first_seen: float,
        observed_at: float,
        trays: frozenset[str] | None,
        finished_seen_at: float | None = None,
    ) -> TaskRecord:
        """A record for ``task``, tracked from now on (its rack's set, the publisher's touched)."""
        record = TaskRecord(
            site_id=site_id,
            rack_id=rack_id,
            task=task,
            operation=self.classifier.classify(task.description, task.report),
            first_seen=first_seen,
            observed_at=observed_at,
            trays=trays,
            finished_seen_at=finished_seen_at,
        )
        self.tasks[task.id] = record
        self.touched.add(task.id)
        self._by_rack.setdefault(rack_id, set()).add(task.id)
        return record

    def _track(self, site_id: str, rack_id: str, task: Task, now: float) -> TaskRecord:
        recovered = self.recovered.pop(task.id, None)
        record = self._register(site_id, rack_id, task, now, now, recovered[2] if recovered else None)
        self._batch.tracked[task.id] = (site_id, rack_id, record.trays)
        return record

    def _transitions(self, record: TaskRecord, previous: Task | None, now: float) -> None:
        task = record.task
        old_status = previous.status if previous is not None else None
        if old_status != task.status:
            self._deliver(
                Transition(
                    Kind.STATUS_CHANGED,
                    f"status/{task.status}",
                    record,
                    now,
                    previous_status=old_status,
                )
            )
        if task.started is not None:
            # Once per task, also across restarts: its queue wait is over.
            self._deliver(Transition(Kind.STARTED, "started", record, now))
        if task.report is not None:
            for stage in task.report.stages:
                base = f"stage/{stage.number}"
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
        # A tracked task was seen active at or after its rack's baseline (the counter is read
        # before the baseline's active list), so it finished after it: it is counted, whatever
        # its timestamps say (a site's clock may be seconds off before its offset is known).
        finished_at = record.task.finished.timestamp() if record.task.finished else now
        record.finished_seen_at = now
        self.terminal[record.id] = finished_at
        self._batch.terminal[record.id] = (record.rack_id, finished_at)
        self._batch.untracked.add(record.id)
        self._batch.finished[record.id] = self._finished_row(record)
        if self._deliver(Transition(Kind.FINISHED, "finished", record, now)):
            key = (record.site_id, record.status.value, record.operation.value)
            self.totals.tasks[key] = self.totals.tasks.get(key, 0) + 1
            self._batch.totals[key] = self.totals.tasks[key]
            self._count_tray_failures(record)

    @staticmethod
    def _finished_row(record: TaskRecord) -> FinishedRow:
        assert record.finished_seen_at is not None
        return (
            record.site_id,
            record.rack_id,
            record.trays,
            record.first_seen,
            record.finished_seen_at,
            record.task.to_json(),
        )

    def _restore_finished(self, task_id: str, row: FinishedRow) -> None:
        """A task that finished within its TTL before the restart: its series come back as they were."""
        site_id, rack_id, trays, first_seen, finished_seen_at, text = row
        try:
            task = Task.parse(json.loads(text))
        except ValueError:  # pydantic's ValidationError and JSON errors alike
            log.warning("finished task unreadable in the state file; dropped", extra={"task_id": task_id})
            self._batch.forget_finished.add(task_id)
            return
        record = self._register(site_id, rack_id, task, first_seen, finished_seen_at, trays, finished_seen_at)
        self._count_tray_failures(record)  # if the last process could not charge it yet

    def _count_tray_failures(self, record: TaskRecord) -> None:
        """A failed task counts once against the trays its failure is charged to
        (:func:`exporter.attribution.charged_trays`), once its trays and their types are known."""
        self._uncharged.pop(record.id, None)
        if record.status is not TaskStatus.FAILED or record.trays is None:
            return
        delivered = self._delivered.get(record.id, ())
        if "finished" not in delivered or "trays-failed" in delivered:
            return
        if not all(tray in self.tray_types for tray in record.trays):
            self._uncharged[record.id] = record
            return
        self._claim(record.id, "trays-failed")
        targets = (TargetTray(t, self.tray_types[t], self.tray_components.get(t)) for t in record.trays)
        for tray in charged_trays(record.task, targets):
            key = (record.site_id, record.rack_id, tray, self.tray_type(tray))
            self.totals.tray_failures[key] = self.totals.tray_failures.get(key, 0) + 1
            self._batch.tray_failures[key] = self.totals.tray_failures[key]

    def attribute(self, task_id: str, trays: Iterable[str]) -> None:
        """Settle a task's trays (once: a task's trays do not change while it runs)."""
        record = self.tasks.get(task_id)
        if record is None or record.trays is not None:
            return
        settled = frozenset(trays)
        # Tasks on one rack mostly share their trays (a rack-wide operation): share the set.
        last = self._rack_trays.get(record.rack_id)
        if last == settled:
            settled = last
        else:
            self._rack_trays[record.rack_id] = settled
        record.trays = settled
        self.touched.add(task_id)
        if record.finished_seen_at is not None:
            self._batch.finished[task_id] = self._finished_row(record)
        else:
            self._batch.tracked[task_id] = (record.site_id, record.rack_id, record.trays)
        self._count_tray_failures(record)

    def vanish(self, task_id: str, now: float) -> None:
        """The site no longer has the task (NICo never deletes one: its database was restored or
        replaced). Recorded, never counted as finished."""
        record = self.tasks.get(task_id)
        self.recovered.pop(task_id, None)
        self.pending.pop(task_id, None)
        self.terminal[task_id] = now
        if record is None:
            self._batch.terminal[task_id] = ("", now)
            self._batch.untracked.add(task_id)
            return
        self._batch.terminal[task_id] = (record.rack_id, now)
        if self._deliver(Transition(Kind.VANISHED, "vanished", record, now)):
            self.vanished += 1
        self._drop(task_id)

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
        self.touched.add(task_id)
        if record is not None:
            ids = self._by_rack.get(record.rack_id)
            if ids is not None:
                ids.discard(task_id)
        self._delivered.pop(task_id, None)
        self._uncharged.pop(task_id, None)
        self._batch.untracked.add(task_id)
        self._batch.forget_delivered.add(task_id)
        self._batch.forget_finished.add(task_id)

    def drop_rack(self, rack_id: str) -> None:
        """A rack left the inventory: its tasks and their series go.

        Finished totals stay (counters never go down), and so does the rack's ledger: if the
        rack comes back, tasks that finished while it was away are found or counted unobserved,
        and those it had running are fetched by name.
        """
        for tid in list(self._by_rack.get(rack_id, ())):
            record = self.tasks[tid]
            if record.is_terminal:
                self._drop(tid)
                continue
            # Still running when its rack went: its series go, its name and delivered keys stay,
            # so it is fetched (and its transitions not repeated) if the rack returns.
            del self.tasks[tid]
            self.touched.add(tid)
            self.pending[tid] = (record.site_id, rack_id)
            self._batch.tracked[tid] = (record.site_id, rack_id, record.trays)
        self._by_rack.pop(rack_id, None)
        self._rack_trays.pop(rack_id, None)
