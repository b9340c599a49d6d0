"""The exporter's configuration: the validated, frozen models of the YAML file (:class:`Config`).

Every key is checked here, once, before start-up: a misspelt key, a bad duration or two
credential sources is a :class:`ConfigError` naming the key by its dotted path, not a surprise at
the first poll. Reading the file and the environment is :mod:`exporter.configload`; building the
client and the token source from a config is :func:`exporter.connect.nico_client`.

Credentials are :class:`pydantic.SecretStr`: ``repr()``, ``str()``, ``model_dump()`` and
``model_dump_json()`` of a config never show them, and no error message quotes them.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from exporter import logs

# Re-exported for exporter/alerts.py and exporter/docs.py until they move to tools/: new code
# imports them from exporter.durations.
from exporter.durations import Duration, Interval, format_duration
from exporter.models import canonical_uuid
from exporter.ngc import BEARER_PREFIX as NGC_BEARER_PREFIX
from exporter.operations import OPERATIONS
from exporter.sharding import Budget, replica_budget

TOKEN_ENV = "NICO_TOKEN"  # noqa: S105 - a variable name, not a secret
CLIENT_SECRET_ENV = "NICO_CLIENT_SECRET"  # noqa: S105
OIDC_PASSWORD_ENV = "NICO_OIDC_PASSWORD"  # noqa: S105
AUTHN_URL_ENV = "NICO_AUTHN_URL"

REDACTED = "<redacted>"


class ConfigError(Exception):
    """The configuration cannot be used; ``message`` names the key (dotted path) and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------- field types


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _field_error(field: str, message: str) -> PydanticCustomError:
    """An error a model validator reports against one of the model's fields (``field``)."""
    return PydanticCustomError("config", "{message}", {"field": field, "message": message})


def _site_id(value: object) -> str:
    try:
        return canonical_uuid(value)
    except ValueError:
        raise ValueError(f"not a UUID: {_shown(value)}") from None


def _operation_name(value: str) -> str:
    if value not in OPERATIONS:
        raise ValueError(f"unknown operation {_shown(value)} (want one of {', '.join(OPERATIONS)})")
    return value


def _regex(value: str) -> str:
    if not value:
        raise ValueError("empty pattern: it would match every task")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {_shown(value)}: {exc}") from None
    return value


