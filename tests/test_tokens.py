"""Every token source against the simulator's identity providers, over real sockets.

The client (:class:`~exporter.client.NicoClient`) talks to the simulator served by uvicorn on
127.0.0.1; OIDC and NGC sources reach the simulator's Keycloak token endpoint and NGC exchange the
same way. Independent expectations: what the simulator's NICo answered (its request log and each
call's status), the grants its identity provider was asked for, the Go and Keycloak behaviour the
simulator cites (docs/simulator.md, "Identity providers"), nicocli's (rest-api/cli/pkg/auth.go,
client.go), and exporter/credentials.py's back-off schedule on a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from exporter.auth import StaticToken, TokenFile, TokenSource, jwt_lifetime, refresh_after
from exporter.client import ClientHooks, NicoClient, RequestEvent, RetryPolicy
from exporter.credentials import BACKOFF, Credentials
from exporter.errors import AuthError, CredentialsRefused, NicoError, Unauthorized
from exporter.ngc import NgcApiKey
from exporter.oidc import OidcToken
from exporter.simulator import ScenarioConfig, Simulation, SimulatorConfig, create_app
from exporter.simulator.idp import NGC_TOKEN_PATH
from exporter.tokencommand import TokenCommand
from tests.builders import ORG
from tests.servers import serve_app

TOKEN_PATH = "/realms/nico/protocol/openid-connect/token"
FAST = RetryPolicy(max_attempts=2, base_delay_s=0.0, max_delay_s=0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def token_of(source: TokenSource) -> str | None:
    async with httpx.AsyncClient() as http:
        return await source.token(http)


@dataclass
class Seen(httpx.AsyncBaseTransport):
    """The network, recording each identity-provider request: (path, grant_type, status).

    Shared by the short-lived clients the sources make, so closing one of them leaves it open.
    """

    inner: httpx.AsyncHTTPTransport = field(default_factory=httpx.AsyncHTTPTransport)
    calls: list[tuple[str, str, int]] = field(default_factory=list)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        form = parse_qs((await request.aread()).decode())
        response = await self.inner.handle_async_request(request)
        self.calls.append((request.url.path, form.get("grant_type", [""])[0], response.status_code))
        return response

    async def aclose(self) -> None:
        return None

    def grants(self) -> list[tuple[str, int]]:
        return [(grant, status) for path, grant, status in self.calls if path == TOKEN_PATH]


@dataclass
class Nico:
    url: str
    sim: Simulation
    site: str
    events: list[RequestEvent] = field(default_factory=list)

    def client(self, auth: TokenSource, **kwargs: Any) -> NicoClient:
        kwargs.setdefault("retry", FAST)
        return NicoClient(
            self.url,
            ORG,
            auth=auth,
            max_requests_per_second=0,
            hooks=ClientHooks(on_request=self.events.append),
            **kwargs,
        )

    def codes(self) -> list[str]:
        return [e.code for e in self.events]

    async def control(self, method: str, path: str, body: dict[str, Any]) -> None:
        async with httpx.AsyncClient(base_url=self.url) as http:
            assert (await http.request(method, path, json=body)).status_code == 200


@contextlib.contextmanager
def nico(**config: Any) -> Iterator[Nico]:
    """The simulator on a socket: its NICo, its Keycloak realm ``nico`` and its NGC exchange."""
    sim = Simulation(
        SimulatorConfig(org=ORG, scenario=ScenarioConfig.quiet(sites=1, racks_per_site=1), **config)
    )
    site = sim.flow_site_ids()[0]
    with serve_app(create_app(sim)) as url:
        yield Nico(url, sim, site)


async def test_oidc_client_credentials_renews_before_expiry_without_a_refresh_token() -> None:
    """Keycloak issues no refresh token for client credentials: each renewal is the grant again,
    before the token's 2 s run out (refresh_after(2) = 1 s), so NICo never sees an expired one."""
    seen = Seen()
    with nico(token_ttl_s=2.0) as n:
        auth = OidcToken(n.url + TOKEN_PATH, "nico-exporter", client_secret="sim-secret", transport=seen)
        async with n.client(auth) as client:
            await client.list_sites()
            await asyncio.sleep(1.3)
            await client.list_racks(n.site)
    assert seen.grants() == [("client_credentials", 200), ("client_credentials", 200)]
    assert n.codes() == ["200", "200"]


