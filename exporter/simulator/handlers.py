"""NICo's REST handlers over a :class:`Simulation`: discovery, task lists, tasks, writes.

Each handler applies the Go handler's checks in the Go order with its exact messages
(docs/simulator.md cites ``rest-api/api/pkg/api/handler/*.go`` file and line for each).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from exporter.models import ComponentType
from exporter.simulator.fleet import SITE_STATUSES
from exporter.simulator.inventory import Site
from exporter.simulator.operations import OPERATIONS, POWER_STATES, Operation, describe
from exporter.simulator.request import (
    FIRST_PAGE,
    ApiError,
    Ctx,
    Result,
    bind_bool,
    check_known_params,
    go_bool,
    page_request,
    parse_uuid,
    path_uuid,
    require_site_param,
    sort_page,
)
from exporter.simulator.wire import JSONObject, rack_json, site_json, task_json, tray_json, zero_task_json
from exporter.simulator.world import CancelRefused, Rejected, Task

# What Flow's gRPC errors look like once Temporal and the REST handler have wrapped them
# (an ApplicationError of type "Error", retried once by the site agent).
_WRAPPED = "rpc error: code = {code} desc = {desc} (type: Error, retryable: true)"
NO_ROWS = "sql: no rows in result set"

_TRAY_TYPES = {
    kind.value: kind for kind in (ComponentType.COMPUTE, ComponentType.NVSWITCH, ComponentType.POWERSHELF)
}
_FIRMWARE_TARGETS = frozenset({"bmc", "cpld", "bios", "nvos", "pmc", "psu", "dpu"})
_PAGING = ("pageNumber", "pageSize", "orderBy")
# ExecutePowerControlWorkflow's workflow per state (common.go:1832-1876, main :2099-2143).
_POWER_WORKFLOWS = {
    Operation.POWER_ON: "PowerOnRack",
    Operation.POWER_OFF: "PowerOffRack",
    Operation.FORCE_POWER_OFF: "PowerOffRack",
    Operation.POWER_CYCLE: "PowerResetRack",
    Operation.FORCE_POWER_CYCLE: "PowerResetRack",
}


def timeout_message(resource: str, workflow: str) -> str:
    """``TerminateWorkflowOnTimeOut``: the REST server gave up waiting for the site."""
    return f"Failed to perform {resource} {workflow} - timeout occurred executing workflow on Site: context deadline exceeded"


# --- shared checks -------------------------------------------------------------------------------


def check_org(ctx: Ctx) -> None:
    org = str(ctx.request.path_params["org"])
    if org != ctx.sim.config.org:
        raise ApiError(403, f"Failed to validate membership for org: {org}")


def check_provider(ctx: Ctx) -> None:
    """The Flow handlers' chain before the site: org membership (403), the ``PROVIDER_ADMIN``
    role (403), the org's Infrastructure Provider (400), e.g. ``handler/task.go:96-110``."""
    check_org(ctx)
    access = ctx.sim.access
    if not access.provider_admin:
        raise ApiError(403, "User does not have Provider Admin role with org")
    if not access.infrastructure_provider:
        raise ApiError(400, "Failed to retrieve Infrastructure Provider for org")


def check_site_viewer(ctx: Ctx) -> None:
    """The site handlers' ``IsProviderOrTenant``: its error has no org suffix and no source."""
    if str(ctx.request.path_params["org"]) != ctx.sim.config.org:
        raise ApiError(403, "Failed to validate membership for org", source="")


async def flow_site(ctx: Ctx, raw: str | None, *, bad_id_is_db_error: bool = False) -> Site:
    """The Flow-enabled, reachable site named by ``raw``, or the NICo error the handler gives.

    ``bad_id_is_db_error``: the tray handlers report an unparsable ``siteId`` as a 500 DB error
    (every other handler answers 400).
    """
    site_id = parse_uuid(raw)
    if site_id is None:
        if bad_id_is_db_error:
            raise ApiError(500, "Failed to retrieve Site due to DB error")
        raise ApiError(400, "Failed to validate Site specified in request: invalid ID")
    site = ctx.sim.site(site_id)
    if site is None:
        raise ApiError(400, "Site specified in request does not exist")
    if not site.flow:
        raise ApiError(412, "Site does not have NICo Flow enabled")
    if site.down:
        # The workflow waits for a Site that never answers, then the handler gives up.
        await asyncio.sleep(site.down_delay_s)
        raise ApiError(500, timeout_message(ctx.resource, ctx.workflow))
    return site


