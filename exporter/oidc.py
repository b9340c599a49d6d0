"""Tokens from an OpenID Connect token endpoint: nicocli's ``auth.oidc`` (Keycloak or any issuer
NICo trusts, ``rest-api/auth/pkg/processors/{keycloak,custom}.go``).

The grants are nicocli's (``rest-api/cli/pkg/auth.go:229-261`` and ``:457-520``): a refresh token
first when one is held, else the client-credentials grant (no username, a client secret), else the
password grant (username and password); the client authenticates with ``client_id`` and
``client_secret`` in the form body, and ``scope=openid`` is asked for on the first two grants.
Keycloak returns no refresh token for client credentials (its ``ClientCredentialsGrantType``
issues one only when the client enables ``use.refresh.tokens.for.client.credentials.grant``), so
such a source asks for a new token each time; a password grant's refresh token is used until the
issuer refuses it, then the password grant runs again.

The protocol work is authlib's (``AsyncOAuth2Client``, an httpx client): the request encoding, the
client authentication methods and the token-response parsing of RFC 6749 are a well-kept
library's, not hand-written here. What stays here is the exporter's policy: when to renew (before
``expires_in`` or the JWT's ``exp`` runs out), one fetch at a time, and refusals as
:class:`~exporter.errors.AuthError` with the HTTP status (a 4xx is refused credentials, a 5xx an
issuer that is down: :mod:`exporter.credentials` backs them off differently).
"""

from __future__ import annotations

import ssl
import time
import warnings
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from exporter import logs
from exporter.auth import RenewedToken
from exporter.errors import AuthError, TransportError

ENDPOINT = "oidc token_url"


def _authlib() -> tuple[Any, type[Exception]]:
    """authlib's ``AsyncOAuth2Client`` and ``OAuthError``, imported on first use (only OIDC
    sources need them).

    authlib 1.9 warns on import that it prefers the ``httpx2`` package to ``httpx``; the exporter's
    HTTP stack is httpx, so that one warning is silenced here and nowhere else.
    """
    from authlib.deprecate import AuthlibDeprecationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AuthlibDeprecationWarning)
        from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
    return AsyncOAuth2Client, OAuthError


