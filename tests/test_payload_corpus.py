"""A corpus of bad and edge NICo payloads run through the real ``NicoClient`` over ``MockTransport``.

Every case states one of three outcomes:

* **parsed**: the payload is used as is; the listed field values are asserted, and no
  ``ParseEvent`` may be reported;
* **tolerated**: the payload is used, and each deviation is counted: the field values *and* the
  exact ``ParseEvent`` reasons seen by ``ClientHooks.on_parse_error`` are asserted;
* **error**: a typed :class:`exporter.errors.NicoError` whose message names the endpoint template
  (and the field, where one is at fault); any other exception fails the case.

Cases marked ``bug=`` expose defects of the client (``# BUG:`` comments explain each one); they
are strict xfails so that fixing the defect turns them into failures to be un-marked.

A second test replays the whole corpus with a canary bearer token and checks that it never
reaches an exception message, a log record or a parse event.
"""

from __future__ import annotations

import json
import logging
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum, auto
from typing import Any

import httpx
import pytest

from exporter.auth import StaticToken, TokenSource
from exporter.client import MAX_PAGES, ClientHooks, NicoClient, ParseEvent, RetryPolicy
from exporter.errors import (
    BadPayload,
    BadRequest,
    FlowDisabled,
    Forbidden,
    NicoError,
    NotFound,
    RateLimited,
    RouteMissing,
    ServerError,
    TransportError,
    Unauthorized,
)
from exporter.models import ComponentType, ReportStatus, TaskStatus
from tests.builders import ORG

BASE_URL = "https://nico.test"
PREFIX = f"/v2/org/{ORG}/nico"
SITE_ID = "5a1c0e57-0000-4000-8000-000000000001"
RACK_ID = "2ac40000-0000-4000-8000-000000000002"
TRAY_ID = "7a400000-0000-4000-8000-000000000003"
RULE_ID = "9b1e0000-0000-4000-8000-000000000004"
CANARY = "canary-SECRET-123"

# Retries are exercised, but cost microseconds.
FAST_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.002)


def tid(n: int) -> str:
    """A stable, valid, lowercase task UUID."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"nico-task-{n}"))


TASK_ID = tid(0)


def dt(text: str) -> datetime:
    """A UTC datetime from a naive ISO string, for expected values."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- payload builders -------------------------------------------------------------------------


def task(n: int = 0, *, drop: Sequence[str] = (), **fields: Any) -> dict[str, Any]:
    """A task as NICo's code writes it; ``fields`` override keys, ``drop`` removes them."""
    out: dict[str, Any] = {
        "id": tid(n),
        "status": "Running",
        "description": "API power on Rack",
        "message": "",
        "ruleId": RULE_ID,
        "started": "2026-08-06T10:00:00Z",
        "finished": None,
        "created": "2026-08-06T09:59:58Z",
        "updated": "2026-08-06T10:00:05Z",
    }
    out.update(fields)
    for key in drop:
        out.pop(key)
    return out


def step(
    component: Any = "NVSwitch", status: Any = "running", *, drop: Sequence[str] = (), **fields: Any
) -> Any:
    out: dict[str, Any] = {
        "componentType": component,
        "status": status,
        "totalComponents": 9,
        "startedAt": "2026-08-06T10:00:01Z",
    }
    out.update(fields)
    for key in drop:
        out.pop(key)
    return out


def stage(number: int = 1, status: Any = "running", *steps: Any, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "number": number,
        "status": status,
        "steps": list(steps) or [step()],
        "startedAt": "2026-08-06T10:00:01Z",
    }
    out.update(fields)
    return out


def report(*stages: Any, version: Any = 1, drop: Sequence[str] = (), **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"version": version, "stages": list(stages) or [stage()]}
    out.update(fields)
    for key in drop:
        out.pop(key)
    return out


def site(n: int = 0, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"nico-site-{n}")),
        "name": f"site-{n}",
        "org": ORG,
        "isOnline": True,
        "status": "Registered",
        "capabilities": {"flow": True, "nativeNetworking": False},
    }
    out.update(fields)
    return out


def tray(n: int = 0, *, drop: Sequence[str] = (), **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"nico-tray-{n}")),
        "componentId": f"machine-{n}",
        "type": "Compute",
        "name": f"compute-{n}",
        "rackId": RACK_ID,
        "position": {"slotId": n, "trayIdx": n, "hostId": 0},
    }
    out.update(fields)
    for key in drop:
        out.pop(key)
    return out


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"next": value}
    return value


# -- response builders ------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One scripted HTTP response."""

    status: int
    content: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


class _Auto(Enum):
    AUTO = auto()


AUTO = _Auto.AUTO


def pagination(total: int, number: int = 1, size: int = 100, order_by: str | None = None) -> str:
    body = {"pageNumber": number, "pageSize": size, "total": total, "orderBy": order_by}
    return json.dumps(body, separators=(",", ":"))


def js(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(body).encode(), headers or {})


def page(items: Any, *, total: int | None = None, header: str | _Auto | None = AUTO) -> Reply:
    """A list response; ``X-Pagination`` is derived from the items unless given (``None``: omitted)."""
    if header is AUTO:
        header = pagination(len(items) if total is None else total)
    return js(items, headers={} if header is None else {"X-Pagination": header})


