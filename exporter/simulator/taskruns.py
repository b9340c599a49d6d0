"""Flow's operation runs (REST "Task Runs") and the operation rules a site lists, on ``main``.

Transcribed from ``rest-api/flow/internal/operationrun/`` at ``main`` (docs/simulator.md, *Task
Runs and Operation Rules*, cites file and line for each point). NICo v2.0 has none of this; the
simulator serves it only with ``SimulatorConfig.task_runs``.

- **Create** (``manager/lifecycle.go``): the planner freezes the run's targets at once: every rack
  of the site (the default scope, at most 100), the percentage selector's share by
  ``sha256(seed:rackId)`` order, ordered again by the random ordering's seed, then cut into phases
  (``planner/planner.go``). The run starts ``Pending``.
- **The dispatcher** (``manager/dispatcher/``) polls every 10 s: for each Pending/Running run
  (oldest ``updated`` first, 10 per poll) it copies child task status into the current phase's
  targets, then decides, in this order: terminal outcome, conflict-retry timeout
  (``ConflictRetryTimeout``), safety gates (``SafetyGate``), phase gate (advance or
  ``PhaseGate``), else claim up to ``maxConcurrentTargets`` minus the active ones and submit one
  firmware task per claimed rack (reject strategy; a rack conflict blocks the target with
  exponential backoff).
- **Manual controls** (``manager/manual_controls.go``): pause, resume, advance, cancel (which
  best-effort cancels the current phase's child tasks and leaves the targets as they were).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from exporter.models import ComponentType, TaskStatus, format_timestamp
from exporter.simulator.operations import OPERATIONS, Operation, TaskType
from exporter.simulator.report import Layout
from exporter.simulator.world import CancelRefused, Outcome, Rejected, World

# manager/dispatcher/config.go:9-11: defaultPollInterval, defaultFetchBatch, defaultClaimLease.
POLL_INTERVAL_S = 10.0
FETCH_BATCH = 10
CLAIM_LEASE_S = 30.0
# manager/planner/planner.go:68: DefaultMaxCandidateScopeTargets.
MAX_CANDIDATE_TARGETS = 100
# converter/protobuf/operationrun_converter.go:454-474: conflictRetryDefaultsFor.
DEFAULT_RETRY_TIMEOUT_S = 3600.0
DEFAULT_INITIAL_RETRY_DELAY_S = 30.0
DEFAULT_MAX_RETRY_DELAY_S = 300.0
# No clock skew: how the truth renders (a site's skew shifts what its REST calls render).
_NO_SKEW = timedelta(0)


class RunStatus(StrEnum):
    """``model.TaskRunStatus`` (``api/pkg/api/model/taskrun.go:31-40``)."""

    PENDING = "Pending"
    RUNNING = "Running"
    PAUSED = "Paused"
    COMPLETED = "Completed"
    CANCELLED = "Cancelled"
    FAILED = "Failed"
    COMPLETED_WITH_FAILURES = "CompletedWithFailures"

    @property
    def is_terminal(self) -> bool:
        return self in (
            RunStatus.COMPLETED,
            RunStatus.COMPLETED_WITH_FAILURES,
            RunStatus.CANCELLED,
            RunStatus.FAILED,
        )

    @property
    def flow(self) -> str:
        """Flow's own spelling (``operationrun.go:25-36``), as error texts show it."""
        return {RunStatus.COMPLETED_WITH_FAILURES: "completed_with_failures"}.get(self, self.value.lower())

    def message(self) -> str:
        """``OperationRunStatus.Message`` (``operationrun.go:47-66``)."""
        return {
            RunStatus.FAILED: "operation run failed",
            RunStatus.COMPLETED: "operation run completed",
            RunStatus.COMPLETED_WITH_FAILURES: "operation run completed with failed targets",
        }[self]


class RunReason(StrEnum):
    """``model.TaskRunStatusReason`` (``model/taskrun.go:99-106``)."""

    NONE = "None"
    OPERATOR_PAUSED = "OperatorPaused"
    PHASE_GATE = "PhaseGate"
    SAFETY_GATE = "SafetyGate"
    CONFLICT_RETRY_TIMEOUT = "ConflictRetryTimeout"

    @property
    def flow(self) -> str:
        return {
            RunReason.NONE: "none",
            RunReason.OPERATOR_PAUSED: "operator_paused",
            RunReason.PHASE_GATE: "phase_gate",
            RunReason.SAFETY_GATE: "safety_gate",
            RunReason.CONFLICT_RETRY_TIMEOUT: "conflict_retry_timeout",
        }[self]


