"""Wire format: the world's objects rendered exactly as the NICo REST server writes them.

Field order follows the Go structs (``encoding/json`` writes fields in declaration order);
``omitempty`` fields are left out when empty and the others are written as ``null``. Bodies are
encoded like Echo's ``c.JSON``: compact, ``<``, ``>`` and ``&`` escaped, and a trailing newline.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from exporter.models import ComponentType, format_timestamp
from exporter.simulator.fleet import SiteStatusView
from exporter.simulator.inventory import Rack, Site, Tray
from exporter.simulator.report import Report, Stage, Step
from exporter.simulator.world import Task

JSONObject = dict[str, Any]

SOURCE = "nico"
NO_SKEW = timedelta(0)


def encode(value: Any) -> bytes:
    """Serialise like Go's ``json.Encoder``: compact, HTML-escaped, newline-terminated."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    # Go escapes these inside strings; outside strings JSON never contains them.
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return (text + "\n").encode()


def compact(value: Any) -> str:
    """Compact JSON for headers (``X-Pagination``), no trailing newline."""
    return json.dumps(value, separators=(",", ":"))


def error_body(message: str, data: Any = None, *, source: str = SOURCE) -> JSONObject:
    """``NICoAPIError``: the HTTP status is not repeated in the body."""
    return {"source": source, "message": message, "data": data}


def _ts(value: datetime | None) -> str | None:
    """Task and inventory timestamps: RFC 3339 with Go's RFC3339Nano fraction (microseconds)."""
    return None if value is None else format_timestamp(value, fraction=True)


def _report_ts(value: datetime) -> str:
    """Report timestamps are second precision (Flow truncates them)."""
    return format_timestamp(value)


# --- tasks -------------------------------------------------------------------------------------


def component_type_name(kind: ComponentType, *, nvlswitch_spelling: bool) -> str:
    """Flow writes ``NVSwitch``; the spec says ``NVLSwitch``, which the option reproduces."""
    if kind is ComponentType.NVSWITCH and nvlswitch_spelling:
        return "NVLSwitch"
    return kind.value


def _step(step: Step, nvlswitch_spelling: bool, skew: timedelta) -> JSONObject:
    out: JSONObject = {
        "componentType": component_type_name(step.component_type, nvlswitch_spelling=nvlswitch_spelling),
        "status": step.status.value,
    }
    if step.total:
        out["totalComponents"] = step.total
    if step.started_at is not None:
        out["startedAt"] = _report_ts(step.started_at + skew)
    if step.finished_at is not None:
        out["finishedAt"] = _report_ts(step.finished_at + skew)
    if step.error:
        out["error"] = step.error
    return out


def _stage(stage: Stage, nvlswitch_spelling: bool, skew: timedelta) -> JSONObject:
    out: JSONObject = {
        "number": stage.number,
        "status": stage.status.value,
        "steps": [_step(step, nvlswitch_spelling, skew) for step in stage.steps],
    }
    if stage.started_at is not None:
        out["startedAt"] = _report_ts(stage.started_at + skew)
    if stage.finished_at is not None:
        out["finishedAt"] = _report_ts(stage.finished_at + skew)
    if stage.error:
        out["error"] = stage.error
    return out


def report_json(report: Report, *, nvlswitch_spelling: bool = False, skew: timedelta = NO_SKEW) -> JSONObject:
    """``TaskReportV1``; ``version`` is the integer 1 as the code writes it. ``skew``: the site's
    clock (report times are stamped by the site's Temporal workflow)."""
    out: JSONObject = {
        "version": report.version,
        "stages": [_stage(stage, nvlswitch_spelling, skew) for stage in report.stages],
    }
    if report.error:
        out["error"] = report.error
    return out


def task_json(
    task: Task,
    *,
    include_report: bool,
    nvlswitch_spelling: bool = False,
    with_rule_id: bool = True,
    skew: timedelta = NO_SKEW,
) -> JSONObject:
    """``APITask``: no rack, tray, site or operation; ``started``/``finished`` null while unset.

    ``ruleId`` is always null on 2.0 (Flow never persists the applied rule); 1.6's
    ``APIRackTask`` has no ``ruleId`` and no ``report`` (``with_rule_id=False``,
    ``include_report=False``). ``skew``: how far the site's clocks run ahead of true time (its
    database stamps ``created``, its Flow process the others).
    """
    out: JSONObject = {
        "id": task.id,
        "status": task.status.value,
        "description": task.description,
        "message": task.message,
    }
    if with_rule_id:
        out["ruleId"] = task.rule_id
    out.update(
        {
            "started": _ts(None if task.started is None else task.started + skew),
            "finished": _ts(None if task.finished is None else task.finished + skew),
            "created": _ts(task.created + skew),
            "updated": _ts(None if task.updated is None else task.updated + skew),
        }
    )
    if include_report and task.report is not None:
        out["report"] = report_json(task.report, nvlswitch_spelling=nvlswitch_spelling, skew=skew)
    return out


# Go's zero time.Time as encoding/json writes it.
ZERO_TIME = "0001-01-01T00:00:00Z"


