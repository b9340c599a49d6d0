"""Async client for NICo's task API (``/v2/org/{org}/nico/...``) on httpx.

Every call runs a Temporal workflow on the site, so requests are expensive: the client keeps
them under a global token bucket and a concurrency cap, retries only what can succeed on a
second try (429, 5xx, transport errors, truncated bodies) with exponential backoff and full
jitter, and never retries past the caller's ``deadline`` so a poll cannot overrun its interval.

The transport is injectable (``httpx.ASGITransport`` runs the simulator in-process). A hook sees
every request's endpoint template, status code and duration, and every tolerated parse
deviation, for the exporter's self-metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Generic

import httpx
from pydantic import TypeAdapter, ValidationError

from exporter import __version__
from exporter.auth import ClientCredentials, NoToken, TokenSource
from exporter.errors import (
    BadPayload,
    BadRequest,
    DeadlineExceeded,
    FlowDisabled,
    Forbidden,
    NicoError,
    NotFound,
    RateLimited,
    RouteMissing,
    ServerError,
    TaskNotCancellable,
    TaskNotOnSite,
    TransportError,
    Unauthorized,
)
from exporter.models import (
    APIError,
    M,
    OperationRule,
    Pagination,
    ParseNotes,
    Rack,
    Site,
    Task,
    TaskRun,
    TaskRunTarget,
    Tray,
    dedupe_by_id,
    parse_each,
    parse_item,
    parse_list,
)
from exporter.ratelimit import Priority, TokenBucket

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 100
# Discovery walks every page of the racks and trays (about 20 for 1,000 trays): a page that
# still fails after the client's retries is asked for again after these pauses (seconds).
DISCOVERY_PAGE_RETRIES = 3
PAGE_RETRY_PAUSES = (1.0, 3.0, 6.0)
# What NICo returns when no page is asked for (pagination.go; paginator.DefaultLimit): on v2.0
# every task list is this many rows at most.
DEFAULT_PAGE_SIZE = 20
# Every page is a Temporal workflow on the site: a listing never fetches more than this many
# (50,000 tasks), whatever total the server claims.
MAX_PAGES = 500
_PAGING_KEYS = ("pageNumber", "pageSize")
THROTTLED_PAUSE_S = 1.0
_UNKNOWN_PARAM = re.compile(r"^Unknown query parameter specified in request: (\S+)$")
# The router's 404 bodies: inside /v2 (middleware/notfound.go) and Echo's own.
_ROUTER_404 = frozenset({"The requested path could not be found", "The requested path was not found"})


@dataclass(frozen=True, slots=True)
class RequestEvent:
    """One HTTP attempt, for ``nico_exporter_api_requests_total`` and the duration histogram.

    ``code`` is the HTTP status as a string, or the transport failure kind (``timeout``,
    ``connection``) when no response arrived. ``endpoint`` is the route template.
    """

    endpoint: str
    method: str
    code: str
    duration_s: float
    attempt: int


@dataclass(frozen=True, slots=True)
class ParseEvent:
    """A payload problem survived: a bad item skipped, or a deviation tolerated."""

    endpoint: str
    reason: str
    detail: str


@dataclass
class ClientHooks:
    """Observers of the client's traffic; each defaults to doing nothing."""

    on_request: Callable[[RequestEvent], None] | None = None
    on_parse_error: Callable[[ParseEvent], None] | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt *n* waits ``U(d/2, d)``, ``d = min(cap, base*2**(n-1))``.

    Half the delay is fixed so retries spread out but never hammer the server back-to-back.
    """

    max_attempts: int = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        ceiling = min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1)))
        return rng.uniform(ceiling / 2, ceiling)


@dataclass
class Listing(Generic[M]):
    """The rows one list call (or one paged walk) returned.

    ``total`` is the server's ``X-Pagination.total``, the exact size of the filtered set
    (``None`` if no usable header came). ``complete`` is true only when the rows cover
    ``total``: on NICo v2.0 a task list is the first 20 rows, so a rack with more tasks than
    that is never listed completely. ``rejected`` counts items dropped as invalid.
    """

    items: list[M]
    total: int | None
    pages: int
    complete: bool
    rejected: int = 0
    duplicates: int = 0
    # The server's clock (its ``Date`` header) when the first page was answered: compared with
    # NICo's own timestamps, it is immune to clock skew between NICo and the exporter.
    server_date: float | None = None


@dataclass
class ServerProfile:
    """What the client has learned about this server's task lists.

    ``task_list_paging``: None until known; False once the server refused ``pageNumber`` or
    ``pageSize`` (NICo v2.0: every task list is then its first 20 rows); True once it paged.
    ``task_reports``: False once it refused ``includeReport`` (NICo 1.6: tasks carry no report).
    """

    task_list_paging: bool | None = None
    task_reports: bool = True


@dataclass
class _Response:
    status: int
    body: Any
    headers: httpx.Headers
    notes: ParseNotes = field(default_factory=ParseNotes)


_TASK_LIST = TypeAdapter(list[Task])


def _task_id(raw: Any) -> str | None:
    """The id of a raw task object, lower-cased (the cache key), or None."""
    if not isinstance(raw, dict):
        return None
    ident = raw.get("id")
    return ident.lower() if isinstance(ident, str) else None


class NicoClient:
    """The NICo REST API, as the exporter needs it.

    Args:
        base_url: the REST server, e.g. ``https://nico-rest-api.nico.svc.cluster.local``.
        org: the org in every path.
        auth: where the bearer token comes from.
        transport: an httpx transport (``ASGITransport`` for the in-process simulator).
        timeout_s: per-request timeout; NICo itself gives up on a workflow after 50 s.
        max_requests_per_second, burst: the global token bucket (``<= 0`` disables it).
        max_concurrency: requests in flight at once.
        retry: the retry policy for retryable failures.
        hooks: observers for self-metrics.
        api_name, route_version: NICo's ``api.name`` and ``api.route.version`` settings.
        verify: TLS verification (``True``, ``False`` or an ``ssl.SSLContext``).
    """

    def __init__(
        self,
        base_url: str,
        org: str,
        *,
        auth: TokenSource | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 30.0,
        max_requests_per_second: float = 10.0,
        burst: int = 10,
        max_concurrency: int = 8,
        retry: RetryPolicy | None = None,
        hooks: ClientHooks | None = None,
        api_name: str = "nico",
        route_version: str = "v2",
        verify: bool | ssl.SSLContext = True,
        rng: random.Random | None = None,
        max_pages: int = MAX_PAGES,
        task_cache_size: int = 50_000,
        limiter: TokenBucket | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.org = org
        self.auth: TokenSource = auth or NoToken()
        if isinstance(self.auth, ClientCredentials) and self.auth.on_request is None:
            # Logins and refreshes are API calls too: count them with the rest.
            self.auth.on_request = self._emit_auth
        self.timeout_s = timeout_s
        # The request budget; shared with whoever else spends it (the poller reads how busy it is).
        self.limiter = limiter or TokenBucket(max_requests_per_second, burst)
        self.retry = retry or RetryPolicy()
        self.hooks = hooks or ClientHooks()
        self._prefix = f"/{route_version}/org/{org}/{api_name}"
        self._concurrency = asyncio.Semaphore(max(1, max_concurrency))
        self._rng = rng or random.Random()
        self._legacy_task_routes = False
        self.profile = ServerProfile()
        self._paging_probe = asyncio.Lock()
        self.max_pages = max_pages
        self.page_retry_pauses = PAGE_RETRY_PAUSES
        self.task_cache_size = task_cache_size
        # Task id -> (the raw object last validated for it, the model): an unchanged version is
        # recognised by equality with the raw object (C-speed, cheaper than hashing its repr).
        self._parsed_tasks: OrderedDict[str, tuple[Any, Task]] = OrderedDict()
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            transport=transport,
            verify=verify,
            timeout=timeout_s,
            headers={"User-Agent": f"nico-task-exporter/{__version__}", "Accept": "application/json"},
            limits=httpx.Limits(
                max_connections=max(1, max_concurrency), max_keepalive_connections=max(1, max_concurrency)
            ),
        )

    def __repr__(self) -> str:
        return f"NicoClient({self.base_url!r}, org={self.org!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> NicoClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- discovery ---------------------------------------------------------------------------

    async def list_sites(
        self, *, flow_enabled: bool = True, deadline: float | None = None, priority: int = Priority.DISCOVERY
    ) -> Listing[Site]:
        """Every site, by default only those with NICo Flow (the only ones with tasks)."""
        params: dict[str, Any] = {"isFlowEnabled": "true"} if flow_enabled else {}
        return await self._paged(
            Site,
            "/site",
            "/site",
            params,
            priority=priority,
            deadline=deadline,
            page_retries=DISCOVERY_PAGE_RETRIES,
        )

    async def list_racks(
        self, site_id: str, *, deadline: float | None = None, priority: int = Priority.DISCOVERY
    ) -> Listing[Rack]:
        """The racks of one site (racks carry no ``siteId``: the caller keeps it)."""
        return await self._paged(
            Rack,
            "/rack",
            "/rack",
            {"siteId": site_id},
            priority=priority,
            deadline=deadline,
            page_retries=DISCOVERY_PAGE_RETRIES,
        )

    async def list_trays(
        self,
        site_id: str,
        *,
        rack_id: str | None = None,
        deadline: float | None = None,
        priority: int = Priority.DISCOVERY,
    ) -> Listing[Tray]:
        """The trays of a site, or of one rack; one paged listing per site covers every rack."""
        params: dict[str, Any] = {"siteId": site_id}
        if rack_id is not None:
            params["rackId"] = rack_id
        return await self._paged(
            Tray,
            "/tray",
            "/tray",
            params,
            priority=priority,
            deadline=deadline,
            page_retries=DISCOVERY_PAGE_RETRIES,
        )

    # -- tasks ---------------------------------------------------------------------------------

    async def list_rack_tasks(
        self,
        site_id: str,
        rack_id: str,
        *,
        active_only: bool = True,
        include_report: bool = True,
        first_page_only: bool = False,
        deadline: float | None = None,
        priority: int = Priority.ACTIVE_POLL,
    ) -> Listing[Task]:
        """The tasks of a rack, including tasks started from its trays' endpoints.

        On a server that pages task lists every page is fetched (``first_page_only``: one
        one-row page, enough for the total); on NICo v2.0 this is one call: the first 20 rows.
        """
        return await self._task_listing(
            "/rack/{id}/task",
            f"/rack/{rack_id}/task",
            _task_params(site_id, active_only, include_report),
            first_page_only=first_page_only,
            priority=priority,
            deadline=deadline,
        )

    async def list_tray_tasks(
        self,
        site_id: str,
        tray_id: str,
        *,
        active_only: bool = True,
        include_report: bool = False,
        deadline: float | None = None,
        priority: int = Priority.TRAY_ATTRIBUTION,
    ) -> Listing[Task]:
        """The tasks that target one tray (by tray UUID, not ``componentId``)."""
        return await self._task_listing(
            "/tray/{id}/task",
            f"/tray/{tray_id}/task",
            _task_params(site_id, active_only, include_report),
            first_page_only=False,
            priority=priority,
            deadline=deadline,
        )

    def recheck_task_list_paging(self) -> None:
        """Ask once more whether task lists page (the discovery job calls this): a server that
        was upgraded or replaced is found out at the next task list."""
        if self.profile.task_list_paging is False:
            self.profile.task_list_paging = None

    async def _task_listing(
        self,
        endpoint: str,
        path: str,
        params: dict[str, Any],
        *,
        first_page_only: bool,
        priority: int,
        deadline: float | None,
    ) -> Listing[Task]:
        """A task list as this server allows it; learns from a 400 naming a parameter it refuses.

        While it is not known whether task lists page, one call at a time asks (with paging
        parameters) and the others wait for its answer, so a v2.0 server refuses one call, not
        one per rack.
        """
        if self.profile.task_list_paging is None:
            async with self._paging_probe:
                if self.profile.task_list_paging is None:
                    return await self._task_listing_once(
                        endpoint,
                        path,
                        params,
                        first_page_only=first_page_only,
                        priority=priority,
                        deadline=deadline,
                    )
        return await self._task_listing_once(
            endpoint, path, params, first_page_only=first_page_only, priority=priority, deadline=deadline
        )

    async def _task_listing_once(
        self,
        endpoint: str,
        path: str,
        params: dict[str, Any],
        *,
        first_page_only: bool,
        priority: int,
        deadline: float | None,
    ) -> Listing[Task]:
        while True:
            query = dict(params)
            if not self.profile.task_reports:
                query.pop("includeReport", None)
            paged = self.profile.task_list_paging is not False
            try:
                if paged:
                    listing = await self._paged(
                        Task,
                        endpoint,
                        path,
                        query,
                        priority=priority,
                        deadline=deadline,
                        page_size=1 if first_page_only else MAX_PAGE_SIZE,
                        max_pages=1 if first_page_only else self.max_pages,
                    )
                    self.profile.task_list_paging = True
                    return listing
                return await self._unpaged(Task, endpoint, path, query, priority=priority, deadline=deadline)
            except BadRequest as err:
                if not self._learn_from(err, paged=paged):
                    raise

    def _learn_from(self, err: BadRequest, *, paged: bool) -> bool:
        """Whether ``err`` is NICo refusing a parameter we can do without (then stop sending it)."""
        match = _UNKNOWN_PARAM.match(err.detail)
        key = match.group(1) if match else None
        if paged and key in _PAGING_KEYS:
            self.profile.task_list_paging = False
            log.info(
                "task lists on this server do not page: each is its first 20 rows",
                extra={"endpoint": err.endpoint, "parameter": key},
            )
            return True
        if key == "includeReport" and self.profile.task_reports:
            self.profile.task_reports = False
            log.warning(
                "this server's task lists take no includeReport (NICo 1.6): no stage or step data",
                extra={"endpoint": err.endpoint},
            )
            return True
        return False

    async def get_task(
        self,
        site_id: str,
        task_id: str,
        *,
        deadline: float | None = None,
        priority: int = Priority.FINAL_FETCH,
    ) -> Task:
        """One task with its report (``/task/{id}``; ``/rack/task/{id}`` on servers that lack it).

        Falls back to the legacy route only when the server does not have the new one (a
        router 404/405), never on NICo's own "Task not found".
        """
        resp = await self._task_call("GET", task_id, "", {"siteId": site_id}, None, priority, deadline)
        return self._one(Task, resp, "/task/{id}")

    async def cancel_task(
        self,
        site_id: str,
        task_id: str,
        *,
        deadline: float | None = None,
        priority: int = Priority.FINAL_FETCH,
    ) -> Task:
        """Ask NICo to terminate a task (202; idempotent; refused for Succeeded and Failed)."""
        resp = await self._task_call(
            "POST", task_id, "/cancel", None, {"siteId": site_id}, priority, deadline
        )
        return self._one(Task, resp, "/task/{id}/cancel")

    async def _task_call(
        self,
        method: str,
        task_id: str,
        suffix: str,
        params: dict[str, Any] | None,
        body: dict[str, Any] | None,
        priority: int,
        deadline: float | None,
    ) -> _Response:
        if not self._legacy_task_routes:
            try:
                return await self._request(
                    method,
                    "/task/{id}" + suffix,
                    f"/task/{task_id}{suffix}",
                    params=params,
                    json_body=body,
                    priority=priority,
                    deadline=deadline,
                    # Retrying a write could terminate twice; cancel is idempotent, but keep
                    # retries to reads.
                    retry=method == "GET",
                )
            except RouteMissing:
                log.warning(
                    "route /task/{id} missing on this server, using legacy /rack/task/{id}",
                    extra={"endpoint": "/task/{id}" + suffix},
                )
                self._legacy_task_routes = True
        return await self._request(
            method,
            "/rack/task/{id}" + suffix,
            f"/rack/task/{task_id}{suffix}",
            params=params,
            json_body=body,
            priority=priority,
            deadline=deadline,
            retry=method == "GET",
        )

    # -- task runs and operation rules (NICo main; v2.0 answers the router 404) ------------------

    async def list_task_runs(
        self,
        site_id: str,
        *,
        status: str | None = None,
        deadline: float | None = None,
        priority: int = Priority.ACTIVE_POLL,
    ) -> Listing[TaskRun]:
        """The runs of a site, newest first (paged: these lists accept pageNumber and pageSize).

        Run calls are active polls for the budget (the same priority as rack polls): a lower one
        starves whenever rack polls use the whole budget.

        Raises:
            RouteMissing: the server has no Task Runs (NICo v2.0).
        """
        params: dict[str, Any] = {"siteId": site_id}
        if status is not None:
            params["status"] = status
        return await self._paged(
            TaskRun, "/task/run", "/task/run", params, priority=priority, deadline=deadline
        )

    async def get_task_run(
        self,
        site_id: str,
        run_id: str,
        *,
        include_stats: bool = True,
        deadline: float | None = None,
        priority: int = Priority.ACTIVE_POLL,
    ) -> TaskRun:
        """One run; with ``include_stats`` its current and cumulative phase outcome counts."""
        params: dict[str, Any] = {"siteId": site_id}
        if include_stats:
            params["includeStats"] = "true"
        resp = await self._request(
            "GET",
            "/task/run/{id}",
            f"/task/run/{run_id}",
            params=params,
            priority=priority,
            deadline=deadline,
        )
        return self._one(TaskRun, resp, "/task/run/{id}")

    async def list_task_run_targets(
        self,
        site_id: str,
        run_id: str,
        *,
        phase_scope: str = "currentAndCompletedPhases",
        deadline: float | None = None,
        priority: int = Priority.ACTIVE_POLL,
    ) -> Listing[TaskRunTarget]:
        """A run's per-rack targets (``phaseScope`` default here: every phase begun so far)."""
        return await self._paged(
            TaskRunTarget,
            "/task/run/{id}/target",
            f"/task/run/{run_id}/target",
            {"siteId": site_id, "phaseScope": phase_scope},
            priority=priority,
            deadline=deadline,
        )

    async def list_operation_rules(
        self,
        site_id: str,
        *,
        deadline: float | None = None,
        priority: int = Priority.DISCOVERY,
    ) -> Listing[OperationRule]:
        """The site's Operation Rules, default and custom (``GET /task/rule``)."""
        return await self._paged(
            OperationRule,
            "/task/rule",
            "/task/rule",
            {"siteId": site_id},
            priority=priority,
            deadline=deadline,
            page_retries=DISCOVERY_PAGE_RETRIES,
        )

    # -- plumbing ------------------------------------------------------------------------------

    async def _paged(
        self,
        model: type[M],
        endpoint: str,
        path: str,
        params: dict[str, Any],
        *,
        priority: int,
        deadline: float | None,
        page_size: int = MAX_PAGE_SIZE,
        max_pages: int | None = None,
        page_retries: int = 0,
    ) -> Listing[M]:
        """Follow ``X-Pagination.total`` page by page, dropping ids repeated across pages.

        ``page_retries``: a page whose call failed with a retryable error after the client's own
        retries is asked for again, up to this many times, after :data:`PAGE_RETRY_PAUSES`
        (within ``deadline``): one bad page of twenty must not lose the whole walk.
        """
        limit = self.max_pages if max_pages is None else max_pages
        seen: set[str] = set()
        items: list[M] = []
        total: int | None = None
        rejected = duplicates = 0
        page = 1
        server_date: float | None = None

        def done(complete: bool) -> Listing[M]:
            covered = complete and rejected == 0 and (total is None or len(items) >= total)
            return Listing(items, total, page, covered, rejected, duplicates, server_date)

        while True:
            resp = await self._page_with_retries(
                endpoint,
                path,
                {**params, "pageNumber": page, "pageSize": page_size},
                priority=priority,
                deadline=deadline,
                retries=page_retries,
            )
            if page == 1:
                server_date = _http_date(resp.headers.get("Date"))
            good, bad = self._parse_page(model, resp, endpoint)
            rejected += len(bad)
            fresh = dedupe_by_id(good, seen)
            duplicates += len(good) - len(fresh)
            items.extend(fresh)
            pagination = self._pagination(resp, endpoint)
            raw_count = len(resp.body) if isinstance(resp.body, list) else 0
            if pagination is not None:
                total = pagination.total
                # The server's own page size decides the offsets, whatever we asked for.
                size = max(1, min(pagination.page_size, MAX_PAGE_SIZE))
                if page >= max(1, math.ceil(total / size)):
                    return done(True)
                if raw_count == 0:
                    # The set shrank while we paged: what we have is all there is, but not proof.
                    return done(False)
            elif raw_count < page_size:
                return done(True)
            if page >= limit:
                return done(False)
            if good and not fresh:
                # A page of nothing but repeats means the server ignores pageNumber; each further
                # page would be another Temporal workflow.
                log.warning(
                    "stopped paging: a page repeated the last",
                    extra={"endpoint": endpoint, "pages": page, "total": total},
                )
                return done(False)
            page += 1

    async def _page_with_retries(
        self,
        endpoint: str,
        path: str,
        params: dict[str, Any],
        *,
        priority: int,
        deadline: float | None,
        retries: int,
    ) -> _Response:
        for again in range(retries + 1):
            try:
                return await self._request(
                    "GET", endpoint, path, params=params, priority=priority, deadline=deadline
                )
            except NicoError as exc:
                pauses = self.page_retry_pauses
                pause = pauses[min(again, len(pauses) - 1)]
                late = deadline is not None and time.monotonic() + pause >= deadline
                # A 429 is not asked again here: the client already paused every caller for it.
                if not exc.retryable or isinstance(exc, RateLimited) or again == retries or late:
                    raise
                log.info(
                    "asking for a page again",
                    extra={
                        "endpoint": endpoint,
                        "page": params.get("pageNumber"),
                        "error": str(exc),
                        "pause_s": pause,
                    },
                )
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _unpaged(
        self,
        model: type[M],
        endpoint: str,
        path: str,
        params: dict[str, Any],
        *,
        priority: int,
        deadline: float | None,
    ) -> Listing[M]:
        """One list call without paging parameters: the server's first page (20 rows on NICo)."""
        resp = await self._request("GET", endpoint, path, params=params, priority=priority, deadline=deadline)
        good, bad = self._parse_page(model, resp, endpoint)
        items = dedupe_by_id(good, set())
        pagination = self._pagination(resp, endpoint)
        raw_count = len(resp.body) if isinstance(resp.body, list) else 0
        total = pagination.total if pagination is not None else None
        covered = len(items) >= total if total is not None else raw_count < DEFAULT_PAGE_SIZE
        return Listing(
            items,
            total,
            1,
            covered and not bad,
            len(bad),
            len(good) - len(items),
            _http_date(resp.headers.get("Date")),
        )

    def _parse_page(self, model: type[M], resp: _Response, endpoint: str) -> tuple[list[M], list[BadPayload]]:
        good: list[M]
        bad: list[BadPayload]
        try:
            if model is Task and isinstance(resp.body, list):
                good, bad = self._parse_tasks(resp.body, endpoint, resp.notes)  # type: ignore[assignment]
            else:
                good, bad = parse_list(model, resp.body, endpoint=endpoint, notes=resp.notes)
        except BadPayload as err:
            self._parse_error(endpoint, err.reason, err.message)
            raise
        for rejected in bad:
            self._parse_error(endpoint, rejected.reason, rejected.message)
        self._flush_notes(resp, endpoint)
        return good, bad

    def _parse_tasks(
        self, body: list[Any], endpoint: str, notes: ParseNotes
    ) -> tuple[list[Task], list[BadPayload]]:
        """Validate a page of tasks, each version of a task once.

        Listings repeat unchanged tasks poll after poll; a task whose raw object is identical
        to the one last parsed for its id is taken from the cache (its deviations were counted
        then). New versions are validated as one batch, falling back to one by one so a
        malformed task costs only itself.
        """
        cache = self._parsed_tasks
        slots: list[Task | None] = []
        fresh: list[tuple[int, Any]] = []
        for raw in body:
            ident = _task_id(raw)
            entry = cache.get(ident) if ident is not None else None
            if entry is not None and entry[0] == raw:
                cache.move_to_end(entry[1].id)
                slots.append(entry[1])
            else:
                fresh.append((len(slots), raw))
                slots.append(None)
        bad: list[BadPayload] = []
        if fresh:
            raws = [raw for _, raw in fresh]
            try:
                results: list[Task | BadPayload] = list(_TASK_LIST.validate_python(raws, context=notes))
            except ValidationError:
                notes.items.clear()
                results = list(parse_each(Task, raws, endpoint=endpoint, notes=notes))
            for (slot, raw), result in zip(fresh, results, strict=True):
                if isinstance(result, BadPayload):
                    bad.append(result)
                    continue
                if self.task_cache_size > 0:
                    cache[result.id] = (raw, result)
                    cache.move_to_end(result.id)
                slots[slot] = result
            while len(cache) > self.task_cache_size:
                cache.popitem(last=False)
        return [task for task in slots if task is not None], bad

    def _one(self, model: type[M], resp: _Response, endpoint: str) -> M:
        try:
            return parse_item(model, resp.body, endpoint=endpoint, notes=resp.notes)
        except BadPayload as err:
            self._parse_error(endpoint, err.reason, err.message)
            raise
        finally:
            self._flush_notes(resp, endpoint)

    def _pagination(self, resp: _Response, endpoint: str) -> Pagination | None:
        raw = resp.headers.get("X-Pagination")
        if raw is None:
            self._parse_error(endpoint, "bad_pagination", "X-Pagination header missing")
            return None
        try:
            return Pagination.model_validate(raw)
        except (ValidationError, ValueError):
            self._parse_error(endpoint, "bad_pagination", f"unreadable X-Pagination: {raw[:80]!r}")
            return None

    def _flush_notes(self, resp: _Response, endpoint: str) -> None:
        for reason, detail in resp.notes.items:
            self._parse_error(endpoint, reason, detail)
        resp.notes.items.clear()

    def _parse_error(self, endpoint: str, reason: str, detail: str) -> None:
        log.warning(
            "payload problem survived", extra={"endpoint": endpoint, "reason": reason, "detail": detail}
        )
        if self.hooks.on_parse_error is not None:
            self.hooks.on_parse_error(ParseEvent(endpoint, reason, detail))

    def _emit_auth(self, endpoint: str, status: int | None, duration_s: float) -> None:
        if self.hooks.on_request is not None:
            code = "connection" if status is None else str(status)
            self.hooks.on_request(RequestEvent(endpoint, "POST", code, duration_s, 1))

    def _emit(self, endpoint: str, method: str, code: str, started: float, attempt: int) -> None:
        if self.hooks.on_request is not None:
            self.hooks.on_request(
                RequestEvent(endpoint, method, code, time.perf_counter() - started, attempt)
            )

    async def _request(
        self,
        method: str,
        endpoint: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: dict[str, Any] | None = None,
        priority: int = Priority.ACTIVE_POLL,
        deadline: float | None = None,
        retry: bool = True,
    ) -> _Response:
        """One logical call: rate limit, auth, retries with backoff, error mapping, JSON decode."""
        attempt = 0
        reauthenticated = False
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                return await self._attempt(
                    method, endpoint, path, params, json_body, priority, deadline, attempt
                )
            except Unauthorized:
                # One fresh look at the credentials (a rotated file, an expired login), then give up.
                if reauthenticated:
                    raise
                reauthenticated = True
                attempt -= 1
                continue
            except NicoError as err:
                if not (retry and err.retryable) or attempt >= self.retry.max_attempts:
                    raise
                pause = self.retry.delay(attempt, self._rng)
                took = time.monotonic() - started
                # An attempt that cannot finish in time (the last one took longer than what is
                # left) would only cost NICo another workflow: give up with the real error.
                if deadline is not None and time.monotonic() + pause + took >= deadline:
                    raise
                log.debug(
                    "retrying",
                    extra={
                        "endpoint": endpoint,
                        "error": type(err).__name__,
                        "attempt": attempt,
                        "pause_s": pause,
                    },
                )
                await asyncio.sleep(pause)

    async def _attempt(
        self,
        method: str,
        endpoint: str,
        path: str,
        params: dict[str, Any] | None,
        json_body: dict[str, Any] | None,
        priority: int,
        deadline: float | None,
        attempt: int,
    ) -> _Response:
        timeout = self.timeout_s
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
            if timeout <= 0:
                raise DeadlineExceeded(f"deadline passed before calling {endpoint}", endpoint=endpoint)
            try:
                await asyncio.wait_for(self.limiter.acquire(priority), timeout)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"rate-limit budget exhausted before the deadline for {endpoint}", endpoint=endpoint
                ) from None
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise DeadlineExceeded(f"deadline passed before calling {endpoint}", endpoint=endpoint)
            timeout = min(timeout, self.timeout_s)
        else:
            await self.limiter.acquire(priority)
        async with self._concurrency:
            token = await self.auth.token(self._http)
            headers = {"Authorization": f"Bearer {token}"} if token else None
            started = time.perf_counter()
            try:
                resp = await self._http.request(
                    method,
                    self._prefix + path,
                    params=_query(params),
                    json=json_body,
                    headers=headers,
                    timeout=timeout,
                )
            except httpx.TimeoutException:
                self._emit(endpoint, method, "timeout", started, attempt)
                raise TransportError(
                    f"{method} {endpoint} timed out after {timeout:.1f}s", endpoint=endpoint
                ) from None
            except httpx.HTTPError as exc:
                self._emit(endpoint, method, "connection", started, attempt)
                raise TransportError(
                    f"{method} {endpoint} failed: {type(exc).__name__}", endpoint=endpoint
                ) from None
            self._emit(endpoint, method, str(resp.status_code), started, attempt)
        status = resp.status_code
        if 200 <= status < 300:
            try:
                body = _decode(resp, endpoint)
            except BadPayload as err:
                self._parse_error(endpoint, err.reason, err.message)
                raise
            return _Response(status, body, resp.headers)
        if status == 401:
            self.auth.invalidate(token)
        if status == 429:
            # NICo says nothing about when to come back; its bucket refills at the same rate as
            # ours, so a second's pause for every caller lets it fill again.
            self.limiter.penalize(THROTTLED_PAUSE_S)
        raise _error_for(resp, endpoint, token)


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _task_params(site_id: str, active_only: bool, include_report: bool) -> dict[str, Any]:
    return {
        "siteId": site_id,
        "activeOnly": "true" if active_only else "false",
        "includeReport": "true" if include_report else "false",
    }


