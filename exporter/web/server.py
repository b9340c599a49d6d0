"""The exporter's HTTP server: ``/metrics``, ``/healthz``, ``/readyz`` and an index page.

Server choice: the standard library's ``ThreadingHTTPServer`` in a daemon thread, one thread per
connection, rather than an ASGI app in the event loop. A scrape then never waits for the poller and
the poller never waits for a render (collectors read in-memory state, and a ``CollectorRegistry``
is safe to collect from any thread), and the ``ssl`` module gives direct control of each TLS
handshake, which the exporter-toolkit behaviour below needs. A handful of scrapers is the load.

The web config (``--web.config.file``, the Prometheus exporter-toolkit format) is read:

* at :meth:`MetricsServer.start`, fully validated: YAML, keys, bcrypt hashes, headers, and that
  the certificate, key and client CA load. A bad file raises
  :class:`~exporter.web.toolkit.WebConfigError`; nothing listens. Whether the server speaks TLS
  at all is decided here, as in exporter-toolkit.
* on every HTTP request, for ``basic_auth_users`` and ``http_server_config.headers``, so a password
  change applies without a restart (the file is read each time, parsed again when its text
  changed). A file broken at runtime answers 500 and logs "unable to parse web configuration";
  the server keeps running.
* on every TLS handshake, for all of ``tls_server_config`` (certificate, key, client CA, client
  auth type, versions, allowed SANs): each connection is wrapped, in its own thread, with a context
  built from the file as it is then, cached while the section and the files' bytes are unchanged.
  Certificate rotation needs no restart.

The file's format is :mod:`exporter.web.toolkit`; TLS contexts are :mod:`exporter.web.tls`; basic
auth is :mod:`exporter.web.basic_auth`.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import socket
import socketserver
import ssl
import threading
import zlib
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import prometheus_client
from prometheus_client.exposition import generate_latest, gzip_accepted
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.exposition import EOF_MARKER, Format
from exporter.snapshot import EMPTY, Snapshot, chunked
from exporter.web.basic_auth import BasicAuth
from exporter.web.tls import ContextCache, san_allowed
from exporter.web.toolkit import ToolkitConfig, ToolkitConfigFile, WebConfigError, load_toolkit_config

# The package's name, as before the split: the logger is a field of every log line.
log = logging.getLogger("exporter.web")

# Go's net/http answer to plain HTTP on a TLS port.
_PLAIN_HTTP_ON_TLS_PORT = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
_TLS_HANDSHAKE_RECORD = b"\x16"
_HANDSHAKE_TIMEOUT_SECONDS = 10.0
# Idle keep-alive connections and stalled clients give their thread back after this.
_CONNECTION_TIMEOUT_SECONDS = 120.0
_TEXT = "text/plain; charset=utf-8"
NOT_READY_REASON = "waiting for the first successful discovery"


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
        self._web_config = ToolkitConfigFile(self.web_config_file)
        self.ready = ready
        self.health = health
        self.title = title
        self.tls = False
        self.auth = BasicAuth()
        self._contexts = ContextCache()
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
        config = await asyncio.to_thread(load_toolkit_config, self.web_config_file)
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

    def current_config(self) -> ToolkitConfig:
        """The web config as the file says now (re-read on every request, as Go exporters do)."""
        return self._web_config.current()

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
            context = config.ssl_context(self._contexts)
        except WebConfigError as exc:
            log.error("unable to parse web configuration", extra={"reason": str(exc)})
            return None
        try:
            conn = context.wrap_socket(sock, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.debug("TLS handshake failed", extra={"reason": str(exc)})
            return None
        if config.tls.client_allowed_sans and not san_allowed(
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
        if self.command == "HEAD":
            return
        if isinstance(self.connection, ssl.SSLSocket):
            for chunk in chunked(parts):  # TLS has no vectored send: about 1 MB per write
                self.wfile.write(chunk)
        else:
            send_parts(self.connection, parts)


# Buffers per sendmsg call (Linux's IOV_MAX is 1024).
_IOV = 512


def send_parts(sock: socket.socket, parts: list[bytes]) -> None:
    """Send ``parts`` as they are, with vectored writes (``sendmsg``): a 30 MB body goes out
    without being joined, so the thread holds the interpreter lock only to hand the kernel the
    buffers' addresses, not to copy them (the kernel copies, without the lock)."""
    pending: list[bytes | memoryview] = [part for part in parts if part]
    start = 0
    while start < len(pending):
        sent = sock.sendmsg(pending[start : start + _IOV])
        while sent:
            head = len(pending[start])
            if sent >= head:
                sent -= head
                start += 1
            else:
                pending[start] = memoryview(pending[start])[sent:]
                sent = 0


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
