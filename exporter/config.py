"""The exporter's configuration: a YAML file, overridden by environment variables, validated once.

``load_config`` reads the file named by ``--config.file``, merges environment overrides over it
(the environment wins) and validates the result into a frozen :class:`Config`. Every problem
becomes one :class:`ConfigError` whose message names the offending key by its dotted path
(``polling.active_interval: invalid duration 'fast' ...``), so a typo is found before start-up
rather than at the first poll.

Environment overrides:

* ``NICO_TOKEN`` supplies ``api.token``; ``NICO_CLIENT_SECRET`` supplies ``api.client_secret``.
* ``NICO_EXPORTER_<SECTION>__<KEY>`` sets any key, ``__`` separating levels
  (``NICO_EXPORTER_POLLING__ACTIVE_INTERVAL=30s``); lists and mappings are written as JSON
  (``NICO_EXPORTER_SITES='["<uuid>", "<uuid>"]'``). These win over ``NICO_TOKEN`` too.
* Empty values are ignored, as are ``NICO_EXPORTER_*`` names whose first part is not a
  top-level key: Kubernetes injects ``<SERVICE>_PORT``-style variables for a Service named
  ``nico-exporter``, and those must not stop the exporter.

Credentials are :class:`pydantic.SecretStr`: ``repr()``, ``str()``, ``model_dump()`` and
``model_dump_json()`` of a config never show them, and no error message quotes them.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from exporter import logs, yamlfile
from exporter.durations import Duration, Interval

# Re-exported for exporter/alerts.py and exporter/docs.py until they move to tools/: new code
# imports them from exporter.durations.
from exporter.durations import format_duration as format_duration
from exporter.durations import parse_duration as parse_duration
from exporter.models import canonical_uuid
from exporter.operations import OPERATIONS

TOKEN_ENV = "NICO_TOKEN"  # noqa: S105 - a variable name, not a secret
CLIENT_SECRET_ENV = "NICO_CLIENT_SECRET"  # noqa: S105
ENV_PREFIX = "NICO_EXPORTER_"
ENV_DELIMITER = "__"

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
        env_sources: Mapping[str, str] = (info.context or {}).get("env_sources", {})

        def named(key: str) -> str:
            source = env_sources.get(f"api.{key}")
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
    """The whole validated configuration (see PRODUCT.md section 4 for the file format)."""

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


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (YAML; ``None``: none, environment only), apply ``env`` and validate.

    ``env`` defaults to ``os.environ``. Registers the secrets with the log redaction filter.
    Raises :class:`ConfigError`, never ``ValidationError`` or ``yaml.YAMLError``.
    """
    data = _read_yaml(Path(path)) if path is not None else {}
    overrides, env_sources = _env_overrides(os.environ if env is None else env)
    merged = _deep_merge(data, overrides)
    try:
        config = Config.model_validate(merged, context={"env_sources": env_sources})
    except ValidationError as exc:
        raise ConfigError(_describe_errors(exc, env_sources)) from None
    config.register_secrets()
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yamlfile.loads(text)
    except yaml.YAMLError as exc:
        raise ConfigError(yamlfile.describe_error(exc, str(path))) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping (api:, sites:, ...), not a {_yaml_kind(data)}"
        )
    return data


def _yaml_kind(value: object) -> str:
    return "list" if isinstance(value, list) else "scalar"


def _env_overrides(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The nested overrides the environment sets, and which variable set each dotted path."""
    settings: list[tuple[tuple[str, ...], str, Any]] = [
        (("api", "token"), TOKEN_ENV, env.get(TOKEN_ENV, "")),
        (("api", "client_secret"), CLIENT_SECRET_ENV, env.get(CLIENT_SECRET_ENV, "")),
    ]
    settings = [item for item in settings if item[2]]
    generic: list[tuple[tuple[str, ...], str, Any]] = []
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or value == "":
            continue
        path = tuple(part.lower() for part in name.removeprefix(ENV_PREFIX).split(ENV_DELIMITER))
        if path[0] not in Config.model_fields:
            continue  # not ours: e.g. Kubernetes' NICO_EXPORTER_SERVICE_HOST
        if not all(path):
            raise ConfigError(f"{name}: empty key between '{ENV_DELIMITER}' delimiters")
        parsed: Any = value
        if _wants_json(path):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"{name}: not valid JSON ({exc.msg}); lists and mappings are JSON, "
                    """e.g. '["<site uuid>"]'"""
                ) from None
        generic.append((path, name, parsed))
    # Outer paths first so NICO_EXPORTER_API__URL refines a whole NICO_EXPORTER_API='{...}'.
    settings.extend(sorted(generic, key=lambda item: (len(item[0]), item[0])))
    tree: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for path, name, value in settings:
        node = tree
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = _deep_merge(node[path[-1]], value) if path[-1] in node else value
        sources[".".join(path)] = name
    return tree, sources


def _wants_json(path: tuple[str, ...]) -> bool:
    """Whether the key at ``path`` holds a list, mapping or section (so its env value is JSON)."""
    kind: Any = Config
    for part in path:
        if inspect.isclass(kind) and issubclass(kind, BaseModel):
            field = kind.model_fields.get(part)
            if field is None:
                return False
            kind = field.annotation
        elif get_origin(kind) is dict:
            kind = get_args(kind)[1]
        else:
            return False
    return (inspect.isclass(kind) and issubclass(kind, BaseModel)) or get_origin(kind) in (list, dict)


def _deep_merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _deep_merge(base[key], value) if key in base else value
        return merged
    return override


def _describe_errors(exc: ValidationError, env_sources: Mapping[str, str]) -> str:
    """One ``dotted.path: problem`` per error, joined by ``; ``; input values are never quoted."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = [part for part in error["loc"] if part != "[key]"]
        ctx = error.get("ctx") or {}
        if error["type"] == "config" and "field" in ctx:
            loc.append(ctx["field"])
        path = _dotted(loc)
        if error["type"] == "extra_forbidden":
            message = "unknown key" + _suggestion(loc)
        elif error["type"] == "missing":
            message = "required"
        else:
            message = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
        source = _env_source(loc, env_sources)
        lines.append(f"{path or '(top level)'}: {message}{f' (from {source})' if source else ''}")
    return "; ".join(lines)


def _dotted(loc: list[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _env_source(loc: list[int | str], env_sources: Mapping[str, str]) -> str | None:
    keys = [part for part in loc if isinstance(part, str)]
    for end in range(len(keys), 0, -1):
        source = env_sources.get(".".join(keys[:end]))
        if source is not None:
            return source
    return None


def _suggestion(loc: list[int | str]) -> str:
    """`` (did you mean 'token'?)`` for a misspelt key, when the intended one is obvious."""
    if not loc or not isinstance(loc[-1], str):
        return ""
    kind: Any = Config
    for part in loc[:-1]:
        if not (inspect.isclass(kind) and issubclass(kind, BaseModel)) or not isinstance(part, str):
            return ""
        field = kind.model_fields.get(part)
        if field is None:
            return ""
        kind = field.annotation
    if not (inspect.isclass(kind) and issubclass(kind, BaseModel)):
        return ""
    key, fields = loc[-1], list(kind.model_fields)
    close = difflib.get_close_matches(key, fields, n=1) or [f for f in fields if f.startswith(key)][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""
