"""The cause of a failure out of Flow's and the Temporal SDK's wrapping (exporter/errortext.py).

The texts are built here by hand the way the Go code builds them (``rest-api/`` at
``release/v2.0``; Temporal Go SDK v1.39.0):

- ``component type T failed: %w`` (flow/.../workflow/helpers.go:342-343), ``stage N failed: %w``
  (:431, the task message only);
- ``ChildWorkflowExecutionError.Error()``: ``child workflow execution error (type: X, workflowID: Y,
  runID: Z, initiatedEventID: N, startedEventID: M): <cause>`` (sdk internal/error.go:858-865);
- ``main operation failed: %w`` / ``pre-operation failed: %w`` / ``post-operation failed: %w``
  (workflow/genericcomponentstep.go:58, :68, :80); ``action %d (%s) failed: %w`` (actions.go:58);
- ``ActivityError.Error()``: ``activity error (type: X, scheduledEventID: N, startedEventID: M,
  identity: I): <cause>`` (error.go:811-817);
- ``ApplicationError.Error()``: ``<message> (type: T, retryable: B): <cause>`` (error.go:603-612),
  where a Go error that crossed a workflow boundary has its whole ``Error()`` as message and the
  error it wraps as cause (failure_converter.go:79-83, :178-186), so the chain prints twice;
- Flow keeps the first 512 bytes (report/report.go:306-315, message/message.go:35-56), and
  Go's ``encoding/json`` writes each byte of a split character as U+FFFD.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import StatusCode
from prometheus_client.parser import text_string_to_metric_families

from exporter.errortext import error_cause, one_line, parse_error
from exporter.facts import ERROR_LABEL_MAX, short_error
from exporter.metrics import SeriesOptions, task_series
from exporter.operations import Operation
from exporter.simulator import ScenarioConfig
from exporter.state import Kind, TaskRecord
from exporter.taskcmd import render_task
from exporter.tracing import SpanSettings, task_spans
from tests.builders import T0, report, stage, step, task
from tests.pollharness import Harness, simulation

TASK = "0b5c2f0e-3d1a-4c8e-9f7b-2a6d4e8c1f3a"
RUN = "9e1f7c3a-5b2d-4e6f-8a0c-1d3e5f7a9b2c"
HOST = "nico-flow-6f8b9c7d5-k2x9p"
CAUSE = "power control failed for nvsw-2896841206270df4: BMC did not respond within 300s"
WRAP = " (type: wrapError, retryable: true)"


def child(kind: str = "NVSwitch") -> str:
    return (
        "child workflow execution error (type: GenericComponentStepWorkflow, workflowID: "
        f"component-step-{TASK}-{kind}, runID: {RUN}, initiatedEventID: 17, startedEventID: 18): "
    )


def activity(kind: str = "PowerControl", host: str = HOST) -> str:
    return f"activity error (type: {kind}, scheduledEventID: 5, startedEventID: 6, identity: 1@{host}@): "


def on_server(cause: str = CAUSE, *, host: str = HOST, message: bool = False) -> str:
    """A PowerControl activity's error on an NVSwitch step, whole, as FailStage (or, with
    ``message``, ForFailure) receives it."""
    main = f"main operation failed: {activity(host=host)}{cause}"
    text = f"component type NVSwitch failed: {child()}{main}{WRAP}: {activity(host=host)}{cause}"
    return f"stage 2 failed: {text}" if message else text


def flow_cut(text: str) -> str:
    """Go's ``msg[:512]``, then as ``encoding/json`` shows it: a stray byte per U+FFFD."""
    raw = text.encode()[:512]
    head = raw.decode(errors="ignore")
    return head + "\ufffd" * (len(raw) - len(head.encode()))


def cut_at(marker: str, into: int, *, cause: str = CAUSE, message: bool = False) -> str:
    """The server text with a host name as long as it takes for Flow's 512-byte cut to land
    ``into`` bytes past the first ``marker`` after the first activity layer."""
    base = on_server(cause, host="h", message=message)
    start = base.index(activity(host="h")) + len(activity(host="h"))
    at = len(base[: base.index(marker, start)].encode()) + into
    assert at <= 512, "the marker lies past the cut even with a one-letter host"
    text = on_server(cause, host="h" + "x" * (512 - at), message=message)
    assert len(text.encode()) > 512
    return flow_cut(text)


