"""A global, priority-aware token bucket shared by every request the exporter makes.

NICo's optional limiter allows 10 req/s per client IP with a burst of 30, on every route, and
answers 429 without ``Retry-After``; staying under it ourselves is cheaper than being throttled.
The default burst here is 10: with the same rate, the 20 tokens of difference absorb latency
jitter (requests sent evenly can arrive bunched). A 429 pauses the whole bucket for a second. When the budget is
short, waiters are served by priority (lower number first), then in arrival order, so a final
fetch never queues behind discovery.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from enum import IntEnum


class Priority(IntEnum):
    """Who goes first when the request budget is short (lower is more urgent)."""

    FINAL_FETCH = 0
    ACTIVE_POLL = 1
    TRAY_ATTRIBUTION = 2
    RECONCILIATION = 3
    DISCOVERY = 4


class TokenBucket:
    """Token bucket of ``rate`` tokens per second holding at most ``burst`` tokens.

    ``rate <= 0`` disables limiting. ``acquire`` never busy-waits: one waiter at a time sleeps
    until the next token is due, and tokens go to the most urgent waiter.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._tokens = float(self.burst)
        self._stamp = clock()
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._wakeup: asyncio.TimerHandle | None = None

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def available(self) -> float:
        """Tokens available now (for metrics and budget decisions)."""
        if not self.enabled:
            return float("inf")
        self._refill()
        return self._tokens

    def penalize(self, seconds: float) -> None:
        """Hand out no token for ``seconds`` (the server said 429): everyone waits, by priority.

        The bucket goes into debt, so the pause does not stack on a pause already running.
        """
        if not self.enabled or seconds <= 0:
            return
        self._refill()
        self._tokens = min(self._tokens, 0.0, -seconds * self.rate + 1.0)
        if self._waiters:
            self._dispatch()

    def waiting(self, most_urgent: int | None = None) -> int:
        """Callers queued for a token (with ``most_urgent``: those of that priority or more urgent)."""
        return sum(
            1
            for priority, _, fut in self._waiters
            if not fut.done() and (most_urgent is None or priority <= most_urgent)
        )

    async def acquire(self, priority: int = Priority.ACTIVE_POLL) -> None:
        """Wait for one token; urgent callers overtake queued less urgent ones."""
        if not self.enabled:
            return
        self._refill()
        if not self._waiters and self._tokens >= 1.0:
            self._tokens -= 1.0
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiters, (int(priority), next(self._seq), fut))
        self._dispatch()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # We were granted a token but our caller gave up: give it back.
                self._tokens = min(float(self.burst), self._tokens + 1.0)
                self._dispatch()
            raise

    def _dispatch(self) -> None:
        if self._wakeup is not None:
            self._wakeup.cancel()
            self._wakeup = None
        self._refill()
        while self._waiters:
            _, _, fut = self._waiters[0]
            if fut.done():
                heapq.heappop(self._waiters)
                continue
            if self._tokens < 1.0:
                break
            heapq.heappop(self._waiters)
            self._tokens -= 1.0
            fut.set_result(None)
        if self._waiters:
            delay = (1.0 - self._tokens) / self.rate
            self._wakeup = asyncio.get_running_loop().call_later(max(delay, 0.0), self._dispatch)
