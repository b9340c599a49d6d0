"""What panels must count as the alert rules do: failures from the first, and stuck tasks.

Both come from :mod:`exporter.mixin.alerts`: a failure counter is read with the builder kept
beside the rules (:func:`exporter.mixin.alerts.increase_from_zero`), and NicoTaskStuck's
per-operation thresholds are the ones the rules are rendered with (the same
:class:`~exporter.mixin.alerts.AlertConfig`), so a threshold changed in the variables moves the
alert and the Fleet dashboard's stuck stat and table together.
"""

from __future__ import annotations

from exporter.mixin.alerts import AlertConfig, Thresholds, increase_from_zero
from exporter.mixin.dashboards.model import RUNNING, SR
from exporter.operations import OPERATIONS

TASK = "site_id, rack_id, task_id"
# A tray's failure counter is kept in the exporter's state file across restarts: a restarted
# exporter (a new instance address) serves it again with its history, which must not count as new.
TRAY_KEY = "site_id, rack_id, tray_id, tray_type"

# The values of :func:`stuck_levels`, which the stuck table maps to words and colours.
STUCK_CRITICAL, STUCK_WARNING, STUCK_NO_PROGRESS = 3, 2, 1


def failures_over(series: str, window: str = "$__range", *, key: str = "") -> str:
    """Per series, the failures counted over ``window`` (the dashboard's range), each label set's
    first one too.

    The window reaches back hours: a new Prometheus (or exporter) counts whole the series it
    found at its first scrape (``fresh``), or the first failure of every label set would stay
    hidden for that long. ``key``: see :func:`exporter.mixin.alerts.increase_from_zero`.
    """
    return increase_from_zero(series, window, key=key, fresh=True)


def failures_per_interval(series: str, *, key: str = "") -> str:
    """Per series, the failures counted in each graph interval (``$__rate_interval``), the first too.

    Not ``fresh``: after a Prometheus outage longer than the interval, every series would count
    whole at once; a new install only misses the first interval.
    """
    return increase_from_zero(series, "$__rate_interval", key=key)


def _running_seconds(timestamp: str) -> str:
    """Seconds since ``timestamp`` of each Running task, labelled with its operation (what the
    rules' ``nico:task_running:seconds`` record computes, from the raw series)."""
    return (
        f"((time() - max by ({TASK}) ({timestamp}{{{SR}}})) "
        f"* on ({TASK}) group_left (operation) group by ({TASK}, operation) (nico_task_info{{{SR}}}) "
        f"and on ({TASK}) {RUNNING})"
    )


def stuck_seconds(config: AlertConfig, level: str) -> dict[str, float]:
    """Every operation's NicoTaskStuck threshold at ``level`` (warning or critical), in seconds:
    its own from the variables, or their default."""
    return {op: getattr(config.stuck.get(op, config.stuck_default), level) for op in OPERATIONS}


def _thresholds(config: AlertConfig, level: str) -> str:
    """A vector of one sample per operation, its threshold at ``level``, labelled ``operation``."""
    return " or ".join(
        f'label_replace(vector({seconds:g}), "operation", "{op}", "", "")'
        for op, seconds in stuck_seconds(config, level).items()
    )


def stuck_levels(config: AlertConfig) -> str:
    """Each Running task NicoTaskStuck holds stuck, valued by the condition that holds.

    :data:`STUCK_CRITICAL` past its operation's critical threshold, :data:`STUCK_WARNING` past its
    warning threshold, :data:`STUCK_NO_PROGRESS` unchanged for ``no_progress_after``; no series
    for a task none holds for. The alert fires once a condition has held for its ``for``.
    """
    running = _running_seconds("nico_task_started_timestamp_seconds")
    unchanged = _running_seconds("nico_task_updated_timestamp_seconds")
    arms = (
        (STUCK_CRITICAL, f"{running} > on (operation) group_left () ({_thresholds(config, 'critical')})"),
        (STUCK_WARNING, f"{running} > on (operation) group_left () ({_thresholds(config, 'warning')})"),
        (STUCK_NO_PROGRESS, f"{unchanged} > {config.stuck_no_progress_after:g}"),
    )
    # ``or`` keeps the left side's series: a task past both thresholds shows as critical.
    return " or ".join(f"({expr}) * 0 + {value}" for value, expr in arms)


def stuck_thresholds(config: AlertConfig) -> str:
    """The thresholds (warning/critical) in words, for the panels' descriptions:
    ``bring_up 3h/6h, ..., power_on 15m/30m; any other operation 1h/2h``."""

    def pair(t: Thresholds) -> str:
        return f"{_duration(t.warning)}/{_duration(t.critical)}"

    listed = ", ".join(f"{op} {pair(t)}" for op, t in sorted(config.stuck.items()))
    rest = pair(config.stuck_default)
    return f"{listed}; any other operation {rest}" if listed else f"every operation {rest}"


def no_progress_after(config: AlertConfig) -> str:
    """NicoTaskStuck's ``no_progress_after`` in words (``1h``)."""
    return _duration(config.stuck_no_progress_after)


def _duration(seconds: float) -> str:
    whole, out = round(seconds), ""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            out += f"{count}{unit}"
    return out or "0s"


def number(value: float) -> int | float:
    """``value`` as a threshold in the JSON and the text: ``3``, not ``3.0``, when it is whole."""
    return int(value) if value.is_integer() else value
