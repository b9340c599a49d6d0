"""NICo ``main``'s Task Run and Task Rule handlers (``api/pkg/api/handler/taskrun.go``, ``taskrule.go``).

Checks in the Go order with the Go messages. Request validation is ozzo-validation's
``ValidateStruct``, whose error text is ``"key: message; key2: message2."`` with keys sorted, the
``json`` tag as key (the Go field name where there is none: ``SiteID`` on query structs) and nested
struct errors in parentheses. Flow's gRPC errors reach the caller as ``"Failed to execute Run
<action> workflow on Site: rpc error: code = <Code> desc = <text> (type: Error, retryable:
true)"``, the status from the code (``common.go`` ``UnwrapWorkflowError``).
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

from exporter.simulator.handlers import check_provider, flow_site, reach_flow
from exporter.simulator.inventory import Site
from exporter.simulator.request import (
    PARSE_FAILED,
    ApiError,
    Ctx,
    Page,
    Result,
    bind_bool,
    check_known_params,
    page_request,
    parse_uuid,
)
from exporter.simulator.taskruns import (
    DEFAULT_INITIAL_RETRY_DELAY_S,
    DEFAULT_MAX_RETRY_DELAY_S,
    DEFAULT_RETRY_TIMEOUT_S,
    PhasePlan,
    RunError,
    RunManager,
    RunOptions,
    RunStatus,
    SafetyGate,
)

_PAGING = ("pageNumber", "pageSize", "orderBy")
_RUN_STATUSES = [s.value for s in RunStatus]
_TARGET_STATUSES = [
    "Pending",
    "Blocked",
    "Submitted",
    "Completed",
    "Failed",
    "Terminated",
    "Skipped",
    "Claimed",
]
_OP_TYPES = ["PowerControl", "FirmwareControl"]
_PHASE_SCOPES = ["currentPhase", "completedPhases", "currentAndCompletedPhases"]
_GATE_SCOPES = ["currentPhase", "cumulativeRun"]
_HTTP = {"NotFound": 404, "FailedPrecondition": 412, "InvalidArgument": 400}
_GO_DURATION = re.compile(r"^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+$|^0$")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def ozzo(errors: dict[str, Any]) -> str:
    """``validation.Errors.Error()``: sorted keys, nested errors in parentheses, a final period."""
    parts = []
    for key in sorted(errors):
        value = errors[key]
        parts.append(f"{key}: ({ozzo(value)})" if isinstance(value, dict) else f"{key}: {value}")
    return "; ".join(parts) + "."


def manager(ctx: Ctx) -> RunManager:
    runs = ctx.sim.runs
    assert runs is not None
    return runs


def flow_failure(action: str, exc: RunError, resource: str = "Run") -> ApiError:
    desc = f"rpc error: code = {exc.code} desc = {exc.message} (type: Error, retryable: true)"
    return ApiError(
        _HTTP.get(exc.code, 500), f"Failed to execute {resource} {action} workflow on Site: {desc}"
    )


# release/v2.0 flow/internal/service/server_impl_operation_run.go:18, returned by every run RPC but
# create (:63-103); v2.0's flow.proto has no AdvanceOperationRunPhase (main adds it at :94), so
# grpc-go answers its own Unimplemented for that method.
RUNS_UNIMPLEMENTED = "operation run API is not implemented"
ADVANCE_UNKNOWN = "unknown method AdvanceOperationRunPhase for service v1.Flow"


async def reach_runs(ctx: Ctx, site: Site, action: str) -> None:
    """Run the site's run workflow: a silent agent or one without the run workflows hangs
    (:func:`reach_flow`); a Flow without the run API (``flowLacks: runs``) answers gRPC
    Unimplemented, which the agent wraps as ``NICoUnimplemented`` and REST maps to 501
    (``site-workflow/pkg/error/error.go:74-96``, ``common.go`` main ``:1280-1299``)."""
    await reach_flow(ctx, site)
    if action != "creation" and "runs" in ctx.sim.faults_of(site.id).flow_lacks:
        desc = ADVANCE_UNKNOWN if action == "advance" else RUNS_UNIMPLEMENTED
        raise ApiError(
            501,
            f"Failed to execute Run {action} workflow on Site: rpc error: code = Unimplemented "
            f"desc = {desc} (type: Error, retryable: true)",
        )


def _skew(ctx: Ctx, site: Site) -> timedelta:
    """How far the site's clocks run ahead: its database and Flow stamp runs, targets, rules."""
    return ctx.sim.faults_of(site.id).skew


