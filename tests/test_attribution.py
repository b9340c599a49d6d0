"""Tray attribution planning, and rack sharding (which replica owns which rack).

Both answer "which targets, for the fewest calls"; sharding has no module of tests of its own.
"""

from __future__ import annotations

from typing import Any

from exporter.attribution import TargetTray, charged_trays, failed_types, plan
from exporter.models import NVL72_TRAYS, ComponentType, Task, Tray
from tests.builders import RACK

C, S, P = ComponentType.COMPUTE, ComponentType.NVSWITCH, ComponentType.POWERSHELF


def nvl72() -> list[Tray]:
    """A GB200 NVL72 rack's 35 trays; tray ``n`` has component id ``ext-<n>``."""
    trays: list[Tray] = []
    for kind, count in NVL72_TRAYS.items():
        for _ in range(count):
            n = len(trays) + 1
            trays.append(
                Tray.parse(
                    {
                        "id": f"00000000-0000-4000-9000-{n:012d}",
                        "rackId": RACK,
                        "componentId": f"ext-{n}",
                        "type": kind.value,
                    }
                )
            )
    return trays


def ids(trays: list[Tray], kind: ComponentType) -> frozenset[str]:
    return frozenset(t.id for t in trays if t.type is kind)


def step(component: str, total: int) -> dict[str, Any]:
    return {"componentType": component, "status": "pending", "totalComponents": total}


def task(description: str, *stages: list[dict[str, Any]], report: bool = True) -> Task:
    """A running task; stage ``n`` holds the ``n``-th list of steps."""
    data: dict[str, Any] = {
        "id": "00000000-0000-4000-8000-000000000001",
        "status": "Running",
        "description": description,
    }
    if report:
        data["report"] = {
            "version": 1,
            "stages": [
                {"number": n, "status": "pending", "steps": steps} for n, steps in enumerate(stages, start=1)
            ],
        }
    return Task.parse(data)


def test_rack_wide_power_on_knows_all_35_trays_without_a_scan() -> None:
    trays = nvl72()
    p = plan(
        task("API power on Rack", [step("PowerShelf", 8)], [step("NVSwitch", 9)], [step("Compute", 18)]),
        trays,
    )
    assert p is not None
    assert p.known == frozenset(t.id for t in trays) and len(p.known) == 35
    assert p.scan == {} and p.settled


def test_tray_scoped_task_scans_only_the_named_types() -> None:
    p = plan(task("API power cycle Tray", [step("Compute", 2)], [step("NVSwitch", 1)]), nvl72())
    assert p is not None
    assert p.known == frozenset()
    assert p.scan == {C: 2, S: 1}
    assert not p.settled


def test_rack_firmware_update_targets_compute_and_nvswitch_not_power_shelves() -> None:
    trays = nvl72()
    p = plan(task("API firmware update Rack", [step("Compute", 18)], [step("NVSwitch", 9)]), trays)
    assert p is not None and p.settled
    assert p.known == ids(trays, C) | ids(trays, S)
    assert not p.known & ids(trays, P)


def test_leak_detection_names_its_tray_without_a_report() -> None:
    trays = nvl72()
    leak = task("Leak detection: force power-off component ext-3 of type Compute", report=False)
    assert plan(leak, trays) == plan(leak, iter(trays))
    p = plan(leak, trays)
    assert p is not None and p.settled
    assert p.known == {trays[2].id}


def test_leak_detection_of_an_unknown_component_falls_back_to_the_report() -> None:
    leak = "Leak detection: force power-off component nowhere of type Compute"
    assert plan(task(leak, report=False), nvl72()) is None
    p = plan(task(leak, [step("Compute", 1)]), nvl72())
    assert p is not None and p.scan == {C: 1}


def test_no_report_means_wait() -> None:
    assert plan(task("API power on Tray", report=False), nvl72()) is None


