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
from collections.abc import Mapping
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
from exporter.operations import OPERATIONS

TOKEN_ENV = "NICO_TOKEN"  # noqa: S105 - a variable name, not a secret
CLIENT_SECRET_ENV = "NICO_CLIENT_SECRET"  # noqa: S105

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


class ApiConfig(_Section):
    """Where the NICo REST API is and how to authenticate to it (exactly one credential source)."""

    url: str
    org: Name
    api_name: Name = "nico"
    route_version: Name = "v2"
    token: SecretStr | None = None
    token_file: FilePath | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
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
            raise ValueError("must not contain credentials: use api.token, api.token_file or api.client_id")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        return value.rstrip("/")

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        token = value.get_secret_value().strip()
        if not token:
            raise ValueError("is empty")
        if any(c.isspace() or not c.isprintable() for c in token):
            raise ValueError("must be one line without spaces (drop any 'Bearer ' prefix)")
        return SecretStr(token)

    @field_validator("client_secret")
    @classmethod
    def _client_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        secret = value.get_secret_value().strip()
        if not secret:
            raise ValueError("is empty")
        return SecretStr(secret)

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("is empty")
        return value.strip() if value is not None else None

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
        # Which environment variable or flag set a key (exporter.configload passes them).
        origins: Mapping[str, str] = (info.context or {}).get("sources", {})

        def named(key: str) -> str:
            source = origins.get(f"api.{key}")
            return f"api.{key} (from {source})" if source else f"api.{key}"

        if self.client_id is not None and self.client_secret is None:
            raise _field_error("client_secret", f"required with api.client_id (or set {CLIENT_SECRET_ENV})")
        if self.client_secret is not None and self.client_id is None:
            raise _field_error("client_id", f"required with {named('client_secret')}")
        sources = []
        if self.token is not None:
            sources.append(named("token"))
        if self.token_file is not None:
            sources.append(named("token_file"))
        if self.client_id is not None:
            sources.append(f"{named('client_id')} + {named('client_secret')}")
        if not sources:
            raise _field_error(
                "token",
                f"no API credentials: set api.token (or {TOKEN_ENV}), api.token_file, "
                "or api.client_id + api.client_secret",
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
    def credential_kind(self) -> Literal["token", "token_file", "client_credentials"]:
        """Which of the three credential sources is configured."""
        if self.token is not None:
            return "token"
        if self.token_file is not None:
            return "token_file"
        return "client_credentials"


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
    """This replica's shard (a StatefulSet ordinal) of ``total_shards``."""

    shard: int = Field(0, ge=0)
    total_shards: int = Field(1, ge=1)

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
        """Tell the log redaction filter about the token and the client secret."""
        for secret in (self.api.token, self.api.client_secret):
            if secret is not None:
                logs.register_secret(secret.get_secret_value())

    def redacted_summary(self) -> dict[str, Any]:
        """The effective configuration as plain JSON-able data, secrets replaced by ``<redacted>``."""
        data = self.model_dump(mode="json")
        for key in ("token", "client_secret"):
            if data["api"].get(key) is not None:
                data["api"][key] = REDACTED
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
