"""The simulation facade: world + scenario + faults + access control + request statistics.

:class:`Simulation` is what the HTTP layer, tests, the demo and benchmarks hold. It owns the
clock and advances the world lazily: every public read first replays the events due up to
``clock.now()``.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Literal

from exporter.models import ComponentType, format_timestamp
from exporter.simulator.access import AccessSwitches, RateLimiter, TokenStore
from exporter.simulator.clock import AcceleratedClock, Clock
from exporter.simulator.faults import FaultConfig, FaultInjector
from exporter.simulator.fleet import (
    NO_FAULTS,
    WORKFLOW_CONTEXT_TIMEOUT_S,
    SiteFaults,
    SiteHealth,
    SiteStatusView,
    StatusEntry,
    current_status,
    status_message,
)
from exporter.simulator.inventory import Rack, Site, Tray
from exporter.simulator.operations import Operation, describe, schedule_description
from exporter.simulator.scenario import RolloutConfig, Scenario, ScenarioConfig
from exporter.simulator.taskruns import ChildPlan, PhasePlan, RunManager, RunOptions, SafetyGate
from exporter.simulator.wire import report_json
from exporter.simulator.world import Outcome, SimulationError, Task, World

ListOrder = Literal["heap", "insertion", "shuffle"]
NicoVersion = Literal["2.0", "1.6"]


@dataclass
class SimulatorConfig:
    """Everything that shapes a simulated NICo server.

    Attributes:
        org: the only org the caller is a member of (others get 403).
        nico_version: the REST server's release: ``2.0`` (``release/v2.0``, its ``v2.0.0-rc.*``
            tags and ``main``: task lists take ``siteId``, ``activeOnly``, ``includeReport``) or
            ``1.6`` (``NVIDIA/infra-controller-rest`` v1.6.0: ``siteId`` and ``activeOnly`` only,
            no ``report`` and no ``ruleId`` on tasks).
        task_list_paging: task lists accept ``pageNumber``/``pageSize`` as the OpenAPI spec says.
            No NICo release's code does (docs/simulator.md): this is the spec's server, for
            clients that must serve both.
        scenario: sites, racks and task traffic.
        faults: fault injection at start (changeable at runtime).
        speed: simulated seconds per real second when no clock is given.
        start: simulated start time (None: now).
        tokens: static bearer tokens always accepted.
        client_credentials: clientId -> clientSecret for ``POST /auth/login`` (empty: login
            answers 401 "Service accounts are not enabled").
        require_auth: False accepts requests without a token.
        token_ttl_s / refresh_ttl_s: real-time lifetime of issued access / refresh tokens.
        leak_queue_timeout_s: queue timeout of leak-detection submissions (0: Flow's default, 1 h).
        admit_delay_s: (min, max) simulated seconds from submission until the workflow starts.
        first_stage_delay_s: (min, max) simulated seconds from Running to the first BeginStage.
        nvlswitch_spelling: write ``NVLSwitch`` (spec) instead of ``NVSwitch`` (code) in reports.
        list_order: ``heap`` (physical row order: every update moves a row to the end),
            ``insertion`` (creation order) or ``shuffle`` (a new order per request).
        legacy_routes_only: serve only ``/rack/task/{id}[/cancel]``, not ``/task/{id}[/cancel]``
            (servers before the root task routes, v1.5 and older).
        rate_limit / rate_limit_rate / rate_limit_burst / rate_limit_expires_s: Echo's
            per-IP limiter (disabled by default, as in NICo).
        site_down_delay_s: real seconds a down site's calls hang before their 500.
        task_runs: serve NICo ``main``'s Task Runs (``/task/run...``) with Flow's operation-run
            dispatcher; v2.0 (the default) has none. Operation Rules (``/task/rule...``) are
            served by v2.0 and main alike (``operation_rules``), not by 1.6.
        workflow_timeout_s: real seconds a handler waits for a workflow no agent picks up
            (``WorkflowContextTimeout``, 50 s); per site ``SiteFaults.workflow_timeout_s``.
        site_faults: fleet faults at start, keyed by the 0-based index among Flow sites
            (changeable at runtime, ``PUT /_sim/sites/{id}/faults``).
        keycloak: the ``/auth`` routes exist (without Keycloak they are Echo's 404).
        service_accounts: ``POST /auth/login`` by clientId is enabled (else 401 "Service
            accounts are not enabled").
    """

    org: str = "acme"
    nico_version: NicoVersion = "2.0"
    task_list_paging: bool = False
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    speed: float = 1.0
    start: datetime | None = None
    tokens: tuple[str, ...] = ("sim-token",)
    client_credentials: dict[str, str] = field(default_factory=lambda: {"nico-exporter": "sim-secret"})
    require_auth: bool = True
    token_ttl_s: float = 300.0
    refresh_ttl_s: float = 1800.0
    leak_queue_timeout_s: float = 0.0
    admit_delay_s: tuple[float, float] = (1.0, 3.0)
    first_stage_delay_s: tuple[float, float] = (0.2, 1.0)
    nvlswitch_spelling: bool = False
    list_order: ListOrder = "heap"
    legacy_routes_only: bool = False
    rate_limit: bool = False
    rate_limit_rate: float = 10.0
    rate_limit_burst: int = 30
    rate_limit_expires_s: float = 180.0
    site_down_delay_s: float = 0.0
    task_runs: bool = False
    workflow_timeout_s: float = WORKFLOW_CONTEXT_TIMEOUT_S
    site_faults: dict[int, SiteFaults] = field(default_factory=dict)
    keycloak: bool = True
    service_accounts: bool = True

    def __post_init__(self) -> None:
        if self.nico_version not in ("2.0", "1.6"):
            raise ValueError("nico_version must be 2.0 or 1.6")
        if not self.workflow_timeout_s >= 0:
            raise ValueError("workflow_timeout_s must not be negative")
        for index in self.site_faults:
            if not isinstance(index, int) or not 0 <= index < self.scenario.sites:
                raise ValueError(
                    f"site_faults: no Flow site {index!r} (keys are 0-based among {self.scenario.sites})"
                )
        if self.scenario.rollouts and not self.task_runs:
            raise ValueError("scenario rollouts need task_runs (a NICo main server)")

    @property
    def operation_rules(self) -> bool:
        """Whether the server has Operation Rules (``/task/rule``, and Flow resolving a rule per
        submission): v2.0 and main (release/v2.0 rest-api/api/pkg/api/routes.go:945-970); not 1.6,
        whose routes have no ``/task/rule``."""
        return self.nico_version != "1.6" or self.task_runs

    @property
    def reports(self) -> bool:
        """Whether tasks carry ``report`` (and lists take ``includeReport``): 2.0 and later."""
        return self.nico_version != "1.6"


@dataclass(frozen=True)
class TaskTruth:
    """What really happened to a task: the yardstick for the exporter's counters and spans."""

    id: str
    site_id: str
    rack_id: str
    tray_ids: tuple[str, ...]
    operation: str
    operation_code: str
    description: str
    source: str
    status: str
    message: str
    created: datetime
    started: datetime | None
    updated: datetime
    finished: datetime | None
    outcome: str
    failed_stage: int | None
    stuck_stage: int | None
    error: str | None
    report: dict[str, Any] | None
    forgotten: bool = False

    def as_json(self) -> dict[str, Any]:
        def ts(value: datetime | None) -> str | None:
            return None if value is None else format_timestamp(value, fraction=True)

        return {
            "id": self.id,
            "siteId": self.site_id,
            "rackId": self.rack_id,
            "trayIds": list(self.tray_ids),
            "operation": self.operation,
            "operationCode": self.operation_code,
            "description": self.description,
            "source": self.source,
            "status": self.status,
            "message": self.message,
            "created": ts(self.created),
            "started": ts(self.started),
            "updated": ts(self.updated),
            "finished": ts(self.finished),
            "outcome": self.outcome,
            "failedStage": self.failed_stage,
            "stuckStage": self.stuck_stage,
            "error": self.error,
            "report": self.report,
            "forgotten": self.forgotten,
        }


class RequestStats:
    """Requests served, by (method, route template, status): the API calls a client made; and
    ``/v2`` requests by the ``siteId`` they named (query or body), whatever their status."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str, int]] = Counter()
        self.sites: Counter[str] = Counter()

    def record(self, method: str, route: str, status: int) -> None:
        self.counts[(method, route, status)] += 1

    def record_site(self, site_id: str) -> None:
        self.sites[site_id] += 1

    def total(self, *, prefix: str = "/v2") -> int:
        """Requests whose route starts with ``prefix`` (default: the NICo API proper)."""
        return sum(count for (_m, route, _s), count in self.counts.items() if route.startswith(prefix))

    def reset(self) -> None:
        self.counts.clear()
        self.sites.clear()

    def as_json(self) -> dict[str, Any]:
        rows = [
            {"method": method, "route": route, "status": status, "count": count}
            for (method, route, status), count in sorted(self.counts.items())
        ]
        return {"total": self.total(), "requests": rows, "sites": dict(sorted(self.sites.items()))}


class Simulation:
    """A simulated NICo: build it from a config, serve it with :func:`create_app`, query its truth.

    Args:
        config: the simulator configuration.
        clock: simulated time (default: an :class:`AcceleratedClock` at ``config.speed``).
        monotonic: real-time source for token expiry, rate limiting and fault windows (tests inject one).
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        clock: Clock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config = config or SimulatorConfig()
        self.clock: Clock = clock or AcceleratedClock(config.start, config.speed)
        start = self.clock.now()
        history = timedelta(hours=config.scenario.history_hours)
        self.world = World(
            rng=random.Random(config.scenario.seed + 1),
            start=start - history,
            admit_delay_s=config.admit_delay_s,
            first_stage_delay_s=config.first_stage_delay_s,
        )
        self.scenario = Scenario(
            config.scenario, self.world, leak_queue_timeout_s=config.leak_queue_timeout_s
        )
        self.world.set_stage_sampler(self.scenario.stage_seconds)
        self.world.set_stage_factor(self.scenario.stage_factor)
        # Sites were registered well before the simulated history begins.
        registered = start - history - timedelta(days=90)
        self.scenario.populate(config.org, registered)
        # Flow's operation rules (v2.0 and main) and runs (main only): None on a 1.6 server.
        self.runs: RunManager | None = None
        if config.operation_rules:
            self.runs = RunManager(self.world, random.Random(config.scenario.seed + 3))
            for site in self.world.sites.values():
                if site.flow:
                    self.runs.add_default_rules(site.id, registered + timedelta(days=1))
            for rollout in config.scenario.rollouts:
                self.world.schedule(
                    start + timedelta(seconds=rollout.at_s), partial(self._start_rollout, rollout)
                )
        self.scenario.write_history(start - history)
        self.scenario.start(start - history, start)
        horizon = config.scenario.horizon_hours
        # When the scenario stops submitting (None: never): ground truth for "the traffic is over".
        self.arrivals_end = None if horizon is None else start + timedelta(hours=horizon)
        self.faults = FaultInjector(config.faults, monotonic)
        self.tokens = TokenStore(
            static_tokens=config.tokens,
            client_credentials=config.client_credentials,
            org=config.org,
            token_ttl_s=config.token_ttl_s,
            refresh_ttl_s=config.refresh_ttl_s,
            monotonic=monotonic,
            service_accounts=config.service_accounts,
        )
        self.access = AccessSwitches(keycloak=config.keycloak)
        self.limiter = RateLimiter(
            rate=config.rate_limit_rate,
            burst=config.rate_limit_burst,
            expires_s=config.rate_limit_expires_s,
            monotonic=monotonic,
        )
        self.shuffle_rng = random.Random(config.scenario.seed + 2)
        # Row order of rack and tray lists of a site with ``unordered_inventory``.
        self.inventory_rng = random.Random(config.scenario.seed + 4)
        self.stats = RequestStats()
        # Fleet faults (docs/simulator.md, "Fleet faults"): per site id; none means no fault.
        self.site_faults: dict[str, SiteFaults] = {}
        self.site_health: dict[str, SiteHealth] = {}
        flow_ids = self.flow_site_ids()
        for index, faults in sorted(config.site_faults.items()):
            if index >= len(flow_ids):
                raise ValueError(f"site_faults: no Flow site {index} (there are {len(flow_ids)})")
            self._apply_site_faults(flow_ids[index], faults)
        self.advance()

    # --- time ----------------------------------------------------------------------------------

    def now(self) -> datetime:
        return self.clock.now()

    def advance(self) -> int:
        """Process every world event due by ``clock.now()``; returns the number processed."""
        return self.world.advance_to(self.clock.now())

    # --- inventory -----------------------------------------------------------------------------

    def sites(self, *, include_gone: bool = False) -> list[Site]:
        """Sites in creation order (removed ones only with ``include_gone``)."""
        return [site for site in self.world.sites.values() if include_gone or not site.gone]

    def site(self, site_id: str) -> Site | None:
        """A visible site, or None if unknown or removed."""
        site = self.world.sites.get(site_id)
        return None if site is None or site.gone else site

    def racks(self, site_id: str) -> list[Rack]:
        return [self.world.racks[rack_id] for rack_id in self.world.sites[site_id].rack_ids]

    def trays(self, site_id: str, rack_id: str | None = None) -> list[Tray]:
        rack_ids = [rack_id] if rack_id is not None else self.world.sites[site_id].rack_ids
        return [tray for rid in rack_ids for tray in self.world.rack_trays(rid)]

    def flow_site_ids(self) -> list[str]:
        return [site.id for site in self.sites() if site.flow]

    # --- outages -------------------------------------------------------------------------------

    def set_site_down(self, site_id: str, down: bool = True, *, delay_s: float | None = None) -> None:
        """Take a site's Flow offline (its calls answer 500 after ``delay_s``) or back online."""
        site = self._site(site_id)
        site.down = down
        site.down_delay_s = self.config.site_down_delay_s if delay_s is None else delay_s
        site.updated = self.now()

    def remove_site(self, site_id: str) -> None:
        """Hide a site from every list; its calls answer 400 "Site ... does not exist"."""
        self._site(site_id).gone = True

    def restore_site(self, site_id: str) -> None:
        self._site(site_id).gone = False

    def _site(self, site_id: str) -> Site:
        site = self.world.sites.get(site_id)
        if site is None:
            raise SimulationError(f"unknown site {site_id}")
        return site

    # --- fleet faults ----------------------------------------------------------------------------

    def faults_of(self, site_id: str) -> SiteFaults:
        """The site's fleet faults (``NO_FAULTS`` when none was set)."""
        return self.site_faults.get(site_id, NO_FAULTS)

    def set_site_faults(self, site_id: str, changes: Mapping[str, Any]) -> SiteFaults:
        """Apply partial fleet faults (camelCase JSON keys) to a site; returns them.

        Raises :class:`SimulationError` for an unknown site, ``ValueError`` for a bad key or value.
        """
        self._site(site_id)
        faults = self.faults_of(site_id).updated(changes)
        self.advance()
        self._apply_site_faults(site_id, faults)
        return faults

    def _apply_site_faults(self, site_id: str, faults: SiteFaults) -> None:
        """Install ``faults`` and write the status rows the change causes, as NICo would: the
        monitor's Error row when it had turned the site Error, then the new status's row."""
        now = self.now()
        old = self.faults_of(site_id)
        health = self.site_health.setdefault(site_id, SiteHealth())
        before, live = current_status(old, health, now)
        if faults.silent and not old.silent:
            health.silent_since = now
        elif not faults.silent:
            health.silent_since = None
        after, _ = current_status(faults, health, now)
        if after != before:
            if live is not None:
                health.history.append(live)
            health.history.append(StatusEntry(after, status_message(after, faults), now))
        if faults == NO_FAULTS:
            self.site_faults.pop(site_id, None)
        else:
            self.site_faults[site_id] = faults
        if self.runs is not None:
            # A v2.0 Flow has no operation-run dispatcher (release/v2.0 flow/internal/operationrun
            # has no manager/dispatcher): its runs are created and never move.
            if "runs" in faults.flow_lacks:
                self.runs.undispatched_sites.add(site_id)
            else:
                self.runs.undispatched_sites.discard(site_id)

    def site_status(self, site: Site) -> SiteStatusView:
        """The site row as ``GET /site`` renders it: status, isOnline (``status == Registered``,
        model/site.go:270; a site taken ``down`` is offline too, as before) and the status rows
        written since the start, newest first."""
        health = self.site_health.get(site.id) or SiteHealth()
        status, live = current_status(self.faults_of(site.id), health, self.now())
        history = [*([live] if live is not None else []), *reversed(health.history)]
        updated = max((entry.at for entry in history), default=None)
        return SiteStatusView(
            status=status,
            is_online=status == "Registered" and not site.down,
            history=tuple(history),
            updated=updated,
        )

    def workflow_timeout_s(self, site_id: str) -> float:
        """Real seconds a call to this site's workflow hangs when no agent picks it up."""
        return self.faults_of(site_id).timeout_s(self.config.workflow_timeout_s)

    def configure_faults(self, changes: dict[str, Any]) -> FaultConfig:
        """Apply partial fault settings (``FaultConfig`` field names); returns the new config."""
        config = self.faults.config.updated(changes)
        self.faults.configure(config)
        return config

    # --- tasks ---------------------------------------------------------------------------------

    def create_task(
        self,
        site_id: str,
        rack_id: str,
        operation: Operation | str,
        *,
        tray_ids: Sequence[str] | None = None,
        outcome: Outcome | str = Outcome.SUCCEED,
        fail_stage: int | None = None,
        error: str | None = None,
        stage_seconds: float | Sequence[float] | None = None,
        description: str | None = None,
        source: str = "rest",
        queue_timeout_s: float | None = None,
    ) -> str:
        """Submit a task now, as its real creator would; returns its id.

        ``source`` says who submits: ``rest`` (the reject strategy: a conflicting submission
        raises :class:`~.world.Rejected` and creates nothing), ``leak_detection`` (the queue
        strategy, one tray; Waiting behind a conflict, at most 5 per rack) or ``schedule:<name>``
        (reject, or queue when ``queue_timeout_s`` is given). The description defaults to what
        that creator writes ("API power on Rack", "Leak detection: ...", "<name> — <time>").
        """
        self.advance()
        operation = Operation(operation)
        outcome = Outcome(outcome)
        rack = self.world.racks.get(rack_id)
        if rack is None or rack.site_id != site_id:
            raise SimulationError(f"rack {rack_id} is not in site {site_id}")
        if source == "leak_detection":
            operation = Operation.LEAK_DETECTION
            if queue_timeout_s is None:
                queue_timeout_s = self.config.leak_queue_timeout_s
        elif source != "rest" and not source.startswith("schedule:"):
            raise SimulationError("source must be rest, leak_detection or schedule:<name>")
        if description is None:
            description = self._describe(operation, rack, tray_ids, source)
        task = self.world.submit(
            site_id,
            rack_id,
            operation,
            description=description,
            tray_ids=tray_ids,
            outcome=outcome,
            fail_stage=fail_stage,
            error=error,
            stage_seconds=stage_seconds,
            queue_timeout_s=queue_timeout_s if source != "rest" else None,
            source=source,
        )
        return task.id

    def _describe(self, operation: Operation, rack: Rack, tray_ids: Sequence[str] | None, source: str) -> str:
        if source.startswith("schedule:"):
            return schedule_description(source.removeprefix("schedule:"), self.world.now)
        if operation is Operation.LEAK_DETECTION:
            if tray_ids is None or len(tray_ids) != 1 or tray_ids[0] not in self.world.trays:
                raise SimulationError("leak detection targets exactly one tray")
            tray = self.world.trays[tray_ids[0]]
            if tray.type not in (ComponentType.COMPUTE, ComponentType.NVSWITCH):
                raise SimulationError("leak detection targets compute trays and NVSwitch trays only")
            return describe(
                operation,
                tray_scoped=True,
                rack_id=rack.id,
                component_id=tray.component_id,
                component_type=tray.type,
            )
        return describe(operation, tray_scoped=tray_ids is not None, rack_id=rack.id)

    def task(self, task_id: str) -> Task | None:
        self.advance()
        return self.world.tasks.get(task_id)

    def cancel_task(self, task_id: str) -> Task:
        """Cancel like ``POST /task/{id}/cancel``; raises ``CancelRefused`` for Succeeded/Failed."""
        self.advance()
        if task_id not in self.world.tasks:
            raise SimulationError(f"unknown task {task_id}")
        return self.world.cancel(task_id, self.world.now)

    def forget_task(self, task_id: str) -> None:
        """Not NICo behaviour (Flow never deletes a task): a Flow database restored from backup.

        The task answers ``GET /task/{id}`` with Flow's "no rows" 500 afterwards; it stays in
        the ground truth, marked forgotten.
        """
        self.advance()
        self.world.forget(task_id)

    def list_order(self, tasks: list[Task]) -> list[Task]:
        """Order a task list as the server returns it (see ``SimulatorConfig.list_order``)."""
        if self.config.list_order == "shuffle":
            tasks = list(tasks)
            self.shuffle_rng.shuffle(tasks)
        elif self.config.list_order == "insertion":
            tasks = sorted(tasks, key=lambda task: (task.created, task.id))
        return tasks

    # --- task runs -----------------------------------------------------------------------------

    def create_task_run(
        self,
        site_id: str,
        *,
        version: str,
        name: str = "firmware-rollout",
        description: str = "",
        max_concurrent_targets: int = 1,
        phases: int = 1,
        auto_advance: bool = False,
        gates: Sequence[SafetyGate] = (),
        percent: int = 100,
        retry_timeout_s: float = 3600.0,
        initial_retry_delay_s: float = 30.0,
        max_retry_delay_s: float = 300.0,
        child: ChildPlan | None = None,
    ) -> str:
        """Create a firmware Task Run now as an operator would (``POST /task/run``); its id.

        ``phases`` > 1 is an equal phase plan; ``child`` is the simulation's plan for how the run's
        child tasks end (not NICo configuration). Needs ``task_runs``.
        """
        self.advance()
        if self.runs is None or not self.config.task_runs:
            raise SimulationError("task runs need task_runs (a NICo main server)")
        if self.site(site_id) is None:
            raise SimulationError(f"unknown site {site_id}")
        run = self.runs.create(
            site_id,
            name=name,
            description=description,
            version=version,
            options=RunOptions(
                max_concurrent_targets=max_concurrent_targets,
                gates=tuple(gates) or (SafetyGate("failure_rate", 100),),
                phase_plan=PhasePlan("equal", (phases,)) if phases > 1 else None,
                auto_advance=auto_advance,
                retry_timeout_s=retry_timeout_s,
                initial_retry_delay_s=initial_retry_delay_s,
                max_retry_delay_s=max_retry_delay_s,
                ordering_seed=self.world.new_id(),
            ),
            percent=percent,
            selector_seed=self.world.new_id(),
            child=child,
        )
        return run.id

    def add_operation_rule(
        self,
        site_id: str,
        operation: Operation,
        *,
        name: str,
        layout: Sequence[Sequence[ComponentType | str]] | None = None,
        is_default: bool = False,
        rack_ids: Sequence[str] = (),
    ) -> str:
        """A custom operation rule, as an operator creates it (``POST /task/rule``); its id.

        ``is_default``: it becomes the operation's default (the previous default stops being
        one); ``rack_ids``: racks associated with it. The site's submissions run the rule Flow's
        resolver picks from then on. Needs a server with rules (v2.0 or main, not 1.6).
        """
        self.advance()
        if self.runs is None:
            raise SimulationError("operation rules need a NICo 2.0 server (1.6 has none)")
        if self.site(site_id) is None:
            raise SimulationError(f"unknown site {site_id}")
        racks = {rack.id for rack in self.racks(site_id)}
        if unknown := [r for r in rack_ids if r not in racks]:
            raise SimulationError(f"racks not in site {site_id}: {', '.join(unknown)}")
        stages = None if layout is None else [[ComponentType(kind) for kind in stage] for stage in layout]
        rule = self.runs.add_rule(site_id, operation, name=name, layout=stages, is_default=is_default)
        for rack_id in rack_ids:
            self.runs.associate(site_id, rack_id, rule.id)
        return rule.id

    def plan_run_children(self, run_id: str, child: ChildPlan) -> None:
        """Change how a run's not-yet-submitted child tasks will end (a gate needs failures)."""
        self.advance()
        if self.runs is None or run_id not in self.runs.runs:
            raise SimulationError(f"unknown task run {run_id}")
        self.runs.runs[run_id].child = child

    def _start_rollout(self, rollout: RolloutConfig, at: datetime) -> None:
        assert self.runs is not None
        flow_sites = [site for site in self.world.sites.values() if site.flow]
        site = flow_sites[rollout.site_index]
        plan = PhasePlan("equal", (rollout.phases,)) if rollout.phases > 1 else None
        gates = (SafetyGate("failure_rate", rollout.failure_rate_threshold),)
        self.runs.create(
            site.id,
            name=rollout.name,
            description=f"site-wide firmware rollout to {rollout.version}",
            version=rollout.version,
            options=RunOptions(
                max_concurrent_targets=rollout.max_concurrent_targets,
                gates=gates,
                phase_plan=plan,
                auto_advance=rollout.auto_advance,
                ordering_seed=f"{rollout.name}-order",
            ),
            percent=100,
            selector_seed=f"{rollout.name}-select",
            child=ChildPlan(failure_rate=rollout.child_failure_rate, fail_phases=rollout.fail_phases),
        )

    # --- ground truth --------------------------------------------------------------------------

    def truth(self) -> list[TaskTruth]:
        """Every task ever created, oldest first, with its plan and current state."""
        self.advance()
        everything = [*self.world.tasks.values(), *self.world.forgotten.values()]
        tasks = sorted(everything, key=lambda task: (task.created, task.id))
        return [_truth(task, forgotten=task.id in self.world.forgotten) for task in tasks]

    def truth_json(self) -> dict[str, Any]:
        """Ground truth for ``GET /_sim/truth``: time, inventory (no trays) and tasks."""
        truths = self.truth()
        return {
            "now": format_timestamp(self.now(), fraction=True),
            "arrivalsEnd": None
            if self.arrivals_end is None
            else format_timestamp(self.arrivals_end, fraction=True),
            "org": self.config.org,
            "sites": [
                {
                    "id": site.id,
                    "name": site.name,
                    "flow": site.flow,
                    "down": site.down,
                    "gone": site.gone,
                    # Fleet faults: the truth keeps true time; the skew says how the site renders.
                    "status": self.site_status(site).status,
                    "clockSkewSeconds": self.faults_of(site.id).clock_skew_s,
                    "faults": self.faults_of(site.id).as_json(self.config.workflow_timeout_s),
                    "racks": [{"id": rack.id, "name": rack.name} for rack in self.racks(site.id)],
                }
                for site in self.sites(include_gone=True)
            ],
            "tasks": [truth.as_json() for truth in truths],
            # NICo main only: every operation run with its stats and targets (taskId included).
            "taskRuns": [] if self.runs is None else self.runs.truth_json(),
            "taskRules": []
            if self.runs is None
            else [
                {**rule.as_json(), "siteId": site_id}
                for site_id, rules in self.runs.rules.items()
                for rule in rules
            ],
            # Not NICo behaviour: the scenario's stage slow-downs, when each began and where.
            "slowdowns": [
                {
                    "siteId": site_id,
                    "siteName": self.world.sites[site_id].name,
                    "operation": str(slowdown.operation),
                    "componentType": slowdown.component_type.value,
                    "factor": slowdown.factor,
                    "at": format_timestamp(begins, fraction=True),
                }
                for site_id, slowdown, begins in self.scenario.slowdowns
            ],
            "rejected": [
                {
                    "at": format_timestamp(rejection.at, fraction=True),
                    "rackId": rejection.rack_id,
                    "operation": rejection.operation.value,
                    "source": rejection.source,
                    "reason": rejection.reason,
                }
                for rejection in self.world.rejections
            ],
        }


def _truth(task: Task, *, forgotten: bool = False) -> TaskTruth:
    return TaskTruth(
        forgotten=forgotten,
        id=task.id,
        site_id=task.site_id,
        rack_id=task.rack_id,
        tray_ids=task.tray_ids,
        operation=task.operation.value,
        operation_code=task.operation_code,
        description=task.description,
        source=task.source,
        status=task.status.value,
        message=task.message,
        created=task.created,
        started=task.started,
        updated=task.updated or task.created,
        finished=task.finished,
        outcome=task.outcome.value,
        failed_stage=task.fail_stage if task.outcome is Outcome.FAIL else None,
        stuck_stage=task.fail_stage if task.outcome is Outcome.STUCK else None,
        error=task.error,
        report=None if task.report is None else report_json(task.report),
    )