async def reach_flow(ctx: Ctx, site: Site, workflow: str | None = None) -> None:
    """The handler runs the site's workflow (``ExecuteWorkflow`` then ``we.Get`` under a 50 s
    context). A silent agent, or one that never registered this workflow (``agentLacks``: run
    workflows for ``Run``, rule workflows for ``TaskRule``), never completes it: the call hangs
    the timeout, then answers ``TerminateWorkflowOnTimeOut``'s 500 (``common.go:1170-1187``).
    ``workflow``: the name when it is not the route's (the power workflows go by state)."""
    faults = ctx.sim.faults_of(site.id)
    family = {"Run": "runs", "TaskRule": "rules"}.get(ctx.resource)
    if faults.silent or (family is not None and family in faults.agent_lacks):
        await asyncio.sleep(ctx.sim.workflow_timeout_s(site.id))
        raise ApiError(500, timeout_message(ctx.resource, workflow or ctx.workflow))


def _unordered(ctx: Ctx, site: Site) -> random.Random | None:
    """The RNG that orders a list query with no ``ORDER BY`` on a site with ``unorderedInventory``."""
    return ctx.sim.inventory_rng if ctx.sim.faults_of(site.id).unordered_inventory else None


def render_task(ctx: Ctx, task: Task, *, include_report: bool) -> JSONObject:
    cfg = ctx.sim.config
    return task_json(
        task,
        include_report=include_report and cfg.reports,
        nvlswitch_spelling=cfg.nvlswitch_spelling,
        with_rule_id=cfg.reports,
        skew=ctx.sim.faults_of(task.site_id).skew,
    )


# --- discovery -----------------------------------------------------------------------------------

_SITE_ORDER = frozenset({"NAME", "STATUS", "CREATED", "UPDATED", "DESCRIPTION", "LOCATION", "CONTACT"})
_RACK_ORDER = frozenset({"NAME", "MANUFACTURER", "MODEL"})
_TRAY_ORDER = frozenset({"NAME", "MANUFACTURER", "MODEL", "TYPE"})


