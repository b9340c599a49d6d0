"""The client's behaviour against scripted responses: paging, retries, deadlines, auth, hooks."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import httpx
import pytest

from exporter.auth import ClientCredentials, StaticToken, TokenFile
from exporter.errors import (
    AuthError,
    BadRequest,
    FlowDisabled,
    Forbidden,
    NotFound,
    RateLimited,
    RouteMissing,
    ServerError,
    TaskNotOnSite,
    TransportError,
    Unauthorized,
)
from exporter.models import TaskStatus
from tests.builders import RACK, SITE
from tests.builders import wire_task as task
from tests.helpers import NICO_404, Recorder, make_client, nico_error, page, v2_task_list


async def test_listing_follows_total_at_page_size_100_and_drops_repeated_ids() -> None:
    tasks = [task() for _ in range(230)]
    seen_params: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        seen_params.append(params)
        number = int(params["pageNumber"])
        chunk = tasks[(number - 1) * 100 : number * 100]
        if number == 2:
            chunk = [*chunk[:-1], tasks[0]]  # a row from page 1 shows up again on page 2
        return page(chunk, total=230, number=number)

    rec = Recorder()
    async with make_client(handler, recorder=rec) as client:
        listing = await client.list_rack_tasks(SITE, RACK)

    assert [p["pageNumber"] for p in seen_params] == ["1", "2", "3"]
    assert all(p["pageSize"] == "100" for p in seen_params)
    assert seen_params[0]["activeOnly"] == "true" and seen_params[0]["includeReport"] == "true"
    assert seen_params[0]["siteId"] == SITE
    assert listing.total == 230 and listing.pages == 3
    # A repeat means a row was skipped: 229 distinct rows do not cover the total of 230.
    assert not listing.complete and listing.duplicates == 1
    assert len(listing.items) == 229 and len({t.id for t in listing.items}) == 229
    assert {e.endpoint for e in rec.requests} == {"/rack/{id}/task"}
    assert {e.code for e in rec.requests} == {"200"}


async def test_paths_carry_org_and_api_name() -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return page([], total=0)

    async with make_client(handler) as client:
        await client.list_sites()
        await client.list_racks(SITE)
        await client.list_trays(SITE, rack_id=RACK)
        await client.list_tray_tasks(SITE, RACK)

    assert paths == [
        "/v2/org/acme/nico/site",
        "/v2/org/acme/nico/rack",
        "/v2/org/acme/nico/tray",
        f"/v2/org/acme/nico/tray/{RACK}/task",
    ]


async def test_first_page_only_on_a_paging_server_is_a_one_row_page() -> None:
    sizes: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sizes.append(request.url.params["pageSize"])
        assert request.url.params["activeOnly"] == "false"
        return page([task()], total=417, size=1)

    async with make_client(handler) as client:
        listing = await client.list_rack_tasks(
            SITE, RACK, active_only=False, include_report=False, first_page_only=True
        )
    assert listing.total == 417 and not listing.complete
    assert sizes == ["1"]
    assert client.profile.task_list_paging is True


# -- NICo v2.0: task lists take no paging parameters ----------------------------------------------


async def test_a_v2_server_refuses_paging_once_then_gets_plain_lists() -> None:
    """ASSUMPTION checked in Go: v2.0 refuses pageNumber/pageSize with a 400 naming the key, then
    answers every plain list with its first 20 rows and the exact total (helpers.v2_task_list)."""
    rows = [task("Succeeded") for _ in range(45)]
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.url.params))
        return v2_task_list(request, rows)

    rec = Recorder()
    async with make_client(handler, recorder=rec) as client:
        listing = await client.list_rack_tasks(SITE, RACK, active_only=False, include_report=False)
        again = await client.list_tray_tasks(SITE, RACK, active_only=False)
    assert [e.code for e in rec.requests] == ["400", "200", "200"]
    assert "pageSize" in seen[0] and all("pageSize" not in p and "pageNumber" not in p for p in seen[1:])
    assert "orderBy" not in "".join(str(p) for p in seen)
    assert client.profile.task_list_paging is False
    assert listing.total == 45 and len(listing.items) == 20 and not listing.complete
    assert again.total == 45


async def test_concurrent_lists_send_one_paging_probe() -> None:
    rows = [task() for _ in range(3)]
    refused = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal refused
        resp = v2_task_list(request, rows)
        refused += resp.status_code == 400
        return resp

    async with make_client(handler) as client:
        results = await asyncio.gather(*(client.list_rack_tasks(SITE, RACK) for _ in range(20)))
        assert refused == 1 and all(r.complete and len(r.items) == 3 for r in results)
        client.recheck_task_list_paging()
        await asyncio.gather(*(client.list_rack_tasks(SITE, RACK) for _ in range(20)))
    assert refused == 2  # the re-check at discovery costs one call, not one per rack


async def test_a_plain_list_is_complete_only_when_its_rows_cover_the_total() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if "pageSize" in request.url.params:
            return nico_error(400, "Unknown query parameter specified in request: pageSize")
        count = int(request.url.params["siteId"][-2:])
        return page([task() for _ in range(min(count, 20))], total=count, size=20)

    async with make_client(handler) as client:
        for count, complete in ((0, True), (19, True), (20, True), (21, False), (99, False)):
            site = f"11111111-1111-4111-8111-1111111111{count:02d}"
            listing = await client.list_rack_tasks(site, RACK)
            assert (listing.total, listing.complete) == (count, complete), count


async def test_a_server_without_include_report_is_learned_once() -> None:
    """NICo 1.6's lists know only siteId and activeOnly (infra-controller-rest v1.6.0,
    api/pkg/api/model/task.go:107-110): includeReport is refused like paging."""
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.url.params))
        for key in request.url.params:
            if key not in ("siteId", "activeOnly"):
                return nico_error(400, f"Unknown query parameter specified in request: {key}")
        return page([task()], total=1, size=20)

    async with make_client(handler) as client:
        listing = await client.list_rack_tasks(SITE, RACK)
        await client.list_rack_tasks(SITE, RACK)
    assert listing.complete and not client.profile.task_reports
    assert set(seen[-1]) == {"siteId", "activeOnly"}
    assert len(seen) == 4  # paging refused, includeReport refused, then plain lists


async def test_other_refused_parameters_are_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return nico_error(400, "Unknown query parameter specified in request: siteId")

    async with make_client(handler) as client:
        with pytest.raises(BadRequest):
            await client.list_rack_tasks(SITE, RACK)


async def test_router_404_is_a_missing_route_and_a_missing_task_is_not_on_site() -> None:
    """Router 404 body: api/pkg/middleware/notfound.go:16-27. A missing task: Flow's gRPC Internal
    "sql: no rows in result set" (flow/internal/task/store/postgres.go:98-101) as a 500."""
    no_rows = (
        "Failed to execute Task retrieval workflow on Site: rpc error: code = Internal "
        "desc = sql: no rows in result set (type: Error, retryable: true)"
    )
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.endswith("/racks"):
            return nico_error(404, "The requested path could not be found")
        return nico_error(500, no_rows)

    async with make_client(handler, attempts=4) as client:
        with pytest.raises(TaskNotOnSite):
            await client.get_task(SITE, "33333333-3333-4333-8333-333333333333")
        assert len(calls) == 1  # not retried: the site agent already tried twice
        with pytest.raises(RouteMissing):
            await client._request("GET", "/racks", "/racks")


async def test_a_429_pauses_every_caller() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return nico_error(429, "Request rate limit exceeded, please re-evaluate your request patterns")
        return page([], total=0)

    async with make_client(handler, attempts=1, max_requests_per_second=100.0, burst=10) as client:
        with pytest.raises(RateLimited):
            await client.list_sites()
        started = time.monotonic()
        await client.list_racks(SITE)  # another caller waits out the pause too
        assert time.monotonic() - started >= 0.9


@pytest.mark.parametrize(
    ("status", "kind"),
    [(429, RateLimited), (500, ServerError), (503, ServerError), (502, ServerError)],
)
async def test_retryable_statuses_are_retried_then_succeed(status: int, kind: type[Exception]) -> None:
    calls = 0
    the_task = task("Succeeded")

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            return nico_error(status, "Request rate limit exceeded, please re-evaluate your request patterns")
        return httpx.Response(200, json=the_task)

    rec = Recorder()
    async with make_client(handler, recorder=rec, attempts=4) as client:
        got = await client.get_task(SITE, the_task["id"])
    assert got.status is TaskStatus.SUCCEEDED
    assert [e.code for e in rec.requests] == [str(status), str(status), "200"]
    assert [e.attempt for e in rec.requests] == [1, 2, 3]


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (400, "siteId query parameter is required", BadRequest),
        (403, "Site specified in request doesn't belong to current org's Provider", Forbidden),
        (404, "Task not found", NotFound),
        (412, "Site does not have NICo Flow enabled", FlowDisabled),
    ],
)
async def test_permanent_errors_are_not_retried(status: int, message: str, kind: type[Exception]) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return nico_error(status, message)

    async with make_client(handler, attempts=5) as client:
        with pytest.raises(kind) as info:
            await client.get_task(SITE, "33333333-3333-4333-8333-333333333333")
    assert calls == 1
    assert message in str(info.value) and "/task/{id}" in str(info.value)


async def test_retries_give_up_at_max_attempts_with_the_last_error() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return nico_error(
            500, "Failed to perform Task GetTasks - timeout occurred executing workflow on Site: x"
        )

    async with make_client(handler, attempts=3) as client:
        with pytest.raises(ServerError, match="timeout occurred"):
            await client.list_rack_tasks(SITE, RACK)
    assert calls == 3


async def test_a_discovery_page_that_keeps_failing_is_asked_for_again_after_a_pause() -> None:
    """The client's retries of one call can all fail (a workflow failing for seconds): discovery
    asks for the same page again rather than lose a walk of twenty pages to one of them."""
    calls: list[int] = []
    racks = [{"id": f"00000000-0000-4000-8000-{n:012x}", "name": f"r{n}"} for n in range(150)]

    def handler(request: httpx.Request) -> httpx.Response:
        number = int(request.url.params["pageNumber"])
        calls.append(number)
        if number == 2 and calls.count(2) <= 4:  # both attempts of two tries fail
            return nico_error(
                500, "Failed to perform Rack GetRacks - timeout occurred executing workflow on Site: x"
            )
        return page(racks[(number - 1) * 100 : number * 100], total=150, number=number)

    async with make_client(handler, attempts=2) as client:
        client.page_retry_pauses = (0.0, 0.0, 0.0)
        listing = await client.list_racks(SITE)
    assert [r.id for r in listing.items] == [r["id"] for r in racks] and listing.complete
    assert calls == [1, 2, 2, 2, 2, 2]


async def test_a_page_refused_for_good_is_not_asked_again() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return nico_error(400, "Invalid siteId specified in query")

    async with make_client(handler, attempts=2) as client:
        client.page_retry_pauses = (0.0, 0.0, 0.0)
        with pytest.raises(BadRequest):
            await client.list_racks(SITE)
    assert calls == 1


async def test_transport_errors_are_retried_and_labelled() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("connection refused", request=request)
        if calls == 2:
            raise httpx.ReadTimeout("read timed out", request=request)
        return page([], total=0)

    rec = Recorder()
    async with make_client(handler, recorder=rec, attempts=3) as client:
        listing = await client.list_sites()
    assert listing.items == []
    assert [e.code for e in rec.requests] == ["connection", "timeout", "200"]


async def test_deadline_bounds_retries() -> None:
    """A poll with a 0.3 s budget never waits out a long backoff: it fails inside its budget."""

    def handler(request: httpx.Request) -> httpx.Response:
        return nico_error(503, "Service unavailable")

    from exporter.client import RetryPolicy

    async with make_client(
        handler, retry=RetryPolicy(max_attempts=10, base_delay_s=0.2, max_delay_s=5)
    ) as client:
        started = time.monotonic()
        with pytest.raises(ServerError):
            await client.list_racks(SITE, deadline=time.monotonic() + 0.3)
        elapsed = time.monotonic() - started
    assert elapsed < 0.3


async def test_deadline_already_passed_raises_without_a_request() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return page([], total=0)

    from exporter.errors import DeadlineExceeded

    async with make_client(handler) as client:
        with pytest.raises(DeadlineExceeded):
            await client.list_racks(SITE, deadline=time.monotonic() - 1)
    assert calls == 0


async def test_concurrency_cap_holds() -> None:
    in_flight = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return page([], total=0)

    async with make_client(handler, max_concurrency=3) as client:
        await asyncio.gather(*(client.list_racks(SITE) for _ in range(12)))
    assert peak == 3


async def test_rate_limit_spaces_requests_beyond_the_burst() -> None:
    stamps: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        stamps.append(time.monotonic())
        return page([], total=0)

    async with make_client(handler, max_requests_per_second=50, burst=5) as client:
        await asyncio.gather(*(client.list_racks(SITE) for _ in range(15)))
    # 5 at once from the burst, then 10 more at 50/s: at least ~0.2 s in all.
    assert stamps[-1] - stamps[0] >= 0.18


async def test_static_token_is_sent_as_bearer() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return page([], total=0)

    async with make_client(handler, auth=StaticToken("tok-1")) as client:
        await client.list_sites()
    assert seen == ["Bearer tok-1"]


async def test_static_token_401_raises_unauthorized_after_one_fresh_look() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return nico_error(401, "Invalid authorization token in request")

    async with make_client(handler, auth=StaticToken("canary-token-XYZ")) as client:
        with pytest.raises(Unauthorized) as info:
            await client.list_sites()
    assert calls == 2
    assert "Invalid authorization token in request" in str(info.value)
    assert "canary-token-XYZ" not in str(info.value)


async def test_token_file_is_reread_on_change_and_on_401(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    valid = {"first"}
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        seen.append(token)
        if token not in valid:
            return nico_error(401, "Invalid authorization token in request")
        return page([], total=0)

    async with make_client(handler, auth=TokenFile(token_file)) as client:
        await client.list_sites()
        # Rotation: the new file is picked up on the next request (size differs).
        token_file.write_text("second-token\n")
        valid.add("second-token")
        await client.list_sites()
        # The server revokes the token and a rotated file appears with the same size and
        # mtime granularity: the 401 forces a re-read.
        valid = {"third-token!"}
        st = token_file.stat()
        token_file.write_text("third-token!\n")  # same size, same inode, mtime put back
        os.utime(token_file, ns=(st.st_atime_ns, st.st_mtime_ns))
        await client.list_sites()
    assert seen == ["first", "second-token", "second-token", "third-token!"]


async def test_unreadable_token_file_is_a_clear_auth_error(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return page([], total=0)

    async with make_client(handler, auth=TokenFile(tmp_path / "missing")) as client:
        with pytest.raises(AuthError, match="cannot read token file"):
            await client.list_sites()
    (tmp_path / "empty").write_text("  \n")
    async with make_client(handler, auth=TokenFile(tmp_path / "empty")) as client:
        with pytest.raises(AuthError, match="is empty"):
            await client.list_sites()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_client_credentials_login_refresh_and_relogin() -> None:
    clock = FakeClock()
    log: list[str] = []
    issued = 0
    valid: set[str] = set()
    refresh_ok = True

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal issued
        path = request.url.path
        if path in ("/auth/login", "/auth/refresh"):
            body = json.loads(request.content)
            log.append(path)
            if path == "/auth/login":
                assert body == {"clientId": "exporter", "clientSecret": "s3cret-value"}
            elif not refresh_ok:
                return nico_error(401, "Invalid or expired refresh token")
            else:
                assert body == {"refreshToken": f"refresh-{issued}"}
            issued += 1
            valid.add(f"access-{issued}")
            return httpx.Response(
                200,
                json={
                    "accessToken": f"access-{issued}",
                    "refreshToken": f"refresh-{issued}",
                    "expiresIn": 300,
                    "tokenType": "Bearer",
                },
            )
        token = request.headers["Authorization"].removeprefix("Bearer ")
        log.append(token)
        if token not in valid:
            return nico_error(401, "Invalid authorization token in request")
        return page([], total=0)

    auth = ClientCredentials("http://nico.test", "exporter", "s3cret-value", clock=clock)
    async with make_client(handler, auth=auth) as client:
        await client.list_sites()
        await client.list_sites()
        clock.now += 250  # past 80 % of 300 s: refresh before expiry
        await client.list_sites()
        clock.now += 250
        refresh_ok = False  # the refresh token was revoked: log in again
        await client.list_sites()
        valid.clear()  # the server forgets every token: 401, then a fresh login
        await client.list_sites()

    assert log == [
        "/auth/login",
        "access-1",
        "access-1",
        "/auth/refresh",
        "access-2",
        "/auth/refresh",
        "/auth/login",
        "access-3",
        "access-3",  # 401: refresh first (refused), then a fresh login
        "/auth/refresh",
        "/auth/login",
        "access-4",
    ]
    assert "s3cret-value" not in repr(auth)


async def test_client_credentials_refused_login_is_auth_error_without_secret() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return nico_error(401, "Service accounts are not enabled")

    auth = ClientCredentials("http://nico.test", "exporter", "canary-secret-999")
    async with make_client(handler, auth=auth) as client:
        with pytest.raises(AuthError) as info:
            await client.list_sites()
    assert "Service accounts are not enabled" in str(info.value)
    assert "canary-secret-999" not in str(info.value)


async def test_concurrent_requests_share_one_login() -> None:
    logins = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal logins
        if request.url.path == "/auth/login":
            logins += 1
            await asyncio.sleep(0.01)
            return httpx.Response(200, json={"accessToken": "a", "refreshToken": "r", "expiresIn": 300})
        return page([], total=0)

    auth = ClientCredentials("http://nico.test", "id", "secret")
    async with make_client(handler, auth=auth) as client:
        await asyncio.gather(*(client.list_sites() for _ in range(8)))
    assert logins == 1


async def test_get_task_falls_back_to_legacy_route_only_when_route_is_missing() -> None:
    paths: list[str] = []
    the_task = task("Failed")

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if request.url.path.startswith("/v2/org/acme/nico/task/"):
            return httpx.Response(404, json={"message": "Not Found"})
        return httpx.Response(200, json=the_task)

    async with make_client(handler) as client:
        await client.get_task(SITE, the_task["id"])
        await client.get_task(SITE, the_task["id"])  # sticky: straight to the legacy route
    assert paths == [
        f"/v2/org/acme/nico/task/{the_task['id']}",
        f"/v2/org/acme/nico/rack/task/{the_task['id']}",
        f"/v2/org/acme/nico/rack/task/{the_task['id']}",
    ]


async def test_task_not_found_does_not_fall_back() -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return httpx.Response(404, json=NICO_404)

    async with make_client(handler) as client:
        with pytest.raises(NotFound):
            await client.get_task(SITE, "33333333-3333-4333-8333-333333333333")
    assert len(paths) == 1


async def test_cancel_posts_site_id_and_is_not_retried() -> None:
    bodies: list[object] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return nico_error(500, "Failed to execute workflow")

    async with make_client(handler, attempts=4) as client:
        with pytest.raises(ServerError):
            await client.cancel_task(SITE, "33333333-3333-4333-8333-333333333333")
    assert bodies == [{"siteId": SITE}]


async def test_transport_error_text_names_endpoint_not_url_secrets() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("boom", request=request)

    async with make_client(handler, attempts=1, auth=StaticToken("canary-abc-123")) as client:
        with pytest.raises(TransportError) as info:
            await client.list_rack_tasks(SITE, RACK)
    assert "/rack/{id}/task" in str(info.value)
    assert "canary-abc-123" not in str(info.value)


async def test_each_task_version_is_parsed_once_and_changes_are_never_hidden() -> None:
    """Unchanged tasks come from the parse cache; any change to the raw task is parsed afresh."""
    body = [task("Running", status_note=1), task("Paused")]  # "Paused": an unknown status

    def handler(request: httpx.Request) -> httpx.Response:
        return page(body, total=len(body))

    rec = Recorder()
    async with make_client(handler, recorder=rec) as client:
        first = await client.list_rack_tasks(SITE, RACK)
        second = await client.list_rack_tasks(SITE, RACK)
        assert [a is b for a, b in zip(first.items, second.items, strict=True)] == [True, True]
        # The deviation was counted when that version was first parsed, not on every poll.
        assert rec.reasons == ["unknown_status"]
        body[0] = {
            **body[0],
            "report": {"version": 1, "stages": [{"number": 1, "status": "running", "steps": []}]},
        }
        third = await client.list_rack_tasks(SITE, RACK)
    assert third.items[0] is not second.items[0]
    assert third.items[0].report is not None and third.items[0].report.stages[0].number == 1
    assert third.items[1] is second.items[1]


async def test_parse_cache_is_bounded() -> None:
    bodies = [[task()] for _ in range(5)]
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return page(bodies[(calls - 1) % 5], total=1)

    async with make_client(handler, task_cache_size=3) as client:
        for _ in range(5):
            await client.list_rack_tasks(SITE, RACK)
        assert len(client._parsed_tasks) == 3