def raw(content: bytes | str, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
    data = content.encode() if isinstance(content, str) else content
    return Reply(status, data, headers or {})


def nico(status: int, message: str, data: Any = None) -> Reply:
    """NICo's own error body (``NICoAPIError``)."""
    return js({"source": "nico", "message": message, "data": data}, status)


ROUTER_404 = js({"message": "Not Found"}, 404)  # Echo's router, no "source": the route is absent
HTML_502 = raw(
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n",
    502,
    {"Content-Type": "text/html"},
)

# -- calls --------------------------------------------------------------------------------------

Call = Callable[[NicoClient], Awaitable[object]]


def get_task(task_id: str = TASK_ID) -> Call:
    async def call(client: NicoClient) -> object:
        return await client.get_task(SITE_ID, task_id)

    return call


def get_task_twice(first: str, second: str) -> Call:
    async def call(client: NicoClient) -> object:
        await client.get_task(SITE_ID, first)
        return await client.get_task(SITE_ID, second)

    return call


async def cancel_task(client: NicoClient) -> object:
    return await client.cancel_task(SITE_ID, TASK_ID)


async def rack_tasks(client: NicoClient) -> object:
    return await client.list_rack_tasks(SITE_ID, RACK_ID)


async def tray_tasks(client: NicoClient) -> object:
    return await client.list_tray_tasks(SITE_ID, TRAY_ID)


async def count_tasks(client: NicoClient) -> object:
    return await client.list_rack_tasks(
        SITE_ID, RACK_ID, active_only=False, include_report=False, first_page_only=True
    )


async def sites(client: NicoClient) -> object:
    return await client.list_sites()


async def trays(client: NicoClient) -> object:
    return await client.list_trays(SITE_ID, rack_id=RACK_ID)


# -- the corpus -----------------------------------------------------------------------------------

Replies = Sequence[Reply] | Callable[[httpx.Request, int], Reply]


@dataclass(frozen=True)
class Case:
    """One payload scenario and its expected outcome.

    ``replies`` are served in order (the last one repeats), or computed per request.
    ``expect`` maps a dotted path into the result (``items.0.status``; ``#`` is ``len``) to its
    value. ``reasons`` are the exact ``ParseEvent`` reasons, in order; ``details`` are substrings
    some event detail must contain. ``paths`` are the request paths below ``/v2/org/{org}/nico``.
    """

    id: str
    call: Call
    endpoint: str
    replies: Replies
    expect: Mapping[str, object] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()
    details: tuple[str, ...] = ()
    error: type[NicoError] | None = None
    error_reason: str | None = None
    error_field: str | None = None
    error_text: tuple[str, ...] = ()
    requests: int | None = None
    paths: tuple[str, ...] = ()
    bug: str | None = None
    bug_raises: type[BaseException] = AssertionError

    @property
    def outcome(self) -> str:
        if self.error is not None:
            return f"error {self.error.__name__}"
        return "tolerated" if self.reasons else "parsed"


def one_task(*tasks: Any, **kw: Any) -> Reply:
    return page(list(tasks), **kw)


STATUS_CASES = [
    Case(
        f"status-{value}",
        rack_tasks,
        "/rack/{id}/task",
        [one_task(task(status=value))],
        expect={"items.0.status": TaskStatus(value), "items.0.is_terminal": TaskStatus(value).is_terminal},
    )
    for value in ("Unknown", "Pending", "Waiting", "Running", "Succeeded", "Failed", "Terminated")
]

CASES: list[Case] = [
    # ---- task status ------------------------------------------------------------------------
    *STATUS_CASES,
    Case(
        "status-lowercase-running",
        rack_tasks,
        "/rack/{id}/task",
        [one_task(task(status="running"))],
        expect={"items.0.status": TaskStatus.RUNNING},
    ),
    Case(
        "status-unknown-Paused",
        rack_tasks,
        "/rack/{id}/task",
        [one_task(task(status="Paused"))],
        expect={"items.#": 1, "items.0.status": TaskStatus.UNKNOWN, "rejected": 0},
        reasons=("unknown_status",),
        details=("status='Paused'",),
    ),
    Case(
        "status-null",
        rack_tasks,
        "/rack/{id}/task",
        [one_task(task(status=None))],
        expect={"items.0.status": TaskStatus.UNKNOWN},
    ),
    Case(
        "status-missing",
        rack_tasks,
        "/rack/{id}/task",
        [one_task(task(drop=["status"]))],
        expect={"items.0.status": TaskStatus.UNKNOWN},
    ),
    Case(
        "status-integer",
        get_task(),
        "/task/{id}",
        [js(task(status=3))],
        expect={"status": TaskStatus.UNKNOWN},
        reasons=("unknown_status",),
        details=("status=3",),
    ),
    # ---- report.version and shape -----------------------------------------------------------
    Case(
        "report-version-int-1",
        get_task(),
        "/task/{id}",
        [js(task(report=report(version=1)))],
        expect={"report.version": 1, "report.stages.0.number": 1, "report.stages.#": 1},
    ),
    Case(
        "report-version-string-1",
        get_task(),
        "/task/{id}",
        [js(task(report=report(version="1")))],
        expect={"report.version": 1, "report.stages.0.status": ReportStatus.RUNNING},
    ),
    Case(
        "report-version-2-dropped",
        get_task(),
        "/task/{id}",
        [js(task(report=report(version=2)))],
        expect={"report": None, "status": TaskStatus.RUNNING},
        reasons=("unsupported_report_version",),
        details=("version=2",),
    ),
    Case(
        "report-version-missing-dropped",
        get_task(),
        "/task/{id}",
        [js(task(report=report(drop=["version"])))],
        expect={"report": None},
        reasons=("unsupported_report_version",),
        details=("version=None",),
    ),
    Case(
        "report-is-string",
        get_task(),
        "/task/{id}",
        [js(task(report='{"version":1}'))],
        expect={"report": None, "id": TASK_ID},
        reasons=("invalid_report",),
        details=("report is str",),
    ),
    Case(
        "report-is-list",
        rack_tasks,
        "/rack/{id}/task",
        [one_task(task(report=[report()]))],
        expect={"items.0.report": None, "rejected": 0},
        reasons=("invalid_report",),
        details=("report is list",),
    ),
    Case(
        "report-null",
        get_task(),
        "/task/{id}",
        [js(task(report=None))],
        expect={"report": None},
    ),
    Case(
        "report-stages-null",
        get_task(),
        "/task/{id}",
        [js(task(report=report(stages=None)))],
        expect={"report.stages": ()},
    ),
    Case(
        "report-error-non-ascii-verbatim",
        get_task(),
        "/task/{id}",
        [js(task(status="Failed", report=report(error='stage 2: "NVSwitch" tray ✗ failed\nretry → 0')))],
        expect={"report.error": 'stage 2: "NVSwitch" tray ✗ failed\nretry → 0'},
    ),
    Case(
        "report-stage-number-0-dropped",
        get_task(),
        "/task/{id}",
        [js(task(report=report(stage(0))))],
        expect={"report": None, "status": TaskStatus.RUNNING},
        reasons=("invalid_report",),
        details=("stages.0.number",),
    ),
    Case(
        "report-step-garbage-timestamp-drops-report-only",
        get_task(),
        "/task/{id}",
        [js(task(report=report(stage(1, "running", step(startedAt="soon")))))],
        expect={"report": None, "started": dt("2026-08-06T10:00:00")},
        reasons=("invalid_report",),
        details=("startedAt",),
    ),
    # ---- componentType ----------------------------------------------------------------------
    *[
        Case(
            f"component-{label}",
            get_task(),
            "/task/{id}",
            [js(task(report=report(stage(1, "running", step(spelling)))))],
            expect={"report.stages.0.steps.0.component_type": expected},
        )
        for label, spelling, expected in (
            ("NVSwitch-code", "NVSwitch", ComponentType.NVSWITCH),
            ("NVLSwitch-spec", "NVLSwitch", ComponentType.NVSWITCH),
            ("nvlswitch-lowercase", "nvlswitch", ComponentType.NVSWITCH),
            ("ToRSwitch-flow", "ToRSwitch", ComponentType.TORSWITCH),
            ("PowerShelf", "PowerShelf", ComponentType.POWERSHELF),
        )
    ],
    Case(
        "component-unknown-Gizmo",
        get_task(),
        "/task/{id}",
        [js(task(report=report(stage(1, "running", step("Gizmo"), step("Compute")))))],
        expect={
            "report.stages.0.steps.0.component_type": ComponentType.UNKNOWN,
            "report.stages.0.steps.1.component_type": ComponentType.COMPUTE,
        },
        reasons=("unknown_component_type",),
        details=("'Gizmo'",),
    ),
    Case(
        "component-null",
        get_task(),
        "/task/{id}",
        [js(task(report=report(stage(1, "running", step(None)))))],
        expect={"report.stages.0.steps.0.component_type": ComponentType.UNKNOWN},
        reasons=("unknown_component_type",),
        details=("None",),
    ),
    # ---- steps ----------------------------------------------------------------------------
    Case(
        "step-status-unknown-paused",
        get_task(),
        "/task/{id}",
        [js(task(report=report(stage(1, "running", step(status="paused")))))],
        expect={
            "report.stages.0.steps.0.status": ReportStatus.UNKNOWN,
            "report.stages.0.status": ReportStatus.RUNNING,
        },
        reasons=("unknown_status",),
        details=("status='paused'",),
    ),
    Case(
        "stage-status-capitalised-Completed",
        get_task(),
        "/task/{id}",
        [js(task(report=report(stage(1, "Completed", step(status="COMPLETED")))))],
        expect={
            "report.stages.0.status": ReportStatus.COMPLETED,
            "report.stages.0.steps.0.status": ReportStatus.COMPLETED,
        },
    ),
    Case(
        "step-totalComponents-missing",
        get_task(),
        "/task/{id}",
        [js(task(report=report(stage(1, "skipped", step(status="skipped", drop=["totalComponents"])))))],
        expect={"report.stages.0.steps.0.total_components": 0},
    ),
    Case(
        "step-totalComponents-null",
        get_task(),
        "/task/{id}",
        [js(task(report=report(stage(1, "running", step(totalComponents=None)))))],
        expect={"report.stages.0.steps.0.total_components": 0},
    ),
    Case(
        "step-totalComponents-18",
        get_task(),
        "/task/{id}",
        [js(task(report=report(stage(1, "running", step("Compute", totalComponents=18)))))],
        expect={"report.stages.0.steps.0.total_components": 18},
    ),
    # ---- timestamps ----------------------------------------------------------------------
    *[
        Case(
            f"timestamp-{label}",
            get_task(),
            "/task/{id}",
            [js(task(started=value))],
            expect={"started": expected},
        )
        for label, value, expected in (
            ("no-fraction-Z", "2026-08-06T10:00:00Z", dt("2026-08-06T10:00:00")),
            ("micro-fraction-Z", "2026-08-06T10:00:00.123456Z", dt("2026-08-06T10:00:00.123456")),
            (
                "go-nano-fraction-truncated",
                "2026-08-06T10:00:00.123456789Z",
                dt("2026-08-06T10:00:00.123456"),
            ),
            ("offset-plus-0200-to-utc", "2026-08-06T10:00:00+02:00", dt("2026-08-06T08:00:00")),
            ("offset-minus-0530-to-utc", "2026-08-06T10:00:00.5-05:30", dt("2026-08-06T15:30:00.5")),
            ("naive-assumed-utc", "2026-08-06T10:00:00", dt("2026-08-06T10:00:00")),
            ("empty-string-is-unset", "", None),
            ("go-zero-time-is-unset", "0001-01-01T00:00:00Z", None),
        )
    ],
    Case(
        "timestamp-started-finished-null",
        get_task(),
        "/task/{id}",
        [js(task(status="Pending", started=None, finished=None))],
        expect={"started": None, "finished": None, "created": dt("2026-08-06T09:59:58")},
    ),
    Case(
        "timestamp-finished-set-terminal",
        get_task(),
        "/task/{id}",
        [js(task(status="Succeeded", finished="2026-08-06T10:05:00Z"))],
        expect={"finished": dt("2026-08-06T10:05:00"), "is_terminal": True},
    ),
    # Decision: a garbage timestamp on the task itself makes that task unusable (we could not
    # order or age it), so it is a typed BadPayload for that task only; in a list, the others live.
    Case(
        "timestamp-garbage-single-task-is-typed-error",
        get_task(),
        "/task/{id}",
        [js(task(started="yesterday-ish"))],
        reasons=("invalid_task",),
        details=("started",),
        error=BadPayload,
        error_reason="invalid_task",
        error_field="started",
        requests=1,
    ),
    Case(
        "timestamp-garbage-rejects-only-that-task-in-list",
        rack_tasks,
        "/rack/{id}/task",
        [one_task(task(1), task(2, updated="not-a-time"), task(3))],
        expect={"items.#": 2, "items.0.id": tid(1), "items.1.id": tid(3), "rejected": 1},
        reasons=("invalid_task",),
        details=("updated",),
    ),
    # ---- ruleId ---------------------------------------------------------------------------
    Case(
        "ruleId-null",
        get_task(),
        "/task/{id}",
        [js(task(ruleId=None))],
        expect={"rule_id": None},
    ),
    Case(
        "ruleId-empty-string",
        get_task(),
        "/task/{id}",
        [js(task(ruleId=""))],
        expect={"rule_id": None},
    ),
    Case(
        "ruleId-invalid",
        get_task(),
        "/task/{id}",
        [js(task(ruleId="default-power-on"))],
        expect={"rule_id": None, "id": TASK_ID},
        reasons=("invalid_field",),
        details=("ruleId='default-power-on'",),
    ),
    Case(
        "ruleId-uppercase-canonicalised",
        get_task(),
        "/task/{id}",
        [js(task(ruleId=RULE_ID.upper()))],
        expect={"rule_id": RULE_ID},
    ),
    # ---- task id ---------------------------------------------------------------------------
    Case(
        "task-id-missing-single",
        get_task(),
        "/task/{id}",
        [js(task(drop=["id"]))],
        reasons=("invalid_task",),
        error=BadPayload,
        error_reason="invalid_task",
        error_field="id",
    ),
    Case(
        "task-id-not-uuid-single",
        get_task(),
        "/task/{id}",
        [js(task(id="task-42"))],
        reasons=("invalid_task",),
        details=("task-42",),
        error=BadPayload,
        error_reason="invalid_task",
        error_field="id",
    ),
    Case(
        "task-id-uppercase-canonicalised",
        get_task(),
        "/task/{id}",
        [js(task(id=TASK_ID.upper()))],
        expect={"id": TASK_ID},
    ),
    Case(
        "task-id-integer-in-list",
        rack_tasks,
        "/rack/{id}/task",
        [one_task(task(1), task(id=42), task(3))],
        # A rejected row may be any task: the rows no longer prove what is absent.
        expect={"items.#": 2, "rejected": 1, "complete": False},
        reasons=("invalid_task",),
        details=("id=42",),
    ),
    Case(
        "one-bad-task-among-good-ones",
        rack_tasks,
        "/rack/{id}/task",
        [one_task(task(1), task(2, status="Paused"), task(drop=["id"]), task(4, status="Pending"))],
        expect={
            "items.#": 3,
            "items.0.id": tid(1),
            "items.1.status": TaskStatus.UNKNOWN,
            "items.2.status": TaskStatus.PENDING,
            "rejected": 1,
            "total": 4,
        },
        # The good tasks' deviations are counted once even though the fast path was abandoned.
        reasons=("invalid_task", "unknown_status"),
    ),
    Case(
        "non-object-items-in-list",
        rack_tasks,
        "/rack/{id}/task",
        [one_task(task(1), None, "x", 7)],
        expect={"items.#": 1, "rejected": 3},
        reasons=("invalid_task", "invalid_task", "invalid_task"),
        details=("<root>",),
    ),
    # ---- body shape -----------------------------------------------------------------------
    Case(
        "list-body-is-object",
        rack_tasks,
        "/rack/{id}/task",
        [page({"items": [task()]}, total=1)],
        reasons=("not_a_list",),
        error=BadPayload,
        error_reason="not_a_list",
        error_text=("got dict",),
        requests=1,
    ),
    Case(
        "list-body-is-null",
        rack_tasks,
        "/rack/{id}/task",
        [raw("null", headers={"X-Pagination": pagination(0)})],
        reasons=("not_a_list",),
        error=BadPayload,
        error_reason="not_a_list",
        error_text=("got NoneType",),
        requests=1,
    ),
    Case(
        "list-empty",
        rack_tasks,
        "/rack/{id}/task",
        [page([])],
        expect={"items": [], "total": 0, "complete": True, "pages": 1},
        requests=1,
    ),
    Case(
        "single-task-body-is-list",
        get_task(),
        "/task/{id}",
        [js([task()])],
        reasons=("invalid_task",),
        error=BadPayload,
        error_reason="invalid_task",
        error_field="<root>",
    ),
    Case(
        "truncated-json-retried-then-badpayload",
        rack_tasks,
        "/rack/{id}/task",
        [raw(json.dumps([task(1), task(2)])[:-40], headers={"X-Pagination": pagination(2)})],
        # Every bad body received is counted, once per response.
        reasons=("truncated_json",) * 3,
        error=BadPayload,
        error_reason="truncated_json",
        error_text=("truncated json",),
        requests=3,
    ),
    Case(
        "truncated-json-then-good-on-retry",
        get_task(),
        "/task/{id}",
        [raw(json.dumps(task())[:25]), js(task(status="Waiting"))],
        expect={"status": TaskStatus.WAITING},
        reasons=("truncated_json",),
        requests=2,
    ),
    Case(
        "html-502-error-page",
        get_task(),
        "/task/{id}",
        [HTML_502],
        error=ServerError,
        error_text=("HTTP 502", "Bad Gateway"),
        requests=3,
    ),
    Case(
        "html-200-is-invalid-json",
        rack_tasks,
        "/rack/{id}/task",
        [raw("<html><body>Sign in</body></html>", headers={"Content-Type": "text/html"})],
        # A malformed (not cut short) body will not heal on a retry: one request.
        reasons=("invalid_json",),
        error=BadPayload,
        error_reason="invalid_json",
        requests=1,
    ),
    Case(
        "empty-body-200",
        get_task(),
        "/task/{id}",
        [raw(b"")],
        reasons=("empty_body",) * 3,
        error=BadPayload,
        error_reason="empty_body",
        error_text=("empty body",),
        requests=3,
    ),
    Case(
        "utf8-bom-before-json",
        get_task(),
        "/task/{id}",
        [raw(b"\xef\xbb\xbf" + json.dumps(task(status="Failed")).encode())],
        expect={"status": TaskStatus.FAILED},
    ),
    Case(
        "duplicate-json-key-last-wins",
        get_task(),
        "/task/{id}",
        [raw(json.dumps(task())[:-1] + ', "status": "Succeeded"}')],
        expect={"status": TaskStatus.SUCCEEDED},
    ),
    Case(
        "corrupt-gzip-is-transport-error",
        get_task(),
        "/task/{id}",
        [raw(b"definitely not gzip", headers={"Content-Encoding": "gzip"})],
        error=TransportError,
        error_text=("DecodingError",),
        requests=3,
    ),
    Case(
        "redirect-302-to-login-is-typed",
        get_task(),
        "/task/{id}",
        [raw("", 302, {"Location": "https://sso.example/login"})],
        error=NicoError,
        error_text=("HTTP 302",),
        requests=1,
    ),
    # ---- NICo error bodies --------------------------------------------------------------------
    Case(
        "http-400-siteId-required",
        rack_tasks,
        "/rack/{id}/task",
        [nico(400, "siteId query parameter is required")],
        error=BadRequest,
        error_text=("siteId query parameter is required",),
        requests=1,
    ),
    Case(
        "http-400-validation-data-object",
        rack_tasks,
        "/rack/{id}/task",
        [
            nico(
                400,
                "Failed to validate pagination request data",
                {"pageSize": "must be less that or equal to: 100"},
            )
        ],
        error=BadRequest,
        error_text=("Failed to validate pagination request data",),
        requests=1,
    ),
    Case(
        "http-401-missing-header-reauth-once",
        get_task(),
        "/task/{id}",
        [nico(401, "Request is missing authorization header")],
        error=Unauthorized,
        error_text=("Request is missing authorization header",),
        requests=2,
    ),
    Case(
        "http-403-site-not-provider",
        rack_tasks,
        "/rack/{id}/task",
        [nico(403, "Site specified in request doesn't belong to current org's Provider")],
        error=Forbidden,
        error_text=("doesn't belong to current org's Provider",),
        requests=1,
    ),
    Case(
        "http-404-nico-task-not-found-no-fallback",
        get_task(),
        "/task/{id}",
        [nico(404, "Task not found"), js(task())],
        error=NotFound,
        error_text=("Task not found",),
        requests=1,
        paths=(f"/task/{TASK_ID}",),
    ),
    Case(
        "http-404-router-falls-back-to-legacy-route",
        get_task(),
        "/task/{id}",
        [ROUTER_404, js(task(status="Terminated", message="Expired: queue timeout reached"))],
        expect={"status": TaskStatus.TERMINATED, "message": "Expired: queue timeout reached"},
        requests=2,
        paths=(f"/task/{TASK_ID}", f"/rack/task/{TASK_ID}"),
    ),
    Case(
        "http-404-plaintext-router-then-legacy-sticks",
        get_task_twice(tid(1), tid(2)),
        "/task/{id}",
        [raw("404 page not found", 404), js(task(1)), js(task(2))],
        expect={"id": tid(2)},
        paths=(f"/task/{tid(1)}", f"/rack/task/{tid(1)}", f"/rack/task/{tid(2)}"),
    ),
    Case(
        "http-404-router-on-both-routes",
        get_task(),
        "/rack/task/{id}",
        [ROUTER_404],
        error=RouteMissing,
        error_text=("HTTP 404",),
        requests=2,
    ),
    Case(
        "http-405-cancel-falls-back-to-legacy",
        cancel_task,
        "/task/{id}/cancel",
        [raw("", 405), js(task(status="Terminated", finished="2026-08-06T10:01:00Z"), 202)],
        expect={"status": TaskStatus.TERMINATED, "finished": dt("2026-08-06T10:01:00")},
        paths=(f"/task/{TASK_ID}/cancel", f"/rack/task/{TASK_ID}/cancel"),
    ),
    Case(
        "http-412-flow-disabled",
        rack_tasks,
        "/rack/{id}/task",
        [nico(412, "Site does not have NICo Flow enabled")],
        error=FlowDisabled,
        error_text=("Site does not have NICo Flow enabled",),
        requests=1,
    ),
    Case(
        "http-429-rate-limited-retried",
        rack_tasks,
        "/rack/{id}/task",
        [nico(429, "Request rate limit exceeded, please re-evaluate your request patterns")],
        error=RateLimited,
        error_text=("Request rate limit exceeded",),
        requests=3,
    ),
    Case(
        "http-429-then-ok",
        rack_tasks,
        "/rack/{id}/task",
        [nico(429, "Request rate limit exceeded, please re-evaluate your request patterns"), page([task()])],
        expect={"items.#": 1},
        requests=2,
    ),
    Case(
        "http-500-workflow-timeout",
        rack_tasks,
        "/rack/{id}/task",
        [nico(500, "Failed to perform Task GetTasks - timeout occurred executing workflow on Site: x")],
        error=ServerError,
        error_text=("timeout occurred executing workflow",),
        requests=3,
    ),
    Case(
        "http-503-unavailable",
        get_task(),
        "/task/{id}",
        [nico(503, "Failed to execute workflow to retrieve Task: site unavailable")],
        error=ServerError,
        error_text=("site unavailable",),
        requests=3,
    ),
    Case(
        "http-503-cancel-not-retried",
        cancel_task,
        "/task/{id}/cancel",
        [nico(503, "Failed to execute workflow to cancel Task")],
        error=ServerError,
        requests=1,
    ),
    Case(
        "http-400-cancel-succeeded-task",
        cancel_task,
        "/task/{id}/cancel",
        [nico(400, "Task in Succeeded state cannot be cancelled")],
        error=BadRequest,
        error_text=("cannot be cancelled",),
        requests=1,
    ),
    Case(
        "http-500-huge-message-truncated",
        get_task(),
        "/task/{id}",
        [nico(500, "x" * 5000)],
        error=ServerError,
        error_text=("x" * 300,),
        requests=3,
    ),
    # ---- X-Pagination ---------------------------------------------------------------------
    Case(
        "pagination-missing",
        rack_tasks,
        "/rack/{id}/task",
        [page([task(1), task(2)], header=None)],
        expect={"items.#": 2, "total": None, "complete": True},
        reasons=("bad_pagination",),
        details=("missing",),
        requests=1,
    ),
    Case(
        "pagination-not-json",
        rack_tasks,
        "/rack/{id}/task",
        [page([task(1)], header="pageNumber=1; total=1")],
        expect={"items.#": 1, "total": None, "complete": True},
        reasons=("bad_pagination",),
        details=("unreadable",),
    ),
    Case(
        "pagination-missing-total",
        rack_tasks,
        "/rack/{id}/task",
        [page([task(1)], header='{"pageNumber":1,"pageSize":100,"orderBy":null}')],
        expect={"items.#": 1, "total": None},
        reasons=("bad_pagination",),
    ),
    Case(
        "pagination-negative-total",
        rack_tasks,
        "/rack/{id}/task",
        [page([task(1)], header=pagination(-1))],
        expect={"items.#": 1, "total": None},
        reasons=("bad_pagination",),
        details=("-1",),
    ),
    Case(
        "pagination-orderBy-string",
        rack_tasks,
        "/rack/{id}/task",
        [page([task(1)], header=pagination(1, order_by="CREATED_DESC"))],
        expect={"items.#": 1, "total": 1, "complete": True},
    ),
    Case(
        "pagination-spec-example-without-orderBy",
        tray_tasks,
        "/tray/{id}/task",
        [page([task(1)], header='{"pageNumber":1,"pageSize":100,"total":1}')],
        expect={"items.#": 1, "total": 1},
    ),
    Case(
        "pagination-duplicates-across-pages",
        rack_tasks,
        "/rack/{id}/task",
        [
            page([task(n) for n in range(100)], total=150),
            page([task(n) for n in range(90, 140)], header=pagination(150, number=2)),
        ],
        # 140 distinct rows do not cover a total of 150: the shifting pages skipped some.
        expect={"items.#": 140, "duplicates": 10, "total": 150, "pages": 2, "complete": False},
        requests=2,
    ),
    Case(
        "pagination-total-larger-than-delivered-stops-on-empty-page",
        rack_tasks,
        "/rack/{id}/task",
        [
            page([task(n) for n in range(100)], total=500),
            page([task(n) for n in range(100, 120)], header=pagination(500, number=2)),
            page([], header=pagination(500, number=3)),
        ],
        expect={"items.#": 120, "total": 500, "pages": 3, "complete": False},
        requests=3,
    ),
    Case(
        "count-rack-tasks-ok",
        count_tasks,
        "/rack/{id}/task",
        [page([task()], total=37)],
        expect={"total": 37, "items.#": 1, "complete": False},
    ),
    Case(
        "count-rack-tasks-without-pagination",
        count_tasks,
        "/rack/{id}/task",
        [page([task()], header=None)],
        reasons=("bad_pagination",),
        expect={"total": None, "complete": False},
    ),
    # ---- unknown fields, large and odd text -------------------------------------------------
    Case(
        "extra-unknown-fields-ignored",
        get_task(),
        "/task/{id}",
        [
            js(
                task(
                    rackId=RACK_ID,
                    operation={"code": "power_on"},
                    queueExpiresAt="2026-08-06T11:00:00Z",
                    report=report(stage(1, "running", step(completedComponents=3, vendor="x")), future=True),
                )
            )
        ],
        expect={"status": TaskStatus.RUNNING, "report.stages.0.steps.0.total_components": 9},
    ),
    Case(
        "deeply-nested-extra-field-ignored",
        get_task(),
        "/task/{id}",
        [js(task(attributes=nested(200)))],
        expect={"id": TASK_ID},
    ),
    Case(
        "description-10k-chars-verbatim",
        get_task(),
        "/task/{id}",
        [js(task(description="API batch bring up Racks " + "r" * 10_000))],
        expect={"description": "API batch bring up Racks " + "r" * 10_000},
    ),
    Case(
        "description-non-ascii-quotes-newlines-verbatim",
        rack_tasks,
        "/rack/{id}/task",
        [
            one_task(
                task(
                    description='Leak detection: force power-off component "ü-42"\n\tof type Compute — ✓',
                    message="línea 1\r\nline 2 \\ 'q' \u0000 end",
                )
            )
        ],
        expect={
            "items.0.description": 'Leak detection: force power-off component "ü-42"\n\tof type Compute — ✓',
            "items.0.message": "línea 1\r\nline 2 \\ 'q' \u0000 end",
        },
    ),
    Case(
        "description-null-is-empty",
        get_task(),
        "/task/{id}",
        [js(task(description=None, message=None))],
        expect={"description": "", "message": None},
    ),
    # ---- sites -----------------------------------------------------------------------------
    Case(
        "site-without-capabilities",
        sites,
        "/site",
        [page([site(1, capabilities=None), site(2)])],
        expect={
            "items.#": 2,
            "items.0.capabilities": None,
            "items.0.flow_enabled": False,
            "items.1.flow_enabled": True,
        },
    ),
    Case(
        "site-capabilities-missing-key-and-extras",
        sites,
        "/site",
        [page([{k: v for k, v in site(1).items() if k != "capabilities"} | {"gpuStats": {"total": 72}}])],
        expect={"items.0.flow_enabled": False, "items.0.is_online": True},
    ),
    # ---- trays ------------------------------------------------------------------------------
    Case(
        "tray-types-spec-lowercase-and-code-spellings",
        trays,
        "/tray",
        [
            page(
                [
                    tray(0, type="compute"),
                    tray(1, type="switch"),
                    tray(2, type="powershelf"),
                    tray(3, type="Compute"),
                    tray(4, type="NVSwitch"),
                    tray(5, type="PowerShelf"),
                    tray(6, type="ComponentTypeCompute"),
                    tray(7, type="unknown"),
                    tray(8, type=None),
                ]
            )
        ],
        expect={
            "items.0.type": ComponentType.COMPUTE,
            "items.1.type": ComponentType.NVSWITCH,
            "items.2.type": ComponentType.POWERSHELF,
            "items.3.type": ComponentType.COMPUTE,
            "items.4.type": ComponentType.NVSWITCH,
            "items.5.type": ComponentType.POWERSHELF,
            "items.6.type": ComponentType.COMPUTE,
            "items.7.type": ComponentType.UNKNOWN,
            "items.8.type": ComponentType.UNKNOWN,
            "rejected": 0,
        },
    ),
    Case(
        "tray-type-unknown-Gizmo",
        trays,
        "/tray",
        [page([tray(0, type="Gizmo")])],
        expect={"items.0.type": ComponentType.UNKNOWN},
        reasons=("unknown_component_type",),
        details=("'Gizmo'",),
    ),
    Case(
        "tray-rackId-missing",
        trays,
        "/tray",
        [page([tray(0, drop=["rackId"]), tray(1, rackId=""), tray(2, rackId=RACK_ID.upper())])],
        expect={"items.0.rack_id": None, "items.1.rack_id": None, "items.2.rack_id": RACK_ID},
    ),
    Case(
        "tray-rackId-garbage-rejects-tray",
        trays,
        "/tray",
        [page([tray(0, rackId="rack-7"), tray(1)])],
        expect={"items.#": 1, "rejected": 1},
        reasons=("invalid_tray",),
        details=("rackId",),
    ),
    # ---- defects the corpus found in the client, fixed ------------------------------------------
    # json.loads raises RecursionError on deep nesting; it must surface as a BadPayload.
    Case(
        "deeply-nested-json-is-badpayload",
        get_task(),
        "/task/{id}",
        [raw('{"id": "' + TASK_ID + '", "attributes": ' + "[" * 100_000 + "]" * 100_000 + "}")],
        reasons=("invalid_json",),
        error=BadPayload,
        error_reason="invalid_json",
        requests=1,
    ),
    # A body cut inside a literal (`nul`) fails at the literal's start, not at the end.
    Case(
        "truncated-inside-null-literal",
        get_task(),
        "/task/{id}",
        [raw(json.dumps(task(finished=None)).split('"finished": null')[0] + '"finished": nul')],
        reasons=("truncated_json",) * 3,
        error=BadPayload,
        error_reason="truncated_json",
        requests=3,
    ),
]


_REPEATED_PAGE = page([task(i) for i in range(100)], total=1_000_000)


def _ignores_page_number(request: httpx.Request, n: int) -> Reply:
    """A server (or proxy stripping the query) that repeats page 1 and claims a huge total."""
    if n > MAX_PAGES + 10:
        return nico(400, "test budget exhausted: the client kept paging")
    return _REPEATED_PAGE


def _caps_page_size_at_20(request: httpx.Request, n: int) -> Reply:
    """A server that serves at most 20 per page and says so in X-Pagination.pageSize."""
    number = int(request.url.params["pageNumber"])
    chunk = [task(i) for i in range((number - 1) * 20, min(number * 20, 50))]
    return page(chunk, header=pagination(50, number=number, size=20))


CASES += [
    # A bogus total with repeated pages must not mean millions of Temporal workflows: a page
    # that brings nothing new ends the listing, incomplete.
    Case(
        "huge-total-with-repeated-pages-stops",
        rack_tasks,
        "/rack/{id}/task",
        _ignores_page_number,
        expect={"items.#": 100, "complete": False, "pages": 2},
    ),
    # A server that serves 20 per page (and says so) is paged by its own page size.
    Case(
        "server-page-size-20-is-followed",
        rack_tasks,
        "/rack/{id}/task",
        _caps_page_size_at_20,
        expect={"items.#": 50, "total": 50, "complete": True, "pages": 3},
    ),
]


# -- runner ---------------------------------------------------------------------------------------


@dataclass
class Run:
    result: object = None
    error: Exception | None = None
    events: list[ParseEvent] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)


