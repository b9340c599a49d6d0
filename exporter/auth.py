"""Bearer-token sources for the NICo API: the protocol, and the sources NICo itself defines.

Here: no token, a static token, a token file, and NICo's own login (``POST /auth/login``), plus
what every source shares: when to fetch a new token before the old one expires
(:func:`refresh_after`, :func:`jwt_lifetime`) and how to describe a refusal without quoting a
credential (:func:`refusal_text`). The sources nicocli adds live in their own modules:
:mod:`exporter.tokencommand`, :mod:`exporter.oidc` and :mod:`exporter.ngc`.

The token is a credential: it is kept in one attribute, sent only in the ``Authorization``
header, and never formatted into a log line, an exception, a metric or a span. ``repr()`` of
every class here hides it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import httpx
from pydantic import ValidationError

from exporter import logs
from exporter.errors import AuthError, TransportError
from exporter.models import APIError, LoginResponse


def refresh_after(lifetime_s: float) -> float:
    """Seconds after a token was issued to fetch the next one: at 80 % of its lifetime, and at
    least 30 s before it ends, but never before half of it (a 40 s token is renewed after 20 s)."""
    lifetime = max(lifetime_s, 1.0)
    return min(lifetime * 0.8, max(lifetime - 30.0, lifetime * 0.5))


def jwt_lifetime(token: str, now: float) -> float | None:
    """Seconds from ``now`` (Unix time) until the ``exp`` claim of ``token`` if it is a JWT.

    The claims are read, not verified: the exporter only schedules its next fetch with them, NICo
    checks the signature. ``None`` for an opaque token or a JWT without a numeric ``exp``.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        return None
    return float(exp) - now


def renew_at(token: str, expires_in: object, now: float, wall: float) -> float:
    """When, on the ``now`` clock, to fetch the token after ``token``: at :func:`refresh_after` of
    its lifetime, which is ``expires_in`` when the issuer said it (seconds), else the JWT's ``exp``
    (``wall``: Unix time now); never (infinity) for an opaque token without ``expires_in``: it is
    kept until NICo refuses it."""
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        lifetime: float | None = float(expires_in)
    else:
        lifetime = jwt_lifetime(token, wall)
    return float("inf") if lifetime is None else now + refresh_after(max(lifetime, 0.0))


class RenewedToken:
    """A token fetched when needed and kept until :func:`renew_at` says to renew it, or NICo
    refuses it; one fetch at a time. Subclasses say how to fetch one (:meth:`_fetch`)."""

    def __init__(self, clock: Callable[[], float], wall: Callable[[], float]) -> None:
        self._clock = clock
        self._wall = wall
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    def _fresh(self) -> bool:
        return self._token is not None and self._clock() < self._renew_at

    async def token(self, http: httpx.AsyncClient) -> str | None:
        if self._fresh():
            return self._token
        async with self._lock:
            if self._fresh():
                return self._token
            token, expires_in = await self._fetch()
            self._renew_at = renew_at(token, expires_in, self._clock(), self._wall())
            self._token = token
            return token

    def invalidate(self, token: str | None) -> None:
        if token is not None and token == self._token:
            self._token = None
            self._renew_at = 0.0

    async def _fetch(self) -> tuple[str, object]:
        """A new token, and the issuer's ``expires_in`` for it (``None``: it said nothing)."""
        raise NotImplementedError


def refusal_text(resp: httpx.Response, *secrets: str) -> str:
    """What an identity provider said when it refused, in at most 200 characters and without any
    of ``secrets`` (a server may echo a key back): an OAuth ``error_description`` or ``error``,
    NICo's ``message``, or the start of a short text body."""
    text = ""
    try:
        body = json.loads(resp.content)
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("error_description", "message", "error"):
            if isinstance(body.get(key), str) and body[key].strip():
                text = body[key]
                break
    elif body is None and resp.content and len(resp.content) <= 1000:
        text = resp.content.decode("utf-8", errors="replace")
    text = " ".join(text.split())
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return logs.redact(text)[:200] or "(no description)"


class TokenSource(Protocol):
    """Where the client gets its bearer token from."""

    async def token(self, http: httpx.AsyncClient) -> str | None:
        """The token to send now, or ``None`` to send no ``Authorization`` header."""

    def invalidate(self, token: str | None) -> None:
        """The server answered 401 to ``token``: do not hand it out again without a fresh look."""

    # Optional: ``version() -> object``, something that changes when the credential may have (a
    # token file's inode, size and mtime); a refused credential whose version changed is tried
    # again at once (exporter.credentials).


class NoToken:
    """Send no credentials (a simulator started without auth)."""

    async def token(self, http: httpx.AsyncClient) -> str | None:
        return None

    def invalidate(self, token: str | None) -> None:
        return None


