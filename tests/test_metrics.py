"""The collector: every family of the contract, rendered from hand-built state, one registry per test.

State is built the way the poller builds it (``Store.observe`` / ``baseline`` / ``attribute``), the
inventory by filling a real ``Poller``'s ``health`` and ``racks``; nothing does I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.core import Metric
from prometheus_client.openmetrics import parser as om_parser
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter import __version__
from exporter.client import CallFailure, ClientHooks, NicoClient, ParseEvent, RequestEvent
from exporter.facts import failure_reason, short_error, trace_id
from exporter.learner import Learner
from exporter.metrics import (
    API_BUCKETS,
    FAMILIES,
    FAMILY,
    QUEUE_BUCKETS,
    STAGE_BUCKETS,
    STATUSES,
    TASK_BUCKETS,
    ClientMetrics,
    SeriesOptions,
    TaskMetrics,
)
from exporter.models import OperationRule, Rack, Site, Task, TaskRun, TaskRunTarget
from exporter.outbox import SenderStats
from exporter.persistence import SqlitePersistence
from exporter.poller import FinalFetch, Poller, RackEntry, SiteHealth
from exporter.runs import RunRecord
from exporter.sharding import Shard
from exporter.snapshot import Publisher
from exporter.state import Store
from tests.builders import RACK, SITE, T0, report, rule_data, run_data, stage, step, target_data, task, tid
from tests.helpers import page
from tests.scrape import Scrape

SITE_B = "44444444-4444-4444-8444-444444444444"
RACK_B = "33333333-3333-4333-8333-333333333333"
TRAY_C = "55555555-5555-4555-8555-555555555555"
TRAY_P = "66666666-6666-4666-8666-666666666666"
TRAY_X = "77777777-7777-4777-8777-777777777777"
RULE = "88888888-8888-4888-8888-888888888888"
TTL = 3600.0


# -- builders --------------------------------------------------------------------------------------


def running_power_on(n: int, **kw: Any) -> Task:
    """Power on, stage 1 (power shelves, 30 s) done, stage 2 (NVSwitch) running."""
    rep = report(
        stage(1, "completed", step("PowerShelf", "completed", T0 + 10, T0 + 40), start=T0 + 10, end=T0 + 40),
        stage(2, "running", step("NVSwitch", "running", T0 + 40), start=T0 + 40),
        stage(3, "pending", step("Compute", "pending")),
    )
    return task(n, "Running", started=T0 + 10, updated=T0 + 40, rep=rep, **kw)


def failed_power_on(n: int, error: str = "Timed out waiting for NVSwitch tray", **kw: Any) -> Task:
    """Power on that failed in stage 2 after 90 s."""
    rep = report(
        stage(1, "completed", step("PowerShelf", "completed", T0 + 10, T0 + 40), start=T0 + 10, end=T0 + 40),
        stage(2, "failed", step("NVSwitch", "failed", T0 + 40, T0 + 100, error), start=T0 + 40, end=T0 + 100),
        stage(3, "pending", step("Compute", "pending")),
    )
    return task(n, "Failed", started=T0 + 10, updated=T0 + 100, finished=T0 + 100, rep=rep, **kw)


def succeeded_power_on(n: int, **kw: Any) -> Task:
    """Power on that succeeded after 90 s, 30 s per stage."""
    rep = report(
        *(
            stage(
                number,
                "completed",
                step(kind, "completed", T0 + t, T0 + t + 30),
                start=T0 + t,
                end=T0 + t + 30,
            )
            for number, kind, t in ((1, "PowerShelf", 10), (2, "NVSwitch", 40), (3, "Compute", 70))
        )
    )
    return task(n, "Succeeded", started=T0 + 10, updated=T0 + 100, finished=T0 + 100, rep=rep, **kw)


def _no_io(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"unexpected request {request.url}")


@dataclass
class World:
    """Everything the collector reads, wired as the app wires it, with no I/O."""

    store: Store = field(default_factory=Store)
    task_metrics: TaskMetrics = field(default_factory=TaskMetrics)
    client_metrics: ClientMetrics = field(default_factory=ClientMetrics)
    spans: SenderStats = field(default_factory=SenderStats)
    poller: Poller = field(init=False)
    learner: Learner = field(init=False)

    def __post_init__(self) -> None:
        self.store.subscribe(self.task_metrics)
        self.learner = Learner(self.store, min_samples=1)
        client = NicoClient("http://unused", "acme", transport=httpx.MockTransport(_no_io))
        self.poller = Poller(client, self.store)

    def publisher(
        self, *, per_task_stages: bool = False, persistent: bool = True, **options: Any
    ) -> Publisher:
        """A publisher of this state, wired as the app wires it."""
        return Publisher(
            self.store,
            self.poller,
            self.task_metrics,
            self.client_metrics,
            spans=lambda: self.spans,
            learner=self.learner,
            options=SeriesOptions(per_task_stages=per_task_stages, **options),
            persistent=persistent,
        )

    def registry(self, *, per_task_stages: bool = False, persistent: bool = True, **options: Any) -> Scrape:
        """A scrape of a snapshot published from this state (the bytes /metrics would serve)."""
        publisher = self.publisher(per_task_stages=per_task_stages, persistent=persistent, **options)
        return Scrape(publisher.publish())

    def observe(self, t: Task, now: float, rack: str = RACK, site: str = SITE) -> None:
        self.store.observe(site, rack, t, now)
        self.store.commit()


@pytest.fixture
def world() -> World:
    return World()


def ids(n: int, rack: str = RACK, site: str = SITE) -> dict[str, str]:
    return {"site_id": site, "rack_id": rack, "task_id": tid(n)}


def samples(registry: Scrape, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name`` (a sample name, e.g. ``..._bucket``), with its labels."""
    return [(s.labels, s.value) for m in registry.collect() for s in m.samples if s.name == name]


