"""Pydantic models of NICo's REST payloads: the API boundary, shared with the simulator.

Tolerant where the real server deviates from its spec (see docs/api-notes.md):

* ``report.version`` arrives as the integer ``1`` (code) or the string ``"1"`` (older spec text);
* ``NVLSwitch`` (spec) and ``NVSwitch`` (code) are one component type, reported as ``NVSwitch``;
* a status value we do not know becomes ``Unknown`` (task) or ``unknown`` (stage, step) and is
  noted, not fatal;
* optional fields may be missing or ``null``; timestamps come with or without fractions, and
  Go's zero time means "not set";
* a report of another version is dropped (the server itself omits reports that are not v1).

Strict where the data is unusable: a task, rack, tray or site without a valid UUID ``id`` raises
:class:`exporter.errors.BadPayload` naming the field and the endpoint.

Every tolerated deviation is appended to a :class:`ParseNotes` passed in the validation context,
so the caller can count it (``nico_exporter_parse_errors_total{reason}``) without failing the poll.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass

from exporter.errors import BadPayload


class TaskStatus(StrEnum):
    """``Task.status``; ``Succeeded``, ``Failed`` and ``Terminated`` are terminal."""

    UNKNOWN = "Unknown"
    PENDING = "Pending"
    WAITING = "Waiting"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    TERMINATED = "Terminated"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def is_active(self) -> bool:
        return self in ACTIVE_STATUSES


TERMINAL_STATUSES = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.TERMINATED})
ACTIVE_STATUSES = frozenset({TaskStatus.PENDING, TaskStatus.WAITING, TaskStatus.RUNNING})


class TaskRunStatus(StrEnum):
    """``APITaskRun.status`` (``rest-api/api/pkg/api/model/taskrun.go``, NICo main)."""

    UNKNOWN = "Unknown"
    PENDING = "Pending"
    RUNNING = "Running"
    PAUSED = "Paused"
    COMPLETED = "Completed"
    CANCELLED = "Cancelled"
    FAILED = "Failed"
    COMPLETED_WITH_FAILURES = "CompletedWithFailures"

    @property
    def is_terminal(self) -> bool:
        return self in RUN_TERMINAL_STATUSES


RUN_TERMINAL_STATUSES = frozenset(
    {
        TaskRunStatus.COMPLETED,
        TaskRunStatus.CANCELLED,
        TaskRunStatus.FAILED,
        TaskRunStatus.COMPLETED_WITH_FAILURES,
    }
)


class TaskRunStatusReason(StrEnum):
    """``APITaskRun.statusReason``: why a run is paused or ended ("None" when there is no reason)."""

    UNKNOWN = "Unknown"
    NONE = "None"
    OPERATOR_PAUSED = "OperatorPaused"
    PHASE_GATE = "PhaseGate"
    SAFETY_GATE = "SafetyGate"
    CONFLICT_RETRY_TIMEOUT = "ConflictRetryTimeout"


class TargetStatus(StrEnum):
    """``APITaskRunTarget.status``: one rack's part in a run."""

    UNKNOWN = "Unknown"
    PENDING = "Pending"
    BLOCKED = "Blocked"
    SUBMITTED = "Submitted"
    CLAIMED = "Claimed"
    COMPLETED = "Completed"
    FAILED = "Failed"
    TERMINATED = "Terminated"
    SKIPPED = "Skipped"