async def test_oidc_password_grant_then_the_refresh_grant() -> None:
    """nicocli's password grant with a public client; the refresh token Keycloak returns is used
    for the renewal (auth.go:238-246 order: refresh first when one is held)."""
    seen = Seen()
    with nico(token_ttl_s=2.0) as n:
        auth = OidcToken(
            n.url + TOKEN_PATH,
            "nico-cli",
            username="operator@example.com",
            password="sim-password",
            transport=seen,
        )
        async with n.client(auth) as client:
            await client.list_sites()
            await asyncio.sleep(1.3)
            await client.list_sites()
    assert seen.grants() == [("password", 200), ("refresh_token", 200)]
    assert n.codes() == ["200", "200"]


async def test_a_refused_refresh_token_falls_back_to_the_configured_grant() -> None:
    seen = Seen()
    with nico() as n:
        auth = OidcToken(
            n.url + TOKEN_PATH,
            "nico-exporter",
            client_secret="sim-secret",
            refresh_token="left-by-an-old-nicocli-login",
            transport=seen,
        )
        async with n.client(auth) as client:
            await client.list_sites()
    # Keycloak: 400 invalid_grant "Invalid refresh token" (RefreshTokenGrantType), then the grant.
    assert seen.grants() == [("refresh_token", 400), ("client_credentials", 200)]


async def test_a_wrong_client_secret_is_refused_once_then_backed_off() -> None:
    seen = Seen()
    clock = Clock()
    with nico() as n:
        auth = OidcToken(n.url + TOKEN_PATH, "nico-exporter", client_secret="canary-wrong-77", transport=seen)
        async with n.client(auth) as client:
            client.credentials = Credentials(auth, clock=clock)
            with pytest.raises(AuthError) as refused:
                await client.list_sites()
            for _ in range(5):
                with pytest.raises(CredentialsRefused):
                    await client.list_sites()
            assert client.credentials.refused and client.credentials.retry_in == BACKOFF.after(1)
            clock.now += BACKOFF.after(1)
            with pytest.raises(AuthError):
                await client.list_sites()  # the next attempt is due: one more grant
    # Keycloak's answer to a wrong secret (ClientIdAndSecretAuthenticator.reportFailedAuth).
    assert refused.value.status == 401
    assert "unauthorized_client: Invalid client or Invalid client credentials" in refused.value.message
    assert "canary-wrong-77" not in str(refused.value)
    assert seen.grants() == [("client_credentials", 401)] * 2
    assert n.codes() == []  # NICo was never asked


async def test_service_account_tokens_need_service_accounts_on_but_user_tokens_do_not() -> None:
    """NICo's Keycloak processor refuses a token with client_id while keycloak.serviceAccount is
    off (processors/keycloak.go:62-66): 401, one fresh token, 401 again, refused. A user's token
    (password grant) is accepted."""
    with nico() as n:
        await n.control("PUT", "/_sim/auth", {"serviceAccounts": False})
        service = OidcToken(n.url + TOKEN_PATH, "nico-exporter", client_secret="sim-secret")
        async with n.client(service) as client:
            with pytest.raises(Unauthorized, match="Service accounts are not enabled"):
                await client.list_sites()
            assert client.credentials.refused
        user = OidcToken(
            n.url + TOKEN_PATH, "nico-cli", username="operator@example.com", password="sim-password"
        )
        async with n.client(user) as client:
            assert len((await client.list_sites()).items) == 1
    assert n.codes() == ["401", "401", "200"]


async def test_an_expired_token_gets_nicos_own_401() -> None:
    """A token used past its exp: "Authorization token in request has expired"
    (processors/keycloak.go:36-38). A static token cannot be renewed: one fresh look, refused."""
    with nico(token_ttl_s=1.0) as n:
        issued = n.sim.tokens.issue("nico-exporter", refresh=False).access_token
        async with n.client(StaticToken(issued)) as client:
            await client.list_sites()
            await asyncio.sleep(1.2)
            with pytest.raises(Unauthorized, match="Authorization token in request has expired"):
                await client.list_sites()
            assert client.credentials.refused
    assert n.codes() == ["200", "401", "401"]


