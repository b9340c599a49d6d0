"""Spans of tasks: the tree, ids, times, status mapping and exactly-once emission, in memory.

Tasks go through a real :class:`Store` (observe, commit) with a :class:`SpanBuilder` attached,
and spans land in an ``InMemorySpanExporter``; nothing touches the network.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from exporter.app import build
from exporter.config import Config
from exporter.configload import load_config
from exporter.models import Task
from exporter.outbox import MemoryOutbox, Outbox, Sender, SqliteOutbox
from exporter.persistence import NullPersistence, SqlitePersistence, StateBatch
from exporter.simulator import ScenarioConfig
from exporter.state import Store
from exporter.tracing import (
    SpanBuilder,
    SpanSettings,
    TracingConfigError,
    configure_tracing,
    decode_span,
    encode_span,
    span_id,
)
from tests import builders
from tests.builders import RACK, SITE, T0, stage, tid
from tests.pollharness import DiesBeforeCommit, Harness, KilledError, expected_finished, simulation

TRAY = "55555555-5555-4555-8555-555555555555"
RULE = "88888888-8888-4888-8888-888888888888"
NS = 1_000_000_000


# -- builders --------------------------------------------------------------------------------------


def step(
    component: str, status: str, start: float | None = None, end: float | None = None, **kw: Any
) -> dict[str, Any]:
    """Two components per step, so the span attributes show a count."""
    return builders.step(component, status, start, end, total=2, **kw)


def task(n: int, status: str, *stages: dict[str, Any], started: float | None = T0 + 10, **kw: Any) -> Task:
    """Tasks that started 10 s after their creation at T0, with a report even without stages."""
    return builders.task(n, status, started=started, rep=builders.report(*stages), **kw)


RESOURCE = Resource.create({"service.name": "nico"})


def sender_for(outbox: Outbox, memory: SpanExporter, *, durable: bool = False) -> Sender:
    """The outbox's sender, run on the test's thread (``drain``) instead of its own."""
    return Sender(outbox, memory, functools.partial(decode_span, resource=RESOURCE), durable=durable)


@dataclass
class World:
    """A store with a span builder attached; spans go through the (memory) outbox and its
    sender, encoded and decoded, and land in ``memory`` after each commit."""

    outbox: MemoryOutbox = field(default_factory=MemoryOutbox)
    memory: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)

    def __post_init__(self) -> None:
        self.store = Store(NullPersistence(self.outbox))
        settings = SpanSettings(
            RESOURCE,
            site_name=lambda site: "site-a" if site == SITE else "",
            rack_name=lambda rack: "rack-1" if rack == RACK else "",
        )
        self.builder = SpanBuilder(settings)
        self.builder.attach(self.store)
        self.sender = sender_for(self.outbox, self.memory)
        self.store.after_commit(self.sender.drain_after_commit)

    def observe(self, t: Task, at: float, *, commit: bool = True) -> None:
        self.store.observe(SITE, RACK, t, at)
        if commit:
            self.store.commit()

    def spans(self) -> dict[str, ReadableSpan]:
        out = {s.name: s for s in self.memory.get_finished_spans()}
        assert len(out) == len(self.memory.get_finished_spans()), "span names repeat"
        return out


@pytest.fixture
def world() -> World:
    return World()


def ns(at: float) -> int:
    return int(at) * NS


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


def succeeded(n: int = 1) -> Task:
    return task(
        n,
        "Succeeded",
        stage(
            1,
            "completed",
            step("PowerShelf", "completed", T0 + 10, T0 + 20),
            start=T0 + 10,
            end=T0 + 20,
        ),
        stage(
            2,
            "completed",
            step("Compute", "completed", T0 + 20, T0 + 50),
            step("NVSwitch", "completed", T0 + 20, T0 + 40),
            start=T0 + 20,
            end=T0 + 50,
        ),
        finished=T0 + 50,
        rule_id=RULE,
    )


# -- ids -------------------------------------------------------------------------------------------


def test_span_ids_are_deterministic_distinct_and_never_zero() -> None:
    keys = [("task", 0, 0), ("queue", 0, 0), ("stage", 1, 0), ("stage", 2, 0)]
    keys += [("step", s, i) for s in (1, 2) for i in range(3)]
    ids = [span_id(tid(n), level, number, index) for n in range(50) for level, number, index in keys]
    assert 0 not in ids
    assert all(0 < i < 2**64 for i in ids)
    assert len(set(ids)) == len(ids)
    assert span_id(tid(1), "step", 2, 1) == span_id(tid(1), "step", 2, 1)


# -- the tree --------------------------------------------------------------------------------------


def test_a_succeeded_task_is_one_trace_with_the_tree(world: World) -> None:
    world.observe(succeeded(), T0 + 60)
    spans = world.spans()
    assert set(spans) == {"power_on", "queue", "stage 1", "stage 2", "stage 1 PowerShelf"} | {
        "stage 2 Compute",
        "stage 2 NVSwitch",
    }
    want_trace = uuid.UUID(tid(1)).int
    assert {span_ids(s)[0] for s in spans.values()} == {want_trace}
    root = spans["power_on"]
    root_id = span_ids(root)[1]
    assert root.parent is None
    assert root_id == span_id(tid(1), "task")
    assert parent_id(spans["queue"]) == root_id
    assert parent_id(spans["stage 1"]) == root_id
    assert parent_id(spans["stage 2"]) == root_id
    assert parent_id(spans["stage 1 PowerShelf"]) == span_ids(spans["stage 1"])[1]
    assert parent_id(spans["stage 2 Compute"]) == span_ids(spans["stage 2"])[1]
    assert span_ids(spans["stage 2 NVSwitch"])[1] == span_id(tid(1), "step", 2, 1)
    # Explicit times from NICo's timestamps.
    assert (root.start_time, root.end_time) == (ns(T0), ns(T0 + 50))
    assert (spans["queue"].start_time, spans["queue"].end_time) == (ns(T0), ns(T0 + 10))
    assert (spans["stage 2"].start_time, spans["stage 2"].end_time) == (ns(T0 + 20), ns(T0 + 50))
    assert (spans["stage 2 NVSwitch"].start_time, spans["stage 2 NVSwitch"].end_time) == (
        ns(T0 + 20),
        ns(T0 + 40),
    )
    assert all(s.status.status_code is StatusCode.OK for n, s in spans.items() if n != "queue")
    assert spans["queue"].status.status_code is StatusCode.UNSET


def test_span_ids_are_stable_across_builders() -> None:
    first, second = World(), World()
    first.observe(succeeded(), T0 + 60)
    # Another process sees the same task in two steps: same spans, same ids.
    second.observe(task(1, "Running", stage(1, "completed", start=T0 + 10, end=T0 + 20)), T0 + 30)
    second.observe(succeeded(), T0 + 75)

    def ids(w: World) -> dict[str, tuple[int, int, int | None]]:
        return {n: (*span_ids(s), parent_id(s)) for n, s in w.spans().items()}

    assert ids(first) == ids(second)


def test_stage_spans_leave_when_final_and_the_root_only_when_the_task_ends(world: World) -> None:
    world.observe(
        task(
            1,
            "Running",
            stage(
                1, "completed", step("PowerShelf", "completed", T0 + 10, T0 + 20), start=T0 + 10, end=T0 + 20
            ),
            stage(2, "running", step("Compute", "running", T0 + 20), start=T0 + 20),
        ),
        T0 + 30,
    )
    assert set(world.spans()) == {"stage 1", "stage 1 PowerShelf"}
    world.observe(succeeded(), T0 + 60)
    world.observe(succeeded(), T0 + 75)  # seen again: nothing new
    names = [s.name for s in world.memory.get_finished_spans()]
    assert Counter(names) == Counter(set(names))
    assert "power_on" in names and "stage 2 Compute" in names


def test_spans_enter_the_outbox_only_with_their_commit(world: World) -> None:
    world.observe(succeeded(), T0 + 60, commit=False)
    assert world.memory.get_finished_spans() == ()
    assert world.outbox.count() == 0
    world.store.commit()
    assert len(world.memory.get_finished_spans()) == 7
    assert world.outbox.count() == 0


# -- status mapping and the steps that never ran ---------------------------------------------------


def test_a_failed_fail_fast_task_has_error_spans_and_none_for_pending_stages(world: World) -> None:
    world.observe(
        task(
            1,
            "Failed",
            stage(
                1, "completed", step("PowerShelf", "completed", T0 + 10, T0 + 20), start=T0 + 10, end=T0 + 20
            ),
            stage(
                2,
                "failed",
                step("Compute", "failed", T0 + 20, T0 + 30, error="BMC unreachable"),
                step("NVSwitch", "completed", T0 + 20, T0 + 25),
                start=T0 + 20,
                end=T0 + 30,
            ),
            stage(3, "pending", step("Compute", "pending")),
            finished=T0 + 31,
        ),
        T0 + 40,
    )
    spans = world.spans()
    assert set(spans) == {
        "power_on",
        "queue",
        "stage 1",
        "stage 1 PowerShelf",
        "stage 2",
        "stage 2 Compute",
        "stage 2 NVSwitch",
    }
    root = spans["power_on"]
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description == "BMC unreachable"
    assert root.attributes is not None and root.attributes["cicd.pipeline.result"] == "failure"
    assert spans["stage 2"].status.status_code is StatusCode.ERROR
    assert spans["stage 2"].status.description == "BMC unreachable"
    assert spans["stage 2 Compute"].status.status_code is StatusCode.ERROR
    assert spans["stage 2 Compute"].status.description == "BMC unreachable"
    assert spans["stage 2 NVSwitch"].status.status_code is StatusCode.OK
    attrs = spans["stage 2 Compute"].attributes
    assert attrs is not None and attrs["cicd.pipeline.task.run.result"] == "failure"


def test_a_terminated_task_ends_its_running_stages_with_it(world: World) -> None:
    world.observe(
        task(
            1,
            "Running",
            stage(
                1, "completed", step("PowerShelf", "completed", T0 + 10, T0 + 20), start=T0 + 10, end=T0 + 20
            ),
            stage(2, "running", step("Compute", "running", T0 + 20), start=T0 + 20),
        ),
        T0 + 30,
    )
    world.observe(
        task(
            1,
            "Terminated",
            stage(
                1, "completed", step("PowerShelf", "completed", T0 + 10, T0 + 20), start=T0 + 10, end=T0 + 20
            ),
            stage(2, "running", step("Compute", "running", T0 + 20), start=T0 + 20),
            stage(3, "pending"),
            finished=T0 + 45,
        ),
        T0 + 50,
    )
    spans = world.spans()
    assert set(spans) == {"power_on", "queue", "stage 1", "stage 1 PowerShelf", "stage 2", "stage 2 Compute"}
    root = spans["power_on"]
    assert root.status.status_code is StatusCode.UNSET
    assert root.attributes is not None and root.attributes["cicd.pipeline.result"] == "cancellation"
    for name, flag in (("stage 2", "nico.stage.unfinished"), ("stage 2 Compute", "nico.step.unfinished")):
        span = spans[name]
        assert span.status.status_code is StatusCode.UNSET
        assert (span.start_time, span.end_time) == (ns(T0 + 20), ns(T0 + 45))
        assert span.attributes is not None
        assert span.attributes[flag] is True
        assert span.attributes["cicd.pipeline.task.run.result"] == "cancellation"
    assert parent_id(spans["stage 2"]) == span_id(tid(1), "task")
    assert spans["stage 1"].attributes is not None
    assert "nico.stage.unfinished" not in spans["stage 1"].attributes


def test_skipped_stages_and_steps_get_no_span(world: World) -> None:
    world.observe(
        task(
            1,
            "Succeeded",
            stage(
                1,
                "completed",
                step("Compute", "completed", T0 + 10, T0 + 20),
                step("NVSwitch", "skipped"),
                start=T0 + 10,
                end=T0 + 20,
            ),
            stage(2, "skipped", step("PowerShelf", "skipped")),
            finished=T0 + 20,
        ),
        T0 + 30,
    )
    assert set(world.spans()) == {"power_on", "queue", "stage 1", "stage 1 Compute"}


def test_an_end_before_its_start_is_clamped(world: World) -> None:
    world.observe(
        task(
            1,
            "Succeeded",
            stage(1, "completed", step("Compute", "completed", T0 + 30, T0 + 29), start=T0 + 30, end=T0 + 28),
            created=T0,
            started=T0 + 10,
            finished=T0 - 5,
        ),
        T0 + 40,
    )
    spans = world.spans()
    for name, start in (("power_on", T0), ("stage 1", T0 + 30), ("stage 1 Compute", T0 + 30)):
        assert (spans[name].start_time, spans[name].end_time) == (ns(start), ns(start)), name


# -- attributes and events -------------------------------------------------------------------------


def test_attributes_follow_the_cicd_conventions_and_name_the_task(world: World) -> None:
    world.observe(task(1, "Running", stage(1, "running", start=T0 + 10)), T0 + 20)
    world.store.attribute(tid(1), [TRAY])
    world.observe(succeeded(), T0 + 60)
    spans = world.spans()
    root = spans["power_on"]
    assert root.resource.attributes["service.name"] == "nico"
    assert dict(root.attributes or {}) == {
        "cicd.pipeline.name": "power_on",
        "cicd.pipeline.run.id": tid(1),
        "cicd.pipeline.result": "success",
        "nico.task.id": tid(1),
        "nico.task.operation": "power_on",
        "nico.task.description": "API power on Rack",
        "nico.task.status": "Succeeded",
        "nico.site.id": SITE,
        "nico.site.name": "site-a",
        "nico.rack.id": RACK,
        "nico.rack.name": "rack-1",
        "nico.rule.id": RULE,
        "nico.tray.ids": (TRAY,),
    }
    step_attrs = dict(spans["stage 2 NVSwitch"].attributes or {})
    assert step_attrs == {
        "cicd.pipeline.task.name": "stage 2 NVSwitch",
        "cicd.pipeline.task.run.id": f"{tid(1)}/stage/2/step/1",
        "cicd.pipeline.task.run.result": "success",
        "nico.task.id": tid(1),
        "nico.task.operation": "power_on",
        "nico.site.id": SITE,
        "nico.site.name": "site-a",
        "nico.rack.id": RACK,
        "nico.rack.name": "rack-1",
        "nico.stage.number": 2,
        "nico.step.index": 1,
        "nico.component.type": "NVSwitch",
        "nico.step.total_components": 2,
    }
    stage_attrs = spans["stage 2"].attributes or {}
    assert stage_attrs["cicd.pipeline.task.run.id"] == f"{tid(1)}/stage/2"
    assert stage_attrs["nico.stage.number"] == 2


def test_status_changes_become_events_on_the_root(world: World) -> None:
    world.observe(task(1, "Pending", started=None), T0 + 5)
    world.observe(task(1, "Running", stage(1, "running", start=T0 + 10)), T0 + 20)
    world.observe(succeeded(), T0 + 60)  # observed after it finished: clamped into the span
    root = world.spans()["power_on"]
    events = [(e.name, dict(e.attributes or {}), e.timestamp) for e in root.events]
    assert events == [
        ("nico.task.status_changed", {"nico.task.status": "Pending"}, ns(T0 + 5)),
        (
            "nico.task.status_changed",
            {"nico.task.status": "Running", "nico.task.previous_status": "Pending"},
            ns(T0 + 20),
        ),
        (
            "nico.task.status_changed",
            {"nico.task.status": "Succeeded", "nico.task.previous_status": "Running"},
            ns(T0 + 50),
        ),
    ]
    assert world.builder.events == {}  # forgotten once the root left


def test_a_task_that_never_started_queued_until_it_ended(world: World) -> None:
    world.observe(task(1, "Terminated", started=None, finished=T0 + 30), T0 + 40)
    spans = world.spans()
    assert set(spans) == {"power_on", "queue"}
    assert (spans["queue"].start_time, spans["queue"].end_time) == (ns(T0), ns(T0 + 30))
    assert (spans["queue"].attributes or {})["nico.task.started"] is False


# -- exactly once across a restart -----------------------------------------------------------------


def traced(h: Harness, db: Path, memory: InMemorySpanExporter) -> Sender:
    """Spans of ``h`` through the state file's outbox, sent after each commit."""
    SpanBuilder(SpanSettings(RESOURCE)).attach(h.store)
    sender = sender_for(SqliteOutbox(db), memory, durable=True)
    h.store.after_commit(sender.drain_after_commit)
    sender.drain()  # what the last process left pending goes first
    return sender


