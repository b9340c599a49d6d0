"""The operations NICo runs, their Flow operation codes, default rule layouts and descriptions.

Everything here is transcribed from Flow's built-in default rules
(``resolver_defaults.go``) and the REST handlers' description strings (see
nico-api-notes.md §6.3 and §6.4). The simulator names operations the way the exporter classifies
them (``power_cycle``, ``firmware_update``, ...) so ground truth and metrics line up; the Flow
code (``restart``, ``upgrade``, ...) is kept alongside for fidelity.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from exporter.models import ComponentType

C = ComponentType.COMPUTE
S = ComponentType.NVSWITCH
P = ComponentType.POWERSHELF

# Stage layouts: one tuple per rule stage, one component type per sequence step.
_POWER_ON: tuple[tuple[ComponentType, ...], ...] = ((P,), (S,), (C,))
_POWER_OFF: tuple[tuple[ComponentType, ...], ...] = ((C,), (S,), (P,))
_ALL = (C, S, P)


class Operation(StrEnum):
    """What a task does, named as the exporter classifies it from the description."""

    POWER_ON = "power_on"
    POWER_OFF = "power_off"
    POWER_CYCLE = "power_cycle"
    FORCE_POWER_OFF = "force_power_off"
    FORCE_POWER_CYCLE = "force_power_cycle"
    FIRMWARE_UPDATE = "firmware_update"
    BRING_UP = "bring_up"
    LEAK_DETECTION = "leak_detection"


class Family(StrEnum):
    """Operations grouped by how long their stages take (power is fast, firmware slow)."""

    POWER = "power"
    FIRMWARE = "firmware"
    BRING_UP = "bring_up"


@dataclass(frozen=True)
class OperationSpec:
    """How Flow runs one operation: its code, default rule layout and REST description stem."""

    code: str
    family: Family
    stages: tuple[tuple[ComponentType, ...], ...]
    # "API power on" + " Rack" / " Tray"; None where the operation has no REST trigger.
    api_description: str | None
    tray_scoped_allowed: bool


OPERATIONS: dict[Operation, OperationSpec] = {
    Operation.POWER_ON: OperationSpec("power_on", Family.POWER, _POWER_ON, "API power on", True),
    Operation.POWER_OFF: OperationSpec("power_off", Family.POWER, _POWER_OFF, "API power off", True),
    Operation.POWER_CYCLE: OperationSpec(
        "restart", Family.POWER, _POWER_OFF + _POWER_ON, "API power cycle", True
    ),
    Operation.FORCE_POWER_OFF: OperationSpec(
        "force_power_off", Family.POWER, (*_POWER_OFF, _ALL), "API force power off", True
    ),
    # Stages 4 and 8 run all three types in parallel (notes §6.3).
    Operation.FORCE_POWER_CYCLE: OperationSpec(
        "force_restart",
        Family.POWER,
        (*_POWER_OFF, _ALL, *_POWER_ON, _ALL),
        "API force power cycle",
        True,
    ),
    # Power shelves are excluded from the default firmware rule.
    Operation.FIRMWARE_UPDATE: OperationSpec(
        "upgrade", Family.FIRMWARE, ((C,), (S,)), "API firmware update", True
    ),
    Operation.BRING_UP: OperationSpec(
        "bring_up", Family.BRING_UP, ((P,), (C,), (C,), (S,), (S,), (C,)), None, False
    ),
    # Flow's leak detection job force-powers-off the one leaking component.
    Operation.LEAK_DETECTION: OperationSpec("force_power_off", Family.POWER, (*_POWER_OFF, _ALL), None, True),
}

# REST power ``state`` values and the operation each creates.
POWER_STATES: dict[str, Operation] = {
    "on": Operation.POWER_ON,
    "off": Operation.POWER_OFF,
    "cycle": Operation.POWER_CYCLE,
    "forceoff": Operation.FORCE_POWER_OFF,
    "forcecycle": Operation.FORCE_POWER_CYCLE,
}


def describe(
    operation: Operation,
    *,
    tray_scoped: bool,
    rack_id: str,
    component_id: str = "",
    component_type: str = "",
) -> str:
    """The task ``description`` exactly as the REST handler or Flow job writes it."""
    if operation is Operation.BRING_UP:
        return f"API bring up Rack {rack_id}"
    if operation is Operation.LEAK_DETECTION:
        return f"Leak detection: force power-off component {component_id} of type {component_type}"
    stem = OPERATIONS[operation].api_description
    assert stem is not None
    return f"{stem} {'Tray' if tray_scoped else 'Rack'}"
