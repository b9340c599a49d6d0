"""The identity providers beside NICo: a Keycloak realm's token endpoint and NGC's key exchange.

NICo trusts tokens from issuers it is configured with (``rest-api/auth/pkg/processors/``:
``keycloak.go`` for its Keycloak, ``kas.go`` and ``ssa.go`` for NGC, ``custom.go`` for any other
OIDC issuer); clients get those tokens from the issuer, not from NICo. The simulator serves both
issuers next to the NICo API, and its NICo accepts what they issue (:class:`.access.TokenStore`):

- ``POST /realms/nico/protocol/openid-connect/token``: Keycloak's token endpoint, form-encoded,
  with the client authenticated by ``client_id`` / ``client_secret`` in the form or HTTP Basic.
  Grants: ``client_credentials`` (no refresh token, as Keycloak's ``ClientCredentialsGrantType``
  unless the client opts in), ``password`` and ``refresh_token``. Errors are Keycloak's bodies
  (RFC 6749 section 5.2 ``{"error", "error_description"}``) with its status codes.
- ``GET /ngc/token`` with ``Authorization: ApiKey <key>``: the NGC exchange nicocli calls for a
  legacy key (``rest-api/cli/pkg/auth.go:282-312``), answering ``{"token", "expires_in"}``.

docs/simulator.md ("Identity providers") cites each answer.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from exporter.simulator.access import IssuedTokens, TokenStore
from exporter.simulator.simulation import Simulation

REALM = "nico"
TOKEN_PATH = "/realms/{realm}/protocol/openid-connect/token"  # noqa: S105 - a path
NGC_TOKEN_PATH = "/ngc/token"  # noqa: S105 - a path

# Keycloak's client authentication failure (ClientIdAndSecretAuthenticator): the same description
# for an unknown client ("invalid_client") and a wrong secret ("unauthorized_client").
BAD_CLIENT = "Invalid client or Invalid client credentials"


def oauth_error(status: int, error: str, description: str) -> Response:
    """An RFC 6749 section 5.2 error body, as Keycloak sends it."""
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


async def keycloak_token(request: Request) -> Response:
    """The realm's token endpoint: authenticate the client, then run the grant."""
    sim: Simulation = request.app.state.sim
    tokens = sim.tokens
    if request.path_params["realm"] != REALM:
        return JSONResponse({"error": "Realm does not exist"}, status_code=404)
    form = {key: values[0] for key, values in parse_qs((await request.body()).decode("latin-1")).items()}
    client_id, secret = form.get("client_id"), form.get("client_secret")
    basic = _basic_auth(request.headers.get("authorization", ""))
    if basic is not None:
        client_id, secret = basic
    if not client_id:
        return oauth_error(400, "invalid_client", "Missing client_id parameter")
    kind = tokens.client_kind(client_id)
    if kind == "unknown":
        return oauth_error(401, "invalid_client", BAD_CLIENT)
    if kind == "confidential" and (secret is None or not tokens.client_secret_ok(client_id, secret)):
        return oauth_error(401, "unauthorized_client", BAD_CLIENT)
    grant = form.get("grant_type")
    if not grant:
        return oauth_error(400, "invalid_request", "Missing form parameter: grant_type")
    if grant == "client_credentials":
        if kind == "public":
            return oauth_error(
                401, "unauthorized_client", "Public client not allowed to retrieve service account"
            )
        return _issued(tokens.issue(client_id, refresh=False))
    if grant == "password":
        username, password = form.get("username", ""), form.get("password", "")
        if not tokens.user_ok(username, password):
            return oauth_error(401, "invalid_grant", "Invalid user credentials")
        return _issued(tokens.issue(client_id, user=username, refresh=True))
    if grant == "refresh_token":
        return _refresh(tokens, client_id, form.get("refresh_token"))
    return oauth_error(400, "unsupported_grant_type", "Unsupported grant_type")


def _refresh(tokens: TokenStore, client_id: str, refresh_token: str | None) -> Response:
    if refresh_token is None:
        return oauth_error(400, "invalid_request", "No refresh token")
    state, grant = tokens.use_refresh(refresh_token, client_id)
    if state == "unknown" or grant is None:
        return oauth_error(400, "invalid_grant", "Invalid refresh token")
    if state == "expired":
        return oauth_error(400, "invalid_grant", "Token is not active")
    if state == "client":
        return oauth_error(
            400, "invalid_grant", "Invalid refresh token. Token client and authorized client don't match"
        )
    # A service account's refresh token (an opted-in client) refreshes a service account's token.
    return _issued(tokens.issue(client_id, user=grant.user, refresh=True))


def _issued(issued: IssuedTokens) -> Response:
    return JSONResponse(issued.as_oauth_json(), headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def _basic_auth(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


async def ngc_token(request: Request) -> Response:
    """NGC's key exchange: ``Authorization: ApiKey <key>`` for a legacy key it knows."""
    sim: Simulation = request.app.state.sim
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme != "ApiKey" or not key.strip():
        return JSONResponse(
            {"error": "unauthorized", "error_description": "missing API key"}, status_code=401
        )
    issued = sim.tokens.exchange_api_key(key.strip())
    if issued is None:
        return JSONResponse(
            {"error": "unauthorized", "error_description": "invalid API key"}, status_code=401
        )
    return JSONResponse({"token": issued.access_token, "expires_in": issued.expires_in})


def idp_routes() -> list[BaseRoute]:
    """The identity providers' routes (unversioned, outside NICo's ``/v2``)."""
    return [
        Route(TOKEN_PATH, keycloak_token, methods=["POST"]),
        Route(NGC_TOKEN_PATH, ngc_token, methods=["GET"]),
    ]
