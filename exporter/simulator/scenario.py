"""Seeded scenarios: which sites and racks exist and what tasks arrive on them, and when.

Three sources submit tasks, as on a real NICo v2.0 site:

- operators and their tooling, through REST (a Poisson process per rack). Flow refuses a REST
  submission that conflicts with a pending or running task: no task is created, the refusal is
  kept in the ground truth;
- Flow's leak-detection job: while a component leaks, it submits a force power-off of it every
  minute with the queue strategy, so repeats wait behind the running one (at most 5 per rack);
- task schedules, fired on their interval over their racks with the reject (``skip``) or queue
  overlap policy.

Scenarios can also slow a stage down (:class:`Slowdown`, not NICo behaviour): from a moment on,
the stages of one operation that act on one component type take ``factor`` times as long on one
site, e.g. NVSwitch firmware on ``site-b`` (the ``slow-nvswitch`` preset).

Racks can start with a realistic history: ``history_tasks_per_rack`` finished tasks written
directly (no events replayed), older than anything the simulation runs.

Some submissions must happen, not just be tried: stuck tasks (``stuck_tasks``) and a script's
tasks (:class:`ScriptedTask`, the demo's stuck and failed task). Each goes to a rack where Flow
would accept it (its conflict rule, checked before submitting); when no rack would, it is tried
again every ``PLACE_RETRY_S`` and, past ``PLACE_GIVE_UP_S``, logged as an error and listed in
:attr:`Scenario.unplaced` instead of being dropped silently. An :class:`OverrunDrill` (not NICo
behaviour) keeps one rack for a learn-then-overrun timeline: many short tasks, then a slow one.

Arrivals are chained as world events (each schedules the next), so an idle simulation costs
nothing. Everything is drawn from ``random.Random(seed)``: the same seed gives the same run.
"""

from __future__ import annotations

import contextlib
import logging
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from exporter.models import ComponentType, TaskStatus
from exporter.simulator.inventory import Rack, Site
from exporter.simulator.operations import OPERATIONS, Family, Operation, describe, schedule_description
from exporter.simulator.report import Stage
from exporter.simulator.world import Outcome, Rejected, Task, World, conflicts

log = logging.getLogger(__name__)

DEFAULT_MIX: dict[str, float] = {
    Operation.POWER_ON: 3.0,
    Operation.POWER_OFF: 2.0,
    Operation.POWER_CYCLE: 4.0,
    Operation.FORCE_POWER_OFF: 0.5,
    Operation.FORCE_POWER_CYCLE: 0.5,
    Operation.FIRMWARE_UPDATE: 1.5,
    Operation.BRING_UP: 0.3,
    Operation.LEAK_DETECTION: 0.2,
}

# Seconds per stage: power stages take seconds to a couple of minutes, firmware and
# bring-up stages minutes to tens of minutes.
DEFAULT_STAGE_SECONDS: dict[str, tuple[float, float]] = {
    Family.POWER: (5.0, 120.0),
    Family.FIRMWARE: (120.0, 1500.0),
    Family.BRING_UP: (120.0, 900.0),
}

# Flow's leak-detection job interval (flow/internal/config/config.go: LeakDetectionInterval).
LEAK_JOB_INTERVAL_S = 60.0
# How long a simulated leak lasts before someone fixes it (minutes).
LEAK_MINUTES = (3.0, 15.0)

_CITIES = ("Santa Clara", "San Jose", "Fremont", "Sunnyvale", "Hillsboro", "Reno")

# What a stuck task runs when the scenario draws it (``stuck_tasks``).
STUCK_OPERATIONS = (Operation.POWER_CYCLE, Operation.FIRMWARE_UPDATE, Operation.POWER_ON)
# A submission that must happen and finds every rack busy is tried again this often (simulated
# seconds), and given up (loudly: an error in the log and ``Scenario.unplaced``) after this long.
PLACE_RETRY_S = 10.0
PLACE_GIVE_UP_S = 600.0


@dataclass(frozen=True)
class ScheduleConfig:
    """A Flow task schedule: ``operation`` on a share of a site's racks every ``every_hours``.

    ``overlap`` is the schedule's overlap policy: ``skip`` (reject on conflict) or ``queue``.
    """

    name: str
    operation: str
    every_hours: float
    rack_fraction: float = 1.0
    overlap: str = "skip"

    def __post_init__(self) -> None:
        Operation(self.operation)
        if self.overlap not in ("skip", "queue"):
            raise ValueError("overlap must be skip or queue")
        if self.every_hours <= 0 or not 0.0 < self.rack_fraction <= 1.0:
            raise ValueError("every_hours must be positive and rack_fraction in (0, 1]")