class ReportStatus(StrEnum):
    """``TaskReportV1Status`` of a stage or step (lowercase on the wire)."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNKNOWN = "unknown"

    @property
    def is_final(self) -> bool:
        return self in (ReportStatus.COMPLETED, ReportStatus.FAILED, ReportStatus.SKIPPED)


class ComponentType(StrEnum):
    """Component types as Flow writes them (``devicetypes.ComponentTypeToString``)."""

    COMPUTE = "Compute"
    NVSWITCH = "NVSwitch"
    POWERSHELF = "PowerShelf"
    TORSWITCH = "ToRSwitch"
    UMS = "UMS"
    CDU = "CDU"
    UNKNOWN = "Unknown"


# Lower-cased spellings seen on the wire, mapped to the one name we report. Covers Flow's
# names, the spec's ``NVLSwitch`` and the spec's lowercase tray enum (``compute|switch|powershelf``),
# and rack components' ``TORSwitch`` / ``ComponentTypeCompute`` style.
_COMPONENT_ALIASES: dict[str, ComponentType] = {
    "compute": ComponentType.COMPUTE,
    "nvswitch": ComponentType.NVSWITCH,
    "nvlswitch": ComponentType.NVSWITCH,
    "switch": ComponentType.NVSWITCH,
    "powershelf": ComponentType.POWERSHELF,
    "torswitch": ComponentType.TORSWITCH,
    "ums": ComponentType.UMS,
    "cdu": ComponentType.CDU,
    "unknown": ComponentType.UNKNOWN,
}

# Trays a GB200 NVL72 rack carries, by type: 18 compute, 9 NVSwitch, 8 power shelves.
NVL72_TRAYS: dict[ComponentType, int] = {
    ComponentType.COMPUTE: 18,
    ComponentType.NVSWITCH: 9,
    ComponentType.POWERSHELF: 8,
}


@dataclass
class ParseNotes:
    """Deviations tolerated while parsing one response: ``(reason, detail)`` pairs.

    Passed as the pydantic validation context; the client turns each into a parse-error count.
    """

    items: list[tuple[str, str]] = field(default_factory=list)

    def note(self, reason: str, detail: str) -> None:
        self.items.append((reason, detail))


def _notes(info: ValidationInfo) -> ParseNotes | None:
    ctx = info.context
    if isinstance(ctx, ParseNotes):
        return ctx
    if isinstance(ctx, dict):
        notes = ctx.get("notes")
        if isinstance(notes, ParseNotes):
            return notes
    return None


def normalize_component_type(raw: str) -> ComponentType | None:
    """Map any wire spelling of a component type to its one name; ``None`` if unknown."""
    key = raw.strip().lower()
    if key.startswith("componenttype"):
        key = key[len("componenttype") :]
    return _COMPONENT_ALIASES.get(key)


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def canonical_uuid(value: Any) -> str:
    """Return ``value`` as a lowercase hyphenated UUID string, or raise ``ValueError``."""
    if isinstance(value, str):
        # Fast path: what NICo sends. Everything else goes through uuid.UUID's parser.
        if len(value) == 36 and _CANONICAL_UUID.fullmatch(value):
            return value
        return str(uuid.UUID(value))
    if isinstance(value, uuid.UUID):
        return str(value)
    raise ValueError("must be a UUID string")


def _timestamp(value: Any, handler: ValidatorFunctionWrapHandler) -> datetime | None:
    """Empty strings and Go's zero time mean "not set"; naive times are UTC; all become UTC."""
    if value is None or value == "":
        return None
    parsed: datetime = handler(value)
    if parsed.year == 1:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    if parsed.utcoffset():
        return parsed.astimezone(UTC)
    return parsed


Uuid = Annotated[str, BeforeValidator(canonical_uuid)]
Timestamp = Annotated[datetime | None, WrapValidator(_timestamp)]


# Unknown fields are ignored: the server adds fields between releases.
_CONFIG = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class _Model(BaseModel):
    model_config = _CONFIG


P = TypeVar("P", bound="_Payload")
_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def _adapter(model: type) -> TypeAdapter[Any]:
    adapter = _ADAPTERS.get(model)
    if adapter is None:
        adapter = _ADAPTERS[model] = TypeAdapter(model)
    return adapter


class _Payload:
    """A frozen, slotted payload: what the exporter keeps per tracked task (tasks and reports).

    Pydantic dataclasses with ``__slots__`` and no per-instance field set weigh a sixth of a
    ``BaseModel`` (benchmarks/render.py measures the bytes per tracked task); they validate the
    same way, through a ``TypeAdapter``.
    """

    __slots__ = ()

    @classmethod
    def parse(cls: type[P], data: Any, notes: ParseNotes | None = None) -> P:
        """Validate ``data`` (deviations go to ``notes``); raises pydantic's ``ValidationError``."""
        result: P = _adapter(cls).validate_python(data, context=notes)
        return result

    def to_json(self) -> str:
        """The payload in its API form (field aliases), which :meth:`parse` reads back."""
        return _adapter(type(self)).dump_json(self, by_alias=True).decode()


