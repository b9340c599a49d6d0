"""The simulated NICo world: sites, GB200 NVL72 racks and trays, and Flow's task manager.

The lifecycle engine is a discrete-event simulation driven by a heap of timed events. Nothing
runs in the background: :meth:`World.advance_to` replays every event due up to a point in
simulated time, in time order, each with its own timestamp. That makes 100 racks x 35 trays
cheap (idle racks cost nothing) and tests exact (a :class:`~.clock.ManualClock` step reveals
exactly the transitions Flow would have made in that interval).

What a task goes through mirrors Flow's task manager on NICo v2.0 (docs/simulator.md cites the
Go source for each point):

1. A submission is checked against the rack's *pending and running* tasks with Flow's built-in
   conflict rule (:func:`conflicts`): conflicts are per operation and component overlap, so
   several tasks can run on one rack. On a conflict a submission with the *reject* strategy
   (every REST submission) creates no task at all; one with the *queue* strategy (leak detection,
   queue-policy schedules) becomes ``Waiting``, at most 5 per rack.
2. Otherwise it is created ``Pending`` and its workflow starts a moment later: ``Running``, the
   initial report, then stage by stage BeginStage and CompleteStage or FailStage (fail-fast:
   later stages stay ``pending``). A stage whose steps are all skipped is begun and completed at
   once. A *stuck* task never leaves its stage.
3. ``Succeeded`` / ``Failed`` / ``Terminated``. The promoter then processes the rack: waiting tasks
   past their queue expiry become ``Terminated`` ("Expired: queue timeout reached"), and the
   oldest waiters that no longer conflict are promoted (``Pending``, "Promoted: ..."). The
   promoter also sweeps every rack every 5 minutes, so expiry lands up to 5 minutes late.

Flow never deletes a task: a rack's task count only grows.
"""

from __future__ import annotations

import heapq
import random
import string
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from functools import partial

from exporter.models import ComponentType, ReportStatus, TaskStatus
from exporter.simulator.inventory import Rack, Site, Tray, make_tray, nvl72_layout
from exporter.simulator.operations import OPERATIONS, Operation, TaskType
from exporter.simulator.report import (
    Layout,
    Report,
    Stage,
    StepFailure,
    failure_message,
    initial_report,
    stage_error,
    truncate_error,
)

# flow/internal/task/message/message.go and the literal messages beside it.
MSG_WAITING = "Queued: waiting for rack to become available"
MSG_PENDING = "Pending"
MSG_PROMOTED = "Promoted: no conflicting active tasks"
MSG_RUNNING = "Running"
MSG_SUCCEEDED = "Succeeded"
MSG_CANCELLED = "Cancelled by user"
MSG_EXPIRED = "Expired: queue timeout reached"

# flow/internal/task/manager/manager.go: defaultMaxWaitingPerRack, defaultQueueTimeout.
MAX_WAITING_PER_RACK = 5
DEFAULT_QUEUE_TIMEOUT_S = 3600.0
# flow/internal/task/conflict/promoter.go: defaultSweepInterval.
PROMOTER_SWEEP_S = 300.0


class Outcome(StrEnum):
    """The planned end of a task: it succeeds, fails at a stage, or hangs in a stage forever."""

    SUCCEED = "succeed"
    FAIL = "fail"
    STUCK = "stuck"


class SimulationError(ValueError):
    """A request to the world that cannot be honoured (unknown rack, bad stage number, ...)."""


class Rejected(SimulationError):
    """Flow refused a submission (a conflict under the reject strategy, or a full wait queue).

    No task row exists. ``reason`` is Flow's own error text, which REST callers never see (they
    get the handler's fixed 500).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CancelRefused(SimulationError):
    """Cancel of a task that already ``Succeeded`` or ``Failed``: Flow's plain error text."""

    def __init__(self, task_id: str, status: TaskStatus) -> None:
        flow_status = "completed" if status is TaskStatus.SUCCEEDED else "failed"
        super().__init__(f"task {task_id} cannot be cancelled (status: {flow_status})")
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
    started: datetime | None = None
    finished: datetime | None = None
    updated: datetime | None = None
    report: Report | None = None
    queue_expires_at: datetime | None = None
    current_stage: int | None = None
    # Position in the table's physical order: every update writes a new tuple at the end (MVCC).
    row_version: int = 0
    totals: dict[ComponentType, int] = field(default_factory=dict)
    # Who submitted it: "rest", "leak_detection", "schedule:<name>", "history".
    source: str = "rest"
    # The stages of the operation rule it runs (None: the operation's built-in default rule).
    layout: Layout | None = None
    # Where and how its planned failure happens; ``error`` is its cause (None: not failing).
    failure: StepFailure | None = None

    @property
    def task_type(self) -> TaskType:
        return OPERATIONS[self.operation].task_type

    @property
    def operation_code(self) -> str:
        return OPERATIONS[self.operation].code

    @property
    def rule_id(self) -> None:
        """Always null: Flow never persists ``applied_rule_id`` (see docs/simulator.md)."""
        return None


