"""The HTTP layer: NICo's REST surface over a :class:`Simulation`, as a Starlette ASGI app.

Request pipeline for ``/v2`` (the order the real server applies, see nico-api-notes.md §4-5):
rate limiter (Echo, per client IP) -> global outage switch -> bearer auth (401) -> org
membership (403) -> fault draw -> handler (path id, ``siteId``, pagination, site, Flow 412,
site outage 500) -> response faults. ``/auth/*`` is unversioned like Keycloak mode's routes;
``/_sim/*`` is the unauthenticated control API for tests, the demo and benchmarks.

Choices where the notes are silent are marked "Choice:" below.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.utils import format_datetime
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exporter.models import ComponentType
from exporter.simulator.control import control_routes
from exporter.simulator.faults import BadPagination, Failure, FaultPlan
from exporter.simulator.inventory import Site
from exporter.simulator.operations import POWER_STATES, Operation, describe
from exporter.simulator.responses import nico_error, nico_response, read_json_object
from exporter.simulator.simulation import Simulation
from exporter.simulator.wire import (
    JSONObject,
    compact,
    encode,
    rack_json,
    site_json,
    task_json,
    tray_json,
)
from exporter.simulator.world import CancelRefused, Task

API = "/v2/org/{org}/nico"
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
RATE_LIMITED = "Request rate limit exceeded, please re-evaluate your request patterns"
PAGINATION_INVALID = "Failed to validate pagination request data"
_ORDER_BY = re.compile(r"^[A-Z0-9_]+_(ASC|DESC)$")
_TRAY_TYPES = {
    kind.value: kind for kind in (ComponentType.COMPUTE, ComponentType.NVSWITCH, ComponentType.POWERSHELF)
}
_FIRMWARE_TARGETS = frozenset({"bmc", "cpld", "bios", "nvos", "pmc", "psu", "dpu"})


class ApiError(Exception):
    """A NICo error response: ``{"source":"nico","message":...,"data":...}`` with a status."""

    def __init__(self, status: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.data = data


class SimulatedReset(ConnectionResetError):
    """Raised after a deliberately short body so the server drops the connection (fault ``reset``)."""


@dataclass
class Result:
    """What a handler produced, before response faults are applied."""

    body: Any
    status: int = 200
    pagination: JSONObject | None = None
    # The body is a task or a list of tasks: ``unknown_status``/``report_v2`` faults apply.
    tasks: bool = False


@dataclass
class Ctx:
    """One API request as a handler sees it."""

    request: Request
    sim: Simulation
    resource: str  # "Task", "Rack", "Tray", "Site": names the workflow in timeout messages
    workflow: str  # "GetTasks", "CancelTask", ...
    body_cache: JSONObject | None = None

    def query(self, name: str) -> str | None:
        return self.request.query_params.get(name)

    def path(self, name: str) -> str:
        return str(self.request.path_params[name])

    async def body(self) -> JSONObject:
        """The JSON request body; 400 when it is not a JSON object."""
        if self.body_cache is None:
            raw = await self.request.body()
            try:
                value = json.loads(raw) if raw else {}
            except ValueError:
                raise ApiError(400, "Failed to parse request data") from None
            if not isinstance(value, dict):
                raise ApiError(400, "Failed to parse request data")
            self.body_cache = value
        return self.body_cache


Handler = Callable[[Ctx], Awaitable[Result]]


# --- response helpers ----------------------------------------------------------------------------


def _timeout_message(resource: str, workflow: str, site_id: str) -> str:
    # Choice: the resource word varies by endpoint ("Task GetTasks", "Rack GetRacks").
    return f"Failed to perform {resource} {workflow} - timeout occurred executing workflow on Site: {site_id}"


class ShortBodyResponse(Response):
    """Promises ``Content-Length`` of the full body but sends only its first half.

    Over a socket the server then aborts the connection (the client sees it closed mid-body);
    in-process (httpx ``ASGITransport``) the client receives a short body.
    """

    def __init__(self, full: bytes, status_code: int = 200, headers: dict[str, str] | None = None) -> None:
        super().__init__(full[: len(full) // 2], status_code=status_code, media_type="application/json")
        if headers:
            for name, value in headers.items():
                self.headers[name] = value
        self.headers["content-length"] = str(len(full))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            await send({"type": "http.response.body", "body": self.body, "more_body": False})
        except Exception:
            raise SimulatedReset("simulated connection reset") from None


# --- parsing -------------------------------------------------------------------------------------


def _parse_uuid(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _path_uuid(ctx: Ctx, kind: str) -> str:
    parsed = _parse_uuid(ctx.path("id"))
    if parsed is None:
        raise ApiError(400, f"Invalid {kind} ID specified in URL")
    return parsed


def _parse_bool(ctx: Ctx, name: str, default: bool = False) -> bool:
    """Go's ``strconv.ParseBool`` accepted spellings."""
    raw = ctx.query(name)
    if raw is None or raw == "":
        return default
    if raw in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if raw in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    # Choice: message for an unparsable boolean (Echo's binder wording was not read).
    raise ApiError(400, f"Invalid value specified for query parameter: {name}")


