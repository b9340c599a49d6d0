"""Fault injection: what can go wrong between the exporter and NICo.

Two kinds, both from a seeded RNG so a failing run can be replayed:

- **per attempt**: a probability applied independently to every request on the ``/v2`` task,
  rack, tray and site endpoints. A client that retries mostly absorbs these;
- **per logical call**, which the poller itself sees: ``call_failure`` fails a call (method,
  path and query) and every retry of it for ``call_failure_seconds``; ``stall`` holds every
  attempt of a call for ``stall_seconds`` (past the client's timeout); ``burst_every_s`` /
  ``burst_seconds`` fail every call for a while, periodically; ``throttle_every_s`` /
  ``throttle_seconds`` make the limiter refuse every call with its own 429 for a while.

The windows run on a real monotonic clock (injectable). The config is mutable at runtime
(``PUT /_sim/faults``) so a demo or a test can turn chaos on and off.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any

_PROBABILITIES = (
    "call_failure",
    "stall",
    "error_5xx",
    "slow",
    "reset",
    "truncated_json",
    "bad_pagination",
    "unknown_status",
    "report_v2",
)


@dataclass
class FaultConfig:
    """Per-request fault probabilities (0..1) and the global outage switch.

    Attributes:
        error_5xx: answer 500 (workflow error body) or 503 instead of the real response.
        slow: delay the answer by ``slow_seconds`` real seconds.
        reset: send headers promising more body than is sent, then stop (connection dies).
        truncated_json: send half the body with a matching Content-Length (valid HTTP, bad JSON).
        bad_pagination: on lists, drop ``X-Pagination`` or make it non-JSON.
        unknown_status: one task in the response gets status ``unknown_status_value``.
        report_v2: one task's report claims ``version: 2`` in that response.
        down: every ``/v2`` call answers 500 (workflow timeout) after ``down_delay_s``.
        call_failure: a logical call fails (500, 503, a cut connection or a cut body, drawn
            once) on every attempt for ``call_failure_seconds``.
        stall: every attempt of a logical call waits ``stall_seconds`` before it is answered.
        burst_every_s, burst_seconds: every ``burst_every_s`` seconds (0: never), every ``/v2``
            call answers 500 for ``burst_seconds``.
        throttle_every_s, throttle_seconds: likewise, every route answers the limiter's 429.
        seed: seed of the fault RNG; changing it restarts the sequence.
    """

    error_5xx: float = 0.0
    slow: float = 0.0
    slow_seconds: float = 2.0
    reset: float = 0.0
    truncated_json: float = 0.0
    bad_pagination: float = 0.0
    unknown_status: float = 0.0
    unknown_status_value: str = "Paused"
    report_v2: float = 0.0
    down: bool = False
    down_delay_s: float = 0.0
    call_failure: float = 0.0
    call_failure_seconds: float = 20.0
    stall: float = 0.0
    stall_seconds: float = 40.0
    burst_every_s: float = 0.0
    burst_seconds: float = 0.0
    throttle_every_s: float = 0.0
    throttle_seconds: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` unless every probability is within 0..1 and delays are >= 0."""
        for name in _PROBABILITIES:
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability between 0 and 1")
        durations = (
            "slow_seconds",
            "down_delay_s",
            "call_failure_seconds",
            "stall_seconds",
            "burst_every_s",
            "burst_seconds",
            "throttle_every_s",
            "throttle_seconds",
        )
        if any(getattr(self, name) < 0 for name in durations):
            raise ValueError("delays must not be negative")
        for every, length in (("burst_every_s", "burst_seconds"), ("throttle_every_s", "throttle_seconds")):
            if getattr(self, every) and getattr(self, length) >= getattr(self, every):
                raise ValueError(f"{length} must be shorter than {every}")

    def updated(self, changes: dict[str, Any]) -> FaultConfig:
        """A copy with ``changes`` (JSON field names as in this class) applied and validated."""
        known = {f.name: f for f in fields(self)}
        current = asdict(self)
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown fault field {name!r}")
            expected = type(current[name])
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
                raise ValueError(f"{name} must be of type {expected.__name__}")
            current[name] = value
        return FaultConfig(**current)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class Failure(StrEnum):
    """The one failure that replaces a response (at most one per request)."""

    ERROR_500 = "error_500"
    ERROR_503 = "error_503"
    RESET = "reset"
    TRUNCATED = "truncated"


