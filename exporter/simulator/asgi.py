"""The HTTP server: NICo's REST surface over a :class:`Simulation`, as a Starlette ASGI app.

The order the real server applies (``rest-api/api/internal/server/server.go``): Echo's rate
limiter on every route (``/healthz``, ``/auth/*`` and 404s included) -> the ``/v2`` group's
not-found handler (before auth, so an unknown path needs no token) -> bearer auth (401) -> the
handler's own checks (:mod:`.handlers`) -> the site workflow. Here the fault injection and the
global outage switch sit just before the handler. ``/auth/*`` is unversioned like Keycloak
mode's routes; ``/_sim/*`` is the unauthenticated control API for tests, the demo and
benchmarks, and no part of NICo (the limiter does not count it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exporter.simulator import handlers as h
from exporter.simulator import taskrun_handlers as tr
from exporter.simulator.control import control_routes
from exporter.simulator.faults import BadPagination, Failure, FaultPlan
from exporter.simulator.idp import idp_routes
from exporter.simulator.request import ApiError, Ctx, Handler, Result
from exporter.simulator.responses import nico_error, nico_response, read_json_object
from exporter.simulator.simulation import Simulation
from exporter.simulator.wire import JSONObject, compact, encode

API = "/v2/org/{org}/nico"
RATE_LIMITED = "Request rate limit exceeded, please re-evaluate your request patterns"
# api/pkg/middleware/notfound.go (inside /v2) and common/pkg/util/api.go (Echo's own 404).
ROUTE_NOT_FOUND = "The requested path could not be found"
PATH_NOT_FOUND = "The requested path was not found"


class SimulatedReset(ConnectionResetError):
    """Raised after a deliberately short body so the server drops the connection (fault ``reset``)."""


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


# --- the /v2 request pipeline --------------------------------------------------------------------


def client_ip(scope: Scope) -> str:
    """Echo's ``RealIP``: first X-Forwarded-For entry, then X-Real-IP, then the peer address."""
    headers: dict[str, str] = {
        k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
    }
    forwarded = headers.get("x-forwarded-for")
    if forwarded:
        return forwarded.split(",")[0].strip()
    real = headers.get("x-real-ip")
    if real:
        return real.strip()
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _check_auth(sim: Simulation, request: Request) -> Response | None:
    if not sim.config.require_auth:
        return None
    header = request.headers.get("authorization")
    if not header:
        return nico_error(401, "Request is missing authorization header")
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return nico_error(401, "Invalid Authorization header format")
    refused = sim.tokens.check(parts[1])  # invalid, expired, or a service account's when off
    if refused is not None:
        return nico_error(401, refused)
    return None


