"""The control API under ``/_sim`` (no auth): ground truth, task injection, faults, fleet faults,
outages, auth switches, stats.

Lets tests, the demo and benchmarks drive a simulator they only reach over a socket. It is no
part of NICo: its error bodies are ``{"error": ...}``, never NICo-shaped.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from exporter.simulator.access import AUTH_KEYS, auth_json
from exporter.simulator.clock import ManualClock
from exporter.simulator.operations import Operation
from exporter.simulator.responses import nico_response, read_json_object
from exporter.simulator.simulation import Simulation
from exporter.simulator.taskruns import ChildPlan, RunError, SafetyGate
from exporter.simulator.wire import encode
from exporter.simulator.world import CancelRefused, Outcome, Rejected, SimulationError


def _control_error(status: int, message: str) -> Response:
    return Response(encode({"error": message}), status, media_type="application/json")


async def sim_truth(request: Request) -> Response:
    sim: Simulation = request.app.state.sim
    return nico_response(200, sim.truth_json())


async def sim_create_task(request: Request) -> Response:
    """``POST /_sim/tasks {siteId, rackId, operation, outcome?, trayIds?, failStage?, error?,
    stageSeconds?, description?, source?, queueTimeoutSeconds?, count?}``.

    Submits as the task's real creator would (``source``: ``rest``, ``leak_detection`` or
    ``schedule:<name>``); Flow's refusal of a conflicting submission is a 409 naming Flow's
    reason. ``count`` submits that many identical tasks at once (in creation order); the answer
    has ``taskId`` (the first) and ``taskIds`` (all).
    """
    sim: Simulation = request.app.state.sim
    body = await read_json_object(request)
    if body is None:
        return _control_error(400, "body must be a JSON object")
    count = body.get("count", 1)
    if not isinstance(count, int) or not 1 <= count <= 10_000:
        return _control_error(400, "count must be an integer from 1 to 10000")
    task_ids: list[str] = []
    try:
        for _ in range(count):
            task_ids.append(
                sim.create_task(
                    str(body["siteId"]),
                    str(body["rackId"]),
                    Operation(body["operation"]),
                    tray_ids=body.get("trayIds"),
                    outcome=Outcome(body.get("outcome", "succeed")),
                    fail_stage=body.get("failStage"),
                    error=body.get("error"),
                    stage_seconds=body.get("stageSeconds"),
                    description=body.get("description"),
                    source=str(body.get("source", "rest")),
                    queue_timeout_s=body.get("queueTimeoutSeconds"),
                )
            )
    except Rejected as exc:
        if not task_ids:
            return _control_error(409, exc.reason)
    except KeyError as exc:
        return _control_error(400, f"missing field {exc.args[0]}")
    except (ValueError, TypeError) as exc:
        return _control_error(400, str(exc))
    return nico_response(201, {"taskId": task_ids[0], "taskIds": task_ids, "rejected": count - len(task_ids)})


async def sim_forget_task(request: Request) -> Response:
    """``DELETE /_sim/tasks/{id}``: NOT NICo behaviour (Flow never deletes a task). Simulates a
    Flow database restored from an older backup: the finished task then answers Flow's "no
    rows" 500."""
    sim: Simulation = request.app.state.sim
    try:
        sim.forget_task(str(request.path_params["id"]))
    except SimulationError as exc:
        return _control_error(404 if "unknown" in str(exc) else 409, str(exc))
    return nico_response(200, {"taskId": str(request.path_params["id"]), "forgotten": True})


async def sim_cancel_task(request: Request) -> Response:
    sim: Simulation = request.app.state.sim
    task_id = str(request.path_params["id"])
    try:
        task = sim.cancel_task(task_id)
    except CancelRefused as exc:
        return _control_error(409, str(exc))
    except SimulationError as exc:
        return _control_error(404, str(exc))
    return nico_response(200, {"taskId": task.id, "status": task.status.value})


async def sim_faults(request: Request) -> Response:
    """``GET`` the fault config, or ``PUT`` a partial one (``FaultConfig`` field names)."""
    sim: Simulation = request.app.state.sim
    if request.method == "PUT":
        body = await read_json_object(request)
        if body is None:
            return _control_error(400, "body must be a JSON object")
        try:
            sim.configure_faults(body)
        except (ValueError, TypeError) as exc:
            return _control_error(400, str(exc))
    return nico_response(200, sim.faults.config.as_json())


async def sim_site(request: Request) -> Response:
    """``POST /_sim/sites/{id}/{down|up|remove|restore}`` (down takes ``{"delaySeconds"}``)."""
    sim: Simulation = request.app.state.sim
    site_id, action = str(request.path_params["id"]), str(request.path_params["action"])
    body = await read_json_object(request) or {}
    delay = body.get("delaySeconds")
    try:
        if action == "down":
            sim.set_site_down(site_id, True, delay_s=float(delay) if isinstance(delay, int | float) else None)
        elif action == "up":
            sim.set_site_down(site_id, False)
        elif action == "remove":
            sim.remove_site(site_id)
        elif action == "restore":
            sim.restore_site(site_id)
        else:
            return _control_error(404, f"unknown action {action!r}")
    except SimulationError as exc:
        return _control_error(404, str(exc))
    return nico_response(200, {"siteId": site_id, "action": action})


