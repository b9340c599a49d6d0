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
from exporter.breaker import Breakers, State
from exporter.credentials import Credentials
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
    SiteUnavailable,
    TaskNotCancellable,
    TaskNotOnSite,
    TransportError,
    Unauthorized,
    blame,
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
from exporter.slots import SiteSlots

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
# Capabilities a site may lack: their failures do not open the site's breaker (exporter.breaker).
OPTIONAL_ENDPOINTS = ("/task/run", "/task/rule")
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


@dataclass(frozen=True, slots=True)
class CallFailure:
    """A logical call (after its retries) that failed: who failed and why (errors.blame).

    ``site_id`` is "" for calls about no site (the site list, logins).
    """

    endpoint: str
    site_id: str
    side: str
    cause: str


@dataclass
class ClientHooks:
    """Observers of the client's traffic; each defaults to doing nothing."""

    on_request: Callable[[RequestEvent], None] | None = None
    on_parse_error: Callable[[ParseEvent], None] | None = None
    on_failure: Callable[[CallFailure], None] | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt *n* waits ``U(d/2, d)``, ``d = min(cap, base*2**(n-1))``.

    Half the delay is fixed so retries spread out but never hammer the server back-to-back.
    """

    max_attempts: int = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    # A call that got no answer in time is tried once more at most: a site that does not answer
    # holds each attempt for the whole timeout.
    max_timeout_attempts: int = 2

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
        max_concurrency: requests in flight at once, shared fairly between sites
            (:class:`~exporter.slots.SiteSlots`).
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
        breakers: Breakers | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.org = org
        self.auth: TokenSource = auth or NoToken()
        if isinstance(self.auth, ClientCredentials) and self.auth.on_request is None:
            # Logins and refreshes are API calls too: count them with the rest.
            self.auth.on_request = self._emit_auth
        # Refused credentials are backed off: calls fail fast meanwhile (exporter.credentials).
        self.credentials = Credentials(self.auth)
        # A site that stops answering gets one probe per interval (exporter.breaker).
        self.breakers = breakers or Breakers()
        self.timeout_s = timeout_s
        # The request budget; shared with whoever else spends it (the poller reads how busy it is).
        self.limiter = limiter or TokenBucket(max_requests_per_second, burst)
        self.retry = retry or RetryPolicy()
        self.hooks = hooks or ClientHooks()
        self._prefix = f"/{route_version}/org/{org}/{api_name}"
        # Connection slots, shared fairly between sites; a site whose breaker is open is owed none.
        self.slots = SiteSlots(max(1, max_concurrency), exempt=self.breakers.is_open)
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
                # One more for a login or refresh made while every slot is held.
                max_connections=max(1, max_concurrency) + 1,
                max_keepalive_connections=max(1, max_concurrency) + 1,
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
        listing = await self._paged(
            Site,
            "/site",
            "/site",
            params,
            priority=priority,
            deadline=deadline,
            page_retries=DISCOVERY_PAGE_RETRIES,
        )
        # Every site named is owed its share of the slots before its first call.
        self.slots.known([site.id for site in listing.items])
        return listing

    async def list_racks(
        self,
        site_id: str,
        *,
        deadline: float | None = None,
        priority: int = Priority.DISCOVERY,
        order_by: str | None = None,
    ) -> Listing[Rack]:
        """The racks of one site (racks carry no ``siteId``: the caller keeps it).

        ``order_by`` (``NAME_ASC``): without it Flow's pages have no order (release/v2.0
        rest-api/flow/internal/db/model/rack.go:260-261) and OFFSET paging repeats and skips racks.
        """
        params: dict[str, Any] = {"siteId": site_id}
        if order_by is not None:
            params["orderBy"] = order_by
        return await self._paged(
            Rack,
            "/rack",
            "/rack",
            params,
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
        order_by: str | None = None,
    ) -> Listing[Tray]:
        """The trays of a site, or of one rack; one paged listing per site covers every rack.

        ``order_by`` as for racks (component.go:160-161); a rack's trays are filtered and sliced
        in memory by Flow, so a listing by ``rack_id`` is complete in one page.
        """
        params: dict[str, Any] = {"siteId": site_id}
        if rack_id is not None:
            params["rackId"] = rack_id
        if order_by is not None:
            params["orderBy"] = order_by
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
    ) -> Task | None:
        """Ask NICo to terminate a task (202; idempotent; refused for Succeeded and Failed).

        Returns the task as NICo answered it, or ``None`` when the 202 came with an empty task:
        Flow cancelled it but could not read it back (release/v2.0
        rest-api/flow/internal/service/server_impl.go:954-957 answers an empty response, which
        handler/task.go:357-360 renders as a zero-value task, ``"id": ""``). The cancel went
        through; it is not a bad payload.
        """
        resp = await self._task_call(
            "POST", task_id, "/cancel", None, {"siteId": site_id}, priority, deadline
        )
        if isinstance(resp.body, dict) and resp.body.get("id") == "" and 200 <= resp.status < 300:
            return None
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
        stop_after: Callable[[list[TaskRun]], bool] | None = None,
    ) -> Listing[TaskRun]:
        """The runs of a site, newest first (paged: these lists accept pageNumber and pageSize).

        Flow lists runs by ``created_at DESC`` and never deletes one (main
        rest-api/flow/internal/operationrun/manager/store/store.go:177): ``stop_after`` ends the
        walk after the first page it accepts (a page of runs the caller already has final), so
        a site's long history is not walked every round.

        Run calls are active polls for the budget (the same priority as rack polls): a lower one
        starves whenever rack polls use the whole budget.

        Raises:
            RouteMissing: the server has no Task Runs (NICo v2.0).
        """
        params: dict[str, Any] = {"siteId": site_id}
        if status is not None:
            params["status"] = status
        return await self._paged(
            TaskRun,
            "/task/run",
            "/task/run",
            params,
            priority=priority,
            deadline=deadline,
            stop_after=stop_after,
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
        stop_after: Callable[[list[M]], bool] | None = None,
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
            if page >= limit or (stop_after is not None and stop_after(fresh)):
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
                # A 429 is not asked again here: the client already paused every caller for it;
                # nor a page that got no answer in time (its call already tried again): retries
                # nested in retries would hold a silent site's calls for minutes.
                silent = isinstance(exc, TransportError) and exc.kind == "timeout"
                if not exc.retryable or isinstance(exc, RateLimited) or silent or again == retries or late:
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
        """One logical call: credentials, the site's breaker, a slot, the budget, retries with
        backoff, error mapping, JSON decode.

        The site the call is about (its ``siteId``; "" for none) decides its breaker and its share
        of the slots. Calls of an optional capability a site may lack (Task Runs, Operation Rules)
        say nothing about the site when they fail (an agent older than the REST server hangs them
        while tasks work); their answers do.
        """
        site_id = str((params or json_body or {}).get("siteId") or "")
        optional = endpoint.startswith(OPTIONAL_ENDPOINTS)
        try:
            resp = await self._call(
                method, endpoint, path, params, json_body, priority, deadline, retry, site_id, optional
            )
        except BaseException as err:
            if site_id:
                self._judge_site(site_id, err, optional)
            if isinstance(err, NicoError) and self.hooks.on_failure is not None:
                side, cause = blame(err)
                self.hooks.on_failure(CallFailure(endpoint, site_id, side, cause))
            raise
        if site_id:
            self._judge_site(site_id, None, optional)
        return resp

    async def _call(
        self,
        method: str,
        endpoint: str,
        path: str,
        params: dict[str, Any] | None,
        json_body: dict[str, Any] | None,
        priority: int,
        deadline: float | None,
        retry: bool,
        site_id: str,
        optional: bool,
    ) -> _Response:
        # Fail fast, before any wait: refused credentials, a site that does not answer.
        self.credentials.check()
        admitted = self.breakers.admit(site_id) if site_id else State.CLOSED
        if admitted is None:
            raise SiteUnavailable(
                f"{method} {endpoint}: not sent, the site does not answer ({self.breakers.reason(site_id)})",
                endpoint=endpoint,
            )
        attempt = timeouts = 0
        reauthenticated = False
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                resp = await self._attempt(
                    method, endpoint, path, params, json_body, priority, deadline, attempt, site_id, optional
                )
            except Unauthorized as err:
                # One fresh look at the credentials (a rotated file, an expired login), then the
                # credentials are taken for refused and backed off.
                if reauthenticated:
                    self.credentials.refused_by_nico(err.message)
                    raise
                reauthenticated = True
                attempt -= 1
                continue
            except NicoError as err:
                timed_out = isinstance(err, TransportError) and err.kind == "timeout"
                if timed_out and site_id and not optional:
                    # Each attempt that got no answer in time counts: a silent site holds every
                    # attempt for the whole timeout, so its breaker opens after three of them.
                    self.breakers.failed(site_id, err.message)
                if not (retry and err.retryable) or attempt >= self.retry.max_attempts:
                    raise
                timeouts += timed_out
                # An optional capability's call that timed out is not tried again: its site may
                # never answer it (an agent older than the REST server hangs it for 50 s).
                if timeouts >= (1 if optional else self.retry.max_timeout_attempts):
                    raise
                # The site's breaker opened meanwhile (other calls found it silent): stop, unless
                # this call is its probe.
                if admitted is State.CLOSED and site_id and self.breakers.is_open(site_id):
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
                continue
            self.credentials.accepted()
            return resp

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
        site_id: str = "",
        optional: bool = False,
    ) -> _Response:
        self.credentials.check()
        resp, token = await self._exchange(
            method, endpoint, path, params, json_body, priority, deadline, attempt, site_id, optional
        )
        status = resp.status_code
        if 200 <= status < 300:
            try:
                body = _decode(resp, endpoint)
            except BadPayload as err:
                self._parse_error(endpoint, err.reason, err.message)
                raise
            return _Response(status, body, resp.headers)
        if status == 401:
            self.credentials.invalidate(token)
        if status == 429:
            # NICo says nothing about when to come back; its bucket refills at the same rate as
            # ours, so a second's pause for every caller lets it fill again.
            self.limiter.penalize(THROTTLED_PAUSE_S)
        raise _error_for(resp, endpoint, token)

    async def _exchange(
        self,
        method: str,
        endpoint: str,
        path: str,
        params: dict[str, Any] | None,
        json_body: dict[str, Any] | None,
        priority: int,
        deadline: float | None,
        attempt: int,
        site_id: str,
        optional: bool = False,
    ) -> tuple[httpx.Response, str | None]:
        """A connection slot (the site's fair share), then a request token, then the request.

        The slot comes first: a token is spent only when the request can go out, so tokens never
        pile up behind hung calls to leave in a burst NICo's limiter refuses. Both waits are
        bounded by ``deadline`` (:class:`DeadlineExceeded`, the exporter's own limit).
        """
        try:
            await self.slots.acquire(site_id, priority, _left(deadline), optional=optional)
        except TimeoutError:
            raise DeadlineExceeded(
                f"no connection slot free before the deadline for {endpoint}",
                endpoint=endpoint,
                cause="queue",
            ) from None
        try:
            left = _left(deadline)
            if left is None:
                await self.limiter.acquire(priority)
            else:
                if left <= 0:
                    raise DeadlineExceeded(
                        f"deadline passed before calling {endpoint}", endpoint=endpoint, cause="deadline"
                    )
                try:
                    await asyncio.wait_for(self.limiter.acquire(priority), left)
                except TimeoutError:
                    raise DeadlineExceeded(
                        f"rate-limit budget exhausted before the deadline for {endpoint}",
                        endpoint=endpoint,
                        cause="budget",
                    ) from None
            left = _left(deadline)
            timeout = self.timeout_s if left is None else min(self.timeout_s, left)
            if timeout <= 0:
                raise DeadlineExceeded(
                    f"deadline passed before calling {endpoint}", endpoint=endpoint, cause="deadline"
                )
            token = await self.credentials.token(self._http)
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
                    f"{method} {endpoint} timed out after {timeout:.1f}s", endpoint=endpoint, kind="timeout"
                ) from None
            except httpx.HTTPError as exc:
                self._emit(endpoint, method, "connection", started, attempt)
                raise TransportError(
                    f"{method} {endpoint} failed: {_transport_cause(exc)}", endpoint=endpoint
                ) from None
            self._emit(endpoint, method, str(resp.status_code), started, attempt)
            return resp, token
        finally:
            self.slots.release(site_id, optional=optional)

    def _judge_site(self, site_id: str, error: BaseException | None, optional: bool) -> None:
        """What a logical call's outcome says about its site, for the site's breaker: an answer
        closes it, no answer (a timeout, a connection failure, a 5xx that is not Flow's own
        answer) counts towards opening it, and the exporter's own limits say nothing. A failed
        call of an optional capability says nothing either (an old agent hangs only those)."""
        if error is None or isinstance(error, TaskNotOnSite | TaskNotCancellable | BadPayload):
            self.breakers.succeeded(site_id)
        elif isinstance(error, TransportError) and error.kind == "timeout" and not optional:
            pass  # counted per attempt (_call)
        elif isinstance(error, TransportError | ServerError):
            if optional:
                self.breakers.released(site_id)
            else:
                self.breakers.failed(site_id, str(error))
        elif (
            isinstance(error, NicoError) and error.status is not None and error.status not in (401, 403, 429)
        ):
            self.breakers.succeeded(site_id)  # NICo answered for the site: a 4xx, a 501
        else:
            self.breakers.released(site_id)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def _transport_cause(exc: httpx.HTTPError) -> str:
    """What went wrong on the wire, in words (never the URL's credentials: the exception's text
    names the host at most)."""
    # The root cause is at the end of the chain (anyio wraps a refused connection in "All
    # connection attempts failed").
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = " ".join(str(c) for c in chain).lower()
    if any(isinstance(c, ConnectionRefusedError) for c in chain):
        return "connection refused"
    if isinstance(exc, httpx.ConnectError):
        if (
            "name or service not known" in text
            or "nodename nor servname" in text
            or "name resolution" in text
        ):
            return "unknown host (DNS)"
        if "certificate" in text or "ssl" in text or "tls" in text:
            return "TLS handshake failed"
        if "refused" in text:
            return "connection refused"
        return "cannot connect"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return "connection closed by the server"
    return type(exc).__name__


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