async def run_case(case: Case, auth: TokenSource | None = None) -> Run:
    """Run one case against a fresh client; any exception is captured, not raised."""
    run = Run()

    def handler(request: httpx.Request) -> httpx.Response:
        run.requests.append(request)
        n = len(run.requests)
        if isinstance(case.replies, Sequence):
            reply = case.replies[min(n, len(case.replies)) - 1]
        else:
            reply = case.replies(request, n)
        # A stream, not content=: httpx then decodes (e.g. gzip) on the client side, as on the wire.
        return httpx.Response(
            reply.status, headers=dict(reply.headers), stream=httpx.ByteStream(reply.content)
        )

    client = NicoClient(
        BASE_URL,
        ORG,
        auth=auth,
        transport=httpx.MockTransport(handler),
        max_requests_per_second=0,
        retry=FAST_RETRY,
        hooks=ClientHooks(on_parse_error=run.events.append),
    )
    try:
        run.result = await case.call(client)
    except Exception as exc:
        run.error = exc
    finally:
        await client.aclose()
    return run


def pluck(obj: object, path: str) -> object:
    """Follow ``a.0.b`` through attributes and indexes; ``#`` is ``len``; ``""`` is ``obj``."""
    for part in path.split(".") if path else ():
        if part == "#":
            obj = len(obj)  # type: ignore[arg-type]
        elif part.isdigit():
            obj = obj[int(part)]  # type: ignore[index]
        else:
            obj = getattr(obj, part)
    return obj