# -- each layer alone, then all of them -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        pytest.param("disk full", "disk full", id="plain"),
        pytest.param(
            "  BMC unreachable:\nno route to host ", "BMC unreachable:\nno route to host", id="plain-lines"
        ),
        pytest.param("stage 3 failed: boom", "boom", id="stage"),
        pytest.param("component type Compute failed: boom", "boom", id="component-type"),
        pytest.param(
            child() + "step has no main_operation configured",
            "step has no main_operation configured",
            id="child",
        ),
        pytest.param("main operation failed: boom", "boom", id="main-operation"),
        pytest.param("pre-operation failed: boom", "boom", id="pre-operation"),
        pytest.param("post-operation failed: boom", "boom", id="post-operation"),
        pytest.param("action 1 (VerifyPowerStatus) failed: boom", "boom", id="action"),
        pytest.param(activity() + CAUSE, CAUSE, id="activity"),
        pytest.param(f"{CAUSE}{WRAP}: BMC did not respond within 300s", CAUSE, id="trailer"),
        pytest.param(on_server(), CAUSE, id="all-on-a-server"),
        pytest.param(on_server(message=True), CAUSE, id="all-in-the-task-message"),
        # Any order: a post-operation action's own error, no activity (actions.go:392-399).
        pytest.param(
            "component type PowerShelf failed: "
            + child("PowerShelf")
            + "post-operation failed: action 0 (VerifyPowerStatus) failed: timeout after 5m0s waiting for "
            "power status on (attempts: 31)" + WRAP + ": action 0 (VerifyPowerStatus) failed: timeout after "
            "5m0s waiting for power status on (attempts: 31)" + WRAP + ": timeout after 5m0s waiting for "
            "power status on (attempts: 31)",
            "timeout after 5m0s waiting for power status on (attempts: 31)",
            id="post-operation-action-nested",
        ),
        # An activity error made with %w around a gRPC status: two trailers in a row (nico.go:577).
        pytest.param(
            f"main operation failed: {activity('BringUpControl')}BringUpControl failed for fm100ht7: rpc error: "
            "code = DeadlineExceeded desc = context deadline exceeded" + WRAP + ": rpc error: code = "
            "DeadlineExceeded desc = context deadline exceeded (type: Error, retryable: true)" + WRAP + ": "
            f"{activity('BringUpControl')}BringUpControl failed for fm100ht7: rpc error: code = ...",
            "BringUpControl failed for fm100ht7: rpc error: code = DeadlineExceeded desc = context deadline exceeded",
            id="wrapped-grpc-error",
        ),
        # The action's own words around the activity's (actions.go:222-225) stay: they are Flow's.
        pytest.param(
            f"main operation failed: failed to start firmware update: {activity('FirmwareControl')}firmware "
            "update failed for nvsw-1: image verification failed (checksum mismatch)" + WRAP + ": failed to",
            "failed to start firmware update: firmware update failed for nvsw-1: image verification failed "
            "(checksum mismatch)",
            id="activity-layer-mid-text",
        ),
        # A timeout's own "(type: StartToClose)" says what timed out: it stays (error.go:663-669).
        pytest.param(
            f"main operation failed: {activity()}activity StartToClose timeout (type: StartToClose){WRAP}: ...",
            "activity StartToClose timeout (type: StartToClose)",
            id="activity-timeout",
        ),
        pytest.param(
            on_server("power state did not converge (expected On, got Off)"),
            "power state did not converge (expected On, got Off)",
            id="parentheses-in-the-cause",
        ),
        pytest.param("", "", id="blank"),
    ],
)
def test_the_cause_comes_out_of_every_layer(text: str, cause: str) -> None:
    assert error_cause(text) == cause


