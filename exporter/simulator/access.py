"""Who may call and how often: bearer tokens, the Keycloak-style login, Echo's rate limiter.

All expiry and refill runs on a monotonic *real* clock (injectable), not simulated time: a
token issued during an accelerated demo still lives ``token_ttl_s`` real seconds, as a client's
refresh logic expects.
"""

from __future__ import annotations

import base64
import json
import math
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class IssuedTokens:
    """``APITokenResponse`` of ``POST /auth/login`` and ``/auth/refresh``."""

    access_token: str
    refresh_token: str
    expires_in: int

    def as_json(self) -> dict[str, object]:
        return {
            "accessToken": self.access_token,
            "refreshToken": self.refresh_token,
            "expiresIn": self.expires_in,
            "tokenType": "Bearer",
        }


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenStore:
    """Static tokens plus tokens issued by login/refresh, each with a real-time expiry.

    Issued access tokens are JWT-shaped (``header.claims.signature`` with ``exp``) because real
    ones are Keycloak JWTs and a client may read ``exp``; the signature is random and never checked.
    """

    def __init__(
        self,
        *,
        static_tokens: Iterable[str],
        client_credentials: dict[str, str],
        org: str,
        token_ttl_s: float,
        refresh_ttl_s: float,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        service_accounts: bool = True,
    ) -> None:
        self._static = set(static_tokens)
        self._credentials = dict(client_credentials)
        # keycloak.serviceAccount (api/internal/config/config.go:127, :253); no credentials at
        # all is the same as disabled, as before.
        self.service_accounts_enabled = service_accounts and bool(self._credentials)
        self._org = org
        self.token_ttl_s = token_ttl_s
        self.refresh_ttl_s = refresh_ttl_s
        self._monotonic = monotonic
        self._wall = wall
        self._access: dict[str, float] = {}  # token -> monotonic expiry
        self._access_client: dict[str, str] = {}  # token -> the client it was issued to
        self._refresh: dict[str, tuple[float, str]] = {}  # token -> (monotonic expiry, client id)

    def valid(self, token: str) -> bool:
        """True for a static token or an issued one that has not expired."""
        if token in self._static:
            return True
        expiry = self._access.get(token)
        if expiry is None:
            return False
        if self._monotonic() >= expiry:
            del self._access[token]
            self._access_client.pop(token, None)
            return False
        return True

    def login(self, client_id: str, client_secret: str) -> IssuedTokens | None:
        """Client-credentials grant; None when the credentials are wrong."""
        expected = self._credentials.get(client_id)
        if expected is None or not secrets.compare_digest(expected, client_secret):
            return None
        return self._issue(client_id)

    def refresh(self, refresh_token: str) -> IssuedTokens | None:
        """New tokens for a live refresh token; None if unknown or expired."""
        entry = self._refresh.get(refresh_token)
        if entry is None:
            return None
        expiry, client_id = entry
        if self._monotonic() >= expiry:
            del self._refresh[refresh_token]
            return None
        return self._issue(client_id)

    def revoke_all(self) -> None:
        """Forget every issued token (static ones stay): simulates a Keycloak key rotation."""
        self._access.clear()
        self._access_client.clear()
        self._refresh.clear()

    def revoke_client(self, client_id: str) -> bool:
        """Delete a client from Keycloak: its credentials and every token issued to it go (its next
        login is 401 "Failed to authenticate using client credentials"). False if unknown."""
        known = client_id in self._credentials or client_id in self._access_client.values()
        self._credentials.pop(client_id, None)
        for token in [t for t, owner in self._access_client.items() if owner == client_id]:
            self._access.pop(token, None)
            del self._access_client[token]
        for token in [t for t, (_expiry, owner) in self._refresh.items() if owner == client_id]:
            del self._refresh[token]
        return known

    def revoke_token(self, token: str) -> bool:
        """Invalidate one token, static or issued (then 401 "Invalid authorization token in
        request"). False if the store does not know it."""
        known = token in self._static or token in self._access
        self._static.discard(token)
        self._access.pop(token, None)
        self._access_client.pop(token, None)
        return known

    def _issue(self, client_id: str) -> IssuedTokens:
        now = self._monotonic()
        issued_at = int(self._wall())
        claims = {
            "iss": "https://keycloak.nico.svc.cluster.local/realms/nico",
            "sub": client_id,
            "azp": client_id,
            "iat": issued_at,
            "exp": issued_at + math.ceil(self.token_ttl_s),
            "jti": secrets.token_hex(8),
            "org": self._org,
            "roles": ["PROVIDER_ADMIN", "TENANT_ADMIN"],
        }
        header = _b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        access = f"{header}.{payload}.{_b64(secrets.token_bytes(32))}"
        refresh = secrets.token_urlsafe(32)
        self._access[access] = now + self.token_ttl_s
        self._access_client[access] = client_id
        self._refresh[refresh] = (now + self.refresh_ttl_s, client_id)
        return IssuedTokens(access, refresh, math.ceil(self.token_ttl_s))


@dataclass
class AccessSwitches:
    """Server-side auth settings a deployment can lack, switched at runtime (``PUT /_sim/auth``).

    Attributes:
        keycloak: the ``/auth`` routes are registered (``api/internal/server/server.go:273-284``
            registers them only with a Keycloak config; without, they are Echo's 404).
        provider_admin: the caller holds ``PROVIDER_ADMIN`` in the org (else the Flow handlers'
            403 "User does not have Provider Admin role with org").
        infrastructure_provider: the org has an Infrastructure Provider (else their 400 "Failed to
            retrieve Infrastructure Provider for org").
    """

    keycloak: bool = True
    provider_admin: bool = True
    infrastructure_provider: bool = True


# The JSON keys of PUT /_sim/auth: key -> AccessSwitches field (serviceAccounts is the TokenStore's).
AUTH_KEYS = {
    "keycloak": "keycloak",
    "providerAdmin": "provider_admin",
    "infrastructureProvider": "infrastructure_provider",
}


def auth_json(switches: AccessSwitches, tokens: TokenStore) -> dict[str, Any]:
    return {
        "keycloak": switches.keycloak,
        "serviceAccounts": tokens.service_accounts_enabled,
        "providerAdmin": switches.provider_admin,
        "infrastructureProvider": switches.infrastructure_provider,
    }


class RateLimiter:
    """Echo's ``RateLimiterMemoryStore``: a token bucket per client IP (``golang.org/x/time/rate``).

    Visitors idle for ``expires_s`` are forgotten, as Echo's store does.
    """

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        expires_s: float = 180.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.expires_s = expires_s
        self._monotonic = monotonic
        self._buckets: dict[str, tuple[float, float]] = {}  # ip -> (tokens, last seen)
        self._last_sweep = monotonic()

    def allow(self, identifier: str) -> bool:
        """Take one token for ``identifier``; False when its bucket is empty."""
        now = self._monotonic()
        self._sweep(now)
        tokens, last = self._buckets.get(identifier, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[identifier] = (tokens, now)
        return allowed

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < self.expires_s:
            return
        self._last_sweep = now
        for ip, (_tokens, last) in list(self._buckets.items()):
            if now - last > self.expires_s:
                del self._buckets[ip]
