"""Which operation a task runs (NICo's tasks carry no operation field).

The closed set is the contract's ``operation`` label. Evidence is weighed in this order:

1. the operator's own patterns (``operations.extra_patterns``), for descriptions their tooling
   writes;
2. a description written by a REST handler ("API power on Rack", "API firmware update Tray",
   "API bring up Rack <id>"), or Flow's leak-detection job ("Leak detection: force power-off
   component <id> of type <type>"): these name the operation exactly;
3. any other description did not come from a REST handler: the report's stage layout, when it is
   one of Flow's default rules, is preferred;
4. then the operation names Flow writes for its own callers ("FirmwareUpgrade, target version
   1.2", "Restart", "ForcePowerOn", "WarmReset", ...: Task Run children, other Flow clients), and
   words in free text (a task schedule's "<name> — <time>", a caller's own bring-up description);
5. ``other``.

Until a task's report arrives only the description can speak, so a free-text task is classified
again once it has a report (:meth:`Classifier.exact` says whether that is needed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from enum import StrEnum

from exporter.models import ComponentType, TaskReport


class Operation(StrEnum):
    POWER_ON = "power_on"
    POWER_OFF = "power_off"
    POWER_CYCLE = "power_cycle"
    FORCE_POWER_ON = "force_power_on"
    FORCE_POWER_OFF = "force_power_off"
    FORCE_POWER_CYCLE = "force_power_cycle"
    WARM_RESET = "warm_reset"
    COLD_RESET = "cold_reset"
    FIRMWARE_UPDATE = "firmware_update"
    BRING_UP = "bring_up"
    LEAK_DETECTION = "leak_detection"
    OTHER = "other"


OPERATIONS: tuple[str, ...] = tuple(op.value for op in Operation)

# The REST handlers' descriptions (api/pkg/api/handler/util/common/common.go, handler/rack.go).
_REST: tuple[tuple[Operation, re.Pattern[str]], ...] = tuple(
    (op, re.compile(pattern))
    for op, pattern in (
        (Operation.POWER_ON, r"^API power on (Rack|Tray)$"),
        (Operation.POWER_OFF, r"^API power off (Rack|Tray)$"),
        (Operation.POWER_CYCLE, r"^API power cycle (Rack|Tray)$"),
        (Operation.FORCE_POWER_OFF, r"^API force power off (Rack|Tray)$"),
        (Operation.FORCE_POWER_CYCLE, r"^API force power cycle (Rack|Tray)$"),
        (Operation.FIRMWARE_UPDATE, r"^API firmware update (Rack|Tray)$"),
        (Operation.BRING_UP, r"^API (bring up Rack \S+|batch bring up Racks)$"),
    )
)

# Flow's own fixed formats: leak detection (the type is left-padded to 10 characters), and the
# operation names of ``operations.go`` / ``types.go`` that Task Run children and other Flow
# callers are described by ("FirmwareUpgrade, target version 1.2", "PowerOn, forced false").
_LEAK = re.compile(r"^Leak detection: force power-off component \S+ of type +\S+$")
_FLOW_NAMES: dict[str, Operation] = {
    "PowerOn": Operation.POWER_ON,
    "ForcePowerOn": Operation.FORCE_POWER_ON,
    "PowerOff": Operation.POWER_OFF,
    "ForcePowerOff": Operation.FORCE_POWER_OFF,
    "Restart": Operation.POWER_CYCLE,
    "ForceRestart": Operation.FORCE_POWER_CYCLE,
    "WarmReset": Operation.WARM_RESET,
    "ColdReset": Operation.COLD_RESET,
    "FirmwareUpgrade": Operation.FIRMWARE_UPDATE,
    "FirmwareDowngrade": Operation.FIRMWARE_UPDATE,
    "FirmwareRollback": Operation.FIRMWARE_UPDATE,
    "rack bring-up": Operation.BRING_UP,
    "rack ingest": Operation.BRING_UP,
}
_FLOW_NAME = re.compile(
    r"^(?P<name>" + "|".join(re.escape(name) for name in _FLOW_NAMES) + r")"
    r"(, (forced (true|false)|target version.*))?$"
)
# A task schedule's task: "<schedule name> — <RFC 3339 time>" (em dash).
_SCHEDULE = re.compile(r"^(?P<name>.*) \u2014 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

# Words in free text. Order matters: "force power off" must win over "power off".
_WORDS: tuple[tuple[Operation, re.Pattern[str]], ...] = tuple(
    (op, re.compile(pattern, re.IGNORECASE))
    for op, pattern in (
        (Operation.LEAK_DETECTION, r"\bleak[ _-]?detection\b"),
        (Operation.FORCE_POWER_CYCLE, r"\bforce[ _-]?(power[ _-]?cycle|restart)\b"),
        (Operation.FORCE_POWER_OFF, r"\bforce[ _-]?power[ _-]?off\b"),
        (Operation.FORCE_POWER_ON, r"\bforce[ _-]?power[ _-]?on\b"),
        (Operation.WARM_RESET, r"\bwarm[ _-]?reset\b"),
        (Operation.COLD_RESET, r"\bcold[ _-]?reset\b"),
        (Operation.POWER_CYCLE, r"\b(power[ _-]?cycle|restart|reboot)\b"),
        (Operation.POWER_OFF, r"\bpower[ _-]?off\b"),
        (Operation.POWER_ON, r"\bpower[ _-]?on\b"),
        (Operation.FIRMWARE_UPDATE, r"\b(firmware|fw[ _-]?(update|upgrade))\b"),
        (Operation.BRING_UP, r"\b(bring[ _-]?up|ingest)\b"),
    )
)

_C, _S, _P = ComponentType.COMPUTE, ComponentType.NVSWITCH, ComponentType.POWERSHELF
_ALL = frozenset({_C, _S, _P})
# Flow's built-in default rules (resolver_defaults.go), by their stages' component types.
DEFAULT_LAYOUTS: dict[Operation, tuple[tuple[ComponentType, ...], ...]] = {
    Operation.POWER_ON: ((_P,), (_S,), (_C,)),
    Operation.POWER_OFF: ((_C,), (_S,), (_P,)),
    Operation.POWER_CYCLE: ((_C,), (_S,), (_P,), (_P,), (_S,), (_C,)),
    Operation.FORCE_POWER_ON: ((_P,), (_S,), (_C,), tuple(_ALL)),
    Operation.FORCE_POWER_OFF: ((_C,), (_S,), (_P,), tuple(_ALL)),
    Operation.FORCE_POWER_CYCLE: ((_C,), (_S,), (_P,), tuple(_ALL), (_P,), (_S,), (_C,), tuple(_ALL)),
    Operation.FIRMWARE_UPDATE: ((_C,), (_S,)),
    Operation.BRING_UP: ((_P,), (_C,), (_C,), (_S,), (_S,), (_C,)),
}
# Flow's operation codes (rest-api/flow/internal/task/common/operation_codes.go:13-42), as an
# Operation Rule names them, and the operations whose tasks run such a rule: leak detection
# force-powers-off through the force_power_off rule.
RULE_OPERATIONS: dict[str, tuple[Operation, ...]] = {
    "power_on": (Operation.POWER_ON,),
    "force_power_on": (Operation.FORCE_POWER_ON,),
    "power_off": (Operation.POWER_OFF,),
    "force_power_off": (Operation.FORCE_POWER_OFF, Operation.LEAK_DETECTION),
    "restart": (Operation.POWER_CYCLE,),
    "force_restart": (Operation.FORCE_POWER_CYCLE,),
    "warm_reset": (Operation.WARM_RESET,),
    "cold_reset": (Operation.COLD_RESET,),
    "upgrade": (Operation.FIRMWARE_UPDATE,),
    "downgrade": (Operation.FIRMWARE_UPDATE,),
    "rollback": (Operation.FIRMWARE_UPDATE,),
    "bring_up": (Operation.BRING_UP,),
    "ingest": (Operation.BRING_UP,),
}


def builtin_layout(operation: Operation) -> tuple[tuple[ComponentType, ...], ...] | None:
    """The stages of Flow's built-in rule for ``operation`` (None: none known)."""
    if operation is Operation.LEAK_DETECTION:
        operation = Operation.FORCE_POWER_OFF
    return DEFAULT_LAYOUTS.get(operation)