def family_samples(registry: Scrape, family: str) -> int:
    return sum(len(m.samples) for m in registry.collect() if _contract_name(m) == family)


def _contract_name(metric: Metric) -> str:
    """The family's name as the contract writes it (counters with ``_total``)."""
    return f"{metric.name}_total" if metric.type == "counter" else metric.name


def generate_openmetrics(registry: Scrape) -> bytes:
    return registry.openmetrics()


def generate_latest(registry: Scrape) -> bytes:
    return registry.text


def parse_openmetrics(text: str) -> Iterator[Metric]:
    """Families parsed from an OpenMetrics exposition (the library's parser is untyped)."""
    families: Iterator[Metric] = om_parser.text_string_to_metric_families(text)  # type: ignore[no-untyped-call]
    return families


# -- aggregates ------------------------------------------------------------------------------------


def test_tasks_by_status_and_operation(world: World) -> None:
    world.observe(running_power_on(1), T0 + 50)
    world.observe(running_power_on(2), T0 + 50)
    world.observe(task(3, "Pending", description="API firmware update Rack"), T0 + 50)
    world.observe(task(4, "Waiting", description="API power off Rack"), T0 + 50)
    world.observe(succeeded_power_on(5), T0 + 150)
    reg = world.registry()

    def tasks(status: str, operation: str) -> float | None:
        return reg.get_sample_value("nico_tasks", {"site_id": SITE, "status": status, "operation": operation})

    assert tasks("Running", "power_on") == 2
    assert tasks("Pending", "firmware_update") == 1
    assert tasks("Waiting", "power_off") == 1
    assert tasks("Succeeded", "power_on") is None  # terminal tasks are not "now" tasks
    assert family_samples(reg, "nico_tasks") == 3


def test_finished_total_counts_each_task_once(world: World) -> None:
    world.observe(running_power_on(1), T0 + 50)
    for at in (150, 165, 180):  # the same terminal observation, polled again and again
        world.observe(succeeded_power_on(1), T0 + at)
    world.observe(failed_power_on(2), T0 + 150)
    world.observe(failed_power_on(2), T0 + 165)
    reg = world.registry()

    def finished(status: str) -> float | None:
        labels = {"site_id": SITE, "status": status, "operation": "power_on"}
        return reg.get_sample_value("nico_tasks_finished_total", labels)

    assert finished("Succeeded") == 1
    assert finished("Failed") == 1
    assert finished("Terminated") is None


