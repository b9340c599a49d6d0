"""The exporter's HTTP server: ``/metrics``, ``/healthz``, ``/readyz`` and an index page.

Server choice: the standard library's ``ThreadingHTTPServer`` in a daemon thread, one thread per
connection, rather than an ASGI app in the event loop. A scrape then never waits for the poller and
the poller never waits for a render (collectors read in-memory state, and a ``CollectorRegistry``
is safe to collect from any thread), and the ``ssl`` module gives direct control of each TLS
handshake, which the exporter-toolkit behaviour below needs. A handful of scrapers is the load.

The web config (``--web.config.file``, the Prometheus exporter-toolkit format) is read:

* at :meth:`MetricsServer.start`, fully validated: YAML, keys, bcrypt hashes, headers, and that
  the certificate, key and client CA load. A bad file raises :class:`WebConfigError`; nothing
  listens. Whether the server speaks TLS at all is decided here, as in exporter-toolkit.
* on every HTTP request, for ``basic_auth_users`` and ``http_server_config.headers``, so a password
  change applies without a restart. A file broken at runtime answers 500 and logs
  "unable to parse web configuration"; the server keeps running.
* on every TLS handshake, for all of ``tls_server_config`` (certificate, key, client CA, client
  auth type, versions, allowed SANs): each connection is wrapped, in its own thread, with a context
  built from the file as it is then, cached while the section and the files' bytes are unchanged.
  Certificate rotation needs no restart.

Where Python's ``ssl`` module forces a difference from exporter-toolkit:

* ``RequestClientCert`` asks for no certificate (OpenSSL would verify any it asked for, and the
  exporter uses client certificates only for access control, which this mode does not give).
* ``RequireAnyClientCert`` / ``RequireClientCert`` (require a certificate without verifying it)
  cannot be expressed and are rejected; use ``RequireAndVerifyClientCert`` with ``client_ca_file``.
* ``cert``, ``key``, ``client_ca`` (inline PEM), ``cipher_suites``, ``curve_preferences`` and
  ``rate_limit`` are rejected as unsupported; ``http2`` and ``prefer_server_cipher_suites`` are
  accepted and ignored (HTTP/1.1 only; OpenSSL's defaults choose the cipher).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import html
import ipaddress
import logging
import re
import socket
import socketserver
import ssl
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import bcrypt
import prometheus_client
import yaml
from prometheus_client.exposition import generate_latest, gzip_accepted
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.exposition import EOF_MARKER, Format
from exporter.snapshot import EMPTY, Snapshot, chunked

log = logging.getLogger(__name__)

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

# Go's net/http answer to plain HTTP on a TLS port.
_PLAIN_HTTP_ON_TLS_PORT = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
_TLS_HANDSHAKE_RECORD = b"\x16"
_HANDSHAKE_TIMEOUT_SECONDS = 10.0
# Idle keep-alive connections and stalled clients give their thread back after this.
_CONNECTION_TIMEOUT_SECONDS = 120.0
_AUTH_CACHE_SIZE = 100
_TEXT = "text/plain; charset=utf-8"
NOT_READY_REASON = "waiting for the first successful discovery"


class WebConfigError(Exception):
    """The web config file is unreadable or invalid; the message names the file and the problem."""


@dataclass(frozen=True)
class TLSServerConfig:
    """``tls_server_config`` with paths resolved against the web config file's directory."""

    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    client_allowed_sans: tuple[str, ...] = ()


@dataclass(frozen=True)
class WebConfig:
    """A validated web config; the default (no file) is plain HTTP without authentication."""

    path: Path | None = None
    tls: TLSServerConfig | None = None
    headers: tuple[tuple[str, str], ...] = ()
    users: Mapping[str, str] = field(default_factory=dict)


def load_web_config(path: str | Path | None) -> WebConfig:
    """Read and fully validate a web config file, including that its TLS files load.

    ``None`` or an empty path means no file: plain HTTP, no authentication.

    Raises:
        WebConfigError: naming the file and the problem.
    """
    config = _parse_web_config(path)
    if config.tls is not None:
        _build_ssl_context(config.tls, config.path)
    return config


