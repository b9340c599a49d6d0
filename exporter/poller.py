"""The polling jobs: rack polls, final fetches, tray attribution (and discovery's entry points).

Every NICo call runs a Temporal workflow on the site, so the jobs spend calls carefully and share
the client's token bucket by priority: final fetch > rack poll > tray attribution > counter
reads and listings that name unexplained tasks > discovery. When the budget cannot hold the
configured freshness the poller says so (a warning naming the shortfall, and ``stats``) and sheds
the low-priority jobs first.

NICo v2.0's task lists take no paging parameters: each is its first 20 rows, with an exact
``X-Pagination.total``. The engine needs no list longer than that (docs/polling.md):

- rack poll, per rack and active interval, one call in steady state:
  - an idle rack reads its all-tasks total (a creation counter: NICo never deletes a task);
    only when it moved is the active list read;
  - a rack with active tasks reads ``activeOnly=true&includeReport=true``, complete while the
    rack has 20 or fewer active tasks; its total is read every ``reconcile_interval``.

  A task that leaves a complete active list is fetched at once with ``GET /task/{id}``. When a
  rack has more than 20 active tasks, the known ones not returned are followed by id, and the
  unknown ones are found on the trays' active lists. After a counter read and the active list
  that follows it, tasks the counter includes that nobody could name are counted unobserved.
  On a server that pages task lists (the spec's reading) they are named instead, by listing the
  rack, only when the counter says there is something to find.
- final fetch: ``GET /task/{id}`` (report always included) for the terminal status, ``finished``
  and final report; retried with backoff until it succeeds. A task the site does not have
  (Flow's "no rows" 500) is asked for a few times, then recorded as vanished.
- tray attribution, once per task while it is active: rack-wide steps need no call; otherwise
  the ``activeOnly=true`` lists of trays of the types its report names, stopping when found. A
  task that ends first settles with what was found.
- discovery (exporter.discovery): sites, then each site's racks and trays on its own schedule.

Rack polls are admitted, not just started: a poll starts when no rack poll waits for a request
token, racks without a baseline first, then the most overdue, so a budget too small for the fleet
makes data older but leaves no rack without its turn. A site whose breaker is open
(exporter.breaker) gets one poll per probe interval, its probe. Each poll's outcome says who
failed (exporter.inventory): a site is down only when NICo failed to answer for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from exporter.attribution import Plan, plan
from exporter.client import Listing, NicoClient
from exporter.discovery import RULES_DEADLINE_S, Discovery
from exporter.errors import (
    CredentialsRefused,
    DeadlineExceeded,
    NicoError,
    NotFound,
    SiteUnavailable,
    TaskNotOnSite,
)
from exporter.inventory import (
    RUN_POLL_DEADLINE_S,
    Intervals,
    RackEntry,
    SiteHealth,
)
from exporter.models import ComponentType, Task
from exporter.rackpolls import RackPolls
from exporter.ratelimit import Priority, TokenBucket
from exporter.runs import RunsView, RunTracker
from exporter.sharding import Shard
from exporter.state import CLOCK_MARGIN_S, Store

__all__ = [
    "RUN_POLL_DEADLINE_S",
    "Attribution",
    "FinalFetch",
    "Intervals",
    "Poller",
    "PollerView",
    "RackEntry",
    "SiteHealth",
]

log = logging.getLogger(__name__)

# Attribution passes before an active task is settled with the trays found so far.
MAX_ATTRIBUTION_PASSES = 3
FINAL_FETCH_MAX_BACKOFF = 60.0
# How often a task the site says it does not have is asked for before it is taken as gone.
NOT_ON_SITE_ATTEMPTS = 3


@dataclass
class FinalFetch:
    site_id: str
    rack_id: str
    attempts: int = 0
    not_before: float = 0.0
    not_on_site: int = 0
    # A fetch of it is under way (a rack poll's and the job's must not both ask).
    inflight: bool = False


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

    # The longest a rack poll ended after it was due, over the last active interval: how much
    # older than the interval a rack's data gets (about the poll's own time when the budget holds).
    last_cycle_seconds: float = 0.0
    # Polls skipped because the rack's previous poll had not ended by its next due time.
    late_polls: int = 0
    rack_polls: int = 0
    totals_moved: int = 0
    required_rps: float = 0.0
    budget_rps: float = 0.0
    # Seconds by which the configured active interval cannot be held (0 when it can).
    freshness_shortfall_seconds: float = 0.0
    shed: dict[str, int] = field(default_factory=dict)
    total_reads: int = 0
    active_lists: int = 0
    full_listings: int = 0
    tray_scans: int = 0
    followed: int = 0


@dataclass(frozen=True)
class SiteView:
    site_id: str
    name: str
    up: bool
    last_success: float | None
    # NICo's own isOnline (None: the site list did not say).
    online: bool | None = None
    # The site's breaker is open: its calls fail fast, one probe per interval.
    breaker_open: bool = False
    # Its clock's offset from the REST server's, applied to its timestamps (seconds).
    clock_offset: float = 0.0


@dataclass(frozen=True)
class RackView:
    rack_id: str
    site_id: str
    name: str


@dataclass(frozen=True)
class PollerView:
    """What the poller tells the metrics, as values: the publisher reads this and nothing else of it.

    Built on the poller's thread by :meth:`Poller.view`; immutable, so nothing of the poller's
    mutable state leaks into a snapshot.
    """

    sites: tuple[SiteView, ...] = ()
    racks: tuple[RackView, ...] = ()
    ready: bool = False
    shard_index: int = 0
    shard_total: int = 1
    freshness_shortfall_seconds: float = 0.0
    required_rps: float = 0.0
    budget_rps: float = 0.0
    last_cycle_seconds: float = 0.0
    late_polls: int = 0
    final_fetch_queue: int = 0
    shed: tuple[tuple[str, int], ...] = ()
    runs: RunsView = field(default_factory=RunsView)
    # Credentials refused (by NICo or the identity provider): calls fail fast meanwhile.
    credentials_refused: bool = False
    # Rack polls due but not started: the budget or the site's slots are spoken for.
    polls_waiting: int = 0


class Poller(RackPolls):
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
        limiter: the request budget, the client's own bucket unless given (then the same one the
            client was built with).
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
        limiter: TokenBucket | None = None,
    ) -> None:
        self.client = client
        # The request budget the client spends (the same bucket): how busy it is decides shedding.
        self.limiter = limiter or client.limiter
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
        self.stats = PollerStats(budget_rps=self.limiter.rate)
        self.ready = False
        self.runs = RunTracker(
            client,
            store,
            on_task=self._run_task,
            ttl=store.finished_ttl,
            clock=clock,
            site_down=client.breakers.is_open,
        )
        self.discovery = Discovery(self)
        self._lags: deque[tuple[float, float]] = deque()
        # Wakes the rack-poll loop when a poll ends (its slot may go to a rack that waits).
        self._poll_ended = asyncio.Event()
        self._waiting = 0
        self._budget_warned_at = -1e18
        for task_id, site_id, rack_id in store.awaiting_fetch():
            self.final_fetches[task_id] = FinalFetch(site_id, rack_id)

    # -- task runs -----------------------------------------------------------------------------

    def shard_owns_site(self, site_id: str) -> bool:
        """Whether this replica polls the site's runs and reads its rules (one shard per site)."""
        return self.shard.owns(site_id)

    def _run_sites(self) -> list[str]:
        """The sites whose runs this replica polls: a site's runs belong to one shard."""
        return sorted(
            site_id
            for site_id, health in self.health.items()
            if self.shard.owns(site_id) and health.discovered
        )

    def _run_task(self, site_id: str, rack_id: str, task_id: str) -> None:
        """A run target's task the store does not know: fetch it by id (if its rack is ours)."""
        if rack_id in self.racks:
            self.queue_final(task_id, site_id, rack_id)

    async def poll_runs(self) -> None:
        """The task-runs job (every ``intervals.task_runs``): each owned site's runs and targets.

        Sites are polled side by side; their calls wait behind rack polls for the budget, so they
        get at least ``RUN_POLL_DEADLINE_S`` (a short active interval must not starve them).
        """
        deadline = time.monotonic() + self.intervals.task_runs
        await asyncio.gather(*(self._runs_round(site_id, deadline) for site_id in self._run_sites()))
        self.store.commit()

    async def _runs_round(self, site_id: str, deadline: float) -> None:
        await self.runs.poll_site(site_id, deadline)
        # A rule listing that failed at discovery is asked again here, not a discovery later.
        if self.runs.rules_retry_due(site_id):
            await self.runs.read_rules(site_id, min(deadline, time.monotonic() + RULES_DEADLINE_S))

    def site_name(self, site_id: str) -> str:
        """The site's name from the inventory ('' while unknown)."""
        health = self.health.get(site_id)
        return health.site.name if health is not None else ""

    def rack_name(self, rack_id: str) -> str:
        """The rack's name from the inventory ('' while unknown)."""
        entry = self.racks.get(rack_id)
        return entry.rack.name if entry is not None else ""

    def view(self) -> PollerView:
        """The poller's state for the metrics, as an immutable value."""
        stats = self.stats
        breakers = self.client.breakers
        return PollerView(
            sites=tuple(
                SiteView(
                    site_id,
                    h.site.name,
                    # An open breaker (the site stopped answering, or NICo lists it offline) is
                    # down now, whatever its racks' last polls said.
                    h.up and not breakers.is_open(site_id),
                    h.last_success,
                    online=h.online,
                    breaker_open=breakers.is_open(site_id),
                    clock_offset=h.clock.seconds,
                )
                for site_id, h in sorted(self.health.items())
            ),
            racks=tuple(
                RackView(rack_id, e.site_id, e.rack.name) for rack_id, e in sorted(self.racks.items())
            ),
            ready=self.ready,
            shard_index=self.shard.index,
            shard_total=self.shard.total,
            freshness_shortfall_seconds=stats.freshness_shortfall_seconds,
            required_rps=stats.required_rps,
            budget_rps=self.limiter.rate,
            last_cycle_seconds=stats.last_cycle_seconds,
            late_polls=stats.late_polls,
            final_fetch_queue=len(self.final_fetches),
            shed=tuple(sorted(stats.shed.items())),
            runs=self.runs.view(),
            credentials_refused=self.client.credentials.refused,
            polls_waiting=self._waiting,
        )

    # -- budget ------------------------------------------------------------------------------------

    def saturated(self) -> bool:
        """The budget is all spoken for: urgent callers wait, or rack polls run behind schedule."""
        self.stats.last_cycle_seconds = self._lag()
        return self.stats.last_cycle_seconds > 0.9 * self.intervals.active or self.limiter.waiting() > 0

    def shed(self, job: str) -> None:
        self.stats.shed[job] = self.stats.shed.get(job, 0) + 1
        log.info("budget saturated: skipped a run", extra={"job": job})

    def check_budget(self) -> None:
        iv = self.intervals
        racks, sites = len(self.racks), max(1, len(self.health))
        required = racks / iv.active + racks / iv.reconcile + 3 * sites / iv.discovery
        # Task Runs: a listing per site that serves them, a run and its targets per active run.
        runs = self.runs.view()
        active_runs = sum(1 for _, run, _ in runs.runs if not run.is_terminal)
        required += (sum(ok for _, ok in runs.supported) + 2 * active_runs) / iv.active
        self.stats.required_rps = required
        budget = self.limiter.rate
        if budget <= 0:
            self.stats.freshness_shortfall_seconds = 0.0
            return
        # The rack polls alone take racks/budget seconds of the whole budget per cycle.
        shortfall = max(0.0, racks / budget - iv.active)
        self.stats.freshness_shortfall_seconds = shortfall
        short = required > budget
        if short and self.monotonic() - self._budget_warned_at >= self.intervals.discovery:
            self._budget_warned_at = self.monotonic()
            log.warning(
                "request budget too small for the racks polled: rack data will be older than the "
                "active interval and low-priority jobs will be shed; raise api.max_requests_per_second "
                "(or sharding.fleet_max_requests_per_second, the budget split across the shards) if NICo "
                "allows, lengthen polling.active_interval, or shard",
                extra={
                    "racks": racks,
                    "active_interval_s": iv.active,
                    "required_rps": round(required, 2),
                    "budget_rps": budget,
                    "data_age_s": round(iv.active + shortfall),
                },
            )

    # -- discovery (exporter.discovery) ----------------------------------------------------------

    async def discover(self) -> None:
        """The discovery job, all at once: the site list and every site's racks and trays."""
        await self.discovery.discover_all()

    async def discover_sites_and_racks(self) -> None:
        await self.discovery.discover_all()

    async def run_discovery(self, stop: asyncio.Event) -> None:
        """The service's discovery: each site on its own schedule, a failed one retried in
        seconds, until ``stop`` is set."""
        await self.discovery.run(stop)

    # -- rack polls (their schedule and admission: exporter.rackpolls) ---------------------------

    def _count_poll(self, behind: float) -> None:
        self.stats.rack_polls += 1
        self._lags.append((self.monotonic(), behind))

    def _late(self) -> None:
        self.stats.late_polls += 1

    def _lag(self) -> float:
        """The longest a rack poll ended after it was due, over the last active interval."""
        horizon = self.monotonic() - self.intervals.active
        while self._lags and self._lags[0][0] < horizon:
            self._lags.popleft()
        return max((behind for _, behind in self._lags), default=0.0)

    def _busy(self, rack_id: str, entry: RackEntry) -> bool:
        """A rack with active tasks, or whose active list this process has not read yet (after a
        restart, or a baseline whose active list failed): its active list is read."""
        return entry.active_total > 0 or bool(self.store.active_ids(rack_id)) or not entry.active_listed

    async def _poll_rack(self, rack_id: str, entry: RackEntry, deadline: float) -> NicoError | None:
        """One rack's poll: its counter or its active list (or both), then what they call for."""
        try:
            ledger = self.store.ledger(rack_id)
            if ledger is None or not ledger.counting:
                await self._baseline(rack_id, entry, deadline)
            else:
                await self._poll_known_rack(rack_id, entry, deadline)
        except NicoError as exc:
            return exc
        finally:
            self.store.commit()
            entry.polled = True
        entry.last_poll = self.monotonic()
        return None

    async def _baseline(self, rack_id: str, entry: RackEntry, deadline: float) -> None:
        """A rack seen for the first time: its all-tasks total as the base of its creation counter,
        then at once its active list (tasks active now are counted when they finish).

        The counter comes first: every task its total holds that is still active is then on the
        active list, and a task created after the read is judged by its creation time (a first
        sighting, not part of the baseline). The other order lost a task created between the two
        calls when its rack then stayed idle: in the baseline's count, never listed active, it
        finished unseen. The active list goes out at the most urgent priority, so the two calls
        stay close under a saturated budget. The baseline's time is the total's (NICo's ``Date``).
        The baseline counts only once both calls were read: its total is recorded after the
        active list. A task active at the read that finished before an active list could show it
        would otherwise be in the baseline's count, never seen, never counted. So when either call
        fails (or the process dies between them, the total never reaching the state file), the
        next poll starts the baseline again.
        """
        totals = await self._total_listing(rack_id, entry, deadline)
        read_at = self.monotonic()
        self.store.begin_baseline(rack_id, entry.site_id, totals.server_date or self.clock())
        self._apply_rows(rack_id, entry, totals.items, in_baseline=True)
        listing = await self._active_list(rack_id, entry, deadline, priority=Priority.FINAL_FETCH)
        if totals.total is not None:
            self.store.observe_total(rack_id, totals.total, totals.server_date, local=read_at)
        fetch = self._apply_active(rack_id, entry, listing)
        await self._fetch_now(fetch, deadline)

    async def _poll_known_rack(self, rack_id: str, entry: RackEntry, deadline: float) -> None:
        busy = self._busy(rack_id, entry)
        ledger = self.store.ledger(rack_id)
        assert ledger is not None
        overdue = (
            entry.total_read_at is None or self.monotonic() - entry.total_read_at >= self.intervals.reconcile
        )
        read_total = not busy or ledger.baseline_total is None or (overdue and not self.saturated())
        moved, rows = False, list[Task]()
        if read_total:
            moved, rows = await self._read_total(rack_id, entry, deadline)
        if not (busy or moved):
            # Idle, and nothing was created since the last poll: only something left to explain
            # (a listing that could not run, a poll cut short) calls for more.
            self._apply_rows(rack_id, entry, rows, in_baseline=False)
            if read_total and self.store.unexplained(rack_id) > 0:
                await self._settle(rack_id, entry, 0, deadline)
            return
        listing = await self._active_list(rack_id, entry, deadline)
        fetch = self._apply_active(rack_id, entry, listing)
        # The counter's rows after the active list: a finished task they name is then judged with
        # every active task of the count already seen (see Store._absorbed).
        self._apply_rows(rack_id, entry, rows, in_baseline=False)
        await self._fetch_now(fetch + self._due_on(rack_id), deadline)
        if read_total:
            total = listing.total if listing.total is not None else len(listing.items)
            unseen = 0 if listing.complete else max(0, total - len(listing.items))
            await self._settle(rack_id, entry, unseen, deadline)

    async def _read_total(self, rack_id: str, entry: RackEntry, deadline: float) -> tuple[bool, list[Task]]:
        """Read the rack's all-tasks total; returns (whether it moved, the rows that came with it).

        On NICo v2.0 the rows are the rack's first 20 tasks in storage order, usually its oldest:
        a rack with a short history is named whole by them, and any new task among them is
        fetched and counted by name.
        """
        listing = await self._total_listing(rack_id, entry, deadline)
        moved = listing.total is not None and self.store.observe_total(
            rack_id, listing.total, listing.server_date, local=self.monotonic()
        )
        self.stats.totals_moved += moved
        return moved, listing.items

    async def _total_listing(self, rack_id: str, entry: RackEntry, deadline: float) -> Listing[Task]:
        listing = await self.client.list_rack_tasks(
            entry.site_id,
            rack_id,
            active_only=False,
            include_report=False,
            first_page_only=True,
            deadline=deadline,
            priority=Priority.ACTIVE_POLL,
        )
        self.stats.total_reads += 1
        entry.total_read_at = self.monotonic()
        return listing

    def _due_on(self, rack_id: str) -> list[str]:
        """Final fetches of the rack's named tasks that are due now."""
        now = self.monotonic()
        return [t for t, f in self.final_fetches.items() if f.rack_id == rack_id and f.not_before <= now]

    async def _active_list(
        self, rack_id: str, entry: RackEntry, deadline: float, *, priority: int = Priority.ACTIVE_POLL
    ) -> Listing[Task]:
        listing = await self.client.list_rack_tasks(
            entry.site_id,
            rack_id,
            active_only=True,
            include_report=True,
            deadline=deadline,
            priority=priority,
        )
        self.stats.active_lists += 1
        entry.active_listed = True
        return listing

    def _apply_rows(
        self, rack_id: str, entry: RackEntry, tasks: Iterable[Task], *, in_baseline: bool
    ) -> None:
        """Rows without reports (all-tasks or tray lists): new names are tracked or fetched."""
        now = self.clock()
        for task in tasks:
            if self.store.is_known(task.id):
                continue  # tracked, counted or queued already: the active list and fetches follow it
            if self.store.observe(
                entry.site_id, rack_id, task, now, with_report=False, in_baseline=in_baseline
            ):
                self.queue_final(task.id, entry.site_id, rack_id)

    def _apply_active(
        self, rack_id: str, entry: RackEntry, listing: Listing[Task], *, in_baseline: bool = False
    ) -> list[str]:
        """Apply one rack's active list; returns ids to fetch now (left the list, or not shown)."""
        self._time_site(entry, listing)
        now = self.clock()
        with_report = self.client.profile.task_reports
        queued: list[str] = []
        seen: set[str] = set()
        for task in listing.items:
            seen.add(task.id)
            if self.store.observe(
                entry.site_id, rack_id, task, now, with_report=with_report, in_baseline=in_baseline
            ):
                queued += self.queue_final(task.id, entry.site_id, rack_id)
        missing = self.store.active_ids(rack_id) - seen
        total = listing.total if listing.total is not None else len(listing.items)
        entry.active_total = total
        if not listing.complete:
            # More active tasks than one list shows: follow the known ones by id, find the others
            # on the trays' active lists.
            entry.hidden_active = max(0, total - len(seen) - len(missing))
            self.stats.followed += len(missing)
        else:
            entry.hidden_active = 0
        for task_id in missing:
            # Absent from a complete list: it left. From an incomplete one: follow it by id.
            queued += self.queue_final(task_id, entry.site_id, rack_id)
        return queued

    def _time_site(self, entry: RackEntry, listing: Listing[Task]) -> None:
        """Bracket the site's clock offset with this active list (exporter.clockskew), against
        the rack's previous one, and hand the offset to the store before it judges any task."""
        health = self.health.get(entry.site_id)
        if health is None:
            return
        clock = health.clock
        clock.answered(
            listing.server_date,
            (stamp for t in listing.items for stamp in (t.created, t.updated, t.started, t.finished)),
        )
        before, previous = entry.listed_date, entry.listed_updated
        if before is not None and previous is not None:
            for task in listing.items:
                if task.id in previous:
                    if previous[task.id] != task.updated:
                        clock.written_after(task.updated, before)  # moved since that list
                elif entry.listed_complete and not self.store.is_known(task.id):
                    clock.written_after(task.created, before)  # created since that list
        entry.listed_date = listing.server_date
        entry.listed_complete = listing.complete
        entry.listed_updated = {t.id: t.updated for t in listing.items}
        self.store.set_clock_offset(entry.site_id, clock.seconds)

    def _settle_hold(self, site_id: str) -> float:
        """How old a counter reading must be before it is settled. On a site that serves Task
        Runs, a short child task the rack's lists never showed is named by its run's target: the
        reading waits until the runs job has named it and a final fetch has counted it by name,
        so it is not counted unobserved first (see Store.settle). Elsewhere: at once."""
        if self.runs.supported.get(site_id) is False:  # unknown until the first round: hold
            return 0.0
        return self.intervals.task_runs + self.intervals.final_fetch + CLOCK_MARGIN_S

    async def _settle(self, rack_id: str, entry: RackEntry, unseen: int, deadline: float) -> None:
        """After a counter read and the active list that followed it (``unseen`` active tasks it
        did not show), count the tasks nobody named; a paging server is asked to name them."""
        if self.store.unexplained(rack_id) - unseen <= 0:
            return
        if self.client.profile.task_list_paging:
            # A paging server can name them: list the rack, at most once per reconcile interval.
            if entry.named_at is not None and self.monotonic() - entry.named_at < self.intervals.reconcile:
                return
            if not await self._name_by_listing(rack_id, entry, deadline):
                return
        added = self.store.settle(
            rack_id, unseen, hold=self._settle_hold(entry.site_id), now=self.monotonic()
        )
        if added:
            log.info("tasks created and finished between polls", extra={"rack_id": rack_id, "count": added})

    async def _name_by_listing(self, rack_id: str, entry: RackEntry, deadline: float) -> bool:
        """List every task of the rack (paging servers only); True when the list was complete."""
        entry.named_at = self.monotonic()
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
            log.info("rack listing failed", extra={"rack_id": rack_id, "error": str(exc)})
            return False
        self.stats.full_listings += 1
        if listing.total is not None:
            # The rows are judged against their count. Its time is unknown: the Date is the first
            # page's, the total the last one's (tasks created meanwhile are in it).
            self.store.observe_total(rack_id, listing.total, None, local=self.monotonic())
        self._apply_rows(rack_id, entry, listing.items, in_baseline=False)
        await self._fetch_now(
            [t for t in self.final_fetches if self.final_fetches[t].rack_id == rack_id], deadline
        )
        return listing.complete

    def queue_final(self, task_id: str, site_id: str, rack_id: str) -> list[str]:
        """Queue a final fetch; returns ``[task_id]`` if newly queued, else ``[]``."""
        if task_id in self.final_fetches:
            return [task_id] if self.final_fetches[task_id].not_before <= self.monotonic() else []
        self.final_fetches[task_id] = FinalFetch(site_id, rack_id)
        return [task_id]

    async def _fetch_now(self, task_ids: list[str], deadline: float) -> None:
        # The terminal state is what pages someone: fetch at once, not at the next final-fetch run.
        due = [(tid, self.final_fetches[tid]) for tid in task_ids if tid in self.final_fetches]
        if due:
            await asyncio.gather(*(self._fetch_final(tid, pending, deadline) for tid, pending in due))

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
        if pending.inflight:
            return
        pending.inflight = True
        try:
            await self._fetch_final_once(task_id, pending, deadline)
        finally:
            pending.inflight = False

    async def _fetch_final_once(self, task_id: str, pending: FinalFetch, deadline: float) -> None:
        try:
            task = await self.client.get_task(pending.site_id, task_id, deadline=deadline)
        except TaskNotOnSite:
            pending.not_on_site += 1
            if pending.not_on_site >= NOT_ON_SITE_ATTEMPTS:
                log.warning(
                    "task not on its site: recorded as vanished",
                    extra={"task_id": task_id, "rack_id": pending.rack_id, "attempts": pending.not_on_site},
                )
                self._vanish(task_id)
            else:
                self._back_off(task_id, pending, "task not on its site")
            return
        except NotFound:
            log.warning(
                "task not found: recorded as vanished", extra={"task_id": task_id, "rack_id": pending.rack_id}
            )
            self._vanish(task_id)
            return
        except (SiteUnavailable, DeadlineExceeded, CredentialsRefused):
            # Not sent (the site does not answer, the budget, the credentials): no back-off of
            # its own; the call goes out as soon as it can.
            pending.not_before = self.monotonic() + self.intervals.final_fetch
            return
        except NicoError as exc:
            self._back_off(task_id, pending, str(exc))
            return
        self.final_fetches.pop(task_id, None)
        # A single task always comes whole: with its report, or from a server that has none.
        self.store.observe(pending.site_id, pending.rack_id, task, self.clock(), with_report=True)

    def _vanish(self, task_id: str) -> None:
        self.store.vanish(task_id, self.clock())
        self.final_fetches.pop(task_id, None)

    def _back_off(self, task_id: str, pending: FinalFetch, reason: str) -> None:
        pending.attempts += 1
        backoff = min(FINAL_FETCH_MAX_BACKOFF, self.intervals.final_fetch * 2**pending.attempts)
        pending.not_before = self.monotonic() + backoff
        log.info(
            "final fetch failed",
            extra={
                "task_id": task_id,
                "rack_id": pending.rack_id,
                "attempt": pending.attempts,
                "retry_in_s": backoff,
                "error": reason,
            },
        )

    # -- tray attribution --------------------------------------------------------------------------

    async def attribute_trays(self) -> None:
        """Settle the trays of active tasks that lack them, and find active tasks no list showed."""
        for record in list(self.store.records()):
            if record.trays is not None or record.id in self.attributions:
                continue
            entry = self.racks.get(record.rack_id)
            if entry is None:
                continue
            p = plan(record.task, entry.trays)
            if p is None:
                if record.is_terminal:
                    self.store.attribute(record.id, ())  # ended before its report said anything
                continue  # no report yet: wait
            if p.settled:
                self.store.attribute(record.id, p.known)
            else:
                self.attributions[record.id] = Attribution(record.site_id, record.rack_id, p)
        for task_id in list(self.attributions):
            tracked = self.store.record(task_id)
            if tracked is None:
                del self.attributions[task_id]
            elif tracked.is_terminal:
                # Its trays' active lists no longer show it: settle with what was found.
                self._settle_attribution(task_id)
        self.store.commit()
        sweeps = [rack_id for rack_id, entry in self.racks.items() if entry.hidden_active > 0]
        if not self.attributions and not sweeps:
            return
        if self.saturated():
            self.shed("tray_attribution")
            return
        deadline = time.monotonic() + self.intervals.tray_attribution
        by_rack: dict[str, list[str]] = {rack_id: [] for rack_id in sweeps}
        for task_id, pending in self.attributions.items():
            by_rack.setdefault(pending.rack_id, []).append(task_id)
        await asyncio.gather(*(self._scan_rack(rack_id, ids, deadline) for rack_id, ids in by_rack.items()))
        for task_id in list(self.attributions):
            pending = self.attributions[task_id]
            pending.passes += 1
            if pending.passes >= MAX_ATTRIBUTION_PASSES:
                self._settle_attribution(task_id)
        self.store.commit()

    def _settle_attribution(self, task_id: str) -> None:
        pending = self.attributions.pop(task_id)
        self.store.attribute(task_id, pending.trays())

    async def _scan_rack(self, rack_id: str, task_ids: list[str], deadline: float) -> None:
        """List trays' active tasks: for attribution (trays of the types wanted, until found) and,
        when the rack's active list hid some, every tray, naming the hidden tasks."""
        entry = self.racks.get(rack_id)
        if entry is None:
            return
        sweep = entry.hidden_active > 0
        kinds = {kind for tid in task_ids for kind in self.attributions[tid].plan.scan}
        for tray in entry.trays:
            waiting = [t for t in task_ids if t in self.attributions]
            if not waiting and not sweep:
                return
            if not sweep and tray.type not in kinds:
                continue
            try:
                listing = await self.client.list_tray_tasks(
                    entry.site_id, tray.id, active_only=True, include_report=False, deadline=deadline
                )
            except NicoError as exc:
                log.info(
                    "tray scan stopped", extra={"rack_id": rack_id, "tray_id": tray.id, "error": str(exc)}
                )
                return
            self.stats.tray_scans += 1
            if sweep:
                self._apply_rows(rack_id, entry, listing.items, in_baseline=False)
            here = {t.id for t in listing.items}
            for task_id in waiting:
                pending = self.attributions[task_id]
                if task_id in here and tray.type in pending.plan.scan:
                    pending.found.setdefault(tray.type, set()).add(tray.id)
                if pending.complete():
                    self._settle_attribution(task_id)
        if sweep:
            entry.hidden_active = 0  # the next active list says whether any are still hidden

    # -- housekeeping ------------------------------------------------------------------------------

    async def expire(self) -> None:
        """Forget finished tasks past their TTL."""
        for task_id in self.store.expire(self.clock()):
            self.attributions.pop(task_id, None)
        self.store.commit()

    async def start(self) -> None:
        """What runs at once on start: discovery, then the first poll of every rack."""
        await self.discover_sites_and_racks()
        await self.poll_active()
        await self.fetch_finals()