@pytest.mark.parametrize("survive", [40, 200])
async def test_a_kill_then_a_restart_sends_each_span_once(tmp_path: Path, survive: int) -> None:
    scenario = ScenarioConfig(
        seed=31 + survive,
        sites=1,
        racks_per_site=3,
        arrivals_per_rack_per_hour=12,
        failure_rate=0.15,
        cancel_rate=0.1,
        history_hours=1,
        horizon_hours=1.5,
    )
    sim, clock = simulation(scenario)
    db = tmp_path / "state.db"
    memory = InMemorySpanExporter()
    victim = Harness(sim, clock, persistence=DiesBeforeCommit(db, survive))
    traced(victim, db, memory)
    with pytest.raises(KilledError):
        await victim.run(2 * 3600, step=2)
    sent_before = len(memory.get_finished_spans())
    assert victim.started_at is not None
    await victim.close()
    survivor = Harness(sim, clock, persistence=SqlitePersistence(db))
    traced(survivor, db, memory)
    await survivor.run(3 * 3600, step=2)
    await survivor.close()

    spans = memory.get_finished_spans()
    assert sent_before > 0 and len(spans) > sent_before
    ids = Counter(span_ids(s) for s in spans)
    assert [k for k, n in ids.items() if n > 1] == []
    roots = Counter(uuid.UUID(int=span_ids(s)[0]) for s in spans if s.parent is None)
    expected = expected_finished(sim, victim.started_at)
    assert len(expected) > 10
    # One root per finished task that a list named; a task no list could name (NICo v2.0 lists
    # stop at 20 rows) has no data for a trace and is counted unobserved instead.
    traced_ids = {str(t) for t in roots}
    assert all(n == 1 for n in roots.values()) and traced_ids <= set(expected)
    assert len(expected) - len(traced_ids) == sum(survivor.store.totals.unobserved.values())