def _parse_web_config(path: str | Path | None) -> WebConfig:
    """Parse and check a web config without touching the files it names (the per-request read)."""
    if path is None or str(path) == "":
        return WebConfig()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WebConfigError(f"web config {path}: cannot read: {exc}") from exc
    try:
        raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise WebConfigError(f"web config {path}: invalid YAML: {exc}") from exc
    top = _section(path, "the top level", raw)
    _check_keys(
        path,
        "the top level",
        top,
        allowed={"tls_server_config", "http_server_config", "basic_auth_users"},
        unsupported={"rate_limit"},
    )
    return WebConfig(
        path=path,
        tls=_parse_tls(path, _section(path, "tls_server_config", top.get("tls_server_config"))),
        headers=_parse_http(path, _section(path, "http_server_config", top.get("http_server_config"))),
        users=_parse_users(path, _section(path, "basic_auth_users", top.get("basic_auth_users"))),
    )


def _section(path: Path, name: str, value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WebConfigError(f"web config {path}: {name} must be a mapping, not {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def _check_keys(
    path: Path, section: str, mapping: Mapping[str, Any], *, allowed: set[str], unsupported: set[str]
) -> None:
    for key in mapping:
        if key in unsupported:
            raise WebConfigError(f"web config {path}: {key!r} in {section} is not supported by this exporter")
        if key not in allowed:
            raise WebConfigError(f"web config {path}: unknown key {key!r} in {section}")


def _string(path: Path, where: str, value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise WebConfigError(f"web config {path}: {where} must be a string, not {type(value).__name__}")
    return value


def _parse_tls(path: Path, raw: dict[str, Any]) -> TLSServerConfig | None:
    section = "tls_server_config"
    _check_keys(
        path,
        section,
        raw,
        allowed={
            "cert_file",
            "key_file",
            "client_auth_type",
            "client_ca_file",
            "min_version",
            "max_version",
            "client_allowed_sans",
            "prefer_server_cipher_suites",
        },
        unsupported={"cert", "key", "client_ca", "cipher_suites", "curve_preferences"},
    )
    cert = _string(path, f"{section}.cert_file", raw.get("cert_file"))
    key = _string(path, f"{section}.key_file", raw.get("key_file"))
    auth = _string(path, f"{section}.client_auth_type", raw.get("client_auth_type"))
    ca = _string(path, f"{section}.client_ca_file", raw.get("client_ca_file"))
    if not (cert or key or auth or ca):
        return None  # an empty section means plain HTTP, as in exporter-toolkit
    if not cert:
        raise WebConfigError(f"web config {path}: {section}.cert_file is missing")
    if not key:
        raise WebConfigError(f"web config {path}: {section}.key_file is missing")
    auth = auth or "NoClientCert"
    if auth in _UNSUPPORTED_CLIENT_AUTH:
        raise WebConfigError(
            f"web config {path}: {section}.client_auth_type {auth} is not supported (Python's ssl module "
            "verifies every client certificate it requests); use RequireAndVerifyClientCert with client_ca_file"
        )
    if auth not in _CLIENT_AUTH_TYPES:
        raise WebConfigError(
            f"web config {path}: invalid {section}.client_auth_type {auth!r}, want one of "
            + ", ".join(_CLIENT_AUTH_TYPES)
        )
    if ca and auth == "NoClientCert":
        raise WebConfigError(
            f"web config {path}: {section}.client_ca_file is set but client_auth_type is NoClientCert"
        )
    min_version = _tls_version(path, f"{section}.min_version", raw.get("min_version"), "TLS12")
    max_version = _tls_version(path, f"{section}.max_version", raw.get("max_version"), "TLS13")
    if min_version > max_version:
        raise WebConfigError(f"web config {path}: {section}.min_version is above max_version")
    sans = raw.get("client_allowed_sans") or []
    if not isinstance(sans, list) or not all(isinstance(s, str) for s in sans):
        raise WebConfigError(f"web config {path}: {section}.client_allowed_sans must be a list of strings")
    if not isinstance(raw.get("prefer_server_cipher_suites", False), bool):
        raise WebConfigError(f"web config {path}: {section}.prefer_server_cipher_suites must be a boolean")
    base = path.parent
    return TLSServerConfig(
        cert_file=base / cert,
        key_file=base / key,
        client_auth_type=auth,
        client_ca_file=base / ca if ca else None,
        min_version=min_version,
        max_version=max_version,
        client_allowed_sans=tuple(sans),
    )


def _tls_version(path: Path, where: str, value: object, default: str) -> ssl.TLSVersion:
    name = _string(path, where, value) or default
    if name not in _TLS_VERSIONS:
        raise WebConfigError(
            f"web config {path}: invalid {where} {name!r}, want one of {', '.join(_TLS_VERSIONS)}"
        )
    return _TLS_VERSIONS[name]


def _parse_http(path: Path, raw: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    section = "http_server_config"
    _check_keys(path, section, raw, allowed={"headers", "http2"}, unsupported=set())
    if not isinstance(raw.get("http2", False), bool):
        raise WebConfigError(f"web config {path}: {section}.http2 must be a boolean")
    headers = _section(path, f"{section}.headers", raw.get("headers"))
    out: list[tuple[str, str]] = []
    for name, value in headers.items():
        if name not in _ALLOWED_HEADERS:
            raise WebConfigError(f"web config {path}: HTTP header {name!r} can not be configured")
        text = _string(path, f"{section}.headers.{name}", value)
        allowed = _ALLOWED_HEADERS[name]
        if allowed is not None and text not in allowed:
            raise WebConfigError(
                f"web config {path}: invalid value {text!r} for HTTP header {name}, want one of {', '.join(allowed)}"
            )
        if any(c in text for c in "\r\n\0"):
            raise WebConfigError(f"web config {path}: HTTP header {name} contains a line break")
        out.append((name, text))
    return tuple(out)


def _parse_users(path: Path, raw: dict[str, Any]) -> dict[str, str]:
    users: dict[str, str] = {}
    for user, hashed in raw.items():
        if not isinstance(hashed, str) or not _BCRYPT_HASH.match(hashed):
            raise WebConfigError(f"web config {path}: basic_auth_users.{user} is not a valid bcrypt hash")
        users[user] = hashed
    return users


def _build_ssl_context(tls: TLSServerConfig, path: Path | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = tls.min_version
    context.maximum_version = tls.max_version
    try:
        # A password callback, so an encrypted key fails here instead of prompting on the terminal.
        context.load_cert_chain(tls.cert_file, tls.key_file, password=lambda: b"")
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(
            f"web config {path}: cannot load cert_file {tls.cert_file} with key_file {tls.key_file}: {exc}"
        ) from exc
    if tls.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(
                f"web config {path}: cannot load client_ca_file {tls.client_ca_file}: {exc}"
            ) from exc
    elif tls.client_auth_type in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
        context.load_default_certs(ssl.Purpose.CLIENT_AUTH)  # Go verifies against the system roots too
    if tls.client_auth_type == "VerifyClientCertIfGiven":
        context.verify_mode = ssl.CERT_OPTIONAL
    elif tls.client_auth_type == "RequireAndVerifyClientCert":
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _ContextCache:
    """The TLS context for the current ``tls_server_config``, rebuilt when it or its files change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[TLSServerConfig, bytes] | None = None
        self._context: ssl.SSLContext | None = None

    def get(self, tls: TLSServerConfig, path: Path | None) -> ssl.SSLContext:
        digest = hashlib.sha256()
        for file in (tls.cert_file, tls.key_file, tls.client_ca_file):
            if file is not None:
                try:
                    digest.update(file.read_bytes())
                except OSError as exc:
                    raise WebConfigError(f"web config {path}: cannot read {file}: {exc}") from exc
            digest.update(b"\0")
        key = (tls, digest.digest())
        with self._lock:
            if self._key != key or self._context is None:
                self._context = _build_ssl_context(tls, path)
                self._key = key
            return self._context


class _BasicAuth:
    """bcrypt basic auth with exporter-toolkit's cache and user-enumeration defence."""

    def __init__(self) -> None:
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._cache_lock = threading.Lock()
        # One bcrypt at a time, as exporter-toolkit: wrong guesses cost one core at most.
        self._bcrypt_lock = threading.Lock()
        self._dummy_hashes: dict[int, bytes] = {}

    def prepare(self, users: Mapping[str, str]) -> None:
        """Make the dummy hashes now, so the first unknown user is not slower than later ones."""
        for hashed in users.values():
            self._dummy_hash(_bcrypt_cost(hashed))

    def check(self, users: Mapping[str, str], authorization: str | None) -> bool:
        credentials = _parse_basic_auth(authorization)
        if credentials is None:
            return False
        user, password = credentials
        hashed = users.get(user)
        if hashed is None:
            # Spend a bcrypt check anyway, at the configured cost, so timing does not reveal who exists.
            with self._bcrypt_lock:
                target = self._dummy_hash(max(_bcrypt_cost(h) for h in users.values()))
                _checkpw(password, target)
            return False
        key = hashlib.sha256(
            b"\0".join((user.encode("utf-8", "surrogateescape"), hashed.encode(), password))
        ).digest()
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return True
        with self._bcrypt_lock:
            ok = _checkpw(password, hashed.encode())
        if ok:
            with self._cache_lock:
                self._cache[key] = None
                while len(self._cache) > _AUTH_CACHE_SIZE:
                    self._cache.popitem(last=False)
        return ok

    def _dummy_hash(self, cost: int) -> bytes:
        if cost not in self._dummy_hashes:
            self._dummy_hashes[cost] = bcrypt.hashpw(b"fakepassword", bcrypt.gensalt(rounds=cost))
        return self._dummy_hashes[cost]


def _bcrypt_cost(hashed: str) -> int:
    return int(hashed.split("$")[2])


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # longer than bcrypt's 72 bytes, or a malformed hash
        return False


def _parse_basic_auth(header: str | None) -> tuple[str, bytes] | None:
    """``Authorization: Basic base64(user:password)`` as Go's ``Request.BasicAuth`` reads it."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return user.decode("utf-8", "surrogateescape"), password


def _san_allowed(peer: Mapping[str, Any] | None, allowed: Iterable[str]) -> bool:
    """Whether the verified client certificate has one of ``client_allowed_sans``."""
    wanted = {_normalize_san(s) for s in allowed}
    for _kind, value in (peer or {}).get("subjectAltName", ()):
        if _normalize_san(str(value)) in wanted:
            return True
    return False


def _normalize_san(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return value


# gzip level of /metrics bodies: level 1 is several times faster than 6 for a body a few percent
# larger (benchmarks/render.py measures both; the README has the figures).
GZIP_LEVEL = 1
GZIP_WBITS = 31  # zlib's window bits for a gzip header and trailer (RFC 1952)


class MetricsServer:
    """Serves ``/metrics`` plus ``/healthz``, ``/readyz`` and an index page.

    Runs its own threads: they read only the latest published :class:`Snapshot` (immutable) and
    the thread-safe process collectors of ``registry``; see :mod:`exporter.snapshot`.

    Args:
        snapshot: returns the latest published snapshot.
        registry: extra collectors (process, platform, GC), rendered after the snapshot.
        listen: ``(host, port)``; port 0 binds an ephemeral port (see :attr:`port`).
        web_config_file: exporter-toolkit web config (TLS, basic auth, headers), or None.
        ready: ``/readyz`` answers 200 once this returns True.
        health: ``/healthz`` answers 200 while this returns True.
        title: heading of the index page.
    """

    def __init__(
        self,
        snapshot: Callable[[], Snapshot] = lambda: EMPTY,
        registry: prometheus_client.CollectorRegistry | None = None,
        *,
        listen: tuple[str, int],
        gzip_level: int = GZIP_LEVEL,
        web_config_file: str | Path | None = None,
        ready: Callable[[], bool] = lambda: True,
        health: Callable[[], bool] = lambda: True,
        title: str = "NICo task exporter",
    ) -> None:
        self.snapshot = snapshot
        self.registry = registry or prometheus_client.CollectorRegistry(auto_describe=False)
        self.gzip_level = gzip_level
        self.listen = listen
        self.web_config_file = Path(web_config_file) if web_config_file not in (None, "") else None
        self.ready = ready
        self.health = health
        self.title = title
        self.tls = False
        self.auth = _BasicAuth()
        self._contexts = _ContextCache()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        """Validate the web config and start listening.

        Raises:
            WebConfigError: the web config file is invalid (nothing listens).
            OSError: the address cannot be bound.
        """
        if self._httpd is not None:
            raise RuntimeError("MetricsServer already started")
        # Off the loop: reading files, loading certificates and bcrypt take milliseconds.
        config = await asyncio.to_thread(load_web_config, self.web_config_file)
        await asyncio.to_thread(self.auth.prepare, config.users)
        self.tls = config.tls is not None
        self._httpd = _HTTPServer(self.listen, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="metrics-server",
            daemon=True,
        )
        self._thread.start()

    async def stop(self) -> None:
        """Stop listening, close open connections and release the port; safe to call twice."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd = self._thread = None
        await asyncio.to_thread(httpd.shutdown)
        httpd.server_close()
        httpd.close_connections()
        if thread is not None:
            await asyncio.to_thread(thread.join, 5.0)

    @property
    def port(self) -> int:
        """The bound port (useful with listen port 0)."""
        if self._httpd is None:
            raise RuntimeError("MetricsServer not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http(s)://host:port`` reaching this server from this machine."""
        host = self.listen[0]
        if host in ("", "0.0.0.0"):  # noqa: S104 - comparing, not binding
            host = "127.0.0.1"
        elif host == "::":
            host = "[::1]"
        elif ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def current_config(self) -> WebConfig:
        """The web config as the file says now (re-read on every request, as Go exporters do)."""
        return _parse_web_config(self.web_config_file)

    def handshake(self, sock: socket.socket) -> ssl.SSLSocket | None:
        """Wrap an accepted connection in TLS with the current config; None if it was refused."""
        sock.settimeout(_HANDSHAKE_TIMEOUT_SECONDS)
        try:
            first = sock.recv(1, socket.MSG_PEEK)
            if first and first != _TLS_HANDSHAKE_RECORD:
                # Consume the request first: closing with unread data resets the connection, and the
                # client would see the reset instead of the answer.
                sock.recv(65536)
                sock.sendall(_PLAIN_HTTP_ON_TLS_PORT)
                return None
        except OSError:
            return None
        if not first:
            return None
        try:
            config = self.current_config()
            if config.tls is None:
                raise WebConfigError(
                    f"web config {config.path}: tls_server_config is gone, TLS was on at start"
                )
            context = self._contexts.get(config.tls, config.path)
        except WebConfigError as exc:
            log.error("unable to parse web configuration", extra={"reason": str(exc)})
            return None
        try:
            conn = context.wrap_socket(sock, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.debug("TLS handshake failed", extra={"reason": str(exc)})
            return None
        if config.tls.client_allowed_sans and not _san_allowed(
            conn.getpeercert(), config.tls.client_allowed_sans
        ):
            log.info("client certificate has no allowed SAN")
            conn.close()
            return None
        return conn


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], owner: MetricsServer) -> None:
        self.owner = owner
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on DNS; we never use it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Per connection, in its own thread: the TLS handshake (if any), then HTTP."""
        conn: socket.socket = request
        self._track(conn, add=True)
        try:
            if self.owner.tls:
                wrapped = self.owner.handshake(conn)
                if wrapped is None:
                    return
                self._track(conn, add=False)
                conn = wrapped
                self._track(conn, add=True)
            conn.settimeout(_CONNECTION_TIMEOUT_SECONDS)
            self.finish_request(conn, client_address)
        except Exception:
            self.handle_error(conn, client_address)
        finally:
            self._track(conn, add=False)
            self.shutdown_request(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection error", exc_info=True, extra={"client": str(client_address)})

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def close_connections(self) -> None:
        """Cut open (keep-alive) connections so no request is served after stop."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            _close(conn)


def _close(conn: socket.socket) -> None:
    # socket.socket's own shutdown: SSLSocket's would tear down TLS state under another thread.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(conn, socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive for scrapers; every response has a Content-Length
    server_version = f"nico-task-exporter/{__version__}"
    sys_version = ""

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("http server", extra={"detail": format % args})

    def _serve(self) -> None:
        self._config_headers: tuple[tuple[str, str], ...] = ()
        if self.command not in ("GET", "HEAD"):
            self.close_connection = True  # any request body stays unread
        owner = self.server.owner
        try:
            config = owner.current_config()
        except WebConfigError as exc:
            log.error("unable to parse web configuration", extra={"reason": str(exc)})
            self._send(500, b"Internal Server Error\n")
            return
        self._config_headers = config.headers
        if config.users and not owner.auth.check(config.users, self.headers.get("Authorization")):
            self._send(401, b"Unauthorized\n", extra={"WWW-Authenticate": "Basic"})
            return
        url = urlsplit(self.path)
        route = _ROUTES.get(url.path)
        if route is None:
            self._send(404, b"404 page not found\n")
            return
        if self.command not in ("GET", "HEAD"):
            self._send(405, b"Method Not Allowed\n", extra={"Allow": "GET, HEAD"})
            return
        route(self, url.query)

    def _metrics(self, query: str) -> None:
        owner = self.server.owner
        fmt = Format.for_accept(self.headers.get("Accept", ""))
        names = parse_qs(query).get("name[]")
        try:
            body = owner.snapshot().parts(fmt, names=names, extra=_standard(owner.registry, fmt, names))
        except Exception:
            log.exception("metrics rendering failed")
            self._send(500, b"An error has occurred while serving metrics.\n")
            return
        extra = {}
        if gzip_accepted(self.headers.get("Accept-Encoding", "")):
            # Chunk by chunk: zlib lets go of the interpreter lock while it deflates each one.
            compressor = zlib.compressobj(owner.gzip_level, zlib.DEFLATED, GZIP_WBITS)
            body = [compressor.compress(chunk) for chunk in chunked(body)]
            body.append(compressor.flush())
            extra["Content-Encoding"] = "gzip"
        self._send(200, body, content_type=fmt.content_type, extra=extra)

    def _healthz(self, _query: str) -> None:
        if _probe(self.server.owner.health, "health"):
            self._send(200, b"ok\n")
        else:
            self._send(503, b"unhealthy\n")

    def _readyz(self, _query: str) -> None:
        if _probe(self.server.owner.ready, "readiness"):
            self._send(200, b"ready\n")
        else:
            self._send(503, f"not ready: {NOT_READY_REASON}\n".encode())

    def _index(self, _query: str) -> None:
        title = html.escape(self.server.owner.title)
        links = "".join(
            f'<li><a href="{path}">{path}</a> {what}</li>'
            for path, what in (
                ("metrics", "Prometheus metrics"),
                ("healthz", "liveness"),
                ("readyz", "readiness (after the first successful discovery)"),
            )
        )
        page = (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{title}</title></head><body><h1>{title}</h1>"
            f"<p>Version {html.escape(__version__)}</p><ul>{links}</ul></body></html>\n"
        )
        self._send(200, page.encode(), content_type="text/html; charset=utf-8")

    def _send(
        self,
        status: int,
        body: bytes | list[bytes],
        *,
        content_type: str = _TEXT,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        """Answer with ``body`` (or its pieces, sent in chunks of about 1 MB)."""
        parts = [body] if isinstance(body, bytes) else body
        self.send_response(status)
        for name, value in self._config_headers:
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(sum(len(part) for part in parts)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            for chunk in chunked(parts):
                self.wfile.write(chunk)


_ROUTES: dict[str, Callable[[_Handler, str], None]] = {
    "/": _Handler._index,
    "/metrics": _Handler._metrics,
    "/healthz": _Handler._healthz,
    "/readyz": _Handler._readyz,
}


def _standard(registry: prometheus_client.CollectorRegistry, fmt: Format, names: list[str] | None) -> bytes:
    """The process, platform and GC collectors (thread-safe), in ``fmt``, without ``# EOF``."""
    target: Collector = registry.restricted_registry(names) if names else registry
    if fmt is Format.OPENMETRICS:
        body = generate_openmetrics(target)  # type: ignore[no-untyped-call]
        return bytes(body).removesuffix(EOF_MARKER)
    return bytes(generate_latest(target))


def _probe(check: Callable[[], bool], what: str) -> bool:
    try:
        return bool(check())
    except Exception:
        log.exception("probe check failed", extra={"probe": what})
        return False
