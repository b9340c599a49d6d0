"""The Prometheus exporter-toolkit web config file (``--web.config.file``): TLS, basic auth, headers.

The file is validated by the pydantic models below (unknown keys are errors, types are strict,
as Go's YAML decoding into exporter-toolkit's structs is) and resolved into a
:class:`ToolkitConfig`. Every problem is a :class:`WebConfigError` naming the file and the key.

Supported as in exporter-toolkit: ``tls_server_config`` (``cert_file``, ``key_file``,
``client_auth_type``, ``client_ca_file``, ``min_version``, ``max_version``,
``client_allowed_sans``), ``http_server_config.headers`` (exporter-toolkit's allow-list) and
``basic_auth_users`` (bcrypt hashes). Where this exporter differs:

* ``RequireAnyClientCert`` / ``RequireClientCert`` (require a certificate without verifying it)
  cannot be expressed with Python's ``ssl`` and are rejected; use ``RequireAndVerifyClientCert``
  with ``client_ca_file``.
* ``cert``, ``key``, ``client_ca`` (inline PEM), ``cipher_suites``, ``curve_preferences`` and
  ``rate_limit`` are rejected as unsupported; ``http2`` and ``prefer_server_cipher_suites`` are
  accepted and ignored (HTTP/1.1 only; OpenSSL's defaults choose the cipher).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from exporter import yamlfile
from exporter.web.tls import ContextCache, TLSFileError, TLSServerConfig, build_ssl_context

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_CLIENT_AUTH_TYPES = (
    "NoClientCert",
    "RequestClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
_UNSUPPORTED_CLIENT_AUTH = ("RequireAnyClientCert", "RequireClientCert")

# exporter-toolkit's allow-list: header name -> allowed values (None: any value).
_ALLOWED_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}

# Same format check as Go's bcrypt.Cost: version, cost 04..31, 22 salt + 31 hash characters.
_BCRYPT_HASH = re.compile(r"^\$2[abxy]?\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")

_TLS = "tls_server_config"


class WebConfigError(Exception):
    """The web config file is unreadable or invalid; the message names the file and the problem."""


@dataclass(frozen=True)
class ToolkitConfig:
    """A validated web config; the default (no file) is plain HTTP without authentication."""

    path: Path | None = None
    tls: TLSServerConfig | None = None
    headers: tuple[tuple[str, str], ...] = ()
    users: Mapping[str, str] = field(default_factory=dict)

    def ssl_context(self, cache: ContextCache | None = None) -> ssl.SSLContext:
        """The context for :attr:`tls` (from ``cache`` when given, else built afresh).

        Raises:
            WebConfigError: no TLS configured, or a file named in it does not load.
        """
        if self.tls is None:
            raise WebConfigError(f"web config {self.path}: no {_TLS}")
        try:
            return cache.get(self.tls) if cache is not None else build_ssl_context(self.tls)
        except TLSFileError as exc:
            raise WebConfigError(f"web config {self.path}: {exc}") from exc


def load_toolkit_config(path: str | Path | None) -> ToolkitConfig:
    """Read and fully validate a web config file, including that its TLS files load.

    ``None`` or an empty path means no file: plain HTTP, no authentication.

    Raises:
        WebConfigError: naming the file and the problem.
    """
    config = ToolkitConfigFile(path).current()
    if config.tls is not None:
        config.ssl_context()
    return config


class ToolkitConfigFile:
    """The web config file as it is now, for every request: read each time, parsed when it changed.

    Checks the file without touching the files it names (:meth:`ToolkitConfig.ssl_context` loads
    those). Thread-safe: the last parse is swapped in whole.
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None and str(path) != "" else None
        self._last: tuple[str, ToolkitConfig] | None = None

    def current(self) -> ToolkitConfig:
        """Raises :class:`WebConfigError` naming the file and the problem."""
        if self.path is None:
            return ToolkitConfig()
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise WebConfigError(f"web config {self.path}: cannot read: {exc}") from exc
        last = self._last
        if last is not None and last[0] == text:
            return last[1]
        config = _parse(self.path, text)
        self._last = (text, config)
        return config


def _parse(path: Path, text: str) -> ToolkitConfig:
    try:
        raw = yamlfile.loads(text)
    except yaml.YAMLError as exc:
        # Not chained: PyYAML's own message quotes the file (bcrypt hashes, in a traceback).
        raise WebConfigError(yamlfile.describe_error(exc, f"web config {path}")) from None
    try:
        file = _File.model_validate({} if raw is None else raw)
    except ValidationError as exc:
        raise WebConfigError(f"web config {path}: {_describe_errors(exc)}") from None
    return file.resolve(path)


# --------------------------------------------------------------------------- the file's models


def _error(message: str) -> PydanticCustomError:
    """A problem whose message names the key itself (shown as it is)."""
    return PydanticCustomError("web_config", "{message}", {"message": message})


def _string_keys(value: object) -> object:
    # YAML keys need not be strings (``123:``); exporter-toolkit's are, so compare them as text.
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value


