"""Fault injection: what can go wrong between the exporter and NICo, drawn per request.

Each fault is a probability applied independently to every request on the ``/v2`` task, rack,
tray and site endpoints, from a seeded RNG so a failing benchmark run can be replayed. The
config is mutable at runtime (``PUT /_sim/faults``) so a demo can turn chaos on and off.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any

_PROBABILITIES = (
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
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` unless every probability is within 0..1 and delays are >= 0."""
        for name in _PROBABILITIES:
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability between 0 and 1")
        if self.slow_seconds < 0 or self.down_delay_s < 0:
            raise ValueError("delays must not be negative")

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


class FaultInjector:
    """Draws a :class:`FaultPlan` per request from the config and a seeded RNG."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)

    def configure(self, config: FaultConfig) -> None:
        """Swap the config at runtime; a new seed restarts the random sequence."""
        if config.seed != self.config.seed:
            self.rng = random.Random(config.seed)
        self.config = config

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
