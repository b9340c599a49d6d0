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

from exporter import logs
from exporter.auth import ClientCredentials, StaticToken, TokenFile, TokenSource
from exporter.client import ClientHooks, NicoClient
from exporter.config import ApiConfig, ConfigError
from exporter.errors import AuthError
from exporter.ratelimit import TokenBucket


def token_source(
    api: ApiConfig, on_request: Callable[[str, int | None, float], None] | None = None
) -> TokenSource:
    """The configured credential (``api.token``, ``api.token_file`` or client credentials).

    ``on_request`` observes logins and refreshes (client credentials only); left ``None``,
    :class:`~exporter.client.NicoClient` counts them with its own requests. The token or secret
    is registered with the log redaction filter.
    """
    for secret in (api.token, api.client_secret):
        if secret is not None:
            logs.register_secret(secret.get_secret_value())
    if api.token is not None:
        return StaticToken(api.token.get_secret_value())
    if api.token_file is not None:
        return TokenFile(api.token_file)
    if api.client_id is None or api.client_secret is None:  # validation makes this unreachable
        raise AuthError("api: no credentials configured")
    return ClientCredentials(
        api.url,
        api.client_id,
        api.client_secret.get_secret_value(),
        on_request=on_request,
        timeout=api.timeout,
    )


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
        auth=token_source(api),
        hooks=hooks,
        transport=transport,
        limiter=limiter,
        **client_kwargs(api),
    )
