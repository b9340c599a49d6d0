"""Who may call and how often: bearer tokens and who issues them, Echo's rate limiter.

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# NICo's 401 messages for a bearer token (release/v2.0 rest-api/auth/pkg/processors/keycloak.go:36-41,
# :62-66; the same texts in kas.go:45-50 and custom.go:53-58).
INVALID_TOKEN = "Invalid authorization token in request"  # noqa: S105 - a message
EXPIRED_TOKEN = "Authorization token in request has expired"  # noqa: S105 - a message
SERVICE_ACCOUNTS_DISABLED = "Service accounts are not enabled"

KEYCLOAK_ISSUER = "https://keycloak.nico.svc.cluster.local/realms/nico"
NGC_ISSUER = "https://authn.nvidia.com"
# NGC Personal and Service keys are bearer tokens themselves (rest-api/cli/pkg/auth.go:125-131).
NGC_BEARER_PREFIX = "nvapi-"

# The identity provider's accounts when none are given: a user for the password grant, a public
# client (no secret) for it, and two NGC keys, one legacy (exchanged) and one nvapi- (a bearer).
DEFAULT_USERS = {"operator@example.com": "sim-password"}
DEFAULT_PUBLIC_CLIENTS = ("nico-cli",)
DEFAULT_API_KEYS = ("sim-ngc-key", "nvapi-sim-key")

# How long an expired token is still known as "expired" rather than "invalid" (real time).
EXPIRED_MEMORY_S = 3600.0


@dataclass(frozen=True)
class IssuedTokens:
    """What a grant issued: NICo's ``APITokenResponse`` (``/auth/login``, ``/auth/refresh``) or
    an OAuth 2.0 token response (the Keycloak token endpoint, the NGC key exchange)."""

    access_token: str
    refresh_token: str | None
    expires_in: int
    refresh_expires_in: int = 0

    def as_json(self) -> dict[str, object]:
        """NICo's ``APITokenResponse`` (``auth/pkg/api/model/keycloak.go``)."""
        return {
            "accessToken": self.access_token,
            "refreshToken": self.refresh_token or "",
            "expiresIn": self.expires_in,
            "tokenType": "Bearer",
        }

    def as_oauth_json(self) -> dict[str, object]:
        """Keycloak's ``AccessTokenResponse``: no ``refresh_token`` key when none was issued."""
        body: dict[str, object] = {
            "access_token": self.access_token,
            "expires_in": self.expires_in,
            "refresh_expires_in": self.refresh_expires_in,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "scope": "openid profile email",
        }
        if self.refresh_token is not None:
            body["refresh_token"] = self.refresh_token
        return body


@dataclass(frozen=True)
class _Issued:
    expiry: float  # monotonic
    client_id: str  # the OAuth client ("" for an NGC exchange)
    service_account: bool  # a client-credentials token: it carries ``client_id``


