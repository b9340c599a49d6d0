"""Refused credentials are backed off, fail fast meanwhile, and end at the first accepted call.

Independent expectations: exporter/credentials.py's schedule (30 s doubling to 5 min for a refusal,
2 s doubling to 1 min for an identity provider that cannot be reached), on a fake clock, and the
number of logins and API calls the real client makes against a handler that refuses them.
"""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from exporter.auth import ClientCredentials, StaticToken, TokenFile
from exporter.client import NicoClient, RetryPolicy
from exporter.credentials import BACKOFF, UNREACHABLE_BACKOFF, Credentials
from exporter.errors import AuthError, CredentialsRefused, NicoError, TransportError, Unauthorized
from tests.helpers import nico_error

SITE = "11111111-1111-4111-8111-111111111111"
TASK = "33333333-3333-4333-8333-333333333333"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_backoff_schedules() -> None:
    assert [BACKOFF.after(n) for n in range(1, 7)] == [30, 60, 120, 240, 300, 300]
    assert [UNREACHABLE_BACKOFF.after(n) for n in range(1, 7)] == [2, 4, 8, 16, 32, 60]


def test_a_refusal_fails_calls_fast_until_the_next_attempt_is_due() -> None:
    clock = Clock()
    creds = Credentials(StaticToken("t0k3n-value"), clock=clock)
    creds.check()  # nothing refused yet
    creds.refused_by_nico("GET /site: HTTP 401: Invalid authorization token in request")
    assert creds.refused
    with pytest.raises(CredentialsRefused) as info:
        creds.check()
    assert "next attempt in 30s" in str(info.value) and "t0k3n-value" not in str(info.value)
    clock.now += 30
    creds.check()  # due: one call may try
    creds.refused_by_nico("again")
    clock.now += 59
    with pytest.raises(CredentialsRefused):
        creds.check()
    clock.now += 1
    creds.check()
    creds.accepted()
    assert not creds.refused and creds.retry_in == 0