class TargetStatus(StrEnum):
    """``model.TaskRunTargetStatus`` (``model/taskrun.go:134-144``)."""

    PENDING = "Pending"
    BLOCKED = "Blocked"
    SUBMITTED = "Submitted"
    CLAIMED = "Claimed"
    COMPLETED = "Completed"
    FAILED = "Failed"
    TERMINATED = "Terminated"
    SKIPPED = "Skipped"

    @property
    def is_terminal(self) -> bool:
        return self in (
            TargetStatus.COMPLETED,
            TargetStatus.FAILED,
            TargetStatus.TERMINATED,
            TargetStatus.SKIPPED,
        )


def target_status_of(task: TaskStatus) -> TargetStatus:
    """``OperationRunTargetStatusFromTaskStatus`` (``operationrun.go:127-140``)."""
    return {
        TaskStatus.SUCCEEDED: TargetStatus.COMPLETED,
        TaskStatus.FAILED: TargetStatus.FAILED,
        TaskStatus.TERMINATED: TargetStatus.TERMINATED,
    }.get(task, TargetStatus.SUBMITTED)


class RunError(Exception):
    """A Flow gRPC error of an operation-run call: ``code`` and Flow's message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid_state(detail: str) -> RunError:
    # manual_controls.go:373-378 (invalidStateError); server_impl_operation_run.go:69-71.
    return RunError(
        "FailedPrecondition", f"operation run is not in a valid state for the requested operation: {detail}"
    )


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SafetyGate:
    """``FailureRateGate`` / ``FailureCountGate`` (``configuration.go:147-212``)."""

    kind: str  # "failure_rate" | "failure_count"
    threshold: int
    scope: str = "current_phase"  # "current_phase" | "cumulative_run"

    def tripped(self, failed: int, total: int) -> bool:
        if self.kind == "failure_rate":
            return total > 0 and failed * 100 >= self.threshold * total
        return failed >= self.threshold


@dataclass(frozen=True)
class PhasePlan:
    """``EqualPhases`` / ``PercentagePhases`` / ``CountPhases`` (``configuration.go:406-493``)."""

    kind: str  # "equal" | "percentage" | "count"
    values: tuple[int, ...]

    def counts(self, total: int) -> list[int]:
        """``phaseTargetCounts`` (``planner/planner.go:348-428``)."""
        if self.kind == "equal":
            n = self.values[0]
            return [_ceil_div(total * (i + 1), n) - _ceil_div(total * i, n) for i in range(n)]
        if self.kind == "percentage":
            out, acc, last = [], 0, 0
            for pct in self.values:
                acc += pct
                end = _ceil_div(total * acc, 100)
                out.append(end - last)
                last = end
            return out
        assigned, out = 0, []
        for count in self.values:
            assigned += count
            if assigned > total:
                raise RunError(
                    "Internal",
                    "plan operation run targets: count phase counts exceed selected target count",
                )
            out.append(count)
        if assigned < total:
            out.append(total - assigned)
        return out

    @property
    def api_total(self) -> int:
        """``operationRunPhaseCount`` (``operationrun_converter.go:1431-1461``): count plans say
        one more than they list (the remainder phase), whether or not it materialises."""
        if self.kind == "equal":
            return self.values[0]
        return len(self.values) + (1 if self.kind == "count" else 0)


def _ceil_div(n: int, d: int) -> int:
    return 0 if d <= 0 else (n + d - 1) // d


@dataclass(frozen=True)
class RunOptions:
    max_concurrent_targets: int
    gates: tuple[SafetyGate, ...] = ()
    phase_plan: PhasePlan | None = None
    auto_advance: bool = False
    retry_timeout_s: float = DEFAULT_RETRY_TIMEOUT_S
    initial_retry_delay_s: float = DEFAULT_INITIAL_RETRY_DELAY_S
    max_retry_delay_s: float = DEFAULT_MAX_RETRY_DELAY_S
    ordering_seed: str = ""


@dataclass
class ChildPlan:
    """Not NICo: how the simulation makes this run's child tasks end (a gate needs failures)."""

    failure_rate: float = 0.0
    fail_phases: tuple[int, ...] = ()
    stage_seconds: float | None = None


# --- state ---------------------------------------------------------------------------------------