async def test_a_token_file_rotated_under_a_running_client(tmp_path: Path) -> None:
    """A Secret rotation: the file is swapped and the old token revoked; the next call reads the
    new token (its inode changed), with no 401. Rewritten in place with the same size and mtime,
    the change is seen only at NICo's 401: one re-read, and the call goes through."""
    path = tmp_path / "token"
    path.write_text("first-token\n")
    tokens = ("first-token", "second-token-longer", "secoND-token-longer")
    with nico(tokens=tokens) as n:
        async with n.client(TokenFile(path)) as client:
            await client.list_sites()
            replacement = tmp_path / "token.new"
            replacement.write_text(tokens[1] + "\n")
            replacement.replace(path)  # atomic, as the kubelet swaps a projected volume
            await n.control("POST", "/_sim/auth/revoke", {"token": tokens[0]})
            await client.list_sites()
            before = path.stat()
            path.write_text(tokens[2] + "\n")
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
            assert path.stat().st_size == before.st_size and path.stat().st_ino == before.st_ino
            await n.control("POST", "/_sim/auth/revoke", {"token": tokens[1]})
            await client.list_sites()
    assert n.codes() == ["200", "200", "401", "200"]


async def test_token_command_runs_again_before_its_jwt_expires(tmp_path: Path) -> None:
    """The command prints a JWT the simulator issued (its exp 2 s away): it runs again before it."""
    issued = tmp_path / "issued"
    runs = tmp_path / "runs"
    with nico(token_ttl_s=2.0) as n:
        first, second = (n.sim.tokens.issue("nico-exporter", refresh=False).access_token for _ in range(2))
        issued.write_text(first + "\n")
        source = TokenCommand(f"echo run >> {runs}; cat {issued}", timeout=10)
        async with n.client(source) as client:
            await client.list_sites()
            issued.write_text(second + "\n")
            await n.control("POST", "/_sim/auth/revoke", {"token": first})
            await asyncio.sleep(1.3)
            await client.list_sites()
    assert runs.read_text().splitlines() == ["run", "run"]
    assert n.codes() == ["200", "200"]  # the second call already carried the second token


async def test_a_failing_token_command_names_its_stderr_never_its_stdout(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    command = f"echo run >> {runs}; echo canary-stdout-5150; echo 'vault: permission denied canary-stdout-5150' >&2; exit 3"
    clock = Clock()
    with nico() as n:
        source = TokenCommand(command, timeout=10)
        async with n.client(source) as client:
            client.credentials = Credentials(source, clock=clock)
            with pytest.raises(AuthError) as failed:
                await client.list_sites()
            with pytest.raises(CredentialsRefused):
                await client.list_sites()
            assert client.credentials.refused
    message = str(failed.value)
    assert message == "api.token_command failed (exit status 3): vault: permission denied <redacted>"
    assert "canary-stdout-5150" not in repr(failed.value.__dict__)
    assert runs.read_text().splitlines() == ["run"]  # backed off: not run again at once
    assert n.codes() == []


async def test_a_token_command_that_hangs_is_killed_with_its_children(tmp_path: Path) -> None:
    marker = tmp_path / "late"
    # The shell's child outlives the shell unless the whole group is killed.
    source = TokenCommand(f"(sleep 3; touch {marker}) & sleep 30", timeout=0.5)
    began = time.monotonic()
    with pytest.raises(AuthError, match=r"timed out after 0.5s"):
        await token_of(source)
    assert time.monotonic() - began < 3
    await asyncio.sleep(3.5)
    assert not marker.exists()


async def test_token_command_is_a_shell_command_line() -> None:
    """Run with sh -c, as nicocli's is (client.go:403): shell syntax works, output is trimmed."""
    assert await token_of(TokenCommand("printf '  tok-%s\\n\\n' $((40 + 2))")) == "tok-42"


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("true", "api.token_command printed no token"),
        ("echo two words", "api.token_command printed more than the token"),
        ("exit 0", "api.token_command printed no token"),
    ],
)
async def test_token_command_output_rules(command: str, message: str) -> None:
    """nicocli trims the output and refuses an empty one (client.go:407, auth.go:223-225)."""
    with pytest.raises(AuthError, match=message):
        await token_of(TokenCommand(command))


