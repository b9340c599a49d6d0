"""The job runner on the real APScheduler and a real event loop, with a poller whose jobs record.

Independent expectations: each job's calls are timestamped by the fake itself; the runner's
promises (``exporter/scheduler.py``'s docstring) are checked against those timestamps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

import pytest

from exporter.poller import RUN_POLL_DEADLINE_S, Intervals, PollerView
from exporter.scheduler import Runner


@dataclass
class Store:
    commits: list[float] = field(default_factory=list)

    def commit(self) -> None:
        self.commits.append(time.monotonic())


class Jobs:
    """A poller whose jobs record when they run; ``slow`` jobs take that long, ``failing`` raise."""

    def __init__(self, intervals: Intervals, *, slow: dict[str, float] | None = None,
                 failing: frozenset[str] = frozenset(), start_s: float = 0.0) -> None:  # fmt: skip
        self.intervals = intervals
        self.store = Store()
        self.slow = slow or {}
        self.failing = failing
        self.start_s = start_s
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.running: dict[str, int] = defaultdict(int)
        self.most_at_once: dict[str, int] = defaultdict(int)

    async def _run(self, name: str) -> None:
        self.calls[name].append(time.monotonic())
        self.running[name] += 1
        self.most_at_once[name] = max(self.most_at_once[name], self.running[name])
        try:
            await asyncio.sleep(self.slow.get(name, 0))
            if name in self.failing:
                raise RuntimeError(f"{name} broke")
        finally:
            self.running[name] -= 1

    async def run_discovery(self, stop: asyncio.Event) -> None:
        # As the real one: the first round at once (``start_s`` long: a silent site), then a round
        # per interval until stopped.
        while not stop.is_set():
            self.calls["discovery"].append(time.monotonic())
            self.running["discovery"] += 1
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.start_s)
            finally:
                self.running["discovery"] -= 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.intervals.discovery)

    async def run_rack_polls(self, stop: asyncio.Event) -> None:
        while not stop.is_set():  # as the real one: a stop ends the wait for the next round
            await self._run("active_poll")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.intervals.active)

    async def fetch_finals(self) -> None:
        await self._run("final_fetch")

    async def attribute_trays(self) -> None:
        await self._run("tray_attribution")

    async def expire(self) -> None:
        await self._run("expire")

    async def poll_runs(self) -> None:
        await self._run("task_runs")

    def view(self) -> PollerView:
        return PollerView()


async def _run_for(jobs: Jobs, seconds: float) -> float:
    """Run the runner for ``seconds``; returns when it was started (monotonic)."""
    stop = asyncio.Event()
    began = time.monotonic()
    task = asyncio.create_task(Runner(jobs).run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, 10)
    return began


async def test_starts_at_once_and_the_first_polls_do_not_wait_an_interval() -> None:
    jobs = Jobs(Intervals(active=30, tray_attribution=30, reconcile=60, discovery=60, final_fetch=30))
    began = await _run_for(jobs, 0.5)
    for name in ("discovery", "active_poll", "final_fetch", "tray_attribution"):
        assert jobs.calls[name], f"{name} did not run at once"
        assert jobs.calls[name][0] - began < 0.4, name
    assert len(jobs.calls["discovery"]) == 1  # its next round one interval later
    assert not jobs.calls["expire"]


async def test_a_job_never_overlaps_itself_and_missed_runs_coalesce() -> None:
    jobs = Jobs(Intervals(active=5, tray_attribution=0.1, reconcile=60, discovery=60, final_fetch=5),
                slow={"tray_attribution": 0.6})  # fmt: skip
    await _run_for(jobs, 2.0)
    assert jobs.most_at_once["tray_attribution"] == 1
    # 0.6 s runs every 0.1 s for 2 s: back to back (about 3), never the 20 the interval asks for.
    assert 2 <= len(jobs.calls["tray_attribution"]) <= 4


async def test_a_failing_job_runs_again_and_leaves_the_others_running() -> None:
    jobs = Jobs(Intervals(active=0.1, tray_attribution=0.1, reconcile=60, discovery=60, final_fetch=0.1),
                failing=frozenset({"final_fetch"}))  # fmt: skip
    await _run_for(jobs, 1.0)
    assert len(jobs.calls["final_fetch"]) >= 3  # it failed every time, and ran again
    assert len(jobs.calls["tray_attribution"]) >= 3
    assert len(jobs.calls["active_poll"]) >= 3


async def test_stop_ends_the_jobs_then_commits_what_they_observed() -> None:
    jobs = Jobs(Intervals(active=0.1, tray_attribution=0.1, reconcile=60, discovery=60, final_fetch=0.1))
    await _run_for(jobs, 0.5)
    last_run = max(t for times in jobs.calls.values() for t in times)
    assert jobs.store.commits and jobs.store.commits[-1] >= last_run
    assert all(n == 0 for n in jobs.running.values())  # nothing still running after run() returned


async def test_a_slow_discovery_holds_nothing_back_and_a_stop_ends_it() -> None:
    """A site whose agent is silent holds its discovery for NICo's 50 s workflow timeout: rack
    polls and the other jobs start at once all the same, and a stop ends the discovery too."""
    jobs = Jobs(
        Intervals(active=0.1, tray_attribution=0.1, reconcile=60, discovery=60, final_fetch=0.1), start_s=5
    )
    began = time.monotonic()
    await _run_for(jobs, 0.5)
    assert time.monotonic() - began < 2  # the 5-second discovery was ended by the stop
    assert jobs.running["discovery"] == 0
    assert len(jobs.calls["active_poll"]) >= 3 and len(jobs.calls["final_fetch"]) >= 3
    assert jobs.calls["active_poll"][0] - began < 0.3


async def test_task_runs_wait_for_their_round_deadline_not_the_short_active_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A round of run calls may wait behind rack polls up to RUN_POLL_DEADLINE_S; scheduled every
    # 0.2 s, APScheduler would skip the overlapping runs with a warning each time.
    caplog.set_level(logging.WARNING)
    jobs = Jobs(Intervals(active=0.2, tray_attribution=30, reconcile=60, discovery=60, final_fetch=30),
                slow={"task_runs": 1.5})  # fmt: skip
    assert jobs.intervals.task_runs == RUN_POLL_DEADLINE_S
    await _run_for(jobs, 2.0)
    assert len(jobs.calls["task_runs"]) == 1  # at once, the next one RUN_POLL_DEADLINE_S later
    assert len(jobs.calls["active_poll"]) >= 5  # rack polls keep the short interval
    assert "maximum number of running instances" not in caplog.text
    assert Intervals(active=30).task_runs == 30  # a long active interval is kept