def test_finished_total_continues_from_persisted_totals(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    labels = {"site_id": SITE, "status": "Succeeded", "operation": "power_on"}
    first = SqlitePersistence(path)
    before = World(store=Store(first))
    before.observe(succeeded_power_on(1), T0 + 150)
    assert before.registry().get_sample_value("nico_tasks_finished_total", labels) == 1
    first.close()

    second = SqlitePersistence(path)
    try:
        after = World(store=Store(second))
        assert after.registry().get_sample_value("nico_tasks_finished_total", labels) == 1
        after.observe(succeeded_power_on(1), T0 + 165)  # seen again after the restart: not new
        after.observe(succeeded_power_on(2), T0 + 165)
        assert after.registry().get_sample_value("nico_tasks_finished_total", labels) == 2
    finally:
        second.close()


# -- histograms ------------------------------------------------------------------------------------


def test_duration_histogram_for_a_finished_task(world: World) -> None:
    world.observe(running_power_on(1), T0 + 50)
    world.observe(succeeded_power_on(1), T0 + 150)
    world.observe(succeeded_power_on(1), T0 + 165)
    reg = world.registry()
    labels = {"site_id": SITE, "status": "Succeeded", "operation": "power_on"}
    name = "nico_task_duration_seconds"
    assert reg.get_sample_value(f"{name}_count", labels) == 1
    assert reg.get_sample_value(f"{name}_sum", labels) == 90  # started T0+10, finished T0+100
    assert reg.get_sample_value(f"{name}_bucket", {**labels, "le": "60.0"}) == 0
    assert reg.get_sample_value(f"{name}_bucket", {**labels, "le": "120.0"}) == 1
    assert reg.get_sample_value(f"{name}_bucket", {**labels, "le": "+Inf"}) == 1
    buckets = [lab["le"] for lab, _ in samples(reg, f"{name}_bucket")]
    assert buckets == [str(float(b)) for b in TASK_BUCKETS] + ["+Inf"]


def test_duration_exemplar_only_in_openmetrics(world: World) -> None:
    world.observe(succeeded_power_on(1), T0 + 150)
    reg = world.registry()
    want = uuid.UUID(tid(1)).hex
    assert trace_id(tid(1)) == want
    assert len(want) == 32

    om = generate_openmetrics(reg).decode()
    exemplars = {
        s.labels["le"]: s.exemplar
        for family in parse_openmetrics(om)
        if family.name == "nico_task_duration_seconds"
        for s in family.samples
        if s.name.endswith("_bucket") and s.exemplar is not None
    }
    assert set(exemplars) == {"120.0"}  # the bucket the observation fell in
    exemplar = exemplars["120.0"]
    assert exemplar.labels == {"trace_id": want}
    assert exemplar.value == 90
    assert exemplar.timestamp is not None
    assert float(exemplar.timestamp) == T0 + 100

    text = generate_latest(reg).decode()
    assert "{trace_id=" not in text
    assert want not in text


def test_queue_duration_observed_once(world: World) -> None:
    world.observe(task(1, "Pending"), T0 + 5)
    world.observe(task(1, "Waiting"), T0 + 20)
    world.observe(running_power_on(1), T0 + 50)  # started T0+10: waited 10 s
    world.observe(running_power_on(1), T0 + 65)
    world.observe(succeeded_power_on(1), T0 + 150)
    # A task first seen already over waited too; its wait counts once.
    world.observe(succeeded_power_on(2, created=T0 - 50), T0 + 150)
    world.observe(succeeded_power_on(2, created=T0 - 50), T0 + 165)
    reg = world.registry()
    labels = {"site_id": SITE, "operation": "power_on"}
    name = "nico_task_queue_duration_seconds"
    assert reg.get_sample_value(f"{name}_count", labels) == 2
    assert reg.get_sample_value(f"{name}_sum", labels) == 10 + 60
    assert reg.get_sample_value(f"{name}_bucket", {**labels, "le": "15.0"}) == 1
    assert reg.get_sample_value(f"{name}_bucket", {**labels, "le": "60.0"}) == 2
    buckets = [lab["le"] for lab, _ in samples(reg, f"{name}_bucket")]
    assert buckets == [str(float(b)) for b in QUEUE_BUCKETS] + ["+Inf"]


def test_queue_duration_not_observed_again_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = SqlitePersistence(path)
    before = World(store=Store(first))
    before.observe(running_power_on(1), T0 + 50)
    first.close()
    second = SqlitePersistence(path)
    try:
        after = World(store=Store(second))
        after.observe(succeeded_power_on(1), T0 + 150)
        labels = {"site_id": SITE, "operation": "power_on"}
        # The wait was observed before the restart; the process after it must not observe it again.
        before_count = before.registry().get_sample_value("nico_task_queue_duration_seconds_count", labels)
        after_count = after.registry().get_sample_value("nico_task_queue_duration_seconds_count", labels)
        assert before_count == 1
        assert after_count is None
    finally:
        second.close()


def test_queue_duration_not_observed_again_after_an_unknown_status(world: World) -> None:
    world.observe(running_power_on(1), T0 + 50)
    world.observe(task(1, "SomethingNew", started=T0 + 10), T0 + 65)  # tolerated as Unknown
    world.observe(succeeded_power_on(1), T0 + 150)
    labels = {"site_id": SITE, "operation": "power_on"}
    assert world.registry().get_sample_value("nico_task_queue_duration_seconds_count", labels) == 1


def test_stage_and_step_histograms(world: World) -> None:
    world.observe(running_power_on(1), T0 + 50)
    world.observe(running_power_on(1), T0 + 65)
    world.observe(failed_power_on(1), T0 + 150)
    reg = world.registry()

    def stage_count(number: str, status: str) -> float | None:
        labels = {"site_id": SITE, "operation": "power_on", "stage_number": number, "status": status}
        return reg.get_sample_value("nico_task_stage_duration_seconds_count", labels)

    def step_count(component: str, status: str) -> float | None:
        labels = {"site_id": SITE, "operation": "power_on", "component_type": component, "status": status}
        return reg.get_sample_value("nico_task_step_duration_seconds_count", labels)

    assert stage_count("1", "completed") == 1
    assert stage_count("2", "failed") == 1
    assert stage_count("3", "pending") is None  # never ran
    assert step_count("PowerShelf", "completed") == 1
    assert step_count("NVSwitch", "failed") == 1
    assert step_count("Compute", "pending") is None
    stage_labels = {"site_id": SITE, "operation": "power_on", "stage_number": "2", "status": "failed"}
    assert reg.get_sample_value("nico_task_stage_duration_seconds_sum", stage_labels) == 60
    step_labels = {"site_id": SITE, "operation": "power_on", "component_type": "PowerShelf"}
    assert (
        reg.get_sample_value("nico_task_step_duration_seconds_sum", {**step_labels, "status": "completed"})
        == 30
    )
    buckets = {lab["le"] for lab, _ in samples(reg, "nico_task_stage_duration_seconds_bucket")}
    assert buckets == {str(float(b)) for b in STAGE_BUCKETS} | {"+Inf"}


# -- per-task series -------------------------------------------------------------------------------


def test_task_status_is_one_hot(world: World) -> None:
    world.observe(running_power_on(1), T0 + 50)
    world.observe(failed_power_on(2), T0 + 150)
    reg = world.registry()
    for n, status in ((1, "Running"), (2, "Failed")):
        series = [
            (lab["status"], v) for lab, v in samples(reg, "nico_task_status") if lab["task_id"] == tid(n)
        ]
        assert len(series) == 7
        assert sorted(s for s, _ in series) == sorted(STATUSES)
        assert [s for s, v in series if v == 1] == [status]
        assert sum(v for _, v in series) == 1


def test_task_info_labels(world: World) -> None:
    world.observe(task(1, "Pending", description="API power cycle Rack", rule_id=RULE), T0 + 5)
    world.observe(task(2, "Pending", description="maintenance script"), T0 + 5)
    reg = world.registry()
    none = {"run_id": "", "rule_name": ""}  # no Task Run created them; no custom rule's layout
    labels = {
        **ids(1),
        "operation": "power_cycle",
        "description": "API power cycle Rack",
        "rule_id": RULE,
        **none,
    }
    assert reg.get_sample_value("nico_task_info", labels) == 1
    other = {**ids(2), "operation": "other", "description": "maintenance script", "rule_id": "", **none}
    assert reg.get_sample_value("nico_task_info", other) == 1


def test_timestamps_only_when_set(world: World) -> None:
    world.observe(task(1, "Pending", created=T0, updated=T0 + 2), T0 + 5)
    world.observe(succeeded_power_on(2), T0 + 150)
    reg = world.registry()

    def stamp(kind: str, n: int) -> float | None:
        return reg.get_sample_value(f"nico_task_{kind}_timestamp_seconds", ids(n))

    assert stamp("created", 1) == T0
    assert stamp("updated", 1) == T0 + 2
    assert stamp("started", 1) is None
    assert stamp("finished", 1) is None
    assert (stamp("created", 2), stamp("started", 2), stamp("updated", 2), stamp("finished", 2)) == (
        T0,
        T0 + 10,
        T0 + 100,
        T0 + 100,
    )


def test_current_stage_of_a_running_task(world: World) -> None:
    world.observe(running_power_on(1), T0 + 50)
    world.observe(task(2, "Pending"), T0 + 50)
    world.observe(succeeded_power_on(3), T0 + 150)
    reg = world.registry()
    assert reg.get_sample_value("nico_task_current_stage", ids(1)) == 2
    assert reg.get_sample_value("nico_task_current_stage", ids(2)) is None
    assert reg.get_sample_value("nico_task_current_stage", ids(3)) is None


def test_failure_info_for_a_failed_task(world: World) -> None:
    world.observe(failed_power_on(1), T0 + 150)
    world.observe(succeeded_power_on(2), T0 + 150)
    reg = world.registry()
    labels = {
        **ids(1),
        "operation": "power_on",
        "stage_number": "2",
        "component_type": "NVSwitch",
        "reason": "timeout",
        "error": "Timed out waiting for NVSwitch tray",
    }
    assert reg.get_sample_value("nico_task_failure_info", labels) == 1
    assert [lab["task_id"] for lab, _ in samples(reg, "nico_task_failure_info")] == [tid(1)]


def test_failure_info_error_is_cut_to_200_characters(world: World) -> None:
    long_error = "firmware flash failed: " + "é" * 300
    world.observe(failed_power_on(1, error=long_error), T0 + 150)
    [(labels, value)] = samples(world.registry(), "nico_task_failure_info")
    assert value == 1
    assert len(labels["error"]) == 200 and labels["error"].endswith("é…")
    assert labels["error"] == short_error(long_error)
    assert labels["error"].startswith("firmware flash failed: éé")
    assert labels["reason"] == "firmware"  # from the whole error, not the cut one


def test_failure_info_without_a_report_uses_the_message(world: World) -> None:
    world.observe(
        task(1, "Failed", started=T0 + 1, finished=T0 + 9, message="BMC unreachable:\nno route to host"),
        T0 + 10,
    )
    [(labels, _)] = samples(world.registry(), "nico_task_failure_info")
    assert (labels["stage_number"], labels["component_type"]) == ("", "unknown")
    assert labels["reason"] == "unreachable"
    assert labels["error"] == "BMC unreachable: no route to host"  # one line


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("", "unknown"),
        ("task expired: queue timeout", "expired"),
        ("Timed out waiting for tray", "timeout"),
        ("context deadline exceeded", "timeout"),
        ("connection refused", "unreachable"),
        ("403 Forbidden", "auth"),
        ("Leak detected in CDU", "leak"),
        ("checksum mismatch on image", "firmware"),
        ("power shelf reported fault", "power"),
        ("something else", "error"),
    ],
)
def test_failure_reason(error: str, reason: str) -> None:
    assert failure_reason(error) == reason