def test_the_wrapping_says_where_it_failed() -> None:
    parsed = parse_error(on_server(message=True))
    assert parsed.cause == CAUSE and not parsed.truncated
    assert (parsed.stage, parsed.component_type, parsed.workflow_type) == (
        2,
        "NVSwitch",
        "GenericComponentStepWorkflow",
    )
    assert (parsed.phase, parsed.action, parsed.activity_type) == ("main operation", None, "PowerControl")


# -- Flow's 512-byte cut ----------------------------------------------------------------------------


@pytest.mark.parametrize("message", [False, True], ids=["report", "message"])
@pytest.mark.parametrize(
    ("marker", "into", "cause"),
    [
        # In the cause: what is left of it, marked as cut.
        pytest.param("power control", 5, "power…", id="cause-start"),
        pytest.param("nvsw-", 7, "power control failed for nvsw-28…", id="cause-component-id"),
        pytest.param(
            "within 300s",
            6,
            "power control failed for nvsw-2896841206270df4: BMC did not respond within…",
            id="cause-end",
        ),
        # Right at its end: whole, but nothing says so.
        pytest.param(WRAP, 0, CAUSE + "…", id="before-trailer"),
        # In the trailer, in the repetition: the cause is whole.
        pytest.param(WRAP, 2, CAUSE, id="trailer-open"),
        pytest.param(WRAP, 14, CAUSE, id="trailer-type"),
        pytest.param(WRAP, len(WRAP) + 2, CAUSE, id="after-trailer"),
        pytest.param(WRAP, len(WRAP) + 4, CAUSE, id="in-the-repetition"),
    ],
)
def test_a_cut_keeps_what_it_can_of_the_cause(marker: str, into: int, cause: str, message: bool) -> None:
    text = cut_at(marker, into, message=message)
    assert len(text.encode()) == 512
    assert error_cause(text) == cause


@pytest.mark.parametrize(
    ("upto", "shown"),
    [
        # Cut inside the child layer: before its type is whole, then after.
        ("child workflow execution error (type: Gen", "component type NVSwitch failed (cause cut off)"),
        (
            "GenericComponentStepWorkflow, workflowID: compo",
            "child workflow GenericComponentStepWorkflow failed (cause cut off)",
        ),
        (
            "startedEventID: 18): main opera",
            "child workflow GenericComponentStepWorkflow failed (cause cut off)",
        ),
        ("main operation failed: ", "main operation failed (cause cut off)"),
        (
            "main operation failed: activity error (type: PowerControl, sched",
            "activity PowerControl failed (cause cut off)",
        ),
        ("identity: 1@nico-fl", "activity PowerControl failed (cause cut off)"),
    ],
)
def test_a_cut_inside_a_layer_shows_where_it_failed(upto: str, shown: str) -> None:
    text = on_server()
    end = text.index(upto) + len(upto)
    assert error_cause(text[:end]) == shown
    assert error_cause("stage 2 failed: " + text[:end]) == shown


def test_a_long_host_name_pushes_the_cut_into_the_activity_layer() -> None:
    text = flow_cut(on_server(host="h" * 300))
    assert text.endswith("h" * 20)  # the cut is inside "identity: 1@hhh..."
    assert error_cause(text) == "activity PowerControl failed (cause cut off)"


@pytest.mark.parametrize("into", [1, 2], ids=["one-byte-of-three", "two-bytes-of-three"])
def test_a_character_split_by_the_cut_leaves_no_replacement_characters(into: int) -> None:
    cause = "BMC 报告 电源失败 (code 7)"
    text = cut_at("败", into, cause=cause)
    assert text.endswith("\ufffd" * into)
    assert error_cause(text) == "BMC 报告 电源失…"


def test_undecodable_bytes_at_the_end_are_dropped_and_never_reach_a_label() -> None:
    text = cut_at("within", 3, message=True)[:-2] + "\udce8\udc80"  # bytes decoded with surrogateescape
    assert error_cause(text) == "power control failed for nvsw-2896841206270df4: BMC did not respond w…"
    label = short_error("BMC\udce8 said no")
    assert label == "BMC\ufffd said no"
    label.encode()  # a label must be valid UTF-8


