"""nicocli's configuration, read the way nicocli reads it: ``~/.nico/config.yaml`` and ``NICO_*``.

An operator who already runs NICo's CLI (``rest-api/cli/``) has written everything the exporter
needs to reach NICo. This module turns nicocli's settings into the exporter's own ``api`` keys,
with the same names where they mean the same thing; :mod:`exporter.configload` layers them under
the exporter's own configuration (the precedence is in docs/credentials.md).

- :func:`read_file`: ``~/.nico/config.yaml`` (``rest-api/cli/pkg/config.go:14-48``: ``api.base``,
  ``api.org``, ``api.name``, ``auth.token``, ``auth.token_command``, ``auth.oidc.*``,
  ``auth.api_key.*``) mapped to ``api.url``, ``api.org``, ``api.api_name`` and one credential source.
- :func:`env_settings`: the ``NICO_*`` variables of ``rest-api/cli/pkg/env.go:53-177``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exporter import yamlfile
from exporter.config import CLIENT_SECRET_ENV, ConfigError

CONFIG_ENV = "NICO_CONFIG"

# NICO_* variable -> the exporter key it sets (env.go:61-164). NICO_CLIENT_ID and
# NICO_CLIENT_SECRET are missing on purpose: whose client they are depends on the rest
# (:func:`env_settings`). The tokens `nicocli login` persists (NICO_OIDC_TOKEN,
# NICO_OIDC_EXPIRES_AT, NICO_API_KEY_TOKEN) are not read: they expire, and NICO_TOKEN is there for
# a token that does not.
ENV_KEYS: dict[str, tuple[str, ...]] = {
    "NICO_BASE_URL": ("api", "url"),
    "NICO_ORG": ("api", "org"),
    "NICO_API_NAME": ("api", "api_name"),
    "NICO_TOKEN": ("api", "token"),
    # The alias first: when both are set the canonical name wins, as in env.go:77-99.
    "NICO_AUTH_SCRIPT": ("api", "token_command"),
    "NICO_TOKEN_COMMAND": ("api", "token_command"),
    "NICO_TOKEN_URL": ("api", "oidc", "token_url"),
    "NICO_OIDC_USERNAME": ("api", "oidc", "username"),
    "NICO_OIDC_PASSWORD": ("api", "oidc", "password"),
    "NICO_OIDC_REFRESH_TOKEN": ("api", "oidc", "refresh_token"),
    "NICO_API_KEY": ("api", "api_key", "key"),
    "NICO_AUTHN_URL": ("api", "api_key", "authn_url"),
}
CLIENT_ID_ENV = "NICO_CLIENT_ID"

# nicocli's auth.oidc keys the exporter reads (config.go:33-42); token and expires_at are what
# `nicocli login` persisted, and are not.
_OIDC_KEYS = ("token_url", "client_id", "client_secret", "username", "password", "refresh_token")

Setting = tuple[tuple[str, ...], str, Any]  # (exporter key path, where it came from, value)


def default_path(env: Mapping[str, str]) -> tuple[Path, bool]:
    """The nicocli config file to read and whether it was asked for (``NICO_CONFIG``) rather than
    nicocli's default ``~/.nico/config.yaml`` (``config.go:65-72``)."""
    named = env.get(CONFIG_ENV, "")
    if named:
        return Path(named).expanduser(), True
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".nico" / "config.yaml", False


def read_file(path: Path, *, required: bool) -> dict[str, Any]:
    """nicocli's config file as YAML data; a missing file is empty unless ``required``.

    nicocli itself treats a missing file as empty (``config.go:84-98``); a file named on the
    command line or in ``NICO_CONFIG`` that is not there is more likely a typo, so it is an error.
    Keys nicocli does not know are ignored, as nicocli keeps them without reading them.
    """
    try:
        return yamlfile.read_mapping(path, "nicocli config file", "api:, auth:", missing_ok=not required)
    except yamlfile.FileError as exc:
        raise ConfigError(str(exc)) from None