def test_per_task_series_expire_and_aggregates_stay(world: World) -> None:
    world.observe(running_power_on(1), T0 + 50)
    world.observe(failed_power_on(1), T0 + 150)
    world.observe(running_power_on(2), T0 + 150)
    world.store.expire(T0 + 150 + TTL - 1)
    reg = world.registry()
    assert (
        reg.get_sample_value(
            "nico_task_info",
            {
                **ids(1),
                "operation": "power_on",
                "description": "API power on Rack",
                "rule_id": "",
                "run_id": "",
                "rule_name": "",
            },
        )
        == 1
    )

    world.store.expire(T0 + 150 + TTL)
    reg = world.registry()
    per_task = [f.name for f in FAMILIES if "task_id" in f.labels]
    for name in per_task:
        assert all(lab["task_id"] != tid(1) for lab, _ in samples(reg, name)), name
    assert reg.get_sample_value("nico_task_status", {**ids(2), "status": "Running"}) == 1  # still active
    finished = {"site_id": SITE, "status": "Failed", "operation": "power_on"}
    assert reg.get_sample_value("nico_tasks_finished_total", finished) == 1
    assert reg.get_sample_value("nico_task_duration_seconds_count", finished) == 1
    assert reg.get_sample_value("nico_exporter_tracked_tasks") == 1


