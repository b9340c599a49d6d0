"""The NICo client as the configuration asks for it: credentials, options, the client itself.

The one place where configuration becomes runtime objects for talking to NICo; ``run``, ``probe``
and the task commands all connect through :func:`nico_client`. The configuration models themselves
build nothing (:mod:`exporter.config`).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import TypedDict

import httpx
from pydantic import SecretStr

from exporter import logs
from exporter.auth import ClientCredentials, StaticToken, TokenFile, TokenSource
from exporter.client import ClientHooks, NicoClient
from exporter.config import ApiConfig, ConfigError
from exporter.errors import AuthError
from exporter.ngc import NgcApiKey
from exporter.oidc import OidcToken
from exporter.ratelimit import TokenBucket
from exporter.tokencommand import TokenCommand


def token_source(
    api: ApiConfig,
    on_request: Callable[[str, int | None, float], None] | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> TokenSource:
    """The configured credential source (docs/credentials.md): a token, a token file, a token
    command, OIDC, an NGC API key or NICo's own login.

    ``on_request`` observes NICo's logins and refreshes; left ``None``,
    :class:`~exporter.client.NicoClient` counts them with its own requests. Calls to another
    identity provider (OIDC, NGC) are not NICo API calls and are not counted. ``transport`` is
    for those calls (tests: the simulator in-process). Every secret is registered with the log
    redaction filter.

    Raises:
        ConfigError: ``api.ca_file`` no longer loads (it did at validation).
    """
    for secret in api.secrets():
        logs.register_secret(secret)
    if api.token is not None:
        return StaticToken(api.token.get_secret_value())
    if api.token_file is not None:
        return TokenFile(api.token_file)
    if api.token_command is not None:
        return TokenCommand(api.token_command, timeout=api.timeout)
    lent = None if transport is None else _Lent(transport)
    if api.oidc is not None:
        oidc = api.oidc
        return OidcToken(
            oidc.token_url,
            oidc.client_id,
            client_secret=_plain(oidc.client_secret),
            username=oidc.username,
            password=_plain(oidc.password),
            refresh_token=_plain(oidc.refresh_token),
            scope=oidc.scope,
            verify=identity_provider_verify(api),
            timeout=api.timeout,
            transport=lent,
        )
    if api.api_key is not None:
        return NgcApiKey(
            api.api_key.key.get_secret_value(),
            api.api_key.authn_url,
            verify=identity_provider_verify(api),
            timeout=api.timeout,
            transport=lent,
        )
    if api.client_id is None or api.client_secret is None:  # validation makes this unreachable
        raise AuthError("api: no credentials configured")
    return ClientCredentials(
        api.url,
        api.client_id,
        api.client_secret.get_secret_value(),
        on_request=on_request,
        timeout=api.timeout,
    )


def identity_provider_verify(api: ApiConfig) -> bool | ssl.SSLContext:
    """TLS verification for an identity provider outside NICo (OIDC issuer, NGC authn): the
    system's CAs plus ``api.ca_file`` when given (an in-cluster Keycloak is often signed by the
    cluster's CA, a public issuer by a public one), or none with ``api.insecure_skip_verify``.

    Raises:
        ConfigError: ``api.ca_file`` no longer loads.
    """
    if api.insecure_skip_verify:
        return False
    if api.ca_file is None:
        return True
    context = ssl.create_default_context()
    try:
        context.load_verify_locations(cafile=str(api.ca_file))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"api.ca_file: cannot load {api.ca_file}: {exc}") from None
    return context


class _Lent(httpx.AsyncBaseTransport):
    """A transport lent to the identity-provider clients a source opens and closes per fetch:
    they use it, and its owner (the NICo client) closes it."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        return None


def _plain(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()


class ClientOptions(TypedDict):
    """Keyword arguments for :class:`NicoClient` beside url, org and auth."""

    timeout_s: float
    max_requests_per_second: float
    burst: int
    max_concurrency: int
    api_name: str
    route_version: str
    verify: bool | ssl.SSLContext


def client_kwargs(api: ApiConfig) -> ClientOptions:
    """The keyword arguments :func:`nico_client` gives :class:`NicoClient` beside url, org and auth.

    Raises:
        ConfigError: ``api.ca_file`` no longer loads (it did at validation).
    """
    verify: bool | ssl.SSLContext = not api.insecure_skip_verify
    if api.ca_file is not None:
        try:
            verify = ssl.create_default_context(cafile=str(api.ca_file))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"api.ca_file: cannot load {api.ca_file}: {exc}") from None
    return ClientOptions(
        timeout_s=api.timeout,
        max_requests_per_second=api.max_requests_per_second,
        burst=api.burst,
        max_concurrency=api.max_concurrency,
        api_name=api.api_name,
        route_version=api.route_version,
        verify=verify,
    )


def nico_client(
    api: ApiConfig,
    *,
    hooks: ClientHooks | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    limiter: TokenBucket | None = None,
) -> NicoClient:
    """A client for ``api``: its credential, TLS, budget and routes (and the caller's seams)."""
    return NicoClient(
        api.url,
        api.org,
        auth=token_source(api, transport=transport),
        hooks=hooks,
        transport=transport,
        limiter=limiter,
        **client_kwargs(api),
    )