@dataclass
class RunTarget:
    id: str
    run_id: str
    rack_id: str
    sequence_index: int
    phase_index: int
    created: datetime
    updated: datetime
    status: TargetStatus = TargetStatus.PENDING
    message: str = ""
    task_id: str | None = None
    retry_after: datetime | None = None
    blocked_since: datetime | None = None
    attempts: int = 0
    last_delay_s: int = 0

    def as_json(self, skew: timedelta = _NO_SKEW) -> dict[str, Any]:
        """``APITaskRunTarget`` (``model/taskrun.go:332-343``); ``skew``: the site's clock."""
        return {
            "id": self.id,
            "runId": self.run_id,
            "rackId": self.rack_id,
            "sequenceIndex": self.sequence_index,
            "phaseIndex": self.phase_index,
            "taskId": self.task_id,
            "status": self.status.value,
            "message": self.message,
            "created": format_timestamp(self.created + skew, fraction=True),
            "updated": format_timestamp(self.updated + skew, fraction=True),
        }

    def _clear_retry(self) -> None:
        self.retry_after = None
        self.blocked_since = None
        self.attempts = 0
        self.last_delay_s = 0


@dataclass
class TaskRun:
    id: str
    site_id: str
    name: str
    description: str
    version: str
    options: RunOptions
    created: datetime
    updated: datetime
    targets: list[RunTarget]
    child: ChildPlan
    status: RunStatus = RunStatus.PENDING
    reason: RunReason = RunReason.NONE
    message: str = ""
    current_phase: int = 0
    started: datetime | None = None
    finished: datetime | None = None
    rule_id: str | None = None

    # operationrun.go:200-253
    def start(self, now: datetime, message: str) -> None:
        if self.status is RunStatus.PENDING and self.started is None:
            self.started = now
        self.status, self.reason = RunStatus.RUNNING, RunReason.NONE
        if message:
            self.message = message

    def pause(self, reason: RunReason, message: str) -> None:
        self.status, self.reason, self.message = RunStatus.PAUSED, reason, message

    def finish(self, status: RunStatus, now: datetime, message: str) -> None:
        self.status, self.reason, self.message, self.finished = status, RunReason.NONE, message, now

    @property
    def total_phases(self) -> int:
        """``GetTargetPhaseAggregate``'s ``MAX(phase_index) + 1`` (``store/dispatch.go:119``)."""
        return max((t.phase_index for t in self.targets), default=-1) + 1

    def phase_targets(self, phase: int) -> list[RunTarget]:
        return [t for t in self.targets if t.phase_index == phase]

    def as_json(self, *, stats: bool = False, skew: timedelta = _NO_SKEW) -> dict[str, Any]:
        """``APITaskRun`` (``model/taskrun.go:204-222``); ``stats`` only on request; ``skew``: the
        site's clock (its database and Flow write every timestamp)."""
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "operationType": "FirmwareControl",
            "operationCode": OPERATIONS[Operation.FIRMWARE_UPDATE].code,
            "status": self.status.value,
            "statusReason": self.reason.value,
            "statusMessage": self.message,
            "totalPhases": self.options.phase_plan.api_total if self.options.phase_plan else 0,
            "created": format_timestamp(self.created + skew, fraction=True),
            "updated": format_timestamp(self.updated + skew, fraction=True),
            "started": None if self.started is None else format_timestamp(self.started + skew, fraction=True),
            "finished": None
            if self.finished is None
            else format_timestamp(self.finished + skew, fraction=True),
        }
        if stats:
            out["stats"] = progress_stats(self)
        return out


@dataclass
class PhaseStats:
    """``PhaseStats`` (``stats.go:15-29``)."""

    phase_index: int = 0
    selected: int = 0
    completed: int = 0
    failed: int = 0
    terminated: int = 0
    skipped: int = 0

    def add(self, target: RunTarget) -> None:
        self.phase_index = max(self.phase_index, target.phase_index)
        self.selected += 1
        if target.status is TargetStatus.COMPLETED:
            self.completed += 1
        elif target.status is TargetStatus.FAILED:
            self.failed += 1
        elif target.status is TargetStatus.TERMINATED:
            self.terminated += 1
        elif target.status is TargetStatus.SKIPPED:
            self.skipped += 1

    def merged(self, other: PhaseStats) -> PhaseStats:
        return PhaseStats(
            max(self.phase_index, other.phase_index),
            self.selected + other.selected,
            self.completed + other.completed,
            self.failed + other.failed,
            self.terminated + other.terminated,
            self.skipped + other.skipped,
        )

    @property
    def terminal(self) -> int:
        return self.completed + self.failed + self.terminated + self.skipped

    @property
    def all_terminal(self) -> bool:
        return self.selected > 0 and self.terminal == self.selected

    def as_json(self) -> dict[str, Any]:
        return {
            "phaseIndex": self.phase_index,
            "selectedTargets": self.selected,
            "outcomeCounts": {
                "completed": self.completed,
                "failed": self.failed,
                "terminated": self.terminated,
                "skipped": self.skipped,
            },
        }