@dataclass(frozen=True)
class RolloutConfig:
    """A site-wide firmware Task Run an operator starts ``at_s`` simulated seconds after the start
    (NICo main only): all racks of the ``site_index``-th Flow site in ``phases`` equal phases, at
    most ``max_concurrent_targets`` at once, one current-phase failure-rate gate at
    ``failure_rate_threshold`` percent. ``fail_phases`` and ``child_failure_rate`` are the
    simulation's plan for the child tasks (a gate needs failures), not NICo configuration.
    """

    name: str = "fleet-firmware-rollout"
    site_index: int = 0
    at_s: float = 30.0
    version: str = "1.4.2"
    phases: int = 4
    max_concurrent_targets: int = 2
    failure_rate_threshold: int = 50
    auto_advance: bool = True
    fail_phases: tuple[int, ...] = ()
    child_failure_rate: float = 0.0


@dataclass(frozen=True)
class Slowdown:
    """A stage slow-down (a simulation scenario, not NICo behaviour): on the ``site_index``-th Flow
    site, every stage of ``operation`` with work for ``component_type`` that *begins* ``at_s``
    simulated seconds after the start or later takes ``factor`` times its drawn duration.

    A stage's steps run in parallel and complete together, so the whole stage takes longer (in the
    default firmware rule, stage 2 is the NVSwitch step alone). Stages already running at ``at_s``
    keep their duration; other sites, operations and component types are untouched.
    """

    site_index: int
    factor: float
    at_s: float
    operation: str = Operation.FIRMWARE_UPDATE
    component_type: ComponentType = ComponentType.NVSWITCH

    def __post_init__(self) -> None:
        operation, kind = Operation(self.operation), ComponentType(self.component_type)
        if kind not in {kind for stage in OPERATIONS[operation].stages for kind in stage}:
            raise ValueError(f"{operation.value} has no {kind.value} step")
        if self.site_index < 0 or self.factor <= 0 or self.at_s < 0:
            raise ValueError("site_index and at_s must not be negative, factor must be positive")


@dataclass(frozen=True)
class ScriptedTask:
    """A REST submission a scenario makes at a set moment (a script, e.g. the demo's), placed so
    Flow accepts it.

    ``operation`` with ``outcome`` (``succeed``, ``fail`` or ``stuck``) at ``at_s`` simulated
    seconds after the start (negative: before it, in the simulated history; a stuck task's age
    is then ``-at_s``), rack-wide on a rack of the ``site_index``-th Flow site (any Flow site when
    that one has no rack to offer) that is not kept for a drill. Racks are tried in a seeded order
    and the first one without a conflicting Pending or Running task takes it; see the module
    docstring for what happens when none does. ``stage_seconds``: every stage with work takes
    this long (None: drawn as for any task). ``name`` keys the task in :attr:`Scenario.placed`.
    """

    name: str
    at_s: float
    operation: str
    outcome: str = Outcome.SUCCEED
    site_index: int = 0
    stage_seconds: float | None = None

    def __post_init__(self) -> None:
        Operation(self.operation)
        Outcome(self.outcome)
        if self.site_index < 0 or (self.stage_seconds is not None and self.stage_seconds <= 0):
            raise ValueError("site_index must not be negative and stage_seconds must be positive")


@dataclass(frozen=True)
class OverrunDrill:
    """A learn-then-overrun timeline on one rack (a simulation scenario, not NICo behaviour).

    The last rack of the ``site_index``-th Flow site is kept for it: no arrivals, leaks,
    schedules, stuck or scripted tasks go there. From ``at_s`` simulated seconds after the start,
    one tray-scoped ``operation`` on one compute tray every ``every_s`` seconds (the rack's
    compute trays in turn, skipping a tray still busy), its stage with work taking a duration
    drawn from ``stage_seconds``: ``tasks`` of them, enough samples for a duration learner. Then
    one more whose stage takes ``slow_stage_s``: a task overrunning what was learned. Its id is
    ``Scenario.placed["overrun"]``.
    """

    site_index: int = 0
    operation: str = Operation.POWER_OFF
    at_s: float = 5.0
    tasks: int = 30
    every_s: float = 1.0
    stage_seconds: tuple[float, float] = (6.0, 8.0)
    slow_stage_s: float = 540.0

    def __post_init__(self) -> None:
        spec = OPERATIONS[Operation(self.operation)]
        if not spec.tray_scoped_allowed or ComponentType.COMPUTE not in {k for st in spec.stages for k in st}:
            raise ValueError(f"{self.operation} cannot run on one compute tray")
        low, high = self.stage_seconds
        if self.site_index < 0 or self.tasks < 1 or self.every_s <= 0 or not 0 < low <= high:
            raise ValueError("site_index >= 0, tasks >= 1, every_s > 0 and 0 < stage_seconds min <= max")
        if self.slow_stage_s <= 0 or self.at_s < 0:
            raise ValueError("slow_stage_s must be positive and at_s not negative")


