"""Task Runs: the tracker against a NICo written out from the Go handlers, and the run metrics.

The fake below is an independent yardstick (not our simulator): routes and keys from
``rest-api/api/pkg/api/handler/taskrun.go`` (NICo main) — ``GET /task/run`` and
``/task/run/{id}/target`` page (``pagination.PageRequest``), ``GET /task/run/{id}`` takes
``siteId`` and ``includeStats`` — and a v2.0 server that has none of them answers every such path
with the router's 404 body (``middleware/notfound.go``). Both serve ``GET /task/rule`` (paged;
release/v2.0 ``routes.go:945-970``, ``handler/taskrule.go:363``); ``rules=None`` is a 1.6 server,
where that GET falls to ``GET /task/{id}`` and its unknown-key 400. Assumption shared with the
client, checked against the Go code: the router 404 message is "The requested path could not be
found".
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.models import OperationRule, Task, TaskRun, TaskRunTarget
from exporter.persistence import SqlitePersistence
from exporter.runs import RunRecord, RunTracker
from exporter.state import Store
from tests.builders import (
    RACK,
    SITE,
    T0,
    report,
    rule_data,
    run_data,
    run_id,
    stage,
    step,
    target_data,
    task,
    task_data,
    tid,
)
from tests.helpers import make_client, nico_error, page
from tests.scrape import Scrape
from tests.test_metrics import World

ROUTER_404 = "The requested path could not be found"


class Nico:
    """Runs and targets served as NICo main does; ``v2`` serves none of them."""

    def __init__(self, *, v2: bool = False) -> None:
        self.v2 = v2
        self.rules: list[dict[str, Any]] | None = []
        self.runs: dict[str, dict[str, Any]] = {}
        self.targets: dict[str, list[dict[str, Any]]] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/v2/org/acme/nico")
        params = request.url.params
        self.calls[path] += 1
        if path == "/task/rule":
            if self.rules is None:
                return nico_error(400, "Unknown query parameter specified in request: pageNumber")
            return page(self.rules, total=len(self.rules), size=int(params.get("pageSize", 20)))
        if path.startswith("/task/run"):
            if self.v2:
                return nico_error(404, ROUTER_404)
            assert params["siteId"] == SITE
            parts = path.split("/")
            if path == "/task/run":
                rows = [{k: v for k, v in r.items() if k != "stats"} for r in self.runs.values()][::-1]
                return page(rows, total=len(rows), size=int(params.get("pageSize", 20)))
            run = parts[3]
            if len(parts) == 5 and parts[4] == "target":
                rows = self.targets.get(run, [])
                return page(rows, total=len(rows), size=int(params.get("pageSize", 20)))
            body = dict(self.runs[run])
            if params.get("includeStats") != "true":
                body.pop("stats", None)
            return httpx.Response(200, json=body)
        if path.startswith("/task/"):
            return httpx.Response(200, json=self.tasks[path.split("/")[2]])
        return nico_error(404, ROUTER_404)


def _tracker(nico: Nico, store: Store, clock: list[float]) -> tuple[RunTracker, list[tuple[str, str, str]]]:
    asked: list[tuple[str, str, str]] = []
    tracker = RunTracker(
        make_client(nico), store, on_task=lambda *a: asked.append(a), ttl=600, clock=lambda: clock[0]
    )
    return tracker, asked


async def test_a_server_without_task_runs_switches_the_feature_off_after_one_probe() -> None:
    nico = Nico(v2=True)
    clock = [T0]
    tracker, _ = _tracker(nico, Store(), clock)
    for _ in range(5):
        await tracker.poll_site(SITE)
        clock[0] += 15
    assert nico.calls["/task/run"] == 1  # one probe, then quiet until the recheck
    assert tracker.view().supported == ((SITE, False),)
    clock[0] += tracker.probe_interval
    await tracker.poll_site(SITE)
    assert nico.calls["/task/run"] == 2


async def test_rules_are_read_on_a_server_without_task_runs_and_kept_out_on_one_without_rules() -> None:
    nico = Nico(v2=True)
    nico.rules = [rule_data(1, "switches-first", (1, "NVSwitch"), (2, "Compute"), default=True)]
    tracker, _ = _tracker(nico, Store(), [T0])
    await tracker.poll_site(SITE)
    assert tracker.view().supported == ((SITE, False),)
    await tracker.read_rules(SITE)
    assert [rule.name for _, rule in tracker.view().rules] == ["switches-first"]
    nico.rules = None  # a server without rules (1.6): nothing named, nothing logged as an error
    await tracker.read_rules(SITE)
    assert tracker.view().rules == ()


def test_a_target_whose_ids_flow_left_unset_is_kept() -> None:
    # Go writes "" for a runId or rackId Flow left unset (model/taskrun.go:352-357).
    data = {**target_data(1, status="Pending"), "runId": "", "rackId": ""}
    target = TaskRunTarget.parse(data)
    assert (target.run_id, target.rack_id, target.task_id) == ("", "", None)


async def test_runs_are_counted_once_and_history_not_at_all(tmp_path: Path) -> None:
    nico = Nico()
    nico.runs[run_id(1)] = run_data(1, "Completed", finished=T0 - 100)  # before the baseline
    nico.runs[run_id(2)] = run_data(2, "Running")
    clock = [T0]
    store = Store(SqlitePersistence(tmp_path / "state.db"))
    tracker, _ = _tracker(nico, store, clock)
    await tracker.poll_site(SITE)
    store.commit()
    assert store.totals.runs == {}
    nico.runs[run_id(2)] = run_data(2, "CompletedWithFailures", finished=T0 + 60)
    for _ in range(3):
        clock[0] += 15
        await tracker.poll_site(SITE)
    store.commit()
    assert store.totals.runs == {(SITE, "CompletedWithFailures"): 1}
    # After a restart the state file remembers both: neither counts again.
    store.persistence.close()
    again = Store(SqlitePersistence(tmp_path / "state.db"))
    tracker, _ = _tracker(nico, again, clock)
    await tracker.poll_site(SITE)
    assert again.totals.runs == {(SITE, "CompletedWithFailures"): 1}
    assert not tracker.records  # both final before this process: nothing to fetch again


async def test_a_final_run_is_fetched_once_more_then_no_longer() -> None:
    nico = Nico()
    nico.runs[run_id(1)] = run_data(1, "Running")
    clock = [T0]
    tracker, _ = _tracker(nico, Store(), clock)
    await tracker.poll_site(SITE)
    nico.runs[run_id(1)] = run_data(1, "Completed", finished=T0 + 30, phase=2, outcomes={"completed": 6})
    for _ in range(4):
        clock[0] += 15
        await tracker.poll_site(SITE)
    assert nico.calls[f"/task/run/{run_id(1)}"] == 2  # while running, and once when final
    (_site, run, _targets) = tracker.view().runs[0]
    assert run.stats is not None and run.stats.cumulative_phase.outcome_counts.completed == 6
    clock[0] += 601  # the TTL: the final run leaves /metrics
    await tracker.poll_site(SITE)
    assert tracker.view().runs == ()


async def test_a_target_names_its_task_before_any_list_does() -> None:
    """A short run task that a capped v2.0 list never shows is still fetched by id."""
    nico = Nico()
    nico.runs[run_id(1)] = run_data(1, "Running")
    nico.targets[run_id(1)] = [
        target_data(1, status="Submitted", task=7),
        target_data(2, status="Pending"),  # not submitted yet: no task id
    ]
    store = Store()
    tracker, asked = _tracker(nico, store, [T0])
    await tracker.poll_site(SITE)
    assert asked == [(SITE, target_data(1)["rackId"], tid(7))]
    # Once the store knows the task, the target does not ask again.
    store.observe(SITE, target_data(1)["rackId"], Task.parse(task_data(7)), T0)
    asked.clear()
    await tracker.poll_site(SITE)
    assert asked == []


@pytest.mark.parametrize("status", ["Paused", "Running"])
def test_the_run_families_say_what_the_run_says(status: str) -> None:
    world = World()
    run = TaskRun.parse(
        run_data(3, status, reason="SafetyGate" if status == "Paused" else "None", phase=1, phases=4,
                 message="failure rate " + "x" * 200, outcomes={"completed": 5, "failed": 2})
    )  # fmt: skip
    targets = tuple(
        TaskRunTarget.parse(target_data(n, 3, phase=p, status=s, task=20 + n))
        for n, (p, s) in enumerate([(0, "Completed"), (0, "Failed"), (1, "Failed"), (1, "Submitted")])
    )
    world.poller.runs.records[run.id] = RunRecord(SITE, run, targets)
    scrape = world.registry()
    key = {"site_id": SITE, "run_id": run_id(3)}
    one_hot = {s["status"]: v for s, v in scrape.samples("nico_task_run_status") if s["run_id"] == run_id(3)}
    assert one_hot[status] == 1 and sum(one_hot.values()) == 1 and len(one_hot) == 8
    assert scrape.value("nico_task_run_phase", **key) == 2  # NICo's phaseIndex 1, shown from 1
    assert scrape.value("nico_task_run_phases", **key) == 4
    assert scrape.value("nico_task_run_outcomes", outcome="failed", **key) == 2
    assert scrape.value("nico_task_run_targets", status="Failed", **key) == 2
    failed = {(s["task_id"], s["phase"]) for s, _ in scrape.samples("nico_task_run_failed_target_info")}
    assert failed == {(tid(21), "1"), (tid(22), "2")}
    (reason,) = [s for s, _ in scrape.samples("nico_task_run_status_reason_info") if s["run_id"] == run_id(3)]
    assert reason["reason"] == ("SafetyGate" if status == "Paused" else "None")
    assert len(reason["message"]) <= 200  # a label value: cut to 200 characters (docs/metrics.md)


def test_a_run_task_carries_its_run_and_a_custom_layout_its_rule_name() -> None:
    world = World()
    # Task 30 ran a custom rule's layout (switches, then compute); task 31 Flow's built-in
    # firmware layout (compute, then switches), which a listed rule of the same layout cannot be
    # told apart from; task 32 a custom rule the operator made the site's default (Flow's rules
    # in the database are all operators', default or not: resolver.go, postgres.go).
    custom = report(
        stage(1, "running", step("NVSwitch", "running", T0)), stage(2, "pending", step("Compute"))
    )
    builtin = report(
        stage(1, "running", step("Compute", "running", T0)), stage(2, "pending", step("NVSwitch"))
    )
    compute_only = report(stage(1, "running", step("Compute", "running", T0)))
    world.observe(task(30, "Running", description="FirmwareUpgrade", rep=custom), T0 + 10)
    world.observe(task(31, "Running", description="FirmwareUpgrade", rep=builtin), T0 + 10)
    world.observe(task(32, "Running", description="FirmwareUpgrade", rep=compute_only), T0 + 10)
    run = TaskRun.parse(run_data(4, "Running"))
    world.poller.runs.records[run.id] = RunRecord(
        SITE, run, (TaskRunTarget.parse(target_data(1, 4, task=30)),)
    )
    world.poller.runs.rules[SITE] = (
        OperationRule.parse(rule_data(1, "fw-compute-only", (1, "Compute"), default=True)),
        OperationRule.parse(rule_data(2, "fw-switches-first", (1, "NVSwitch"), (2, "Compute"))),
        OperationRule.parse(rule_data(3, "Default Firmware", (1, "Compute"), (2, "NVSwitch"))),
    )
    publisher = world.publisher()
    first = Scrape(publisher.publish())
    info = {s["task_id"]: (s["run_id"], s["rule_name"]) for s, _ in first.samples("nico_task_info")}
    assert info == {
        tid(30): (run_id(4), "fw-switches-first"),
        tid(31): ("", ""),
        tid(32): ("", "fw-compute-only"),
    }
    # The run's target list no longer names task 30 (the run left /metrics): the label goes.
    world.poller.runs.records.clear()
    again = Scrape(publisher.publish())
    after = {s["task_id"]: s["run_id"] for s, _ in again.samples("nico_task_info")}
    assert after == {tid(30): "", tid(31): "", tid(32): ""}


def test_a_final_run_is_one_trace_and_its_tasks_link_to_their_phase() -> None:
    from opentelemetry.sdk.resources import Resource

    from exporter.facts import trace_id_int
    from exporter.operations import Operation
    from exporter.state import TaskRecord
    from exporter.tracing import SpanSettings, decode_span, encode_span, run_spans, span_id, task_spans

    run = TaskRun.parse(run_data(5, "CompletedWithFailures", phase=1, phases=2, finished=T0 + 900))
    targets = [
        TaskRunTarget.parse(target_data(n, 5, phase=p, status=s, task=40 + n))
        for n, (p, s) in enumerate([(0, "Completed"), (0, "Completed"), (1, "Failed")])
    ]
    settings = SpanSettings(Resource.create({}), run_of={tid(42): (run.id, 1)}.get)
    spans = run_spans(SITE, run, targets, settings)
    root, *phases = spans
    assert {s.context.trace_id for s in spans} == {trace_id_int(run.id)}
    assert root.parent is None and root.status.status_code.name == "ERROR"
    assert [p.name for p in phases] == ["phase 1", "phase 2"]
    assert all(p.parent is not None and p.parent.span_id == root.context.span_id for p in phases)
    assert phases[1].attributes is not None and phases[1].attributes["nico.run.targets_failed"] == 1

    record = TaskRecord(
        SITE, RACK, Task.parse(task_data(42, "Failed", finished=T0 + 800)), Operation.OTHER, T0, T0
    )
    (task_root, *_rest) = task_spans(record, settings, observed_at=T0 + 800)
    (link,) = task_root.links
    assert (link.context.trace_id, link.context.span_id) == (
        trace_id_int(run.id),
        span_id(run.id, "phase", 2),
    )
    # The outbox keeps the link through a restart.
    (again,) = decode_span(encode_span(task_root), Resource.create({})).links
    assert (again.context.trace_id, again.context.span_id) == (link.context.trace_id, link.context.span_id)


@pytest.mark.parametrize(
    "refusal",
    [
        # release/v2.0 handler/task.go:74-76: GET /task/run matches GET /task/{id}, which knows siteId only.
        "Unknown query parameter specified in request: pageNumber",
        # task.go:111-114: without extra keys, "run" is no UUID.
        "Invalid Task ID specified in URL",
    ],
)
async def test_v2_refuses_the_run_list_as_a_task_id_and_that_switches_the_feature_off(refusal: str) -> None:
    calls: Counter[str] = Counter()

    def v2(request: httpx.Request) -> httpx.Response:
        calls[request.url.path] += 1
        return nico_error(400, refusal)

    tracker = RunTracker(make_client(v2), Store(), clock=lambda: T0)
    for _ in range(3):
        await tracker.poll_site(SITE)
    assert tracker.view().supported == ((SITE, False),)
    assert sum(calls.values()) == 1
