"""Durations in the exporter's settings, in seconds: parsing, display, and the pydantic types.

One notation for every duration we read (the exporter config, the alert variables): what Go's
``time.ParseDuration`` and PromQL durations have in common, joined. A sequence of
``<number><unit>`` parts with the units ``ms``, ``s``, ``m``, ``h`` (Go and PromQL) and ``d``
(PromQL), fractions allowed as in Go (``1.5h``): ``15s``, ``5m``, ``1h30m``, ``500ms``, ``7d``; or
a plain number of seconds. Go's ``ns``/``us`` and PromQL's ``w``/``y`` are not accepted: no setting
needs them. Units are lowercase only (``5M`` could mean months).
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")
_DURATION_HINT = "use e.g. 15s, 5m, 1h"


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_duration(value: object) -> float:
    """Seconds from ``15s``, ``5m``, ``1h30m``, ``500ms``, ``7d``, a number or a numeric string.

    Plain numbers are seconds. Units are lowercase only: ``5M`` could mean months.
    Raises ``ValueError`` for negatives, non-finite values and anything else.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r} ({_DURATION_HINT})")
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        body = text.removeprefix("-")
        if _NUMBER.fullmatch(body):
            seconds = float(body)
        elif _DURATION.fullmatch(body):
            seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(body))
        else:
            raise ValueError(f"invalid duration {_shown(value)} ({_DURATION_HINT})")
        if text.startswith("-"):
            seconds = -seconds
    else:
        raise ValueError(f"invalid duration of type {type(value).__name__} ({_DURATION_HINT})")
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {_shown(value)} ({_DURATION_HINT})")
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {_shown(value)}")
    return seconds


def format_duration(seconds: float) -> str:
    """The inverse of :func:`parse_duration` for display: 90 -> ``1m30s``, 0.5 -> ``500ms``."""
    ms = round(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms"
    out = ""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        count, ms = divmod(ms, size)
        if count:
            out += f"{count}{unit}"
    whole, frac = divmod(ms, 1000)
    if frac:
        out += f"{whole}.{frac:03d}".rstrip("0") + "s"
    elif whole:
        out += f"{whole}s"
    return out


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A non-negative duration in seconds, written ``15s``, ``5m``, ``1h30m`` or as plain seconds."""

Interval = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]
"""A :data:`Duration` that must be greater than zero (poll intervals, timeouts)."""