async def sim_stats(request: Request) -> Response:
    sim: Simulation = request.app.state.sim
    if request.method == "DELETE":
        sim.stats.reset()
    faults = {"callsFailed": sim.faults.calls_failed, "callsStalled": sim.faults.calls_stalled}
    return nico_response(200, {**sim.stats.as_json(), **faults})


async def sim_clock(request: Request) -> Response:
    """``POST /_sim/clock {"advanceSeconds"}``: step a manual clock (409 for a real-time one)."""
    sim: Simulation = request.app.state.sim
    if not isinstance(sim.clock, ManualClock):
        return _control_error(409, "the simulation runs on an accelerated clock")
    body = await read_json_object(request) or {}
    seconds = body.get("advanceSeconds", 0)
    if not isinstance(seconds, int | float) or seconds < 0:
        return _control_error(400, "advanceSeconds must be a non-negative number")
    sim.clock.advance(float(seconds))
    processed = sim.advance()
    return nico_response(200, {"now": sim.truth_json()["now"], "eventsProcessed": processed})


def _child_plan(body: dict[str, object]) -> ChildPlan:
    rate = body.get("childFailureRate", 0.0)
    phases = body.get("childFailPhases", [])
    seconds = body.get("childStageSeconds")
    if not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
        raise ValueError("childFailureRate must be a number from 0 to 1")
    if not isinstance(phases, list) or not all(isinstance(p, int) for p in phases):
        raise ValueError("childFailPhases must be a list of phase indexes")
    if seconds is not None and not isinstance(seconds, int | float):
        raise ValueError("childStageSeconds must be a number")
    return ChildPlan(float(rate), tuple(phases), None if seconds is None else float(seconds))


async def sim_create_task_run(request: Request) -> Response:
    """``POST /_sim/task-runs {siteId, version, name?, maxConcurrentTargets?, phases?, autoAdvance?,
    failureRatePercent?, failureCount?, retryTimeoutSeconds?, childFailureRate?, childFailPhases?,
    childStageSeconds?}``: a firmware Task Run as an operator would start it (NICo main only).

    ``failureRatePercent`` / ``failureCount`` are current-phase safety gates; the ``child*`` fields
    are the simulation's plan for how the run's child tasks end (not NICo configuration).
    """
    sim: Simulation = request.app.state.sim
    body = await read_json_object(request)
    if body is None:
        return _control_error(400, "body must be a JSON object")
    gates = []
    if isinstance(body.get("failureRatePercent"), int):
        gates.append(SafetyGate("failure_rate", int(body["failureRatePercent"])))
    if isinstance(body.get("failureCount"), int):
        gates.append(SafetyGate("failure_count", int(body["failureCount"])))
    try:
        run_id = sim.create_task_run(
            str(body["siteId"]),
            version=str(body["version"]),
            name=str(body.get("name", "firmware-rollout")),
            max_concurrent_targets=int(body.get("maxConcurrentTargets", 1)),
            phases=int(body.get("phases", 1)),
            auto_advance=bool(body.get("autoAdvance", False)),
            gates=gates,
            retry_timeout_s=float(body.get("retryTimeoutSeconds", 3600.0)),
            child=_child_plan(body),
        )
    except KeyError as exc:
        return _control_error(400, f"missing field {exc.args[0]}")
    except RunError as exc:
        return _control_error(409, exc.message)
    except (ValueError, TypeError) as exc:
        return _control_error(400, str(exc))
    return nico_response(201, {"runId": run_id})


async def sim_plan_task_run(request: Request) -> Response:
    """``PUT /_sim/task-runs/{id}/children {childFailureRate?, childFailPhases?, childStageSeconds?}``."""
    sim: Simulation = request.app.state.sim
    body = await read_json_object(request)
    if body is None:
        return _control_error(400, "body must be a JSON object")
    try:
        sim.plan_run_children(str(request.path_params["id"]), _child_plan(body))
    except SimulationError as exc:
        return _control_error(404, str(exc))
    except ValueError as exc:
        return _control_error(400, str(exc))
    return nico_response(200, {"runId": str(request.path_params["id"])})


async def sim_create_rule(request: Request) -> Response:
    """``POST /_sim/rules {siteId, operation, name, layout?, isDefault?, rackIds?}``: a custom
    operation rule (NICo v2.0 and main). ``layout`` is its stages, each a list of component types
    (``[["PowerShelf"], ["Compute", "NVSwitch"]]``); the site's submissions run it once it is the
    default or their rack is associated with it, as Flow's resolver picks rules."""
    sim: Simulation = request.app.state.sim
    body = await read_json_object(request)
    if body is None:
        return _control_error(400, "body must be a JSON object")
    try:
        layout = body.get("layout")
        if layout is not None and not (
            isinstance(layout, list) and layout and all(isinstance(stage, list) and stage for stage in layout)
        ):
            raise ValueError("layout must be a non-empty list of non-empty lists of component types")
        rule_id = sim.add_operation_rule(
            str(body["siteId"]),
            Operation(body["operation"]),
            name=str(body["name"]),
            layout=layout,
            is_default=bool(body.get("isDefault", False)),
            rack_ids=[str(r) for r in body.get("rackIds", [])],
        )
    except KeyError as exc:
        return _control_error(400, f"missing field {exc.args[0]}")
    except SimulationError as exc:
        return _control_error(409, str(exc))
    except (ValueError, TypeError) as exc:
        return _control_error(400, str(exc))
    return nico_response(201, {"ruleId": rule_id})