# -- export and configuration ----------------------------------------------------------------------


class Scripted(SpanExporter):
    def __init__(self, results: Sequence[SpanExportResult | Exception]) -> None:
        self.results = list(results)
        self.shut = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    def shutdown(self) -> None:
        self.shut = True


def test_the_sender_counts_by_result_and_keeps_what_failed() -> None:
    outbox = MemoryOutbox()
    world = World(outbox=outbox)
    world.store._after_commit.clear()  # sent by hand below
    world.observe(succeeded(), T0 + 60)
    assert outbox.count() == 7
    inner = Scripted([SpanExportResult.FAILURE, RuntimeError("boom"), SpanExportResult.SUCCESS])
    sender = sender_for(outbox, inner)
    assert sender.drain() is False  # FAILURE: nothing leaves the outbox
    assert sender.drain() is False  # an exception: the same
    assert (sender.stats.exported, sender.stats.errors, outbox.count()) == (0, 14, 7)
    assert sender.drain() is True
    assert (sender.stats.exported, sender.stats.errors, outbox.count()) == (7, 14, 0)


def test_a_span_survives_its_encoding() -> None:
    world = World()
    world.store._after_commit.clear()
    failed = task(
        1,
        "Failed",
        stage(1, "completed", step("PowerShelf", "completed", T0 + 10, T0 + 20), start=T0 + 10, end=T0 + 20),
        stage(2, "failed", step("Compute", "failed", T0 + 20, T0 + 50), start=T0 + 20, end=T0 + 50),
        finished=T0 + 50,
    )
    world.observe(failed, T0 + 60)
    rows = world.outbox.pending(100)
    memory = InMemorySpanExporter()
    assert sender_for(world.outbox, memory).drain()
    for (_, body), span in zip(rows, memory.get_finished_spans(), strict=True):
        assert encode_span(span) == body
        assert span.resource is RESOURCE
    root = next(s for s in memory.get_finished_spans() if s.parent is None)
    assert root.status.status_code is StatusCode.ERROR
    assert all(isinstance(v, (str, bool, int, float, tuple)) for v in (root.attributes or {}).values())