def assert_value(actual: object, expected: object, path: str) -> None:
    assert actual == expected, f"{path}: {actual!r} != {expected!r}"
    if isinstance(expected, datetime):
        assert isinstance(actual, datetime)
        assert actual.utcoffset() == timedelta(0), f"{path} not normalised to UTC: {actual!r}"


def _params() -> list[Any]:
    out: list[Any] = []
    for case in CASES:
        marks = []
        if case.bug is not None:
            marks.append(pytest.mark.xfail(strict=True, reason=case.bug, raises=case.bug_raises))
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


def test_corpus_is_large_and_ids_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", _params())
async def test_corpus(case: Case) -> None:
    run = await run_case(case)

    if run.error is not None and not isinstance(run.error, NicoError):
        raise run.error  # a crash: the corpus promises typed errors only

    assert [e.reason for e in run.events] == list(case.reasons), [(e.reason, e.detail) for e in run.events]
    for needle in case.details:
        assert any(needle in e.detail for e in run.events), (needle, [e.detail for e in run.events])
    for event in run.events:
        assert event.endpoint == case.endpoint

    if case.error is None:
        assert run.error is None, f"unexpected {run.error!r}"
        for path, expected in case.expect.items():
            assert_value(pluck(run.result, path), expected, path)
    else:
        err = run.error
        assert type(err) is case.error, f"expected {case.error.__name__}, got {err!r}"
        assert isinstance(err, NicoError)
        assert err.endpoint == case.endpoint
        assert case.endpoint in str(err)
        for needle in case.error_text:
            assert needle in str(err)
        if case.error_reason is not None or case.error_field is not None:
            assert isinstance(err, BadPayload)
            if case.error_reason is not None:
                assert err.reason == case.error_reason
            if case.error_field is not None:
                assert err.field == case.error_field
                assert case.error_field in str(err)

    if case.requests is not None:
        assert len(run.requests) == case.requests
    if case.paths:
        assert [r.url.path for r in run.requests] == [PREFIX + p for p in case.paths]


async def test_canary_token_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    """Across every corpus case: exceptions, tracebacks, log records and parse events stay clean."""
    caplog.set_level(logging.DEBUG)
    baseline = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__)
    sent = 0
    for case in CASES:
        run = await run_case(case, auth=StaticToken(CANARY))
        for request in run.requests:
            assert request.headers["Authorization"] == f"Bearer {CANARY}"  # the canary was in play
            sent += 1
        if run.error is not None:
            err = run.error
            assert CANARY not in str(err), case.id
            assert CANARY not in repr(err), case.id
            assert CANARY not in "".join(traceback.format_exception(err)), case.id
            assert CANARY not in repr(vars(err)), case.id
        for event in run.events:
            assert CANARY not in repr(event), case.id
        assert CANARY not in repr(run.result), case.id
    assert sent >= len(CASES)
    assert caplog.records, "expected the corpus to log something"
    for record in caplog.records:
        assert CANARY not in record.getMessage()
        extras = {k: v for k, v in record.__dict__.items() if k not in baseline}
        assert CANARY not in repr(extras)
