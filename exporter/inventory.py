"""What the poller knows of sites and racks between polls, and how a site's health is judged.

Owned by the event loop's thread (discovery writes it, rack polls read and annotate it); the
metrics see it only through the poller's immutable view.

**A site is down only when NICo failed to answer for it**: its breaker is open (it stopped
answering, or NICo lists it offline), or most of its racks' last polls got no answer from NICo.
A poll that failed inside the exporter (its own request budget, queue or deadline, refused
credentials, a request NICo refuses with 400 or 403) says nothing about the site: it is counted
by cause (``nico_exporter_self_failures_total``) and the site keeps the state NICo last showed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from exporter.clockskew import ClockOffset
from exporter.errors import EXPORTER, blame
from exporter.models import Rack, Site, Tray


@dataclass(frozen=True)
class Intervals:
    """How often each job runs, in seconds.

    ``reconcile``: how often a rack with active tasks reads its all-tasks total (an idle rack
    reads it at every active poll), and the least time between two listings of one rack that
    name unexplained tasks on a paging server.
    """

    active: float = 15.0
    tray_attribution: float = 60.0  # polling.tray_interval: the tray_attribution job
    reconcile: float = 300.0
    discovery: float = 300.0
    final_fetch: float = 2.0

    @property
    def task_runs(self) -> float:
        """The task-runs job's interval and the deadline of one round: the active interval, but
        at least ``RUN_POLL_DEADLINE_S``, so a round waiting behind rack polls for the budget is
        over before the next one is due (APScheduler would skip that one with a warning)."""
        return max(self.active, RUN_POLL_DEADLINE_S)


# The least time a round of Task Run calls may take (they wait behind rack polls for the budget).
RUN_POLL_DEADLINE_S = 10.0


class Outcome(StrEnum):
    """How a rack's last poll ended, for its site's health."""

    OK = "ok"
    # NICo did not answer for the site (timeout, connection, 5xx, its breaker open).
    NICO = "nico"
    # The exporter's own limit or configuration: says nothing about the site.
    EXPORTER = "exporter"


def outcome_of(error: BaseException | None) -> Outcome:
    if error is None:
        return Outcome.OK
    side, _ = blame(error)
    return Outcome.EXPORTER if side == EXPORTER else Outcome.NICO


@dataclass
class SiteHealth:
    """One site: its inventory entry, how its polls went (``nico_site_up`` and freshness), and
    its discovery schedule.

    ``up`` starts true (nothing says NICo failed for it yet) and turns false only on NICo's
    failure for the site; ``online`` is NICo's own ``isOnline`` from the site list (its status is
    Registered: release/v2.0 rest-api/api/pkg/api/model/site.go:270).
    """

    site: Site
    up: bool = True
    last_success: float | None = None
    last_error: str | None = None
    online: bool | None = None
    # Its racks were listed at least once (or it has no Flow: nothing to list).
    discovered: bool = False
    # The first discovery ended (answered or failed): readiness waits for nothing more.
    tried: bool = False
    discovery_failures: int = 0
    # Monotonic seconds: when its racks are listed next (0: at once).
    discovery_due: float = 0.0
    discovering: asyncio.Task[None] | None = None
    clock: ClockOffset = field(default_factory=ClockOffset)


@dataclass
class RackEntry:
    """What the poller keeps for one rack between polls (none of it needs to survive a restart)."""

    site_id: str
    rack: Rack
    trays: list[Tray] = field(default_factory=list)
    last_poll: float | None = None
    # When the all-tasks total was last read (monotonic seconds).
    total_read_at: float | None = None
    # The last active list's total: more than 20 means the list could not show them all.
    active_total: int = 0
    # Active tasks the last active list neither showed nor knew: found on the trays' lists.
    hidden_active: int = 0
    named_at: float | None = None
    # The schedule (monotonic seconds): when the next poll is due, the poll running now, and
    # how the last one ended (an error text, or None).
    due: float | None = None
    polling: asyncio.Task[None] | None = None
    polled: bool = False
    last_error: str | None = None
    outcome: Outcome | None = None
    # A failed poll is tried again within its interval, once.
    retried: bool = False
    # Its active list was read by this process: until then every poll reads it (a counter that
    # does not move says nothing of the tasks active when the rack was baselined or restarted).
    active_listed: bool = False
    # The Date of the last active list, whether it was complete, and the ``updated`` of each task
    # it showed (exporter.clockskew: what moved since is bounded by that Date).
    listed_date: float | None = None
    listed_complete: bool = False
    listed_updated: dict[str, datetime | None] | None = None


def judge_site(health: SiteHealth, racks: list[RackEntry], *, breaker_open: bool) -> bool:
    """Whether the site is up: not while its breaker is open; otherwise while most of the racks
    whose last poll says something about NICo answered. When none does (every failure was the
    exporter's own), the site keeps the state NICo last showed."""
    if breaker_open:
        return False
    decisive = [e.outcome for e in racks if e.polled and e.outcome in (Outcome.OK, Outcome.NICO)]
    if not decisive:
        return health.up
    failed = sum(1 for o in decisive if o is Outcome.NICO)
    # Up when most of its racks answered: one flaky rack is not a site outage.
    return failed * 2 < len(decisive)
