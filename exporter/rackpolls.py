"""Rack polls: each rack on its own schedule, admitted when there is room, and who failed.

Each rack is polled every active interval from its own phase, so its period holds whatever the
other racks cost (a rack whose counter moved takes two calls; one whose tasks end takes final
fetches); the phases are spread over the interval, which keeps the request rate even instead of a
burst per cycle.

**Admission.** A due rack's poll starts only when no rack poll waits for a request token (the
budget is spoken for: a poll started now would only wait, and its deadline with it), and not
beyond the client's slots for one site. Polls left waiting stay due; when there is room, racks
without a baseline go first (the baseline is the first thing a rack is owed), then the most
overdue. Under a budget too small for the fleet every rack still gets its turn, later. A site
whose breaker is open (exporter.breaker) gets one poll per probe interval: its probe.

**Who failed.** Each poll's outcome goes into its site's health (exporter.inventory): the site is
down only when NICo failed to answer for it; a failed poll is tried again within its interval.

A mixin of :class:`~exporter.poller.Poller`, which owns the state it reads and writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from exporter.client import NicoClient
from exporter.errors import NicoError, SiteUnavailable
from exporter.inventory import Intervals, Outcome, RackEntry, SiteHealth, judge_site, outcome_of
from exporter.ratelimit import Priority, TokenBucket
from exporter.state import Store

log = logging.getLogger("exporter.poller")

# A failed rack poll is tried again this soon (at most a third of the interval), once.
FAILED_POLL_RETRY_S = 5.0
# While racks wait for room (the budget), the loop looks again this often.
WAITING_RECHECK_S = 0.1


class RackPolls:
    """The rack-poll schedule of a poller (see the module docstring)."""

    client: NicoClient
    store: Store
    limiter: TokenBucket
    intervals: Intervals
    clock: Callable[[], float]
    monotonic: Callable[[], float]
    health: dict[str, SiteHealth]
    racks: dict[str, RackEntry]
    _lags: deque[tuple[float, float]]
    _poll_ended: asyncio.Event
    _waiting: int

    # What the poller does for one rack, and its statistics.
    async def _poll_rack(self, rack_id: str, entry: RackEntry, deadline: float) -> NicoError | None:
        raise NotImplementedError

    def _count_poll(self, behind: float) -> None:
        raise NotImplementedError

    def _late(self) -> None:
        raise NotImplementedError

    async def poll_active(self) -> None:
        """Poll every owned rack now (the start, and tests); then spread their next polls.

        Every rack's poll starts at once (no admission: the harness and the start want every rack
        polled), waiting for its site's slots and the budget like any call.
        """
        started = self.monotonic()
        deadline = time.monotonic() + self.intervals.active
        # Least recently polled first: when the budget is short the racks left over go first.
        entries = sorted(self.racks.items(), key=lambda item: item[1].last_poll or 0.0)
        entries = [(rid, e) for rid, e in entries if not self._blocked(e.site_id)]
        done: list[str] = []

        async def one(rack_id: str, entry: RackEntry) -> None:
            await self._timed_poll(rack_id, entry, deadline, started)
            done.append(rack_id)

        await asyncio.gather(*(one(rid, e) for rid, e in entries))
        # Next polls in the order these ended, evenly over one interval from now.
        now, step = self.monotonic(), self.intervals.active / max(1, len(done))
        for index, rack_id in enumerate(done):
            if rack_id in self.racks:
                self.racks[rack_id].due = now + index * step

    def _blocked(self, site_id: str) -> bool:
        """The site's breaker is open and its probe is not due: its racks wait."""
        breakers = self.client.breakers
        return breakers.is_open(site_id) and not breakers.probe_due(site_id)

    def _admissible(self, site_id: str, running: dict[str, int], probing: set[str]) -> bool:
        """Whether one more poll of ``site_id``'s racks may start now.

        Not while rack polls already wait for a request token (the budget is spoken for: a poll
        started now would only wait, and its deadline with it); not beyond the client's slots for
        one site (the others would only queue for them); for a site whose breaker is open, one
        poll (its probe) when the probe is due. Polls left waiting stay due, and the most overdue
        go first when there is room: under a budget too small for the fleet every rack still gets
        its turn, later.
        """
        if self.limiter.waiting(Priority.ACTIVE_POLL) > 0:
            return False
        if self.client.breakers.is_open(site_id):
            if site_id in probing or not self.client.breakers.probe_due(site_id):
                return False
            probing.add(site_id)
            return True
        return running.get(site_id, 0) < self.client.slots.total

    async def poll_due(self, *, wait: bool = False) -> float:
        """Start the poll of every due rack there is room for; returns when the next one is due.

        Racks not yet baselined go first (the baseline is the first thing a rack is owed), then
        the most overdue. ``wait`` awaits the polls started, and starts more until every due rack
        has been polled (the harness steps time; the service does not wait).
        """
        while True:
            started = self._start_due()
            if not (wait and started):
                break
            await asyncio.gather(*started)
        pending = [e.due for e in self.racks.values() if e.due is not None]
        return min(pending) if pending else self.monotonic() + self.intervals.active

    def _start_due(self) -> list[asyncio.Task[None]]:
        now = self.monotonic()
        interval = self.intervals.active
        running: dict[str, int] = {}
        due: list[tuple[bool, float, str, RackEntry]] = []
        for rack_id, entry in self.racks.items():
            if entry.polling is not None:
                running[entry.site_id] = running.get(entry.site_id, 0) + 1
                if entry.due is not None and entry.due <= now - interval:
                    self._late()  # its last poll still runs a whole interval later
                    entry.due += interval
                continue
            if entry.due is None:
                entry.due = now  # new since the last discovery: at once
            if entry.due <= now:
                ledger = self.store.ledger(rack_id)
                due.append((ledger is not None and ledger.counting, entry.due, rack_id, entry))
        due.sort(key=lambda item: item[:3])
        started: list[asyncio.Task[None]] = []
        probing: set[str] = set()
        waiting = 0
        for _, when, rack_id, entry in due:
            if not self._admissible(entry.site_id, running, probing):
                waiting += 0 if self._blocked(entry.site_id) else 1
                continue
            running[entry.site_id] = running.get(entry.site_id, 0) + 1
            # Keep the phase; a rack more than an interval behind starts over from now.
            entry.due = when + interval if now - when < interval else now + interval
            entry.polling = asyncio.create_task(
                self._timed_poll(rack_id, entry, time.monotonic() + interval, when)
            )
            started.append(entry.polling)
        self._waiting = waiting
        return started

    async def run_rack_polls(self, stop: asyncio.Event) -> None:
        """Poll every rack on its schedule until ``stop`` is set."""
        while not stop.is_set():
            try:
                next_due = await self.poll_due()
            except Exception:  # one bad pass must not end the polling
                log.exception("rack poll scheduling failed")
                next_due = self.monotonic() + 1.0
            pause = min(self.intervals.active, max(0.0, next_due - self.monotonic()))
            if self._waiting:
                pause = min(pause, WAITING_RECHECK_S)  # room may come from the budget, not a poll
            self._poll_ended.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake(stop), max(pause, 0.01))
        running = [e.polling for e in self.racks.values() if e.polling is not None]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def wake_polls(self) -> None:
        """Racks were added (a site's discovery ended): look for due racks now, not after the pause."""
        self._poll_ended.set()

    async def _wake(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set or a rack poll ends."""
        waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._poll_ended.wait())}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _timed_poll(self, rack_id: str, entry: RackEntry, deadline: float, due: float) -> None:
        """One rack's poll, its result in the site's health, and how far it ran behind schedule."""
        error: BaseException | None
        try:
            error = await self._poll_rack(rack_id, entry, deadline)
        except Exception as exc:  # a bug in one rack's poll must not stop the others
            log.exception("rack poll crashed", extra={"rack_id": rack_id})
            error = exc
        finally:
            entry.polling = None
            self._poll_ended.set()
        self._count_poll(self.monotonic() - due)
        self._record(rack_id, entry, error)

    def _record(self, rack_id: str, entry: RackEntry, error: BaseException | None) -> None:
        """A rack's latest poll in its site's health (see exporter.inventory.judge_site), and a
        failed poll tried again within its interval."""
        entry.last_error = None if error is None else f"{type(error).__name__}: {error}"
        # A crash of ours is not NICo's failure.
        entry.outcome = (
            outcome_of(error) if error is None or isinstance(error, NicoError) else Outcome.EXPORTER
        )
        if error is None:
            entry.retried = False
        elif not isinstance(error, SiteUnavailable) and not entry.retried and rack_id in self.racks:
            # Once per interval, a failed poll is tried again soon: within its interval.
            entry.retried = True
            entry.due = self.monotonic() + min(FAILED_POLL_RETRY_S, self.intervals.active / 3)
        self.judge(entry.site_id, rack_id=rack_id, error=entry.last_error)

    def judge(self, site_id: str, *, rack_id: str | None = None, error: str | None = None) -> None:
        """Update a site's ``up`` from its racks' outcomes and its breaker; log a change once."""
        health = self.health.get(site_id)
        if health is None:
            return
        racks = [e for e in self.racks.values() if e.site_id == site_id]
        was_up = health.up
        health.up = judge_site(health, racks, breaker_open=self.client.breakers.is_open(site_id))
        if health.up and any(e.outcome is Outcome.OK for e in racks):
            health.last_success = self.clock()
        if error is not None:
            health.last_error = error
            # While the site's breaker is open it said so once: its racks' failures, quietly.
            if self.client.breakers.is_open(site_id):
                log.debug("rack poll failed", extra={"site_id": site_id, "rack_id": rack_id, "error": error})
            else:
                log.info("rack poll failed", extra={"site_id": site_id, "rack_id": rack_id, "error": error})
        if was_up != health.up:
            failed = sum(1 for e in racks if e.outcome is Outcome.NICO)
            log.warning(
                "site up" if health.up else "site down: NICo does not answer for it",
                extra={
                    "site_id": site_id,
                    "racks_failed": failed,
                    "racks": len(racks),
                    "breaker_open": self.client.breakers.is_open(site_id),
                    "error": health.last_error,
                },
            )
