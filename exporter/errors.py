"""Typed errors at the client boundary; everything above the client handles them by kind.

No exception text ever carries a credential: messages are built from the endpoint template,
the HTTP status and NICo's own error ``message``, never from request headers.
"""

from __future__ import annotations


class NicoError(Exception):
    """Base of every error the client raises.

    Attributes:
        endpoint: the endpoint template (``/rack/{id}/task``), never the filled-in URL.
        status: the HTTP status code, or ``None`` for transport and payload errors.
    """

    retryable: bool = False

    def __init__(
        self, message: str, *, endpoint: str = "", status: int | None = None, detail: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.endpoint = endpoint
        self.status = status
        # NICo's own ``message`` from the error body ("" when there was none).
        self.detail = detail


class TransportError(NicoError):
    """The request never produced a response: connection refused or reset, timeout.

    ``kind``: ``timeout`` (sent, no answer in time) or ``connection`` (refused, reset, DNS, TLS).
    """

    retryable = True

    def __init__(self, message: str, *, endpoint: str = "", kind: str = "connection") -> None:
        super().__init__(message, endpoint=endpoint)
        self.kind = kind


class Unauthorized(NicoError):
    """401: the token is missing, malformed, expired or rejected."""


class Forbidden(NicoError):
    """403: wrong role, or the site or org does not belong to the caller's provider."""


class NotFound(NicoError):
    """404 from NICo itself ("Task not found"), as opposed to a route the server lacks."""


class RouteMissing(NotFound):
    """The server has no such route: its router's 404 ("The requested path could not be
    found"), a 405, or a 404 that is not NICo's at all."""


class TaskNotOnSite(NicoError):
    """``GET /task/{id}`` answered Flow's "sql: no rows in result set" (a 500): this site's Flow
    has no such task. NICo never answers 404 for a missing task. Not retried at once (the site
    agent already tried twice); the caller decides how often to ask again."""


class TaskNotCancellable(NicoError):
    """Cancel refused because the task already succeeded or failed (Flow's plain error, a 500)."""


class BadRequest(NicoError):
    """400: NICo rejected the request (missing ``siteId``, bad pagination, unknown site)."""


class FlowDisabled(NicoError):
    """412: the site has no NICo Flow, so it serves no racks, trays or tasks."""


class RateLimited(NicoError):
    """429: NICo's limiter (10 req/s per client IP, burst 30, no ``Retry-After``)."""

    retryable = True


class ServerError(NicoError):
    """5xx: a workflow failed or timed out on the site (50 s cap), or the server broke."""

    retryable = True


RETRYABLE_PAYLOAD_REASONS = frozenset({"truncated_json", "empty_body"})


class BadPayload(NicoError):
    """The response could not be used: not JSON, truncated, or missing a required field.

    Attributes:
        reason: a short stable label for ``nico_exporter_parse_errors_total{reason}``.
        field: the offending field path, when one is known.
    """

    def __init__(
        self,
        message: str,
        *,
        endpoint: str = "",
        reason: str = "invalid_json",
        field: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message, endpoint=endpoint, status=status)
        self.reason = reason
        self.field = field
        # A body cut short in transit may arrive whole next time; a malformed one will not.
        self.retryable = reason in RETRYABLE_PAYLOAD_REASONS


class DeadlineExceeded(NicoError):
    """The caller's deadline ran out inside the exporter, before the call went out.

    ``cause``: ``queue`` (waiting for a connection slot), ``budget`` (waiting for a request token)
    or ``deadline`` (no time was left). The exporter's own limit, never NICo's failure.
    """

    def __init__(self, message: str, *, endpoint: str = "", cause: str = "deadline") -> None:
        super().__init__(message, endpoint=endpoint)
        self.cause = cause


class SiteUnavailable(NicoError):
    """Not sent: the site's circuit breaker is open (it stopped answering, or NICo's site list
    says it is offline), so its calls fail at once until a probe gets an answer."""


class AuthError(NicoError):
    """Credentials could not be obtained (token file unreadable, login refused)."""


class CredentialsRefused(AuthError):
    """Not sent: the credentials were refused (by NICo or the identity provider) and the next try
    is not due yet (an exponential back-off, so a bad secret costs a login now and then, not one
    per call)."""


# Who failed: NICo (the site or the REST server did not answer as it should) or the exporter
# itself (its own budget, queue or deadline, its credentials, a request NICo refuses).
NICO = "nico"
EXPORTER = "exporter"


def blame(exc: BaseException) -> tuple[str, str]:
    """(who failed, cause) for a failed call: ``nico`` or ``exporter``, and a short stable cause
    for the metrics (``nico_exporter_self_failures_total``, ``nico_exporter_site_failures_total``)."""
    if isinstance(exc, DeadlineExceeded):
        return EXPORTER, exc.cause
    if isinstance(exc, AuthError | Unauthorized):
        return EXPORTER, "credentials"
    if isinstance(exc, Forbidden):
        return EXPORTER, "forbidden"
    if isinstance(exc, BadRequest | FlowDisabled):
        return EXPORTER, "rejected"
    if isinstance(exc, RateLimited):
        return EXPORTER, "throttled"
    if isinstance(exc, SiteUnavailable):
        return NICO, "unavailable"
    if isinstance(exc, TransportError):
        return NICO, exc.kind
    if isinstance(exc, BadPayload):
        return NICO, "bad_payload"
    if isinstance(exc, NotFound):
        return NICO, "not_found"
    if isinstance(exc, NicoError) and exc.status is not None and exc.status >= 500:
        return NICO, "server_error"
    return NICO, "error"