def progress_stats(run: TaskRun) -> dict[str, Any]:
    """``operationRunStatsForTargets`` + ``ProgressStats.AddTarget`` over phases <= current
    (``server_impl_operation_run.go:195-239``, ``stats.go:41-58``)."""
    current, cumulative = PhaseStats(), PhaseStats()
    for target in sorted(run.targets, key=lambda t: (t.phase_index, t.sequence_index)):
        if target.phase_index > run.current_phase:
            continue
        if target.phase_index > cumulative.phase_index:
            cumulative.phase_index = target.phase_index
            current = PhaseStats(phase_index=target.phase_index)
        if target.phase_index == current.phase_index:
            current.add(target)
        cumulative.add(target)
    return {"currentPhase": current.as_json(), "cumulativePhase": cumulative.as_json()}


@dataclass
class Summary:
    """``TargetPhaseSummary`` (``progress.go``) of a run's current phase."""

    total_phases: int
    current: PhaseStats
    completed: PhaseStats

    @property
    def selected(self) -> int:
        return self.current.selected + self.completed.selected

    def terminal_status(self) -> RunStatus | None:
        """``TerminalRunStatus`` (``progress.go:63-83``)."""
        if self.selected == 0:
            return None
        if not (
            self.total_phases > 0
            and self.current.phase_index + 1 >= self.total_phases
            and self.current.all_terminal
        ):
            return None
        bad = (
            self.current.failed + self.current.terminated + self.completed.failed + self.completed.terminated
        )
        if bad == self.selected:
            return RunStatus.FAILED
        return RunStatus.COMPLETED_WITH_FAILURES if bad else RunStatus.COMPLETED

    @property
    def has_next_phase(self) -> bool:
        return self.total_phases > 0 and self.current.phase_index + 1 < self.total_phases


def summarize(run: TaskRun) -> Summary:
    current = PhaseStats(phase_index=run.current_phase)
    completed = PhaseStats(phase_index=max(run.current_phase - 1, 0))
    for target in run.targets:
        if target.phase_index == run.current_phase:
            current.add(target)
        elif target.phase_index < run.current_phase:
            completed.add(target)
    # store/dispatch.go:153: the aggregate's phase index is current-1 whatever the rows say.
    completed.phase_index = max(run.current_phase - 1, 0)
    return Summary(run.total_phases, current, completed)


def safety_message(gate: SafetyGate, stats: PhaseStats) -> str:
    """``SafetyGateTrippedMessage`` (``stats.go:118-153``)."""
    head = f"{gate.kind} safety gate tripped for {gate.scope}: {stats.failed}/{stats.selected} targets failed"
    if gate.kind == "failure_rate":
        percent = stats.failed * 100 // stats.selected if stats.selected else 0
        return f"{head} ({percent}%, threshold {gate.threshold}%)"
    return f"{head} (threshold {gate.threshold})"


def _go_duration(seconds: float) -> str:
    """``time.Duration.String()`` for whole seconds (``1h0m0s``, ``30m0s``, ``45s``)."""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def seed_order(rack_ids: Sequence[str], seed: str) -> list[str]:
    """``sortBySeedScore``: by ``sha256(seed + ":" + rackId)``, ties by id
    (``planner/execution_targets.go:120-138``)."""
    return sorted(rack_ids, key=lambda rid: (hashlib.sha256(f"{seed}:{rid}".encode()).digest(), rid))


def firmware_description(version: str) -> str:
    """``FirmwareControlTaskInfo.Description`` (``task/operations/operations.go:272-274``):
    ``FirmwareOperationUpgrade.String()`` is "FirmwareUpgrade" (``types.go:102-115``)."""
    return f"FirmwareUpgrade, target version {version}"


# --- operation rules -----------------------------------------------------------------------------

_ACTION = {
    TaskType.POWER_CONTROL: "PowerControl",
    TaskType.FIRMWARE_CONTROL: "FirmwareControl",
    TaskType.BRING_UP: "BringUp",
}
_RULE_NAMES = {
    Operation.POWER_ON: "Power On",
    Operation.POWER_OFF: "Power Off",
    Operation.POWER_CYCLE: "Power Cycle",
    Operation.FORCE_POWER_OFF: "Force Power Off",
    Operation.FORCE_POWER_CYCLE: "Force Power Cycle",
    Operation.FIRMWARE_UPDATE: "Firmware Upgrade",
    Operation.BRING_UP: "Bring Up",
}