def test_a_rotated_token_file_is_tried_at_once(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "token"  # type: ignore[operator]
    path.write_text("old-token\n")
    clock = Clock()
    creds = Credentials(TokenFile(path), clock=clock)
    creds.refused_by_nico("401")
    with pytest.raises(CredentialsRefused):
        creds.check()
    path.write_text("a-new-longer-token\n")  # the Secret was rotated
    creds.check()  # no wait for the back-off


async def _serve(client: NicoClient, calls: int) -> list[type[BaseException]]:
    out: list[type[BaseException]] = []
    for _ in range(calls):
        try:
            await client.get_task(SITE, TASK)
        except Exception as exc:
            out.append(type(exc))
    return out


async def test_a_refused_login_costs_one_login_per_backoff_not_one_per_call() -> None:
    logins: list[str] = []
    api: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/auth/"):
            logins.append(request.url.path)
            return nico_error(401, "Service accounts are not enabled")
        api.append(request.url.path)
        return nico_error(500, "unexpected")

    clock = Clock()
    auth = ClientCredentials("http://nico.test", "exporter", "canary-secret-4711", clock=clock)
    async with NicoClient(
        "http://nico.test",
        "acme",
        auth=auth,
        transport=httpx.MockTransport(handler),
        max_requests_per_second=0,
        retry=RetryPolicy(max_attempts=3, base_delay_s=0, max_delay_s=0),
    ) as client:
        client.credentials = Credentials(auth, clock=clock)
        errors = await _serve(client, 50)
        assert logins == ["/auth/login"] and api == []
        assert errors[0] is AuthError and set(errors[1:]) == {CredentialsRefused}
        clock.now += 30
        await _serve(client, 50)
        assert len(logins) == 2  # the next attempt, 30 s later; then 60 s
    assert client.credentials.refused


async def test_an_unreachable_identity_provider_is_backed_off_but_not_called_refused() -> None:
    logins = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal logins
        logins += 1
        raise httpx.ConnectError("connection refused")

    clock = Clock()
    auth = ClientCredentials("http://nico.test", "exporter", "s3cret", clock=clock)
    async with NicoClient(
        "http://nico.test",
        "acme",
        auth=auth,
        transport=httpx.MockTransport(handler),
        max_requests_per_second=0,
        retry=RetryPolicy(max_attempts=1),
    ) as client:
        client.credentials = Credentials(auth, clock=clock)
        errors = await _serve(client, 10)
    assert logins == 1 and errors[0] is TransportError and set(errors[1:]) == {CredentialsRefused}
    assert not client.credentials.refused  # unreachable, not refused: no credentials alert


async def test_a_revoked_static_token_costs_two_calls_then_fails_fast() -> None:
    sent = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal sent
        sent += 1
        return nico_error(401, "Invalid authorization token in request")

    async with NicoClient(
        "http://nico.test",
        "acme",
        auth=StaticToken("revoked-token"),
        transport=httpx.MockTransport(handler),
        max_requests_per_second=0,
    ) as client:
        errors = await _serve(client, 20)
    assert sent == 2  # the call, and its one retry with a fresh look at the token
    assert errors[0] is Unauthorized and set(errors[1:]) == {CredentialsRefused}


async def test_a_service_account_revoked_mid_run_costs_few_logins_in_90_s() -> None:
    """The simulator's Keycloak login; the exporter's service account is deleted while it runs.
    Calls every half second for 90 s: the login is tried at the refusal and 30 s later (the next
    is due 60 s after that)."""
    from exporter.simulator import ScenarioConfig, Simulation, SimulatorConfig, create_app

    sim = Simulation(SimulatorConfig(org="acme", scenario=ScenarioConfig.quiet(sites=1, racks_per_site=1)))
    site = sim.flow_site_ids()[0]
    logins: list[int] = []
    inner = httpx.ASGITransport(app=create_app(sim))

    class Counting(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await inner.handle_async_request(request)
            if request.url.path == "/auth/login":
                logins.append(response.status_code)
            return response

    clock = Clock()
    auth = ClientCredentials("http://nico.test", "nico-exporter", "sim-secret", clock=clock)
    async with NicoClient(
        "http://nico.test", "acme", auth=auth, transport=Counting(), max_requests_per_second=0
    ) as client:
        client.credentials = Credentials(auth, clock=clock)
        await client.list_racks(site)
        assert logins == [200]
        assert sim.tokens.revoke_client("nico-exporter")  # its tokens and its secret go
        failures: Counter[str] = Counter()
        for _ in range(180):
            try:
                await client.list_racks(site)
            except NicoError as exc:
                failures[type(exc).__name__] += 1
            clock.now += 0.5
    assert len(logins) - 1 <= 8 and logins[1:] == [401] * (len(logins) - 1)
    assert len(logins) - 1 == 2  # at the refusal, then 30 s later
    assert failures["CredentialsRefused"] >= 170


@pytest.mark.parametrize(
    ("status", "refused"),
    [(401, True), (400, True), (503, False)],
)
@pytest.mark.parametrize("kind", ["oidc", "ngc"])
async def test_an_identity_providers_4xx_is_refused_and_its_5xx_is_down(
    kind: str, status: int, refused: bool
) -> None:
    """The same two schedules for nicocli's sources: a 4xx from the issuer is refused credentials
    (30 s back-off, the alert), a 5xx is the issuer down (2 s back-off, no alert)."""
    from exporter.ngc import NgcApiKey
    from exporter.oidc import OidcToken

    asked = 0

    def issuer(request: httpx.Request) -> httpx.Response:
        nonlocal asked
        asked += 1
        if status >= 500:
            return httpx.Response(status, text="<html>upstream unavailable</html>")
        return httpx.Response(
            status, json={"error": "invalid_grant", "error_description": "Invalid user credentials"}
        )

    def nico(request: httpx.Request) -> httpx.Response:
        raise AssertionError("NICo must not be called without a token")

    auth: OidcToken | NgcApiKey
    if kind == "oidc":
        auth = OidcToken(
            "http://idp.test/token", "c", client_secret="s3cret-77", transport=httpx.MockTransport(issuer)
        )
    else:
        auth = NgcApiKey("legacy-key-77", "http://idp.test/token", transport=httpx.MockTransport(issuer))
    clock = Clock()
    async with NicoClient(
        "http://nico.test",
        "acme",
        auth=auth,
        transport=httpx.MockTransport(nico),
        max_requests_per_second=0,
        retry=RetryPolicy(max_attempts=1),
    ) as client:
        client.credentials = Credentials(auth, clock=clock)
        errors = await _serve(client, 10)
    assert asked == 1 and set(errors[1:]) == {CredentialsRefused}
    assert client.credentials.refused is refused
    assert client.credentials.retry_in == (BACKOFF if refused else UNREACHABLE_BACKOFF).after(1)