@dataclass(frozen=True)
class RefreshGrant:
    """A live refresh token: who it was issued to."""

    expiry: float
    client_id: str
    user: str | None  # None: a service account


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenStore:
    """NICo's token check and the identity providers that issue what it accepts.

    NICo accepts a static token, an ``nvapi-`` key it knows (standing in for NGC's gateway, which
    forwards such keys to NICo as its own tokens), and any access token issued here that has not
    expired: by ``POST /auth/login`` and ``/auth/refresh`` (NICo's Keycloak mode), by the Keycloak
    token endpoint (client credentials, password and refresh grants) or by the NGC key exchange
    (:mod:`.idp`). Issued access tokens are JWT-shaped (``header.claims.signature`` with ``exp``)
    because real ones are; the signature is random and never checked.
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
        users: Mapping[str, str] | None = None,
        public_clients: Iterable[str] = DEFAULT_PUBLIC_CLIENTS,
        api_keys: Iterable[str] = DEFAULT_API_KEYS,
    ) -> None:
        self._static = set(static_tokens)
        self._credentials = dict(client_credentials)
        self._public = set(public_clients)
        self._users = dict(DEFAULT_USERS if users is None else users)
        self._api_keys = set(api_keys)
        # keycloak.serviceAccount (api/internal/config/config.go:127, :253); no credentials at
        # all is the same as disabled, as before.
        self.service_accounts_enabled = service_accounts and bool(self._credentials)
        self._org = org
        self.token_ttl_s = token_ttl_s
        self.refresh_ttl_s = refresh_ttl_s
        self._monotonic = monotonic
        self._wall = wall
        self._access: dict[str, _Issued] = {}
        self._refresh: dict[str, RefreshGrant] = {}

    # --- NICo's side -----------------------------------------------------------------------------

    def check(self, token: str) -> str | None:
        """NICo's 401 message for a bearer ``token``, or None when it is accepted."""
        if token in self._static or (token.startswith(NGC_BEARER_PREFIX) and token in self._api_keys):
            return None
        issued = self._access.get(token)
        if issued is None:
            return INVALID_TOKEN
        if self._monotonic() >= issued.expiry:
            return EXPIRED_TOKEN
        if issued.service_account and not self.service_accounts_enabled:
            # keycloak.go:62-66: a token with client_id is a service account's.
            return SERVICE_ACCOUNTS_DISABLED
        return None

    def valid(self, token: str) -> bool:
        """True when NICo accepts ``token`` (:meth:`check`)."""
        return self.check(token) is None

    def login(self, client_id: str, client_secret: str) -> IssuedTokens | None:
        """NICo's ``/auth/login`` client-credentials grant; None when the credentials are wrong."""
        if not self.client_secret_ok(client_id, client_secret):
            return None
        return self.issue(client_id, refresh=True)

    def refresh(self, refresh_token: str) -> IssuedTokens | None:
        """NICo's ``/auth/refresh``: new tokens for a live refresh token; None if unknown or expired."""
        grant = self._refresh.get(refresh_token)
        if grant is None:
            return None
        if self._monotonic() >= grant.expiry:
            del self._refresh[refresh_token]
            return None
        return self.issue(grant.client_id, user=grant.user, refresh=True)

    # --- the identity providers' accounts -----------------------------------------------------------

    def client_kind(self, client_id: str) -> str:
        """``confidential`` (a secret), ``public`` (none) or ``unknown``."""
        if client_id in self._credentials:
            return "confidential"
        return "public" if client_id in self._public else "unknown"

    def client_secret_ok(self, client_id: str, client_secret: str) -> bool:
        expected = self._credentials.get(client_id)
        return expected is not None and secrets.compare_digest(expected, client_secret)

    def user_ok(self, username: str, password: str) -> bool:
        expected = self._users.get(username)
        return expected is not None and secrets.compare_digest(expected, password)

    def add_user(self, username: str, password: str) -> None:
        self._users[username] = password

    def add_client(self, client_id: str, client_secret: str | None) -> None:
        """A confidential client (with a secret) or a public one (``None``)."""
        if client_secret is None:
            self._public.add(client_id)
        else:
            self._credentials[client_id] = client_secret

    def add_api_key(self, key: str) -> None:
        self._api_keys.add(key)

    def use_refresh(self, refresh_token: str, client_id: str) -> tuple[str, RefreshGrant | None]:
        """Look a refresh token up for ``client_id``: ``ok``, ``unknown``, ``expired`` or ``client``
        (issued to another client)."""
        grant = self._refresh.get(refresh_token)
        if grant is None:
            return "unknown", None
        if self._monotonic() >= grant.expiry:
            return "expired", grant
        if grant.client_id != client_id:
            return "client", grant
        return "ok", grant

    def exchange_api_key(self, key: str) -> IssuedTokens | None:
        """The NGC exchange of a legacy key it knows for a token (``None``: unknown key)."""
        if key.startswith(NGC_BEARER_PREFIX) or key not in self._api_keys:
            return None
        return self.issue("", user=f"ngc-{secrets.token_hex(4)}", refresh=False, issuer=NGC_ISSUER)

    # --- revocation ---------------------------------------------------------------------------------

    def revoke_all(self) -> None:
        """Forget every issued token (static ones stay): simulates a Keycloak key rotation."""
        self._access.clear()
        self._refresh.clear()

    def revoke_client(self, client_id: str) -> bool:
        """Delete a client from Keycloak: its credentials and every token issued to it go (its next
        login is 401 "Failed to authenticate using client credentials"). False if unknown."""
        known = (
            client_id in self._credentials
            or client_id in self._public
            or any(issued.client_id == client_id for issued in self._access.values())
        )
        self._credentials.pop(client_id, None)
        self._public.discard(client_id)
        for token in [t for t, issued in self._access.items() if issued.client_id == client_id]:
            del self._access[token]
        for token in [t for t, grant in self._refresh.items() if grant.client_id == client_id]:
            del self._refresh[token]
        return known

    def revoke_token(self, token: str) -> bool:
        """Invalidate one token, static or issued (then 401 "Invalid authorization token in
        request"). False if the store does not know it."""
        known = token in self._static or token in self._access or token in self._api_keys
        self._static.discard(token)
        self._api_keys.discard(token)
        self._access.pop(token, None)
        return known

    # --- issuing ------------------------------------------------------------------------------------

    def issue(
        self,
        client_id: str,
        *,
        user: str | None = None,
        refresh: bool,
        issuer: str = KEYCLOAK_ISSUER,
    ) -> IssuedTokens:
        """An access token for ``client_id`` (a service account's unless ``user`` is given), and a
        refresh token when ``refresh``."""
        now = self._monotonic()
        self._forget_old(now)
        issued_at = int(self._wall())
        service_account = user is None
        subject = f"service-account-{client_id}" if service_account else str(user)
        claims: dict[str, object] = {
            "iss": issuer,
            "sub": subject,
            "iat": issued_at,
            "exp": issued_at + math.ceil(self.token_ttl_s),
            "jti": secrets.token_hex(8),
            "preferred_username": subject,
            "org": self._org,
            "roles": ["PROVIDER_ADMIN", "TENANT_ADMIN"],
        }
        if client_id:
            claims["azp"] = client_id
        if service_account:
            claims["client_id"] = client_id  # NICo's mark of a service account (claim/keycloak.go:26)
        elif "@" in subject:
            claims["email"] = subject
        header = _b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        access = f"{header}.{payload}.{_b64(secrets.token_bytes(32))}"
        self._access[access] = _Issued(now + self.token_ttl_s, client_id, service_account)
        refresh_token: str | None = None
        if refresh:
            refresh_token = secrets.token_urlsafe(32)
            self._refresh[refresh_token] = RefreshGrant(now + self.refresh_ttl_s, client_id, user)
        return IssuedTokens(
            access,
            refresh_token,
            math.ceil(self.token_ttl_s),
            math.ceil(self.refresh_ttl_s) if refresh else 0,
        )

    def _forget_old(self, now: float) -> None:
        """Drop tokens long expired (an old one is then "invalid", as a rotated key makes it)."""
        for token in [t for t, issued in self._access.items() if issued.expiry + EXPIRED_MEMORY_S < now]:
            del self._access[token]
        for token in [t for t, grant in self._refresh.items() if grant.expiry + EXPIRED_MEMORY_S < now]:
            del self._refresh[token]


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