def _path_id(ctx: Ctx, message: str) -> str:
    parsed = parse_uuid(ctx.path("id"))
    if parsed is None:
        raise ApiError(400, message)
    return parsed


# --- reads ---------------------------------------------------------------------------------------


async def _site_listing(
    ctx: Ctx, enums: dict[str, tuple[str, list[str]]]
) -> tuple[Site, dict[str, str], Page]:
    """A list handler's common part: known parameters, then ``ValidateStruct`` of ``siteId``
    (required) and each enum filter (``query key -> (Go field, allowed values)``), then the org,
    the Flow site and the page. Returns the site, each filter's value ("" when absent), the page."""
    check_known_params(ctx, ("siteId", *enums, *_PAGING))
    site_raw = ctx.query("siteId") or ""
    values = {key: ctx.query(key) or "" for key in enums}
    errors: dict[str, Any] = {}
    if not site_raw:
        errors["SiteID"] = "siteId query parameter is required"
    for key, (field, allowed) in enums.items():
        if values[key] and values[key] not in allowed:
            errors[field] = f"{key} must be one of [{' '.join(allowed)}]"
    if errors:
        raise ApiError(400, ozzo(errors))
    check_provider(ctx)
    site = await flow_site(ctx, site_raw)
    return site, values, page_request(ctx, None)


async def list_runs(ctx: Ctx) -> Result:
    """``GET /task/run`` (``taskrun.go:354-431``)."""
    site, values, page = await _site_listing(
        ctx, {"status": ("Status", _RUN_STATUSES), "operationType": ("OperationType", _OP_TYPES)}
    )
    await reach_runs(ctx, site, "list")
    status, op_type = values["status"], values["operationType"]
    runs = manager(ctx).site_runs(site.id)
    if status:
        runs = [r for r in runs if r.status.value == status]
    if op_type == "PowerControl":
        runs = []
    items, header = page.apply(runs)
    return Result([run.as_json(skew=_skew(ctx, site)) for run in items], pagination=header)


async def get_run(ctx: Ctx) -> Result:
    """``GET /task/run/{id}`` (``taskrun.go:249-315``)."""
    run_id = _path_id(ctx, "Invalid Run ID specified in URL")
    check_known_params(ctx, ("siteId", "includeStats"))
    include = bind_bool(ctx, "includeStats")
    site_raw = ctx.query("siteId")
    if not site_raw:
        raise ApiError(400, ozzo({"SiteID": "siteId query parameter is required"}))
    check_provider(ctx)
    site = await flow_site(ctx, site_raw)
    await reach_runs(ctx, site, "retrieval")
    try:
        run = manager(ctx).get(site.id, run_id)
    except RunError as exc:
        raise flow_failure("retrieval", exc) from None
    return Result(run.as_json(stats=include, skew=_skew(ctx, site)))


async def list_targets(ctx: Ctx) -> Result:
    """``GET /task/run/{id}/target`` (``taskrun.go:472-551``); a missing run is an empty list."""
    run_id = _path_id(ctx, "Invalid Run ID specified in URL")
    site, values, page = await _site_listing(
        ctx, {"status": ("Status", _TARGET_STATUSES), "phaseScope": ("PhaseScope", _PHASE_SCOPES)}
    )
    await reach_runs(ctx, site, "targets")
    status, scope = values["status"], values["phaseScope"]
    run = manager(ctx).runs.get(run_id)
    targets = []
    if run is not None and run.site_id == site.id:
        # store/store.go:338-371: the scope is relative to the run's current_phase_index.
        current = run.current_phase

        def keep(phase: int) -> bool:
            if scope == "completedPhases":
                return phase < current
            if scope == "currentAndCompletedPhases":
                return phase <= current
            return phase == current

        targets = sorted(
            (t for t in run.targets if keep(t.phase_index) and (not status or t.status.value == status)),
            key=lambda t: (t.phase_index, t.sequence_index),
        )
    items, header = page.apply(targets)
    return Result([t.as_json(_skew(ctx, site)) for t in items], pagination=header)


# --- create --------------------------------------------------------------------------------------