def _kinds(task: Task, world: World) -> set[ComponentType]:
    return {world.trays[tray_id].type for tray_id in task.tray_ids}


def conflicts(a: Task, b: Task, world: World) -> bool:
    """Flow's built-in conflict rule between two tasks of one rack (either direction).

    power with a power shelf blocks all power and firmware work; Compute / NVSwitch power and
    firmware conflict only when they share a component; firmware conflicts with overlapping
    firmware; bring-up is exclusive.
    """
    return _one_way(a, b, world) or _one_way(b, a, world)


def _one_way(a: Task, b: Task, world: World) -> bool:
    power, firmware = TaskType.POWER_CONTROL, TaskType.FIRMWARE_CONTROL
    if a.task_type is TaskType.BRING_UP:
        return True
    kinds_a, kinds_b = _kinds(a, world), _kinds(b, world)
    overlap = bool(set(a.tray_ids) & set(b.tray_ids))
    if a.task_type is power and ComponentType.POWERSHELF in kinds_a and b.task_type in (power, firmware):
        return True
    for kind in (ComponentType.COMPUTE, ComponentType.NVSWITCH):
        shared_kind = kind in kinds_a and kind in kinds_b
        if a.task_type is power and b.task_type in (power, firmware) and shared_kind and overlap:
            return True
    return a.task_type is firmware and b.task_type is firmware and overlap


@dataclass(order=True)
class _Event:
    at: datetime
    seq: int
    action: Callable[[datetime], None] = field(compare=False)


