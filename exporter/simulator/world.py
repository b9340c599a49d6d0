"""The simulated NICo world: sites, GB200 NVL72 racks and trays, tasks and their lifecycle.

The lifecycle engine is a discrete-event simulation driven by a heap of timed events. Nothing
runs in the background: :meth:`World.advance_to` replays every event due up to a point in
simulated time, in time order, each with its own timestamp. That makes 100 racks x 35 trays
cheap (idle racks cost nothing) and tests exact (a :class:`~.clock.ManualClock` step
reveals exactly the transitions Flow would have made in that interval).

What a task goes through mirrors Flow (nico-api-notes.md §1, §6.3):

1. created ``Pending``, ``ruleId`` null, no report;
2. admitted a moment later: if the rack is busy it becomes ``Waiting`` (no report yet:
   the spec says queued tasks have none) until promoted or expired after the queue timeout;
   otherwise the rule is resolved (``ruleId``, initial report) and it turns ``Running``;
3. stage by stage: BeginStage, then CompleteStage or FailStage (fail-fast: later stages
   stay ``pending``); a *stuck* task never leaves its stage;
4. ``Succeeded`` / ``Failed`` / ``Terminated``; the rack is released and the oldest
   ``Waiting`` task on it is promoted.
"""

from __future__ import annotations

import heapq
import random
import string
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from functools import partial

from exporter.models import ComponentType, ReportStatus, TaskStatus
from exporter.simulator.inventory import Rack, Site, Tray, make_tray, nvl72_layout
from exporter.simulator.operations import OPERATIONS, Operation
from exporter.simulator.report import Report, Stage, initial_report, truncate_error

MSG_PENDING = "Task created"
MSG_RUNNING = "Task is running"
MSG_SUCCEEDED = "Task completed successfully"
MSG_TERMINATED = "Task terminated by user"
MSG_EXPIRED = "Expired: queue timeout reached"


class Outcome(StrEnum):
    """The planned end of a task: it succeeds, fails at a stage, or hangs in a stage forever."""

    SUCCEED = "succeed"
    FAIL = "fail"
    STUCK = "stuck"


class SimulationError(ValueError):
    """A request to the world that cannot be honoured (unknown rack, bad stage number, ...)."""


class CancelRefused(SimulationError):
    """Cancel of a task that already ``Succeeded`` or ``Failed``."""

    def __init__(self, status: TaskStatus) -> None:
        super().__init__(f"Task in {status.value} state cannot be cancelled")
        self.status = status


# --- tasks -------------------------------------------------------------------------------------


@dataclass
class Task:
    """A Flow task with everything Flow knows (REST shows only part of it) plus its plan."""

    id: str
    site_id: str
    rack_id: str
    tray_ids: tuple[str, ...]
    operation: Operation
    description: str
    created: datetime
    outcome: Outcome
    fail_stage: int | None
    error: str | None
    stage_seconds: dict[int, float]
    status: TaskStatus = TaskStatus.PENDING
    message: str = MSG_PENDING
    rule_id: str | None = None
    started: datetime | None = None
    finished: datetime | None = None
    updated: datetime | None = None
    report: Report | None = None
    queue_expires_at: datetime | None = None
    current_stage: int | None = None
    # Position in the table's physical order: every update writes a new tuple at the end (MVCC).
    row_version: int = 0
    totals: dict[ComponentType, int] = field(default_factory=dict)

    @property
    def operation_code(self) -> str:
        return OPERATIONS[self.operation].code


@dataclass(order=True)
class _Event:
    at: datetime
    seq: int
    action: Callable[[datetime], None] = field(compare=False)


