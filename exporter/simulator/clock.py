"""Simulated time: a manual clock for deterministic tests, an accelerated one for the demo.

The world never reads the system clock directly; it asks a :class:`Clock`. Tests step a
:class:`ManualClock` and observe exactly one transition at a time; the demo runs an
:class:`AcceleratedClock` so an hour of NICo activity fits in a few minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

# A fixed, recognisable default start: the spec's own example date. Keeps test output stable.
DEFAULT_START = datetime(2026, 6, 8, 18, 0, 0, tzinfo=UTC)


class Clock(Protocol):
    """Source of simulated time; ``now()`` is timezone-aware UTC and never goes backwards."""

    def now(self) -> datetime: ...


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class ManualClock:
    """A clock that only moves when told to.

    The world advances lazily to ``now()`` before each request, so a test can create a task,
    ``advance(2)``, and assert the exact state Flow would have two seconds later.
    """

    def __init__(self, start: datetime = DEFAULT_START) -> None:
        self._now = _utc(start)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move forward by ``seconds`` (negative values are refused: time never runs back)."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += timedelta(seconds=seconds)

    def set(self, when: datetime) -> None:
        """Jump to ``when``, which must not be earlier than the current time."""
        when = _utc(when)
        if when < self._now:
            raise ValueError("a clock cannot go backwards")
        self._now = when


class AcceleratedClock:
    """Simulated time = ``start`` + real elapsed time x ``speed``.

    Uses a monotonic source, so wall-clock jumps (NTP, suspend) cannot reorder events.
    ``monotonic`` is injectable for tests.
    """

    def __init__(
        self,
        start: datetime | None = None,
        speed: float = 1.0,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._start = _utc(start) if start is not None else datetime.now(UTC)
        self._speed = speed
        self._monotonic = monotonic
        self._origin = monotonic()

    @property
    def speed(self) -> float:
        return self._speed

    def now(self) -> datetime:
        elapsed = (self._monotonic() - self._origin) * self._speed
        return self._start + timedelta(seconds=elapsed)