_PAYLOAD_CONFIG = ConfigDict(extra="ignore", populate_by_name=True)


_BY_LOWER: dict[type[StrEnum], dict[str, StrEnum]] = {
    enum: {member.value.lower(): member for member in enum}
    for enum in (TaskStatus, ReportStatus, TaskRunStatus, TaskRunStatusReason, TargetStatus)
}


def _status_value(enum: type[StrEnum], unknown: StrEnum, value: Any, info: ValidationInfo) -> Any:
    if value is None:
        return unknown
    if isinstance(value, str):
        member = _BY_LOWER[enum].get(value) or _BY_LOWER[enum].get(value.lower())
        if member is not None:
            return member
    notes = _notes(info)
    if notes is not None:
        notes.note("unknown_status", f"{info.field_name}={value!r}")
    return unknown


def _component_value(value: Any, info: ValidationInfo, *, null_is_unknown: bool = False) -> ComponentType:
    if value is None and null_is_unknown:
        return ComponentType.UNKNOWN
    normalized = None if value is None else normalize_component_type(str(value))
    if normalized is None:
        notes = _notes(info)
        if notes is not None:
            notes.note("unknown_component_type", repr(value))
        return ComponentType.UNKNOWN
    return normalized


def _tolerant_status(enum: type[StrEnum], unknown: StrEnum) -> BeforeValidator:
    def validate(value: Any, info: ValidationInfo) -> Any:
        return _status_value(enum, unknown, value, info)

    return BeforeValidator(validate)


def _none_as(default: Any) -> BeforeValidator:
    return BeforeValidator(lambda value: default if value is None else value)