def test_a_label_is_one_line_of_at_most_200_characters() -> None:
    assert ERROR_LABEL_MAX == 200
    long = "firmware flash failed: " + "é" * 300
    assert short_error(long) == long[:199] + "…"
    assert one_line(" a\n b\tc ", 10) == "a b c"


# -- what reaches labels, spans and `tasks show` --------------------------------------------------


def failed(error: str, message: str) -> TaskRecord:
    rep = report(
        stage(1, "completed", step("PowerShelf", "completed", T0 + 10, T0 + 40), start=T0 + 10, end=T0 + 40),
        stage(2, "failed", step("NVSwitch", "failed", T0 + 40, T0 + 100, error), start=T0 + 40, end=T0 + 100),
        stage(3, "pending", step("Compute", "pending")),
    )
    rep["error"] = error
    t = task(1, "Failed", started=T0 + 10, updated=T0 + 100, finished=T0 + 100, rep=rep, message=message)
    return TaskRecord("s", "r", t, Operation.POWER_ON, first_seen=T0, observed_at=T0 + 100)


def failure_labels(record: TaskRecord) -> dict[str, str]:
    text = task_series(record, SeriesOptions())["nico_task_failure_info"].decode()
    [family] = text_string_to_metric_families(text)
    [sample] = family.samples
    return sample.labels


def test_labels_spans_and_tasks_show_read_the_cause_and_keep_the_text() -> None:
    error, message = flow_cut(on_server()), flow_cut(on_server(message=True))
    record = failed(error, message)

    labels = failure_labels(record)
    assert (labels["error"], labels["stage_number"], labels["component_type"]) == (CAUSE, "2", "NVSwitch")
    assert labels["reason"] == "unreachable"  # "did not respond", read in the cause

    spans = {
        span.name: span
        for span in task_spans(record, SpanSettings(Resource.create({})), observed_at=T0 + 101)
    }
    root = spans["power_on"]
    assert (root.status.status_code, root.status.description) == (StatusCode.ERROR, CAUSE)
    assert (root.attributes or {})["nico.task.error"] == error

    shown = render_task(record.task, site_id="s", now=datetime.fromtimestamp(T0 + 200, UTC))
    assert f"status      Failed  ({CAUSE})" in shown
    assert f"cause       {CAUSE}" in shown and f"error       {error}" in shown
    table = shown.split("\nerror ")[0].split("\ncause ")[0]
    assert "child workflow execution error" not in table and CAUSE[:100] in table


async def test_the_simulators_failures_reach_labels_and_spans_as_their_cause() -> None:
    scenario = ScenarioConfig(
        seed=5,
        sites=1,
        racks_per_site=3,
        arrivals_per_rack_per_hour=30,
        failure_rate=0.6,
        cancel_rate=0.0,
        tray_scoped_fraction=0.3,
        history_hours=0.5,
        horizon_hours=1.0,
    )
    sim, clock = simulation(scenario)
    h = Harness(sim, clock)
    await h.run(1.5 * 3600, step=5)
    await h.close()
    truth = {t.id: t for t in sim.truth()}
    records = [
        t.record for t in h.transitions if t.kind is Kind.FINISHED and t.record.status.value == "Failed"
    ]
    assert len(records) >= 10  # 19 with this seed, of 6 operations, cut and whole
    ops = set()
    for record in records:
        cause = truth[record.id].error
        assert cause is not None
        # The action's own words before the activity's (actions.go:224) are part of what Flow said.
        whole = {cause, "failed to start firmware update: " + cause}
        label = failure_labels(record)["error"]
        [root] = [
            s
            for s in task_spans(record, SpanSettings(Resource.create({})), observed_at=h.now())
            if s.parent is None
        ]
        kept = (record.task.report.error if record.task.report else None) or record.task.message or ""
        for shown in (label, root.status.description or ""):
            assert "child workflow execution error" not in shown and "(type: wrapError" not in shown
            if cause in kept:
                assert shown in whole
            else:  # Flow's cut took the end of the cause (long Compute component ids do that)
                assert shown.endswith("…") and any(w.startswith(shown[:-1]) for w in whole)
        ops.add(record.operation.value)
    assert len(ops) >= 3