async def list_sites(ctx: Ctx) -> Result:
    """``GET /site``: no unknown-key check; pagination is validated first, then the role."""
    page = page_request(ctx, _SITE_ORDER)
    check_site_viewer(ctx)
    for status in ctx.request.query_params.getlist("status"):
        # site.go:774-786 (main :765-777): each value must be in SiteStatusMap, case-sensitive.
        if status not in SITE_STATUSES:
            raise ApiError(400, "Invalid Status value in query", {"status": status})
    flow = ctx.query("isFlowEnabled")
    want_flow = go_bool(flow) if flow else None
    if flow and want_flow is None:
        raise ApiError(400, "Invalid value specified for `isFlowEnabled` query param")
    statuses = ctx.request.query_params.getlist("status")
    rendered = [
        site_json(site, ctx.sim.site_status(site))
        for site in ctx.sim.sites()
        if want_flow is None or site.flow == want_flow
    ]
    if statuses:
        rendered = [site for site in rendered if site["status"] in statuses]
    rendered = sort_page(
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
    check_site_viewer(ctx)
    site_id = parse_uuid(ctx.path("id"))
    if site_id is None:
        raise ApiError(400, "Invalid Site ID in URL")
    site = ctx.sim.site(site_id)
    if site is None:
        raise ApiError(404, "Could not find Site with specified ID")
    return Result(site_json(site, ctx.sim.site_status(site)))


async def list_racks(ctx: Ctx) -> Result:
    """``GET /rack?siteId=``: racks of a Flow site; ``components`` with ``includeComponents``."""
    check_known_params(ctx, ("siteId", "includeComponents", "name", "manufacturer", *_PAGING))
    include = bind_bool(ctx, "includeComponents")
    raw_site = require_site_param(ctx)
    check_provider(ctx)
    site = await flow_site(ctx, raw_site)
    page = page_request(ctx, _RACK_ORDER)
    await reach_flow(ctx, site)
    racks = ctx.sim.racks(site.id)
    names = ctx.request.query_params.getlist("name")
    makers = ctx.request.query_params.getlist("manufacturer")
    racks = [r for r in racks if (not names or r.name in names) and (not makers or r.manufacturer in makers)]
    racks = sort_page(
        racks,
        page.order_by,
        {"NAME": lambda r: r.name, "MANUFACTURER": lambda r: r.manufacturer, "MODEL": lambda r: r.model},
        # GetListOfRacks: no ORDER BY unless orderBy is given (flow/internal/db/model/rack.go:260-261).
        shuffle=_unordered(ctx, site),
    )
    items, header = page.apply(racks)
    body = [rack_json(rack, ctx.sim.world.rack_trays(rack.id) if include else None) for rack in items]
    return Result(body, pagination=header)


async def get_rack(ctx: Ctx) -> Result:
    """``GET /rack/{id}``: the rack id is not validated; an unknown one is 404 "Rack not found"."""
    check_known_params(ctx, ("siteId", "includeComponents"))
    include = bind_bool(ctx, "includeComponents")
    raw_site = require_site_param(ctx)
    check_provider(ctx)
    site = await flow_site(ctx, raw_site)
    await reach_flow(ctx, site)
    rack = ctx.sim.world.racks.get(parse_uuid(ctx.path("id")) or "")
    if rack is None or rack.site_id != site.id:
        raise ApiError(404, "Rack not found")
    return Result(rack_json(rack, ctx.sim.world.rack_trays(rack.id) if include else None))


async def list_trays(ctx: Ctx) -> Result:
    """``GET /tray?siteId=[&rackId=|&rackName=][&type=][&id=...][&componentId=...]``."""
    check_provider(ctx)
    check_known_params(ctx, ("siteId", "rackId", "rackName", "type", "componentId", "id", "slotId", *_PAGING))
    raw_site = require_site_param(ctx)
    params = ctx.request.query_params
    rack_id_raw, rack_name = ctx.query("rackId"), ctx.query("rackName")
    ids, component_ids = params.getlist("id"), params.getlist("componentId")
    kind_raw = ctx.query("type")
    errors: dict[str, str] = {}
    if rack_id_raw and parse_uuid(rack_id_raw) is None:
        errors["rackId"] = "must be a valid UUID"
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
    site = await flow_site(ctx, raw_site, bad_id_is_db_error=True)
    page = page_request(ctx, _TRAY_ORDER)
    await reach_flow(ctx, site)
    trays = ctx.sim.trays(site.id)
    rack_id = parse_uuid(rack_id_raw)
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
    trays = sort_page(
        trays,
        page.order_by,
        {
            "NAME": lambda t: t.name,
            "MANUFACTURER": lambda t: t.manufacturer,
            "MODEL": lambda t: t.model,
            "TYPE": lambda t: t.type.value,
        },
        # Flow's GetComponents (flow/internal/service/server_impl.go:1378-1420): with a target
        # spec (rackId, rackName, id, componentId) it loads, filters, sorts only on orderBy and
        # slices in memory; without one it is SQL with no ORDER BY unless orderBy is given.
        shuffle=None if (rack_id_raw or rack_name or ids or component_ids) else _unordered(ctx, site),
    )
    items, header = page.apply(trays)
    return Result([tray_json(tray) for tray in items], pagination=header)


async def get_tray(ctx: Ctx) -> Result:
    """``GET /tray/{id}``: no unknown-key check; the tray id is checked after the site."""
    check_provider(ctx)
    raw_site = require_site_param(ctx)
    site = await flow_site(ctx, raw_site, bad_id_is_db_error=True)
    tray_id = path_uuid(ctx, "Invalid Tray ID in URL")
    await reach_flow(ctx, site)
    tray = ctx.sim.world.trays.get(tray_id)
    if tray is None or tray.site_id != site.id:
        raise ApiError(404, "Tray not found")
    return Result(tray_json(tray))


async def user_current(ctx: Ctx) -> Result:
    """``GET /user/current``: the org-membership probe a client can use to check its token."""
    check_org(ctx)
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
    version = "2.0.0" if ctx.sim.config.nico_version == "2.0" else "1.6.0"
    return Result({"version": version, "buildTime": "2026-07-15T00:00:00Z"})


# --- tasks ---------------------------------------------------------------------------------------


def task_list_params(ctx: Ctx) -> tuple[str, ...]:
    """``APIGetTasksRequest``'s query tags (plus paging, on a server that pages as the spec says)."""
    cfg = ctx.sim.config
    known = ("siteId", "activeOnly", "includeReport") if cfg.reports else ("siteId", "activeOnly")
    return (*known, *_PAGING) if cfg.task_list_paging else known


async def _task_list(ctx: Ctx, kind: str, tasks_of: Callable[[Site, str], list[Task]]) -> Result:
    object_id = path_uuid(ctx, f"Invalid {kind} ID specified in URL")
    check_known_params(ctx, task_list_params(ctx))
    active_only = bind_bool(ctx, "activeOnly")
    include_report = bind_bool(ctx, "includeReport")
    raw_site = require_site_param(ctx)
    check_provider(ctx)
    site = await flow_site(ctx, raw_site)
    # Without paging parameters the handler always asks Flow for offset 0, limit 20.
    page = page_request(ctx, None) if ctx.sim.config.task_list_paging else FIRST_PAGE
    await reach_flow(ctx, site)
    tasks = tasks_of(site, object_id)
    if active_only:
        tasks = [task for task in tasks if task.status.is_active]
    items, header = page.apply(ctx.sim.list_order(tasks))
    body = [render_task(ctx, task, include_report=include_report) for task in items]
    return Result(body, pagination=header, tasks=True)


async def rack_tasks(ctx: Ctx) -> Result:
    """``GET /rack/{id}/task``: every task of the rack (tray-initiated ones too); an unknown rack
    is an empty list, not a 404 (Flow just filters on ``rack_id``)."""

    def of(site: Site, rack_id: str) -> list[Task]:
        rack = ctx.sim.world.racks.get(rack_id)
        if rack is None or rack.site_id != site.id:
            return []
        return ctx.sim.world.rack_tasks(rack_id)

    return await _task_list(ctx, "Rack", of)


async def tray_tasks(ctx: Ctx) -> Result:
    """``GET /tray/{id}/task``: tasks whose targeted components include the tray."""

    def of(site: Site, tray_id: str) -> list[Task]:
        tray = ctx.sim.world.trays.get(tray_id)
        if tray is None or tray.site_id != site.id:
            return []
        return ctx.sim.world.tray_tasks(tray_id)

    return await _task_list(ctx, "Tray", of)


async def get_task(ctx: Ctx) -> Result:
    """``GET /task/{id}`` (and the legacy ``/rack/task/{id}``): the report is always included.

    A task this site's Flow does not have is Flow's gRPC ``Internal`` "no rows", a 500.
    """
    check_known_params(ctx, ("siteId",))
    raw_site = require_site_param(ctx)
    check_provider(ctx)
    task_id = path_uuid(ctx, "Invalid Task ID specified in URL")
    site = await flow_site(ctx, raw_site)
    await reach_flow(ctx, site)
    task = ctx.sim.world.tasks.get(task_id)
    if task is None or task.site_id != site.id:
        desc = _WRAPPED.format(code="Internal", desc=NO_ROWS)
        raise ApiError(500, f"Failed to execute Task retrieval workflow on Site: {desc}")
    return Result(render_task(ctx, task, include_report=True), tasks=True)


async def cancel_task(ctx: Ctx) -> Result:
    """``POST /task/{id}/cancel``: 202 with the task; idempotent; a 500 once Succeeded/Failed.

    ``emptyCancel``: Flow cancels, but its re-read of the task fails and it answers an empty
    response (server_impl.go:954-957, main :1021-1024): 202 with the zero-value task.
    """
    check_provider(ctx)
    task_id = path_uuid(ctx, "Invalid Task ID specified in URL")
    body = await ctx.body()
    raw_site = body.get("siteId")
    if not isinstance(raw_site, str) or not raw_site:
        # The validation error is a plain Go error: it serialises as an empty object.
        raise ApiError(400, "Failed to validate cancel task request data", {})
    site = await flow_site(ctx, raw_site)
    await reach_flow(ctx, site)
    failed = "Failed to execute Task cancellation workflow on Site: "
    task = ctx.sim.world.tasks.get(task_id)
    if task is None or task.site_id != site.id:
        inner = _WRAPPED.format(code="Internal", desc=NO_ROWS).removesuffix(" (type: Error, retryable: true)")
        raise ApiError(
            500, failed + _WRAPPED.format(code="Internal", desc=f"failed to get task {task_id}: {inner}")
        )
    try:
        task = ctx.sim.cancel_task(task.id)
    except CancelRefused as exc:
        raise ApiError(500, failed + _WRAPPED.format(code="Unknown", desc=str(exc))) from None
    if ctx.sim.faults_of(site.id).empty_cancel:
        return Result(zero_task_json(with_rule_id=ctx.sim.config.reports), status=202)
    return Result(render_task(ctx, task, include_report=True), status=202, tasks=True)


# --- writes --------------------------------------------------------------------------------------


async def _target(
    ctx: Ctx, kind: str, workflow_of: Callable[[JSONObject], str | None]
) -> tuple[Site, str, list[str] | None]:
    """Resolve ``{id}`` and ``siteId`` of a rack or tray write: (site, rack id, tray ids or None).

    ``workflow_of(body)``: the Flow workflow the write will run; it is reached (a silent site
    hangs) between the site checks and the rack or tray, which only Flow knows. None when the
    handler answers before running one (a bad power state, a refused body).
    """
    check_provider(ctx)
    object_id = path_uuid(ctx, f"Invalid {kind} ID specified in URL")
    body = await ctx.body()
    raw_site = body.get("siteId")
    if not isinstance(raw_site, str) or not raw_site:
        raise ApiError(400, "Failed to validate request data", {"siteId": "cannot be blank"})
    site = await flow_site(ctx, raw_site)
    workflow = workflow_of(body)
    if workflow is not None:
        await reach_flow(ctx, site, workflow)
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


def _submit(
    ctx: Ctx, site: Site, rack_id: str, operation: Operation, trays: list[str] | None, text: str
) -> Result:
    """Submit with the reject strategy; Flow's refusal reaches the caller as the handler's 500."""
    try:
        task_id = ctx.sim.create_task(site.id, rack_id, operation, tray_ids=trays, description=text)
    except Rejected:
        entity = "Tray" if trays is not None else "Rack"
        raise ApiError(500, f"{OPERATIONS[operation].rest_failure} {entity}") from None
    return Result({"taskIds": [task_id]})


def _power_workflow(body: JSONObject) -> str | None:
    """ExecutePowerControlWorkflow (common.go:1832-1876, main :2099-2143): the workflow goes by
    state; a bad state is refused before any workflow runs."""
    state = body.get("state")
    operation = POWER_STATES.get(state) if isinstance(state, str) else None
    return None if operation is None else _POWER_WORKFLOWS[operation]


async def _power(ctx: Ctx, kind: str) -> Result:
    site, rack_id, trays = await _target(ctx, kind, _power_workflow)
    state = (await ctx.body()).get("state")
    if not isinstance(state, str) or state not in POWER_STATES:
        raise ApiError(400, f"Invalid power control state: {state}")
    operation = POWER_STATES[state]
    text = describe(operation, tray_scoped=trays is not None, rack_id=rack_id)
    return _submit(ctx, site, rack_id, operation, trays, text)


async def rack_power(ctx: Ctx) -> Result:
    """``PATCH /rack/{id}/power``: one task, "API power on Rack" etc."""
    return await _power(ctx, "Rack")


async def tray_power(ctx: Ctx) -> Result:
    """``PATCH /tray/{id}/power``: one task on the tray's rack, "API power on Tray" etc."""
    return await _power(ctx, "Tray")


def _firmware_errors(body: JSONObject) -> dict[str, str] | None:
    targets = body.get("targets")
    if targets is None:
        return None
    if not isinstance(targets, list) or any(t not in _FIRMWARE_TARGETS for t in targets):
        return {"targets": "must be a valid value"}
    if targets and not body.get("version"):
        return {"version": "is required when targets are set"}
    return None


async def _firmware(ctx: Ctx, kind: str) -> Result:
    # The request is validated before the UpgradeFirmware workflow runs.
    site, rack_id, trays = await _target(
        ctx, kind, lambda body: None if _firmware_errors(body) else "UpgradeFirmware"
    )
    invalid = _firmware_errors(await ctx.body())
    if invalid is not None:
        raise ApiError(400, "Failed to validate request data", invalid)
    operation = Operation.FIRMWARE_UPDATE
    text = describe(operation, tray_scoped=trays is not None, rack_id=rack_id)
    return _submit(ctx, site, rack_id, operation, trays, text)


async def rack_firmware(ctx: Ctx) -> Result:
    return await _firmware(ctx, "Rack")


async def tray_firmware(ctx: Ctx) -> Result:
    return await _firmware(ctx, "Tray")


async def rack_bringup(ctx: Ctx) -> Result:
    """``POST /rack/{id}/bringup``: the caller's description or "API bring up Rack <rackId>"."""
    site, rack_id, _ = await _target(ctx, "Rack", lambda _body: "BringUpRack")
    given: Any = (await ctx.body()).get("description")
    text = (
        given
        if isinstance(given, str) and given
        else describe(Operation.BRING_UP, tray_scoped=False, rack_id=rack_id)
    )
    return _submit(ctx, site, rack_id, Operation.BRING_UP, None, text)
