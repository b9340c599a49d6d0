"""The HTTP server: endpoints, content negotiation, exporter-toolkit web config (basic auth, TLS)."""

from __future__ import annotations

import base64
import gzip
import http.client
import logging
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.samples import Exemplar

from exporter import __version__
from exporter.web import MetricsServer, WebConfigError, load_toolkit_config
from exporter.web.server import send_parts
from exporter.web.toolkit import ToolkitConfigFile

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def get(
    server: MetricsServer,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> Reply:
    """One request on a fresh connection, without any decoding (gzip stays gzip)."""
    conn: http.client.HTTPConnection
    if server.url.startswith("https"):
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=5, context=context)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bcrypt_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


class ExemplarCollector:
    """A histogram with an exemplar, as the task-duration histogram carries a trace id."""

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily("demo_duration_seconds", "A demo histogram.", labels=["site_id"])
        family.add_metric(
            ["s1"],
            buckets=[("1.0", 1.0, Exemplar({"trace_id": TRACE_ID}, 0.5, 1700000000.0)), ("+Inf", 2.0)],
            sum_value=3.5,
        )
        yield family


def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    Counter("demo_requests", "Demo requests.", registry=reg).inc(3)
    Counter("demo_other", "Another counter.", registry=reg).inc()
    reg.register(ExemplarCollector())
    return reg