@dataclass(frozen=True)
class Rejection:
    """A submission Flow refused: kept for the ground truth (it is no task)."""

    at: datetime
    rack_id: str
    operation: Operation
    source: str
    reason: str


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
        admit_delay_s: tuple[float, float] = (1.0, 3.0),
        first_stage_delay_s: tuple[float, float] = (0.2, 1.0),
        stage_sampler: Callable[[Operation], float] | None = None,
    ) -> None:
        self.rng = rng
        self.now = start
        self.admit_delay_s = admit_delay_s
        self.first_stage_delay_s = first_stage_delay_s
        # Which operation rule a submission runs (site, rack, operation -> its stages; None: the
        # built-in default). Flow's resolver; the Task Run manager answers it on NICo main.
        self.layout_of: Callable[[str, str, Operation], Layout | None] = lambda _s, _r, _o: None
        self._stage_sampler = stage_sampler or (lambda _op: rng.uniform(5.0, 60.0))
        self._stage_factor: Callable[[Task, Stage, datetime], float] = lambda _task, _stage, _at: 1.0
        self.sites: dict[str, Site] = {}
        self.racks: dict[str, Rack] = {}
        self.trays: dict[str, Tray] = {}
        self.tasks: dict[str, Task] = {}
        self.rejections: list[Rejection] = []
        # Tasks removed by the control API's "restore" (not NICo behaviour): kept for the truth.
        self.forgotten: dict[str, Task] = {}
        self._tasks_by_rack: dict[str, list[str]] = {}
        self._tasks_by_tray: dict[str, list[str]] = {}
        self._waiting: dict[str, list[str]] = {}  # rack id -> Waiting task ids, oldest first
        self._holding: dict[str, set[str]] = {}  # rack id -> Pending and Running task ids
        self._heap: list[_Event] = []
        self._seq = 0
        self._rows = 0
        # The promoter's ticker: every rack every 5 minutes, from a random phase.
        self.schedule(start + timedelta(seconds=rng.uniform(0, PROMOTER_SWEEP_S)), self._sweep)

    def set_stage_sampler(self, sampler: Callable[[Operation], float]) -> None:
        """Where stage durations come from when a task is created without explicit ones."""
        self._stage_sampler = sampler

    def set_stage_factor(self, factor: Callable[[Task, Stage, datetime], float]) -> None:
        """What a stage's drawn duration is multiplied by when it begins (a scenario's slow-down)."""
        self._stage_factor = factor

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

    def forget(self, task_id: str) -> None:
        """Drop a task as a Flow database restored from an older backup would (not NICo behaviour:
        Flow never deletes tasks). ``GET /task/{id}`` then answers Flow's "no rows" 500."""
        task = self.tasks.get(task_id)
        if task is None:
            raise SimulationError(f"unknown task {task_id}")
        if not task.status.is_terminal:
            raise SimulationError(f"task {task_id} is {task.status.value}: only finished tasks are forgotten")
        del self.tasks[task_id]
        self.forgotten[task_id] = task
        self._tasks_by_rack[task.rack_id].remove(task_id)
        for tray_id in task.tray_ids:
            self._tasks_by_tray[tray_id].remove(task_id)

    # --- submission ----------------------------------------------------------------------------

    def submit(
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
        queue_timeout_s: float | None = None,
        source: str = "rest",
    ) -> Task:
        """Submit a task now, as Flow's ``SubmitTask`` does; raises :class:`Rejected` on a refusal.

        ``queue_timeout_s`` None is the reject strategy (every REST submission); a number is the
        queue strategy with that timeout (0: Flow's default of 1 h). ``tray_ids`` None targets
        every tray of the rack. ``fail_stage`` defaults to a random stage that has work.
        ``stage_seconds`` is one duration for every stage with work, one per such stage, or None
        to draw from the scenario's ranges.
        """
        rack = self.racks.get(rack_id)
        if rack is None or rack.site_id != site_id:
            raise SimulationError(f"rack {rack_id} is not in site {site_id}")
        targets = self._targets(rack, tray_ids)
        totals: dict[ComponentType, int] = {}
        for tray_id in targets:
            kind = self.trays[tray_id].type
            totals[kind] = totals.get(kind, 0) + 1
        layout = self.layout_of(site_id, rack_id, operation)
        working = [
            stage.number for stage in initial_report(operation, totals, layout).stages if stage.has_work
        ]
        planned_stage = self._planned_stage(outcome, fail_stage, working)
        failure = self._failure(operation, outcome, planned_stage, targets, error, layout)
        task = Task(
            id="",
            site_id=site_id,
            rack_id=rack_id,
            tray_ids=targets,
            operation=operation,
            description=description,
            created=self.now,
            outcome=outcome,
            fail_stage=planned_stage,
            error=failure.cause if failure else None,
            stage_seconds=self._durations(operation, working, stage_seconds),
            totals=totals,
            source=source,
            layout=layout,
            failure=failure,
        )
        blocking = any(conflicts(task, self.tasks[other], self) for other in self._holding.get(rack_id, ()))
        queue = self._waiting.setdefault(rack_id, [])
        if blocking:
            if queue_timeout_s is None:
                self._reject(task, f"rack {rack_id} already has a conflicting task")
            if len(queue) >= MAX_WAITING_PER_RACK:
                self._reject(
                    task,
                    f"rack {rack_id} waiting queue is full ({len(queue)}/{MAX_WAITING_PER_RACK} tasks)",
                )
        task.id = self.new_id()
        self.tasks[task.id] = task
        self._tasks_by_rack[rack_id].append(task.id)
        for tray_id in targets:
            self._tasks_by_tray[tray_id].append(task.id)
        if blocking:
            task.status, task.message = TaskStatus.WAITING, MSG_WAITING
            timeout = queue_timeout_s if queue_timeout_s and queue_timeout_s > 0 else DEFAULT_QUEUE_TIMEOUT_S
            task.queue_expires_at = self.now + timedelta(seconds=timeout)
            queue.append(task.id)
        else:
            self._hold(task)
        self._touch(task, self.now)
        return task

    def _reject(self, task: Task, reason: str) -> None:
        self.rejections.append(Rejection(self.now, task.rack_id, task.operation, task.source, reason))
        raise Rejected(reason)

    def _hold(self, task: Task) -> None:
        """Pending: the task holds its components; its workflow starts a moment later."""
        self._holding.setdefault(task.rack_id, set()).add(task.id)
        delay = self.rng.uniform(*self.admit_delay_s)
        self.schedule(self.now + timedelta(seconds=delay), partial(self._start, task.id))

    def record_history(
        self,
        rack_id: str,
        operation: Operation,
        *,
        description: str,
        created: datetime,
        outcome: Outcome,
        stage_seconds: float,
        tray_ids: Sequence[str] | None = None,
    ) -> Task:
        """A task that ran and finished before the simulation starts, written in one go.

        For realistic history (hundreds of finished tasks per rack) without replaying events:
        the report is the one the workflow would have left. ``created`` must not be before the
        previous history task of the rack finished, so rows stay in the order Flow wrote them.
        """
        rack = self.racks[rack_id]
        targets = self._targets(rack, tray_ids)
        totals: dict[ComponentType, int] = {}
        for tray_id in targets:
            totals[self.trays[tray_id].type] = totals.get(self.trays[tray_id].type, 0) + 1
        report = initial_report(operation, totals)
        working = [stage.number for stage in report.stages if stage.has_work]
        fail_at = self.rng.choice(working) if outcome is Outcome.FAIL and working else None
        started = created + timedelta(seconds=self.rng.uniform(*self.admit_delay_s))
        at = started + timedelta(seconds=self.rng.uniform(*self.first_stage_delay_s))
        failure: StepFailure | None = None
        for stage in report.stages:
            seconds = stage_seconds if stage.has_work else 0.0
            self._begin(stage, at)
            at += timedelta(seconds=seconds)
            if stage.number == fail_at:
                failure = pick_failure(
                    self.rng, operation, self._failing_component(operation, fail_at, targets)
                )
                break
            self._complete(stage, at)
        task_id = self.new_id()  # drawn after the failure, as ever: seeded histories stay the same
        message = MSG_SUCCEEDED if failure is None else self._fail(report, stage, failure, task_id, at)
        task = Task(
            id=task_id,
            site_id=rack.site_id,
            rack_id=rack_id,
            tray_ids=targets,
            operation=operation,
            description=description,
            created=created,
            outcome=outcome,
            fail_stage=fail_at,
            error=failure.cause if failure else None,
            stage_seconds={number: stage_seconds for number in working},
            status=TaskStatus.FAILED if failure else TaskStatus.SUCCEEDED,
            message=message,
            started=started,
            finished=at,
            report=report,
            totals=totals,
            source="history",
            failure=failure,
        )
        self.tasks[task.id] = task
        self._tasks_by_rack[rack_id].append(task.id)
        for tray_id in targets:
            self._tasks_by_tray[tray_id].append(task.id)
        self._touch(task, at)
        return task

    def _failure(
        self,
        operation: Operation,
        outcome: Outcome,
        stage: int | None,
        targets: tuple[str, ...],
        error: str | None,
        layout: Layout | None = None,
    ) -> StepFailure | None:
        """How the failing step fails: with the caller's error as its activity's, or a realistic
        failure naming a tray."""
        if outcome is not Outcome.FAIL or stage is None:
            return None
        if error is not None:
            return StepFailure(error, activity=_MAIN_ACTIVITY[OPERATIONS[operation].task_type])
        return pick_failure(self.rng, operation, self._failing_component(operation, stage, targets, layout))

    def _failing_component(
        self, operation: Operation, stage: int, targets: tuple[str, ...], layout: Layout | None = None
    ) -> Tray:
        kinds = (layout or OPERATIONS[operation].stages)[stage - 1]
        candidates = [self.trays[tray_id] for tray_id in targets if self.trays[tray_id].type in kinds]
        return self.rng.choice(candidates)

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

    def _planned_stage(self, outcome: Outcome, stage: int | None, working: list[int]) -> int | None:
        if outcome is Outcome.SUCCEED:
            if stage is not None:
                raise SimulationError("fail_stage only applies to outcome fail or stuck")
            return None
        if not working:
            raise SimulationError("the task targets no component its rule acts on")
        if stage is None:
            return self.rng.choice(working)
        if stage not in working:
            raise SimulationError(f"stage {stage} has no work to fail at (stages with work: {working})")
        return stage

    def _durations(
        self, operation: Operation, working: list[int], seconds: float | Sequence[float] | None
    ) -> dict[int, float]:
        if seconds is None:
            return {number: self._stage_sampler(operation) for number in working}
        if isinstance(seconds, int | float):
            return dict.fromkeys(working, float(seconds))
        if len(seconds) != len(working):
            raise SimulationError(f"need {len(working)} stage durations, got {len(seconds)}")
        return dict(zip(working, (float(value) for value in seconds), strict=True))

    # --- lifecycle -----------------------------------------------------------------------------

    def _touch(self, task: Task, at: datetime) -> None:
        """Record an update: ``updated`` moves and the row goes to the end of the table."""
        self._rows += 1
        task.row_version = self._rows
        task.updated = at

    def _start(self, task_id: str, at: datetime) -> None:
        """The workflow starts: ``Running``, the initial report, then the first BeginStage."""
        task = self.tasks.get(task_id)
        if task is None or task.status is not TaskStatus.PENDING:
            return  # cancelled before the workflow got to it
        task.report = initial_report(task.operation, task.totals, task.layout)
        task.status = TaskStatus.RUNNING
        task.message = MSG_RUNNING
        task.started = at
        self._touch(task, at)
        delay = self.rng.uniform(*self.first_stage_delay_s)
        self.schedule(at + timedelta(seconds=delay), partial(self._begin_stage, task.id, 1))

    @staticmethod
    def _begin(stage: Stage, at: datetime) -> None:
        stage.status = ReportStatus.RUNNING
        stage.started_at = at
        for step in stage.steps:
            if step.status is ReportStatus.PENDING:
                step.status = ReportStatus.RUNNING
                step.started_at = at

    @staticmethod
    def _complete(stage: Stage, at: datetime) -> None:
        for step in stage.steps:
            if step.status is ReportStatus.RUNNING:
                step.status = ReportStatus.COMPLETED
                step.finished_at = at
        stage.status = ReportStatus.COMPLETED
        stage.finished_at = at

    @staticmethod
    def _fail(report: Report, stage: Stage, failure: StepFailure, task_id: str, at: datetime) -> str:
        """FailStage: running steps fail with one error; returns the task's failure message.

        The error names the failing component's type: executeGenericStageParallel returns the
        first failed child's error (helpers.go:339-344), and only the failing one fails.
        """
        running = [s.component_type for s in stage.steps if s.status is ReportStatus.RUNNING]
        kind = failure.component_type if failure.component_type in running else next(iter(running), None)
        error = stage_error(task_id, stage.number, kind.value if kind else "Unknown", failure)
        for step in stage.steps:
            if step.status is ReportStatus.RUNNING:
                step.status = ReportStatus.FAILED
                step.finished_at = at
                step.error = truncate_error(error)
        stage.status = ReportStatus.FAILED
        stage.finished_at = at
        stage.error = truncate_error(error)
        if report.error is None:
            report.error = stage.error
        return failure_message(f"stage {stage.number} failed: {error}")

    def _begin_stage(self, task_id: str, number: int, at: datetime) -> None:
        task = self.tasks.get(task_id)
        if task is None or task.status is not TaskStatus.RUNNING or task.report is None:
            return
        if number > len(task.report.stages):
            self._succeed(task, at)
            return
        stage = task.report.stages[number - 1]
        self._begin(stage, at)
        task.current_stage = number
        self._touch(task, at)
        if not stage.has_work:
            # No child workflows to run: CompleteStage follows BeginStage straight away.
            self.schedule(at, partial(self._end_stage, task.id, number))
            return
        if task.outcome is Outcome.STUCK and number == task.fail_stage:
            return  # never completes: the stuck-task alert's reason to exist
        # A slow-down applies to stages that begin after it: the stage's duration is fixed now.
        task.stage_seconds[number] *= self._stage_factor(task, stage, at)
        end = at + timedelta(seconds=task.stage_seconds[number])
        self.schedule(end, partial(self._end_stage, task.id, number))

    def _end_stage(self, task_id: str, number: int, at: datetime) -> None:
        task = self.tasks.get(task_id)
        if task is None or task.status is not TaskStatus.RUNNING or task.report is None:
            return
        if task.current_stage != number:
            return
        stage = task.report.stages[number - 1]
        if task.outcome is Outcome.FAIL and number == task.fail_stage:
            failure = task.failure or StepFailure(task.error or "stage failed", activity=None)
            task.message = self._fail(task.report, stage, failure, task.id, at)
            self._finish(task, TaskStatus.FAILED, at)
            return
        self._complete(stage, at)
        self._touch(task, at)
        self._begin_stage(task.id, number + 1, at)

    def _succeed(self, task: Task, at: datetime) -> None:
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
        """Make ``task`` terminal, release what it held and notify the promoter for its rack."""
        task.status = status
        task.finished = at
        self._touch(task, at)
        self._holding.get(task.rack_id, set()).discard(task.id)
        queue = self._waiting.get(task.rack_id, [])
        if task.id in queue:
            queue.remove(task.id)
        self._process_rack(task.rack_id, at)

    # --- the promoter --------------------------------------------------------------------------

    def _sweep(self, at: datetime) -> None:
        for rack_id in [r for r, queue in self._waiting.items() if queue]:
            self._process_rack(rack_id, at)
        self.schedule(at + timedelta(seconds=PROMOTER_SWEEP_S), self._sweep)

    def _process_rack(self, rack_id: str, at: datetime) -> None:
        """``processRack``: expire overdue waiters, then promote in FIFO order until a conflict."""
        queue = self._waiting.get(rack_id, [])
        for task_id in list(queue):
            task = self.tasks[task_id]
            if task.queue_expires_at is not None and at > task.queue_expires_at:
                queue.remove(task_id)
                task.status, task.message, task.finished = TaskStatus.TERMINATED, MSG_EXPIRED, at
                self._touch(task, at)
        holders = [self.tasks[task_id] for task_id in self._holding.get(rack_id, ())]
        for task_id in list(queue):
            task = self.tasks[task_id]
            if any(conflicts(task, other, self) for other in holders):
                break  # strict FIFO: the head of the queue blocks those behind it
            queue.remove(task_id)
            task.status, task.message = TaskStatus.PENDING, MSG_PROMOTED
            self._touch(task, at)
            holders.append(task)
            self._hold(task)

    # --- cancel --------------------------------------------------------------------------------

    def cancel(self, task_id: str, at: datetime) -> Task:
        """``CancelTask``: idempotent for ``Terminated``, refused for ``Succeeded``/``Failed``.

        The report is left as it was: no code rewrites it on cancel, so a terminated task keeps
        its ``running`` stage.
        """
        task = self.tasks[task_id]
        if task.status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED):
            raise CancelRefused(task.id, task.status)
        if task.status is TaskStatus.TERMINATED:
            return task
        task.message = MSG_CANCELLED
        self._finish(task, TaskStatus.TERMINATED, at)
        return task