def zero_task_json(*, with_rule_id: bool = True) -> JSONObject:
    """``NewAPITask(nil)``: ``FromProto`` returns at once on a nil task (api/pkg/api/model/task.go:201-204),
    leaving every field its zero value: empty strings, null pointers, zero times, no report."""
    out: JSONObject = {"id": "", "status": "", "description": "", "message": ""}
    if with_rule_id:
        out["ruleId"] = None
    out.update({"started": None, "finished": None, "created": ZERO_TIME, "updated": ZERO_TIME})
    return out


# --- inventory ---------------------------------------------------------------------------------


def site_json(site: Site, view: SiteStatusView | None = None) -> JSONObject:
    """``Site`` with the fields a provider admin sees; stats only on request (not modelled).

    ``view``: the row's status and the status rows written since the start (fleet faults);
    without it the site is Registered, online unless taken down.
    """
    updated = site.updated or site.created
    if view is not None and view.updated is not None:
        updated = max(updated, view.updated)
    registered = site.created + timedelta(minutes=7, seconds=13, microseconds=512_331)
    added = [
        {"status": entry.status, "message": entry.message, "created": _ts(entry.at), "updated": _ts(entry.at)}
        for entry in (view.history if view is not None else ())
    ]
    return {
        "id": site.id,
        "name": site.name,
        "description": f"GB200 NVL72 datacenter {site.name}",
        "org": site.org,
        "infrastructureProviderId": site.infrastructure_provider_id,
        "siteControllerVersion": "2.0.0",
        "siteAgentVersion": "2.0.0",
        "registrationToken": site.registration_token,
        "registrationTokenExpiration": _ts(site.created + timedelta(days=1)),
        "serialConsoleHostname": f"{site.name}.nico.example.com",
        "isSerialConsoleEnabled": False,
        "serialConsoleIdleTimeout": None,
        "serialConsoleMaxSessionLength": None,
        "isSerialConsoleSSHKeysEnabled": False,
        "isOnline": view.is_online if view is not None else not site.down,
        "status": view.status if view is not None else "Registered",
        "statusHistory": [
            *added,
            {
                "status": "Registered",
                "message": "Site has been successfully paired",
                "created": _ts(registered),
                "updated": _ts(registered),
            },
            {
                "status": "Pending",
                "message": "Request received, pending processing",
                "created": _ts(site.created),
                "updated": _ts(site.created),
            },
        ],
        "created": _ts(site.created),
        "updated": _ts(updated),
        "location": {"city": site.city, "state": "CA", "country": "USA"},
        "contact": {"email": f"noc+{site.name}@example.com"},
        "capabilities": {
            "nativeNetworking": True,
            "networkSecurityGroup": True,
            "nvLinkPartition": site.flow,
            "flow": site.flow,
            "imageBasedOperatingSystem": False,
        },
    }


def _bmcs(tray: Tray) -> list[JSONObject]:
    return [
        {"type": bmc.type, "macAddress": bmc.mac_address, "ipAddress": bmc.ip_address} for bmc in tray.bmcs
    ]


def tray_json(tray: Tray) -> JSONObject:
    """``Tray``: ``type`` as the code writes it (``Compute|NVSwitch|PowerShelf``); no ``siteId``."""
    return {
        "id": tray.id,
        "componentId": tray.component_id,
        "type": tray.type.value,
        "name": tray.name,
        "manufacturer": tray.manufacturer,
        "model": tray.model,
        "serialNumber": tray.serial_number,
        "description": tray.description,
        "firmwareVersion": tray.firmware_version,
        "powerState": tray.power_state,
        "operationStatus": tray.operation_status,
        "leakStatus": tray.leak_status,
        "position": {"slotId": tray.slot_id, "trayIdx": tray.tray_idx, "hostId": tray.host_id},
        "bmcs": _bmcs(tray),
        "rackId": tray.rack_id,
    }


def _rack_component(tray: Tray) -> JSONObject:
    """``RackComponent``: a tray flattened (position fields inline)."""
    return {
        "id": tray.id,
        "componentId": tray.component_id,
        "rackId": tray.rack_id,
        "type": tray.type.value,
        "name": tray.name,
        "serialNumber": tray.serial_number,
        "manufacturer": tray.manufacturer,
        "model": tray.model,
        "description": tray.description,
        "firmwareVersion": tray.firmware_version,
        "slotId": tray.slot_id,
        "trayIdx": tray.tray_idx,
        "hostId": tray.host_id,
        "bmcs": _bmcs(tray),
        "powerState": tray.power_state,
        "operationStatus": tray.operation_status,
        "leakStatus": tray.leak_status,
    }


def rack_json(rack: Rack, trays: list[Tray] | None = None) -> JSONObject:
    """``Rack`` (no ``siteId``); ``components`` only when ``trays`` is given (includeComponents)."""
    out: JSONObject = {
        "id": rack.id,
        "name": rack.name,
        "manufacturer": rack.manufacturer,
        "model": rack.model,
        "serialNumber": rack.serial_number,
        "description": rack.description,
        "location": {
            "region": rack.region,
            "datacenter": rack.datacenter,
            "room": rack.room,
            "position": rack.position,
        },
    }
    if trays is not None:
        out["components"] = [_rack_component(tray) for tray in trays]
    return out