class _Section(BaseModel):
    """A mapping of the file: unknown keys and wrong types are errors; ``UNSUPPORTED`` keys too."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    WHERE: ClassVar[str]
    UNSUPPORTED: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _supported_keys(cls, data: Any) -> Any:
        data = _string_keys(data)
        for key in data if isinstance(data, dict) else ():
            if key in cls.UNSUPPORTED:
                raise _error(f"{key!r} in {cls.WHERE} is not supported by this exporter")
        return data


class _TLSSection(_Section):
    WHERE = _TLS
    UNSUPPORTED = frozenset({"cert", "key", "client_ca", "cipher_suites", "curve_preferences"})

    cert_file: str | None = None
    key_file: str | None = None
    client_auth_type: str | None = None
    client_ca_file: str | None = None
    min_version: str | None = None
    max_version: str | None = None
    client_allowed_sans: list[str] | None = None
    prefer_server_cipher_suites: bool = False  # accepted and ignored

    @property
    def enabled(self) -> bool:
        # An empty section means plain HTTP, as in exporter-toolkit.
        return bool(self.cert_file or self.key_file or self.client_auth_type or self.client_ca_file)

    @model_validator(mode="after")
    def _consistent(self) -> _TLSSection:
        if not self.enabled:
            return self
        if not self.cert_file:
            raise _error(f"{_TLS}.cert_file is missing")
        if not self.key_file:
            raise _error(f"{_TLS}.key_file is missing")
        auth = self.client_auth_type or "NoClientCert"
        if auth in _UNSUPPORTED_CLIENT_AUTH:
            raise _error(
                f"{_TLS}.client_auth_type {auth} is not supported (Python's ssl module verifies every "
                "client certificate it requests); use RequireAndVerifyClientCert with client_ca_file"
            )
        if auth not in _CLIENT_AUTH_TYPES:
            raise _error(
                f"invalid {_TLS}.client_auth_type {auth!r}, want one of " + ", ".join(_CLIENT_AUTH_TYPES)
            )
        if self.client_ca_file and auth == "NoClientCert":
            raise _error(f"{_TLS}.client_ca_file is set but client_auth_type is NoClientCert")
        for key, name in (("min_version", self.min_version), ("max_version", self.max_version)):
            if name and name not in _TLS_VERSIONS:
                raise _error(f"invalid {_TLS}.{key} {name!r}, want one of {', '.join(_TLS_VERSIONS)}")
        if self._version(self.min_version, "TLS12") > self._version(self.max_version, "TLS13"):
            raise _error(f"{_TLS}.min_version is above max_version")
        return self

    @staticmethod
    def _version(name: str | None, default: str) -> ssl.TLSVersion:
        return _TLS_VERSIONS[name or default]

    def resolve(self, base: Path) -> TLSServerConfig | None:
        """The settings with paths relative to ``base`` (the file's directory); None: no TLS."""
        if not self.enabled:
            return None
        assert self.cert_file and self.key_file  # checked by _consistent
        return TLSServerConfig(
            cert_file=base / self.cert_file,
            key_file=base / self.key_file,
            client_auth_type=self.client_auth_type or "NoClientCert",
            client_ca_file=base / self.client_ca_file if self.client_ca_file else None,
            min_version=self._version(self.min_version, "TLS12"),
            max_version=self._version(self.max_version, "TLS13"),
            client_allowed_sans=tuple(self.client_allowed_sans or ()),
        )


class _HTTPSection(_Section):
    WHERE = "http_server_config"

    headers: Annotated[dict[str, str | None], BeforeValidator(_string_keys)] | None = None
    http2: bool = False  # accepted and ignored: HTTP/1.1 only

    @field_validator("headers")
    @classmethod
    def _allowed_headers(cls, headers: dict[str, str | None] | None) -> dict[str, str | None] | None:
        for name, value in (headers or {}).items():
            if name not in _ALLOWED_HEADERS:
                raise _error(f"HTTP header {name!r} can not be configured")
            text = value or ""
            allowed = _ALLOWED_HEADERS[name]
            if allowed is not None and text not in allowed:
                raise _error(
                    f"invalid value {text!r} for HTTP header {name}, want one of {', '.join(allowed)}"
                )
            if any(c in text for c in "\r\n\0"):
                raise _error(f"HTTP header {name} contains a line break")
        return headers


class _File(_Section):
    WHERE = "the top level"
    UNSUPPORTED = frozenset({"rate_limit"})

    tls_server_config: _TLSSection | None = None
    http_server_config: _HTTPSection | None = None
    # Values checked below, not typed: a null or a number is "not a valid bcrypt hash" too.
    basic_auth_users: Annotated[dict[str, object], BeforeValidator(_string_keys)] | None = None

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_hashes(cls, users: dict[str, object] | None) -> dict[str, object] | None:
        for user, hashed in (users or {}).items():
            if not isinstance(hashed, str) or not _BCRYPT_HASH.match(hashed):
                raise _error(f"basic_auth_users.{user} is not a valid bcrypt hash")
        return users

    def resolve(self, path: Path) -> ToolkitConfig:
        headers = (self.http_server_config.headers if self.http_server_config else None) or {}
        return ToolkitConfig(
            path=path,
            tls=self.tls_server_config.resolve(path.parent) if self.tls_server_config else None,
            headers=tuple((name, value or "") for name, value in headers.items()),
            users={user: str(hashed) for user, hashed in (self.basic_auth_users or {}).items()},
        )


_KINDS = {
    "string_type": "a string",
    "bool_type": "a boolean",
    "list_type": "a list of strings",  # client_allowed_sans, the only list
    "dict_type": "a mapping",
    "model_type": "a mapping",
}


def _describe_errors(exc: ValidationError) -> str:
    """Each problem naming its key (``tls_server_config.cert_file must be a string, not int``)."""
    problems = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        if error["type"] == "web_config":
            problems.append(str((error.get("ctx") or {})["message"]))
        elif error["type"] == "extra_forbidden":
            section = _dotted(loc[:-1]) or "the top level"
            problems.append(f"unknown key {loc[-1]!r} in {section}")
        elif error["type"] in _KINDS:
            kind = _KINDS[error["type"]]
            where = _dotted(loc) or "the top level"
            got = "" if error["type"] == "bool_type" else f", not {type(error['input']).__name__}"
            problems.append(f"{where} must be {kind}{got}")
        else:
            problems.append(f"{_dotted(loc) or 'the top level'}: {error['msg']}")
    return "; ".join(problems)


def _dotted(loc: list[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out
