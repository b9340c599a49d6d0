"""Refused credentials: back off, fail fast meanwhile, say so once.

A token NICo answers 401 to (after one fresh look at the source), or a login the identity
provider refuses, is a configuration error: retrying it on every call would send a login ten
times a second and mark every site down. Instead the guard remembers the refusal and makes every
call fail at once with :class:`~exporter.errors.CredentialsRefused` until the next attempt is
due: 30 s after the first refusal, doubling up to 5 minutes (:data:`BACKOFF`). A source that
changed meanwhile (a token file rewritten by a Secret rotation) is tried at once. The first
call that gets through ends the refusal.

A login that could not reach the identity provider (a transport error) is not a refusal: it is
backed off too (:data:`UNREACHABLE_BACKOFF`), but the credentials are not reported refused.

The guard never sees more of a credential than the token source hands the client; it keeps no
token itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from exporter.auth import TokenSource
from exporter.errors import AuthError, CredentialsRefused, TransportError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    first: float
    cap: float

    def after(self, failures: int) -> float:
        return min(self.cap, self.first * 2.0 ** max(0, failures - 1))


BACKOFF = Backoff(30.0, 300.0)
UNREACHABLE_BACKOFF = Backoff(2.0, 60.0)


class Credentials:
    """Wraps a :class:`~exporter.auth.TokenSource` with the refusal back-off.

    Args:
        source: where tokens come from.
        clock: monotonic seconds.
    """

    def __init__(self, source: TokenSource, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self._clock = clock
        self._failures = 0
        self._retry_at = 0.0
        # Whether the last failure was a refusal (401/403 from NICo or the identity provider),
        # not an identity provider that could not be reached.
        self.refused = False
        self.reason = ""
        self._version: object = None

    def __repr__(self) -> str:
        return f"Credentials({self.source!r})"

    @property
    def retry_in(self) -> float:
        """Seconds until the next attempt (0: calls go out)."""
        return max(0.0, self._retry_at - self._clock()) if self._failures else 0.0

    def check(self) -> None:
        """Raise :class:`CredentialsRefused` while the next attempt is not due (fail fast)."""
        if not self._failures or self._clock() >= self._retry_at or self._changed():
            return
        what = "refused" if self.refused else "unavailable"
        raise CredentialsRefused(
            f"credentials {what} ({self.reason}); next attempt in {self.retry_in:.0f}s",
            endpoint="/auth",
        )

    async def token(self, http: httpx.AsyncClient) -> str | None:
        """The token to send; a failure to get one backs off like a refusal."""
        self.check()
        try:
            return await self.source.token(http)
        except AuthError as exc:
            self._failed(exc.message, refused=_is_refusal(exc))
            raise
        except TransportError as exc:
            self._failed(exc.message, refused=False)
            raise

    def invalidate(self, token: str | None) -> None:
        """NICo answered 401 to ``token``: the next call takes a fresh one (a re-read file, a new
        login) before anything is taken for refused."""
        self.source.invalidate(token)

    def refused_by_nico(self, message: str) -> None:
        """NICo answered 401 to a fresh token too: the credentials are refused."""
        self._failed(message, refused=True)

    def accepted(self) -> None:
        """NICo answered a call with a token (anything but 401): whatever was wrong is over."""
        if self._failures:
            log.warning("credentials accepted again: calls resume", extra={"failures": self._failures})
        self._failures, self.refused, self.reason = 0, False, ""

    def _failed(self, reason: str, *, refused: bool) -> None:
        self._failures += 1
        self.refused = refused
        self.reason = reason
        pause = (BACKOFF if refused else UNREACHABLE_BACKOFF).after(self._failures)
        self._retry_at = self._clock() + pause
        self._version = _version(self.source)
        log.error(
            "credentials refused: calls fail fast until the next attempt"
            if refused
            else "no token: the identity provider cannot be reached; calls fail fast until the next attempt",
            extra={"error": reason, "failures": self._failures, "retry_in_s": round(pause, 1)},
        )

    def _changed(self) -> bool:
        """The source changed since it was refused (a rotated token file): try it at once."""
        current = _version(self.source)
        return current is not None and current != self._version


def _version(source: TokenSource) -> object:
    version = getattr(source, "version", None)
    return version() if callable(version) else None


def _is_refusal(exc: AuthError) -> bool:
    """A login the identity provider answered with a refusal (4xx), or a token that cannot be had
    at all (a missing or empty token file: the configuration, not the network). A 5xx from the
    identity provider is it being down."""
    return exc.status is None or exc.status < 500