async def test_ngc_legacy_key_is_exchanged_and_renewed() -> None:
    """GET authn_url with Authorization: ApiKey <key> (auth.go:282-287); renewed before its
    expires_in runs out."""
    seen = Seen()
    with nico(token_ttl_s=2.0) as n:
        auth = NgcApiKey("sim-ngc-key", n.url + NGC_TOKEN_PATH, transport=seen)
        async with n.client(auth) as client:
            await client.list_sites()
            await asyncio.sleep(1.3)
            await client.list_sites()
    assert [(path, status) for path, _, status in seen.calls] == [(NGC_TOKEN_PATH, 200)] * 2
    assert n.codes() == ["200", "200"]


async def test_an_nvapi_key_is_the_bearer_token_itself() -> None:
    seen = Seen()
    with nico() as n:
        async with n.client(NgcApiKey("nvapi-sim-key", transport=seen)) as client:
            await client.list_sites()
        async with n.client(NgcApiKey("nvapi-unknown-key", transport=seen)) as client:
            with pytest.raises(Unauthorized, match="Invalid authorization token in request"):
                await client.list_sites()
    assert seen.calls == []  # never exchanged (auth.go:271-277)
    assert n.codes() == ["200", "401", "401"]


async def test_an_unknown_legacy_key_is_refused_without_quoting_it() -> None:
    with nico() as n:
        auth = NgcApiKey("canary-legacy-key-31", n.url + NGC_TOKEN_PATH)
        async with n.client(auth) as client:
            with pytest.raises(AuthError) as refused:
                await client.list_sites()
            assert client.credentials.refused
    assert refused.value.status == 401 and "HTTP 401" in refused.value.message
    assert "canary-legacy-key-31" not in str(refused.value)


async def test_an_unreachable_issuer_is_not_taken_for_refused_credentials() -> None:
    with nico() as n:
        auth = OidcToken("http://127.0.0.1:9/token", "nico-exporter", client_secret="sim-secret")
        async with n.client(auth) as client:
            with pytest.raises(NicoError):
                await client.list_sites()
            assert not client.credentials.refused and client.credentials.retry_in > 0


def test_jwt_lifetime_and_the_renewal_point() -> None:
    sim = Simulation(
        SimulatorConfig(token_ttl_s=300.0, scenario=ScenarioConfig.quiet(sites=1, racks_per_site=1))
    )
    token = sim.tokens.issue("nico-exporter", refresh=False).access_token
    lifetime = jwt_lifetime(token, time.time())
    assert lifetime is not None and 298 <= lifetime <= 300
    assert jwt_lifetime("opaque-token", time.time()) is None
    assert jwt_lifetime("a.bm90LWpzb24.c", time.time()) is None
    # At 80 %, at least 30 s early, never before half.
    assert [refresh_after(t) for t in (300, 100, 40, 2)] == [240, 70, 20, 1]


# --- the canary: no credential in logs, metrics, spans or errors --------------------------------------


