"""Seeded scenarios: which sites and racks exist and what tasks arrive on them, and when.

Arrivals are a Poisson process per rack, chained as world events (each arrival schedules the
next), so an idle simulation costs nothing and a long one never pre-computes millions of tasks.
Everything is drawn from ``random.Random(seed)``: the same seed gives the same ids, tasks,
outcomes and timings.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from exporter.models import ComponentType
from exporter.simulator.inventory import Rack, Site
from exporter.simulator.operations import OPERATIONS, Family, Operation, describe
from exporter.simulator.world import Outcome, World

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

_CITIES = ("Santa Clara", "San Jose", "Fremont", "Sunnyvale", "Hillsboro", "Reno")


@dataclass
class ScenarioConfig:
    """What the simulated NICo contains and how busy it is.

    Attributes:
        seed: seeds every random choice (ids, arrivals, outcomes, durations).
        sites: number of Flow-enabled sites.
        racks_per_site: GB200 NVL72 racks per site (35 trays each).
        non_flow_sites: extra sites without Flow (their task/rack/tray calls answer 412).
        arrivals_per_rack_per_hour: mean task arrival rate per rack (Poisson); 0 = none.
        operation_mix: relative weights by operation name (``power_on``, ``firmware_update``, ...).
        tray_scoped_fraction: share of tasks started from tray endpoints (1-4 trays, 1-2 types).
        stage_seconds: (min, max) seconds per stage by family: ``power``, ``firmware``, ``bring_up``.
        failure_rate: share of arriving tasks that fail at a random stage.
        cancel_rate: share of arriving tasks an operator cancels a little after creation.
        stuck_tasks: tasks that hang forever in a stage (created shortly before the start).
        history_hours: simulate this much activity before the start, so lists are not empty.
        horizon_hours: stop arrivals this long after the start (None: never stop).
    """

    seed: int = 1
    sites: int = 2
    racks_per_site: int = 8
    non_flow_sites: int = 0
    arrivals_per_rack_per_hour: float = 2.0
    operation_mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    tray_scoped_fraction: float = 0.3
    stage_seconds: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_STAGE_SECONDS))
    failure_rate: float = 0.05
    cancel_rate: float = 0.02
    stuck_tasks: int = 0
    history_hours: float = 2.0
    horizon_hours: float | None = None

    def __post_init__(self) -> None:
        for name in self.operation_mix:
            Operation(name)  # raises ValueError on an unknown operation
        for family in self.stage_seconds:
            Family(family)
        if self.sites < 0 or self.racks_per_site < 0 or self.non_flow_sites < 0:
            raise ValueError("counts must not be negative")
        if not 0.0 <= self.failure_rate <= 1.0 or not 0.0 <= self.cancel_rate <= 1.0:
            raise ValueError("rates must be between 0 and 1")

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
    """Builds the inventory and feeds tasks into a :class:`World` as timed events."""

    def __init__(self, config: ScenarioConfig, world: World) -> None:
        self.config = config
        self.world = world
        # Own RNG: what arrives does not depend on how often a client polls.
        self.rng = random.Random(config.seed)
        mix = {Operation(name): weight for name, weight in config.operation_mix.items() if weight > 0}
        self._ops = list(mix)
        self._weights = list(mix.values())

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
            self._add_racks(site)

    def _add_racks(self, site: Site) -> None:
        letter = site.name.removeprefix("site-")
        for index in range(self.config.racks_per_site):
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

    # --- arrivals ------------------------------------------------------------------------------

    def start(self, begin: datetime, sim_start: datetime) -> None:
        """Schedule arrivals from ``begin`` (history start) and the stuck tasks before ``sim_start``."""
        if self.config.arrivals_per_rack_per_hour > 0 and self._ops:
            for rack in self._flow_racks():
                self._schedule_arrival(rack.id, begin, sim_start)
        racks = self._flow_racks()
        for _ in range(self.config.stuck_tasks if racks else 0):
            rack = self.rng.choice(racks)
            at = max(begin, sim_start - timedelta(seconds=self.rng.uniform(60, 1800)))
            self.world.schedule(at, partial(self._create_stuck, rack.id))

    def _flow_racks(self) -> list[Rack]:
        return [rack for rack in self.world.racks.values() if self.world.sites[rack.site_id].flow]

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
        failed = self.rng.random() < self.config.failure_rate
        task_id = self._create(rack_id, operation, Outcome.FAIL if failed else Outcome.SUCCEED)
        if self.rng.random() < self.config.cancel_rate:
            delay = self.rng.uniform(5.0, 600.0)
            self.world.schedule(at + timedelta(seconds=delay), partial(self._cancel, task_id))

    def _create_stuck(self, rack_id: str, _at: datetime) -> None:
        operation = self.rng.choice([Operation.POWER_CYCLE, Operation.FIRMWARE_UPDATE, Operation.POWER_ON])
        self._create(rack_id, operation, Outcome.STUCK)

    def _cancel(self, task_id: str, at: datetime) -> None:
        task = self.world.tasks[task_id]
        if task.status.is_active:
            self.world.cancel(task_id, at)

    def _create(self, rack_id: str, operation: Operation, outcome: Outcome) -> str:
        rack = self.world.racks[rack_id]
        tray_ids = self._pick_trays(rack, operation)
        component_id = component_type = ""
        if operation is Operation.LEAK_DETECTION and tray_ids:
            tray = self.world.trays[tray_ids[0]]
            component_id, component_type = tray.component_id, tray.type.value
        description = describe(
            operation,
            tray_scoped=tray_ids is not None,
            rack_id=rack.id,
            component_id=component_id,
            component_type=component_type,
        )
        # Durations come from the world's sampler (this scenario's stage_seconds); the error text
        # from the world, which names a tray of the failing stage.
        task = self.world.create_task(
            rack.site_id,
            rack.id,
            operation,
            description=description,
            tray_ids=tray_ids,
            outcome=outcome,
        )
        return task.id

    def _pick_trays(self, rack: Rack, operation: Operation) -> list[str] | None:
        """None for a rack-wide task; else 1-4 trays of one or two types the rule acts on."""
        trays = self.world.rack_trays(rack.id)
        if operation is Operation.LEAK_DETECTION:
            # Liquid-cooled trays leak; power shelves are air-cooled.
            wet = [tray for tray in trays if tray.type is not ComponentType.POWERSHELF]
            return [self.rng.choice(wet).id]
        spec = OPERATIONS[operation]
        if not spec.tray_scoped_allowed or self.rng.random() >= self.config.tray_scoped_fraction:
            return None
        kinds = sorted({kind for stage in spec.stages for kind in stage})
        chosen = self.rng.sample(kinds, k=min(len(kinds), self.rng.choice((1, 1, 2))))
        pool = [tray for tray in trays if tray.type in chosen]
        count = min(len(pool), self.rng.randint(1, 4))
        return [tray.id for tray in self.rng.sample(pool, count)]