class World:
    """All sites, racks, trays and tasks, and the event engine that moves tasks along.

    ``now`` is the engine's cursor: everything up to it has happened. All randomness comes
    from the injected ``rng``, so a seed reproduces a run exactly.
    """

    def __init__(
        self,
        *,
        rng: random.Random,
        start: datetime,
        queue_timeout_s: float = 3600.0,
        admit_delay_s: tuple[float, float] = (1.0, 3.0),
        first_stage_delay_s: tuple[float, float] = (0.2, 1.0),
        stage_sampler: Callable[[Operation], float] | None = None,
    ) -> None:
        self.rng = rng
        self.now = start
        self.queue_timeout_s = queue_timeout_s
        self.admit_delay_s = admit_delay_s
        self.first_stage_delay_s = first_stage_delay_s
        self._stage_sampler = stage_sampler or (lambda _op: rng.uniform(5.0, 60.0))
        self.sites: dict[str, Site] = {}
        self.racks: dict[str, Rack] = {}
        self.trays: dict[str, Tray] = {}
        self.tasks: dict[str, Task] = {}
        # Finished tasks removed from NICo's database (retention): gone from the API, kept here
        # for the ground truth.
        self.purged: dict[str, Task] = {}
        self._tasks_by_rack: dict[str, list[str]] = {}
        self._tasks_by_tray: dict[str, list[str]] = {}
        self._holder: dict[str, str] = {}  # rack id -> the Running task that holds it
        self._waiting: dict[str, list[str]] = {}  # rack id -> Waiting task ids, oldest first
        self._last_admit: dict[str, datetime] = {}  # rack id -> latest scheduled admission
        self._rule_ids: dict[tuple[str, str], str] = {}
        self._heap: list[_Event] = []
        self._seq = 0
        self._rows = 0

    def set_stage_sampler(self, sampler: Callable[[Operation], float]) -> None:
        """Where stage durations come from when a task is created without explicit ones."""
        self._stage_sampler = sampler

    # --- ids and events ------------------------------------------------------------------------

    def new_id(self) -> str:
        """A UUID v4 drawn from the seeded RNG (reproducible, unlike ``uuid.uuid4``)."""
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def schedule(self, at: datetime, action: Callable[[datetime], None]) -> None:
        """Run ``action(at)`` when the engine reaches ``at`` (never earlier than ``now``)."""
        self._seq += 1
        heapq.heappush(self._heap, _Event(max(at, self.now), self._seq, action))

    def advance_to(self, target: datetime) -> int:
        """Replay every event due at or before ``target`` in time order; returns how many ran."""
        ran = 0
        while self._heap and self._heap[0].at <= target:
            event = heapq.heappop(self._heap)
            self.now = event.at
            event.action(event.at)
            ran += 1
        self.now = max(self.now, target)
        return ran

    def pending_events(self) -> int:
        return len(self._heap)

    # --- inventory -----------------------------------------------------------------------------

    def add_site(self, name: str, org: str, *, flow: bool, created: datetime, city: str) -> Site:
        site = Site(
            id=self.new_id(),
            name=name,
            org=org,
            flow=flow,
            created=created,
            infrastructure_provider_id=self.new_id(),
            registration_token="-".join(
                "".join(self.rng.choice(string.ascii_uppercase + string.digits) for _ in range(4))
                for _ in range(4)
            ),
            city=city,
        )
        self.sites[site.id] = site
        return site

    def add_rack(self, site: Site, name: str, *, position: str, room: str) -> Rack:
        """Add a GB200 NVL72 rack with its 35 trays in their usual slots."""
        rack = Rack(
            id=self.new_id(),
            site_id=site.id,
            name=name,
            serial_number=f"RK{self.rng.randrange(10**9):09d}",
            region="us-west-2",
            datacenter=f"{site.name}-dc1",
            room=room,
            position=position,
        )
        self.racks[rack.id] = rack
        site.rack_ids.append(rack.id)
        self._tasks_by_rack[rack.id] = []
        for kind, index, slot in nvl72_layout():
            tray = make_tray(self.rng, self.new_id(), rack, kind, index, slot)
            self.trays[tray.id] = tray
            rack.tray_ids.append(tray.id)
            self._tasks_by_tray[tray.id] = []
        return rack

    def rack_trays(self, rack_id: str) -> list[Tray]:
        return [self.trays[tray_id] for tray_id in self.racks[rack_id].tray_ids]

    # --- task queries --------------------------------------------------------------------------

    def rack_tasks(self, rack_id: str) -> list[Task]:
        """Tasks of a rack (tray-initiated ones too) in physical row order, like a seq scan."""
        return self._in_row_order(self._tasks_by_rack.get(rack_id, ()))

    def tray_tasks(self, tray_id: str) -> list[Task]:
        """Tasks whose targeted components include the tray, in physical row order."""
        return self._in_row_order(self._tasks_by_tray.get(tray_id, ()))

    def _in_row_order(self, task_ids: Iterable[str]) -> list[Task]:
        return sorted((self.tasks[task_id] for task_id in task_ids), key=lambda task: task.row_version)

    def purge(self, task_id: str) -> None:
        """Remove a finished task as NICo's retention would: the API answers 404 for it after."""
        task = self.tasks.get(task_id)
        if task is None:
            raise SimulationError(f"unknown task {task_id}")
        if not task.status.is_terminal:
            raise SimulationError(f"task {task_id} is {task.status.value}: only finished tasks are purged")
        del self.tasks[task_id]
        self.purged[task_id] = task
        self._tasks_by_rack[task.rack_id].remove(task_id)
        for tray_id in task.tray_ids:
            self._tasks_by_tray[tray_id].remove(task_id)

    def rule_id(self, site_id: str, code: str) -> str:
        """The id of the site's default rule for an operation code (one per site and code)."""
        key = (site_id, code)
        if key not in self._rule_ids:
            self._rule_ids[key] = self.new_id()
        return self._rule_ids[key]

    # --- task creation -------------------------------------------------------------------------

    def create_task(
        self,
        site_id: str,
        rack_id: str,
        operation: Operation,
        *,
        description: str,
        tray_ids: Sequence[str] | None = None,
        outcome: Outcome = Outcome.SUCCEED,
        fail_stage: int | None = None,
        error: str | None = None,
        stage_seconds: float | Sequence[float] | None = None,
        at: datetime | None = None,
    ) -> Task:
        """Create a ``Pending`` task now (or at ``at`` >= now) and schedule its admission.

        ``tray_ids`` None targets every tray of the rack. ``fail_stage``/``stuck`` default to a
        random executable stage. ``stage_seconds`` is one duration for every stage, one per
        executable stage, or None to draw from the scenario's ranges.
        """
        rack = self.racks.get(rack_id)
        if rack is None or rack.site_id != site_id:
            raise SimulationError(f"rack {rack_id} is not in site {site_id}")
        targets = self._targets(rack, tray_ids)
        totals: dict[ComponentType, int] = {}
        for tray_id in targets:
            kind = self.trays[tray_id].type
            totals[kind] = totals.get(kind, 0) + 1
        executable = [stage.number for stage in initial_report(operation, totals).stages if stage.executable]
        planned_stage = self._planned_stage(outcome, fail_stage, executable)
        durations = self._durations(operation, executable, stage_seconds)
        created = max(at or self.now, self.now)
        task = Task(
            id=self.new_id(),
            site_id=site_id,
            rack_id=rack_id,
            tray_ids=targets,
            operation=operation,
            description=description,
            created=created,
            outcome=outcome,
            fail_stage=planned_stage,
            error=self._error(operation, outcome, planned_stage, targets, error),
            stage_seconds=durations,
            totals=totals,
        )
        self.tasks[task.id] = task
        self._tasks_by_rack[rack_id].append(task.id)
        for tray_id in targets:
            self._tasks_by_tray[tray_id].append(task.id)
        self._touch(task, created)
        if operation is Operation.LEAK_DETECTION:
            for tray_id in targets:
                self.trays[tray_id].leak_status = "Leaking"
        # Flow admits a rack's tasks in creation order: a later task never overtakes an earlier
        # one (equal times run in scheduling order), so the first-created task gets the rack.
        delay = self.rng.uniform(*self.admit_delay_s)
        admit_at = max(created + timedelta(seconds=delay), self._last_admit.get(rack_id, created))
        self._last_admit[rack_id] = admit_at
        self.schedule(admit_at, partial(self._admit, task.id))
        return task

    def _error(
        self,
        operation: Operation,
        outcome: Outcome,
        stage: int | None,
        targets: tuple[str, ...],
        error: str | None,
    ) -> str | None:
        """The failure text: the caller's, or a realistic one naming a tray the stage acts on."""
        if outcome is not Outcome.FAIL or stage is None:
            return None
        if error is not None:
            return truncate_error(error)
        kinds = OPERATIONS[operation].stages[stage - 1]
        candidates = [self.trays[tray_id] for tray_id in targets if self.trays[tray_id].type in kinds]
        return pick_error(self.rng, operation, self.rng.choice(candidates).component_id)

    def _targets(self, rack: Rack, tray_ids: Sequence[str] | None) -> tuple[str, ...]:
        if tray_ids is None:
            return tuple(rack.tray_ids)
        if not tray_ids:
            raise SimulationError("tray_ids must not be empty")
        for tray_id in tray_ids:
            tray = self.trays.get(tray_id)
            if tray is None or tray.rack_id != rack.id:
                raise SimulationError(f"tray {tray_id} is not in rack {rack.id}")
        return tuple(dict.fromkeys(tray_ids))

    def _planned_stage(self, outcome: Outcome, stage: int | None, executable: list[int]) -> int | None:
        if outcome is Outcome.SUCCEED:
            if stage is not None:
                raise SimulationError("fail_stage only applies to outcome fail or stuck")
            return None
        if not executable:
            raise SimulationError("the task targets no component its rule acts on")
        if stage is None:
            return self.rng.choice(executable)
        if stage not in executable:
            raise SimulationError(f"stage {stage} is not an executable stage (executable: {executable})")
        return stage

    def _durations(
        self, operation: Operation, executable: list[int], seconds: float | Sequence[float] | None
    ) -> dict[int, float]:
        if seconds is None:
            return {number: self._stage_sampler(operation) for number in executable}
        if isinstance(seconds, int | float):
            return dict.fromkeys(executable, float(seconds))
        if len(seconds) != len(executable):
            raise SimulationError(f"need {len(executable)} stage durations, got {len(seconds)}")
        return dict(zip(executable, (float(value) for value in seconds), strict=True))

    # --- lifecycle -----------------------------------------------------------------------------

    def _touch(self, task: Task, at: datetime) -> None:
        """Record an update: ``updated`` moves and the row goes to the end of the table."""
        self._rows += 1
        task.row_version = self._rows
        task.updated = at

    def _admit(self, task_id: str, at: datetime) -> None:
        task = self.tasks[task_id]
        if task.status is not TaskStatus.PENDING:
            return  # cancelled before Flow got to it
        holder = self._holder.get(task.rack_id)
        queue = self._waiting.setdefault(task.rack_id, [])
        if holder is None and not queue:
            self._start(task, at)
            return
        blocker = holder if holder is not None else queue[0]
        task.status = TaskStatus.WAITING
        task.message = f"Waiting for conflicting task {blocker}"
        task.queue_expires_at = at + timedelta(seconds=self.queue_timeout_s)
        queue.append(task.id)
        self._touch(task, at)
        self.schedule(task.queue_expires_at, partial(self._expire, task.id))

    def _start(self, task: Task, at: datetime) -> None:
        """Take the rack, resolve the rule, write the initial report and begin running."""
        self._holder[task.rack_id] = task.id
        task.rule_id = self.rule_id(task.site_id, task.operation_code)
        task.report = initial_report(task.operation, task.totals)
        task.status = TaskStatus.RUNNING
        task.message = MSG_RUNNING
        task.started = at
        task.queue_expires_at = None
        self._touch(task, at)
        # The workflow's first BeginStage lands a moment after the initial report.
        delay = self.rng.uniform(*self.first_stage_delay_s)
        self._schedule_next_stage(task, at + timedelta(seconds=delay))

    def _schedule_next_stage(self, task: Task, at: datetime) -> None:
        assert task.report is not None
        after = task.current_stage or 0
        for stage in task.report.stages:
            if stage.number > after and stage.executable:
                self.schedule(at, partial(self._begin_stage, task.id, stage.number))
                return
        self.schedule(at, partial(self._succeed, task.id))

    def _begin_stage(self, task_id: str, number: int, at: datetime) -> None:
        task = self.tasks[task_id]
        if task.status is not TaskStatus.RUNNING or task.report is None:
            return
        stage = task.report.stages[number - 1]
        stage.status = ReportStatus.RUNNING
        stage.started_at = at
        for step in stage.steps:
            if step.status is ReportStatus.PENDING:
                step.status = ReportStatus.RUNNING
                step.started_at = at
        task.current_stage = number
        self._touch(task, at)
        if task.outcome is Outcome.STUCK and number == task.fail_stage:
            return  # never completes: the stuck-task alert's reason to exist
        end = at + timedelta(seconds=task.stage_seconds[number])
        self.schedule(end, partial(self._end_stage, task.id, number))

    def _end_stage(self, task_id: str, number: int, at: datetime) -> None:
        task = self.tasks[task_id]
        if task.status is not TaskStatus.RUNNING or task.current_stage != number or task.report is None:
            return
        stage = task.report.stages[number - 1]
        if task.outcome is Outcome.FAIL and number == task.fail_stage:
            self._fail_stage(task, stage, at)
            return
        for step in stage.steps:
            if step.status is ReportStatus.RUNNING:
                step.status = ReportStatus.COMPLETED
                step.finished_at = at
        stage.status = ReportStatus.COMPLETED
        stage.finished_at = at
        self._touch(task, at)
        self._schedule_next_stage(task, at)

    def _fail_stage(self, task: Task, stage: Stage, at: datetime) -> None:
        """FailStage: running steps fail with one error; the task fails fast."""
        assert task.report is not None
        error = task.error or "stage failed"  # only None if a caller bypassed create_task
        for step in stage.steps:
            if step.status is ReportStatus.RUNNING:
                step.status = ReportStatus.FAILED
                step.finished_at = at
                step.error = error
        stage.status = ReportStatus.FAILED
        stage.finished_at = at
        stage.error = error
        if task.report.error is None:
            task.report.error = error
        task.message = error
        self._finish(task, TaskStatus.FAILED, at)

    def _succeed(self, task_id: str, at: datetime) -> None:
        task = self.tasks[task_id]
        if task.status is not TaskStatus.RUNNING:
            return
        task.message = MSG_SUCCEEDED
        self._apply_power_effect(task)
        self._finish(task, TaskStatus.SUCCEEDED, at)

    def _apply_power_effect(self, task: Task) -> None:
        state = {
            Operation.POWER_ON: "on",
            Operation.POWER_CYCLE: "on",
            Operation.FORCE_POWER_CYCLE: "on",
            Operation.BRING_UP: "on",
            Operation.POWER_OFF: "off",
            Operation.FORCE_POWER_OFF: "off",
            Operation.LEAK_DETECTION: "off",
        }.get(task.operation)
        if state is not None:
            for tray_id in task.tray_ids:
                self.trays[tray_id].power_state = state

    def _finish(self, task: Task, status: TaskStatus, at: datetime) -> None:
        """Make ``task`` terminal, release its rack and promote the oldest waiter."""
        was_holder = self._holder.get(task.rack_id) == task.id
        task.status = status
        task.finished = at
        task.queue_expires_at = None
        self._touch(task, at)
        queue = self._waiting.get(task.rack_id, [])
        if task.id in queue:
            queue.remove(task.id)
        if was_holder:
            del self._holder[task.rack_id]
            if queue:
                self._start(self.tasks[queue.pop(0)], at)

    def _expire(self, task_id: str, at: datetime) -> None:
        """The promoter's queue-timeout sweep for one Waiting task."""
        task = self.tasks[task_id]
        if task.status is not TaskStatus.WAITING or task.queue_expires_at is None:
            return
        if at < task.queue_expires_at:
            return
        task.message = MSG_EXPIRED
        self._finish(task, TaskStatus.TERMINATED, at)

    def cancel(self, task_id: str, at: datetime) -> Task:
        """Best-effort, idempotent cancel; refuses ``Succeeded``/``Failed`` with :class:`CancelRefused`.

        The report is left as it was: no code rewrites it on cancel, so a terminated task can
        keep ``running`` stages (notes §6.3 item 5).
        """
        task = self.tasks[task_id]
        if task.status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED):
            raise CancelRefused(task.status)
        if task.status is TaskStatus.TERMINATED:
            return task
        task.message = MSG_TERMINATED
        self._finish(task, TaskStatus.TERMINATED, at)
        return task


_ERRORS: dict[Operation, tuple[str, ...]] = {
    Operation.FIRMWARE_UPDATE: (
        "firmware update of component {c} failed: image verification failed (checksum mismatch)",
        "firmware update of component {c} timed out after 1800s waiting for BMC to come back",
    ),
    Operation.BRING_UP: (
        "bring-up of component {c} failed: host did not reach Ready within 1200s",
        "bring-up of component {c} failed: DPU provisioning error",
    ),
}
_POWER_ERRORS = (
    "power control of component {c} failed: BMC did not respond within 300s",
    "power control of component {c} failed: Redfish request returned 500 Internal Server Error",
    "power control of component {c} failed: power state did not converge (expected On, got Off)",
)


def pick_error(rng: random.Random, operation: Operation, component_id: str) -> str:
    """A realistic Flow error text for a failure of ``operation`` on ``component_id``."""
    return rng.choice(_ERRORS.get(operation, _POWER_ERRORS)).format(c=component_id)