def test_the_memory_outbox_is_bounded_and_counts_what_it_drops() -> None:
    outbox = MemoryOutbox(max_pending=3)
    assert outbox.add([(f"k{n}", f"b{n}") for n in range(5)]) == 2
    assert [body for _, body in outbox.pending(10)] == ["b2", "b3", "b4"]
    assert outbox.add([("k4", "again")]) == 0  # a key already pending is not added twice
    assert outbox.count() == 3


def test_the_state_file_outbox_is_bounded_and_counts_what_it_drops(tmp_path: Path) -> None:
    persistence = SqlitePersistence(tmp_path / "state.db", max_pending_spans=4)
    assert persistence.write(StateBatch(spans=[(f"k{n}", f"b{n}") for n in range(3)]))
    assert persistence.write(StateBatch(spans=[(f"k{n}", f"b{n}") for n in range(3, 6)]))
    assert persistence.spans_dropped == 2
    outbox = SqliteOutbox(tmp_path / "state.db")
    assert [body for _, body in outbox.pending(10)] == ["b2", "b3", "b4", "b5"]
    outbox.done([seq for seq, _ in outbox.pending(2)])
    assert [body for _, body in outbox.pending(10)] == ["b4", "b5"]
    outbox.close()
    persistence.close()


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": ""},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"},
    ],
)
def test_tracing_is_off_without_an_endpoint_or_when_disabled(env: dict[str, str]) -> None:
    assert configure_tracing("nico", env) is None