@dataclass
class OperationRule:
    """A row of Flow's ``operation_rules`` table (``task/operationrules/rules.go:66-76``)."""

    id: str
    name: str
    description: str
    operation: Operation
    layout: Layout
    is_default: bool
    created: datetime

    def as_json(self, skew: timedelta = _NO_SKEW) -> dict[str, Any]:
        """``APITaskRule`` (``api/pkg/api/model/taskrule.go:100-110``); ``skew``: the site's clock."""
        spec = OPERATIONS[self.operation]
        steps = [
            {
                "componentType": kind.value,
                "stage": number,
                "maxParallel": 0,
                "timeout": "",
                "retry": None,
                "preOperation": None,
                "mainOperation": {
                    "name": _ACTION[spec.task_type],
                    "timeout": "",
                    "pollInterval": "",
                    "parameters": None,
                },
                "postOperation": None,
                "delayAfter": "",
            }
            for number, kinds in enumerate(self.layout, start=1)
            for kind in kinds
        ]
        stamp = format_timestamp(self.created + skew, fraction=True)
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "operationType": "FirmwareControl"
            if spec.task_type is TaskType.FIRMWARE_CONTROL
            else "PowerControl",
            "operationCode": spec.code,
            "ruleDefinition": {"version": "v1", "steps": steps},
            "isDefault": self.is_default,
            "created": stamp,
            "updated": stamp,
        }


# --- the manager and its dispatcher --------------------------------------------------------------


