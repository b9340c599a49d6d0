"""Cardinality: the reference 1,000-rack fleet exposes exactly the series ``fleet_series`` predicts.

The state is built as the poller builds it (``Store.observe`` / ``attribute``, the inventory in a
``Poller``) following the assumptions :class:`tools.metrics_doc.Fleet` states; one render is counted
per family. A collector change that adds series breaks the equality, and then the formula and the
figure in ``docs/metrics.md`` have to follow.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from math import gcd
from typing import Any

import httpx
import pytest

from exporter.client import NicoClient, ParseEvent, RequestEvent
from exporter.exposition import Format
from exporter.metrics import (
    FAMILIES,
    FAMILY,
    ClientMetrics,
    SeriesOptions,
    TaskMetrics,
    family_filter,
)
from exporter.models import Rack, ReportStatus, Site, Task, TaskReport, TaskStatus
from exporter.operations import Operation
from exporter.poller import Poller, RackEntry, SiteHealth
from exporter.snapshot import Publisher, Snapshot
from exporter.state import Store
from tests.scrape import Scrape
from tools.metrics_doc import CONTROLS, REFERENCE_FLEET, Fleet, Layout, busy_stage, fleet_series

NOW = 1_780_000_000.0
AGGREGATES = [f.name for f in FAMILIES if f.name == "nico_tasks" or f.name.startswith("nico_tasks_")] + [
    f.name for f in FAMILIES if f.type == "histogram"
]
DESCRIPTIONS = {
    Operation.POWER_ON: "API power on Rack",
    Operation.POWER_OFF: "API power off Rack",
    Operation.POWER_CYCLE: "API power cycle Rack",
    Operation.FORCE_POWER_OFF: "API force power off Rack",
    Operation.FORCE_POWER_CYCLE: "API force power cycle Rack",
    Operation.FIRMWARE_UPDATE: "API firmware update Rack",
    Operation.BRING_UP: "API bring up Rack",
    Operation.LEAK_DETECTION: "Leak detection on Rack",
}


def uid(kind: int, n: int) -> str:
    return f"00000000-0000-4000-{0x8000 + kind:04x}-{n:012x}"


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def fleet_report(layout: Layout, shape: TaskStatus) -> TaskReport:
    """A report of ``layout``: all done (Succeeded), failed at the busy stage, or running it."""
    busy = busy_stage(layout)
    stages = []
    for number, kinds in enumerate(layout, start=1):
        if shape is TaskStatus.SUCCEEDED or number < busy:
            status = ReportStatus.COMPLETED
        elif number == busy:
            status = ReportStatus.FAILED if shape is TaskStatus.FAILED else ReportStatus.RUNNING
        else:
            status = ReportStatus.PENDING
        times: dict[str, str] = {}
        if status is not ReportStatus.PENDING:
            times["startedAt"] = at(NOW - 900 + 60 * number).isoformat()
        if status.is_final:
            times["finishedAt"] = at(NOW - 855 + 60 * number).isoformat()
        error = {"error": "Timed out waiting for tray"} if status is ReportStatus.FAILED else {}
        steps = [{"componentType": k.value, "status": status.value, **times, **error} for k in kinds]
        stages.append({"number": number, "status": status.value, "steps": steps, **times})
    return TaskReport.parse({"version": 1, "stages": stages})


class FleetState:
    """The state of ``fleet`` at ``NOW``, wired to a collector."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.store = Store()
        self.task_metrics = TaskMetrics()
        self.store.subscribe(self.task_metrics)
        self.client_metrics = ClientMetrics()
        client = NicoClient("http://unused", "acme", transport=httpx.MockTransport(_no_io))
        self.poller = Poller(client, self.store)
        self.ops = list(fleet.layouts)
        self.reports = {
            (op, shape): fleet_report(layout, shape)
            for op, layout in fleet.layouts.items()
            for shape in (TaskStatus.RUNNING, TaskStatus.SUCCEEDED, TaskStatus.FAILED)
        }
        self._inventory()
        self._active_tasks()
        self._finished_tasks()
        self._self_metrics()
        self.store.commit()

    def site(self, rack: int) -> str:
        return uid(1, rack // self.fleet.racks_per_site)

    def _inventory(self) -> None:
        """Sites, racks and their trays' types (what discovery fills and the collector reads).

        ``RackEntry.trays`` stays empty: the collector does not read it, and 35,000 ``Tray``
        models would only slow the test down.
        """
        fleet = self.fleet
        for s in range(fleet.sites):
            site = Site(id=uid(1, s), name=f"site-{s}")
            # As the site list gives it: online (status Registered).
            self.poller.health[site.id] = SiteHealth(site, up=True, last_success=NOW - 5, online=True)
            self.poller.runs.supported[site.id] = False  # NICo v2.0: no Task Runs (the router 404)
            self.poller.runs.rules_supported[site.id] = True  # its rules were read
        kinds = [kind.value for kind, count in fleet.trays.items() for _ in range(count)]
        self.trays: dict[int, list[str]] = {}
        for r in range(fleet.racks):
            rack_id = uid(2, r)
            self.trays[r] = [uid(3, r * len(kinds) + k) for k in range(len(kinds))]
            for tray_id, kind in zip(self.trays[r], kinds, strict=True):
                self.store.learn_tray_type(tray_id, kind)
            self.poller.racks[rack_id] = RackEntry(self.site(r), Rack(id=rack_id, name=f"rack-{r}"))

    def _active_tasks(self) -> None:
        """Statuses dealt round-robin in proportion, operations changing every status cycle, racks
        filled in turn; the first task of every rack is Running, and the attributed ones."""
        fleet = self.fleet
        unit = 0
        for n in fleet.active.values():
            unit = gcd(unit, n)
        deal = [status for status, n in fleet.active.items() for _ in range(n // unit)]
        per_rack = fleet.active_tasks // fleet.racks
        assert per_rack * fleet.racks == fleet.active_tasks
        assert deal[0] is TaskStatus.RUNNING and fleet.attributed_running <= fleet.racks
        for i in range(fleet.active_tasks):
            status = deal[i % len(deal)]
            op = self.ops[(i // len(deal)) % len(self.ops)]
            rack = i // per_rack
            running = status is TaskStatus.RUNNING
            task = Task(
                id=uid(0, i),
                status=status,
                description=DESCRIPTIONS[op],
                created=at(NOW - 1000),
                started=at(NOW - 900) if running else None,
                updated=at(NOW - 30),
            )
            if running:
                task = dataclasses.replace(task, report=self.reports[(op, TaskStatus.RUNNING)])
            self.store.observe(self.site(rack), uid(2, rack), task, NOW - 30)
            if i % per_rack == 0 and rack < fleet.attributed_running:
                self.store.attribute(task.id, self.trays[rack])

    def _finished_tasks(self) -> None:
        """Failed: every ``stride``-th of the first racks' tasks, each on its own rack."""
        fleet = self.fleet
        stride = fleet.racks // fleet.failed
        failed = 0
        for j in range(fleet.finished):
            op = self.ops[j % len(self.ops)]
            rack = j % fleet.racks
            is_failed = j < fleet.racks and j % stride == 0 and failed < fleet.failed
            status = TaskStatus.FAILED if is_failed else TaskStatus.SUCCEEDED
            task = Task(
                id=uid(0, fleet.active_tasks + j),
                status=status,
                description=DESCRIPTIONS[op],
                created=at(NOW - 1000),
                started=at(NOW - 900),
                updated=at(NOW - 60),
                finished=at(NOW - 60),
                report=self.reports[(op, status)],
            )
            self.store.observe(self.site(rack), uid(2, rack), task, NOW - 30)
            if is_failed:
                if failed < fleet.attributed_failed:
                    self.store.attribute(task.id, self.trays[rack])
                failed += 1
        assert failed == fleet.failed

    def _self_metrics(self) -> None:
        for endpoint in self.fleet.endpoints:
            for code in self.fleet.codes:
                self.client_metrics.on_request(RequestEvent(endpoint, "GET", code, 0.3, 1))
        for endpoint, reason in self.fleet.parse_errors:
            self.client_metrics.on_parse_error(ParseEvent(endpoint, reason, "detail"))
        self.poller.stats.shed = dict.fromkeys(self.fleet.shed_jobs, 1)

    def publish(self, options: SeriesOptions | None = None) -> Snapshot:
        publisher = Publisher(
            self.store,
            self.poller,
            self.task_metrics,
            self.client_metrics,
            options=options or SeriesOptions(per_task_stages=self.fleet.per_task_stages),
        )
        return publisher.publish()

    def registry(self) -> Scrape:
        return Scrape(self.publish())


def _text(scrape: Scrape) -> bytes:
    return scrape.text


def _no_io(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"unexpected request {request.url}")


def count_series(exposition: str) -> tuple[dict[str, int], dict[str, int]]:
    """Samples per family (contract names) in a text exposition, and per family those with a task_id."""
    counts: Counter[str] = Counter()
    with_task_id: Counter[str] = Counter()
    family = ""
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            family = f"{name.removesuffix('_total')}_total" if kind == "counter" else name
            counts[family] += 0
        elif line and not line.startswith("#"):
            counts[family] += 1
            if 'task_id="' in line:
                with_task_id[family] += 1
    return dict(counts), dict(with_task_id)


@dataclass
class Rendered:
    state: FleetState
    counts: dict[str, int]
    with_task_id: dict[str, int]
    seconds: float


@pytest.fixture(scope="module")
def reference() -> Rendered:
    """The reference fleet, built and rendered once (about 2 s to build, 4 s to render)."""
    started = time.perf_counter()
    state = FleetState(REFERENCE_FLEET)
    exposition = _text(state.registry()).decode()
    seconds = time.perf_counter() - started
    return Rendered(state, *count_series(exposition), seconds)


def test_reference_fleet_state_is_as_described(reference: Rendered) -> None:
    fleet, store = reference.state.fleet, reference.state.store
    assert len(reference.state.poller.racks) == fleet.racks == 1_000
    assert len(store.tray_types) == fleet.racks * fleet.trays_per_rack
    statuses = Counter(r.status for r in store.records())
    finished = {TaskStatus.SUCCEEDED: fleet.finished - fleet.failed, TaskStatus.FAILED: fleet.failed}
    assert statuses == Counter({**fleet.active, **finished})
    assert {r.operation for r in store.records()} == set(fleet.layouts)
    assert (
        sum(r.trays is not None for r in store.records())
        == fleet.attributed_running + fleet.attributed_failed
    )


def test_series_match_the_formula(reference: Rendered) -> None:
    expected = fleet_series(REFERENCE_FLEET)
    # A family without series is not even declared (per-task stages are off; v2.0 has no Task Runs).
    assert set(reference.counts) == {name for name, n in expected.items() if n}
    assert {"nico_task_stage_status", "nico_task_run_info"} <= set(FAMILY) - set(reference.counts)
    assert {name: reference.counts.get(name, 0) for name in expected} == expected
    assert sum(reference.counts.values()) == sum(expected.values())
    assert reference.seconds < 30, f"building and rendering the fleet took {reference.seconds:.1f}s"


def test_no_aggregate_has_a_task_id(reference: Rendered) -> None:
    for name in AGGREGATES:
        assert reference.counts[name] > 0, name
        assert name not in reference.with_task_id, name
        assert "task_id" not in FAMILY[name].labels
    # Off or empty here: per-task stages, the failed targets of Task Runs (a v2.0 fleet has none),
    # and the learned per-task families (the reference state is a cold start).
    per_task = {f.name for f in FAMILIES if "task_id" in f.labels} - {
        "nico_task_stage_status",
        "nico_task_run_failed_target_info",
        "nico_task_overrun_ratio",
        "nico_task_overrun_info",
        "nico_task_current_stage_expected_seconds",
        "nico_task_current_stage_started_timestamp_seconds",
        "nico_task_expected_finish_timestamp_seconds",
    }
    assert set(reference.with_task_id) == per_task


SMALL_FLEET = Fleet(
    sites=2,
    racks_per_site=40,
    active={TaskStatus.RUNNING: 480, TaskStatus.PENDING: 160, TaskStatus.WAITING: 160},
    finished=160,
    failed=16,
    attributed_running=80,
    attributed_failed=8,
    codes=("200",),
    parse_errors=(),
    shed_jobs=(),
    per_task_stages=True,
)


def test_formula_holds_for_another_fleet_with_per_task_stages() -> None:
    exposition = _text(FleetState(SMALL_FLEET).registry()).decode()
    counts, _ = count_series(exposition)
    expected = fleet_series(SMALL_FLEET)
    assert expected["nico_task_stage_status"] > 0
    assert {name: counts.get(name, 0) for name in expected} == expected


@pytest.mark.parametrize("setting,change", [(c[0], c[1]) for c in CONTROLS], ids=[c[0] for c in CONTROLS])
def test_each_documented_control_saves_what_the_page_says(
    reference: Rendered, setting: str, change: dict[str, Any]
) -> None:
    """The reference fleet rendered with the setting has exactly the series the page's row claims
    (``fleet_series`` of the fleet with that change), family by family."""
    fleet = dataclasses.replace(REFERENCE_FLEET, **change)
    options = SeriesOptions(
        status_one_hot=fleet.status_one_hot, families=family_filter(fleet.allowlist, fleet.denylist)
    )
    body = reference.state.publish(options).render(Format.TEXT).decode()
    counts, _ = count_series(body)
    expected = {name: n for name, n in fleet_series(fleet).items() if n}
    assert counts == expected
    assert sum(counts.values()) < sum(reference.counts.values())


def test_current_status_only_keeps_one_series_of_value_1_per_task(reference: Rendered) -> None:
    body = reference.state.publish(SeriesOptions(status_one_hot=False)).render(Format.TEXT).decode()
    statuses: dict[str, list[str]] = {}
    for line in body.splitlines():
        if line.startswith("nico_task_status{"):
            labels, value = line.rsplit(" ", 1)
            assert float(value) == 1.0, line
            task_id = labels.split('task_id="', 1)[1].split('"', 1)[0]
            statuses.setdefault(task_id, []).append(labels.split('status="', 1)[1].split('"', 1)[0])
    records = {r.id: r.status.value for r in reference.state.store.records()}
    assert {task_id: values for task_id, values in statuses.items()} == {
        task_id: [status] for task_id, status in records.items()
    }