TaskStatusField = Annotated[TaskStatus, _tolerant_status(TaskStatus, TaskStatus.UNKNOWN)]
ReportStatusField = Annotated[ReportStatus, _tolerant_status(ReportStatus, ReportStatus.UNKNOWN)]
# In a report step a missing component type is a deviation; a tray without a type is just unknown.
StepComponent = Annotated[ComponentType, BeforeValidator(_component_value)]
TrayType = Annotated[
    ComponentType, BeforeValidator(lambda v, info: _component_value(v, info, null_is_unknown=True))
]


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_PAYLOAD_CONFIG)
class ReportStep(_Payload):
    """``TaskReportV1Step``: one rule sequence step (one component type) inside a stage."""

    component_type: StepComponent = Field(alias="componentType")
    status: ReportStatusField
    total_components: Annotated[int, _none_as(0)] = Field(default=0, alias="totalComponents")
    started_at: Timestamp = Field(default=None, alias="startedAt")
    finished_at: Timestamp = Field(default=None, alias="finishedAt")
    error: str | None = None


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_PAYLOAD_CONFIG)
class ReportStage(_Payload):
    """``TaskReportV1Stage``: one rule stage, its steps run in parallel."""

    number: int = Field(ge=1)
    status: ReportStatusField
    steps: Annotated[tuple[ReportStep, ...], _none_as(())] = ()
    started_at: Timestamp = Field(default=None, alias="startedAt")
    finished_at: Timestamp = Field(default=None, alias="finishedAt")
    error: str | None = None


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_PAYLOAD_CONFIG)
class TaskReport(_Payload):
    """``TaskReportV1``: the stage-by-stage execution report of a task."""

    # The code writes the integer 1; older spec text says the string "1" (pydantic takes both).
    version: int
    stages: Annotated[tuple[ReportStage, ...], _none_as(())] = ()
    error: str | None = None


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_PAYLOAD_CONFIG)
class Task(_Payload):
    """A NICo task as the REST API returns it (no rack, tray, site or operation fields)."""

    id: Uuid
    status: TaskStatusField = TaskStatus.UNKNOWN
    description: Annotated[str, _none_as("")] = ""
    message: str | None = None
    rule_id: str | None = Field(default=None, alias="ruleId")
    created: Timestamp = None
    started: Timestamp = None
    updated: Timestamp = None
    finished: Timestamp = None
    report: TaskReport | None = None

    @field_validator("rule_id", mode="before")
    @classmethod
    def _rule_id(cls, value: Any, info: ValidationInfo) -> Any:
        if value in (None, ""):
            return None
        try:
            return canonical_uuid(value)
        except ValueError:
            notes = _notes(info)
            if notes is not None:
                notes.note("invalid_field", f"ruleId={value!r}")
            return None

    @field_validator("report", mode="wrap")
    @classmethod
    def _report(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        """Keep a v1 report; drop (and note) one we cannot read rather than the whole task."""
        if value is None or isinstance(value, TaskReport):
            return value
        notes = _notes(info)
        if not isinstance(value, dict):
            if notes is not None:
                notes.note("invalid_report", f"report is {type(value).__name__}")
            return None
        version = value.get("version")
        if str(version).strip() != "1":
            if notes is not None:
                notes.note("unsupported_report_version", f"version={version!r}")
            return None
        try:
            return handler(value)
        except ValidationError as exc:
            if notes is not None:
                notes.note("invalid_report", _first_error(exc))
            return None

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_PAYLOAD_CONFIG)
class SiteCapabilities(_Payload):
    flow: bool = False


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_PAYLOAD_CONFIG)
class Site(_Payload):
    """A NICo site; only those with ``capabilities.flow`` serve tasks."""

    id: Uuid
    name: str = ""
    org: str | None = None
    is_online: bool | None = Field(default=None, alias="isOnline")
    status: str | None = None
    capabilities: SiteCapabilities | None = None

    @property
    def flow_enabled(self) -> bool:
        return self.capabilities is not None and self.capabilities.flow


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_PAYLOAD_CONFIG)
class Rack(_Payload):
    """A rack. The API gives it no ``siteId``: the caller knows the site from its query."""

    id: Uuid
    name: str = ""
    manufacturer: str | None = None
    model: str | None = None
    serial_number: str | None = Field(default=None, alias="serialNumber")


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_PAYLOAD_CONFIG)
class TrayPosition(_Payload):
    slot_id: int | None = Field(default=None, alias="slotId")
    tray_idx: int | None = Field(default=None, alias="trayIdx")
    host_id: int | None = Field(default=None, alias="hostId")


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_PAYLOAD_CONFIG)
class Tray(_Payload):
    """A tray (compute tray, NVSwitch tray, power shelf) of a rack."""

    id: Uuid
    rack_id: str | None = Field(default=None, alias="rackId")
    component_id: str | None = Field(default=None, alias="componentId")
    type: TrayType = ComponentType.UNKNOWN
    name: str = ""
    position: TrayPosition | None = None

    @field_validator("rack_id", mode="before")
    @classmethod
    def _rack_id(cls, value: Any) -> Any:
        return None if value in (None, "") else canonical_uuid(value)


RunStatusField = Annotated[TaskRunStatus, _tolerant_status(TaskRunStatus, TaskRunStatus.UNKNOWN)]
RunReasonField = Annotated[
    TaskRunStatusReason, _tolerant_status(TaskRunStatusReason, TaskRunStatusReason.UNKNOWN)
]
TargetStatusField = Annotated[TargetStatus, _tolerant_status(TargetStatus, TargetStatus.UNKNOWN)]
Count = Annotated[int, _none_as(0)]


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_PAYLOAD_CONFIG)
class OutcomeCounts(_Payload):
    """``APITaskRunOutcomeCounts``: how a phase's (or the run's) targets ended so far."""

    completed: Count = 0
    failed: Count = 0
    terminated: Count = 0
    skipped: Count = 0


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_PAYLOAD_CONFIG)
class PhaseStats(_Payload):
    """``APITaskRunPhaseStats``; ``phaseIndex`` counts from 0."""

    phase_index: Count = Field(default=0, alias="phaseIndex")
    selected_targets: Count = Field(default=0, alias="selectedTargets")
    outcome_counts: OutcomeCounts = Field(default_factory=OutcomeCounts, alias="outcomeCounts")


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_PAYLOAD_CONFIG)
class TaskRunStats(_Payload):
    """``APITaskRunStats``: only on ``GET /task/run/{id}?includeStats=true``."""

    current_phase: PhaseStats = Field(default_factory=PhaseStats, alias="currentPhase")
    cumulative_phase: PhaseStats = Field(default_factory=PhaseStats, alias="cumulativePhase")


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_PAYLOAD_CONFIG)
class TaskRun(_Payload):
    """``APITaskRun``: a phased operation over many racks (NICo main; v2.0 has no Task Runs)."""

    id: Uuid
    name: Annotated[str, _none_as("")] = ""
    description: Annotated[str, _none_as("")] = ""
    operation_type: Annotated[str, _none_as("")] = Field(default="", alias="operationType")
    operation_code: Annotated[str, _none_as("")] = Field(default="", alias="operationCode")
    status: RunStatusField = TaskRunStatus.UNKNOWN
    status_reason: RunReasonField = Field(default=TaskRunStatusReason.NONE, alias="statusReason")
    status_message: Annotated[str, _none_as("")] = Field(default="", alias="statusMessage")
    total_phases: Count = Field(default=0, alias="totalPhases")
    created: Timestamp = None
    updated: Timestamp = None
    started: Timestamp = None
    finished: Timestamp = None
    stats: TaskRunStats | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_PAYLOAD_CONFIG)
