"""Fleet faults: the ways one site of a real NICo fleet breaks, per site, scriptable at runtime.

Each key of :class:`SiteFaults` is a failure read from NICo's Go code (docs/simulator.md,
*Fleet faults*, cites file and line for each): a site agent that stopped polling Temporal
(``silent``: every Flow call hangs for the REST handler's workflow context timeout, then the
``TerminateWorkflowOnTimeOut`` 500), the site row's status and the inventory monitor that turns
a silent site to ``Error``, an agent that never registered the run or rule workflows, a v2.0
Flow whose run RPCs are Unimplemented, a site whose clocks run ahead of the REST server, Flow's
inventory lists without ``ORDER BY``, and a cancel whose re-read failed.

The defaults are no fault at all: a site without entry behaves as it always did.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

# common/pkg/util/workflow.go:14 WorkflowContextTimeout: how long a handler waits for a workflow.
WORKFLOW_CONTEXT_TIMEOUT_S = 50.0
# workflow/pkg/activity/site/site.go:36 SiteInventoryReceiptThreshold (15 min; its comment says 10).
INVENTORY_RECEIPT_THRESHOLD_S = 15 * 60.0
# workflow/pkg/workflow/site/monitor.go:62: the monitor is a cron workflow, "@every 3m".
MONITOR_INTERVAL_S = 180.0

# db/pkg/db/model/site.go:22-26 (SiteStatusMap, :41-45).
SITE_STATUSES = ("Pending", "Registered", "Error")
# What registered a site (workflow/pkg/activity/machine/machine.go:150-175) or took it back to
# Pending (handler/site.go:415-418, a renewed registration token).
PAIRED_MESSAGE = "Site has been successfully paired"
PENDING_MESSAGE = "Registration token renewed, pending pairing"
AGENT_FAMILIES = ("runs", "rules")
FLOW_FAMILIES = ("runs",)


def inventory_error_message(threshold_s: float) -> str:
    """``MonitorInventoryReceiptForAllSites``'s status message (site.go:577-578): ``%v`` of the
    threshold's ``Minutes()``, a float64 (15 min prints ``15``)."""
    return f"Site hasn't received inventory for longer than threshold period of: {threshold_s / 60:g} minutes"