def test_stage_status_only_with_per_task_stages(world: World) -> None:
    world.observe(running_power_on(1), T0 + 50)
    assert family_samples(world.registry(), "nico_task_stage_status") == 0
    assert "nico_task_stage_status" not in generate_latest(world.registry()).decode()
    reg = world.registry(per_task_stages=True)
    for number, status in (("1", "completed"), ("2", "running"), ("3", "pending")):
        labels = {**ids(1), "stage_number": number, "status": status}
        assert reg.get_sample_value("nico_task_stage_status", labels) == 1
    assert family_samples(reg, "nico_task_stage_status") == 3


# -- trays -----------------------------------------------------------------------------------------


def test_tray_tasks_and_failures(world: World) -> None:
    world.store.tray_types.update({TRAY_C: "Compute", TRAY_P: "PowerShelf", TRAY_X: "NVSwitch"})
    world.observe(running_power_on(1), T0 + 50)
    world.store.attribute(tid(1), [TRAY_C, TRAY_P])
    world.observe(task(2, "Pending"), T0 + 50)
    world.store.attribute(tid(2), [TRAY_C])
    world.observe(task(3, "Running", started=T0), T0 + 50)  # trays not known yet: no tray series
    world.observe(failed_power_on(4), T0 + 150)
    world.store.attribute(tid(4), [TRAY_P, TRAY_X])  # attributed after it finished: counted then
    world.store.attribute(tid(4), [TRAY_C])  # a task's trays are settled once
    world.observe(failed_power_on(4), T0 + 165)
    reg = world.registry()

    def tray_tasks(tray: str, kind: str, status: str) -> float | None:
        labels = {"site_id": SITE, "rack_id": RACK, "tray_id": tray, "tray_type": kind, "status": status}
        return reg.get_sample_value("nico_tray_tasks", labels)

    assert tray_tasks(TRAY_C, "Compute", "Running") == 1
    assert tray_tasks(TRAY_C, "Compute", "Pending") == 1
    assert tray_tasks(TRAY_P, "PowerShelf", "Running") == 1
    assert family_samples(reg, "nico_tray_tasks") == 3

    def failures(tray: str, kind: str) -> float | None:
        labels = {"site_id": SITE, "rack_id": RACK, "tray_id": tray, "tray_type": kind}
        return reg.get_sample_value("nico_tray_task_failures_total", labels)

    assert failures(TRAY_X, "NVSwitch") == 1  # its NVSwitch step failed
    assert failures(TRAY_P, "PowerShelf") is None  # a target, but its step had completed
    assert failures(TRAY_C, "Compute") is None


