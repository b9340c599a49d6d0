"""Runs the poller's jobs on APScheduler 3.x (``AsyncIOScheduler``).

Jobs never overlap themselves (``max_instances=1``), missed runs coalesce into one, and each is
jittered a little so replicas and restarts do not synchronise their load on NICo. On start,
discovery and a first poll of every rack run at once, not one interval later. A stop request
(SIGTERM, SIGINT) ends the jobs, writes the last state and returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from exporter.poller import Intervals, PollerView

log = logging.getLogger(__name__)

EXPIRE_INTERVAL = 30.0


def _jitter(interval: float) -> float:
    """A tenth of the interval, at most 5 s: enough to spread load, not enough to hurt freshness."""
    return min(5.0, interval / 10)


class Committer(Protocol):
    def commit(self) -> None: ...


class Jobs(Protocol):
    """What the runner needs of the poller: its intervals, its jobs, and the store to commit."""

    @property
    def intervals(self) -> Intervals: ...
    @property
    def store(self) -> Committer: ...

    async def run_discovery(self, stop: asyncio.Event) -> None: ...
    async def run_rack_polls(self, stop: asyncio.Event) -> None: ...
    async def fetch_finals(self) -> None: ...
    async def attribute_trays(self) -> None: ...
    async def expire(self) -> None: ...
    async def poll_runs(self) -> None: ...
    def view(self) -> PollerView: ...


class Runner:
    """Owns the scheduler for one poller (:class:`~exporter.poller.Poller`, or anything with its jobs)."""

    def __init__(self, poller: Jobs) -> None:
        self.poller = poller
        self.scheduler = AsyncIOScheduler(timezone=UTC)

    def _job(self, name: str, job: Callable[[], Awaitable[None]]) -> Callable[[], Coroutine[Any, Any, None]]:
        async def run() -> None:
            try:
                await job()
            except asyncio.CancelledError:
                # Shutdown cancels running jobs: that is how they end, not a failure to report.
                log.debug("job cancelled", extra={"job": name})
            except Exception:  # one failed run must not kill the job; the next run tries again
                log.exception("job failed", extra={"job": name})

        run.__name__ = name
        return run

    def _add(
        self,
        name: str,
        job: Callable[[], Awaitable[None]],
        interval: float,
        *,
        now: bool,
        jitter: bool = True,
    ) -> None:
        first = datetime.now(UTC) + (timedelta(0) if now else timedelta(seconds=interval))
        self.scheduler.add_job(
            self._job(name, job),
            "interval",
            seconds=interval,
            jitter=_jitter(interval) if jitter else None,
            id=name,
            name=name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(interval)),
            next_run_time=first,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Start at once, then run the jobs on their intervals until ``stop`` is set.

        Discovery and rack polls are loops of their own: each site is discovered on its own
        schedule (a silent site holds only itself) and its racks are polled as soon as they are
        known, so nothing waits for the slowest site.
        """
        p = self.poller
        iv = p.intervals
        discovery = asyncio.create_task(self._job("discovery", lambda: p.run_discovery(stop))())
        # Rack polls pace themselves: every rack on its own phase of the active interval.
        rack_polls = asyncio.create_task(self._job("active_poll", lambda: p.run_rack_polls(stop))())
        self._add("final_fetch", p.fetch_finals, iv.final_fetch, now=True)
        self._add("tray_attribution", p.attribute_trays, iv.tray_attribution, now=True)
        self._add("task_runs", p.poll_runs, iv.task_runs, now=True)
        self._add("expire", p.expire, EXPIRE_INTERVAL, now=False)
        self.scheduler.start()
        log.info("polling started", extra={"shard": p.view().shard_index})
        try:
            await stop.wait()
        finally:
            # APScheduler cancels running coroutine jobs on shutdown; what they observed so far is
            # consistent, so write it.
            self.scheduler.shutdown(wait=False)
            # Discovery may be waiting out a retry of a site list that does not answer: what it
            # found is already written, so it ends now rather than after the retry.
            discovery.cancel()
            await asyncio.gather(discovery, rack_polls, return_exceptions=True)
            await asyncio.sleep(0)
            p.store.commit()