@dataclass(frozen=True)
class SiteFaults:
    """One site's faults (all off by default). JSON keys are the camelCase names in ``_KEYS``.

    Attributes:
        silent: the site agent stopped polling Temporal: every call whose handler reaches the
            site's workflow hangs ``workflow_timeout_s`` real seconds, then answers 500.
        workflow_timeout_s: that hang (None: ``SimulatorConfig.workflow_timeout_s``, 50 s).
        site_status: the site row's status, ``Registered``, ``Pending`` or ``Error`` (None: as
            the monitor leaves it: ``Registered``, ``Error`` once silent past the threshold).
        offline_after_s: the monitor's threshold, simulated seconds (SiteInventoryReceiptThreshold).
        agent_lacks: workflow families the site agent never registered (``runs``, ``rules``):
            those calls hang like ``silent``.
        flow_lacks: RPC families the site's Flow does not implement (``runs``: a v2.0 Flow, whose
            run RPCs other than create answer gRPC Unimplemented, a 501).
        clock_skew_s: the site's database and Flow clocks run this far ahead (+) or behind (-) of
            the REST server's: every timestamp the site writes is rendered shifted.
        unordered_inventory: rack and tray lists come in no defined order (no ``ORDER BY``).
        empty_cancel: a cancel succeeds but Flow's re-read fails: 202 with the zero-value task.
    """

    silent: bool = False
    workflow_timeout_s: float | None = None
    site_status: str | None = None
    offline_after_s: float = INVENTORY_RECEIPT_THRESHOLD_S
    agent_lacks: tuple[str, ...] = ()
    flow_lacks: tuple[str, ...] = ()
    clock_skew_s: float = 0.0
    unordered_inventory: bool = False
    empty_cancel: bool = False

    def __post_init__(self) -> None:
        if self.workflow_timeout_s is not None and not self.workflow_timeout_s >= 0:
            raise ValueError("workflowTimeoutSeconds must not be negative")
        if self.site_status is not None and self.site_status not in SITE_STATUSES:
            raise ValueError(f"siteStatus must be null or one of {', '.join(SITE_STATUSES)}")
        if not self.offline_after_s >= 0:
            raise ValueError("offlineAfterSeconds must not be negative")
        if any(item not in AGENT_FAMILIES for item in self.agent_lacks):
            raise ValueError(f"agentLacks items must be among {', '.join(AGENT_FAMILIES)}")
        if any(item not in FLOW_FAMILIES for item in self.flow_lacks):
            raise ValueError(f"flowLacks items must be among {', '.join(FLOW_FAMILIES)}")
        if not math.isfinite(self.clock_skew_s):
            raise ValueError("clockSkewSeconds must be a finite number")

    @property
    def skew(self) -> timedelta:
        return timedelta(seconds=self.clock_skew_s)

    def updated(self, changes: Mapping[str, Any]) -> SiteFaults:
        """A copy with ``changes`` (camelCase JSON keys) applied; ``ValueError`` names a bad key
        or value."""
        values: dict[str, Any] = {}
        for key, value in changes.items():
            spec = _KEYS.get(key)
            if spec is None:
                raise ValueError(f"unknown site fault key {key!r}")
            name, kind = spec
            values[name] = _coerce(key, kind, value)
        return replace(self, **values)

    def as_json(self, default_timeout_s: float) -> dict[str, Any]:
        """The camelCase view (``workflowTimeoutSeconds`` resolved to the value in force)."""
        return {
            "silent": self.silent,
            "workflowTimeoutSeconds": self.timeout_s(default_timeout_s),
            "siteStatus": self.site_status,
            "offlineAfterSeconds": self.offline_after_s,
            "agentLacks": list(self.agent_lacks),
            "flowLacks": list(self.flow_lacks),
            "clockSkewSeconds": self.clock_skew_s,
            "unorderedInventory": self.unordered_inventory,
            "emptyCancel": self.empty_cancel,
        }

    def timeout_s(self, default_timeout_s: float) -> float:
        return default_timeout_s if self.workflow_timeout_s is None else self.workflow_timeout_s


NO_FAULTS = SiteFaults()

# camelCase key -> (attribute, kind); kind is "bool", "float", "float?", "status?" or "list".
_KEYS: dict[str, tuple[str, str]] = {
    "silent": ("silent", "bool"),
    "workflowTimeoutSeconds": ("workflow_timeout_s", "float?"),
    "siteStatus": ("site_status", "status?"),
    "offlineAfterSeconds": ("offline_after_s", "float"),
    "agentLacks": ("agent_lacks", "list"),
    "flowLacks": ("flow_lacks", "list"),
    "clockSkewSeconds": ("clock_skew_s", "float"),
    "unorderedInventory": ("unordered_inventory", "bool"),
    "emptyCancel": ("empty_cancel", "bool"),
}


def _coerce(key: str, kind: str, value: Any) -> Any:
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be a boolean")
        return value
    if kind in ("float", "float?"):
        if value is None and kind == "float?":
            return None
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"{key} must be a number")
        return float(value)
    if kind == "status?":
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{key} must be null or a string")
        return value
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{key} must be a list of strings")
    return tuple(dict.fromkeys(value))