# The ``slow-nvswitch`` preset's timeline (simulated seconds after the start).
SLOW_NVSWITCH_AT_S = 720.0
SLOW_NVSWITCH_HORIZON_S = 1500.0


@dataclass
class ScenarioConfig:
    """What the simulated NICo contains and how busy it is.

    Attributes:
        seed: seeds every random choice (ids, arrivals, outcomes, durations).
        sites: number of Flow-enabled sites.
        racks_per_site: GB200 NVL72 racks per site (35 trays each).
        site_racks: racks of each Flow site by its index, where it differs from ``racks_per_site``
            (a fleet of one big site and small ones).
        non_flow_sites: extra sites without Flow (their task/rack/tray calls answer 412).
        arrivals_per_rack_per_hour: mean task submission rate per rack (Poisson); 0 = none.
            ``leak_detection``'s share of the mix is the rate of leaks, not of submissions.
        operation_mix: relative weights by operation name (``power_on``, ``firmware_update``, ...).
        tray_scoped_fraction: share of submissions made on tray endpoints (1-4 trays, 1-2 types).
        stage_seconds: (min, max) seconds per stage by family: ``power``, ``firmware``, ``bring_up``.
        failure_rate: share of tasks that fail at a random stage.
        cancel_rate: share of tasks an operator cancels a little after creation.
        stuck_tasks: tasks that hang forever in a stage (created shortly before the start, on a
            rack where Flow accepts them; never refused silently, see the module docstring).
        history_hours: simulate this much activity before the start, so lists are not empty.
        history_tasks_per_rack: (min, max) finished tasks written on each rack before that, as a
            long-lived site has (0, 0: none).
        horizon_hours: stop arrivals this long after the start (None: never stop).
        schedules: Flow task schedules on every Flow site.
        rollouts: firmware Task Runs started during the simulation (needs ``task_runs``).
        slowdowns: stage slow-downs on one site from a moment on (not NICo behaviour).
        scripted: REST submissions at set moments, each placed where Flow accepts it.
        drill: a learn-then-overrun timeline on a rack kept for it (not NICo behaviour).
    """

    seed: int = 1
    sites: int = 2
    racks_per_site: int = 8
    site_racks: dict[int, int] = field(default_factory=dict)
    non_flow_sites: int = 0
    arrivals_per_rack_per_hour: float = 2.0
    operation_mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    tray_scoped_fraction: float = 0.3
    stage_seconds: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_STAGE_SECONDS))
    failure_rate: float = 0.05
    cancel_rate: float = 0.02
    stuck_tasks: int = 0
    history_hours: float = 2.0
    history_tasks_per_rack: tuple[int, int] = (0, 0)
    horizon_hours: float | None = None
    schedules: tuple[ScheduleConfig, ...] = ()
    rollouts: tuple[RolloutConfig, ...] = ()
    slowdowns: tuple[Slowdown, ...] = ()
    scripted: tuple[ScriptedTask, ...] = ()
    drill: OverrunDrill | None = None

    def __post_init__(self) -> None:
        for name in self.operation_mix:
            Operation(name)  # raises ValueError on an unknown operation
        for family in self.stage_seconds:
            Family(family)
        if any(n < 0 for n in self.site_racks.values()):
            raise ValueError("site_racks: rack counts must not be negative")
        if self.sites < 0 or self.racks_per_site < 0 or self.non_flow_sites < 0:
            raise ValueError("counts must not be negative")
        if not 0.0 <= self.failure_rate <= 1.0 or not 0.0 <= self.cancel_rate <= 1.0:
            raise ValueError("rates must be between 0 and 1")
        low, high = self.history_tasks_per_rack
        if not 0 <= low <= high:
            raise ValueError("history_tasks_per_rack must be (min, max) with 0 <= min <= max")
        for slowdown in self.slowdowns:
            if slowdown.site_index >= self.sites:
                raise ValueError(
                    f"slowdown site_index {slowdown.site_index} but only {self.sites} Flow sites"
                )
        for what, index in [
            *((f"scripted task {t.name!r}", t.site_index) for t in self.scripted),
            *((("drill", self.drill.site_index),) if self.drill else ()),
        ]:
            if index >= self.sites:
                raise ValueError(f"{what}: site_index {index} but only {self.sites} Flow sites")

    @classmethod
    def quiet(
        cls, *, sites: int = 1, racks_per_site: int = 2, non_flow_sites: int = 0, seed: int = 1
    ) -> ScenarioConfig:
        """Inventory only: no arrivals, no history, no stuck tasks (tests create tasks themselves)."""
        return cls(
            seed=seed,
            sites=sites,
            racks_per_site=racks_per_site,
            non_flow_sites=non_flow_sites,
            arrivals_per_rack_per_hour=0.0,
            stuck_tasks=0,
            history_hours=0.0,
        )

    @classmethod
    def rollout_gate_trip(cls, *, racks_per_site: int = 8, seed: int = 1) -> ScenarioConfig:
        """Preset ``rollout-gate-trip``: one quiet site whose racks all get a firmware Task Run,
        30 s in, in 4 auto-advancing phases, 2 racks at a time; every child task of phase 1 fails,
        so the 50 % failure-rate gate pauses the run (SafetyGate) once phase 1's first failure is
        reconciled. Firmware stages take 20-60 s so the timeline fits in minutes."""
        return cls(
            seed=seed,
            sites=1,
            racks_per_site=racks_per_site,
            arrivals_per_rack_per_hour=0.0,
            history_hours=0.0,
            stage_seconds={**DEFAULT_STAGE_SECONDS, "firmware": (20.0, 60.0)},
            rollouts=(RolloutConfig(fail_phases=(1,)),),
        )

    @classmethod
    def slow_nvswitch(
        cls,
        *,
        factor: float = 5.0,
        site_index: int = 1,
        sites: int = 3,
        racks_per_site: int = 8,
        slowdown_at_s: float = SLOW_NVSWITCH_AT_S,
        seed: int = 1,
    ) -> ScenarioConfig:
        """Preset ``slow-nvswitch`` (a simulation scenario, not NICo behaviour): steady rack-wide
        firmware updates on every site, and one site's NVSwitch firmware stage slows down.

        ``sites`` (3) Flow sites of ``racks_per_site`` (8) racks, no history, no failures, cancels
        or stuck tasks. Every rack gets a rack-wide ``firmware_update`` REST submission 40 times an
        hour (Poisson; one that conflicts with the rack's running firmware task is refused, as Flow
        does: about 45 % of them). Both firmware stages (1: Compute, 2: NVSwitch) take 24-36 s
        (30 s +-20 %, uniform), so a task runs about a minute.

        Timeline: arrivals from 0 s to 1500 s (25 min); at ``slowdown_at_s`` (720 s, 12 min) the
        NVSwitch stage of ``site_index``'s site (1: ``site-b``) starts taking ``factor`` (5) times
        as long (120-180 s) for every task whose stage 2 begins then or later. Before it each site
        has run 32-44 firmware tasks (seeds 1-3, 7, 42), i.e. that many samples of each stage;
        after it the slow site completes 20-25 slow NVSwitch stages, the others about 40 normal
        ones. Every task has finished by about 1700 s. ``factor=1.0`` gives the same traffic with
        no slow-down (no ``slowdowns``): the false-positive baseline, as :meth:`steady_firmware`.
        """
        return cls(
            seed=seed,
            sites=sites,
            racks_per_site=racks_per_site,
            arrivals_per_rack_per_hour=40.0,
            operation_mix={Operation.FIRMWARE_UPDATE: 1.0},
            tray_scoped_fraction=0.0,
            stage_seconds={**DEFAULT_STAGE_SECONDS, Family.FIRMWARE: (24.0, 36.0)},
            failure_rate=0.0,
            cancel_rate=0.0,
            stuck_tasks=0,
            history_hours=0.0,
            horizon_hours=SLOW_NVSWITCH_HORIZON_S / 3600.0,
            slowdowns=()
            if factor == 1.0
            else (Slowdown(site_index=site_index, factor=factor, at_s=slowdown_at_s),),
        )

    @classmethod
    def steady_firmware(cls, *, sites: int = 3, racks_per_site: int = 8, seed: int = 1) -> ScenarioConfig:
        """Preset ``steady-firmware``: ``slow-nvswitch``'s traffic without the slow-down, the
        baseline where a stuck-task detector must raise nothing."""
        return cls.slow_nvswitch(factor=1.0, sites=sites, racks_per_site=racks_per_site, seed=seed)