@pytest.mark.parametrize(
    ("env", "protocol", "endpoint"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}, "http/protobuf", "http://c:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/x"}, "http/protobuf", "http://c:4318/x"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "grpc",
            "http://c:4317",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json",
            },
            "http/protobuf",
            "http://c:4318/v1/traces",
        ),
    ],
)
def test_tracing_follows_the_otel_environment(env: dict[str, str], protocol: str, endpoint: str) -> None:
    handle = configure_tracing("nico-test", env)
    assert handle is not None
    try:
        assert (handle.protocol, handle.endpoint) == (protocol, endpoint)
        assert handle.resource.attributes["service.name"] == "nico-test"
    finally:
        handle.shutdown(timeout_s=2)


def test_grpc_without_the_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if the grpc extra were not installed: the module cannot be imported.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    with pytest.raises(TracingConfigError, match=r"pip install 'nico-task-exporter\[grpc\]'"):
        configure_tracing("nico", env)


def test_http_tracing_and_the_whole_runtime_never_import_grpc() -> None:
    """Without the grpc extra everything but gRPC export works: nothing imports it eagerly."""
    code = (
        "import sys\n"
        "import exporter.app, exporter.cli, exporter.tracing\n"
        "handle = exporter.tracing.configure_tracing('nico', {'OTEL_EXPORTER_OTLP_ENDPOINT': 'http://c:4318'})\n"
        "assert handle is not None and handle.protocol == 'http/protobuf'\n"
        "loaded = sorted(m for m in sys.modules if m == 'grpc' or '.grpc' in m)\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_shutdown_is_bounded_when_the_receiver_is_down_and_the_spans_stay_pending(tmp_path: Path) -> None:
    # Port 9 (discard) on loopback: nothing listens, every attempt is refused and retried.
    handle = configure_tracing("nico", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert handle is not None
    db = tmp_path / "state.db"
    store = Store(SqlitePersistence(db))
    handle.builder().attach(store)
    sender = handle.start_sender(SqliteOutbox(db), durable=True)
    store.after_commit(sender.wake)
    store.observe(SITE, RACK, succeeded(), T0 + 60)
    store.commit()
    began = time.monotonic()
    handle.shutdown(timeout_s=1.0)
    assert time.monotonic() - began < 10
    assert sender.stats.exported == 0
    left = SqliteOutbox(db)
    assert left.count() == 7  # kept for the next start
    left.close()


def test_a_broken_subscriber_does_not_stop_polling(world: World) -> None:
    def broken(_: object) -> None:
        raise RuntimeError("outbox exploded")

    world.store._subscribers.insert(0, broken)
    world.observe(succeeded(), T0 + 60)  # logged by the store, not raised
    assert world.store.is_known_terminal(tid(1))


# -- wiring ----------------------------------------------------------------------------------------


def _config(tmp_path: Path) -> Config:
    env = {
        "NICO_EXPORTER_API__URL": "http://127.0.0.1:9",
        "NICO_EXPORTER_API__ORG": "acme",
        "NICO_TOKEN": "t",
        "NICO_EXPORTER_STATE__PATH": str(tmp_path / "state.db"),
        "NICO_EXPORTER_TRACING__SERVICE_NAME": "nico-east",
    }
    return load_config(None, env)


def test_build_wires_tracing_only_when_an_endpoint_is_set(tmp_path: Path) -> None:
    """A finished task leaves its spans pending in the state file only when tracing is on."""
    for environ, on in (({}, False), ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, True)):
        home = tmp_path / str(on)
        home.mkdir()
        exporter = build(_config(home), environ=environ)
        try:
            assert (exporter.tracing is not None) == on
            if exporter.tracing is not None:
                assert exporter.tracing.resource.attributes["service.name"] == "nico-east"
            exporter.store.observe(SITE, RACK, succeeded(), T0 + 600)
            exporter.store.commit()
            outbox = SqliteOutbox(home / "state.db")
            pending = outbox.count()
            outbox.close()
            # The root, its two stages and their three steps, or nothing.
            assert pending == (7 if on else 0)
        finally:
            if exporter.tracing is not None:
                exporter.tracing.shutdown(timeout_s=1)
            exporter.persistence.close()
