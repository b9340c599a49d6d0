"""Discovery: the sites, each site's racks and trays, and the site's Operation Rules.

Each site is discovered on its own: a site whose agent is silent holds only its own discovery
(NICo holds each of its calls for the Temporal workflow timeout, 50 s), while every other site's
racks are polled as soon as that site's racks are listed. The site list says which sites NICo
itself knows to be offline (``isOnline``: status Registered); those are probed through their
breaker, not polled.

- The site list is read every ``discovery`` interval; one that fails is asked again after a
  back-off in seconds (2 s doubling, at most a minute), not an interval later.
- A site's racks and trays are listed every ``discovery`` interval; a failed listing is tried
  again after the same back-off. The racks' polls start as soon as the racks are listed; the
  trays (which only tray attribution needs) follow. Lists are ordered (``orderBy=NAME_ASC``: without it Flow's
  pages have no order and OFFSET paging repeats and skips rows, release/v2.0
  rest-api/flow/internal/db/model/rack.go:260-261), and a rack missing from a listing that was
  not complete is kept, never dropped with its series.
- Operation Rules (optional: a site may lack them, or hang them behind an old agent) are read
  after the site's racks are polling, with a short deadline: they never delay the core path.

**Ready** once the site list answered and either some site's racks were listed or every site's
first discovery ended (answered or failed): a silent site never holds readiness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from exporter.errors import FlowDisabled, NicoError
from exporter.inventory import Intervals, Outcome, RackEntry, SiteHealth, outcome_of
from exporter.models import Rack, Tray

if TYPE_CHECKING:
    from exporter.poller import Poller

log = logging.getLogger(__name__)

# Back-off of a failed site list or site discovery: 2 s doubling, at most this (and at most the
# discovery interval).
RETRY_FIRST_S = 2.0
RETRY_CAP_S = 60.0
# How long one site's racks and trays may take to list (a 1,000-rack site is 360 pages).
SITE_DEADLINE_S = 120.0
# Operation Rules are optional: a short deadline.
RULES_DEADLINE_S = 10.0
RACK_ORDER = "NAME_ASC"
TRAY_ORDER = "NAME_ASC"


def backoff(failures: int, interval: float) -> float:
    return min(RETRY_CAP_S, interval, RETRY_FIRST_S * 2.0 ** max(0, failures - 1))


class Discovery:
    """Discovers the poller's sites, racks and trays (see the module docstring).

    It writes the poller's ``health`` and ``racks`` (the event loop's thread owns both).
    """

    def __init__(self, poller: Poller) -> None:
        self.p = poller
        self.listed = False  # the site list answered at least once
        self.sites_due = 0.0
        self.site_failures = 0
        self._last_round = 0.0

    @property
    def intervals(self) -> Intervals:
        return self.p.intervals

    # -- the service's loop ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """List sites and discover each site on its own schedule until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.step()
            except Exception:  # one bad pass must not end discovery
                log.exception("discovery failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    stop.wait(), max(0.05, min(1.0, self._next_due() - self.p.monotonic()))
                )
        tasks = [h.discovering for h in self.p.health.values() if h.discovering is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def step(self) -> None:
        """One pass: the site list if it is due, then every site whose discovery is due (each in
        its own task)."""
        now = self.p.monotonic()
        if now >= self.sites_due and not self._shed_round():
            await self.list_sites()
        for site_id, health in list(self.p.health.items()):
            if health.discovering is None and self.p.monotonic() >= health.discovery_due:
                health.discovering = asyncio.create_task(self._site_task(site_id))

    def _next_due(self) -> float:
        dues = [self.sites_due] + [h.discovery_due for h in self.p.health.values() if h.discovering is None]
        return min(dues)

    async def _site_task(self, site_id: str) -> None:
        try:
            await self.discover_site(site_id)
        finally:
            health = self.p.health.get(site_id)
            if health is not None:
                health.discovering = None

    # -- what tests and the harness call ----------------------------------------------------------

    async def discover_all(self) -> None:
        """The site list, then every site's discovery, awaited (tests step time around it)."""
        if self._shed_round() or not await self.list_sites():
            return
        await asyncio.gather(*(self.discover_site(site_id) for site_id in list(self.p.health)))

    # -- the site list ----------------------------------------------------------------------------

    def _shed_round(self) -> bool:
        """Skip a round while the budget is saturated, unless the last one is three intervals old
        (discovery is the least urgent job)."""
        p = self.p
        interval = self.intervals.discovery
        if not (p.ready and self.listed and p.saturated()):
            return False
        if p.monotonic() - self._last_round >= 3 * interval:
            return False
        p.shed("discovery")
        self.sites_due = p.monotonic() + min(interval, max(self.intervals.active, RETRY_CAP_S))
        return True

    async def list_sites(self) -> bool:
        """Read the site list; True when it answered. Sites that left are dropped, sites NICo
        lists offline are handed to their breaker (probed, not polled)."""
        p = self.p
        p.client.recheck_task_list_paging()
        deadline = time.monotonic() + min(self.intervals.discovery, SITE_DEADLINE_S)
        try:
            listing = await p.client.list_sites(flow_enabled=True, deadline=deadline)
        except NicoError as exc:
            self.site_failures += 1
            pause = backoff(self.site_failures, self.intervals.discovery)
            self.sites_due = p.monotonic() + pause
            log.error(
                "site discovery failed",
                extra={"endpoint": "/site", "error": str(exc), "retry_in_s": pause},
            )
            return False
        self.site_failures = 0
        self.sites_due = self._last_round = p.monotonic()
        self.sites_due += self.intervals.discovery
        self.listed = True
        sites = {s.id: s for s in listing.items if s.flow_enabled or not s.capabilities}
        if p.site_filter:
            missing = [s for s in p.site_filter if s not in sites]
            if missing:
                log.warning("configured sites not found among Flow-enabled sites", extra={"sites": missing})
            sites = {sid: s for sid, s in sites.items() if sid in p.site_filter}
        for site in sites.values():
            health = p.health.get(site.id)
            if health is None:
                health = p.health[site.id] = SiteHealth(site)
            health.site = site
            health.online = site.is_online
            if site.is_online is False:
                p.client.breakers.force_open(site.id, f"NICo lists the site offline (status {site.status})")
        if listing.complete:
            for site_id in set(p.health) - set(sites):
                log.info("site left the inventory", extra={"site_id": site_id})
                self._drop_site(site_id)
        self._check_ready()
        return True

    def _drop_site(self, site_id: str) -> None:
        p = self.p
        health = p.health.pop(site_id)
        if health.discovering is not None:
            health.discovering.cancel()
        for rack_id in [r for r, e in p.racks.items() if e.site_id == site_id]:
            self._drop_rack(rack_id)
        p.runs.drop_site(site_id)
        p.client.breakers.forget(site_id)

    def _drop_rack(self, rack_id: str) -> None:
        p = self.p
        log.info("rack left the inventory", extra={"rack_id": rack_id, "site_id": p.racks[rack_id].site_id})
        p.store.drop_rack(rack_id)
        entry = p.racks.pop(rack_id)
        if entry.polling is not None:
            entry.polling.cancel()
        # A rack that is not there cannot be asked about its tasks.
        for task_id in [t for t, f in p.final_fetches.items() if f.rack_id == rack_id]:
            del p.final_fetches[task_id]

    # -- one site -------------------------------------------------------------------------------

    async def discover_site(self, site_id: str) -> None:
        """List one site's racks and start their polls; then its trays (only tray attribution
        needs them), then its rules (optional): neither delays the racks' first polls."""
        p = self.p
        health = p.health.get(site_id)
        if health is None:
            return
        deadline = time.monotonic() + min(self.intervals.discovery, SITE_DEADLINE_S)
        try:
            racks = await p.client.list_racks(site_id, deadline=deadline, order_by=RACK_ORDER)
        except FlowDisabled:
            log.warning("site has no NICo Flow: skipped", extra={"site_id": site_id})
            racks = None
        except NicoError as exc:
            self._failed(health, exc)
            return
        finally:
            health.tried = True
            self._check_ready()
        health.discovery_failures = 0
        health.discovery_due = p.monotonic() + self.intervals.discovery
        health.discovered = True
        if racks is not None:
            self._merge(site_id, list(racks.items), racks.complete, None)
            self._check_ready()
            p.check_budget()
            trays = await self._list_trays(site_id, racks.items, deadline)
            if trays is not None:
                self._merge(site_id, list(racks.items), racks.complete, trays)
        p.check_budget()
        # Optional, after the racks are polling: never on the core path.
        if p.shard_owns_site(site_id):
            await p.runs.read_rules(site_id, time.monotonic() + RULES_DEADLINE_S)
        p.store.commit()

    def _failed(self, health: SiteHealth, exc: NicoError) -> None:
        p = self.p
        health.discovery_failures += 1
        pause = backoff(health.discovery_failures, self.intervals.discovery)
        health.discovery_due = p.monotonic() + pause
        health.last_error = str(exc)
        if outcome_of(exc) is Outcome.NICO and not health.discovered:
            health.up = False  # NICo did not answer for the site: nothing of it is watched
        # Said once as an error; the retries that follow, quietly.
        if health.discovery_failures == 1:
            log.error(
                "rack discovery failed",
                extra={"site_id": health.site.id, "error": str(exc), "retry_in_s": pause},
            )
        else:
            log.info(
                "rack discovery failed again",
                extra={"site_id": health.site.id, "error": str(exc), "retry_in_s": pause},
            )

    async def _list_trays(self, site_id: str, racks: Iterable[Rack], deadline: float) -> list[Tray] | None:
        """The site's trays (None when they cannot be listed: the racks keep the trays they had,
        and the next discovery tries again; their tasks need no trays)."""
        p = self.p
        try:
            listing = await p.client.list_trays(site_id, deadline=deadline, order_by=TRAY_ORDER)
            trays = listing.items
            if not listing.complete:
                trays = await self._complete_trays(site_id, racks, trays, deadline)
        except NicoError as exc:
            log.error("tray discovery failed", extra={"site_id": site_id, "error": str(exc)})
            return None
        return trays

    async def _complete_trays(
        self, site_id: str, racks: Iterable[Rack], trays: list[Tray], deadline: float
    ) -> list[Tray]:
        """The site's tray listing was not complete (pages that repeat and skip rows: tray names
        repeat across racks, so no order of the site's trays is total). Racks that got no tray
        from it, and none before, are listed one by one (a rack's trays are filtered and sliced
        in memory by Flow, complete in one page); the others keep what they had as well."""
        p = self.p
        found = {t.rack_id for t in trays}
        out = list(trays)
        for rack in racks:
            rack_id = rack.id
            entry = p.racks.get(rack_id)
            if rack_id in found or not p.shard.owns(rack_id):
                continue
            if entry is not None and entry.trays:
                out += entry.trays
                continue
            listing = await p.client.list_trays(site_id, rack_id=rack_id, deadline=deadline)
            out += listing.items
        return out

    def _merge(self, site_id: str, racks: list[Rack], complete: bool, trays: list[Tray] | None) -> None:
        """Racks of this shard into the poller's inventory; racks that left are dropped only when
        the listing was complete."""
        p = self.p
        by_rack: dict[str, list[Tray]] = {}
        for tray in trays or ():
            if tray.rack_id is not None:
                by_rack.setdefault(tray.rack_id, []).append(tray)
                p.store.learn_tray_type(tray.id, tray.type.value, tray.component_id)
        owned: set[str] = set()
        for rack in racks:
            rack_id = rack.id
            if not p.shard.owns(rack_id):
                continue
            owned.add(rack_id)
            entry = p.racks.get(rack_id)
            if entry is None:
                entry = p.racks[rack_id] = RackEntry(site_id, rack)
            entry.rack = rack
            if trays is not None:
                listed = sorted({t.id: t for t in by_rack.get(rack_id, [])}.values(), key=lambda t: t.id)
                if listed or complete:
                    entry.trays = listed
        gone = [r for r, e in p.racks.items() if e.site_id == site_id and r not in owned]
        if gone and not complete:
            log.warning(
                "rack listing incomplete: racks it did not show are kept",
                extra={"site_id": site_id, "kept": len(gone)},
            )
        elif gone:
            for rack_id in gone:
                self._drop_rack(rack_id)
        p.wake_polls()  # new racks are polled at once
        # A rack that came back (or was found after a restart) fetches the tasks it had running.
        for task_id, task_site, rack_id in p.store.awaiting_fetch():
            if rack_id in p.racks and task_site == site_id:
                p.queue_final(task_id, task_site, rack_id)
        p.store.commit()

    def _check_ready(self) -> None:
        p = self.p
        if p.ready or not self.listed:
            return
        sites = list(p.health.values())
        if not sites or any(h.discovered for h in sites) or all(h.tried for h in sites):
            p.ready = True
            log.info(
                "ready",
                extra={
                    "sites": len(sites),
                    "discovered": sum(1 for h in sites if h.discovered),
                    "racks": len(p.racks),
                },
            )