Start = Callable[..., Awaitable[MetricsServer]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start servers on 127.0.0.1:0 with a fresh registry; all stopped at teardown."""
    servers: list[MetricsServer] = []

    async def _start(**kwargs: Any) -> MetricsServer:
        server = MetricsServer(
            registry=kwargs.pop("registry", None) or registry(), listen=("127.0.0.1", 0), **kwargs
        )
        await server.start()
        servers.append(server)
        return server

    yield _start
    for server in servers:
        await server.stop()


# --- endpoints ---------------------------------------------------------------------------------


async def test_metrics_text_format_by_default_without_exemplars(start: Start) -> None:
    server = await start()
    reply = get(server, "/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "demo_requests_total 3.0" in reply.text
    assert 'demo_duration_seconds_bucket{le="1.0",site_id="s1"} 1.0' in reply.text
    assert TRACE_ID not in reply.text


async def test_metrics_openmetrics_when_asked_shows_exemplars(start: Start) -> None:
    server = await start()
    reply = get(server, "/metrics", headers={"Accept": OPENMETRICS})
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert f'# {{trace_id="{TRACE_ID}"}} 0.5' in reply.text
    assert reply.text.endswith("# EOF\n")


async def test_metrics_gzip_round_trip(start: Start) -> None:
    server = await start()
    reply = get(server, "/metrics", headers={"Accept-Encoding": "gzip, deflate"})
    assert reply.headers["Content-Encoding"] == "gzip"
    assert int(reply.headers["Content-Length"]) == len(reply.body)
    assert "demo_requests_total 3.0" in gzip.decompress(reply.body).decode()
    assert "Content-Encoding" not in get(server, "/metrics").headers


async def test_metrics_name_filter(start: Start) -> None:
    server = await start()
    text = get(server, "/metrics?name[]=demo_other_total").text
    assert "demo_other_total 1.0" in text
    assert "demo_requests" not in text
    assert "demo_duration" not in text


async def test_head_has_headers_but_no_body(start: Start) -> None:
    server = await start()
    reply = get(server, "/metrics", method="HEAD")
    assert reply.status == 200
    assert reply.body == b""
    assert int(reply.headers["Content-Length"]) == len(get(server, "/metrics").body)


async def test_healthz_follows_the_health_check(start: Start) -> None:
    healthy = [True]
    server = await start(health=lambda: healthy[0])
    assert (get(server, "/healthz").status, get(server, "/healthz").text) == (200, "ok\n")
    healthy[0] = False
    assert get(server, "/healthz").status == 503


async def test_readyz_before_and_after_ready(start: Start) -> None:
    ready = [False]
    server = await start(ready=lambda: ready[0])
    reply = get(server, "/readyz")
    assert reply.status == 503
    assert reply.text.startswith("not ready: ")
    ready[0] = True
    reply = get(server, "/readyz")
    assert (reply.status, reply.text) == (200, "ready\n")


async def test_a_failing_readiness_check_is_not_ready(start: Start) -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    server = await start(ready=broken)
    assert get(server, "/readyz").status == 503


async def test_index_page_links_the_endpoints(start: Start) -> None:
    server = await start(title="Test <exporter>")
    reply = get(server, "/")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/html")
    assert "<title>Test &lt;exporter&gt;</title>" in reply.text
    assert __version__ in reply.text
    for path in ("metrics", "healthz", "readyz"):
        assert f'href="{path}"' in reply.text


async def test_unknown_path_is_404_and_other_methods_405(start: Start) -> None:
    server = await start()
    assert get(server, "/nope").status == 404
    reply = get(server, "/metrics", method="POST")
    assert reply.status == 405
    assert reply.headers["Allow"] == "GET, HEAD"
    assert get(server, "/healthz", method="DELETE").status == 405


async def test_stop_releases_the_port(start: Start) -> None:
    server = await start()
    port = server.port
    assert server.url == f"http://127.0.0.1:{port}"
    await server.stop()
    await server.stop()  # idempotent
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    again = MetricsServer(registry=registry(), listen=("127.0.0.1", port))
    await again.start()
    try:
        assert get(again, "/healthz").status == 200
    finally:
        await again.stop()


async def test_a_taken_port_raises_oserror() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = MetricsServer(registry=registry(), listen=("127.0.0.1", sock.getsockname()[1]))
        with pytest.raises(OSError):
            await server.start()


# --- basic auth and headers --------------------------------------------------------------------


def write_web_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


async def test_basic_auth(start: Start, tmp_path: Path) -> None:
    config = write_web_config(tmp_path / "web.yml", f"basic_auth_users:\n  alice: {bcrypt_hash('secret')}\n")
    server = await start(web_config_file=config)

    anonymous = get(server, "/metrics")
    assert anonymous.status == 401
    assert anonymous.headers["WWW-Authenticate"] == "Basic"
    assert anonymous.text.startswith("Unauthorized")
    assert get(server, "/metrics", headers=basic("alice", "wrong")).status == 401
    assert get(server, "/metrics", headers=basic("mallory", "secret")).status == 401
    assert get(server, "/metrics", headers={"Authorization": "Basic !!!"}).status == 401
    assert get(server, "/metrics", headers=basic("alice", "secret")).status == 200
    assert get(server, "/metrics", headers=basic("alice", "secret")).status == 200  # cached
    # Everything is protected, probes included, as in exporter-toolkit.
    for path in ("/healthz", "/readyz", "/", "/nope"):
        assert get(server, path).status == 401


async def test_password_change_applies_without_restart(start: Start, tmp_path: Path) -> None:
    config = write_web_config(tmp_path / "web.yml", f"basic_auth_users:\n  alice: {bcrypt_hash('old')}\n")
    server = await start(web_config_file=config)
    assert get(server, "/metrics", headers=basic("alice", "old")).status == 200

    write_web_config(config, f"basic_auth_users:\n  alice: {bcrypt_hash('new')}\n")
    assert get(server, "/metrics", headers=basic("alice", "old")).status == 401
    assert get(server, "/metrics", headers=basic("alice", "new")).status == 200


async def test_config_broken_at_runtime_gives_500_and_a_log_line(
    start: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_web_config(tmp_path / "web.yml", f"basic_auth_users:\n  alice: {bcrypt_hash('pw')}\n")
    server = await start(web_config_file=config)
    write_web_config(config, "basic_auth_users: [unclosed\n")
    with caplog.at_level(logging.ERROR, logger="exporter.web"):
        assert get(server, "/metrics", headers=basic("alice", "pw")).status == 500
    assert "unable to parse web configuration" in caplog.messages

    write_web_config(config, f"basic_auth_users:\n  alice: {bcrypt_hash('pw')}\n")
    assert get(server, "/metrics", headers=basic("alice", "pw")).status == 200


async def test_configured_headers_are_sent(start: Start, tmp_path: Path) -> None:
    config = write_web_config(
        tmp_path / "web.yml",
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n",
    )
    server = await start(web_config_file=config)
    reply = get(server, "/metrics")
    assert reply.headers["X-Frame-Options"] == "deny"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


# --- bad web configs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  bogus: 1\n", "unknown key 'bogus'"),
        ("nonsense: true\n", "unknown key 'nonsense'"),
        ("tls_server_config:\n  cert_file: a.crt\n", "key_file is missing"),
        ("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n", "cannot load cert_file"),
        (
            "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  client_auth_type: Sometimes\n",
            "invalid tls_server_config.client_auth_type 'Sometimes'",
        ),
        (
            "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  client_ca_file: ca.crt\n",
            "client_ca_file is set but client_auth_type is NoClientCert",
        ),
        (
            "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  min_version: TLS99\n",
            "invalid tls_server_config.min_version",
        ),
        ("basic_auth_users:\n  alice: not-a-hash\n", "basic_auth_users.alice is not a valid bcrypt hash"),
        ("basic_auth_users: [unclosed\n", "invalid YAML"),
        ("http_server_config:\n  headers:\n    Server: mine\n", "HTTP header 'Server' can not be configured"),
        ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "invalid value 'allow'"),
        ("- a list\n", "must be a mapping"),
        # Strict types and unsupported keys, each naming the key.
        (
            "tls_server_config:\n  cert_file: 1\n  key_file: a.key\n",
            "tls_server_config.cert_file must be a string, not int",
        ),
        (
            "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  prefer_server_cipher_suites: 'yes'\n",
            "tls_server_config.prefer_server_cipher_suites must be a boolean",
        ),
        (
            "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  cert: inline\n",
            "'cert' in tls_server_config is not supported by this exporter",
        ),
        ("rate_limit: {}\n", "'rate_limit' in the top level is not supported by this exporter"),
        ("http_server_config: {http2: 1}\n", "http_server_config.http2 must be a boolean"),
        ("tls_server_config: [a]\n", "tls_server_config must be a mapping, not list"),
        # One YAML loader for every file: a key given twice is an error, not "the last one wins".
        ("basic_auth_users: {}\nbasic_auth_users: {}\n", "line 2, column 1: invalid YAML: duplicate key"),
    ],
)
async def test_bad_web_config_names_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    config = write_web_config(tmp_path / "web.yml", text)
    with pytest.raises(WebConfigError) as error:
        load_toolkit_config(config)
    assert problem in str(error.value)
    assert str(config) in str(error.value)
    with pytest.raises(WebConfigError):
        await MetricsServer(registry=registry(), listen=("127.0.0.1", 0), web_config_file=config).start()


def test_yaml_errors_do_not_quote_the_file(tmp_path: Path) -> None:
    hashed = bcrypt_hash("pw")
    config = write_web_config(tmp_path / "web.yml", f"basic_auth_users: [{hashed}\n")
    with pytest.raises(WebConfigError, match="invalid YAML") as error:
        load_toolkit_config(config)
    assert hashed not in str(error.value)
    assert error.value.__suppress_context__  # a traceback does not show PyYAML's quoting message


def test_the_file_is_parsed_again_only_when_its_text_changed(tmp_path: Path) -> None:
    path = write_web_config(tmp_path / "web.yml", f"basic_auth_users:\n  alice: {bcrypt_hash('pw')}\n")
    file = ToolkitConfigFile(path)
    first = file.current()
    assert file.current() is first
    write_web_config(path, f"basic_auth_users:\n  bob: {bcrypt_hash('pw')}\n")
    assert list(file.current().users) == ["bob"]
    write_web_config(path, "basic_auth_users: alice\n")
    with pytest.raises(WebConfigError, match="basic_auth_users must be a mapping, not str"):
        file.current()


def test_missing_web_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError, match="cannot read"):
        load_toolkit_config(tmp_path / "absent.yml")


def test_no_web_config_is_plain_http_without_auth(tmp_path: Path) -> None:
    assert load_toolkit_config(None).tls is None
    assert not load_toolkit_config(None).users
    assert load_toolkit_config(write_web_config(tmp_path / "web.yml", "")).tls is None
    assert load_toolkit_config(write_web_config(tmp_path / "web2.yml", "tls_server_config: {}\n")).tls is None


# --- TLS ---------------------------------------------------------------------------------------


@dataclass
class PKI:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all EC for speed."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed; TLS tests need it to make certificates")
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip
    for name, extensions in (
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "subjectAltName=DNS:scraper.example\nextendedKeyUsage=clientAuth\n"),
    ):
        (d / f"{name}.ext").write_text(extensions + "authorityKeyIdentifier=keyid\n")
        openssl(
            "req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d
        )
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
            cwd=d,
        )  # fmt: skip
    return PKI(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key")


def client_context(pki: PKI, *, with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if with_cert:
        context.load_cert_chain(pki.client_cert, pki.client_key)
    return context


def tls_config(tmp_path: Path, pki: PKI, extra: str = "") -> Path:
    return write_web_config(
        tmp_path / "web.yml",
        f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n{extra}",
    )


async def test_tls_serves_https_and_refuses_plain_http(start: Start, tmp_path: Path, pki: PKI) -> None:
    server = await start(web_config_file=tls_config(tmp_path, pki))
    assert server.url.startswith("https://")

    reply = get(server, "/metrics", context=client_context(pki))
    assert reply.status == 200
    assert "demo_requests_total" in reply.text

    plain = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        plain.request("GET", "/metrics")
        answer = plain.getresponse()
        assert answer.status == 400
        assert b"demo_requests" not in answer.read()
    except (OSError, http.client.HTTPException):
        pass  # refusing the connection is as good
    finally:
        plain.close()


async def test_tls_relative_paths_resolve_against_the_config_file(
    start: Start, tmp_path: Path, pki: PKI
) -> None:
    for file in (pki.server_cert, pki.server_key):
        shutil.copy(file, tmp_path / file.name)
    config = write_web_config(
        tmp_path / "web.yml", "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    )
    server = await start(web_config_file=config)
    assert get(server, "/healthz", context=client_context(pki)).status == 200


def served_certificate(server: MetricsServer, pki: PKI) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cert = tls.getpeercert(binary_form=True)
    assert cert is not None
    return cert


async def test_rotated_certificate_is_served_without_restart(start: Start, tmp_path: Path, pki: PKI) -> None:
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    config = write_web_config(
        tmp_path / "web.yml", "tls_server_config: {cert_file: server.crt, key_file: server.key}\n"
    )
    server = await start(web_config_file=config)
    before = served_certificate(server, pki)

    # Re-issue from the same CSR and key: a new serial, so a different certificate.
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", "server.ext",
        cwd=pki.ca.parent,
    )  # fmt: skip
    after = served_certificate(server, pki)
    assert after != before
    assert after == ssl.PEM_cert_to_DER_cert(cert.read_text())


async def test_require_and_verify_client_cert(start: Start, tmp_path: Path, pki: PKI) -> None:
    extra = f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki.ca}\n"
    server = await start(web_config_file=tls_config(tmp_path, pki, extra))

    with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
        get(server, "/metrics", context=client_context(pki))
    reply = get(server, "/metrics", context=client_context(pki, with_cert=True))
    assert reply.status == 200
    assert "demo_requests_total" in reply.text


async def test_client_allowed_sans(start: Start, tmp_path: Path, pki: PKI) -> None:
    base = f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki.ca}\n"
    config = tls_config(tmp_path, pki, base + "  client_allowed_sans: [someone.else]\n")
    server = await start(web_config_file=config)
    with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
        get(server, "/metrics", context=client_context(pki, with_cert=True))

    # The TLS section is re-read per handshake: allowing the SAN needs no restart.
    tls_config(tmp_path, pki, base + "  client_allowed_sans: [scraper.example]\n")
    assert get(server, "/metrics", context=client_context(pki, with_cert=True)).status == 200


async def test_tls_and_basic_auth_together(start: Start, tmp_path: Path, pki: PKI) -> None:
    config = tls_config(tmp_path, pki, f"basic_auth_users:\n  alice: {bcrypt_hash('pw')}\n")
    server = await start(web_config_file=config)
    assert get(server, "/metrics", context=client_context(pki)).status == 401
    assert get(server, "/metrics", context=client_context(pki), headers=basic("alice", "pw")).status == 200


async def test_require_any_client_cert_is_rejected_clearly(tmp_path: Path, pki: PKI) -> None:
    config = tls_config(tmp_path, pki, "  client_auth_type: RequireAnyClientCert\n")
    with pytest.raises(WebConfigError, match="not supported"):
        load_toolkit_config(config)


async def test_unreadable_key_is_named(tmp_path: Path, pki: PKI) -> None:
    (tmp_path / "garbage.key").write_text("not a key\n")
    config = write_web_config(
        tmp_path / "web.yml", f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: garbage.key\n"
    )
    with pytest.raises(WebConfigError, match="cannot load cert_file"):
        load_toolkit_config(config)


class _Trickle:
    """A socket whose ``sendmsg`` takes at most ``most`` bytes a call, as a full send buffer does."""

    def __init__(self, most: int) -> None:
        self.most, self.out, self.calls = most, bytearray(), 0

    def sendmsg(self, buffers: list[bytes | memoryview]) -> int:
        assert len(buffers) <= 512  # never more than IOV_MAX allows
        self.calls += 1
        data = b"".join(bytes(b) for b in buffers)[: self.most]
        self.out += data
        return len(data)


@pytest.mark.parametrize("most", [1, 7, 4096, 1 << 30])
def test_vectored_send_delivers_every_byte_in_order_through_partial_sends(most: int) -> None:
    parts = [b"", b"a" * 3, b"", *(bytes([65 + i % 26]) * (i % 13 + 1) for i in range(1500)), b"end"]
    sock = _Trickle(most)
    send_parts(sock, parts)  # type: ignore[arg-type]
    assert bytes(sock.out) == b"".join(parts)
    if most >= 1 << 30:
        assert sock.calls == 3  # 1,502 non-empty parts, 512 buffers a call


def test_vectored_send_over_a_real_socket_with_a_small_send_buffer() -> None:
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    parts = [bytes([i % 251]) * (i * 37 % 9000) for i in range(2000)]
    received = bytearray()

    def read() -> None:
        while chunk := b.recv(1 << 16):
            received.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    send_parts(a, parts)
    a.close()
    reader.join(10)
    b.close()
    assert bytes(received) == b"".join(parts)