# -- inventory -------------------------------------------------------------------------------------


def fill_inventory(world: World) -> None:
    site = Site.parse({"id": SITE, "name": "Santa Clara", "capabilities": {"flow": True}})
    down = Site.parse({"id": SITE_B, "name": "Austin"})
    world.poller.health = {
        SITE: SiteHealth(site, up=True, last_success=T0 + 15, online=True),
        SITE_B: SiteHealth(down, up=False, last_error="connection refused", online=False),
    }
    world.poller.racks = {
        RACK: RackEntry(SITE, Rack.parse({"id": RACK, "name": "rack-a01"})),
        RACK_B: RackEntry(SITE, Rack.parse({"id": RACK_B, "name": "rack-a02"})),
        tid(99): RackEntry(SITE_B, Rack.parse({"id": tid(99), "name": "rack-b01"})),
    }


def test_site_and_rack_inventory(world: World) -> None:
    fill_inventory(world)
    reg = world.registry()
    assert reg.get_sample_value("nico_site_info", {"site_id": SITE, "site_name": "Santa Clara"}) == 1
    assert reg.get_sample_value("nico_site_info", {"site_id": SITE_B, "site_name": "Austin"}) == 1
    rack = {"site_id": SITE, "rack_id": RACK_B, "rack_name": "rack-a02"}
    assert reg.get_sample_value("nico_rack_info", rack) == 1
    assert family_samples(reg, "nico_rack_info") == 3
    assert reg.get_sample_value("nico_site_up", {"site_id": SITE}) == 1
    assert reg.get_sample_value("nico_site_up", {"site_id": SITE_B}) == 0
    last = "nico_exporter_last_successful_poll_timestamp_seconds"
    assert reg.get_sample_value(last, {"site_id": SITE}) == T0 + 15
    assert reg.get_sample_value(last, {"site_id": SITE_B}) is None  # never polled successfully
    assert reg.get_sample_value("nico_exporter_racks", {"site_id": SITE}) == 2
    assert reg.get_sample_value("nico_exporter_racks", {"site_id": SITE_B}) == 1


# -- self-metrics ----------------------------------------------------------------------------------


def test_api_self_metrics_from_client_hooks(world: World) -> None:
    c = world.client_metrics
    c.on_request(RequestEvent("/site", "GET", "200", 0.2, 1))
    c.on_request(RequestEvent("/site", "GET", "200", 0.3, 1))
    c.on_request(RequestEvent("/rack/{id}/task", "GET", "429", 7.0, 1))
    c.on_request(RequestEvent("/rack/{id}/task", "GET", "timeout", 30.0, 2))
    c.on_parse_error(ParseEvent("/rack/{id}/task", "unknown_status", "status='Paused'"))
    c.on_parse_error(ParseEvent("/rack/{id}/task", "unknown_status", "status='Paused'"))
    reg = world.registry()
    requests = "nico_exporter_api_requests_total"
    assert reg.get_sample_value(requests, {"endpoint": "/site", "code": "200"}) == 2
    assert reg.get_sample_value(requests, {"endpoint": "/rack/{id}/task", "code": "429"}) == 1
    assert reg.get_sample_value(requests, {"endpoint": "/rack/{id}/task", "code": "timeout"}) == 1
    duration = "nico_exporter_api_request_duration_seconds"
    assert reg.get_sample_value(f"{duration}_count", {"endpoint": "/site"}) == 2
    assert reg.get_sample_value(f"{duration}_sum", {"endpoint": "/site"}) == pytest.approx(0.5)
    assert reg.get_sample_value(f"{duration}_bucket", {"endpoint": "/site", "le": "0.25"}) == 1
    assert reg.get_sample_value(f"{duration}_bucket", {"endpoint": "/rack/{id}/task", "le": "10.0"}) == 1
    buckets = [lab["le"] for lab, _ in samples(reg, f"{duration}_bucket") if lab["endpoint"] == "/site"]
    assert buckets == [str(float(b)) for b in API_BUCKETS] + ["+Inf"]
    parse = {"endpoint": "/rack/{id}/task", "reason": "unknown_status"}
    assert reg.get_sample_value("nico_exporter_parse_errors_total", parse) == 2