class TaskRunTarget(_Payload):
    """``APITaskRunTarget``: one rack of a run, and the task submitted for it (``taskId``)."""

    id: Uuid
    run_id: str = Field(default="", alias="runId")
    rack_id: str = Field(default="", alias="rackId")
    sequence_index: Count = Field(default=0, alias="sequenceIndex")
    phase_index: Count = Field(default=0, alias="phaseIndex")
    task_id: str | None = Field(default=None, alias="taskId")
    status: TargetStatusField = TargetStatus.UNKNOWN
    message: Annotated[str, _none_as("")] = ""
    created: Timestamp = None
    updated: Timestamp = None

    @field_validator("task_id", mode="before")
    @classmethod
    def _task_id(cls, value: Any) -> Any:
        return None if value in (None, "") else canonical_uuid(value)

    @field_validator("rack_id", "run_id", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        # Go writes "" for an id Flow left unset (model/taskrun.go:352-357): keep the target.
        return "" if value in (None, "") else canonical_uuid(value)


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_PAYLOAD_CONFIG)
class RuleStep(_Payload):
    """``APITaskRuleSequenceStep``: one component type's step, in a stage of the rule."""

    component_type: StepComponent = Field(alias="componentType")
    stage: int = 1


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_PAYLOAD_CONFIG)
class RuleDefinition(_Payload):
    version: Annotated[str, _none_as("")] = ""
    steps: Annotated[tuple[RuleStep, ...], _none_as(())] = ()


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_PAYLOAD_CONFIG)
class OperationRule(_Payload):
    """``APITaskRule`` (``GET /task/rule``): a named stage layout for an operation."""

    id: Uuid
    name: Annotated[str, _none_as("")] = ""
    description: Annotated[str, _none_as("")] = ""
    operation_type: Annotated[str, _none_as("")] = Field(default="", alias="operationType")
    operation_code: Annotated[str, _none_as("")] = Field(default="", alias="operationCode")
    rule_definition: RuleDefinition = Field(default_factory=RuleDefinition, alias="ruleDefinition")
    is_default: bool = Field(default=False, alias="isDefault")

    def layout(self) -> tuple[tuple[int, tuple[ComponentType, ...]], ...]:
        """The rule's stages: (stage number, its component types sorted), in stage order."""
        stages: dict[int, set[ComponentType]] = {}
        for step in self.rule_definition.steps:
            stages.setdefault(step.stage, set()).add(step.component_type)
        return tuple((n, tuple(sorted(kinds))) for n, kinds in sorted(stages.items()))


class APIError(_Model):
    """NICo's error body: ``{"source": "nico", "message": ..., "data": ...}``."""

    source: str | None = None
    message: str = ""
    data: Any = None