def api_endpoint(resource: str, workflow: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler in the ``/v2`` pipeline: auth, outages, faults, errors."""

    async def endpoint(request: Request) -> Response:
        sim: Simulation = request.app.state.sim
        denied = _check_auth(sim, request)
        if denied is not None:
            return denied
        faults = sim.faults.config
        if faults.down or sim.faults.in_burst():
            await asyncio.sleep(faults.down_delay_s)
            return nico_error(500, h.timeout_message(resource, workflow))
        call = sim.faults.call(f"{request.method} {request.url.path}?{request.url.query}")
        if call is not None and call.stall:
            await asyncio.sleep(faults.stall_seconds)
        plan = sim.faults.draw()
        if call is not None and call.failure is not None:
            plan = dataclasses.replace(plan, failure=call.failure)
        if plan.slow:
            await asyncio.sleep(faults.slow_seconds)
        if plan.failure in (Failure.ERROR_500, Failure.ERROR_503):
            return _injected_error(plan.failure, resource, workflow)
        sim.advance()
        ctx = Ctx(request=request, sim=sim, resource=resource, workflow=workflow)
        try:
            result: Result = await handler(ctx)
        except ApiError as exc:
            return nico_error(exc.status, exc.message, exc.data, source=exc.source)
        return _respond(sim, result, plan)

    return endpoint


def _injected_error(failure: Failure, resource: str, workflow: str) -> Response:
    if failure is Failure.ERROR_503:
        # Flow's gRPC Unavailable, mapped to 503 by UnwrapWorkflowError.
        return nico_error(
            503,
            f"Failed to execute {resource} {workflow} workflow on Site: rpc error: code = Unavailable "
            "desc = connection refused (type: NICoUnavailable, retryable: false)",
        )
    return nico_error(500, h.timeout_message(resource, workflow))


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
    """``/healthz`` and ``/readyz`` share one handler (``api/pkg/api/system.go``), no auth."""
    return nico_response(200, {"is_healthy": True, "error": None})


async def auth_login(request: Request) -> Response:
    """``POST /auth/login {clientId, clientSecret}``: Keycloak client-credentials grant, with the
    checks and messages of ``release/v2.0`` ``rest-api/auth/pkg/api/handler/keycloak.go:60-97``
    (validation: ``auth/pkg/api/model/keycloak.go`` ``APILoginRequest.Validate``)."""
    sim: Simulation = request.app.state.sim
    if not sim.access.keycloak:
        return nico_error(404, PATH_NOT_FOUND)  # server.go:273-284: no Keycloak, no /auth routes
    body = await read_json_object(request)
    fields = ("email", "redirectUri", "clientId", "clientSecret")
    if body is None or any(not isinstance(body.get(k), (str, type(None))) for k in fields):
        # Echo's Bind into *string fields refuses any other JSON type.
        return nico_error(400, "Failed to parse request data, potentially invalid structure")
    if (errors := _login_errors(body)) is not None:
        return nico_error(400, "Failed to validate request data", errors)
    if not sim.tokens.service_accounts_enabled:
        return nico_error(401, "Service accounts are not enabled")
    issued = sim.tokens.login(str(body["clientId"]), str(body["clientSecret"]))
    if issued is None:
        return nico_error(401, "Failed to authenticate using client credentials")
    return nico_response(200, issued.as_json())


def _login_errors(body: dict[str, Any]) -> dict[str, str] | None:
    """``APILoginRequest.Validate``'s ozzo errors for a client-credentials login (the auth-code
    flow, by ``email``, is not modelled: a body with ``email`` and no ``clientId`` is refused as
    its missing ``redirectUri``)."""
    client_id, secret, email = body.get("clientId"), body.get("clientSecret"), body.get("email")
    if email is not None and client_id is not None:
        return {"__all__": "email and clientId cannot be specified together"}
    errors: dict[str, str] = {}
    if email is None and client_id in (None, ""):
        errors["clientId"] = "clientId must be specified if email is not specified"
        errors["email"] = "email must be specified if clientId is not specified"
    if client_id is not None and secret in (None, ""):
        errors["clientSecret"] = "clientSecret must be specified if clientId is specified"
    if email is not None and client_id is None:
        errors["redirectUri"] = "redirectUri must be specified if email is specified"
    return errors or None


async def auth_refresh(request: Request) -> Response:
    """``POST /auth/refresh {refreshToken}``: new tokens, or 401 "Invalid or expired refresh token"
    (``keycloak.go:284-311``: an unreadable body is 400 "Invalid request format", a missing token
    400 "Failed to validate request data")."""
    sim: Simulation = request.app.state.sim
    if not sim.access.keycloak:
        return nico_error(404, PATH_NOT_FOUND)
    body = await read_json_object(request)
    if body is None or not isinstance(body.get("refreshToken", ""), str):
        return nico_error(400, "Invalid request format")
    token = body.get("refreshToken", "")
    if not token:
        return nico_error(
            400, "Failed to validate request data", {"refreshToken": "refreshToken is required"}
        )
    issued = sim.tokens.refresh(str(token))
    if issued is None:
        return nico_error(401, "Invalid or expired refresh token")
    return nico_response(200, issued.as_json())


async def not_found(request: Request, exc: Exception) -> Response:
    """Router 404s carry a NICo body; inside ``/v2`` a wrong method is a 404 too, never a 405."""
    path = request.url.path
    if path.startswith("/_sim/"):
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        return Response(encode({"error": "not found"}), status, media_type="application/json")
    message = ROUTE_NOT_FOUND if path.startswith("/v2/") else PATH_NOT_FOUND
    return nico_error(404, message)


# --- assembly ------------------------------------------------------------------------------------


class RateLimitMiddleware:
    """Echo's limiter, in front of every NICo route (not the simulator's ``/_sim`` control API)."""

    def __init__(self, app: ASGIApp, sim: Simulation) -> None:
        self.app = app
        self.sim = sim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limited = (
            scope["type"] == "http"
            and not str(scope.get("path", "")).startswith("/_sim/")
            and (
                self.sim.faults.throttling()  # a 429 storm (faults), limiter on or off
                or (self.sim.config.rate_limit and not self.sim.limiter.allow(client_ip(scope)))
            )
        )
        if limited:
            await nico_error(429, RATE_LIMITED)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class StatsMiddleware:
    """Counts every request by (method, route template, status) into ``sim.stats``, and every
    ``/v2`` request by the ``siteId`` it names (query, or JSON body); adds ``Date``."""

    def __init__(self, app: ASGIApp, sim: Simulation) -> None:
        self.app = app
        self.sim = sim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if str(scope.get("path", "")).startswith("/v2/"):
            receive = await self._count_site(scope, receive)
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

    async def _count_site(self, scope: Scope, receive: Receive) -> Receive:
        """Count the request for the site it names: the first ``siteId`` of the query (as Echo
        binds it), else the body's. The body is read here and replayed to the app."""
        query = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"))
        site_id: Any = query.get("siteId", [None])[0]
        if scope.get("method") in ("GET", "HEAD", "DELETE"):
            if site_id:
                self.sim.stats.record_site(str(site_id))
            return receive
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        if not site_id:
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and isinstance(parsed.get("siteId"), str):
                site_id = parsed["siteId"]
        if site_id:
            self.sim.stats.record_site(str(site_id))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