async def test_api_self_metrics_from_a_real_client() -> None:
    world = World()
    seen: list[RequestEvent] = []

    def on_request(event: RequestEvent) -> None:
        seen.append(event)
        world.client_metrics.on_request(event)

    site = {"id": SITE, "name": "s", "capabilities": {"flow": True}, "status": "Mystery"}
    client = NicoClient(
        "http://nico.test",
        "acme",
        transport=httpx.MockTransport(lambda request: page([site], total=1)),
        hooks=ClientHooks(on_request=on_request, on_parse_error=world.client_metrics.on_parse_error),
        max_requests_per_second=0,
    )
    async with client:
        listing = await client.list_sites()
    assert [s.id for s in listing.items] == [SITE]
    [event] = seen
    reg = world.registry()
    labels = {"endpoint": event.endpoint, "code": "200"}
    assert reg.get_sample_value("nico_exporter_api_requests_total", labels) == 1
    count = reg.get_sample_value(
        "nico_exporter_api_request_duration_seconds_count", {"endpoint": event.endpoint}
    )
    assert count == 1


def test_poller_store_and_span_self_metrics(world: World) -> None:
    p = world.poller
    p.ready = True
    p.shard = Shard(1, 3)
    p.stats.shed = {"discovery": 2, "reconcile": 1}
    p.stats.freshness_shortfall_seconds = 12.5
    p.stats.required_rps = 7.25
    p.stats.last_cycle_seconds = 3.5
    p.final_fetches = {tid(7): FinalFetch(SITE, RACK), tid(8): FinalFetch(SITE, RACK)}
    world.observe(running_power_on(1), T0 + 50)
    world.observe(task(9, "Running", started=T0), T0 + 50)
    world.store.vanish(tid(9), T0 + 60)
    world.spans = SenderStats(exported=40, errors=3, resent=2, pending=6)
    reg = world.registry(persistent=False)
    expected = {
        "nico_exporter_ready": 1,
        "nico_exporter_shard": 1,
        "nico_exporter_total_shards": 3,
        "nico_exporter_freshness_shortfall_seconds": 12.5,
        "nico_exporter_budget_required_requests_per_second": 7.25,
        "nico_exporter_budget_requests_per_second": 10,  # the client's default budget
        "nico_exporter_active_poll_cycle_seconds": 3.5,
        "nico_exporter_final_fetch_queue": 2,
        "nico_exporter_tracked_tasks": 1,
        "nico_exporter_tasks_vanished_total": 1,
        "nico_exporter_spans_exported_total": 40,
        "nico_exporter_span_export_errors_total": 3,
        "nico_exporter_spans_resent_total": 2,
        "nico_exporter_spans_pending": 6,
        "nico_exporter_spans_dropped_total": 0,
        "nico_exporter_state_write_errors_total": 0,
        "nico_exporter_state_pending_writes": 0,
        "nico_exporter_state_persistent": 0,
    }
    assert {name: reg.get_sample_value(name) for name in expected} == expected
    assert reg.get_sample_value("nico_exporter_jobs_shed_total", {"poll_job": "discovery"}) == 2
    assert reg.get_sample_value("nico_exporter_jobs_shed_total", {"poll_job": "reconcile"}) == 1


def test_build_info(world: World) -> None:
    reg = world.registry()
    assert reg.get_sample_value("nico_exporter_build_info", {"version": __version__}) == 1
    assert family_samples(reg, "nico_exporter_build_info") == 1


# -- exposition ------------------------------------------------------------------------------------

NASTY_DESCRIPTION = 'API power on Rack "A\\B"\nsecond line — Zürich 機架 ✓'
NASTY_ERROR = 'BMC said "no": C:\\bmc\\log\nline two\ttabbed — ñ 失败'
NASTY_SITE_NAME = 'Site "West"\\1\nÅ'


def nasty_world() -> World:
    world = World()
    world.observe(task(1, "Pending", description=NASTY_DESCRIPTION), T0 + 5)
    world.observe(failed_power_on(2, error=NASTY_ERROR, description=NASTY_DESCRIPTION), T0 + 150)
    world.poller.health = {SITE: SiteHealth(Site.parse({"id": SITE, "name": NASTY_SITE_NAME}), up=True)}
    return world


def _labels_of(families: Iterator[Any], sample_name: str) -> list[dict[str, str]]:
    return [s.labels for f in families for s in f.samples if s.name == sample_name]


@pytest.mark.parametrize(
    ("render", "parse"),
    [(generate_latest, parse_text), (generate_openmetrics, parse_openmetrics)],
    ids=["text-0.0.4", "openmetrics"],
)
def test_awkward_label_values_round_trip(render: Any, parse: Any) -> None:
    world = nasty_world()
    scrape = world.registry(per_task_stages=True)
    exposition = render(scrape).decode("utf-8")
    infos = _labels_of(parse(exposition), "nico_task_info")
    assert sorted(i["description"] for i in infos) == [NASTY_DESCRIPTION, NASTY_DESCRIPTION]
    [failure] = _labels_of(parse(exposition), "nico_task_failure_info")
    assert failure["error"] == short_error(NASTY_ERROR)
    assert "\n" not in failure["error"]
    assert failure["error"].startswith('BMC said "no": C:\\bmc\\log line two tabbed')
    [site] = _labels_of(parse(exposition), "nico_site_info")
    assert site["site_name"] == NASTY_SITE_NAME
    # Every sample survives the trip with its value.
    parsed = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in parse(exposition) for s in f.samples
    }
    # ... and both formats carry the same samples (the text one parsed as the reference).
    rendered = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for m in scrape.collect() for s in m.samples
    }
    assert parsed == rendered