def _name(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if "/" in value or any(c.isspace() for c in value):
        raise ValueError(f"must not contain '/' or spaces, got {_shown(value)}")
    return value


def _non_empty_path(value: object) -> object:
    # Path("") is Path("."): catch the empty string before it becomes the working directory.
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty")
    return value


def _readable_file(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"file not readable: {path}")
    return path


SiteId = Annotated[str, BeforeValidator(_site_id)]
OperationName = Annotated[str, AfterValidator(_operation_name)]
Regex = Annotated[str, AfterValidator(_regex)]
Name = Annotated[str, AfterValidator(_name)]
FilePath = Annotated[Path, BeforeValidator(_non_empty_path)]
ReadableFile = Annotated[Path, BeforeValidator(_non_empty_path), AfterValidator(_readable_file)]


# --------------------------------------------------------------------------- models


class _Section(BaseModel):
    # A misspelt key is an error that names it, never a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _endpoint_url(value: str) -> str:
    """An identity provider's http(s) URL; the value is never echoed (it may carry a secret)."""
    value = value.strip()
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
    except ValueError:
        raise ValueError("must be an http(s) URL") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise ValueError("must be an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials")
    if parts.fragment:
        raise ValueError("must not have a fragment")
    return value


def _one_word(value: SecretStr | None) -> SecretStr | None:
    """A bearer token or key: one line, no spaces, no ``Bearer `` prefix."""
    if value is None:
        return None
    token = value.get_secret_value().strip()
    if not token:
        raise ValueError("is empty")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise ValueError("must be one line without spaces (drop any 'Bearer ' prefix)")
    return SecretStr(token)


def _stripped_secret(value: SecretStr | None) -> SecretStr | None:
    if value is None:
        return None
    secret = value.get_secret_value().strip()
    if not secret:
        raise ValueError("is empty")
    return SecretStr(secret)


def _stripped(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError("is empty")
    return value.strip() if value is not None else None


EndpointUrl = Annotated[str, AfterValidator(_endpoint_url)]
OneWordSecret = Annotated[SecretStr, AfterValidator(_one_word)]
Secret = Annotated[SecretStr, AfterValidator(_stripped_secret)]
Text = Annotated[str, AfterValidator(_stripped)]


def _namer(info: ValidationInfo, prefix: str) -> Callable[[str], str]:
    """``named(key)``: ``<prefix><key>``, with where its value came from when that is known (the
    environment variable, flag or nicocli file exporter.configload records in the context)."""
    origins: Mapping[str, str] = (info.context or {}).get("sources", {})

    def named(key: str) -> str:
        source = origins.get(prefix + key)
        return f"{prefix}{key} (from {source})" if source else f"{prefix}{key}"

    return named


class OidcConfig(_Section):
    """An OpenID Connect token endpoint, as nicocli's ``auth.oidc`` (docs/credentials.md).

    The grant follows from the keys, as in nicocli: a ``refresh_token`` is used first when given;
    then client credentials (no ``username``, a ``client_secret``), or the password grant
    (``username`` and ``password``).
    """

    token_url: EndpointUrl
    client_id: Text
    client_secret: Secret | None = None
    username: Text | None = None
    password: Secret | None = None
    refresh_token: OneWordSecret | None = None
    scope: str = "openid"

    @model_validator(mode="after")
    def _a_grant(self, info: ValidationInfo) -> OidcConfig:
        named = _namer(info, "api.oidc.")

        if self.username is not None and self.password is None:
            raise _field_error("password", f"required with {named('username')} (or set {OIDC_PASSWORD_ENV})")
        if self.password is not None and self.username is None:
            raise _field_error("username", f"required with {named('password')}")
        if self.username is None and self.client_secret is None and self.refresh_token is None:
            raise _field_error(
                "client_secret",
                f"required for the client-credentials grant (or set {CLIENT_SECRET_ENV}); "
                "or set api.oidc.username + api.oidc.password for the password grant",
            )
        return self


class ApiKeyConfig(_Section):
    """An NGC API key, as nicocli's ``auth.api_key``: an ``nvapi-`` key is the bearer token itself;
    a legacy key is exchanged for one at ``authn_url``."""

    key: OneWordSecret
    authn_url: EndpointUrl | None = None

    @model_validator(mode="after")
    def _legacy_needs_authn_url(self) -> ApiKeyConfig:
        if self.authn_url is None and not self.key.get_secret_value().startswith(NGC_BEARER_PREFIX):
            raise _field_error(
                "authn_url",
                f"required for a legacy NGC key, one without the {NGC_BEARER_PREFIX} prefix "
                f"(or set {AUTHN_URL_ENV})",
            )
        return self


CredentialKind = Literal["token", "token_file", "token_command", "oidc", "api_key", "nico_login"]

# The keys that each name a credential source, as dotted paths; the others (a client secret, a
# username, an authn_url, ...) only complete one.
SOURCE_KEYS = (
    "api.token",
    "api.token_file",
    "api.token_command",
    "api.oidc.token_url",
    "api.api_key.key",
    "api.client_id",
)


class ApiConfig(_Section):
    """Where the NICo REST API is and how to authenticate to it (exactly one credential source)."""

    url: str
    org: Name
    api_name: Name = "nico"
    route_version: Name = "v2"
    token: OneWordSecret | None = None
    token_file: FilePath | None = None
    token_command: Text | None = None
    oidc: OidcConfig | None = None
    api_key: ApiKeyConfig | None = None
    client_id: Text | None = None
    client_secret: Secret | None = None
    ca_file: ReadableFile | None = None
    insecure_skip_verify: bool = False
    timeout: Interval = 30.0
    max_requests_per_second: float = Field(10.0, gt=0, allow_inf_nan=False)
    # Below NICo's burst of 30 at the same rate: the difference absorbs latency jitter.
    burst: int = Field(10, ge=1)
    max_concurrency: int = Field(8, ge=1)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        # The value is never echoed: a URL with user:password@ in it carries a credential.
        value = value.strip()
        try:
            parts = urlsplit(value)
            hostname = parts.hostname
        except ValueError:
            raise ValueError("must be an http(s) URL like https://nico-rest-api.example.com") from None
        if parts.scheme not in ("http", "https") or not hostname:
            raise ValueError("must be an http(s) URL like https://nico-rest-api.example.com")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not contain credentials: use one of the api credential keys")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        return value.rstrip("/")

    @field_validator("ca_file")
    @classmethod
    def _ca_bundle(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                ssl.create_default_context(cafile=str(value))
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(f"not a PEM CA bundle: {value} ({exc.__class__.__name__})") from None
        return value

    @model_validator(mode="after")
    def _credentials(self, info: ValidationInfo) -> ApiConfig:
        named = _namer(info, "api.")

        if self.client_id is not None and self.client_secret is None:
            raise _field_error("client_secret", f"required with api.client_id (or set {CLIENT_SECRET_ENV})")
        if self.client_secret is not None and self.client_id is None:
            raise _field_error("client_id", f"required with {named('client_secret')}")
        sources = []
        if self.token is not None:
            sources.append(named("token"))
        if self.token_file is not None:
            sources.append(named("token_file"))
        if self.token_command is not None:
            sources.append(named("token_command"))
        if self.oidc is not None:
            sources.append(named("oidc.token_url"))
        if self.api_key is not None:
            sources.append(named("api_key.key"))
        if self.client_id is not None:
            sources.append(f"{named('client_id')} + {named('client_secret')}")
        if not sources:
            raise _field_error(
                "token",
                f"no API credentials: set api.token (or {TOKEN_ENV}), api.token_file, api.token_command, "
                "api.oidc, api.api_key, or api.client_id + api.client_secret (docs/credentials.md)",
            )
        if len(sources) > 1:
            raise PydanticCustomError(
                "config",
                "{message}",
                {"message": f"more than one credential source ({', '.join(sources)}): set exactly one"},
            )
        if self.ca_file is not None and self.insecure_skip_verify:
            raise _field_error("insecure_skip_verify", "contradicts api.ca_file: set one or the other")
        return self

    @property
    def credential_kind(self) -> CredentialKind:
        """Which credential source is configured (``nico_login``: NICo's ``POST /auth/login``)."""
        if self.token is not None:
            return "token"
        if self.token_file is not None:
            return "token_file"
        if self.token_command is not None:
            return "token_command"
        if self.oidc is not None:
            return "oidc"
        if self.api_key is not None:
            return "api_key"
        return "nico_login"

    def secrets(self) -> list[str]:
        """Every credential value the section holds (for the log redaction filter)."""
        values = [self.token, self.client_secret]
        if self.oidc is not None:
            values += [self.oidc.client_secret, self.oidc.password, self.oidc.refresh_token]
        if self.api_key is not None:
            values.append(self.api_key.key)
        return [value.get_secret_value() for value in values if value is not None]


class PollingConfig(_Section):
    """How often each kind of listing runs; every request is a Temporal workflow on the site."""

    active_interval: Interval = 15.0
    tray_interval: Interval = 60.0
    reconcile_interval: Interval = 300.0
    discovery_interval: Interval = 300.0
    final_fetch_interval: Interval = 2.0

    @field_validator("active_interval")
    @classmethod
    def _at_least_a_second(cls, value: float) -> float:
        if value < 1.0:
            raise ValueError("must be at least 1s: each poll runs a workflow on the site")
        return value


class StateConfig(_Section):
    """Where state survives restarts, and how long finished tasks are kept."""

    path: FilePath = Path("/var/lib/nico-task-exporter/state.db")
    finished_task_ttl: Duration = 3600.0
    terminal_retention: Interval = 7 * 86400.0

    @model_validator(mode="after")
    def _retention_covers_ttl(self) -> StateConfig:
        if self.terminal_retention < self.finished_task_ttl:
            raise _field_error(
                "terminal_retention",
                f"must be at least state.finished_task_ttl ({format_duration(self.finished_task_ttl)})",
            )
        return self


class ShardingConfig(_Section):
    """This replica's shard (a StatefulSet ordinal) of ``total_shards``, and its request budget."""

    shard: int = Field(0, ge=0)
    total_shards: int = Field(1, ge=1)
    # The request budget all the replicas share (unset: each spends api.max_requests_per_second
    # alone). Each replica then takes 1/total_shards of it, at most api.max_requests_per_second,
    # so a deployment sets one number, the shard count (deploy/kubernetes/).
    fleet_max_requests_per_second: float | None = Field(None, gt=0, allow_inf_nan=False)

    def request_budget(self, max_requests_per_second: float, burst: int) -> Budget:
        """This replica's budget, given ``api.max_requests_per_second`` and ``api.burst``."""
        if self.fleet_max_requests_per_second is None:
            return Budget(rate=max_requests_per_second, burst=burst)
        return replica_budget(
            self.fleet_max_requests_per_second,
            self.total_shards,
            max_rate=max_requests_per_second,
            max_burst=burst,
        )

    @model_validator(mode="after")
    def _in_range(self) -> ShardingConfig:
        if self.shard >= self.total_shards:
            raise _field_error(
                "shard",
                f"{self.shard} is out of range for total_shards {self.total_shards} "
                f"(want 0..{self.total_shards - 1})",
            )
        return self


class OperationsConfig(_Section):
    """Operator-supplied description patterns, tried before the built-in ones."""

    extra_patterns: dict[OperationName, list[Regex]] = Field(default_factory=dict)


class WebConfig(_Section):
    """The HTTP endpoint (``/metrics``, ``/healthz``, ``/readyz``)."""

    listen_address: str = ":9842"
    config_file: ReadableFile | None = None

    @field_validator("listen_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        _, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"invalid listen address {_shown(value)}: want host:port or :port")
        return value


class MetricsConfig(_Section):
    """What ``/metrics`` shows: cardinality controls as kube-state-metrics users expect them."""

    # Per-task stage series multiply per-task cardinality by the stage count: opt in.
    per_task_stages: bool = False
    # Families to emit (names or regular expressions matching the whole name; empty: all) and to
    # leave out; --metrics.allowlist / --metrics.denylist on the command line.
    allowlist: list[str] = Field(default_factory=list)
    denylist: list[str] = Field(default_factory=list)
    # nico_task_status: every status (0 or 1, the default) or only the current one.
    task_status: Literal["one_hot", "current"] = "one_hot"

    @field_validator("allowlist", "denylist")
    @classmethod
    def _patterns_compile(cls, value: list[str]) -> list[str]:
        from exporter.metrics import FAMILY  # the contract's names (metrics does not import config)

        for pattern in value:
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
            # A typo would otherwise keep (or drop) nothing, silently.
            if not any(compiled.fullmatch(name) for name in FAMILY):
                raise ValueError(f"{pattern!r} matches no metric family (see docs/metrics.md)")
        return value


class TracingConfig(_Section):
    """Span settings; the OTLP exporter itself is configured by the standard ``OTEL_*`` env."""

    service_name: Name = "nico"


class LogConfig(_Section):
    """Log verbosity and line format."""

    level: Literal["debug", "info", "warn", "error"] = "info"
    format: Literal["logfmt", "json"] = "logfmt"

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().lower()
            return "warn" if value == "warning" else value
        return value


class Config(_Section):
    """The whole validated configuration (the file format: docs/design.md)."""

    api: ApiConfig
    sites: list[SiteId] = Field(default_factory=list)
    polling: PollingConfig = Field(default_factory=PollingConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    sharding: ShardingConfig = Field(default_factory=ShardingConfig)
    operations: OperationsConfig = Field(default_factory=OperationsConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @model_validator(mode="before")
    @classmethod
    def _blank_means_default(cls, data: Any) -> Any:
        # "sites:" or "polling:" with nothing after it parses as null; treat it as "defaults".
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data

    @field_validator("sites")
    @classmethod
    def _unique_sites(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    def register_secrets(self) -> None:
        """Tell the log redaction filter about every credential (tokens, secrets, keys)."""
        for secret in self.api.secrets():
            logs.register_secret(secret)

    def redacted_summary(self) -> dict[str, Any]:
        """The effective configuration as plain JSON-able data, secrets replaced by ``<redacted>``."""
        data = self.model_dump(mode="json")
        api = data["api"]
        for section, keys in (
            (api, ("token", "client_secret")),
            (api.get("oidc") or {}, ("client_secret", "password", "refresh_token")),
            (api.get("api_key") or {}, ("key",)),
        ):
            for key in keys:
                if section.get(key) is not None:
                    section[key] = REDACTED
        return data

    def describe(self) -> str:
        """One line for ``check-config``: what the exporter will watch and how often."""
        polling = self.polling
        sites = f"{len(self.sites)} listed" if self.sites else "all Flow-enabled"
        return ", ".join(
            (
                f"sites: {sites}",
                f"active poll every {format_duration(polling.active_interval)}",
                f"tray poll every {format_duration(polling.tray_interval)}",
                f"reconcile every {format_duration(polling.reconcile_interval)}",
                f"discovery every {format_duration(polling.discovery_interval)}",
                f"auth: {self.api.credential_kind}",
                f"shard {self.sharding.shard} of {self.sharding.total_shards}",
                f"api: {self.api.url} org {self.api.org}",
            )
        )