@dataclass(frozen=True)
class Page:
    number: int
    size: int
    order_by: str | None

    def apply(self, items: Sequence[Any]) -> tuple[list[Any], JSONObject]:
        """The page's slice and the ``X-Pagination`` object (keys in the server's order)."""
        offset = (self.number - 1) * self.size
        header = {
            "pageNumber": self.number,
            "pageSize": self.size,
            "total": len(items),
            "orderBy": self.order_by,
        }
        return list(items[offset : offset + self.size]), header


def _page(ctx: Ctx, allowed_order: frozenset[str] | None) -> Page:
    """Validate pagination like ``pageRequest.Validate(allowed)``; None allows no ``orderBy``."""
    errors: dict[str, str] = {}
    number = _int_param(ctx, "pageNumber", 1, errors)
    size = _int_param(ctx, "pageSize", DEFAULT_PAGE_SIZE, errors)
    if "pageNumber" not in errors and number < 1:
        errors["pageNumber"] = "must be no less than 1"
    if "pageSize" not in errors:
        if size < 1:
            errors["pageSize"] = "must be no less than 1"
        elif size > MAX_PAGE_SIZE:
            errors["pageSize"] = f"must be less that or equal to: {MAX_PAGE_SIZE}"  # sic, the server's typo
    order_by = ctx.query("orderBy")
    if order_by is not None:
        field_name = order_by.rsplit("_", 1)[0]
        if not _ORDER_BY.match(order_by) or allowed_order is None or field_name not in allowed_order:
            # Choice: ozzo-validation's generic "must be a valid value" for a rejected orderBy.
            errors["orderBy"] = "must be a valid value"
    if errors:
        raise ApiError(400, PAGINATION_INVALID, errors)
    return Page(number, size, order_by)