def _obj(value: Any) -> dict[str, Any]:
    """Echo's JSON binder: a wrong JSON type anywhere fails the whole bind."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, PARSE_FAILED)
    return value


def _typed(body: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError(400, PARSE_FAILED)
    return value


def _duration_s(raw: str) -> float | None:
    """``time.ParseDuration`` (enough of it): seconds, or None when it does not parse."""
    if not _GO_DURATION.match(raw):
        return None
    sign = -1.0 if raw.startswith("-") else 1.0
    total = sum(
        float(n) * _UNIT_S[u] for n, _, _, u in re.findall(r"((\d+(\.\d*)?|\.\d+))(ns|us|µs|ms|s|m|h)", raw)
    )
    return sign * total


async def create_run(ctx: Ctx) -> Result:
    """``POST /task/run`` (``taskrun.go:152-212``): 201 with what the handler knows."""
    body = await ctx.body()
    site_raw = _typed(body, "siteId", str, "")
    name = _typed(body, "name", str, "")
    description = _typed(body, "description", str, "")
    selector = _obj(body.get("selector")) if body.get("selector") is not None else None
    options = _obj(body.get("options"))
    operation = _obj(body.get("operation"))
    max_conc = _typed(options, "maxConcurrentTargets", int, 0)
    safety = _obj(options.get("safetyPolicy")) if options.get("safetyPolicy") is not None else None
    conflict = _obj(options.get("conflictPolicy")) if options.get("conflictPolicy") is not None else None
    ordering = _obj(options.get("orderingPolicy")) if options.get("orderingPolicy") is not None else None
    phase = _obj(options.get("phasePolicy")) if options.get("phasePolicy") is not None else None
    firmware = _obj(operation.get("firmware")) if operation.get("firmware") is not None else None
    excludes = _typed(operation, "excludeRunIds", list, [])

    # APITaskRunCreateRequest.Validate (model/taskrun.go:605-612 and the nested Validate methods).
    errors: dict[str, Any] = {}
    if not site_raw:
        errors["siteId"] = "siteId is required"
    if not name:
        errors["name"] = "name is required"
    opt_errors: dict[str, Any] = {}
    if max_conc <= 0:
        opt_errors["maxConcurrentTargets"] = "must be greater than zero"
    gates_raw: list[Any] = []
    if safety is not None:
        gates_raw = _typed(safety, "gates", list, [])
        gate_errors: dict[str, Any] = {}
        for index, raw in enumerate(gates_raw):
            gate = _obj(raw)
            rate, count = gate.get("failureRate"), gate.get("failureCount")
            if (rate is None) == (count is None):
                gate_errors[str(index)] = "must set exactly one of failureRate or failureCount"
                continue
            inner = _obj(rate if rate is not None else count)
            scope = _typed(inner, "scope", str, "")
            if scope and scope not in _GATE_SCOPES:
                key = "failureRate" if rate is not None else "failureCount"
                gate_errors[str(index)] = {key: {"scope": f"must be one of [{' '.join(_GATE_SCOPES)}]"}}
        if gate_errors:
            opt_errors["safetyPolicy"] = {"gates": gate_errors}
    retry = (
        _obj(conflict.get("retry")) if conflict is not None and conflict.get("retry") is not None else None
    )
    durations: dict[str, float] = {}
    if retry is not None:
        retry_errors: dict[str, Any] = {}
        for key in ("retryTimeout", "initialRetryDelay", "maxRetryDelay"):
            raw_duration = _typed(retry, key, str, "")
            if raw_duration:
                seconds = _duration_s(raw_duration)
                if seconds is None:
                    retry_errors[key] = f'invalid duration "{raw_duration}"'
                else:
                    durations[key] = seconds
        if retry_errors:
            opt_errors["conflictPolicy"] = {"retry": retry_errors}
    if phase is not None and sum(phase.get(k) is not None for k in ("equal", "percentage", "count")) > 1:
        opt_errors["phasePolicy"] = "must set at most one of equal, percentage, count"
    if opt_errors:
        errors["options"] = opt_errors
    if firmware is None:
        errors["operation"] = {"firmware": "firmware is required"}
    elif not _typed(firmware, "version", str, ""):
        errors["operation"] = {"firmware": {"version": "version is required"}}
    if errors:
        raise ApiError(400, ozzo(errors))
    assert firmware is not None
    check_provider(ctx)
    site = await flow_site(ctx, site_raw)
    await reach_runs(ctx, site, "creation")

    def invalid(message: str) -> ApiError:
        return flow_failure("creation", RunError("InvalidArgument", message))

    # Flow's OperationRunFrom (converter/protobuf/operationrun_converter.go:29-91): operation,
    # then selector, then options.
    if not name.strip():
        raise invalid("name is required")
    exclude_ids = []
    for index, raw_id in enumerate(excludes):
        parsed = parse_uuid(raw_id) if isinstance(raw_id, str) else None
        if parsed is None:
            raise invalid(
                f"validate operation: target_scope: excluded_operation_run_ids[{index}] is required"
            )
        exclude_ids.append(parsed)
    percentage = (
        _obj(selector.get("percentage")) if selector is not None and selector.get("percentage") else None
    )
    if percentage is None:
        # The REST handler only forwards a percentage selector (model/taskrun.go:623-632); Flow
        # requires one (operationrun_converter.go:96-98), so an omitted selector is refused.
        raise invalid("selector is required")
    percent = _typed(percentage, "percent", int, 0)
    if not 1 <= percent <= 100:
        raise invalid("percentage selector must be between 1 and 100")
    seed = _typed(percentage, "seed", str, "") or str(
        uuid.UUID(int=ctx.sim.world.rng.getrandbits(128), version=4)
    )
    if safety is None:
        raise invalid("options.safety_policy is required")
    if not gates_raw:
        raise invalid("safety_policy must contain at least one gate")
    gates = []
    for index, raw in enumerate(gates_raw):
        gate = _obj(raw)
        if gate.get("failureRate") is not None:
            inner = _obj(gate["failureRate"])
            threshold = _typed(inner, "thresholdPercent", int, 0)
            if not 1 <= threshold <= 100:
                raise invalid(
                    f"safety_policy.gates[{index}]: failure_rate.failure_threshold_percent must be between 1 and 100"
                )
            kind = "failure_rate"
        else:
            inner = _obj(gate["failureCount"])
            threshold = _typed(inner, "thresholdCount", int, 0)
            if threshold <= 0:
                raise invalid(
                    f"safety_policy.gates[{index}]: failure_count.failure_threshold_count must be greater than 0"
                )
            kind = "failure_count"
        scope = "cumulative_run" if inner.get("scope") == "cumulativeRun" else "current_phase"
        gates.append(SafetyGate(kind, threshold, scope))
    timeout = durations.get("retryTimeout", DEFAULT_RETRY_TIMEOUT_S)
    initial = durations.get("initialRetryDelay", DEFAULT_INITIAL_RETRY_DELAY_S)
    maximum = durations.get("maxRetryDelay", DEFAULT_MAX_RETRY_DELAY_S)
    for label, value in (
        ("retry_timeout", timeout),
        ("initial_retry_delay", initial),
        ("max_retry_delay", maximum),
    ):
        if value <= 0:  # configuration.go:267-285
            raise invalid(f"conflict_policy.retry: {label} must be greater than 0")
    if maximum < initial:
        raise invalid(
            "conflict_policy.retry: max_retry_delay must be greater than or equal to initial_retry_delay"
        )
    random_order = _obj(ordering.get("random")) if ordering is not None and ordering.get("random") else {}
    order_seed = _typed(random_order, "seed", str, "") or str(
        uuid.UUID(int=ctx.sim.world.rng.getrandbits(128), version=4)
    )
    plan = _phase_plan(phase, invalid)
    run_options = RunOptions(
        max_concurrent_targets=max_conc,
        gates=tuple(gates),
        phase_plan=plan,
        auto_advance=bool(phase.get("autoAdvance")) if phase is not None else False,
        retry_timeout_s=timeout,
        initial_retry_delay_s=initial,
        max_retry_delay_s=maximum,
        ordering_seed=order_seed,
    )
    try:
        run = manager(ctx).create(
            site.id,
            name=name.strip(),
            description=description,
            version=str(firmware["version"]),
            options=run_options,
            percent=percent,
            selector_seed=seed,
            exclude_run_ids=exclude_ids,
            rule_id=firmware.get("ruleId") if isinstance(firmware.get("ruleId"), str) else None,
        )
    except RunError as exc:
        raise flow_failure("creation", exc) from None
    # taskrun.go:197-211: the handler echoes what it knows; timestamps stay Go's zero time.
    return Result(
        {
            "id": run.id,
            "name": name,
            "description": description,
            "operationType": "FirmwareControl",
            "operationCode": "",
            "status": "Pending",
            "statusReason": "None",
            "statusMessage": "",
            "totalPhases": 0,
            "created": "0001-01-01T00:00:00Z",
            "updated": "0001-01-01T00:00:00Z",
            "started": None,
            "finished": None,
        },
        status=201,
    )


def _phase_plan(phase: dict[str, Any] | None, invalid: Any) -> PhasePlan | None:
    """``phasePolicyFrom`` (``operationrun_converter.go:291-390``)."""
    if phase is None:
        return None
    if phase.get("equal") is not None:
        count = _typed(_obj(phase["equal"]), "phaseCount", int, 0)
        if count <= 0:
            raise invalid("equal phase_count must be greater than 0")
        return PhasePlan("equal", (count,))
    if phase.get("percentage") is not None:
        values = _typed(_obj(phase["percentage"]), "phases", list, [])
        if not values:
            raise invalid("percentage phase policy must include at least one phase")
        if any(not isinstance(v, int) or not 1 <= v <= 100 for v in values):
            raise invalid("percentage phase percentages must be between 1 and 100")
        if sum(values) != 100:
            raise invalid("percentage phase percentages must sum to 100")
        return PhasePlan("percentage", tuple(values))
    if phase.get("count") is not None:
        values = _typed(_obj(phase["count"]), "phases", list, [])
        if not values:
            raise invalid("count phase policy must include at least one phase")
        if any(not isinstance(v, int) or v <= 0 for v in values):
            raise invalid("count phase counts must be greater than 0")
        return PhasePlan("count", tuple(values))
    return None


# --- lifecycle -----------------------------------------------------------------------------------


async def _lifecycle(ctx: Ctx, action: str) -> Result:
    """``executeRunLifecycleWorkflow`` (``taskrun.go:558-599``): 202 with the run."""
    run_id = _path_id(ctx, "Invalid Run ID specified in URL")
    body = await ctx.body()
    site_raw = _typed(body, "siteId", str, "")
    reason = _typed(body, "reason", str, "") if action == "cancel" else ""
    expected = _typed(body, "expectedPhaseIndex", int, None) if action == "advance" else None
    if not site_raw:
        raise ApiError(400, ozzo({"siteId": "siteId is required"}))
    check_provider(ctx)
    site = await flow_site(ctx, site_raw)
    await reach_runs(ctx, site, action)
    runs = manager(ctx)
    try:
        if action == "pause":
            run = runs.pause(site.id, run_id)
        elif action == "resume":
            run = runs.resume(site.id, run_id)
        elif action == "advance":
            run = runs.advance(site.id, run_id, expected)
        else:
            run = runs.cancel(site.id, run_id, reason)
    except RunError as exc:
        raise flow_failure(action, exc) from None
    return Result(run.as_json(skew=_skew(ctx, site)), status=202)


async def pause_run(ctx: Ctx) -> Result:
    return await _lifecycle(ctx, "pause")


async def resume_run(ctx: Ctx) -> Result:
    return await _lifecycle(ctx, "resume")


async def advance_run(ctx: Ctx) -> Result:
    return await _lifecycle(ctx, "advance")


async def cancel_run(ctx: Ctx) -> Result:
    return await _lifecycle(ctx, "cancel")


# --- rules ---------------------------------------------------------------------------------------


async def list_rules(ctx: Ctx) -> Result:
    """``GET /task/rule`` (``taskrule.go:356-442``): newest first, paged."""
    site, values, page = await _site_listing(ctx, {"operationType": ("OperationType", _OP_TYPES)})
    await reach_flow(ctx, site)
    op_type = values["operationType"]
    rules = [rule.as_json(_skew(ctx, site)) for rule in manager(ctx).site_rules(site.id)]
    if op_type:
        rules = [rule for rule in rules if rule["operationType"] == op_type]
    items, header = page.apply(rules)
    return Result(items, pagination=header)


async def get_rule(ctx: Ctx) -> Result:
    """``GET /task/rule/{id}`` (``taskrule.go:244-318``); a missing rule is Flow's NotFound."""
    rule_id = _path_id(ctx, "Invalid Rule ID specified in URL")
    check_known_params(ctx, ("siteId",))
    site_raw = ctx.query("siteId")
    if not site_raw:
        raise ApiError(400, ozzo({"SiteID": "siteId query parameter is required"}))
    check_provider(ctx)
    site = await flow_site(ctx, site_raw)
    await reach_flow(ctx, site)
    rule = manager(ctx).rule(site.id, rule_id)
    if rule is None:
        # task/store/postgres.go:456-457
        raise flow_failure("retrieval", RunError("NotFound", "operation rule not found"), resource="Rule")
    return Result(rule.as_json(_skew(ctx, site)))


__all__ = [
    "advance_run",
    "cancel_run",
    "create_run",
    "get_rule",
    "get_run",
    "list_rules",
    "list_runs",
    "list_targets",
    "pause_run",
    "resume_run",
]