class OidcToken(RenewedToken):
    """Access tokens from ``token_url`` for ``client_id``, renewed before they expire.

    Args:
        token_url: the issuer's token endpoint (Keycloak:
            ``<base>/realms/<realm>/protocol/openid-connect/token``).
        client_id, client_secret: the OAuth client (no secret: a public client).
        username, password: the password grant's resource owner (both or neither).
        refresh_token: a refresh token to start with (``nicocli login`` leaves one in its config).
        scope: asked for on the client-credentials and password grants, as nicocli does.
        verify: TLS verification for the token endpoint.
        timeout: seconds per token request.
        transport: an httpx transport (tests: the simulator in-process); shared, so it must
            tolerate being closed with each short-lived client (ASGI and mock transports do).
        clock: monotonic seconds; wall: Unix seconds (a JWT's ``exp``).
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        *,
        client_secret: str | None = None,
        username: str | None = None,
        password: str | None = None,
        refresh_token: str | None = None,
        scope: str = "openid",
        verify: bool | ssl.SSLContext = True,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not client_id:
            raise AuthError("api.oidc.client_id is empty")
        if (username is None) != (password is None):
            raise AuthError("api.oidc.username and api.oidc.password go together (the password grant)")
        if username is None and not client_secret and not refresh_token:
            raise AuthError("api.oidc needs a client_secret, a username and password, or a refresh_token")
        self.token_url = token_url
        super().__init__(clock, wall)
        self._host = urlsplit(token_url).netloc
        self._client_id = client_id
        self._secret = client_secret or None
        self._username = username
        self._password = password
        self._refresh: str | None = refresh_token or None
        self._scope = scope
        self._verify = verify
        self._timeout = timeout
        self._transport = transport
        # The configured secrets join the log redaction filter; the tokens fetched with them do
        # not (they rotate, and the filter would grow with each): no code path formats them.
        for secret in (client_secret, password, refresh_token):
            logs.register_secret(secret)

    def __repr__(self) -> str:
        return f"OidcToken({self.token_url!r}, client_id={self._client_id!r}, secrets=<redacted>)"

    @property
    def grant(self) -> str:
        """The grant that gets a token when no refresh token is held."""
        if self._username is not None:
            return "password"
        return "client_credentials" if self._secret else "refresh_token"

    async def _fetch(self) -> tuple[str, object]:
        if self._refresh is not None:
            try:
                return await self._grant("refresh_token")
            except AuthError as exc:
                # An expired or revoked refresh token is normal after a long outage: the
                # configured grant runs again. Without one, the refusal stands.
                if self.grant == "refresh_token" or exc.status is None or exc.status >= 500:
                    raise
                self._refresh = None
        return await self._grant(self.grant)

    async def _grant(self, grant: str) -> tuple[str, object]:
        statuses: list[int] = []

        async def status(response: httpx.Response) -> None:
            statuses.append(response.status_code)

        client_class, oauth_error = _authlib()
        oauth = client_class(
            client_id=self._client_id,
            client_secret=self._secret,
            token_endpoint_auth_method="client_secret_post" if self._secret else "none",
            timeout=self._timeout,
            verify=self._verify,
            transport=self._transport,
            event_hooks={"response": [status]},
        )
        try:
            async with oauth:
                if grant == "refresh_token":
                    result = await oauth.refresh_token(self.token_url, refresh_token=self._refresh)
                elif grant == "password":
                    result = await oauth.fetch_token(
                        self.token_url,
                        grant_type="password",
                        username=self._username,
                        password=self._password,
                        scope=self._scope,
                    )
                else:
                    result = await oauth.fetch_token(
                        self.token_url, grant_type="client_credentials", scope=self._scope
                    )
        except oauth_error as exc:
            # The issuer's RFC 6749 error (invalid_client, invalid_grant, ...), from a 4xx.
            code = statuses[-1] if statuses else 400
            error = self._clean(str(getattr(exc, "error", "") or "error"))
            description = self._clean(str(getattr(exc, "description", "") or ""))
            raise AuthError(
                f"OIDC {grant} grant refused by {self._host} (HTTP {code}): {error}"
                + (f": {description}" if description else ""),
                endpoint=ENDPOINT,
                status=code,
            ) from None
        except httpx.TimeoutException:
            raise TransportError(
                f"OIDC token request to {self._host} timed out", endpoint=ENDPOINT, kind="timeout"
            ) from None
        except httpx.HTTPStatusError as exc:
            code = exc.response.status_code
            raise AuthError(
                f"OIDC {grant} grant at {self._host} answered HTTP {code}", endpoint=ENDPOINT, status=code
            ) from None
        except httpx.HTTPError as exc:
            raise TransportError(
                f"OIDC token request to {self._host} failed: {type(exc).__name__}", endpoint=ENDPOINT
            ) from None
        except ValueError:
            # A 2xx that is not a token response (the URL of a web page, not a token endpoint).
            answered = statuses[-1] if statuses else None
            raise AuthError(
                f"OIDC {grant} grant at {self._host} returned no token response (HTTP {answered})",
                endpoint=ENDPOINT,
                status=answered,
            ) from None
        return self._accept(result, grant)

    def _accept(self, result: Any, grant: str) -> tuple[str, object]:
        access = result.get("access_token") if isinstance(result, dict) else None
        if not isinstance(access, str) or not access.strip() or any(c.isspace() for c in access.strip()):
            # nicocli refuses a response without an access token too (auth.go:570-573).
            raise AuthError(
                f"OIDC {grant} grant at {self._host} returned no usable access token", endpoint=ENDPOINT
            )
        access = access.strip()
        refresh = result.get("refresh_token")
        if isinstance(refresh, str) and refresh:
            self._refresh = refresh
        return access, result.get("expires_in")

    def _clean(self, text: str) -> str:
        """An issuer's words without the client secret, password or refresh token in them."""
        text = " ".join(text.split())[:200]
        for secret in (self._secret, self._password, self._refresh):
            if secret:
                text = text.replace(secret, "<redacted>")
        return logs.redact(text)