# The activity a stage's main operation runs, by task type (resolver_defaults.go: power rules run
# PowerControl, firmware rules FirmwareControl, most bring-up stages PowerControl).
_MAIN_ACTIVITY: dict[TaskType, str] = {
    TaskType.POWER_CONTROL: "PowerControl",
    TaskType.FIRMWARE_CONTROL: "FirmwareControl",
    TaskType.BRING_UP: "PowerControl",
}
# Failures as the component managers and workflow actions word them, each naming its component
# ({c}). The texts after "failed for {c}: " come from NICo core and the hardware: invented.
_RPC_DEADLINE = "rpc error: code = DeadlineExceeded desc = context deadline exceeded"
_FAILURES: dict[Operation, tuple[StepFailure, ...]] = {
    Operation.FIRMWARE_UPDATE: (
        # The firmware poll's own error (workflow/actions.go:278-282): Go prints a []string.
        StepFailure("firmware update failed for components: [{c}]", activity=None),
        # The activity refused the update (componentmanager/*/nico/nico.go: "firmware update
        # failed for %s: %s", e.g. nvswitch :373), wrapped by the action (actions.go:222-225).
        StepFailure(
            "firmware update failed for {c}: image verification failed (checksum mismatch)",
            activity="FirmwareControl",
            context="failed to start firmware update: ",
        ),
    ),
    Operation.BRING_UP: (
        # compute/nico/nico.go:577 wraps the gRPC error with %w: the SDK records "wrapError".
        StepFailure(
            f"BringUpControl failed for {{c}}: {_RPC_DEADLINE}",
            activity="BringUpControl",
            cause_type="wrapError",
            inner=_RPC_DEADLINE,
            inner_type="Error",
        ),
        StepFailure("power control failed for {c}: host did not reach Ready within 1200s"),
    ),
}
# componentmanager/{compute,nvswitch,powershelf}/nico/nico.go:260, :257, :249.
_POWER_FAILURES = (
    StepFailure("power control failed for {c}: BMC did not respond within 300s"),
    StepFailure("power control failed for {c}: Redfish request returned 500 Internal Server Error"),
    StepFailure("power control failed for {c}: power state did not converge (expected On, got Off)"),
)


def pick_failure(rng: random.Random, operation: Operation, tray: Tray) -> StepFailure:
    """A realistic failure of ``operation`` on ``tray``'s component, naming it."""
    template = rng.choice(_FAILURES.get(operation, _POWER_FAILURES))
    return replace(
        template,
        cause=template.cause.format(c=tray.component_id),
        component_type=tray.type,
    )