def file_settings(
    data: Mapping[str, Any], path: Path, env: Mapping[str, str]
) -> tuple[list[Setting], list[Setting], str | None]:
    """nicocli's file as exporter settings: ``(connection, credentials, source key)``.

    The connection is ``api.base``, ``api.org`` and ``api.name``. The credentials are one source,
    chosen as nicocli chooses how to log in again (``LoginFromConfig``, ``auth.go:187-200``) once
    its variables are applied (``ApplyEnvOverrides``, ``env.go:203-227``): the token command, else
    OIDC (a ``token_url`` and a ``client_id``: ``HasOIDCConfig``), else the NGC API key; only when
    none of those is there, the token nicocli would send (``GetAuthToken``, ``config.go:137-150``:
    ``auth.token``, ``auth.oidc.token``, ``auth.api_key.token``) as a static token. Only the
    file's own values are returned (the variables are a layer of their own); the source key
    (:data:`exporter.config.SOURCE_KEYS`) says which kind was chosen.
    """
    api = _mapping(data.get("api"))
    auth = _mapping(data.get("auth"))
    oidc = _mapping(auth.get("oidc"))
    api_key = _mapping(auth.get("api_key"))

    def where(key: str) -> str:
        return f"{path} {key}"

    def either(value: Any, variable: str) -> bool:
        return _text(value) or bool(env.get(variable))

    connection: list[Setting] = []
    for theirs, ours in (("base", "url"), ("org", "org"), ("name", "api_name")):
        if _text(api.get(theirs)):
            connection.append((("api", ours), where(f"api.{theirs}"), api[theirs]))

    credentials: list[Setting] = []
    kind: str | None = None
    command = either(auth.get("token_command"), "NICO_TOKEN_COMMAND") or bool(env.get("NICO_AUTH_SCRIPT"))
    if command:
        kind = "api.token_command"
        if _text(auth.get("token_command")):
            credentials.append((("api", "token_command"), where("auth.token_command"), auth["token_command"]))
    elif either(oidc.get("token_url"), "NICO_TOKEN_URL") and either(oidc.get("client_id"), CLIENT_ID_ENV):
        kind = "api.oidc.token_url"
        for key in _OIDC_KEYS:
            if _text(oidc.get(key)):
                credentials.append((("api", "oidc", key), where(f"auth.oidc.{key}"), oidc[key]))
    elif either(api_key.get("key"), "NICO_API_KEY"):
        kind = "api.api_key.key"
        for key in ("key", "authn_url"):
            if _text(api_key.get(key)):
                credentials.append((("api", "api_key", key), where(f"auth.api_key.{key}"), api_key[key]))
    else:
        for value, key in (
            (auth.get("token"), "auth.token"),
            (oidc.get("token"), "auth.oidc.token"),
            (api_key.get("token"), "auth.api_key.token"),
        ):
            if _text(value):
                kind = "api.token"
                credentials.append((("api", "token"), where(key), value))
                break
    return connection, credentials, kind


def env_settings(env: Mapping[str, str], *, oidc: bool, other_source: bool) -> list[Setting]:
    """The ``NICO_*`` variables that are set (not empty), as exporter settings.

    ``NICO_CLIENT_ID`` and ``NICO_CLIENT_SECRET`` are nicocli's OIDC client (``env.go:107-118``):
    with an OIDC token URL configured anywhere (``oidc``) they fill ``api.oidc.client_id`` and
    ``client_secret``. Without one they are the client of NICo's own ``POST /auth/login``
    (``api.client_id``, ``api.client_secret``), as ``NICO_CLIENT_SECRET`` always was for the
    exporter; a lone ``NICO_CLIENT_ID`` is then ignored when another source is configured
    (``other_source``), since a client id alone authenticates nothing.
    """
    settings: list[Setting] = []
    for name, path in ENV_KEYS.items():
        value = env.get(name, "")
        if value:
            settings.append((path, name, value))
    client_id, secret = env.get(CLIENT_ID_ENV, ""), env.get(CLIENT_SECRET_ENV, "")
    section: tuple[str, ...] = ("api", "oidc") if oidc else ("api",)
    if client_id and (oidc or secret or not other_source):
        settings.append(((*section, "client_id"), CLIENT_ID_ENV, client_id))
    if secret:
        settings.append(((*section, "client_secret"), CLIENT_SECRET_ENV, secret))
    return settings


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())