def parse_site_fault(spec: str) -> tuple[int, dict[str, Any]]:
    """``INDEX:key=value[,key=value...]`` (the ``simulate --site-fault`` flag) as the index among
    Flow sites and the JSON changes; list values join their items with ``+``
    (``agentLacks=runs+rules``), ``siteStatus=null`` clears the status. ``ValueError`` if bad."""
    index_text, sep, pairs = spec.partition(":")
    if not sep or not index_text.strip().isdigit():
        raise ValueError(f"{spec!r}: expected INDEX:key=value[,key=value...]")
    changes: dict[str, Any] = {}
    for pair in filter(None, (part.strip() for part in pairs.split(","))):
        key, eq, raw = pair.partition("=")
        key, raw = key.strip(), raw.strip()
        if not eq or key not in _KEYS:
            raise ValueError(f"{spec!r}: unknown or malformed {pair!r}")
        changes[key] = _from_text(key, _KEYS[key][1], raw)
    if not changes:
        raise ValueError(f"{spec!r}: no key=value given")
    NO_FAULTS.updated(changes)  # validates the values
    return int(index_text), changes


def _from_text(key: str, kind: str, raw: str) -> Any:
    if kind == "bool":
        if raw.lower() not in ("true", "false"):
            raise ValueError(f"{key} must be true or false")
        return raw.lower() == "true"
    if kind in ("float", "float?"):
        if kind == "float?" and raw == "null":
            return None
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{key} must be a number") from None
    if kind == "status?":
        return None if raw == "null" else raw
    return [item for item in raw.split("+") if item]


# --- the site row's status ------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusEntry:
    """One ``statusHistory`` row (``APIStatusDetail``)."""

    status: str
    message: str
    at: datetime


@dataclass(frozen=True)
class SiteStatusView:
    """What ``GET /site`` renders for the row: status, isOnline and the added history."""

    status: str
    is_online: bool
    history: tuple[StatusEntry, ...]  # newest first, before the site's pairing history
    updated: datetime | None


@dataclass
class SiteHealth:
    """A site's status over time: when silence began and the status rows written since start."""

    silent_since: datetime | None = None
    history: list[StatusEntry] = field(default_factory=list)  # oldest first


def monitor_flip(silent_since: datetime, threshold_s: float) -> datetime:
    """When the monitor cron first sees ``time.Since(InventoryReceived) > threshold``.

    The last inventory receipt is taken to be the moment silence began; the cron ticks every
    3 minutes of simulated time, at multiples of 180 s since the Unix epoch (a choice: the real
    phase is when the cron workflow was started).
    """
    due = silent_since + timedelta(seconds=threshold_s)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    ticks = (due - epoch).total_seconds() / MONITOR_INTERVAL_S
    tick = epoch + timedelta(seconds=math.floor(ticks) * MONITOR_INTERVAL_S)
    while tick <= due:  # strictly after the threshold
        tick += timedelta(seconds=MONITOR_INTERVAL_S)
    return tick


def current_status(faults: SiteFaults, health: SiteHealth, now: datetime) -> tuple[str, StatusEntry | None]:
    """The status in force and, when the monitor set it (not yet written to ``health``), its row."""
    if faults.site_status is not None:
        return faults.site_status, None
    if faults.silent and health.silent_since is not None:
        flip = monitor_flip(health.silent_since, faults.offline_after_s)
        if now >= flip:
            return "Error", StatusEntry("Error", inventory_error_message(faults.offline_after_s), flip)
    return "Registered", None


def status_message(status: str, faults: SiteFaults) -> str:
    """The message of a status row written when the status is set or comes back."""
    if status == "Registered":
        return PAIRED_MESSAGE
    if status == "Pending":
        return PENDING_MESSAGE
    return inventory_error_message(faults.offline_after_s)


__all__ = [
    "INVENTORY_RECEIPT_THRESHOLD_S",
    "MONITOR_INTERVAL_S",
    "NO_FAULTS",
    "SITE_STATUSES",
    "WORKFLOW_CONTEXT_TIMEOUT_S",
    "SiteFaults",
    "SiteHealth",
    "SiteStatusView",
    "StatusEntry",
    "current_status",
    "inventory_error_message",
    "monitor_flip",
    "parse_site_fault",
    "status_message",
]