async def sim_site_faults(request: Request) -> Response:
    """``GET /_sim/sites/{id}/faults``, or ``PUT`` a partial set of fleet faults (camelCase keys:
    ``silent``, ``workflowTimeoutSeconds``, ``siteStatus``, ``offlineAfterSeconds``,
    ``agentLacks``, ``flowLacks``, ``clockSkewSeconds``, ``unorderedInventory``, ``emptyCancel``);
    answers the site's faults in force. An unknown key or a wrong type is 400, a site the
    simulation does not have 404."""
    sim: Simulation = request.app.state.sim
    site_id = str(request.path_params["id"])
    if site_id not in sim.world.sites:
        return _control_error(404, f"unknown site {site_id}")
    if request.method == "PUT":
        body = await read_json_object(request)
        if body is None:
            return _control_error(400, "body must be a JSON object")
        try:
            sim.set_site_faults(site_id, body)
        except ValueError as exc:
            return _control_error(400, str(exc))
    return nico_response(200, sim.faults_of(site_id).as_json(sim.config.workflow_timeout_s))


async def sim_auth(request: Request) -> Response:
    """``GET /_sim/auth``, or ``PUT`` a partial set of booleans: ``keycloak`` (the ``/auth`` routes
    exist), ``serviceAccounts`` (login by clientId is enabled), ``providerAdmin`` (the caller has
    the role), ``infrastructureProvider`` (the org has one)."""
    sim: Simulation = request.app.state.sim
    if request.method == "PUT":
        body = await read_json_object(request)
        if body is None:
            return _control_error(400, "body must be a JSON object")
        for key, value in body.items():
            if key not in AUTH_KEYS and key != "serviceAccounts":
                return _control_error(400, f"unknown auth key {key!r}")
            if not isinstance(value, bool):
                return _control_error(400, f"{key} must be a boolean")
        for key, value in body.items():
            if key == "serviceAccounts":
                sim.tokens.service_accounts_enabled = value
            else:
                setattr(sim.access, AUTH_KEYS[key], value)
    return nico_response(200, auth_json(sim.access, sim.tokens))


async def sim_revoke_tokens(request: Request) -> Response:
    """``POST /_sim/auth/revoke``: without a body, forget every issued token (a Keycloak key
    rotation); ``{"clientId"}`` deletes that client (credentials and tokens); ``{"token"}``
    invalidates one token, static or issued."""
    sim: Simulation = request.app.state.sim
    body = await read_json_object(request)
    if body is None:
        return _control_error(400, "body must be a JSON object")
    if not body:
        sim.tokens.revoke_all()
        return nico_response(200, {"revoked": True})
    if set(body) not in ({"clientId"}, {"token"}) or not all(isinstance(v, str) for v in body.values()):
        return _control_error(400, 'body must be {"clientId": "<id>"} or {"token": "<token>"}')
    if "clientId" in body:
        if not sim.tokens.revoke_client(body["clientId"]):
            return _control_error(404, f"unknown client {body['clientId']}")
        return nico_response(200, {"revoked": True, "clientId": body["clientId"]})
    if not sim.tokens.revoke_token(body["token"]):
        return _control_error(404, "unknown token")
    return nico_response(200, {"revoked": True})


def control_routes() -> list[BaseRoute]:
    """The ``/_sim`` routes."""
    return [
        Route("/_sim/truth", sim_truth),
        Route("/_sim/tasks", sim_create_task, methods=["POST"]),
        Route("/_sim/tasks/{id}/cancel", sim_cancel_task, methods=["POST"]),
        Route("/_sim/tasks/{id}", sim_forget_task, methods=["DELETE"]),
        Route("/_sim/faults", sim_faults, methods=["GET", "PUT"]),
        Route("/_sim/sites/{id}/faults", sim_site_faults, methods=["GET", "PUT"]),
        Route("/_sim/sites/{id}/{action}", sim_site, methods=["POST"]),
        Route("/_sim/stats", sim_stats, methods=["GET", "DELETE"]),
        Route("/_sim/clock", sim_clock, methods=["POST"]),
        Route("/_sim/auth", sim_auth, methods=["GET", "PUT"]),
        Route("/_sim/auth/revoke", sim_revoke_tokens, methods=["POST"]),
        Route("/_sim/task-runs", sim_create_task_run, methods=["POST"]),
        Route("/_sim/task-runs/{id}/children", sim_plan_task_run, methods=["PUT"]),
        Route("/_sim/rules", sim_create_rule, methods=["POST"]),
    ]
