"""The polling jobs: discovery, active polls, final fetches, tray attribution, reconciliation.

Every NICo call runs a Temporal workflow on the site, so the jobs spend calls carefully and share
the client's token bucket by priority: final fetch > active poll > tray attribution >
reconciliation > discovery. When the budget cannot hold the configured freshness the poller says
so (a warning naming the shortfall, and ``stats``) and sheds the low-priority jobs first.

- discovery: sites (configured, or every Flow-enabled one), their racks, their trays (one paged
  ``GET /tray?siteId=`` per site). Racks this shard does not own are ignored; racks that
  disappear drop their state.
- active poll, per rack: ``GET /rack/{id}/task?activeOnly=true&includeReport=true``. One call
  covers the rack's 35 trays. A task that leaves the active set is queued for a final fetch.
- final fetch: ``GET /task/{id}`` (report always included) for the terminal status, ``finished``
  and final report; retried with backoff until it succeeds; a 404 is recorded as vanished.
- tray attribution, once per task: rack-wide steps need no call; otherwise a scan of
  ``GET /tray/{id}/task`` over trays of the types the report names, stopping when found.
- reconciliation, per rack: a ``pageSize=1`` probe compares ``X-Pagination.total`` with what the
  store expects; only a difference pages the full list, to find tasks that started and finished
  between active polls. The first full listing of a rack sets its baseline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from exporter.attribution import Plan, plan
from exporter.client import NicoClient
from exporter.errors import FlowDisabled, NicoError, NotFound
from exporter.models import ComponentType, Rack, Site, Task, Tray
from exporter.ratelimit import Priority
from exporter.sharding import Shard
from exporter.state import Store

log = logging.getLogger(__name__)

# Attribution passes before a task is settled with the trays found so far (a task that ended
# before it could be seen on its trays' lists).
MAX_ATTRIBUTION_PASSES = 3
FINAL_FETCH_MAX_BACKOFF = 60.0


@dataclass(frozen=True)
class Intervals:
    """How often each job runs, in seconds."""

    active: float = 15.0
    trays: float = 60.0
    reconcile: float = 300.0
    discovery: float = 300.0
    final_fetch: float = 2.0


@dataclass
class SiteHealth:
    """How the last active cycle went for one site (``nico_site_up`` and freshness)."""

    site: Site
    up: bool = False
    last_success: float | None = None
    last_error: str | None = None
    racks_ok: int = 0
    racks_failed: int = 0


@dataclass
class RackEntry:
    site_id: str
    rack: Rack
    trays: list[Tray] = field(default_factory=list)
    last_poll: float | None = None
    last_reconcile: float | None = None


@dataclass
class FinalFetch:
    site_id: str
    rack_id: str
    attempts: int = 0
    not_before: float = 0.0


@dataclass
class Attribution:
    site_id: str
    rack_id: str
    plan: Plan
    found: dict[ComponentType, set[str]] = field(default_factory=dict)
    passes: int = 0

    def complete(self) -> bool:
        return all(len(self.found.get(kind, ())) >= count for kind, count in self.plan.scan.items())

    def trays(self) -> frozenset[str]:
        return self.plan.known.union(*self.found.values())


@dataclass
class PollerStats:
    """What the jobs did, for self-metrics and logs."""

    cycles: int = 0
    last_cycle_seconds: float = 0.0
    cycle_overruns: int = 0
    required_rps: float = 0.0
    budget_rps: float = 0.0
    # Seconds by which the configured active interval cannot be held (0 when it can).
    freshness_shortfall_seconds: float = 0.0
    shed: dict[str, int] = field(default_factory=dict)
    discoveries: int = 0
    discovery_errors: int = 0
    full_listings: int = 0
    tray_scans: int = 0


class Poller:
    """Runs the polling jobs against one NICo for the racks this shard owns.

    Args:
        client: the NICo client (its token bucket is the shared budget).
        store: where observations go.
        intervals: how often each job runs.
        sites: site ids to watch; empty means every Flow-enabled site.
        shard: which racks this replica owns.
        clock: wall-clock epoch seconds, for timestamps compared with NICo's.
        monotonic: seconds for the poller's own pacing (final-fetch backoff, discovery shedding).
            Deadlines handed to the client are always real ``time.monotonic()``.
    """

    def __init__(
        self,
        client: NicoClient,
        store: Store,
        *,
        intervals: Intervals | None = None,
        sites: Sequence[str] = (),
        shard: Shard | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.store = store
        self.intervals = intervals or Intervals()
        self.site_filter = list(sites)
        self.shard = shard or Shard()
        self.clock = clock
        self.monotonic = monotonic
        self.health: dict[str, SiteHealth] = {}
        self.racks: dict[str, RackEntry] = {}
        self.final_fetches: dict[str, FinalFetch] = {}
        self.attributions: dict[str, Attribution] = {}
        self.stats = PollerStats(budget_rps=client.limiter.rate)
        self.ready = False
        self._last_overrun = False
        self._last_discovery = 0.0
        # Racks that left the inventory in this run: if they come back, list them in full (their
        # tasks may have ended while they were away).
        self._relist: set[str] = set()
        for task_id, (site_id, rack_id, _) in store.recovered.items():
            self.final_fetches[task_id] = FinalFetch(site_id, rack_id)

    # -- budget ------------------------------------------------------------------------------------

    def _saturated(self) -> bool:
        """The budget is all spoken for: urgent callers wait, or the last active cycle overran."""
        return self._last_overrun or self.client.limiter.waiting() > 0

    def _shed(self, job: str) -> None:
        self.stats.shed[job] = self.stats.shed.get(job, 0) + 1
        log.info("budget saturated: skipped this %s run", job, extra={"job": job})

    def _check_budget(self) -> None:
        iv = self.intervals
        racks, sites = len(self.racks), max(1, len(self.health))
        required = racks / iv.active + racks / iv.reconcile + 3 * sites / iv.discovery
        self.stats.required_rps = required
        budget = self.client.limiter.rate
        if budget <= 0:
            self.stats.freshness_shortfall_seconds = 0.0
            return
        # The active polls alone take racks/budget seconds of the whole budget per cycle.
        shortfall = max(0.0, racks / budget - iv.active)
        self.stats.freshness_shortfall_seconds = shortfall
        if required > budget:
            log.warning(
                "%d racks polled every %gs need about %.1f req/s, over the budget of %g req/s: "
                "rack data will be up to %.0fs old and low-priority jobs will be shed; raise "
                "api.max_requests_per_second if NICo allows, lengthen polling.active_interval, or shard",
                racks,
                iv.active,
                required,
                budget,
                iv.active + shortfall,
                extra={"required_rps": round(required, 2), "budget_rps": budget},
            )

    # -- discovery ---------------------------------------------------------------------------------

    async def discover(self) -> None:
        """The discovery job: refresh the inventory, then list new and returning racks in full."""
        await self.discover_sites_and_racks()
        await self.list_new_racks()

    async def discover_sites_and_racks(self) -> None:
        """Refresh sites, racks and trays; drop racks and sites that went away."""
        if (
            self.ready
            and self._saturated()
            and self.monotonic() - self._last_discovery < 3 * self.intervals.discovery
        ):
            self._shed("discovery")
            return
        self._last_discovery = self.monotonic()
        deadline = time.monotonic() + self.intervals.discovery
        self.stats.discoveries += 1
        try:
            listing = await self.client.list_sites(flow_enabled=True, deadline=deadline)
        except NicoError as exc:
            self.stats.discovery_errors += 1
            log.error("site discovery failed: %s", exc, extra={"endpoint": "/site"})
            return
        sites = {s.id: s for s in listing.items if s.flow_enabled or not s.capabilities}
        if self.site_filter:
            missing = [s for s in self.site_filter if s not in sites]
            if missing:
                log.warning(
                    "configured sites not found among Flow-enabled sites: %s",
                    ", ".join(missing),
                    extra={"sites": missing},
                )
            sites = {sid: s for sid, s in sites.items() if sid in self.site_filter}
        results = await asyncio.gather(*(self._discover_site(site, deadline) for site in sites.values()))
        seen_racks: set[str] = set()
        for site, racks in zip(sites.values(), results, strict=True):
            health = self.health.setdefault(site.id, SiteHealth(site))
            health.site = site
            if racks is None:  # this site's discovery failed: keep what we knew
                seen_racks.update(r for r, e in self.racks.items() if e.site_id == site.id)
                continue
            seen_racks.update(racks)
        for rack_id in set(self.racks) - seen_racks:
            log.info(
                "rack left the inventory", extra={"rack_id": rack_id, "site_id": self.racks[rack_id].site_id}
            )
            self.store.drop_rack(rack_id)
            del self.racks[rack_id]
        for site_id in set(self.health) - set(sites):
            log.info("site left the inventory", extra={"site_id": site_id})
            del self.health[site_id]
        self.store.commit()
        self.ready = True
        self._check_budget()

    async def _discover_site(self, site: Site, deadline: float) -> set[str] | None:
        try:
            racks = await self.client.list_racks(site.id, deadline=deadline)
            trays = await self.client.list_trays(site.id, deadline=deadline)
        except FlowDisabled:
            log.warning("site has no NICo Flow: skipped", extra={"site_id": site.id})
            return set()
        except NicoError as exc:
            self.stats.discovery_errors += 1
            log.error("rack/tray discovery failed: %s", exc, extra={"site_id": site.id})
            return None
        by_rack: dict[str, list[Tray]] = {}
        for tray in trays.items:
            if tray.rack_id is not None:
                by_rack.setdefault(tray.rack_id, []).append(tray)
                self.store.tray_types[tray.id] = tray.type.value
        owned: set[str] = set()
        for rack in racks.items:
            if not self.shard.owns(rack.id):
                continue
            owned.add(rack.id)
            entry = self.racks.get(rack.id)
            if entry is None:
                entry = self.racks[rack.id] = RackEntry(site.id, rack)
            entry.rack = rack
            entry.trays = sorted(by_rack.get(rack.id, []), key=lambda t: t.id)
        return owned

    # -- active polls ------------------------------------------------------------------------------

    async def poll_active(self) -> None:
        """Poll every owned rack's active tasks once, within one active interval."""
        started = time.monotonic()
        deadline = started + self.intervals.active
        # Least recently polled first: when the budget is short the racks left over go first next
        # time, and when it is not, every rack keeps its place and so its period.
        entries = sorted(self.racks.items(), key=lambda item: item[1].last_poll or 0.0)
        results = await asyncio.gather(*(self._poll_rack(rid, e, deadline) for rid, e in entries))
        outcome: dict[str, list[str | None]] = {}
        for (_, entry), error in zip(entries, results, strict=True):
            outcome.setdefault(entry.site_id, []).append(error)
        now = self.clock()
        for site_id, health in self.health.items():
            errors = outcome.get(site_id, [])
            failed = [e for e in errors if e is not None]
            health.racks_ok, health.racks_failed = len(errors) - len(failed), len(failed)
            # Up when most of its racks answered: one flaky rack is not a site outage.
            health.up = bool(errors) and len(failed) * 2 < len(errors)
            if health.up:
                health.last_success = now
            if failed:
                health.last_error = failed[0]
                log.warning(
                    "%d of %d rack polls failed: %s",
                    len(failed),
                    len(errors),
                    failed[0],
                    extra={"site_id": site_id},
                )
        elapsed = time.monotonic() - started
        self.stats.cycles += 1
        self.stats.last_cycle_seconds = elapsed
        self._last_overrun = elapsed > self.intervals.active * 0.9
        if self._last_overrun:
            self.stats.cycle_overruns += 1

    async def _poll_rack(self, rack_id: str, entry: RackEntry, deadline: float) -> str | None:
        try:
            listing = await self.client.list_rack_tasks(
                entry.site_id, rack_id, active_only=True, include_report=True, deadline=deadline
            )
        except NicoError as exc:
            return f"{type(exc).__name__}: {exc}"
        now = self.clock()
        left = self.observe_active(entry.site_id, rack_id, listing.items, now, complete=listing.complete)
        entry.last_poll = now
        # Fetch the tasks that just left the active set now rather than at the next final-fetch
        # run: the terminal state is what pages someone.
        if left:
            await asyncio.gather(*(self._fetch_final(tid, self.final_fetches[tid], deadline) for tid in left))
            self.store.commit()
        return None

    def observe_active(
        self, site_id: str, rack_id: str, tasks: Iterable[Task], now: float, *, complete: bool
    ) -> list[str]:
        """Apply one rack's active list: observe each task; returns ids newly queued for a final fetch."""
        seen: set[str] = set()
        queued: list[str] = []
        for task in tasks:
            seen.add(task.id)
            needs_fetch = self.store.observe(site_id, rack_id, task, now, with_report=True)
            if needs_fetch and self._queue_final(task.id, site_id, rack_id):
                queued.append(task.id)
        if complete:
            # Only a complete listing is evidence of absence (pages can skip a task).
            for task_id in self.store.active_ids(rack_id) - seen:
                if self._queue_final(task_id, site_id, rack_id):
                    queued.append(task_id)
        self.store.commit()
        return queued

    def _queue_final(self, task_id: str, site_id: str, rack_id: str) -> bool:
        """Queue a final fetch; False if one is already queued."""
        if task_id in self.final_fetches:
            return False
        self.final_fetches[task_id] = FinalFetch(site_id, rack_id)
        return True

    # -- final fetches -----------------------------------------------------------------------------

    async def fetch_finals(self) -> None:
        """Fetch every due task that left its rack's active set, once, for its final state."""
        now = self.monotonic()
        due = [(tid, f) for tid, f in self.final_fetches.items() if f.not_before <= now]
        if not due:
            return
        deadline = time.monotonic() + max(5.0, self.intervals.active)
        await asyncio.gather(*(self._fetch_final(tid, f, deadline) for tid, f in due))
        self.store.commit()

    async def _fetch_final(self, task_id: str, pending: FinalFetch, deadline: float) -> None:
        try:
            task = await self.client.get_task(pending.site_id, task_id, deadline=deadline)
        except NotFound:
            log.warning(
                "task vanished before its final fetch", extra={"task_id": task_id, "rack_id": pending.rack_id}
            )
            self.store.vanish(task_id, self.clock())
            self.final_fetches.pop(task_id, None)
            return
        except NicoError as exc:
            pending.attempts += 1
            backoff = min(FINAL_FETCH_MAX_BACKOFF, self.intervals.final_fetch * 2**pending.attempts)
            pending.not_before = self.monotonic() + backoff
            log.info(
                "final fetch failed (attempt %d, next in %.0fs): %s",
                pending.attempts,
                backoff,
                exc,
                extra={"task_id": task_id, "rack_id": pending.rack_id},
            )
            return
        self.final_fetches.pop(task_id, None)
        self.store.observe(pending.site_id, pending.rack_id, task, self.clock(), with_report=True)

    # -- tray attribution --------------------------------------------------------------------------

    async def attribute_trays(self) -> None:
        """Settle the trays of tasks that do not have them yet, scanning as few trays as possible."""
        for record in list(self.store.records()):
            if record.trays is not None or record.id in self.attributions:
                continue
            entry = self.racks.get(record.rack_id)
            if entry is None:
                continue
            p = plan(record.task, entry.trays)
            if p is None:
                continue  # no report yet: wait
            if p.settled:
                self.store.attribute(record.id, p.known)
            else:
                self.attributions[record.id] = Attribution(record.site_id, record.rack_id, p)
        for task_id in [t for t in self.attributions if t not in self.store.tasks]:
            del self.attributions[task_id]
        self.store.commit()
        if not self.attributions:
            return
        if self._saturated():
            self._shed("tray_attribution")
            return
        deadline = time.monotonic() + self.intervals.trays
        by_rack: dict[str, list[str]] = {}
        for task_id, pending in self.attributions.items():
            by_rack.setdefault(pending.rack_id, []).append(task_id)
        await asyncio.gather(*(self._scan_rack(rack_id, ids, deadline) for rack_id, ids in by_rack.items()))
        for task_id in list(self.attributions):
            pending = self.attributions[task_id]
            pending.passes += 1
            if pending.passes >= MAX_ATTRIBUTION_PASSES:
                log.info(
                    "settling tray attribution with %d trays found after %d passes",
                    len(pending.trays()),
                    pending.passes,
                    extra={"task_id": task_id, "rack_id": pending.rack_id},
                )
                self._settle(task_id)
        self.store.commit()

    def _settle(self, task_id: str) -> None:
        pending = self.attributions.pop(task_id)
        self.store.attribute(task_id, pending.trays())

    async def _scan_rack(self, rack_id: str, task_ids: list[str], deadline: float) -> None:
        entry = self.racks.get(rack_id)
        if entry is None:
            return
        kinds = {kind for tid in task_ids for kind in self.attributions[tid].plan.scan}
        # A task that already ended is no longer on its trays' active lists.
        active_only = all(
            not self.store.tasks[tid].is_terminal for tid in task_ids if tid in self.store.tasks
        )
        for tray in entry.trays:
            waiting = [t for t in task_ids if t in self.attributions]
            if not waiting:
                return
            if tray.type not in kinds:
                continue
            try:
                listing = await self.client.list_tray_tasks(
                    entry.site_id, tray.id, active_only=active_only, include_report=False, deadline=deadline
                )
            except NicoError as exc:
                log.info("tray scan stopped: %s", exc, extra={"rack_id": rack_id, "tray_id": tray.id})
                return
            self.stats.tray_scans += 1
            here = {t.id for t in listing.items}
            for task_id in waiting:
                pending = self.attributions[task_id]
                if task_id in here and tray.type in pending.plan.scan:
                    pending.found.setdefault(tray.type, set()).add(tray.id)
                if pending.complete():
                    self._settle(task_id)

    # -- reconciliation ----------------------------------------------------------------------------

    async def reconcile(self, *, force: bool = False) -> None:
        """Probe each rack's total; page the full list only where it differs (or no baseline yet)."""
        if not force and self._saturated():
            self._shed("reconciliation")
            return
        deadline = time.monotonic() + self.intervals.reconcile
        await asyncio.gather(*(self._reconcile_rack(rid, e, deadline) for rid, e in list(self.racks.items())))

    async def list_new_racks(self) -> None:
        """A full listing for every rack without a baseline, and every rack that came back."""
        deadline = time.monotonic() + self.intervals.reconcile
        todo = [
            (r, e)
            for r, e in self.racks.items()
            if r in self._relist or self.store.rack(r, e.site_id).baselined_at is None
        ]
        await asyncio.gather(*(self._full_listing(r, e, deadline) for r, e in todo))

    async def _reconcile_rack(self, rack_id: str, entry: RackEntry, deadline: float) -> None:
        state = self.store.rack(rack_id, entry.site_id)
        try:
            if state.baselined_at is not None:
                total = await self.client.count_rack_tasks(entry.site_id, rack_id, deadline=deadline)
                entry.last_reconcile = self.clock()
                if total == state.known_count:
                    return
                log.info(
                    "rack has %d tasks, %d expected: listing all",
                    total,
                    state.known_count,
                    extra={"rack_id": rack_id, "site_id": entry.site_id},
                )
        except NicoError as exc:
            log.info("reconciliation probe failed: %s", exc, extra={"rack_id": rack_id})
            return
        await self._full_listing(rack_id, entry, deadline)

    async def _full_listing(self, rack_id: str, entry: RackEntry, deadline: float) -> None:
        started = self.clock()
        try:
            listing = await self.client.list_rack_tasks(
                entry.site_id,
                rack_id,
                active_only=False,
                include_report=False,
                deadline=deadline,
                priority=Priority.RECONCILIATION,
            )
        except NicoError as exc:
            log.info("full listing failed: %s", exc, extra={"rack_id": rack_id})
            return
        self.stats.full_listings += 1
        # NICo's clock when the listing began, for comparison with NICo's ``finished`` times.
        if listing.server_date is not None:
            started = listing.server_date
        total = listing.total if listing.total is not None else len(listing.items)
        for task_id in self.store.baseline(entry.site_id, rack_id, listing.items, started, total):
            self._queue_final(task_id, entry.site_id, rack_id)
        entry.last_reconcile = self.clock()
        self._relist.discard(rack_id)
        self.store.commit()

    # -- housekeeping ------------------------------------------------------------------------------

    async def expire(self) -> None:
        """Forget finished tasks past their TTL."""
        for task_id in self.store.expire(self.clock()):
            self.attributions.pop(task_id, None)
        self.store.commit()

    async def start(self) -> None:
        """What runs at once on start: discovery, the first poll of every rack, new baselines."""
        await self.discover_sites_and_racks()
        await asyncio.gather(self.poll_active(), self.list_new_racks())
        await self.fetch_finals()
