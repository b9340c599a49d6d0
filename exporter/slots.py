"""Connection slots shared fairly between sites: one silent site never takes the others' share.

NICo holds a call to a site whose agent is not polling for the whole Temporal workflow timeout
(50 s) before it answers 500. With one pool of slots for every site, a silent site's calls hold
them all and the healthy sites' calls queue behind them. Here each site that wants slots is owed
an equal share of them (at least one): a site under its share always gets the next free slot, and
a site may borrow free slots beyond its share only while enough stay free for every other recently
active site to reach its own share at once. Idle capacity is still used (a lone busy site gets
every slot), and a site that goes silent holds at most its share plus what nobody else needed.

A site is owed its share while it made a call, or was named by the site list, within the last
10 seconds; a site whose breaker is open is owed none (its one probe takes any free slot). A call
of an optional capability (Task Runs, Operation Rules: an agent older than the REST server hangs
them) only borrows: it takes a slot no site's core calls are owed, so it never holds the slot its
own site's rack polls need.

Waiters are served by priority (lower first), then in arrival order, skipping a waiter whose site
may not take a slot now (another site's waiter goes first). A wait is bounded by the caller's
deadline. Owned by the event loop's thread, like the client that uses it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

# A site that held or asked for a slot this recently (or the site list named) is owed its share.
ACTIVE_WINDOW_S = 10.0


@dataclass
class _Waiter:
    priority: int
    seq: int
    site: str
    future: asyncio.Future[None]
    optional: bool = False

    def __lt__(self, other: _Waiter) -> bool:
        return (self.priority, self.seq) < (other.priority, other.seq)


class SiteSlots:
    """``total`` slots, shared by site as the module docstring says.

    Args:
        total: how many calls may be in flight at once.
        clock: monotonic seconds (how recently a site was active).
        exempt: sites owed no share (the breaker failed them: they take what is left).
    """

    def __init__(
        self,
        total: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        exempt: Callable[[str], bool] = lambda site: False,
    ) -> None:
        self.total = max(1, total)
        self._clock = clock
        self._exempt = exempt
        self._held: dict[str, int] = {}
        # Slots held by optional calls, per site (they count as in use, not towards a share).
        self._borrowed: dict[str, int] = {}
        self._active: dict[str, float] = {}
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()

    # -- what the metrics and the poller read -----------------------------------------------------

    def held(self, site: str) -> int:
        """Slots ``site``'s core calls hold (optional calls' are apart)."""
        return self._held.get(site, 0)

    def in_use(self) -> int:
        return sum(self._held.values()) + sum(self._borrowed.values())

    def waiting(self, site: str | None = None) -> int:
        return sum(1 for w in self._waiters if not w.future.done() and (site is None or w.site == site))

    def share(self, site: str) -> int:
        """The slots ``site`` is owed now: an equal part of them among the active sites."""
        return max(1, self.total // max(1, len(self._contenders(site))))

    # -- acquire and release --------------------------------------------------------------------

    async def acquire(
        self, site: str, priority: int, wait_s: float | None = None, *, optional: bool = False
    ) -> None:
        """Wait for a slot for ``site``; raises ``TimeoutError`` after ``wait_s`` seconds.

        ``optional``: a call of a capability the site may lack; it only borrows (module docstring).
        """
        if not optional:
            self._active[site] = self._clock()
        if not self._waiters and self._may_take(site, optional):
            self._take(site, optional)
            return
        waiter = _Waiter(
            int(priority), next(self._seq), site, asyncio.get_running_loop().create_future(), optional
        )
        heapq.heappush(self._waiters, waiter)
        self._dispatch()
        try:
            if wait_s is None:
                await waiter.future
            else:
                await asyncio.wait_for(asyncio.shield(waiter.future), max(0.0, wait_s))
        except (TimeoutError, asyncio.CancelledError):
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(site, optional=optional)  # granted as we gave up: hand it on
            else:
                waiter.future.cancel()
            raise

    def release(self, site: str, *, optional: bool = False) -> None:
        counts = self._borrowed if optional else self._held
        held = counts.get(site, 0)
        if held <= 1:
            counts.pop(site, None)
        else:
            counts[site] = held - 1
        if not optional:
            self._active[site] = self._clock()
        self._dispatch()

    def _take(self, site: str, optional: bool = False) -> None:
        counts = self._borrowed if optional else self._held
        counts[site] = counts.get(site, 0) + 1

    def known(self, sites: list[str]) -> None:
        """Sites the site list just named: each is owed its share from now on, before its first
        call (a site that went silent must not have taken every slot by then)."""
        now = self._clock()
        for site in sites:
            self._active[site] = max(self._active.get(site, now), now)

    def _contenders(self, site: str) -> set[str]:
        """The sites owed a share: every recently active one whose breaker is not open."""
        horizon = self._clock() - ACTIVE_WINDOW_S
        for name in [s for s, at in self._active.items() if at < horizon and not self._held.get(s)]:
            del self._active[name]
        owed = {s for s in self._active if not self._exempt(s)}
        if not self._exempt(site):
            owed.add(site)
        return owed

    def _may_take(self, site: str, optional: bool = False) -> bool:
        free = self.total - self.in_use()
        if free <= 0:
            return False
        if self._exempt(site):
            # A site whose breaker is open sends one probe at a time, in any free slot.
            return self.held(site) + self._borrowed.get(site, 0) == 0
        contenders = self._contenders(site)
        share = max(1, self.total // len(contenders))
        if self.held(site) < share and not optional:
            return True
        # Borrow only what every other active site does not need to reach its share; an optional
        # call also leaves its own site's core calls one slot (its share may be all of them).
        owed = sum(max(0, share - self.held(other)) for other in contenders if other != site)
        if optional:
            owed += max(0, 1 - self.held(site))
        return free - 1 >= owed

    def _dispatch(self) -> None:
        if not self._waiters:
            return
        kept: list[_Waiter] = []
        while self._waiters and self.in_use() < self.total:
            waiter = heapq.heappop(self._waiters)
            if waiter.future.done():
                continue
            if self._may_take(waiter.site, waiter.optional):
                self._take(waiter.site, waiter.optional)
                waiter.future.set_result(None)
            else:
                kept.append(waiter)
        for waiter in kept:
            heapq.heappush(self._waiters, waiter)
        # Drop the waiters that gave up, so the heap does not grow with them.
        if len(self._waiters) > 64 and any(w.future.done() for w in self._waiters):
            self._waiters = [w for w in self._waiters if not w.future.done()]
            heapq.heapify(self._waiters)