# -- the contract ----------------------------------------------------------------------------------


def populated_world() -> World:
    """A state in which every family has at least one sample."""
    world = World()
    fill_inventory(world)
    world.store.tray_types.update({TRAY_C: "Compute", TRAY_P: "PowerShelf", TRAY_X: "NVSwitch"})
    world.observe(task(1, "Pending", description="API firmware update Rack", rule_id=RULE), T0 + 5)
    world.observe(running_power_on(2), T0 + 50)
    world.store.attribute(tid(2), [TRAY_C])
    world.observe(running_power_on(3), T0 + 50)
    world.observe(failed_power_on(3), T0 + 150)
    world.store.attribute(tid(3), [TRAY_P, TRAY_X])
    world.observe(succeeded_power_on(4), T0 + 150)
    world.client_metrics.on_request(RequestEvent("/site", "GET", "200", 0.1, 1))
    world.client_metrics.on_parse_error(ParseEvent("/site", "invalid_site", "id"))
    world.client_metrics.on_failure(CallFailure("/rack/{id}/task", SITE_B, "nico", "timeout"))
    world.client_metrics.on_failure(CallFailure("/rack/{id}/task", SITE, "exporter", "budget"))
    world.poller.stats.shed = {"reconcile": 1}
    world.spans = SenderStats(exported=5)
    fill_runs(world)
    return world


def fill_runs(world: World) -> None:
    """A paused run (its safety gate tripped in phase 2 of 3, one rack failed), a finished one, rules."""
    runs = world.poller.runs
    runs.supported = {SITE: True, SITE_B: False}
    runs.rules_supported = {SITE: True, SITE_B: False}
    paused = TaskRun.parse(
        run_data(1, "Paused", reason="SafetyGate", message="failure rate 0.5 above 0.2", phase=1,
                 outcomes={"completed": 3, "failed": 1})
    )  # fmt: skip
    targets = tuple(
        TaskRunTarget.parse(t)
        for t in (
            target_data(1, phase=0, status="Completed", task=11),
            target_data(2, phase=1, status="Failed", task=12),
            target_data(3, phase=1, status="Submitted", task=13),
        )
    )
    runs.records[paused.id] = RunRecord(SITE, paused, targets)
    done = TaskRun.parse(run_data(2, "Completed", phase=2, finished=T0 + 600, outcomes={"completed": 6}))
    runs.records[done.id] = RunRecord(SITE, done, (), final_seen_at=T0 + 610)
    world.store.run_baseline(SITE, T0)
    world.store.run_finished(SITE, done.id, done.status.value, T0 + 600)
    runs.rules[SITE] = (
        OperationRule.parse(rule_data(1, "default-fw", (1, "Compute"), default=True)),
        OperationRule.parse(rule_data(2, "fw-switches-first", (1, "NVSwitch"), (2, "Compute"))),
    )


def test_every_emitted_family_is_in_the_contract() -> None:
    reg = populated_world().registry(per_task_stages=True)
    emitted: dict[str, Metric] = {}
    for metric in reg.collect():
        name = _contract_name(metric)
        assert name not in emitted, f"{name} emitted twice"
        emitted[name] = metric
        assert name in FAMILY, f"{name} is not in FAMILIES"
        family = FAMILY[name]
        assert metric.type == family.type, name
        assert metric.documentation == family.help, name
        for sample in metric.samples:
            labels = tuple(k for k in sample.labels if k != "le")
            assert labels == family.labels, (name, sample)
    missing_samples = [name for name, m in emitted.items() if not m.samples]
    assert missing_samples == []
    assert sorted(emitted) == sorted(FAMILY)


def test_families_are_listed_once_with_the_prefix() -> None:
    names = [f.name for f in FAMILIES]
    assert len(names) == len(set(names))
    assert all(name.startswith("nico_") for name in names)
    assert all(f.type in ("gauge", "counter", "histogram") for f in FAMILIES)
    assert all(f.name.endswith("_total") == (f.type == "counter") for f in FAMILIES)
    aggregates = [
        f.name for f in FAMILIES if f.type in ("counter", "histogram") and "rack_id" not in f.labels
    ]
    assert all("task_id" not in FAMILY[name].labels for name in aggregates)


def test_openmetrics_exposition_of_a_populated_state_parses() -> None:
    reg = populated_world().registry(per_task_stages=True)
    families = {f.name for f in parse_openmetrics(generate_openmetrics(reg).decode())}
    assert families == {f.name.removesuffix("_total") for f in FAMILIES}
