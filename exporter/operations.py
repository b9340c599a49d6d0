"""Which operation a task runs, from its description (NICo's tasks carry no operation field).

The closed set is the contract's ``operation`` label. Descriptions are matched as NICo's REST
handlers and Flow write them (nico-api-notes.md section 6.4); operators add their own patterns
(``operations.extra_patterns``) for descriptions their tooling writes, and those are tried
first. A description nothing matches falls back to the report's stage layout when it is one of
Flow's default rules, and otherwise to ``other``.
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
    FORCE_POWER_OFF = "force_power_off"
    FORCE_POWER_CYCLE = "force_power_cycle"
    FIRMWARE_UPDATE = "firmware_update"
    BRING_UP = "bring_up"
    LEAK_DETECTION = "leak_detection"
    OTHER = "other"


OPERATIONS: tuple[str, ...] = tuple(op.value for op in Operation)

# Order matters: "force power off" must win over "power off".
_BUILTIN: tuple[tuple[Operation, re.Pattern[str]], ...] = tuple(
    (op, re.compile(pattern, re.IGNORECASE))
    for op, pattern in (
        (Operation.LEAK_DETECTION, r"^\s*leak detection\b"),
        (Operation.FORCE_POWER_CYCLE, r"\bforce[ _-]?power[ _-]?cycle\b"),
        (Operation.FORCE_POWER_OFF, r"\bforce[ _-]?power[ _-]?off\b"),
        (Operation.POWER_CYCLE, r"\bpower[ _-]?cycle\b"),
        (Operation.POWER_OFF, r"\bpower[ _-]?off\b"),
        (Operation.POWER_ON, r"\bpower[ _-]?on\b"),
        (Operation.FIRMWARE_UPDATE, r"\bfirmware\b"),
        (Operation.BRING_UP, r"\bbring[ _-]?up\b"),
    )
)

_C, _S, _P = ComponentType.COMPUTE, ComponentType.NVSWITCH, ComponentType.POWERSHELF
_ALL = frozenset({_C, _S, _P})
# Flow's built-in default rules (resolver_defaults.go), by their stages' component types.
_DEFAULT_LAYOUTS: dict[tuple[frozenset[ComponentType], ...], Operation] = {
    tuple(frozenset(stage) for stage in layout): op
    for op, layout in (
        (Operation.POWER_ON, ((_P,), (_S,), (_C,))),
        (Operation.POWER_OFF, ((_C,), (_S,), (_P,))),
        (Operation.POWER_CYCLE, ((_C,), (_S,), (_P,), (_P,), (_S,), (_C,))),
        (Operation.FORCE_POWER_OFF, ((_C,), (_S,), (_P,), tuple(_ALL))),
        (Operation.FORCE_POWER_CYCLE, ((_C,), (_S,), (_P,), tuple(_ALL), (_P,), (_S,), (_C,), tuple(_ALL))),
        (Operation.FIRMWARE_UPDATE, ((_C,), (_S,))),
        (Operation.BRING_UP, ((_P,), (_C,), (_C,), (_S,), (_S,), (_C,))),
    )
}


class Classifier:
    """Description (and, failing that, report layout) to one operation of the closed set.

    Args:
        extra_patterns: operation name to regexes, tried before the built-in patterns.
    """

    def __init__(self, extra_patterns: Mapping[str, Sequence[str]] | None = None) -> None:
        extra: list[tuple[Operation, re.Pattern[str]]] = []
        for name, patterns in (extra_patterns or {}).items():
            op = Operation(name)
            extra.extend((op, re.compile(p)) for p in patterns)
        self._patterns = (*extra, *_BUILTIN)
        self._cache: dict[str, Operation | None] = {}

    def classify(self, description: str, report: TaskReport | None = None) -> Operation:
        """The operation a task runs; ``other`` when nothing identifies it."""
        if description in self._cache:
            found = self._cache[description]
        else:
            found = next((op for op, pattern in self._patterns if pattern.search(description)), None)
            if len(self._cache) < 10_000:
                self._cache[description] = found
        if found is not None:
            return found
        if report is not None and report.stages:
            layout = tuple(frozenset(step.component_type for step in stage.steps) for stage in report.stages)
            return _DEFAULT_LAYOUTS.get(layout, Operation.OTHER)
        return Operation.OTHER


def is_tray_scoped(description: str) -> bool:
    """Whether a task came from a tray endpoint ("API power on Tray"), so targets only some trays."""
    return description.rstrip().lower().endswith(" tray")


_LEAK_COMPONENT = re.compile(r"component\s+(\S+)\s+of type", re.IGNORECASE)


def leak_component_id(description: str) -> str | None:
    """The ``componentId`` a leak-detection task names ("... force power-off component <id> of type <t>")."""
    match = _LEAK_COMPONENT.search(description)
    return match.group(1) if match else None
