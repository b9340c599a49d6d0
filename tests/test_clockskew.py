"""One clock per site: the offset bracket of exporter/clockskew.py on made-up timelines.

The expectation is the true offset each timeline was built with: the REST server dates answers
with whole seconds of its clock; the site stamps its tasks with its own clock, ``offset`` ahead.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import pytest

from exporter.clockskew import WINDOW_S, ClockOffset


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _busy_site(offset: float, *, seed: int = 1, minutes: float = 5) -> ClockOffset:
    """Lists every 15 s of a rack on a busy site: tasks move at random times between lists."""
    rng = random.Random(seed)
    local = Clock()
    estimate = ClockOffset(clock=local)
    rest, previous = 1_700_000_000.0, None
    while local.now < minutes * 60:
        # Tasks moved at random times since the last list, and the list is read 0.2 s before the
        # REST server dates its answer.
        moves = sorted(rest - 0.2 - rng.uniform(0, 15) for _ in range(rng.randint(1, 6)))
        date = math.floor(rest)  # the Date header: whole seconds
        estimate.answered(date, [_at(t + offset) for t in moves])
        if previous is not None:
            previous_read, previous_date = previous
            for t in moves:
                if t > previous_read:  # moved since the last list read it
                    estimate.written_after(_at(t + offset), previous_date)
        previous = (rest - 0.2, date)
        rest += 15 + rng.uniform(0, 0.3)
        local.now += 15
    return estimate


@pytest.mark.parametrize("offset", [0.0, 0.4, -0.6, 8.0, -8.0, 30.0, -120.0])
def test_a_busy_sites_offset_is_found_to_within_a_second_and_none_is_invented(offset: float) -> None:
    applied = _busy_site(offset).seconds
    if abs(offset) < 1:
        assert applied == 0.0  # within the header's resolution: compared as before
    else:
        assert abs(applied - offset) <= 1.5, (offset, applied)  # inside the counter's 2 s margin
        assert abs(applied) <= abs(offset) + 0.5  # never more than the evidence shows


def test_stale_evidence_of_a_quiet_site_invents_no_skew() -> None:
    """A quiet site whose newest update is an hour old: the lower bound is an hour negative, and
    with no upper bound nothing says the site is behind."""
    estimate = ClockOffset(clock=Clock())
    estimate.answered(1_700_003_600.0, [_at(1_700_000_000.0)])
    assert estimate.bracket()[0] == pytest.approx(-3601.0) and estimate.seconds == 0.0


def test_a_stepped_clock_is_followed() -> None:
    local = Clock()
    estimate = ClockOffset(clock=local)
    estimate.answered(1000.0, [_at(1009.5)])  # 8.5 s ahead at least
    assert estimate.seconds == pytest.approx(8.5)
    # NTP stepped the site back: an upper bound below the lower one contradicts it; start over.
    estimate.written_after(_at(1001.0), 1000.0)
    assert estimate.seconds == 0.0 or estimate.seconds <= 2.0
    local.now += WINDOW_S + 1
    estimate.answered(2000.0, [_at(1999.0)])
    assert estimate.seconds == 0.0