def _int_param(ctx: Ctx, name: str, default: int, errors: dict[str, str]) -> int:
    raw = ctx.query(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        errors[name] = "must be an integer"
        return default


def _sorted(items: list[Any], order_by: str | None, keys: dict[str, Callable[[Any], Any]]) -> list[Any]:
    if order_by is None:
        return items
    field_name, direction = order_by.rsplit("_", 1)
    return sorted(items, key=keys[field_name], reverse=direction == "DESC")


# --- site resolution -----------------------------------------------------------------------------


async def _flow_site(ctx: Ctx, raw: str | None, *, in_body: bool = False) -> Site:
    """The Flow-enabled, reachable site named by ``siteId``, or the NICo error the server gives."""
    if raw is None or raw == "":
        if in_body:
            raise ApiError(400, "Failed to validate request data", {"siteId": "cannot be blank"})
        raise ApiError(400, "siteId query parameter is required")
    site_id = _parse_uuid(raw)
    site = ctx.sim.site(site_id) if site_id is not None else None
    if site is None:
        raise ApiError(400, "Site specified in request does not exist")
    if not site.flow:
        raise ApiError(412, "Site does not have NICo Flow enabled")
    if site.down:
        # The workflow waits for a Site that never answers, then the handler gives up.
        await asyncio.sleep(site.down_delay_s)
        raise ApiError(500, _timeout_message(ctx.resource, ctx.workflow, site.id))
    return site


def _render_task(ctx: Ctx, task: Task, *, include_report: bool) -> JSONObject:
    return task_json(
        task, include_report=include_report, nvlswitch_spelling=ctx.sim.config.nvlswitch_spelling
    )


# --- discovery handlers --------------------------------------------------------------------------

_SITE_ORDER = frozenset({"NAME", "STATUS", "CREATED", "UPDATED", "DESCRIPTION", "LOCATION", "CONTACT"})
_RACK_ORDER = frozenset({"NAME", "MANUFACTURER", "MODEL"})
_TRAY_ORDER = frozenset({"NAME", "MANUFACTURER", "MODEL", "TYPE"})


async def list_sites(ctx: Ctx) -> Result:
    """``GET /site``: sites of the org, optionally only Flow-enabled ones."""
    flow = ctx.query("isFlowEnabled")
    want_flow = None if flow in (None, "") else _parse_bool(ctx, "isFlowEnabled")
    statuses = ctx.request.query_params.getlist("status")
    page = _page(ctx, _SITE_ORDER)
    rendered = [site_json(site) for site in ctx.sim.sites() if want_flow is None or site.flow == want_flow]
    if statuses:
        rendered = [site for site in rendered if site["status"] in statuses]
    rendered = _sorted(
        rendered,
        page.order_by,
        {
            "NAME": lambda s: s["name"],
            "STATUS": lambda s: s["status"],
            "CREATED": lambda s: s["created"],
            "UPDATED": lambda s: s["updated"],
            "DESCRIPTION": lambda s: s["description"],
            "LOCATION": lambda s: s["location"]["city"],
            "CONTACT": lambda s: s["contact"]["email"],
        },
    )
    items, header = page.apply(rendered)
    return Result(items, pagination=header)


async def get_site(ctx: Ctx) -> Result:
    site_id = _parse_uuid(ctx.path("id"))
    site = ctx.sim.site(site_id) if site_id is not None else None
    if site_id is None:
        raise ApiError(400, "Invalid Site ID specified in URL")
    if site is None:
        raise ApiError(404, f"Could not find Site with ID: {site_id}")
    return Result(site_json(site))


async def list_racks(ctx: Ctx) -> Result:
    """``GET /rack?siteId=``: racks of a Flow site; ``components`` with ``includeComponents``."""
    site = await _flow_site(ctx, ctx.query("siteId"))
    include = _parse_bool(ctx, "includeComponents")
    page = _page(ctx, _RACK_ORDER)
    racks = ctx.sim.racks(site.id)
    names = ctx.request.query_params.getlist("name")
    makers = ctx.request.query_params.getlist("manufacturer")
    racks = [r for r in racks if (not names or r.name in names) and (not makers or r.manufacturer in makers)]
    racks = _sorted(
        racks,
        page.order_by,
        {"NAME": lambda r: r.name, "MANUFACTURER": lambda r: r.manufacturer, "MODEL": lambda r: r.model},
    )
    items, header = page.apply(racks)
    body = [rack_json(rack, ctx.sim.world.rack_trays(rack.id) if include else None) for rack in items]
    return Result(body, pagination=header)


async def get_rack(ctx: Ctx) -> Result:
    rack_id = _path_uuid(ctx, "Rack")
    site = await _flow_site(ctx, ctx.query("siteId"))
    rack = ctx.sim.world.racks.get(rack_id)
    if rack is None or rack.site_id != site.id:
        raise ApiError(404, "Rack not found")
    include = _parse_bool(ctx, "includeComponents")
    return Result(rack_json(rack, ctx.sim.world.rack_trays(rack.id) if include else None))


async def list_trays(ctx: Ctx) -> Result:
    """``GET /tray?siteId=[&rackId=|&rackName=][&type=][&id=...][&componentId=...]``."""
    site = await _flow_site(ctx, ctx.query("siteId"))
    params = ctx.request.query_params
    rack_id_raw, rack_name = ctx.query("rackId"), ctx.query("rackName")
    ids, component_ids = params.getlist("id"), params.getlist("componentId")
    kind_raw = ctx.query("type")
    errors: dict[str, str] = {}
    if kind_raw is not None and kind_raw not in _TRAY_TYPES:
        errors["type"] = "must be a valid value"  # case-sensitive, as validation.In is
    if rack_id_raw and rack_name:
        errors["rackName"] = "cannot be specified together with rackId"
    if (rack_id_raw or rack_name) and (ids or component_ids):
        errors["id"] = "cannot be specified together with rackId or rackName"
    if component_ids and kind_raw is None:
        errors["componentId"] = "requires type"
    if errors:
        raise ApiError(400, "Failed to validate request data", errors)
    page = _page(ctx, _TRAY_ORDER)
    rack_id = None
    if rack_id_raw:
        rack_id = _parse_uuid(rack_id_raw)
        if rack_id is None:
            raise ApiError(400, "Invalid Rack ID specified in query")
    trays = ctx.sim.trays(site.id)
    if rack_id is not None:
        trays = [t for t in trays if t.rack_id == rack_id]
    if rack_name:
        names = {r.id for r in ctx.sim.racks(site.id) if r.name == rack_name}
        trays = [t for t in trays if t.rack_id in names]
    if kind_raw is not None:
        trays = [t for t in trays if t.type is _TRAY_TYPES[kind_raw]]
    if ids:
        trays = [t for t in trays if t.id in ids]
    if component_ids:
        trays = [t for t in trays if t.component_id in component_ids]
    trays = _sorted(
        trays,
        page.order_by,
        {
            "NAME": lambda t: t.name,
            "MANUFACTURER": lambda t: t.manufacturer,
            "MODEL": lambda t: t.model,
            "TYPE": lambda t: t.type.value,
        },
    )
    items, header = page.apply(trays)
    return Result([tray_json(tray) for tray in items], pagination=header)


async def get_tray(ctx: Ctx) -> Result:
    tray_id = _path_uuid(ctx, "Tray")
    site = await _flow_site(ctx, ctx.query("siteId"))
    tray = ctx.sim.world.trays.get(tray_id)
    if tray is None or tray.site_id != site.id:
        raise ApiError(404, "Tray not found")
    return Result(tray_json(tray))


async def user_current(ctx: Ctx) -> Result:
    """``GET /user/current``: the org-membership probe a client can use to check its token."""
    return Result(
        {
            "id": "8d1b1c55-7f0e-4d5c-9f1e-6a2f3c4b5d6e",
            "email": "service-account@nico.local",
            "firstName": "Service",
            "lastName": "Account",
            "created": "2026-01-01T00:00:00Z",
            "updated": "2026-01-01T00:00:00Z",
        }
    )


async def metadata(ctx: Ctx) -> Result:
    return Result({"version": "2.0.0", "buildTime": "2026-08-06T00:00:00Z"})


# --- task handlers -------------------------------------------------------------------------------


async def _task_list(ctx: Ctx, tasks_of: Callable[[Site, str], list[Task] | None], kind: str) -> Result:
    object_id = _path_uuid(ctx, kind)
    site = await _flow_site(ctx, ctx.query("siteId"))
    active_only = _parse_bool(ctx, "activeOnly")
    include_report = _parse_bool(ctx, "includeReport")
    page = _page(ctx, None)  # orderBy is not supported on task lists
    tasks = tasks_of(site, object_id)
    if tasks is None:
        raise ApiError(404, f"{kind} not found")
    if active_only:
        tasks = [task for task in tasks if task.status.is_active]
    items, header = page.apply(ctx.sim.list_order(tasks))
    body = [_render_task(ctx, task, include_report=include_report) for task in items]
    return Result(body, pagination=header, tasks=True)


async def rack_tasks(ctx: Ctx) -> Result:
    """``GET /rack/{id}/task``: every task of the rack, tray-initiated ones included."""

    def of(site: Site, rack_id: str) -> list[Task] | None:
        rack = ctx.sim.world.racks.get(rack_id)
        if rack is None or rack.site_id != site.id:
            return None
        return ctx.sim.world.rack_tasks(rack_id)

    return await _task_list(ctx, of, "Rack")


async def tray_tasks(ctx: Ctx) -> Result:
    """``GET /tray/{id}/task``: tasks whose targeted components include the tray."""

    def of(site: Site, tray_id: str) -> list[Task] | None:
        tray = ctx.sim.world.trays.get(tray_id)
        if tray is None or tray.site_id != site.id:
            return None
        return ctx.sim.world.tray_tasks(tray_id)

    return await _task_list(ctx, of, "Tray")


def _site_task(ctx: Ctx, site: Site, task_id: str) -> Task:
    task = ctx.sim.world.tasks.get(task_id)
    if task is None or task.site_id != site.id:
        raise ApiError(404, "Task not found")
    return task


async def get_task(ctx: Ctx) -> Result:
    """``GET /task/{id}`` (and the legacy ``/rack/task/{id}``): the report is always included."""
    task_id = _path_uuid(ctx, "Task")
    site = await _flow_site(ctx, ctx.query("siteId"))
    task = _site_task(ctx, site, task_id)
    return Result(_render_task(ctx, task, include_report=True), tasks=True)


async def cancel_task(ctx: Ctx) -> Result:
    """``POST /task/{id}/cancel``: 202 with the task; idempotent; refused once Succeeded/Failed.

    Choice: the refusal status. Flow's CancelTask error code was not read; FailedPrecondition
    would map to 412 through ``UnwrapWorkflowError``. We default to 400 (as briefed) and make it
    ``SimulatorConfig.cancel_refused_status`` so clients can be tested against both.
    """
    task_id = _path_uuid(ctx, "Task")
    body = await ctx.body()
    site = await _flow_site(ctx, _str_or_none(body.get("siteId")), in_body=True)
    task = _site_task(ctx, site, task_id)
    try:
        task = ctx.sim.cancel_task(task.id)
    except CancelRefused as exc:
        raise ApiError(ctx.sim.config.cancel_refused_status, str(exc)) from None
    return Result(_render_task(ctx, task, include_report=True), status=202, tasks=True)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# --- write handlers ------------------------------------------------------------------------------


async def _target(ctx: Ctx, kind: str) -> tuple[Site, str, list[str] | None]:
    """Resolve ``{id}`` and ``siteId`` of a rack or tray write: (site, rack id, tray ids or None)."""
    object_id = _path_uuid(ctx, kind)
    body = await ctx.body()
    site = await _flow_site(ctx, _str_or_none(body.get("siteId")), in_body=True)
    world = ctx.sim.world
    if kind == "Rack":
        rack = world.racks.get(object_id)
        if rack is None or rack.site_id != site.id:
            raise ApiError(404, "Rack not found")
        return site, rack.id, None
    tray = world.trays.get(object_id)
    if tray is None or tray.site_id != site.id:
        raise ApiError(404, "Tray not found")
    return site, tray.rack_id, [tray.id]


def _create(
    ctx: Ctx, site: Site, rack_id: str, operation: Operation, trays: list[str] | None, text: str
) -> Result:
    task_id = ctx.sim.create_task(site.id, rack_id, operation, tray_ids=trays, description=text)
    return Result({"taskIds": [task_id]})


async def _power(ctx: Ctx, kind: str) -> Result:
    site, rack_id, trays = await _target(ctx, kind)
    state = (await ctx.body()).get("state")
    if not isinstance(state, str) or state not in POWER_STATES:
        raise ApiError(400, "Failed to validate request data", {"state": "must be a valid value"})
    operation = POWER_STATES[state]
    return _create(
        ctx,
        site,
        rack_id,
        operation,
        trays,
        describe(operation, tray_scoped=trays is not None, rack_id=rack_id),
    )


async def rack_power(ctx: Ctx) -> Result:
    """``PATCH /rack/{id}/power``: one task, "API power on Rack" etc."""
    return await _power(ctx, "Rack")


async def tray_power(ctx: Ctx) -> Result:
    """``PATCH /tray/{id}/power``: one task on the tray's rack, "API power on Tray" etc."""
    return await _power(ctx, "Tray")


async def _firmware(ctx: Ctx, kind: str) -> Result:
    site, rack_id, trays = await _target(ctx, kind)
    body = await ctx.body()
    targets = body.get("targets")
    if targets is not None:
        if not isinstance(targets, list) or any(t not in _FIRMWARE_TARGETS for t in targets):
            raise ApiError(400, "Failed to validate request data", {"targets": "must be a valid value"})
        if targets and not body.get("version"):
            raise ApiError(
                400, "Failed to validate request data", {"version": "is required when targets are set"}
            )
    operation = Operation.FIRMWARE_UPDATE
    text = describe(operation, tray_scoped=trays is not None, rack_id=rack_id)
    # A power shelf has no step in the default firmware rule: its task gets an all-skipped
    # report and succeeds right after admission (Choice: Flow's handling was not read).
    return _create(ctx, site, rack_id, operation, trays, text)


async def rack_firmware(ctx: Ctx) -> Result:
    return await _firmware(ctx, "Rack")


async def tray_firmware(ctx: Ctx) -> Result:
    return await _firmware(ctx, "Tray")


async def rack_bringup(ctx: Ctx) -> Result:
    """``POST /rack/{id}/bringup``: the caller's description or "API bring up Rack <rackId>"."""
    site, rack_id, _ = await _target(ctx, "Rack")
    given = (await ctx.body()).get("description")
    text = (
        given
        if isinstance(given, str) and given
        else describe(Operation.BRING_UP, tray_scoped=False, rack_id=rack_id)
    )
    return _create(ctx, site, rack_id, Operation.BRING_UP, None, text)


# --- the /v2 request pipeline --------------------------------------------------------------------


def client_ip(request: Request) -> str:
    """Echo's ``RealIP``: first X-Forwarded-For entry, then X-Real-IP, then the peer address."""
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        return forwarded.split(",")[0].strip()
    real = request.headers.get("x-real-ip")
    if real:
        return real.strip()
    return request.client.host if request.client else "unknown"


def _check_auth(sim: Simulation, request: Request) -> Response | None:
    if not sim.config.require_auth:
        return None
    header = request.headers.get("authorization")
    if not header:
        return nico_error(401, "Request is missing authorization header")
    parts = header.split(" ")
    if len(parts) != 2 or parts[0] != "Bearer" or not parts[1]:
        return nico_error(401, "Invalid Authorization header format")
    if not sim.tokens.valid(parts[1]):
        return nico_error(401, "Invalid authorization token in request")
    return None


def _guard(sim: Simulation, request: Request) -> Response | None:
    """Rate limit, then auth: the gates before any handler (and before the outage switch)."""
    if sim.config.rate_limit and not sim.limiter.allow(client_ip(request)):
        return nico_error(429, RATE_LIMITED)
    return _check_auth(sim, request)


def api_endpoint(resource: str, workflow: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler in the ``/v2`` pipeline: guards, org check, outages, faults, errors."""

    async def endpoint(request: Request) -> Response:
        sim: Simulation = request.app.state.sim
        denied = _guard(sim, request)
        if denied is not None:
            return denied
        org = str(request.path_params["org"])
        if org != sim.config.org:
            return nico_error(403, f"Failed to validate membership for org: {org}")
        faults = sim.faults.config
        if faults.down:
            await asyncio.sleep(faults.down_delay_s)
            site_id = request.query_params.get("siteId") or "unknown"
            return nico_error(500, _timeout_message(resource, workflow, site_id))
        plan = sim.faults.draw()
        if plan.slow:
            await asyncio.sleep(faults.slow_seconds)
        if plan.failure in (Failure.ERROR_500, Failure.ERROR_503):
            return _injected_error(plan.failure, resource, workflow, request)
        sim.advance()
        ctx = Ctx(request=request, sim=sim, resource=resource, workflow=workflow)
        try:
            result = await handler(ctx)
        except ApiError as exc:
            return nico_error(exc.status, exc.message, exc.data)
        return _respond(sim, result, plan)

    return endpoint


def _injected_error(failure: Failure, resource: str, workflow: str, request: Request) -> Response:
    site_id = request.query_params.get("siteId") or "unknown"
    if failure is Failure.ERROR_503:
        # Flow's gRPC Unavailable, mapped to 503 by UnwrapWorkflowError.
        return nico_error(
            503, f"Failed to execute workflow {workflow} on Site: {site_id}: Flow service unavailable"
        )
    return nico_error(500, _timeout_message(resource, workflow, site_id))


def _respond(sim: Simulation, result: Result, plan: FaultPlan) -> Response:
    body = result.body
    if result.tasks and plan.mutates_tasks:
        _mutate_tasks(sim, body, plan)
    headers: dict[str, str] = {}
    if result.pagination is not None:
        headers["X-Pagination"] = compact(result.pagination)
        if plan.bad_pagination is BadPagination.MISSING:
            del headers["X-Pagination"]
        elif plan.bad_pagination is BadPagination.GARBAGE:
            headers["X-Pagination"] = "pageNumber=1;total=?"
    payload = encode(body)
    if plan.failure is Failure.RESET:
        return ShortBodyResponse(payload, result.status, headers)
    if plan.failure is Failure.TRUNCATED:
        return Response(payload[: len(payload) // 2], result.status, headers, media_type="application/json")
    return Response(payload, result.status, headers, media_type="application/json")


def _mutate_tasks(sim: Simulation, body: Any, plan: FaultPlan) -> None:
    """Corrupt one task of this response only (the world is untouched)."""
    tasks: list[JSONObject] = body if isinstance(body, list) else [body]
    rng = sim.faults.rng
    if plan.unknown_status and tasks:
        rng.choice(tasks)["status"] = sim.faults.config.unknown_status_value
    with_report = [task for task in tasks if "report" in task]
    if plan.report_v2 and with_report:
        chosen = rng.choice(with_report)
        chosen["report"] = {**chosen["report"], "version": 2}


# --- unversioned routes --------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    return nico_response(200, {"status": "ok"})


async def readyz(request: Request) -> Response:
    sim: Simulation = request.app.state.sim
    if sim.faults.config.down:
        return nico_response(503, {"status": "unavailable"})
    return nico_response(200, {"status": "ok"})


async def auth_login(request: Request) -> Response:
    """``POST /auth/login {clientId, clientSecret}``: Keycloak client-credentials grant."""
    sim: Simulation = request.app.state.sim
    if sim.config.rate_limit and not sim.limiter.allow(client_ip(request)):
        return nico_error(429, RATE_LIMITED)
    body = await read_json_object(request)
    if body is None:
        return nico_error(400, "Failed to parse request data")
    client_id, secret = body.get("clientId"), body.get("clientSecret")
    if not isinstance(client_id, str) or not isinstance(secret, str) or not client_id:
        # Choice: message when neither client credentials nor an auth-code login were sent.
        return nico_error(400, "clientId and clientSecret are required")
    if not sim.tokens.service_accounts_enabled:
        return nico_error(401, "Service accounts are not enabled")
    issued = sim.tokens.login(client_id, secret)
    if issued is None:
        # Choice: the wording of Keycloak's rejected grant as NICo relays it.
        return nico_error(401, "Invalid client credentials")
    return nico_response(200, issued.as_json())


async def auth_refresh(request: Request) -> Response:
    """``POST /auth/refresh {refreshToken}``: new tokens, or 401 "Invalid or expired refresh token"."""
    sim: Simulation = request.app.state.sim
    if sim.config.rate_limit and not sim.limiter.allow(client_ip(request)):
        return nico_error(429, RATE_LIMITED)
    body = await read_json_object(request)
    token = body.get("refreshToken") if body is not None else None
    issued = sim.tokens.refresh(token) if isinstance(token, str) else None
    if issued is None:
        return nico_error(401, "Invalid or expired refresh token")
    return nico_response(200, issued.as_json())


# --- assembly ------------------------------------------------------------------------------------


class StatsMiddleware:
    """Counts every request by (method, route template, status) into ``sim.stats``; adds ``Date``."""

    def __init__(self, app: ASGIApp, sim: Simulation) -> None:
        self.app = app
        self.sim = sim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                # Go's server stamps every response with its own clock: here, simulated time.
                # (Serve with uvicorn's ``date_header=False`` so there is only this one.)
                date = format_datetime(self.sim.now(), usegmt=True).encode()
                message = {**message, "headers": [*message.get("headers", []), (b"date", date)]}
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            self.sim.stats.record(str(scope.get("method", "")), str(template), status)


def _api_routes(sim: Simulation) -> list[BaseRoute]:
    def api(path: str, resource: str, workflow: str, handler: Handler, method: str = "GET") -> Route:
        return Route(API + path, api_endpoint(resource, workflow, handler), methods=[method])

    routes: list[BaseRoute] = [
        api("/site", "Site", "GetSites", list_sites),
        api("/site/{id}", "Site", "GetSite", get_site),
        api("/user/current", "User", "GetUser", user_current),
        api("/metadata", "Metadata", "GetMetadata", metadata),
        # Legacy aliases first: "/rack/task/{id}" must not be read as rack "task".
        api("/rack/task/{id}", "Task", "GetTask", get_task),
        api("/rack/task/{id}/cancel", "Task", "CancelTask", cancel_task, "POST"),
        api("/rack", "Rack", "GetRacks", list_racks),
        api("/rack/{id}", "Rack", "GetRack", get_rack),
        api("/rack/{id}/task", "Task", "GetTasks", rack_tasks),
        api("/rack/{id}/power", "Rack", "UpdatePowerState", rack_power, "PATCH"),
        api("/rack/{id}/firmware", "Rack", "UpdateFirmware", rack_firmware, "PATCH"),
        api("/rack/{id}/bringup", "Rack", "BringUpRack", rack_bringup, "POST"),
        api("/tray", "Tray", "GetTrays", list_trays),
        api("/tray/{id}", "Tray", "GetTray", get_tray),
        api("/tray/{id}/task", "Task", "GetTasks", tray_tasks),
        api("/tray/{id}/power", "Tray", "UpdatePowerState", tray_power, "PATCH"),
        api("/tray/{id}/firmware", "Tray", "UpdateFirmware", tray_firmware, "PATCH"),
    ]
    if not sim.config.legacy_routes_only:
        # Absent on older servers: their 404 is the router's, not a NICo "Task not found".
        routes += [
            api("/task/{id}", "Task", "GetTask", get_task),
            api("/task/{id}/cancel", "Task", "CancelTask", cancel_task, "POST"),
        ]
    return routes


def create_app(sim: Simulation) -> Starlette:
    """The simulated NICo REST server for ``sim`` (also reachable as ``app.state.sim``)."""
    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/auth/login", auth_login, methods=["POST"]),
        Route("/auth/refresh", auth_refresh, methods=["POST"]),
        *_api_routes(sim),
        *control_routes(),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(StatsMiddleware, sim=sim)])
    app.state.sim = sim
    return app


__all__ = ["create_app"]
