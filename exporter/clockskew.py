"""One clock per site: how far a site's timestamps are from the REST server's.

A task's ``created`` is written by the site's database clock, its ``updated``, ``started`` and
``finished`` by the site's Flow process (release/v2.0 rest-api/flow/internal/db/migrations/
20251204120000_create_task_table.up.sql:19; flow/internal/db/model/task.go:91-107), while the
``Date`` header of every answer is the REST server's clock. The creation counter compares the
two (was a task created before or after a counter reading, did it finish before the baseline):
on a site whose clock is seconds off, tasks would be counted twice, or not at all.

The offset (site time minus REST server time) is bracketed from what NICo sends:

- **from below** by every answer that carries site timestamps: the newest was written before
  the answer left, when the REST server's clock read less than ``Date + 1`` (the header has whole
  seconds);
- **from above** by every site timestamp written after an earlier answer was made: a task whose
  ``updated`` moved since the last list of its rack, or an active task the last complete list
  did not have (created since), was written after that list's ``Date``.

Over a sliding window the highest lower bound and the lowest upper bound close in on the offset
(a busy site moves its tasks every few seconds). The offset applied is the value of that bracket
nearest to zero, and none below a second: a site whose bracket holds 0 is compared exactly as
before, a site clearly ahead or behind is corrected by no more than the evidence shows (within
a second or two of its true offset, inside the counter's 2 s margin, closer the busier the site;
up to 3 s on a loaded machine whose polls of a rack are seconds apart), and stale
evidence (a quiet site whose newest update is old) widens the bracket instead of inventing a skew.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime

# Bounds older than this no longer count: a site whose clock was corrected is followed.
WINDOW_S = 600.0
# Slack for the time between a site's read of a task and the REST server dating its answer.
ANSWER_SLACK_S = 0.5
# Offsets smaller than this are the Date header's resolution and the answer's latency, not a skew:
# a site within it is compared exactly as before.
MIN_APPLIED_S = 1.0


class ClockOffset:
    """The bracketed offset of one site's clock: site time minus REST server time, in seconds."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # (local time, bound), highest lower bound first / lowest upper bound first (monotonic
        # deques: a newer, tighter bound retires the older, looser ones behind it).
        self._lower: deque[tuple[float, float]] = deque()
        self._upper: deque[tuple[float, float]] = deque()

    def answered(self, server_date: float | None, stamps: Iterable[datetime | None]) -> None:
        """An answer dated ``server_date`` (its ``Date`` header) carried these site timestamps."""
        if server_date is None:
            return
        newest = max((s.timestamp() for s in stamps if s is not None), default=None)
        if newest is not None:
            self._add(self._lower, newest - (server_date + 1.0), lower=True)

    def written_after(self, stamp: datetime | None, earlier_date: float | None) -> None:
        """The site wrote ``stamp`` after an answer dated ``earlier_date`` was made."""
        if stamp is not None and earlier_date is not None:
            self._add(self._upper, stamp.timestamp() - earlier_date + ANSWER_SLACK_S, lower=False)

    def bracket(self) -> tuple[float | None, float | None]:
        """(lower, upper) bounds of the offset over the window; None where there is none."""
        horizon = self._clock() - WINDOW_S
        for bounds in (self._lower, self._upper):
            while bounds and bounds[0][0] < horizon:
                bounds.popleft()
        lower = self._lower[0][1] if self._lower else None
        upper = self._upper[0][1] if self._upper else None
        return lower, upper

    @property
    def seconds(self) -> float:
        """The offset to apply: the bracket's value nearest to zero (0 below :data:`MIN_APPLIED_S`)."""
        lower, upper = self.bracket()
        value = 0.0
        if lower is not None and lower > 0:
            value = lower if upper is None else min(lower, upper)
        elif upper is not None and upper < 0:
            value = upper if lower is None else max(lower, upper)
        return value if abs(value) >= MIN_APPLIED_S else 0.0

    def _add(self, bounds: deque[tuple[float, float]], bound: float, *, lower: bool) -> None:
        other = self._upper if lower else self._lower
        if other and (bound > other[0][1] if lower else bound < other[0][1]):
            # The evidence contradicts itself: the site's clock was stepped. Start over.
            other.clear()
        while bounds and (bounds[-1][1] <= bound if lower else bounds[-1][1] >= bound):
            bounds.pop()
        bounds.append((self._clock(), bound))