async def test_no_credential_reaches_logs_metrics_spans_or_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The whole exporter (app.build) with OIDC (a canary secret), its tasks traced into the state
    file's outbox; beside it, every source failing in its own way. Every text the exporter made
    is searched for the canaries and for every token the simulator issued."""
    from exporter.app import build
    from exporter.configload import load_config
    from exporter.exposition import Format
    from exporter.outbox import SqliteOutbox

    caplog.set_level(logging.DEBUG)
    canaries = ["canary-SECRET-oidc-9001", "canary-PASSWORD-4242", "canary-API-KEY-1234", "canary-STDOUT-777"]
    seen = Seen()
    bearer: list[str] = []
    texts: list[str] = []
    sim = Simulation(
        SimulatorConfig(
            org=ORG,
            speed=600.0,
            token_ttl_s=2.0,
            scenario=ScenarioConfig(
                seed=5, sites=1, racks_per_site=2, arrivals_per_rack_per_hour=6, failure_rate=0.3
            ),
        )
    )
    sim.tokens.add_client("exporter-canary", canaries[0])
    sim.tokens.add_user("canary-user", canaries[1])
    with serve_app(create_app(sim)) as url:

        class Watching(httpx.AsyncHTTPTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                if "authorization" in request.headers:
                    bearer.append(request.headers["authorization"].removeprefix("Bearer "))
                return await super().handle_async_request(request)

        env = {
            "NICO_BASE_URL": url,
            "NICO_ORG": ORG,
            "NICO_TOKEN_URL": url + TOKEN_PATH,
            "NICO_CLIENT_ID": "exporter-canary",
            "NICO_CLIENT_SECRET": canaries[0],
            "NICO_EXPORTER_POLLING__ACTIVE_INTERVAL": "1s",
            "NICO_EXPORTER_POLLING__FINAL_FETCH_INTERVAL": "1s",
            "NICO_EXPORTER_STATE__PATH": str(tmp_path / "state.db"),
            "NICO_EXPORTER_API__MAX_REQUESTS_PER_SECOND": "100",
        }
        exporter = build(
            load_config(None, env),
            transport=Watching(),
            environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},  # spans stay in the outbox
        )
        stop = asyncio.Event()
        runner = asyncio.create_task(exporter.runner.run(stop))
        watch = SqliteOutbox(tmp_path / "state.db")
        try:
            for _ in range(200):
                await asyncio.sleep(0.1)
                if len(set(bearer)) > 1 and watch.count() > 0:
                    break
            texts.append(exporter.publisher.publish().render(Format.TEXT).decode())
            texts.append(exporter.publisher.publish().render(Format.OPENMETRICS).decode())
            texts.append(
                repr(exporter.client.auth) + repr(exporter.config) + str(exporter.config.redacted_summary())
            )
        finally:
            watch.close()
            stop.set()
            await asyncio.wait_for(runner, 30)
            await exporter.client.aclose()
            if exporter.tracing is not None:
                exporter.tracing.shutdown(timeout_s=1)
            exporter.persistence.close()
        outbox = SqliteOutbox(tmp_path / "state.db")
        spans = outbox.pending(100_000)
        outbox.close()
        texts += [body for _, body in spans]

        # Every source failing: errors and their attributes.
        failing: list[TokenSource] = [
            OidcToken(url + TOKEN_PATH, "exporter-canary", client_secret=canaries[0] + "x", transport=seen),
            OidcToken(
                url + TOKEN_PATH,
                "nico-cli",
                username="canary-user",
                password=canaries[1] + "x",
                transport=seen,
            ),
            NgcApiKey(canaries[2], url + NGC_TOKEN_PATH, transport=seen),
            NgcApiKey("nvapi-" + canaries[2]),
            TokenCommand(f"echo {canaries[3]}; echo 'no luck {canaries[3]}' >&2; exit 1"),
            TokenCommand(f"echo {canaries[3]} {canaries[3]}"),
            StaticToken(canaries[3]),
        ]
        for source in failing:
            async with NicoClient(url, ORG, auth=source, max_requests_per_second=0, retry=FAST) as client:
                texts.append(repr(source) + repr(client))
                for _ in range(2):
                    try:
                        await client.list_sites()
                    except Exception as exc:  # every failure's text is searched below
                        texts.append(f"{type(exc).__name__}: {exc} {exc.__dict__}")
    texts += [record.getMessage() + " " + str(record.__dict__) for record in caplog.records]
    texts += [logging.Formatter().format(record) for record in caplog.records]

    # The canaries and tokens were really in play, so the search means something.
    issued = {token for token in bearer if token.count(".") == 2}
    assert len(issued) >= 2  # the OIDC token was renewed at least once in the run
    assert len(spans) > 0 and "nico_task" in texts[0]
    assert [grant for grant, _ in seen.grants()].count("client_credentials") >= 1
    joined = "\n".join(texts)
    assert len(joined) > 10_000
    for secret in [*canaries, *issued]:
        assert secret not in joined