class BadPagination(StrEnum):
    MISSING = "missing"
    GARBAGE = "garbage"


@dataclass(frozen=True)
class FaultPlan:
    """What to do to one response."""

    failure: Failure | None = None
    slow: bool = False
    bad_pagination: BadPagination | None = None
    unknown_status: bool = False
    report_v2: bool = False

    @property
    def mutates_tasks(self) -> bool:
        return self.unknown_status or self.report_v2


NO_FAULTS = FaultPlan()


@dataclass(frozen=True)
class CallFault:
    """What happens to every attempt of one logical call until ``until`` (monotonic seconds)."""

    until: float
    failure: Failure | None = None
    stall: bool = False


class FaultInjector:
    """Draws a :class:`FaultPlan` per request from the config and a seeded RNG."""

    def __init__(self, config: FaultConfig, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.monotonic = monotonic
        self._epoch = monotonic()  # burst and throttle windows count from here
        self._calls: dict[str, CallFault] = {}
        # Logical calls made to fail or stall so far (what the poller can see).
        self.calls_failed = 0
        self.calls_stalled = 0

    def configure(self, config: FaultConfig) -> None:
        """Swap the config at runtime; a new seed restarts the random sequence."""
        if config.seed != self.config.seed:
            self.rng = random.Random(config.seed)
        if (config.burst_every_s, config.throttle_every_s) != (
            self.config.burst_every_s,
            self.config.throttle_every_s,
        ):
            self._epoch = self.monotonic()
        if not (config.call_failure or config.stall):
            self._calls.clear()
        self.config = config

    def _in_window(self, every: float, length: float) -> bool:
        if not every or not length:
            return False
        return (self.monotonic() - self._epoch) % every < length

    def in_burst(self) -> bool:
        """Every ``/v2`` call fails now (a periodic outage)."""
        return self._in_window(self.config.burst_every_s, self.config.burst_seconds)

    def throttling(self) -> bool:
        """The limiter refuses every call now (a 429 storm)."""
        return self._in_window(self.config.throttle_every_s, self.config.throttle_seconds)

    def call(self, key: str) -> CallFault | None:
        """The fault of logical call ``key`` (method, path and query): drawn on its first attempt
        and applied to every attempt until it ends."""
        cfg = self.config
        if not (cfg.call_failure or cfg.stall):
            return None
        now = self.monotonic()
        current = self._calls.get(key)
        if current is not None and current.until > now:
            return current
        if len(self._calls) > 10_000:
            self._calls = {k: f for k, f in self._calls.items() if f.until > now}
        failed, stalled = self.rng.random() < cfg.call_failure, self.rng.random() < cfg.stall
        kind = self.rng.choice(list(Failure))
        if failed:
            self.calls_failed += 1
            fault = CallFault(now + cfg.call_failure_seconds, failure=kind)
        elif stalled:
            self.calls_stalled += 1
            # Long enough for the client's retries to give up, then it answers again.
            fault = CallFault(now + cfg.stall_seconds * 3, stall=True)
        else:
            self._calls.pop(key, None)
            return None
        self._calls[key] = fault
        return fault

    def _hit(self, probability: float) -> bool:
        # Always draw, so one fault's probability does not shift the others' sequence.
        return self.rng.random() < probability

    def draw(self) -> FaultPlan:
        """Decide the faults for one request."""
        cfg = self.config
        error, reset, truncated = (
            self._hit(cfg.error_5xx),
            self._hit(cfg.reset),
            self._hit(cfg.truncated_json),
        )
        slow, bad_pages = self._hit(cfg.slow), self._hit(cfg.bad_pagination)
        unknown, v2 = self._hit(cfg.unknown_status), self._hit(cfg.report_v2)
        coin = self.rng.random() < 0.5
        failure: Failure | None = None
        if error:
            # 500 is what a failed or timed-out workflow gives; 503 is Flow being Unavailable.
            failure = Failure.ERROR_500 if coin else Failure.ERROR_503
        elif reset:
            failure = Failure.RESET
        elif truncated:
            failure = Failure.TRUNCATED
        if failure is None and not (slow or bad_pages or unknown or v2):
            return NO_FAULTS
        return FaultPlan(
            failure=failure,
            slow=slow,
            bad_pagination=(BadPagination.MISSING if coin else BadPagination.GARBAGE) if bad_pages else None,
            unknown_status=unknown,
            report_v2=v2,
        )