class RunManager:
    """Every site's operation runs and rules, moved by the dispatcher on the world's clock."""

    def __init__(self, world: World, rng: random.Random) -> None:
        self.world = world
        self.rng = rng
        self.runs: dict[str, TaskRun] = {}
        self.rules: dict[str, list[OperationRule]] = {}  # site id -> rules, in creation order
        self.rack_rules: dict[tuple[str, Operation], str] = {}  # (rack id, operation) -> rule id
        world.layout_of = self.layout_for
        self.on_submit: Callable[[TaskRun, RunTarget], None] | None = None
        # Sites whose Flow has no run dispatcher (a v2.0 Flow, fleet fault ``flowLacks``).
        self.undispatched_sites: set[str] = set()
        first = world.now + timedelta(seconds=rng.uniform(0, POLL_INTERVAL_S))
        world.schedule(first, self._poll)

    # --- rules ---------------------------------------------------------------------------------

    def add_rule(
        self,
        site_id: str,
        operation: Operation,
        *,
        name: str,
        layout: Sequence[Sequence[ComponentType]] | None = None,
        is_default: bool = False,
        description: str = "",
        created: datetime | None = None,
    ) -> OperationRule:
        rule = OperationRule(
            id=self.world.new_id(),
            name=name,
            description=description,
            operation=operation,
            layout=tuple(tuple(kinds) for kinds in (layout or OPERATIONS[operation].stages)),
            is_default=is_default,
            created=created or self.world.now,
        )
        self.rules.setdefault(site_id, []).append(rule)
        if is_default:
            self.set_default(site_id, rule.id)
        return rule

    def set_default(self, site_id: str, rule_id: str) -> None:
        """``SetRuleAsDefault`` (``task/store/postgres.go:399-446``): the rule becomes its
        operation's default, and the one that was is not any more."""
        rule = self.rule(site_id, rule_id)
        if rule is None:
            raise RunError("NotFound", "operation rule not found")
        for other in self.rules.get(site_id, ()):
            if other.operation is rule.operation:
                other.is_default = other is rule

    def associate(self, site_id: str, rack_id: str, rule_id: str) -> None:
        """A rack-rule association: the rack runs ``rule_id`` for its operation, default or not."""
        rule = self.rule(site_id, rule_id)
        if rule is None:
            raise RunError("NotFound", "operation rule not found")
        self.rack_rules[(rack_id, rule.operation)] = rule.id

    def resolve(self, site_id: str, rack_id: str, operation: Operation) -> OperationRule | None:
        """Flow's ``Resolver.ResolveRule`` without an explicit rule id
        (``task/operationrules/resolver.go:44-110``, ``task/store/postgres.go:465-500``): the
        rack's associated rule, else the operation's default rule; None: the hard-coded default."""
        associated = self.rack_rules.get((rack_id, operation))
        if associated is not None and (rule := self.rule(site_id, associated)) is not None:
            return rule
        return next(
            (r for r in self.rules.get(site_id, ()) if r.operation is operation and r.is_default), None
        )

    def layout_for(self, site_id: str, rack_id: str, operation: Operation) -> Layout | None:
        rule = self.resolve(site_id, rack_id, operation)
        return rule.layout if rule is not None else None

    def add_default_rules(self, site_id: str, created: datetime) -> None:
        """One default rule per REST-triggered operation, with the layout the simulator runs."""
        for offset, (operation, label) in enumerate(_RULE_NAMES.items()):
            self.add_rule(
                site_id,
                operation,
                name=f"Default {label}",
                is_default=True,
                created=created + timedelta(seconds=offset),
            )

    def site_rules(self, site_id: str) -> list[OperationRule]:
        """``ListOperationRules``: newest first (``db/model/operation_rule.go:123-126``)."""
        return sorted(self.rules.get(site_id, ()), key=lambda r: (r.created, r.id), reverse=True)

    def rule(self, site_id: str, rule_id: str) -> OperationRule | None:
        return next((r for r in self.rules.get(site_id, ()) if r.id == rule_id), None)

    # --- create --------------------------------------------------------------------------------

    def create(
        self,
        site_id: str,
        *,
        name: str,
        description: str,
        version: str,
        options: RunOptions,
        percent: int,
        selector_seed: str,
        exclude_run_ids: Sequence[str] = (),
        rule_id: str | None = None,
        child: ChildPlan | None = None,
    ) -> TaskRun:
        """``ManagerImpl.Create``: plan, then persist the run and its targets (``lifecycle.go:33-73``)."""
        now = self.world.now
        racks = list(self.world.sites[site_id].rack_ids)
        if len(racks) > MAX_CANDIDATE_TARGETS:
            raise RunError(
                "Internal",
                "plan operation run targets: build default scope: operation run candidate scope exceeds "
                f"target limit {MAX_CANDIDATE_TARGETS}",
            )
        excluded = {t.rack_id for rid in exclude_run_ids if rid in self.runs for t in self.runs[rid].targets}
        candidates = [r for r in racks if r not in excluded]
        selected = seed_order(candidates, selector_seed)[: _ceil_div(len(candidates) * percent, 100)]
        ordered = seed_order(selected, options.ordering_seed)
        counts = (
            options.phase_plan.counts(len(ordered))
            if options.phase_plan
            else ([len(ordered)] if ordered else [])
        )
        if not ordered:
            raise RunError("InvalidArgument", "operation run has no planned targets")
        run_id = self.world.new_id()
        targets: list[RunTarget] = []
        seq = 0
        for phase, size in enumerate(counts):
            for _ in range(size):
                targets.append(
                    RunTarget(self.world.new_id(), run_id, ordered[seq], seq, phase, created=now, updated=now)
                )
                seq += 1
        run = TaskRun(
            id=run_id,
            site_id=site_id,
            name=name,
            description=description,
            version=version,
            options=options,
            created=now,
            updated=now,
            targets=targets,
            child=child or ChildPlan(),
            rule_id=rule_id,
        )
        self.runs[run.id] = run
        return run

    def site_runs(self, site_id: str) -> list[TaskRun]:
        """``List``: newest first (``store/store.go:177``)."""
        runs = [r for r in self.runs.values() if r.site_id == site_id]
        return sorted(runs, key=lambda r: (r.created, r.id), reverse=True)

    def get(self, site_id: str, run_id: str) -> TaskRun:
        run = self.runs.get(run_id)
        if run is None or run.site_id != site_id:
            raise RunError("NotFound", f"operation run not found: {run_id}")  # queries.go:31-33
        return run

    # --- the dispatcher ------------------------------------------------------------------------

    def _poll(self, at: datetime) -> None:
        """``DispatchOnce`` (``dispatcher.go:79-97``): runnable runs, oldest update first, 10 a poll."""
        runnable = sorted(
            (
                r
                for r in self.runs.values()
                if r.status in (RunStatus.PENDING, RunStatus.RUNNING)
                and r.site_id not in self.undispatched_sites
            ),
            key=lambda r: (r.updated, r.id),
        )[:FETCH_BATCH]
        for run in runnable:
            self.dispatch(run, at)
        self.world.schedule(at + timedelta(seconds=POLL_INTERVAL_S), self._poll)

    def dispatch(self, run: TaskRun, now: datetime) -> None:
        """``dispatchRun``: one attempt, and one more if a claimed target started no task."""
        if self._attempt(run, now):
            self._attempt(run, now)

    def _attempt(self, run: TaskRun, now: datetime) -> bool:
        if run.status not in (RunStatus.PENDING, RunStatus.RUNNING):
            return False  # LockRunnable: no longer runnable
        targets = sorted(run.phase_targets(run.current_phase), key=lambda t: t.sequence_index)
        self._reconcile(targets, now)
        claimed = self._decide_and_claim(run, targets, now)
        run.updated = now
        retry = False
        for target in claimed:
            if not self._submit(run, target, now):
                retry = True
        return retry

    def _reconcile(self, targets: list[RunTarget], now: datetime) -> None:
        """``reconcileTargets`` (``dispatcher/reconciliation.go:17-44``)."""
        for target in targets:
            if target.task_id is None or target.status.is_terminal:
                continue
            task = self.world.tasks.get(target.task_id)
            if task is None:
                continue
            status = target_status_of(task.status)
            if status is not target.status or task.message != target.message:
                target.status, target.message, target.updated = status, task.message, now

    def _decide_and_claim(self, run: TaskRun, targets: list[RunTarget], now: datetime) -> list[RunTarget]:
        """``decide`` then ``execute`` (``dispatcher/decision.go:120-214``, ``execution.go:20-90``)."""
        summary = summarize(run)
        if summary.selected == 0:
            run.finish(RunStatus.FAILED, now, "operation run has no targets")
            return []
        terminal = summary.terminal_status()
        if terminal is not None:
            run.finish(terminal, now, terminal.message())
            return []
        for target in targets:  # conflict_policy.go:137-161
            blocked_for = (
                None if target.blocked_since is None else (now - target.blocked_since).total_seconds()
            )
            timed_out = blocked_for is not None and blocked_for >= run.options.retry_timeout_s
            if target.status is TargetStatus.BLOCKED and timed_out:
                timeout = _go_duration(run.options.retry_timeout_s)
                run.pause(
                    RunReason.CONFLICT_RETRY_TIMEOUT,
                    f"target {target.id} blocked by rack conflict for {timeout}",
                )
                return []
        for gate in run.options.gates:  # progress.go:124-140
            stats = (
                summary.current
                if gate.scope == "current_phase"
                else summary.current.merged(summary.completed)
            )
            if gate.tripped(stats.failed, stats.selected):
                run.pause(RunReason.SAFETY_GATE, safety_message(gate, stats))
                return []
        if summary.current.all_terminal and summary.has_next_phase:  # phase.go:40-61
            if run.options.auto_advance:
                run.current_phase += 1
                run.start(now, "advanced to next phase")
            else:
                run.pause(RunReason.PHASE_GATE, "waiting for phase advance")
            return []
        run.start(now, "")
        return self._claim(run, targets, now)

    def _claim(self, run: TaskRun, targets: list[RunTarget], now: datetime) -> list[RunTarget]:
        """``claim`` (``execution.go:44-90``)."""
        active = sum(
            1
            for t in targets
            if (t.status is TargetStatus.SUBMITTED and t.task_id is not None)
            or (t.status is TargetStatus.CLAIMED and t.retry_after is not None and t.retry_after > now)
        )
        available = run.options.max_concurrent_targets - active
        if available <= 0:
            run.message = "waiting for active targets quota"
            return []
        claimed: list[RunTarget] = []
        blocked = 0
        for target in targets:
            ready = (
                target.status is TargetStatus.PENDING
                or (
                    target.status in (TargetStatus.BLOCKED, TargetStatus.CLAIMED)
                    and (target.retry_after is None or target.retry_after <= now)
                )
                or (target.status is TargetStatus.SUBMITTED and target.task_id is None)
            )
            if not ready:
                if target.status is TargetStatus.BLOCKED:
                    blocked += 1
                continue
            if len(claimed) >= available:
                continue
            target.task_id = None
            target.status, target.message = TargetStatus.CLAIMED, "claimed for submission"
            target.retry_after = now + timedelta(seconds=CLAIM_LEASE_S)
            target.updated = now
            claimed.append(target)
        parts = []
        if claimed:
            n = len(claimed)
            parts.append(
                "submitted 1 operation run target" if n == 1 else f"submitted {n} operation run targets"
            )
        if blocked:
            parts.append(
                "1 target waiting on rack conflicts"
                if blocked == 1
                else f"{blocked} targets waiting on rack conflicts"
            )
        if parts:
            run.message = "; ".join(parts)
        return claimed

    def _submit(self, run: TaskRun, target: RunTarget, now: datetime) -> bool:
        """``submit`` (``execution.go:201-226``): the child task, or a blocked/failed target."""
        fail = target.phase_index in run.child.fail_phases or (
            run.child.failure_rate > 0 and self.rng.random() < run.child.failure_rate
        )
        try:
            task = self.world.submit(
                run.site_id,
                target.rack_id,
                Operation.FIRMWARE_UPDATE,
                description=firmware_description(run.version),
                outcome=Outcome.FAIL if fail else Outcome.SUCCEED,
                stage_seconds=run.child.stage_seconds,
                source=f"task_run:{run.id}",
            )
        except Rejected:
            # conflict_policy.go:84-110 (blockTarget): exponential backoff capped at the max.
            if target.blocked_since is None:
                target.blocked_since = now
            if target.last_delay_s <= 0:
                target.last_delay_s = int(run.options.initial_retry_delay_s)
            else:
                target.last_delay_s = min(target.last_delay_s * 2, int(run.options.max_retry_delay_s))
            target.attempts += 1
            target.task_id = None
            target.status = TargetStatus.BLOCKED
            # task/manager/manager.go:443-446: the reject strategy's error.
            target.message = f"rack {target.rack_id} already has a conflicting task: rack conflict"
            target.retry_after = now + timedelta(seconds=target.last_delay_s)
            target.updated = now
            return False
        target.task_id = task.id
        target.status, target.message = TargetStatus.SUBMITTED, "submitted"
        target._clear_retry()
        target.updated = now
        return True

    # --- manual controls -----------------------------------------------------------------------

    def pause(self, site_id: str, run_id: str) -> TaskRun:
        """``Pause`` (``manual_controls.go:41-77``): idempotent, keeps an existing pause reason."""
        run = self.get(site_id, run_id)
        if run.status.is_terminal:
            raise _invalid_state(f"{run.id} is in terminal state {run.status.flow}")
        if run.status is not RunStatus.PAUSED:
            run.pause(RunReason.OPERATOR_PAUSED, "operation run paused by operator")
            run.updated = self.world.now
        return run

    def resume(self, site_id: str, run_id: str) -> TaskRun:
        """``Resume`` (``manual_controls.go:82-91, 256-371``): not across a phase gate."""
        run = self.get(site_id, run_id)
        if not (run.status is RunStatus.PAUSED and run.reason is not RunReason.PHASE_GATE):
            if run.status is not RunStatus.PAUSED:
                raise _invalid_state(f"{run.id} is not paused")
            raise _invalid_state(f"{run.id} is paused at a phase gate; use AdvanceOperationRunPhase")
        self._continue(run, None)
        return run

    def advance(self, site_id: str, run_id: str, expected: int | None) -> TaskRun:
        """``AdvancePhase`` (``manual_controls.go:94-110, 380-407``)."""
        run = self.get(site_id, run_id)
        if not (run.status is RunStatus.PAUSED and run.reason is RunReason.PHASE_GATE):
            raise _invalid_state(f"{run.id} is not paused at a phase gate")
        self._continue(run, expected if expected is not None and expected > 0 else 0)
        return run

    def _continue(self, run: TaskRun, expected: int | None) -> None:
        # The stored target rows, not reconciled (targetPhaseSummaryForContinue, :409-452).
        now = self.world.now
        summary = summarize(run)
        terminal = summary.terminal_status()
        if terminal is None and expected is not None:
            phase = summary.current.phase_index
            if not summary.current.all_terminal:
                raise _invalid_state(f"phase {phase} is not complete")
            if not summary.has_next_phase:
                raise _invalid_state(f"phase {phase} is the final phase")
            if expected > 0 and expected != phase + 1:
                raise _invalid_state(f"expected phase {expected}, next phase is {phase + 1}")
        if terminal is not None:
            run.finish(terminal, now, terminal.message())
        elif expected is None:
            run.start(now, "operation run resumed")
        else:
            run.current_phase += 1
            run.start(now, f"advanced to phase {run.current_phase}")
        run.updated = now

    def cancel(self, site_id: str, run_id: str, reason: str) -> TaskRun:
        """``Cancel`` (``manual_controls.go:114-201``): the run is Cancelled; the current phase's
        submitted child tasks are cancelled best-effort; the targets are not rewritten."""
        run = self.get(site_id, run_id)
        if run.status.is_terminal:
            return run
        reason = reason.strip()
        now = self.world.now
        run.finish(RunStatus.CANCELLED, now, "operation run cancelled" + (f": {reason}" if reason else ""))
        run.updated = now
        for target in run.phase_targets(run.current_phase):
            if target.status.is_terminal or target.task_id is None or target.task_id not in self.world.tasks:
                continue
            with contextlib.suppress(CancelRefused):  # logged and ignored (:192-199)
                self.world.cancel(target.task_id, now)
        return run

    # --- ground truth --------------------------------------------------------------------------

    def truth_json(self) -> list[dict[str, Any]]:
        out = []
        for run in sorted(self.runs.values(), key=lambda r: (r.created, r.id)):
            body = run.as_json(stats=True)
            body["siteId"] = run.site_id
            body["currentPhaseIndex"] = run.current_phase
            body["targetVersion"] = run.version
            body["targets"] = [t.as_json() for t in sorted(run.targets, key=lambda t: t.sequence_index)]
            body["childFailPhases"] = list(run.child.fail_phases)
            body["childFailureRate"] = run.child.failure_rate
            out.append(body)
        return out


__all__ = [
    "ChildPlan",
    "OperationRule",
    "PhasePlan",
    "RunError",
    "RunManager",
    "RunOptions",
    "RunReason",
    "RunStatus",
    "RunTarget",
    "SafetyGate",
    "TargetStatus",
    "TaskRun",
    "firmware_description",
]
