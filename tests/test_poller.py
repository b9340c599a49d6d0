"""The polling engine against the simulator, in accelerated simulated time, on both kinds of server.

The yardstick is the simulator's ground truth. Every task that became terminal after the
exporter's baseline is accounted for exactly once: counted finished with its status and
operation if any list could show it, else (NICo v2.0 lists stop at 20 rows) counted in
``nico_tasks_unobserved_total``. A task missed that way must have lived shorter than the gap
between two polls of its rack; nothing is counted twice, whatever the traffic, faults, list
order and restarts.

``server`` is ``v2.0`` (task lists refuse paging: the default simulator) or ``paged`` (task lists
page as the OpenAPI spec says; no released NICo does, but a client must serve both).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from exporter.errors import BadPayload
from exporter.models import ComponentType
from exporter.persistence import SqlitePersistence, open_state
from exporter.poller import NOT_ON_SITE_ATTEMPTS, Intervals
from exporter.sharding import Shard
from exporter.simulator import ScenarioConfig, Simulation
from exporter.simulator.clock import ManualClock
from exporter.state import Kind
from tests.pollharness import DiesBeforeCommit, Harness, KilledError, expected_finished, simulation

QUICK_STAGES = {"power": (1.0, 3.0), "firmware": (2.0, 4.0), "bring_up": (2.0, 4.0)}
SERVERS = ("v2.0", "paged")


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def sim_for(server: str, scenario: ScenarioConfig, **config: Any) -> tuple[Simulation, ManualClock]:
    return simulation(scenario, task_list_paging=server == "paged", **config)


def busy(seed: int = 3, **overrides: Any) -> ScenarioConfig:
    """Four racks with a submission every ~5 minutes each, failures, cancels, tray-scoped tasks,
    leaks, and a history of finished tasks longer than one list shows."""
    values: dict[str, Any] = {
        "seed": seed,
        "sites": 1,
        "racks_per_site": 4,
        "arrivals_per_rack_per_hour": 12,
        "failure_rate": 0.1,
        "cancel_rate": 0.1,
        "history_hours": 1,
        "history_tasks_per_rack": (30, 80),
        "horizon_hours": 1.5,
    }
    values.update(overrides)
    return ScenarioConfig(**values)


def lifetime(sim: Simulation) -> dict[str, float]:
    return {t.id: (t.finished - t.created).total_seconds() for t in sim.truth() if t.finished is not None}


def assert_counted_once(
    h: Harness, *, since: float | None = None, extra: list[str] | None = None, unobserved: int | None = None
) -> dict[str, str]:
    """Each finished task counted once by name with its status, or else once as unobserved.

    ``extra``: ids counted by an earlier exporter on the same state file; ``unobserved``: the
    unobserved total to check (default: this harness's store).
    """
    assert h.started_at is not None
    expected = expected_finished(h.sim, h.started_at if since is None else since)
    got = (extra or []) + h.finished_ids()
    doubled = [tid for tid, n in Counter(got).items() if n > 1]
    assert not doubled, f"counted twice: {doubled[:5]}"
    assert set(got) <= set(expected), f"counted but not finished: {sorted(set(got) - set(expected))[:5]}"
    statuses = {t.record.id: t.record.status.value for t in h.transitions if t.kind is Kind.FINISHED}
    assert all(expected[tid] == status for tid, status in statuses.items())
    missed = set(expected) - set(got)
    counted_unobserved = sum(h.store.totals.unobserved.values()) if unobserved is None else unobserved
    assert counted_unobserved == len(missed), f"{len(missed)} missed, {counted_unobserved} counted unobserved"
    # Only a task that lived less than two poll gaps can have escaped every list.
    lives = lifetime(h.sim)
    limit = 2 * h.intervals.active + 5
    assert all(lives[tid] < limit for tid in missed), sorted(lives[tid] for tid in missed)[-3:]
    return expected


async def test_mixed_traffic_every_finished_task_once_with_its_operation_and_trays(server: str) -> None:
    sim, clock = sim_for(server, busy())
    h = Harness(sim, clock)
    await h.run(3 * 3600, step=2)
    expected = assert_counted_once(h)
    assert len(expected) > 30 and {"Succeeded", "Failed", "Terminated"} <= set(expected.values())
    truth = {t.id: t for t in sim.truth()}
    tray_type = {t.id: t.type for s in sim.flow_site_ids() for t in sim.trays(s)}
    finished = [t.record for t in h.transitions if t.kind is Kind.FINISHED]
    assert all(r.operation.value == truth[r.id].operation for r in finished)
    attributed = [r for r in finished if r.trays]
    assert len(attributed) > 0.8 * len(finished)
    for record in attributed:
        # The trays the task's rule operates on: a rack firmware update targets the power
        # shelves too, but the default rule has no step for them, so they are not its trays.
        assert record.task.report is not None
        kinds = {step.component_type for stage in record.task.report.stages for step in stage.steps}
        operated = frozenset(t for t in truth[record.id].tray_ids if tray_type[t] in kinds)
        assert record.trays == operated, record.task.description
    # Tray attribution reads only active tray lists (v2.0: every other list is 20 old rows).
    tray_calls = [r for r in h.requests if r.endpoint == "/tray/{id}/task"]
    assert tray_calls
    await h.close()


async def test_tasks_shorter_than_a_poll_are_counted_once(server: str) -> None:
    scenario = busy(seed=5, stage_seconds=QUICK_STAGES, arrivals_per_rack_per_hour=20)
    sim, clock = sim_for(server, scenario)
    h = Harness(sim, clock)
    await h.run(2.5 * 3600, step=1)
    assert_counted_once(h)
    unobserved = sum(h.store.totals.unobserved.values())
    if server == "paged":
        # Named by listing the rack, only when its creation counter had something to explain.
        assert unobserved == 0 and h.poller.stats.full_listings > 4
        assert h.poller.stats.full_listings < h.poller.stats.total_reads / 10
    else:
        assert unobserved > 3 and h.poller.stats.full_listings == 0
    await h.close()


async def test_list_order_that_changes_on_every_request_loses_and_doubles_nothing(server: str) -> None:
    """Lists in a new random order on every request: rows name old and new tasks at random."""
    scenario = busy(seed=7, racks_per_site=2, arrivals_per_rack_per_hour=30, stage_seconds=QUICK_STAGES)
    sim, clock = sim_for(server, scenario, list_order="shuffle")
    h = Harness(sim, clock)
    await h.run(2 * 3600, step=3)
    assert_counted_once(h)
    await h.close()


async def test_a_long_history_is_never_listed_again_for_nothing() -> None:
    """50 to 500 finished tasks per rack: on v2.0 no list beyond one call per rack poll."""
    sim, clock = simulation(busy(seed=31, history_tasks_per_rack=(50, 500), arrivals_per_rack_per_hour=6))
    h = Harness(sim, clock)
    await h.run(3600, step=2)
    assert_counted_once(h)
    stats = h.poller.stats
    assert stats.full_listings == 0
    rack_calls = sum(1 for r in h.requests if r.endpoint == "/rack/{id}/task" and r.code == "200")
    assert rack_calls <= stats.total_reads + stats.active_lists
    # About one call per rack poll: a counter read on an idle rack, the active list on a busy one.
    assert rack_calls < 1.3 * stats.rack_polls
    # Every rack polled once per active interval, on its own schedule.
    assert stats.rack_polls == pytest.approx(len(h.poller.racks) * 3600 / h.intervals.active, rel=0.05)
    await h.close()


async def test_more_than_20_active_tasks_on_a_rack_are_all_followed() -> None:
    sim, clock = simulation(ScenarioConfig.quiet(sites=1, racks_per_site=1))
    site = sim.flow_site_ids()[0]
    rack = sim.racks(site)[0].id
    trays = [t.id for t in sim.trays(site, rack) if t.type is not ComponentType.POWERSHELF]
    h = Harness(sim, clock)
    await h.start()
    # 27 tray tasks on disjoint trays all run at once (conflict.go: no overlap, no power shelf).
    ids = [sim.create_task(site, rack, "power_on", tray_ids=[t], stage_seconds=300) for t in trays]
    await h.run(130, step=1)
    assert set(ids) <= set(h.store.active_ids(rack))  # the 7 a list did not show were found
    assert h.poller.stats.followed > 0 and h.poller.stats.tray_scans > 0
    await h.run(900, step=1)
    assert sorted(h.finished_ids()) == sorted(ids)
    assert sum(h.store.totals.unobserved.values()) == 0
    await h.close()


async def test_waiting_tasks_expire_to_terminated_and_count_once() -> None:
    sim, clock = simulation(ScenarioConfig.quiet(sites=1, racks_per_site=1), leak_queue_timeout_s=600)
    site = sim.flow_site_ids()[0]
    rack = sim.racks(site)[0].id
    tray = next(t.id for t in sim.trays(site, rack) if t.type is ComponentType.COMPUTE)
    h = Harness(sim, clock)
    await h.start()
    blocker = sim.create_task(site, rack, "firmware_update", outcome="stuck")
    queued = [
        sim.create_task(site, rack, "leak_detection", tray_ids=[tray], source="leak_detection")
        for _ in range(3)
    ]
    await h.run(1200, step=5)  # expiry lands at the promoter's sweep, up to 5 minutes late
    assert set(h.finished_ids()) == set(queued)
    for tid in queued:
        record = h.store.tasks[tid]
        assert record.status.value == "Terminated" and record.task.message == "Expired: queue timeout reached"
        assert record.operation.value == "leak_detection"
    assert blocker in h.store.active_ids(rack)
    await h.close()


async def test_a_task_its_site_no_longer_has_is_recorded_as_vanished_not_counted() -> None:
    sim, clock = simulation(ScenarioConfig.quiet(sites=1, racks_per_site=1))
    site = sim.flow_site_ids()[0]
    rack = sim.racks(site)[0].id
    h = Harness(sim, clock)
    await h.start()
    task_id = sim.create_task(site, rack, "power_on", stage_seconds=20)
    await h.run(30, step=1)
    assert task_id in h.store.active_ids(rack)
    clock.advance(120)  # it finishes between polls...
    sim.forget_task(task_id)  # ...and a restored Flow database no longer has it
    await h.run(300, step=1)
    kinds = [t.kind for t in h.transitions if t.record.id == task_id]
    assert Kind.VANISHED in kinds and Kind.FINISHED not in kinds
    assert h.store.vanished == 1 and task_id not in h.poller.final_fetches
    no_rows = [r for r in h.requests if r.endpoint == "/task/{id}" and r.code == "500"]
    assert len(no_rows) == NOT_ON_SITE_ATTEMPTS  # asked a few times, not forever
    assert sum(h.store.totals.tasks.values()) == 0
    await h.close()


async def test_a_site_that_goes_away_and_comes_back_loses_nothing(server: str) -> None:
    sim, clock = sim_for(server, busy(seed=11, sites=2, racks_per_site=2))
    gone = sim.flow_site_ids()[1]
    h = Harness(sim, clock, intervals=Intervals(active=15, tray_attribution=60, reconcile=120, discovery=60))
    await h.run(1200, step=2)
    sim.remove_site(gone)
    await h.run(1200, step=2)
    assert gone not in h.poller.health
    assert all(e.site_id != gone for e in h.poller.racks.values())
    assert all(r.site_id != gone for r in h.store.records())
    sim.restore_site(gone)
    await h.run(3 * 3600, step=2)
    assert gone in h.poller.health
    # Tasks that finished while the site was away were never seen: v2.0 counts them unobserved,
    # whatever their length (the two-poll-gap rule does not apply to an outage of the site).
    expected = expected_finished(sim, h.started_at or 0)
    got = h.finished_ids()
    assert len(got) == len(set(got)) and set(got) <= set(expected)
    assert len(expected) - len(got) == sum(h.store.totals.unobserved.values())
    await h.close()


async def test_injected_api_faults_lose_and_double_nothing(server: str) -> None:
    sim, clock = sim_for(server, busy(seed=13))
    sim.configure_faults({"error_5xx": 0.1, "truncated_json": 0.05, "bad_pagination": 0.05, "seed": 4})
    h = Harness(sim, clock, intervals=Intervals(active=15, tray_attribution=60, reconcile=120, discovery=300))
    await h.run(3600, step=2)
    sim.configure_faults({"error_5xx": 0.0, "truncated_json": 0.0, "bad_pagination": 0.0})
    await h.run(2 * 3600, step=2)
    expected = expected_finished(sim, h.started_at or 0)
    got = h.finished_ids()
    assert len(got) == len(set(got)) and set(got) <= set(expected)
    assert len(expected) - len(got) == sum(h.store.totals.unobserved.values())
    failed = sum(1 for r in h.requests if r.code in ("500", "503"))
    assert failed > 20  # the faults really happened
    await h.close()


async def test_restart_from_the_state_file_mid_run(tmp_path: Path, server: str) -> None:
    sim, clock = sim_for(server, busy(seed=17))
    db = tmp_path / "state.db"
    first = Harness(sim, clock, persistence=SqlitePersistence(db))
    await first.run(5400, step=2)
    first_ids = first.finished_ids()
    started = first.started_at
    assert started is not None
    await first.close()
    second = Harness(sim, clock, persistence=SqlitePersistence(db))
    await second.run(2 * 3600, step=2)
    both = first_ids + second.finished_ids()
    expected = expected_finished(sim, started)
    assert not [tid for tid, n in Counter(both).items() if n > 1]
    assert set(both) <= set(expected)
    # The totals continue across the restart instead of starting over, and add up.
    assert sum(second.store.totals.tasks.values()) == len(set(both))
    assert sum(second.store.totals.unobserved.values()) == len(expected) - len(set(both))
    await second.close()


@pytest.mark.parametrize(("survive", "kind"), [(3, "v2.0"), (60, "v2.0"), (250, "v2.0"), (60, "paged")])
async def test_a_kill_at_any_moment_then_a_restart_counts_each_task_once(
    tmp_path: Path, survive: int, kind: str
) -> None:
    sim, clock = sim_for(
        kind, busy(seed=19 + survive, stage_seconds=QUICK_STAGES, arrivals_per_rack_per_hour=20)
    )
    db = tmp_path / "state.db"
    victim = Harness(sim, clock, persistence=DiesBeforeCommit(db, survive))
    with pytest.raises(KilledError):
        await victim.run(2 * 3600, step=2)
    started = victim.started_at
    assert started is not None
    await victim.close()
    survivor = Harness(sim, clock, persistence=SqlitePersistence(db))
    await survivor.run(3 * 3600, step=2)
    expected = expected_finished(sim, started)
    persisted = Counter[str]()
    for (_, status, _), n in survivor.store.totals.tasks.items():
        persisted[status] += n
    unobserved = sum(survivor.store.totals.unobserved.values())
    # Every finished task once: by status, or as unobserved; never both, never twice.
    assert sum(persisted.values()) + unobserved == len(expected)
    assert all(persisted[status] <= n for status, n in Counter(expected.values()).items())
    if kind == "paged":
        assert unobserved == 0 and persisted == Counter(expected.values())
    await survivor.close()


async def test_a_corrupt_state_file_starts_fresh_without_counting_history(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "state.db"
    db.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.ERROR):
        persistence = open_state(db)
    assert isinstance(persistence, SqlitePersistence)
    moved = next(r for r in caplog.records if r.getMessage().startswith("state file corrupt: moved aside"))
    assert moved.__dict__["path"] == str(db) and moved.__dict__["moved_to"].startswith(f"{db}.corrupt-")
    assert list(tmp_path.glob("state.db.corrupt-*"))
    sim, clock = simulation(busy(seed=23))
    h = Harness(sim, clock, persistence=persistence)
    await h.run(600, step=2)
    assert_counted_once(h)  # history before the start is baseline, not counted
    await h.close()


def test_an_unwritable_state_path_keeps_state_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    with caplog.at_level(logging.ERROR):
        persistence = open_state(blocker / "state.db")
    assert not getattr(persistence, "durable", True)
    assert any("in memory" in r.getMessage() for r in caplog.records)


async def test_tray_attribution_spends_calls_only_on_tray_scoped_tasks() -> None:
    sim, clock = simulation(ScenarioConfig.quiet(sites=1, racks_per_site=1))
    site = sim.flow_site_ids()[0]
    rack = sim.racks(site)[0].id
    trays = sim.trays(site, rack)
    compute = [t.id for t in trays if t.type is ComponentType.COMPUTE]
    h = Harness(sim, clock)
    await h.start()
    rack_wide = sim.create_task(site, rack, "power_on", outcome="stuck")
    await h.run(70, step=1)
    assert h.store.tasks[rack_wide].trays == frozenset(t.id for t in trays)
    assert not [r for r in h.requests if r.endpoint == "/tray/{id}/task"]
    sim.cancel_task(rack_wide)
    await h.run(30, step=1)
    scoped = sim.create_task(site, rack, "power_cycle", tray_ids=[compute[7], compute[12]], outcome="stuck")
    await h.run(130, step=1)
    assert h.store.tasks[scoped].trays == frozenset({compute[7], compute[12]})
    scans = [r for r in h.requests if r.endpoint == "/tray/{id}/task"]
    assert 0 < len(scans) <= len(compute)  # only compute trays were scanned
    sim.cancel_task(scoped)
    await h.run(30, step=1)
    leak = sim.create_task(site, rack, "leak_detection", tray_ids=[compute[2]], source="leak_detection")
    await h.run(70, step=1)
    assert h.store.tasks[leak].trays == frozenset({compute[2]})  # named in its description
    assert len([r for r in h.requests if r.endpoint == "/tray/{id}/task"]) == len(scans)
    await h.close()


async def test_a_task_that_ends_before_its_trays_are_found_settles_with_what_was_found() -> None:
    sim, clock = simulation(ScenarioConfig.quiet(sites=1, racks_per_site=1))
    site = sim.flow_site_ids()[0]
    rack = sim.racks(site)[0].id
    compute = [t.id for t in sim.trays(site, rack) if t.type is ComponentType.COMPUTE]
    h = Harness(
        sim, clock, intervals=Intervals(active=15, tray_attribution=600, reconcile=300, discovery=300)
    )
    await h.start()
    short = sim.create_task(site, rack, "power_on", tray_ids=compute[:2], stage_seconds=20)
    await h.run(200, step=1)
    assert short in h.finished_ids()
    await h.run(600, step=1)
    assert h.store.tasks[short].trays is not None  # settled, though no tray list was read in time
    await h.close()


async def test_failed_tasks_count_against_their_trays() -> None:
    sim, clock = simulation(ScenarioConfig.quiet(sites=1, racks_per_site=1))
    site = sim.flow_site_ids()[0]
    rack = sim.racks(site)[0].id
    compute = [t.id for t in sim.trays(site, rack) if t.type is ComponentType.COMPUTE]
    h = Harness(sim, clock)
    await h.start()
    for _ in range(2):
        sim.create_task(
            site, rack, "power_cycle", tray_ids=[compute[3]], outcome="fail", fail_stage=1, stage_seconds=200
        )
        await h.run(400, step=2)
    failures = {k[2]: n for k, n in h.store.totals.tray_failures.items()}
    assert failures == {compute[3]: 2}
    await h.close()


def test_shards_partition_racks_for_every_shard_count() -> None:
    import uuid

    racks = [str(uuid.UUID(int=(i * 0x9E3779B97F4A7C15) % (1 << 128), version=4)) for i in range(2000)]
    for total in range(1, 5):
        owners = [[s for s in range(total) if Shard(s, total).owns(r)] for r in racks]
        assert all(len(o) == 1 for o in owners)
        sizes = Counter(o[0] for o in owners)
        assert min(sizes.values()) > 0.8 * len(racks) / total
    # Stable: growing from 3 to 4 shards moves only about a quarter of the racks.
    moved = sum(1 for r in racks if Shard(0, 3).owns(r) != Shard(0, 4).owns(r) and Shard(0, 3).owns(r))
    assert moved < 0.35 * len(racks) / 3


async def test_sharded_pollers_cover_every_rack_exactly_once() -> None:
    sim, clock = simulation(ScenarioConfig.quiet(sites=2, racks_per_site=9))
    all_racks = {r.id for s in sim.flow_site_ids() for r in sim.racks(s)}
    for total in range(1, 5):
        owned: list[set[str]] = []
        for index in range(total):
            h = Harness(sim, clock, shard=Shard(index, total))
            await h.poller.discover_sites_and_racks()
            owned.append(set(h.poller.racks))
            await h.close()
        assert set().union(*owned) == all_racks
        assert sum(len(o) for o in owned) == len(all_racks)


async def test_a_budget_that_cannot_hold_freshness_warns_and_sheds(caplog: pytest.LogCaptureFixture) -> None:
    sim, clock = simulation(ScenarioConfig.quiet(sites=1, racks_per_site=60))
    h = Harness(
        sim, clock, intervals=Intervals(active=0.5, tray_attribution=60, reconcile=120, discovery=300)
    )
    h.client.limiter.rate, h.client.limiter.burst = 40.0, 5
    with caplog.at_level(logging.WARNING):
        await h.poller.discover_sites_and_racks()
    warning = next(r for r in caplog.records if "request budget too small" in r.getMessage())
    assert warning.racks == 60 and warning.budget_rps == 40.0  # type: ignore[attr-defined]
    assert h.poller.stats.freshness_shortfall_seconds == pytest.approx(60 / 40 - 0.5)
    polls = asyncio.create_task(h.poller.poll_active())  # 60 polls at 40 req/s: they queue
    await asyncio.sleep(0.2)
    assert h.client.limiter.waiting() > 0
    await h.poller.discover()  # low priority, while urgent callers wait: skipped
    assert h.poller.stats.shed == {"discovery": 1}
    await polls
    await h.close()


async def test_tasks_tracked_before_a_restart_are_fetched_again(tmp_path: Path) -> None:
    sim, clock = simulation(ScenarioConfig.quiet(sites=1, racks_per_site=1))
    site = sim.flow_site_ids()[0]
    rack = sim.racks(site)[0].id
    db = tmp_path / "state.db"
    first = Harness(sim, clock, persistence=SqlitePersistence(db))
    await first.start()
    task_id = sim.create_task(site, rack, "firmware_update", stage_seconds=100)
    await first.run(30, step=1)
    assert task_id in first.store.active_ids(rack)
    await first.close()
    clock.advance(3600)  # the exporter is down while the task finishes
    second = Harness(sim, clock, persistence=SqlitePersistence(db))
    assert task_id in second.poller.final_fetches
    await second.run(10, step=1)
    assert second.finished_ids() == [task_id]
    assert [t.kind for t in second.transitions if t.record.id == task_id].count(Kind.APPEARED) == 0
    await second.close()


def test_bad_payload_reasons_are_typed() -> None:
    assert BadPayload("x", reason="truncated_json").retryable
    assert not BadPayload("x", reason="invalid_json").retryable