def test_skipped_steps_are_ignored() -> None:
    trays = nvl72()
    p = plan(task("API power on Rack", [step("PowerShelf", 0)], [step("Compute", 18)]), trays)
    assert p is not None
    assert p.known == ids(trays, C) and p.scan == {}


def test_a_type_in_several_stages_counts_once_at_its_largest() -> None:
    p = plan(
        task("API power cycle Tray", [step("Compute", 2)], [step("NVSwitch", 1)], [step("Compute", 3)]),
        nvl72(),
    )
    assert p is not None and p.scan == {C: 3, S: 1}


def test_a_short_inventory_takes_every_tray_of_the_type() -> None:
    trays = [t for t in nvl72() if t.type is C][:4]
    p = plan(task("API power on Tray", [step("Compute", 6)]), trays)
    assert p is not None and p.known == frozenset(t.id for t in trays) and p.settled


# -- which trays a failure is charged to -----------------------------------------------------------
#
# Error texts are built the way NICo builds them (release/v2.0, rest-api/flow/internal/task/...):
# the component manager's cause, the step workflow's phase, the Temporal SDK's activity and child
# workflow errors (the shape issue 21 quotes from a real server), "component type T failed: "
# (executor/temporalworkflow/workflow/helpers.go:342) in the report, "stage N failed: " in front of
# that in the task's message (helpers.go:431), each cut to 512 bytes (report/report.go:306-315,
# message/message.go:51-56) and carried as JSON (invalid UTF-8 becomes U+FFFD).

FAILED_TASK = "00000000-0000-4000-8000-000000000042"


def activity_error(activity: str, cause: str, identity: str = "1@flow-worker-0@") -> str:
    """A main operation's activity failing (workflow/genericcomponentstep.go:68) as the SDK reports it."""
    return (
        f"main operation failed: activity error (type: {activity}, scheduledEventID: 5, "
        f"startedEventID: 6, identity: {identity}): {cause} (type: wrapError, retryable: true)"
    )


def step_error(kind: str, inner: str) -> str:
    """A stage's error: its failed child workflow, attributed to its component type (helpers.go:342)."""
    return (
        f"component type {kind} failed: child workflow execution error (type: GenericComponentStepWorkflow, "
        f"workflowID: component-step-{FAILED_TASK}-{kind}, runID: 5f0c6d1e-3b7a-4c2e-9d8f-1a2b3c4d5e6f, "
        f"initiatedEventID: 12, startedEventID: 13): {inner}"
    )


def cut(text: str) -> str:
    """Go's ``msg[:512]`` (bytes), as the JSON payload carries it."""
    return text.encode()[:512].decode("utf-8", "replace")


def failed_task(
    layout: list[list[str]],
    failed_stage: int | None,
    error: str | None,
    *,
    description: str = "API power cycle Rack",
    totals: dict[str, int] | None = None,
) -> Task:
    """A Failed task whose rule has ``layout`` (component types per stage), failed at ``failed_stage``
    with ``error`` the way the Tracker writes it (report.go:257-291: every running step of the stage
    failed with the stage's error), or without a report when ``failed_stage`` is None."""
    data: dict[str, Any] = {"id": FAILED_TASK, "status": "Failed", "description": description}
    if failed_stage is None:
        data["message"] = error
        return Task.parse(data)
    counts = totals or {k.value: n for k, n in NVL72_TRAYS.items()}
    stages = []
    for number, kinds in enumerate(layout, start=1):
        status = "completed" if number < failed_stage else "failed" if number == failed_stage else "pending"
        fields = {"error": cut(error)} if status == "failed" and error else {}
        steps = [
            {"componentType": k, "status": status, "totalComponents": counts.get(k, 0), **fields}
            for k in kinds
        ]
        stages.append({"number": number, "status": status, "steps": steps, **fields})
    data["report"] = {"version": 1, "stages": stages, **({"error": cut(error)} if error else {})}
    data["message"] = cut(f"stage {failed_stage} failed: {error}") if error else "Failed"
    return Task.parse(data)