@dataclass
class _Placing:
    """A submission that must happen: its racks in the order tried, and when to give up."""

    name: str
    operation: Operation
    outcome: Outcome
    rack_ids: list[str]
    deadline: datetime
    stage_seconds: float | None = None
    tray_scoped: bool = False  # may be tray-scoped, drawn as for any submission


def site_name(index: int) -> str:
    """``site-a`` ... ``site-z``, then ``site-aa`` ...: short, sortable, readable in dashboards."""
    letters = string.ascii_lowercase
    name = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        name = letters[rem] + name
    return f"site-{name}"


class Scenario:
    """Builds the inventory and feeds submissions into a :class:`World` as timed events."""

    def __init__(self, config: ScenarioConfig, world: World, *, leak_queue_timeout_s: float = 0.0) -> None:
        self.config = config
        self.world = world
        self.leak_queue_timeout_s = leak_queue_timeout_s
        # Own RNG: what arrives does not depend on how often a client polls.
        self.rng = random.Random(config.seed)
        mix = {Operation(name): weight for name, weight in config.operation_mix.items() if weight > 0}
        self._ops = list(mix)
        self._weights = list(mix.values())
        self._leaking: dict[str, datetime] = {}  # tray id -> when its leak ends
        # (site id, slowdown, when it begins), resolved by :meth:`start`.
        self.slowdowns: list[tuple[str, Slowdown, datetime]] = []
        # The rack kept for the drill (no other traffic), resolved by :meth:`start`.
        self.reserved: set[str] = set()
        # Scripted tasks (and the drill's slow one, "overrun") by name -> the task id they got.
        self.placed: dict[str, str] = {}
        # Submissions that had to happen and found no rack that would take them, said why.
        self.unplaced: list[str] = []

    # --- inventory -----------------------------------------------------------------------------

    def populate(self, org: str, created: datetime) -> None:
        """Create the sites (Flow ones first) and their racks."""
        total = self.config.sites + self.config.non_flow_sites
        for index in range(total):
            flow = index < self.config.sites
            site = self.world.add_site(
                site_name(index),
                org,
                flow=flow,
                created=created + timedelta(days=index, seconds=self.rng.uniform(0, 3600)),
                city=_CITIES[index % len(_CITIES)],
            )
            self._add_racks(site, self.config.site_racks.get(index, self.config.racks_per_site))

    def _add_racks(self, site: Site, count: int) -> None:
        letter = site.name.removeprefix("site-")
        for index in range(count):
            row, column = divmod(index, 16)
            self.world.add_rack(
                site,
                f"rack-{letter}{index + 1:02d}",
                position=f"{string.ascii_uppercase[row % 26]}{column + 1}",
                room=f"hall-{row // 4 + 1}",
            )

    # --- durations -----------------------------------------------------------------------------

    def stage_seconds(self, operation: Operation) -> float:
        """Draw one stage's duration for ``operation`` from its family's range."""
        family = OPERATIONS[operation].family
        low, high = self.config.stage_seconds.get(family, DEFAULT_STAGE_SECONDS[family])
        return self.rng.uniform(low, high)

    def stage_factor(self, task: Task, stage: Stage, at: datetime) -> float:
        """How much longer than drawn ``task``'s ``stage`` takes when it begins at ``at``."""
        factor = 1.0
        for site_id, slowdown, begins in self.slowdowns:
            if (
                task.site_id == site_id
                and task.operation == slowdown.operation
                and at >= begins
                and any(
                    step.component_type == slowdown.component_type and step.total > 0 for step in stage.steps
                )
            ):
                factor *= slowdown.factor
        return factor

    # --- history -------------------------------------------------------------------------------

    def write_history(self, before: datetime) -> None:
        """Write ``history_tasks_per_rack`` finished tasks on every Flow rack, ending before ``before``."""
        low, high = self.config.history_tasks_per_rack
        if high == 0:
            return
        ops = [op for op in self._ops if op is not Operation.LEAK_DETECTION] or [Operation.POWER_ON]
        weights = [self._weights[self._ops.index(op)] if op in self._ops else 1.0 for op in ops]
        for rack in self._flow_racks():
            count = self.rng.randint(low, high)
            # Oldest first, one after another, all finished before ``before``.
            at = before - timedelta(minutes=40 * count)
            for _ in range(count):
                operation = self.rng.choices(ops, weights)[0]
                tray_ids = self._pick_trays(rack, operation)
                failed = self.rng.random() < self.config.failure_rate
                task = self.world.record_history(
                    rack.id,
                    operation,
                    description=describe(operation, tray_scoped=tray_ids is not None, rack_id=rack.id),
                    created=at,
                    outcome=Outcome.FAIL if failed else Outcome.SUCCEED,
                    stage_seconds=min(self.stage_seconds(operation), 300.0),
                    tray_ids=tray_ids,
                )
                assert task.finished is not None
                at = task.finished + timedelta(seconds=self.rng.uniform(60, 1200))
                if at >= before:
                    break

    # --- arrivals ------------------------------------------------------------------------------

    def start(self, begin: datetime, sim_start: datetime) -> None:
        """Schedule arrivals and schedules from ``begin`` (history start), stuck tasks before ``sim_start``."""
        flow_sites = [site for site in self.world.sites.values() if site.flow]
        self.slowdowns = [
            (flow_sites[slowdown.site_index].id, slowdown, sim_start + timedelta(seconds=slowdown.at_s))
            for slowdown in self.config.slowdowns
        ]
        drill = self.config.drill
        if drill is not None and flow_sites[drill.site_index].rack_ids:
            self.reserved = {flow_sites[drill.site_index].rack_ids[-1]}
        racks = self._open_racks()
        if self.config.arrivals_per_rack_per_hour > 0 and self._ops:
            for rack in racks:
                self._schedule_arrival(rack.id, begin, sim_start)
        for index in range(self.config.stuck_tasks if racks else 0):
            rack = self.rng.choice(racks)
            at = max(begin, sim_start - timedelta(seconds=self.rng.uniform(60, 1800)))
            self.world.schedule(at, partial(self._create_stuck, rack.id, f"stuck-{index}"))
        for schedule in self.config.schedules:
            first = begin + timedelta(hours=schedule.every_hours * self.rng.uniform(0.1, 1.0))
            self.world.schedule(first, partial(self._fire_schedule, schedule))
        for script in self.config.scripted:
            at = max(begin, sim_start + timedelta(seconds=script.at_s))
            self.world.schedule(at, partial(self._run_script, script))
        if drill is not None and self.reserved:
            (rack_id,) = self.reserved
            at = sim_start + timedelta(seconds=drill.at_s)
            self.world.schedule(at, partial(self._drill, drill, rack_id, 0))
        elif drill is not None:
            self._give_up("overrun", f"the drill's site {flow_sites[drill.site_index].name} has no rack")

    def _flow_racks(self) -> list[Rack]:
        return [rack for rack in self.world.racks.values() if self.world.sites[rack.site_id].flow]

    def _open_racks(self) -> list[Rack]:
        """Flow racks that take traffic: all but the one kept for the drill."""
        return [rack for rack in self._flow_racks() if rack.id not in self.reserved]

    def _schedule_arrival(self, rack_id: str, after: datetime, sim_start: datetime) -> None:
        gap = self.rng.expovariate(self.config.arrivals_per_rack_per_hour / 3600.0)
        at = after + timedelta(seconds=gap)
        horizon = self.config.horizon_hours
        if horizon is not None and at > sim_start + timedelta(hours=horizon):
            return
        self.world.schedule(at, partial(self._arrive, rack_id, sim_start))

    def _arrive(self, rack_id: str, sim_start: datetime, at: datetime) -> None:
        self._schedule_arrival(rack_id, at, sim_start)
        site = self.world.sites[self.world.racks[rack_id].site_id]
        if site.gone:
            return
        operation = self.rng.choices(self._ops, self._weights)[0]
        if operation is Operation.LEAK_DETECTION:
            self._start_leak(rack_id, at)
            return
        failed = self.rng.random() < self.config.failure_rate
        task_id = self._submit(rack_id, operation, Outcome.FAIL if failed else Outcome.SUCCEED)
        if task_id is not None and self.rng.random() < self.config.cancel_rate:
            delay = self.rng.uniform(5.0, 600.0)
            self.world.schedule(at + timedelta(seconds=delay), partial(self._cancel, task_id))

    def _create_stuck(self, rack_id: str, name: str, at: datetime) -> None:
        operation = self.rng.choice(STUCK_OPERATIONS)
        # The drawn rack first; the others only when Flow would refuse it there.
        others = [rack.id for rack in self._open_racks() if rack.id != rack_id]
        placing = _Placing(
            name, operation, Outcome.STUCK, [rack_id, *others],
            deadline=at + timedelta(seconds=PLACE_GIVE_UP_S), tray_scoped=True,
        )  # fmt: skip
        self._place(placing, at)

    def _run_script(self, script: ScriptedTask, at: datetime) -> None:
        flow_sites = [site for site in self.world.sites.values() if site.flow]
        site = flow_sites[script.site_index]
        own = [rack for rack in self._open_racks() if rack.site_id == site.id]
        racks = own or self._open_racks()
        self.rng.shuffle(racks)
        placing = _Placing(
            script.name, Operation(script.operation), Outcome(script.outcome), [r.id for r in racks],
            deadline=at + timedelta(seconds=PLACE_GIVE_UP_S), stage_seconds=script.stage_seconds,
        )  # fmt: skip
        self._place(placing, at)

    def _place(self, placing: _Placing, at: datetime) -> None:
        """Submit ``placing`` on the first of its racks where Flow accepts it; else try again in
        ``PLACE_RETRY_S``, and past its deadline give up loudly."""
        for rack_id in placing.rack_ids:
            rack = self.world.racks[rack_id]
            if self.world.sites[rack.site_id].gone:
                continue
            tray_ids = self._pick_trays(rack, placing.operation) if placing.tray_scoped else None
            if self._refused(rack, placing.operation, tray_ids):
                continue
            try:
                task = self.world.submit(
                    rack.site_id,
                    rack.id,
                    placing.operation,
                    description=describe(
                        placing.operation, tray_scoped=tray_ids is not None, rack_id=rack.id
                    ),
                    tray_ids=tray_ids,
                    outcome=placing.outcome,
                    stage_seconds=placing.stage_seconds,
                )
            except Rejected:
                continue
            self.placed[placing.name] = task.id
            return
        if at + timedelta(seconds=PLACE_RETRY_S) > placing.deadline:
            self._give_up(
                placing.name, f"no rack would take {placing.operation.value} ({placing.outcome.value})"
            )
            return
        self.world.schedule(at + timedelta(seconds=PLACE_RETRY_S), partial(self._place, placing))

    def _refused(self, rack: Rack, operation: Operation, tray_ids: Sequence[str] | None) -> bool:
        """Whether Flow would refuse this REST submission on ``rack`` now, without submitting (a try
        elsewhere leaves no refusal in the ground truth): :meth:`World.submit`'s check, Flow's
        conflict rule against the rack's Pending and Running tasks (release/v2.0
        rest-api/flow/internal/task/manager/manager.go:305-319, conflict/conflict.go:313-317,
        store/postgres.go:180-189)."""
        probe = Task(
            id="", site_id=rack.site_id, rack_id=rack.id,
            tray_ids=tuple(tray_ids) if tray_ids is not None else tuple(rack.tray_ids),
            operation=operation, description="", created=self.world.now, outcome=Outcome.SUCCEED,
            fail_stage=None, error=None, stage_seconds={},
        )  # fmt: skip
        holding = (TaskStatus.PENDING, TaskStatus.RUNNING)
        return any(
            conflicts(probe, other, self.world)
            for other in self.world.rack_tasks(rack.id)
            if other.status in holding
        )

    def _give_up(self, name: str, why: str) -> None:
        self.unplaced.append(f"{name}: {why}")
        log.error("scenario task not placed", extra={"task": name, "reason": why})

    # --- the overrun drill ---------------------------------------------------------------------

    def _drill(self, drill: OverrunDrill, rack_id: str, number: int, at: datetime) -> None:
        """The drill's ``number``-th task (the last one, ``drill.tasks``, is the slow one)."""
        rack = self.world.racks[rack_id]
        if self.world.sites[rack.site_id].gone:
            return
        operation = Operation(drill.operation)
        trays = [tray for tray in self.world.rack_trays(rack_id) if tray.type is ComponentType.COMPUTE]
        free = [
            tray
            for tray in (trays[(number + k) % len(trays)] for k in range(len(trays)))
            if not self._refused(rack, operation, [tray.id])
        ]
        later = at + timedelta(seconds=drill.every_s)
        if not free:  # every compute tray still busy: a moment later
            self.world.schedule(later, partial(self._drill, drill, rack_id, number))
            return
        slow = number >= drill.tasks
        task = self.world.submit(
            rack.site_id,
            rack.id,
            operation,
            description=describe(operation, tray_scoped=True, rack_id=rack.id),
            tray_ids=[free[0].id],
            stage_seconds=drill.slow_stage_s if slow else self.rng.uniform(*drill.stage_seconds),
        )
        if slow:
            self.placed["overrun"] = task.id
        else:
            self.world.schedule(later, partial(self._drill, drill, rack_id, number + 1))

    def _cancel(self, task_id: str, at: datetime) -> None:
        task = self.world.tasks.get(task_id)
        if task is not None and task.status.is_active:
            self.world.cancel(task_id, at)

    def _submit(self, rack_id: str, operation: Operation, outcome: Outcome) -> str | None:
        """A REST submission (reject on conflict); the task id, or None when Flow refused it."""
        rack = self.world.racks[rack_id]
        tray_ids = self._pick_trays(rack, operation)
        description = describe(operation, tray_scoped=tray_ids is not None, rack_id=rack.id)
        try:
            task = self.world.submit(
                rack.site_id, rack.id, operation, description=description, tray_ids=tray_ids, outcome=outcome
            )
        except Rejected:
            return None
        return task.id

    # --- leak detection ------------------------------------------------------------------------

    def _start_leak(self, rack_id: str, at: datetime) -> None:
        """A liquid-cooled tray starts leaking: Flow's job force-powers it off every minute."""
        wet = [
            tray
            for tray in self.world.rack_trays(rack_id)
            if tray.type in (ComponentType.COMPUTE, ComponentType.NVSWITCH) and tray.id not in self._leaking
        ]
        if not wet:
            return
        tray = self.rng.choice(wet)
        tray.leak_status = "Leaking"
        self._leaking[tray.id] = at + timedelta(minutes=self.rng.uniform(*LEAK_MINUTES))
        # The job runs on its own minute ticker; its next run sees the leak.
        self.world.schedule(
            at + timedelta(seconds=self.rng.uniform(0, LEAK_JOB_INTERVAL_S)), partial(self._leak_job, tray.id)
        )

    def _leak_job(self, tray_id: str, at: datetime) -> None:
        tray = self.world.trays[tray_id]
        if at >= self._leaking[tray_id]:
            del self._leaking[tray_id]
            tray.leak_status = "NoLeak"
            return
        rack = self.world.racks[tray.rack_id]
        description = describe(
            Operation.LEAK_DETECTION,
            tray_scoped=True,
            rack_id=rack.id,
            component_id=tray.component_id,
            component_type=tray.type,
        )
        # A full wait queue is refused: Flow logs it and tries again next minute.
        with contextlib.suppress(Rejected):
            self.world.submit(
                rack.site_id,
                rack.id,
                Operation.LEAK_DETECTION,
                description=description,
                tray_ids=[tray.id],
                stage_seconds=self.rng.uniform(5.0, 20.0),
                queue_timeout_s=self.leak_queue_timeout_s,
                source="leak_detection",
            )
        self.world.schedule(at + timedelta(seconds=LEAK_JOB_INTERVAL_S), partial(self._leak_job, tray_id))

    # --- task schedules ------------------------------------------------------------------------

    def _fire_schedule(self, schedule: ScheduleConfig, at: datetime) -> None:
        self.world.schedule(
            at + timedelta(hours=schedule.every_hours), partial(self._fire_schedule, schedule)
        )
        operation = Operation(schedule.operation)
        racks = self._open_racks()
        chosen = self.rng.sample(racks, max(1, round(len(racks) * schedule.rack_fraction))) if racks else []
        description = schedule_description(schedule.name, at)
        for rack in chosen:
            if schedule.overlap == "skip" and any(
                task.status.is_active and task.source == f"schedule:{schedule.name}"
                for task in self.world.rack_tasks(rack.id)
            ):
                continue  # the skip policy leaves out racks whose last task is still active
            # A refused scope is logged by Flow as "skipping scope".
            with contextlib.suppress(Rejected):
                self.world.submit(
                    rack.site_id,
                    rack.id,
                    operation,
                    description=description,
                    queue_timeout_s=0.0 if schedule.overlap == "queue" else None,
                    source=f"schedule:{schedule.name}",
                )

    # --- trays ---------------------------------------------------------------------------------

    def _pick_trays(self, rack: Rack, operation: Operation) -> list[str] | None:
        """None for a rack-wide task; else 1-4 trays of one or two types the rule acts on."""
        trays = self.world.rack_trays(rack.id)
        spec = OPERATIONS[operation]
        if not spec.tray_scoped_allowed or self.rng.random() >= self.config.tray_scoped_fraction:
            return None
        kinds = sorted({kind for stage in spec.stages for kind in stage})
        chosen = self.rng.sample(kinds, k=min(len(kinds), self.rng.choice((1, 1, 2))))
        pool = [tray for tray in trays if tray.type in chosen]
        count = min(len(pool), self.rng.randint(1, 4))
        return [tray.id for tray in self.rng.sample(pool, count)]