class StaticToken:
    """A fixed token, e.g. from ``NICO_TOKEN``; a 401 cannot be cured by re-reading it."""

    def __init__(self, token: str) -> None:
        token = token.strip()
        if not token:
            raise AuthError("the API token is empty")
        self._token = token

    def __repr__(self) -> str:
        return "StaticToken(<redacted>)"

    async def token(self, http: httpx.AsyncClient) -> str | None:
        return self._token

    def invalidate(self, token: str | None) -> None:
        return None


class TokenFile:
    """A token kept in a file that something else rotates (a Kubernetes projected secret).

    The file is re-read when its inode, size or mtime changes (one ``stat`` per request, no
    read) and after a 401, so a rotated token is picked up without a restart.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._token: str | None = None
        self._signature: tuple[int, int, int] | None = None

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r})"

    def _read(self) -> str:
        try:
            st = self.path.stat()
            signature = (st.st_ino, st.st_size, st.st_mtime_ns)
            if self._token is not None and signature == self._signature:
                return self._token
            text = self.path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AuthError(f"cannot read token file {self.path}: {exc.strerror or exc}") from None
        if not text:
            raise AuthError(f"token file {self.path} is empty")
        self._token, self._signature = text, signature
        return text

    async def token(self, http: httpx.AsyncClient) -> str | None:
        return self._read()

    def version(self) -> object:
        """The file's signature (inode, size, mtime), or None while it cannot be read."""
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def invalidate(self, token: str | None) -> None:
        # Forget the signature so the next request reads the file again even if its stat
        # looks unchanged (some volume drivers keep mtime across atomic swaps).
        self._signature = None
        self._token = None


class ClientCredentials:
    """NICo's built-in Keycloak login: ``POST /auth/login {clientId, clientSecret}``.

    The access token is refreshed with ``POST /auth/refresh {refreshToken}`` before it expires
    (at 80 % of ``expiresIn``, and at least 30 s early); if the refresh is refused the client
    logs in again. One login or refresh runs at a time, however many requests wait for it.
    """

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_request: Callable[[str, int | None, float], None] | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not client_id or not client_secret:
            raise AuthError("client_id and client_secret must both be set")
        self._base = base_url.rstrip("/")
        self._client_id = client_id
        self._secret = client_secret
        self._clock = clock
        self.on_request = on_request
        self._timeout = timeout
        self._access: str | None = None
        self._refresh: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"ClientCredentials(client_id={self._client_id!r}, secret=<redacted>)"

    async def token(self, http: httpx.AsyncClient) -> str | None:
        if self._access is not None and self._clock() < self._refresh_at:
            return self._access
        async with self._lock:
            now = self._clock()
            if self._access is not None and now < self._refresh_at:
                return self._access
            if self._refresh is not None:
                try:
                    await self._call(http, "/auth/refresh", {"refreshToken": self._refresh})
                    return self._access
                except AuthError:
                    # A refused refresh token is normal after a long outage: log in afresh.
                    self._refresh = None
            await self._call(http, "/auth/login", {"clientId": self._client_id, "clientSecret": self._secret})
            return self._access

    def invalidate(self, token: str | None) -> None:
        if token is not None and token == self._access:
            self._access = None
            self._refresh_at = 0.0

    async def _call(self, http: httpx.AsyncClient, path: str, body: dict[str, str]) -> None:
        started = time.perf_counter()
        status: int | None = None
        try:
            resp = await http.post(self._base + path, json=body, timeout=self._timeout)
            status = resp.status_code
        except httpx.TimeoutException:
            raise TransportError(f"POST {path} timed out", endpoint=path, kind="timeout") from None
        except httpx.HTTPError as exc:
            raise TransportError(f"POST {path} failed: {type(exc).__name__}", endpoint=path) from None
        finally:
            if self.on_request is not None:
                self.on_request(path, status, time.perf_counter() - started)
        if resp.status_code != 200:
            raise AuthError(
                f"{path} refused with HTTP {resp.status_code}: {_server_message(resp)}",
                endpoint=path,
                status=resp.status_code,
            )
        try:
            parsed = LoginResponse.model_validate_json(resp.content)
        except ValidationError:
            raise AuthError(f"{path} returned an unreadable token response", endpoint=path) from None
        now = self._clock()
        self._access = parsed.access_token
        self._refresh = parsed.refresh_token or self._refresh
        self._refresh_at = now + refresh_after(parsed.expires_in)


def _server_message(resp: httpx.Response) -> str:
    try:
        return APIError.model_validate_json(resp.content).message[:200] or "(no message)"
    except ValidationError:
        return "(no NICo error body)"