def targets(trays: list[Tray]) -> list[TargetTray]:
    return [TargetTray(t.id, t.type.value, t.component_id) for t in trays]


def numbered(trays: list[Tray], *numbers: int) -> frozenset[str]:
    """Trays by their number ``n`` (component id ``ext-<n>``)."""
    return frozenset(trays[n - 1].id for n in numbers)


POWER_CYCLE = [["Compute"], ["NVSwitch"], ["PowerShelf"], ["PowerShelf"], ["NVSwitch"], ["Compute"]]
POWER_STATUS_TIMEOUT = "timeout after 5m0s waiting for power status off (attempts: 11)"  # actions.go:394-399
NVSWITCH_TIMEOUT = step_error(
    "NVSwitch", "post-operation failed: action 0 (VerifyPowerStatus) failed: " + POWER_STATUS_TIMEOUT
)


def test_a_rack_wide_task_failing_on_an_nvswitch_step_is_charged_to_the_nine_nvswitch_trays() -> None:
    trays = nvl72()
    charged = charged_trays(failed_task(POWER_CYCLE, 2, NVSWITCH_TIMEOUT), targets(trays))
    assert charged == ids(trays, S) and len(charged) == 9


def test_an_error_naming_a_component_is_charged_to_that_tray_alone() -> None:
    trays = nvl72()
    # componentmanager/nvswitch/nico/nico.go:257; ext-2 (a compute tray) is a prefix of ext-20.
    cause = "power control failed for ext-20: BMC did not respond within 300s"
    task = failed_task(POWER_CYCLE, 2, step_error("NVSwitch", activity_error("PowerControl", cause)))
    assert charged_trays(task, targets(trays)) == numbered(trays, 20)


def test_a_firmware_update_naming_two_components_is_charged_to_those_two() -> None:
    trays = nvl72()
    # workflow/actions.go:280: Go prints the []string as "[a b]".
    cause = "firmware update failed for components: [ext-3 ext-7]"
    task = failed_task(
        [["Compute"], ["NVSwitch"]], 1, step_error("Compute", cause), description="API firmware update Rack"
    )
    assert charged_trays(task, targets(trays)) == numbered(trays, 3, 7)


def test_in_a_stage_of_several_types_only_the_type_the_error_names_is_charged() -> None:
    trays = nvl72()
    layout = [["Compute"], ["NVSwitch"], ["PowerShelf"], ["Compute", "NVSwitch", "PowerShelf"]]
    error = step_error(
        "PowerShelf", activity_error("PowerControl", "ComponentPowerControl failed: rpc error")
    )
    task = failed_task(layout, 4, error, description="API force power off Rack")
    assert task.report is not None
    assert {s.component_type for s in task.report.stages[3].steps if s.status.value == "failed"} == {C, S, P}
    assert charged_trays(task, targets(trays)) == ids(trays, P)


def test_a_reachability_timeout_is_charged_to_the_types_that_never_answered() -> None:
    trays = nvl72()
    # workflow/actions.go:587-591, in a power shelf step's post-operation.
    inner = (
        "post-operation failed: action 1 (VerifyReachability) failed: timeout after 10m0s waiting for "
        "components to become reachable: [Compute NVSwitch]"
    )
    task = failed_task([["PowerShelf"], ["NVSwitch"], ["Compute"]], 1, step_error("PowerShelf", inner))
    assert failed_types(task) == {"Compute", "NVSwitch"}
    assert charged_trays(task, targets(trays)) == ids(trays, C) | ids(trays, S)


def test_a_failure_on_no_component_type_is_charged_to_no_tray() -> None:
    trays = nvl72()
    no_report = failed_task(POWER_CYCLE, None, "rule definition has no steps")  # helpers.go:391-393
    assert failed_types(no_report) == frozenset()
    assert charged_trays(no_report, targets(trays)) == frozenset()
    nothing_said = failed_task(POWER_CYCLE, None, None)
    assert charged_trays(nothing_said, targets(trays)) == frozenset()