def _query(params: dict[str, Any] | None) -> dict[str, str] | None:
    if params is None:
        return None
    return {k: str(v) for k, v in params.items()}


def _decode(resp: httpx.Response, endpoint: str) -> Any:
    content = resp.content
    if not content:
        raise BadPayload(
            f"empty body from {endpoint}", endpoint=endpoint, reason="empty_body", status=resp.status_code
        )
    try:
        return json.loads(content)
    except RecursionError:
        raise BadPayload(
            f"{endpoint} returned JSON nested too deeply ({len(content)} bytes)",
            endpoint=endpoint,
            reason="invalid_json",
            status=resp.status_code,
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = (
            "truncated_json" if isinstance(exc, json.JSONDecodeError) and _cut_short(exc) else "invalid_json"
        )
        raise BadPayload(
            f"{endpoint} returned {reason.replace('_', ' ')} ({len(content)} bytes)",
            endpoint=endpoint,
            reason=reason,
            status=resp.status_code,
        ) from None


def _cut_short(exc: json.JSONDecodeError) -> bool:
    """Whether the document ends early (a body cut in transit) rather than being malformed."""
    rest = exc.doc[exc.pos :].rstrip()
    if not rest or exc.msg.startswith("Unterminated"):
        return True
    # Cut inside a literal: ``"finished": nul`` fails at the literal's start.
    return any(lit.startswith(rest) for lit in ("true", "false", "null"))


def _error_for(resp: httpx.Response, endpoint: str, token: str | None = None) -> NicoError:
    """Map an HTTP error response to a typed exception carrying NICo's message."""
    status = resp.status_code
    nico_body: APIError | None = None
    try:
        nico_body = APIError.model_validate_json(resp.content)
    except ValidationError:
        nico_body = None
    detail = (nico_body.message if nico_body is not None else "") or ""
    if token:
        # A proxy or a buggy server could echo the credential back: it must not reach our logs.
        detail = detail.replace(token, "<redacted>")
    message = detail or resp.reason_phrase or "no message"
    text = f"{resp.request.method} {endpoint}: HTTP {status}: {message[:300]}"
    kind: type[NicoError]
    if status == 401:
        kind = Unauthorized
    elif status == 403:
        kind = Forbidden
    elif status in (404, 405):
        # An object's 404 has a NICo body with its own message. The router's 404 has a NICo
        # body too, told apart by its message; any other 404 or 405 is no NICo route at all.
        is_object = status == 404 and nico_body is not None and bool(nico_body.source)
        kind = NotFound if is_object and detail not in _ROUTER_404 else RouteMissing
    elif status == 412:
        kind = FlowDisabled
    elif status == 429:
        kind = RateLimited
    elif status == 501:
        kind = NicoError
    elif status >= 500 and "no rows in result set" in detail and "/task/{id}" in endpoint:
        kind = TaskNotOnSite
    elif status >= 500 and "cannot be cancelled" in detail:
        kind = TaskNotCancellable
    elif status >= 500:
        kind = ServerError
    elif 400 <= status < 500:
        kind = BadRequest
    else:
        kind = NicoError
    return kind(text, endpoint=endpoint, status=status, detail=detail)


__all__: Sequence[str] = (
    "ClientHooks",
    "Listing",
    "NicoClient",
    "ParseEvent",
    "RequestEvent",
    "RetryPolicy",
)
