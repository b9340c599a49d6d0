"""Per-site circuit breakers: a site that stops answering gets one probe per interval, not every call.

A call to a site whose agent is not polling hangs in NICo for the Temporal workflow timeout (50 s)
and then fails; sending every rack poll, final fetch and tray scan of that site there would hold
connection slots and request tokens for nothing. After ``threshold`` consecutive failures that say
the site does not answer (no response in time, a connection failure, a 5xx), the site's breaker
opens: its calls fail at once with :class:`~exporter.errors.SiteUnavailable`, except one probe per
``probe_interval``. The first answer closes it again. NICo's site list saying a site is offline
opens it too (:meth:`Breakers.force_open`): such a site is probed, not polled.

Only answers about the site itself count: a 4xx, NICo's "no rows" for one task, a 429 from the
limiter, the exporter's own deadline or an optional capability's failure (Task Runs, Operation
Rules: an agent older than the REST server hangs those while tasks work) neither open nor close it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 3
DEFAULT_PROBE_INTERVAL_S = 15.0


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    # One probe is out; every other call still fails fast until it answers.
    PROBING = "probing"


@dataclass
class _Site:
    state: State = State.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probe_at: float = 0.0
    reason: str = ""
    # NICo's site list says the site is offline: stays open until a probe answers.
    offline: bool = False


class Breakers:
    """The breakers of every site a client talks to (owned by the event loop's thread)."""

    def __init__(
        self,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        probe_interval: float = DEFAULT_PROBE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = max(1, threshold)
        self.probe_interval = probe_interval
        self._clock = clock
        self._sites: dict[str, _Site] = {}
        # When each site last answered: a site NICo lists offline that answered this recently is
        # believed (NICo's flag lags the agent by up to its heartbeat interval).
        self._answered: dict[str, float] = {}

    def _site(self, site: str) -> _Site:
        entry = self._sites.get(site)
        if entry is None:
            entry = self._sites[site] = _Site()
        return entry

    # -- questions -----------------------------------------------------------------------------

    def is_open(self, site: str) -> bool:
        """Calls to ``site`` fail fast now (open, or a probe is out)."""
        entry = self._sites.get(site)
        return entry is not None and entry.state is not State.CLOSED

    def probe_due(self, site: str) -> bool:
        """An open site's next call would be its probe."""
        entry = self._sites.get(site)
        return entry is not None and entry.state is State.OPEN and self._clock() >= entry.probe_at

    def reason(self, site: str) -> str:
        entry = self._sites.get(site)
        return entry.reason if entry is not None else ""

    def open_sites(self) -> tuple[str, ...]:
        return tuple(sorted(s for s, e in self._sites.items() if e.state is not State.CLOSED))

    # -- the call path -------------------------------------------------------------------------

    def admit(self, site: str) -> State | None:
        """Whether a call to ``site`` may go out now: ``CLOSED`` (as usual), ``PROBING`` (it is the
        open site's probe: its first call after the probe time; the others keep failing fast
        until it answers) or ``None`` (fail fast)."""
        entry = self._sites.get(site)
        if entry is None or entry.state is State.CLOSED:
            return State.CLOSED
        if entry.state is State.OPEN and self._clock() >= entry.probe_at:
            entry.state = State.PROBING
            return State.PROBING
        return None

    def allow(self, site: str) -> bool:
        return self.admit(site) is not None

    def succeeded(self, site: str) -> None:
        """The site answered (any response that is about the site, success or its own error)."""
        self._answered[site] = self._clock()
        entry = self._sites.get(site)
        if entry is None:
            return
        if entry.state is not State.CLOSED:
            log.warning(
                "site answers again: its calls resume",
                extra={"site_id": site, "open_for_s": round(self._clock() - entry.opened_at, 1)},
            )
        del self._sites[site]

    def failed(self, site: str, reason: str) -> None:
        """The site did not answer: a timeout, a connection failure or a 5xx."""
        entry = self._site(site)
        now = self._clock()
        entry.failures += 1
        entry.reason = reason
        if entry.state is State.PROBING:
            entry.state, entry.probe_at = State.OPEN, now + self.probe_interval
            return
        if entry.state is State.CLOSED and entry.failures >= self.threshold:
            entry.state, entry.opened_at, entry.probe_at = State.OPEN, now, now + self.probe_interval
            log.warning(
                "site does not answer: failing its calls fast, one probe per interval",
                extra={
                    "site_id": site,
                    "failures": entry.failures,
                    "probe_interval_s": self.probe_interval,
                    "error": reason,
                },
            )

    def released(self, site: str) -> None:
        """A probe ended without saying anything about the site (the exporter's own deadline, a
        429): the next call may probe again."""
        entry = self._sites.get(site)
        if entry is not None and entry.state is State.PROBING:
            entry.state = State.OPEN

    def force_open(self, site: str, reason: str) -> None:
        """NICo's site list says ``site`` is offline: probe it, do not poll it."""
        now = self._clock()
        if now - self._answered.get(site, -1e18) < 2 * self.probe_interval:
            return
        entry = self._site(site)
        entry.offline, entry.reason = True, reason
        if entry.state is State.CLOSED:
            # The first probe goes out at once: the flag may be stale.
            entry.state, entry.opened_at, entry.probe_at = State.OPEN, now, now
            log.warning(
                "site offline in NICo's site list: probing it, not polling it",
                extra={"site_id": site, "probe_interval_s": self.probe_interval},
            )

    def forget(self, site: str) -> None:
        self._sites.pop(site, None)
        self._answered.pop(site, None)