def test_the_message_alone_names_the_type_when_there_is_no_report() -> None:
    trays = nvl72()
    task = failed_task(POWER_CYCLE, None, cut(f"stage 2 failed: {NVSWITCH_TIMEOUT}"))
    assert charged_trays(task, targets(trays)) == ids(trays, S)


def test_an_error_without_flows_wrapping_falls_back_to_the_failed_steps() -> None:
    trays = nvl72()
    task = failed_task(POWER_CYCLE, 6, "Timed out waiting for tray")
    assert failed_types(task) == {"Compute"}
    assert charged_trays(task, targets(trays)) == ids(trays, C)


def test_a_tray_scoped_task_is_charged_to_its_own_trays_of_the_failed_type() -> None:
    trays = nvl72()
    mine = [trays[0], trays[1], trays[19]]  # two compute trays and an NVSwitch tray
    task = failed_task(
        POWER_CYCLE,
        6,
        step_error(
            "Compute", "post-operation failed: action 0 (VerifyPowerStatus) failed: " + POWER_STATUS_TIMEOUT
        ),
        description="API power cycle Tray",
        totals={"Compute": 2, "NVSwitch": 1},
    )
    assert charged_trays(task, targets(mine)) == numbered(trays, 1, 2)
    # Its NVSwitch step failing is not charged to trays it did not target.
    other = failed_task(POWER_CYCLE, 2, NVSWITCH_TIMEOUT, description="API power cycle Tray")
    assert charged_trays(other, targets(mine)) == numbered(trays, 20)
    assert charged_trays(other, targets(mine[:2])) == frozenset()


def test_a_leak_detection_task_is_charged_to_the_component_it_names() -> None:
    trays = nvl72()
    task = failed_task(
        [["Compute", "NVSwitch", "PowerShelf"]],
        1,
        step_error(
            "Compute", activity_error("PowerControl", "ComponentPowerControl failed: deadline exceeded")
        ),
        description="Leak detection: force power-off component ext-3 of type    Compute",
        totals={"Compute": 1},
    )
    assert charged_trays(task, targets(trays)) == numbered(trays, 3)


def test_a_named_component_the_task_did_not_target_is_not_charged() -> None:
    trays = nvl72()
    cause = "power control failed for ext-99: BMC did not respond within 300s"
    task = failed_task(POWER_CYCLE, 2, step_error("NVSwitch", activity_error("PowerControl", cause)))
    assert charged_trays(task, targets(trays)) == ids(trays, S)


def test_a_component_id_cut_by_the_512_byte_limit_names_no_tray() -> None:
    trays = nvl72()
    cause = "power control failed for ext-12: BMC did not respond within 300s"
    bare = step_error("Compute", activity_error("PowerControl", cause, identity="1@@"))
    # Pad the worker identity so that the cut falls inside "ext-12", leaving "ext-1".
    pad = 512 - (bare.encode().index(b"ext-12") + len("ext-1"))
    full = step_error("Compute", activity_error("PowerControl", cause, identity=f"1@{'w' * pad}@"))
    stage_error = cut(full)
    assert stage_error.endswith("failed for ext-1") and len(stage_error.encode()) == 512
    task = failed_task(POWER_CYCLE, 6, full)
    assert charged_trays(task, targets(trays)) == ids(trays, C)  # not tray 1 alone: the type


def test_a_non_utf8_tail_does_not_hide_the_named_component() -> None:
    trays = nvl72()
    head = "power control failed for ext-21: BMC state unknown "

    def error(head: str) -> str:
        return step_error("NVSwitch", activity_error("PowerControl", head + "é" * 300))

    if (512 - error(head).encode().index("é".encode())) % 2 == 0:
        head += "-"  # the cut must split a two-byte character
    task = failed_task(POWER_CYCLE, 2, error(head))
    assert task.report is not None and (task.report.error or "").endswith("\ufffd")
    assert charged_trays(task, targets(trays)) == numbered(trays, 21)