class Pagination(_Model):
    """The ``X-Pagination`` response header (compact JSON; ``orderBy`` always present)."""

    page_number: int = Field(alias="pageNumber", ge=1)
    page_size: int = Field(alias="pageSize", ge=1)
    total: int = Field(ge=0)
    order_by: str | None = Field(default=None, alias="orderBy")

    @model_validator(mode="before")
    @classmethod
    def _from_header(cls, value: Any) -> Any:
        if isinstance(value, (str, bytes)):
            return json.loads(value)
        return value


class LoginResponse(_Model):
    """``APITokenResponse`` of ``POST /auth/login`` and ``POST /auth/refresh``."""

    access_token: str = Field(alias="accessToken", min_length=1)
    refresh_token: str | None = Field(default=None, alias="refreshToken")
    expires_in: float = Field(default=300.0, alias="expiresIn")
    token_type: str | None = Field(default=None, alias="tokenType")


M = TypeVar("M", bound=BaseModel | _Payload)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err["loc"]) or "<root>"
    return f"{loc}: {err['msg']}"


def parse_item(model: type[M], item: Any, *, endpoint: str, notes: ParseNotes | None = None) -> M:
    """Validate one object; on failure raise :class:`BadPayload` naming field and endpoint."""
    try:
        result: M = _adapter(model).validate_python(item, context=notes)
        return result
    except ValidationError as exc:
        ident = item.get("id") if isinstance(item, dict) else None
        raise BadPayload(
            f"invalid {model.__name__} from {endpoint}: {_first_error(exc)}"
            + (f" (id={ident!r})" if ident is not None else ""),
            endpoint=endpoint,
            reason=f"invalid_{model.__name__.lower()}",
            field=_first_error(exc).split(":", 1)[0],
        ) from None


def parse_each(
    model: type[M], items: Iterable[Any], *, endpoint: str, notes: ParseNotes
) -> Iterator[M | BadPayload]:
    """Validate items one by one, yielding each model or the error that rejected it, in order.

    A rejected item's own deviations are not noted: the rejection already is.
    """
    for item in items:
        item_notes = ParseNotes()
        try:
            parsed = parse_item(model, item, endpoint=endpoint, notes=item_notes)
        except BadPayload as exc:
            yield exc
            continue
        notes.items.extend(item_notes.items)
        yield parsed


def parse_list(
    model: type[M], body: Any, *, endpoint: str, notes: ParseNotes
) -> tuple[list[M], list[BadPayload]]:
    """Validate a bare JSON array item by item: good items are kept, bad ones returned as errors.

    One malformed task must not hide the rest of the rack's tasks.
    """
    if not isinstance(body, list):
        raise BadPayload(
            f"expected a JSON array from {endpoint}, got {type(body).__name__}",
            endpoint=endpoint,
            reason="not_a_list",
        )
    good: list[M] = []
    bad: list[BadPayload] = []
    for result in parse_each(model, body, endpoint=endpoint, notes=notes):
        if isinstance(result, BadPayload):
            bad.append(result)
        else:
            good.append(result)
    return good, bad


def dedupe_by_id(items: Iterable[M], seen: set[str]) -> list[M]:
    """Items whose ``id`` is not in ``seen`` (which is updated): lists repeat ids across pages."""
    out: list[M] = []
    for item in items:
        ident = getattr(item, "id", None)
        if isinstance(ident, str):
            if ident in seen:
                continue
            seen.add(ident)
        out.append(item)
    return out


def format_timestamp(value: datetime, *, fraction: bool = False) -> str:
    """RFC 3339 in UTC with ``Z``, as Go marshals ``time.Time`` (fractions only when asked)."""
    value = value.astimezone(UTC)
    if fraction and value.microsecond:
        return value.strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0") + "Z"
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


__all__: Sequence[str] = (
    "ACTIVE_STATUSES",
    "NVL72_TRAYS",
    "TERMINAL_STATUSES",
    "APIError",
    "ComponentType",
    "LoginResponse",
    "Pagination",
    "ParseNotes",
    "Rack",
    "ReportStage",
    "ReportStatus",
    "ReportStep",
    "Site",
    "Task",
    "TaskReport",
    "TaskStatus",
    "Tray",
    "canonical_uuid",
    "dedupe_by_id",
    "format_timestamp",
    "normalize_component_type",
    "parse_each",
    "parse_item",
    "parse_list",
)
