"""The operations NICo runs: Flow task type and operation code, default rule layout, descriptions.

Transcribed from NICo's Go source (``rest-api/`` at ``release/v2.0``; docs/simulator.md gives
file and line for each): Flow's built-in default rules (``flow/internal/task/operationrules/
resolver_defaults.go``), the REST handlers' description strings (``api/pkg/api/handler/util/
common/common.go``), the leak-detection job (``flow/internal/scheduler/jobs/leakdetection/``) and
the task-schedule dispatcher. The simulator names operations the way the exporter classifies them
(``power_cycle``, ``firmware_update``, ...) so ground truth and metrics line up; Flow's type and
code (``power_control``/``restart``, ...) are kept alongside.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from exporter.models import ComponentType

C = ComponentType.COMPUTE
S = ComponentType.NVSWITCH
P = ComponentType.POWERSHELF

Layout = tuple[tuple[ComponentType, ...], ...]

# Stage layouts: one tuple per rule stage, one component type per sequence step.
_POWER_ON: Layout = ((P,), (S,), (C,))
_POWER_OFF: Layout = ((C,), (S,), (P,))
_ALL = (P, S, C)


class Operation(StrEnum):
    """What a task does, named as the exporter classifies it."""

    POWER_ON = "power_on"
    POWER_OFF = "power_off"
    POWER_CYCLE = "power_cycle"
    FORCE_POWER_OFF = "force_power_off"
    FORCE_POWER_CYCLE = "force_power_cycle"
    FIRMWARE_UPDATE = "firmware_update"
    BRING_UP = "bring_up"
    LEAK_DETECTION = "leak_detection"


class TaskType(StrEnum):
    """Flow's task ``type`` column (``flow/internal/task/common/common.go``)."""

    POWER_CONTROL = "power_control"
    FIRMWARE_CONTROL = "firmware_control"
    BRING_UP = "bring_up"


class Family(StrEnum):
    """Operations grouped by how long their stages take (power is fast, firmware slow)."""

    POWER = "power"
    FIRMWARE = "firmware"
    BRING_UP = "bring_up"


@dataclass(frozen=True)
class OperationSpec:
    """How Flow runs one operation: type, code, default rule layout and REST description stem.

    ``rest_failure`` is the 500 message stem the REST handler gives when Flow refuses the
    submission ("Failed to power control Rack"); None where there is no REST trigger.
    """

    task_type: TaskType
    code: str
    family: Family
    stages: Layout
    # "API power on" + " Rack" / " Tray"; None where the operation has no REST trigger.
    api_description: str | None
    tray_scoped_allowed: bool
    rest_failure: str | None


OPERATIONS: dict[Operation, OperationSpec] = {
    Operation.POWER_ON: OperationSpec(
        TaskType.POWER_CONTROL,
        "power_on",
        Family.POWER,
        _POWER_ON,
        "API power on",
        True,
        "Failed to power control",
    ),
    Operation.POWER_OFF: OperationSpec(
        TaskType.POWER_CONTROL,
        "power_off",
        Family.POWER,
        _POWER_OFF,
        "API power off",
        True,
        "Failed to power control",
    ),
    Operation.POWER_CYCLE: OperationSpec(
        TaskType.POWER_CONTROL,
        "restart",
        Family.POWER,
        _POWER_OFF + _POWER_ON,
        "API power cycle",
        True,
        "Failed to power control",
    ),
    Operation.FORCE_POWER_OFF: OperationSpec(
        TaskType.POWER_CONTROL,
        "force_power_off",
        Family.POWER,
        (*_POWER_OFF, _ALL),
        "API force power off",
        True,
        "Failed to power control",
    ),
    # Stages 4 and 8 run all three types in parallel.
    Operation.FORCE_POWER_CYCLE: OperationSpec(
        TaskType.POWER_CONTROL,
        "force_restart",
        Family.POWER,
        (*_POWER_OFF, _ALL, *_POWER_ON, _ALL),
        "API force power cycle",
        True,
        "Failed to power control",
    ),
    # The default firmware rule has no power-shelf step.
    Operation.FIRMWARE_UPDATE: OperationSpec(
        TaskType.FIRMWARE_CONTROL,
        "upgrade",
        Family.FIRMWARE,
        ((C,), (S,)),
        "API firmware update",
        True,
        "Failed to upgrade firmware for",
    ),
    Operation.BRING_UP: OperationSpec(
        TaskType.BRING_UP,
        "bring_up",
        Family.BRING_UP,
        ((P,), (C,), (C,), (S,), (S,), (C,)),
        None,
        False,
        "Failed to bring up",
    ),
    # Flow's leak detection job force-powers-off the one leaking component (no REST trigger).
    Operation.LEAK_DETECTION: OperationSpec(
        TaskType.POWER_CONTROL, "force_power_off", Family.POWER, (*_POWER_OFF, _ALL), None, True, None
    ),
}

# REST power ``state`` values and the operation each creates.
POWER_STATES: dict[str, Operation] = {
    "on": Operation.POWER_ON,
    "off": Operation.POWER_OFF,
    "cycle": Operation.POWER_CYCLE,
    "forceoff": Operation.FORCE_POWER_OFF,
    "forcecycle": Operation.FORCE_POWER_CYCLE,
}

# ``devicetypes.ComponentType.String()`` left-pads to the longest type name ("PowerShelf").
_COMPONENT_TYPE_WIDTH = max(len(kind.value) for kind in (C, S, P, ComponentType.TORSWITCH))


def padded_component_type(kind: ComponentType) -> str:
    """A component type as Flow's ``String()`` writes it: right-aligned in 10 characters."""
    return kind.value.rjust(_COMPONENT_TYPE_WIDTH)


def describe(
    operation: Operation,
    *,
    tray_scoped: bool,
    rack_id: str,
    component_id: str = "",
    component_type: ComponentType | None = None,
) -> str:
    """The task ``description`` exactly as the REST handler or Flow job writes it."""
    if operation is Operation.BRING_UP:
        return f"API bring up Rack {rack_id}"
    if operation is Operation.LEAK_DETECTION:
        kind = padded_component_type(component_type or C)
        return f"Leak detection: force power-off component {component_id} of type {kind}"
    stem = OPERATIONS[operation].api_description
    assert stem is not None
    return f"{stem} {'Tray' if tray_scoped else 'Rack'}"


def schedule_description(name: str, fired_at: datetime) -> str:
    """A task-schedule task: ``"<name> — <RFC 3339 UTC, seconds>"`` with an em dash."""
    return f"{name} \u2014 {fired_at.strftime('%Y-%m-%dT%H:%M:%SZ')}"
