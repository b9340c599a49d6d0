"""NGC API keys: nicocli's ``auth.api_key`` (``NICO_API_KEY``, ``NICO_AUTHN_URL``).

As nicocli does (``rest-api/cli/pkg/auth.go:125-131`` and ``:263-313``): a key that starts with
``nvapi-`` (an NGC Personal or Service key) is itself the bearer token and is sent as it is; a
legacy key is exchanged for a token with ``GET <authn_url>``, headers ``Authorization: ApiKey
<key>`` and ``Accept: application/json``, and the token is the response's ``token``, else its
``access_token`` (``auth.go:365-377``). The exporter exchanges again before the token expires (its
``expires_in``, else its JWT ``exp``) and after NICo answers 401.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from exporter import logs
from exporter.auth import RenewedToken, refusal_text
from exporter.errors import AuthError, TransportError

BEARER_PREFIX = "nvapi-"
ENDPOINT = "api_key authn_url"


def is_bearer_key(key: str) -> bool:
    """An NGC Personal or Service key, sent as the bearer token without an exchange."""
    return key.startswith(BEARER_PREFIX)


class NgcApiKey(RenewedToken):
    """The token for an NGC API key: the key itself, or what ``authn_url`` exchanges it for.

    Args:
        key: the NGC API key.
        authn_url: where a legacy key is exchanged (unused for ``nvapi-`` keys).
        verify, timeout, transport: for the exchange request (a transport handed in is shared, so
            it must tolerate being closed with each short-lived client).
        clock: monotonic seconds; wall: Unix seconds (a JWT's ``exp``).
    """

    def __init__(
        self,
        key: str,
        authn_url: str | None = None,
        *,
        verify: bool | ssl.SSLContext = True,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        key = key.strip()
        if not key:
            raise AuthError("api.api_key.key is empty")
        if not is_bearer_key(key) and not authn_url:
            raise AuthError("api.api_key.authn_url is required for a legacy NGC key (one without nvapi-)")
        super().__init__(clock, wall)
        self._key = key
        self.authn_url = authn_url
        self._verify = verify
        self._timeout = timeout
        self._transport = transport
        logs.register_secret(key)

    def __repr__(self) -> str:
        kind = "nvapi" if is_bearer_key(self._key) else "legacy"
        return f"NgcApiKey({kind}, key=<redacted>)"

    async def token(self, http: httpx.AsyncClient) -> str | None:
        if is_bearer_key(self._key):
            return self._key
        return await super().token(http)

    async def _fetch(self) -> tuple[str, object]:
        assert self.authn_url is not None  # checked in __init__ for legacy keys
        host = urlsplit(self.authn_url).netloc
        try:
            async with httpx.AsyncClient(
                verify=self._verify, timeout=self._timeout, transport=self._transport
            ) as client:
                resp = await client.get(
                    self.authn_url,
                    headers={"Authorization": f"ApiKey {self._key}", "Accept": "application/json"},
                )
        except httpx.TimeoutException:
            raise TransportError(
                f"NGC key exchange at {host} timed out", endpoint=ENDPOINT, kind="timeout"
            ) from None
        except httpx.HTTPError as exc:
            raise TransportError(
                f"NGC key exchange at {host} failed: {type(exc).__name__}", endpoint=ENDPOINT
            ) from None
        if resp.status_code != 200:
            raise AuthError(
                f"NGC key exchange refused by {host} (HTTP {resp.status_code}): "
                f"{refusal_text(resp, self._key)}",
                endpoint=ENDPOINT,
                status=resp.status_code,
            )
        try:
            body: Any = json.loads(resp.content)
        except ValueError:
            body = None
        token = _token_of(body)
        if token is None:
            raise AuthError(f"NGC key exchange at {host}: the response has no token", endpoint=ENDPOINT)
        return token, body.get("expires_in")


def _token_of(body: Any) -> str | None:
    """``token``, else ``access_token``, of the exchange's JSON answer (auth.go:365-377)."""
    if not isinstance(body, dict):
        return None
    for key in ("token", "access_token"):
        value = body.get(key)
        if isinstance(value, str) and value.strip() and not any(c.isspace() for c in value.strip()):
            return value.strip()
    return None
