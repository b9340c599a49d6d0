"""The test builders: ids, times and NICo task payloads, shared by every unit test.

One place, so a change in what NICo sends (a field renamed, a status added) is made once. The
payloads are what NICo's code writes (``rest-api/api/pkg/api/model/task.go``); times are epoch
seconds counted from :data:`T0`. ``tests/test_payload_corpus.py`` keeps its own fuller builders
(whole payloads with fields to drop), for its contract cases.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from exporter.models import Task

SITE = "11111111-1111-4111-8111-111111111111"
RACK = "22222222-2222-4222-8222-222222222222"
OTHER_RACK = "33333333-3333-4333-8333-333333333333"
ORG = "acme"
SIM_TOKEN = "sim-token"  # the simulator's default bearer token
T0 = 1_780_000_000.0  # epoch seconds; every time in a test is T0 + an offset
DESCRIPTION = "API power on Rack"


def tid(n: int) -> str:
    """A stable, valid task UUID for task number ``n``."""
    return f"00000000-0000-4000-8000-{n:012d}"


def iso(at: float) -> str:
    """Epoch seconds as NICo's RFC 3339 UTC timestamp."""
    return datetime.fromtimestamp(at, UTC).isoformat()


def _times(out: dict[str, Any], start: float | None, end: float | None) -> dict[str, Any]:
    if start is not None:
        out["startedAt"] = iso(start)
    if end is not None:
        out["finishedAt"] = iso(end)
    return out


def step(
    component: str = "Compute",
    status: str = "pending",
    start: float | None = None,
    end: float | None = None,
    error: str | None = None,
    *,
    total: int = 1,
) -> dict[str, Any]:
    """A report step: one component type's work within a stage."""
    out: dict[str, Any] = {"componentType": component, "status": status, "totalComponents": total}
    if error is not None:
        out["error"] = error
    return _times(out, start, end)


def stage(
    number: int,
    status: str,
    *steps: dict[str, Any],
    start: float | None = None,
    end: float | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """A report stage with its steps."""
    out: dict[str, Any] = {"number": number, "status": status, "steps": list(steps)}
    if error is not None:
        out["error"] = error
    return _times(out, start, end)


def report(*stages: dict[str, Any], version: int = 1) -> dict[str, Any]:
    """A task report (version 1 is the one Flow writes)."""
    return {"version": version, "stages": list(stages)}


def task_data(
    n: int = 1,
    status: str = "Running",
    *stages: dict[str, Any],
    description: str = DESCRIPTION,
    created: float | None = T0,
    started: float | None = None,
    updated: float | None = None,
    finished: float | None = None,
    message: str | None = None,
    rule_id: str | None = None,
    rep: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A task payload. ``stages`` make its report (or ``rep`` is the whole report); none: no report."""
    data: dict[str, Any] = {"id": tid(n), "status": status, "description": description}
    for key, at in (("created", created), ("started", started), ("updated", updated), ("finished", finished)):
        if at is not None:
            data[key] = iso(at)
    if message is not None:
        data["message"] = message
    if rule_id is not None:
        data["ruleId"] = rule_id
    if rep is not None:
        data["report"] = rep
    elif stages:
        data["report"] = report(*stages)
    return data


def task(n: int = 1, status: str = "Running", *stages: dict[str, Any], **fields: Any) -> Task:
    """:func:`task_data`, parsed as the client would."""
    return Task.parse(task_data(n, status, *stages, **fields))


def wire_task(status: str = "Running", **fields: Any) -> dict[str, Any]:
    """A task exactly as NICo serialises it (every key present, a fresh id); ``fields`` override."""
    out: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "status": status,
        "description": DESCRIPTION,
        "message": "",
        "ruleId": None,
        "created": "2026-06-08T18:00:00.123456Z",
        "started": None,
        "updated": "2026-06-08T18:00:01.5Z",
        "finished": None,
    }
    out.update(fields)
    return out


# -- Task Runs and Operation Rules (NICo main: rest-api/api/pkg/api/model/taskrun.go, taskrule.go) ---


def run_id(n: int) -> str:
    return f"99999999-0000-4000-8000-{n:012d}"


def target_id(n: int) -> str:
    return f"88888888-0000-4000-8000-{n:012d}"


def run_data(
    n: int = 1,
    status: str = "Running",
    *,
    reason: str = "None",
    message: str = "",
    phase: int = 0,
    phases: int = 3,
    outcomes: dict[str, int] | None = None,
    created: float = T0,
    started: float | None = T0 + 5,
    finished: float | None = None,
    stats: bool = True,
) -> dict[str, Any]:
    """An ``APITaskRun``; ``phase`` is NICo's 0-based ``phaseIndex``; ``stats`` as with includeStats."""
    counts = {"completed": 0, "failed": 0, "terminated": 0, "skipped": 0, **(outcomes or {})}
    data: dict[str, Any] = {
        "id": run_id(n),
        "name": f"fw-rollout-{n}",
        "description": "firmware rollout",
        "operationType": "FirmwareControl",
        "operationCode": "upgrade",
        "status": status,
        "statusReason": reason,
        "statusMessage": message,
        "totalPhases": phases,
        "created": iso(created),
        "updated": iso(finished or started or created),
        "started": iso(started) if started is not None else None,
        "finished": iso(finished) if finished is not None else None,
    }
    if stats:
        data["stats"] = {
            "currentPhase": {"phaseIndex": phase, "selectedTargets": 2, "outcomeCounts": counts},
            "cumulativePhase": {"phaseIndex": phase, "selectedTargets": 6, "outcomeCounts": counts},
        }
    return data


def target_data(
    n: int,
    run: int = 1,
    *,
    rack: str = RACK,
    phase: int = 0,
    status: str = "Submitted",
    task: int | None = None,
) -> dict[str, Any]:
    """An ``APITaskRunTarget``: one rack of a run and the task Flow submitted for it."""
    return {
        "id": target_id(n),
        "runId": run_id(run),
        "rackId": rack,
        "sequenceIndex": n,
        "phaseIndex": phase,
        "taskId": tid(task) if task is not None else None,
        "status": status,
        "message": "",
        "created": iso(T0),
        "updated": iso(T0 + 10),
    }


def rule_data(
    n: int, name: str, *stages: tuple[int, str], default: bool = False, code: str = "upgrade"
) -> dict[str, Any]:
    """An ``APITaskRule`` whose steps are (stage, componentType) pairs."""
    return {
        "id": f"77777777-0000-4000-8000-{n:012d}",
        "name": name,
        "description": "",
        "operationType": "FirmwareControl",
        "operationCode": code,
        "ruleDefinition": {
            "version": "v1",
            "steps": [{"componentType": kind, "stage": stage, "maxParallel": 1} for stage, kind in stages],
        },
        "isDefault": default,
        "created": iso(T0),
        "updated": iso(T0),
    }
