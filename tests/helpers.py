"""NICo's HTTP answers (pages, errors, v2.0 task lists) and a recording mock server, for the unit tests.

The payload builders are in :mod:`tests.builders`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx

from exporter.client import ClientHooks, NicoClient, ParseEvent, RequestEvent, RetryPolicy
from tests.builders import ORG

NICO_404 = {"source": "nico", "message": "Task not found", "data": None}


def page(items: list[dict[str, Any]], total: int, number: int = 1, size: int = 100) -> httpx.Response:
    header = json.dumps(
        {"pageNumber": number, "pageSize": size, "total": total, "orderBy": None}, separators=(",", ":")
    )
    return httpx.Response(200, json=items, headers={"X-Pagination": header})


def nico_error(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"source": "nico", "message": message, "data": None})


# NICo v2.0's task-list handlers, written out from the Go source rather than from our simulator
# (an independent yardstick): rest-api/api/pkg/api/handler/task.go:414 and :600 check the query
# keys against APIGetTasksRequest (model/task.go:272-276) with the message of
# handler/util/common/common.go:1782; the handler then always asks Flow for offset 0, limit 20
# (task.go:475-501), and X-Pagination's total is Flow's COUNT of the filtered set.
V2_TASK_LIST_KEYS = frozenset({"siteId", "activeOnly", "includeReport"})
V2_PAGE = 20


def v2_task_list(request: httpx.Request, rows: list[dict[str, Any]]) -> httpx.Response:
    """A NICo v2.0 answer to a rack or tray task list over ``rows`` (all tasks, storage order)."""
    for key in request.url.params:
        if key not in V2_TASK_LIST_KEYS:
            return nico_error(400, f"Unknown query parameter specified in request: {key}")
    if request.url.params.get("activeOnly") == "true":
        rows = [r for r in rows if r["status"] in ("Pending", "Waiting", "Running")]
    if request.url.params.get("includeReport") != "true":
        rows = [{k: v for k, v in r.items() if k != "report"} for r in rows]
    return page(rows[:V2_PAGE], total=len(rows), size=V2_PAGE)


Handler = (
    Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
)


@dataclass
class Recorder:
    """Collects what the client's hooks report."""

    requests: list[RequestEvent] = field(default_factory=list)
    parse_errors: list[ParseEvent] = field(default_factory=list)

    def hooks(self) -> ClientHooks:
        return ClientHooks(on_request=self.requests.append, on_parse_error=self.parse_errors.append)

    @property
    def reasons(self) -> list[str]:
        return [e.reason for e in self.parse_errors]


def make_client(
    handler: Handler,
    *,
    recorder: Recorder | None = None,
    attempts: int = 3,
    **kwargs: Any,
) -> NicoClient:
    """A client on an ``httpx.MockTransport`` with fast retries and no rate limit."""
    kwargs.setdefault("max_requests_per_second", 0)
    kwargs.setdefault("retry", RetryPolicy(max_attempts=attempts, base_delay_s=0.001, max_delay_s=0.002))
    kwargs.setdefault("transport", httpx.MockTransport(handler))
    return NicoClient(
        "http://nico.test",
        ORG,
        hooks=(recorder or Recorder()).hooks(),
        **kwargs,
    )