def _api_routes(sim: Simulation) -> list[BaseRoute]:
    def api(path: str, resource: str, workflow: str, handler: Handler, method: str = "GET") -> Route:
        return Route(API + path, api_endpoint(resource, workflow, handler), methods=[method])

    routes: list[BaseRoute] = [
        api("/site", "Site", "GetSites", h.list_sites),
        api("/site/{id}", "Site", "GetSite", h.get_site),
        api("/user/current", "User", "GetUser", h.user_current),
        api("/metadata", "Metadata", "GetMetadata", h.metadata),
        # Legacy aliases first: "/rack/task/{id}" must not be read as rack "task".
        api("/rack/task/{id}", "Task", "GetTask", h.get_task),
        api("/rack/task/{id}/cancel", "Task", "CancelTask", h.cancel_task, "POST"),
        api("/rack", "Rack", "GetRacks", h.list_racks),
        api("/rack/{id}", "Rack", "GetRack", h.get_rack),
        api("/rack/{id}/task", "Task", "GetTasks", h.rack_tasks),
        api("/rack/{id}/power", "Rack", "UpdatePowerState", h.rack_power, "PATCH"),
        api("/rack/{id}/firmware", "Rack", "UpgradeFirmware", h.rack_firmware, "PATCH"),
        api("/rack/{id}/bringup", "Rack", "BringUpRack", h.rack_bringup, "POST"),
        api("/tray", "Tray", "GetTrays", h.list_trays),
        api("/tray/{id}", "Tray", "GetTray", h.get_tray),
        api("/tray/{id}/task", "Task", "GetTasks", h.tray_tasks),
        api("/tray/{id}/power", "Tray", "UpdatePowerState", h.tray_power, "PATCH"),
        api("/tray/{id}/firmware", "Tray", "UpgradeFirmware", h.tray_firmware, "PATCH"),
    ]
    # Static segments win over /task/{id} in Echo, so these come before it.
    if sim.config.operation_rules:
        # v2.0 and main (release/v2.0 routes.go:945-970, main :1031-1057); not 1.6.
        routes += [
            api("/task/rule", "TaskRule", "GetAllTaskRules", tr.list_rules),
            api("/task/rule/{id}", "TaskRule", "GetTaskRule", tr.get_rule),
        ]
    if sim.config.task_runs:
        # NICo main only (routes.go main :1060-1098).
        routes += [
            api("/task/run", "Run", "CreateTaskRun", tr.create_run, "POST"),
            api("/task/run", "Run", "GetAllTaskRuns", tr.list_runs),
            api("/task/run/{id}", "Run", "GetTaskRun", tr.get_run),
            api("/task/run/{id}/target", "Run", "GetAllTaskRunTargets", tr.list_targets),
            api("/task/run/{id}/pause", "Run", "PauseTaskRun", tr.pause_run, "POST"),
            api("/task/run/{id}/resume", "Run", "ResumeTaskRun", tr.resume_run, "POST"),
            api("/task/run/{id}/advance", "Run", "AdvanceTaskRunPhase", tr.advance_run, "POST"),
            api("/task/run/{id}/cancel", "Run", "CancelTaskRun", tr.cancel_run, "POST"),
        ]
    if not sim.config.legacy_routes_only:
        # Absent on servers before v1.6: their 404 is the router's, not a Flow error.
        routes += [
            api("/task/{id}", "Task", "GetTask", h.get_task),
            api("/task/{id}/cancel", "Task", "CancelTask", h.cancel_task, "POST"),
        ]
    return routes


def create_app(sim: Simulation) -> Starlette:
    """The simulated NICo REST server for ``sim`` (also reachable as ``app.state.sim``)."""
    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", healthz),
        Route("/auth/login", auth_login, methods=["POST"]),
        Route("/auth/refresh", auth_refresh, methods=["POST"]),
        *idp_routes(),
        *_api_routes(sim),
        *control_routes(),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(StatsMiddleware, sim=sim), Middleware(RateLimitMiddleware, sim=sim)],
        exception_handlers={404: not_found, 405: not_found},
    )
    app.state.sim = sim
    return app


__all__ = ["create_app"]