_BY_LAYOUT: dict[tuple[frozenset[ComponentType], ...], Operation] = {
    tuple(frozenset(stage) for stage in layout): op for op, layout in DEFAULT_LAYOUTS.items()
} | {(frozenset({_C, _S}),): Operation.BRING_UP}  # ingest: one stage, Compute and NVSwitch


def layout_operation(report: TaskReport | None) -> Operation | None:
    """The operation whose default rule has this report's stage layout, if any."""
    if report is None or not report.stages:
        return None
    layout = tuple(frozenset(step.component_type for step in stage.steps) for stage in report.stages)
    return _BY_LAYOUT.get(layout)


class Classifier:
    """Description and report layout to one operation of the closed set.

    Args:
        extra_patterns: operation name to regexes, tried before everything else.
    """

    def __init__(self, extra_patterns: Mapping[str, Sequence[str]] | None = None) -> None:
        self._extra: list[tuple[Operation, re.Pattern[str]]] = []
        for name, patterns in (extra_patterns or {}).items():
            op = Operation(name)
            self._extra.extend((op, re.compile(p)) for p in patterns)
        self._cache: dict[str, tuple[Operation | None, bool]] = {}

    def exact(self, description: str) -> bool:
        """Whether the description alone names the operation (no report can change it)."""
        return self._from_description(description)[1]

    def classify(self, description: str, report: TaskReport | None = None) -> Operation:
        """The operation a task runs; ``other`` when nothing identifies it."""
        found, exact = self._from_description(description)
        if exact and found is not None:
            return found
        by_layout = layout_operation(report)
        if by_layout is not None:
            return by_layout
        return found or Operation.OTHER

    def _from_description(self, description: str) -> tuple[Operation | None, bool]:
        """(operation, exact): exact for operator patterns, REST and leak detection; the rest
        yields to a default rule's layout."""
        cached = self._cache.get(description)
        if cached is not None:
            return cached
        result = self._read(description)
        if len(self._cache) < 10_000:
            self._cache[description] = result
        return result

    def _read(self, description: str) -> tuple[Operation | None, bool]:
        for op, pattern in self._extra:
            if pattern.search(description):
                return op, True
        for op, pattern in _REST:
            if pattern.match(description):
                return op, True
        if _LEAK.match(description):
            return Operation.LEAK_DETECTION, True
        flow = _FLOW_NAME.match(description)
        if flow is not None:
            return _FLOW_NAMES[flow.group("name")], False
        schedule = _SCHEDULE.match(description)
        text = schedule.group("name") if schedule else description
        return next((op for op, pattern in _WORDS if pattern.search(text)), None), False


_LEAK_COMPONENT = re.compile(r"component\s+(\S+)\s+of type", re.IGNORECASE)


def leak_component_id(description: str) -> str | None:
    """The ``componentId`` a leak-detection task names ("... force power-off component <id> of type <t>")."""
    match = _LEAK_COMPONENT.search(description)
    return match.group(1) if match else None
