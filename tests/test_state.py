"""The state store: transitions delivered once, the counting rule, TTL, and restarts."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from exporter.metrics import SeriesOptions, task_series
from exporter.models import Task, TaskStatus
from exporter.operations import Operation
from exporter.persistence import SqlitePersistence, StateBatch
from exporter.state import Kind, Store, Transition
from tests import builders
from tests.builders import OTHER_RACK, RACK, SITE, T0, report, stage, step, tid


def task(n: int = 1, status: str = "Running", **fields: Any) -> Task:
    """The store tests' tasks carry no creation time unless they say so."""
    return builders.task(n, status, **{"created": None, **fields})


POWER_ON_TYPES = ("PowerShelf", "NVSwitch", "Compute")


def power_on_report(done: int, running: bool = True, last: str = "completed") -> dict[str, Any]:
    """A 3-stage power-on report: ``done`` stages over (the last of them ``last``), the next running."""
    stages = []
    for number, component in enumerate(POWER_ON_TYPES, start=1):
        if number < done:
            status = "completed"
        elif number == done:
            status = last
        elif number == done + 1 and running:
            status = "running"
        else:
            status = "pending"
        stages.append(stage(number, status, step(component, status)))
    return report(*stages)


def done_task(n: int = 1, status: str = "Succeeded", *, finished: float = T0, **kw: Any) -> Task:
    """A terminal task with its full report (all three stages completed)."""
    last = "failed" if status == "Failed" else "completed"
    return task(n, status, finished=finished, rep=power_on_report(3, running=False, last=last), **kw)


class Recorder:
    def __init__(self, store: Store) -> None:
        self.seen: list[Transition] = []
        store.subscribe(self.seen.append)

    def take(self) -> list[Transition]:
        """What was delivered since the last ``take``."""
        out = list(self.seen)
        self.seen.clear()
        return out


def kinds(transitions: list[Transition]) -> list[tuple[Kind, int | None]]:
    return [(t.kind, t.stage.number if t.stage else None) for t in transitions]


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def rec(store: Store) -> Recorder:
    return Recorder(store)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


def open_store(path: Path, **kw: Any) -> tuple[Store, SqlitePersistence]:
    persistence = SqlitePersistence(path)
    return Store(persistence, **kw), persistence


# -- transitions ---------------------------------------------------------------------------------


def test_first_observation_delivers_appeared_then_status(store: Store, rec: Recorder) -> None:
    assert store.observe(SITE, RACK, task(1, "Pending"), T0) is False
    got = rec.take()
    assert [t.kind for t in got] == [Kind.APPEARED, Kind.STATUS_CHANGED]
    assert [t.key for t in got] == ["appeared", "status/Pending"]
    assert got[1].previous_status is None
    assert got[0].record.site_id == SITE and got[0].record.rack_id == RACK
    assert store.rack_task_ids(RACK) == {tid(1)}
    assert store.active_ids(RACK) == {tid(1)}


def test_same_observation_repeated_delivers_nothing(store: Store, rec: Recorder) -> None:
    running = task(1, rep=power_on_report(0))
    store.observe(SITE, RACK, running, T0)
    rec.take()
    for later in (1, 2, 3):
        store.observe(SITE, RACK, running, T0 + later)
    assert rec.take() == []
    assert store.tasks[tid(1)].observed_at == T0 + 3


def test_status_change_carries_previous_status(store: Store, rec: Recorder) -> None:
    store.observe(SITE, RACK, task(1, "Pending"), T0)
    store.observe(SITE, RACK, task(1, "Waiting"), T0 + 1)
    store.observe(SITE, RACK, task(1, "Running"), T0 + 2)
    changes = [t for t in rec.take() if t.kind is Kind.STATUS_CHANGED]
    assert [(t.previous_status, t.key) for t in changes][1:] == [
        (TaskStatus.PENDING, "status/Waiting"),
        (TaskStatus.WAITING, "status/Running"),
    ]


def test_three_stage_report_moving_stage_by_stage(store: Store, rec: Recorder) -> None:
    store.observe(SITE, RACK, task(1, rep=power_on_report(0)), T0)
    assert kinds(rec.take()) == [
        (Kind.APPEARED, None),
        (Kind.STATUS_CHANGED, None),
        (Kind.STAGE_STARTED, 1),
        (Kind.STEP_STARTED, 1),
    ]
    store.observe(SITE, RACK, task(1, rep=power_on_report(1)), T0 + 10)
    assert kinds(rec.take()) == [
        (Kind.STEP_FINISHED, 1),
        (Kind.STAGE_FINISHED, 1),
        (Kind.STAGE_STARTED, 2),
        (Kind.STEP_STARTED, 2),
    ]
    store.observe(SITE, RACK, task(1, rep=power_on_report(2)), T0 + 20)
    assert kinds(rec.take()) == [
        (Kind.STEP_FINISHED, 2),
        (Kind.STAGE_FINISHED, 2),
        (Kind.STAGE_STARTED, 3),
        (Kind.STEP_STARTED, 3),
    ]
    store.observe(SITE, RACK, done_task(1, finished=T0 + 30), T0 + 30)
    got = rec.take()
    assert kinds(got) == [
        (Kind.STATUS_CHANGED, None),
        (Kind.STEP_FINISHED, 3),
        (Kind.STAGE_FINISHED, 3),
        (Kind.FINISHED, None),
    ]
    assert got[1].key == "stage/3/step/0/finished"
    assert got[1].step is not None and got[1].step_index == 0
    assert got[2].key == "stage/3/finished"
    assert got[3].key == "finished"


def test_first_seen_terminal_with_report_finishes_in_one_observation(store: Store, rec: Recorder) -> None:
    assert store.observe(SITE, RACK, done_task(1, finished=T0 - 5), T0) is False
    per_stage = [Kind.STAGE_STARTED, Kind.STEP_STARTED, Kind.STEP_FINISHED, Kind.STAGE_FINISHED]
    assert [t.kind for t in rec.take()] == [
        Kind.APPEARED,
        Kind.STATUS_CHANGED,
        *per_stage,
        *per_stage,
        *per_stage,
        Kind.FINISHED,
    ]
    record = store.tasks[tid(1)]
    assert record.finished_seen_at == T0
    assert store.terminal[tid(1)] == T0 - 5
    assert store.totals.tasks == {(SITE, "Succeeded", "power_on"): 1}


def test_new_terminal_task_without_report_asks_for_fetch_and_delivers_nothing(
    store: Store, rec: Recorder
) -> None:
    assert store.observe(SITE, RACK, task(1, "Succeeded", finished=T0), T0, with_report=False) is True
    assert rec.take() == []
    assert tid(1) not in store.tasks
    assert store.totals.tasks == {}


def test_tracked_task_turning_terminal_without_report_waits_for_the_fetch(
    store: Store, rec: Recorder
) -> None:
    store.observe(SITE, RACK, task(1, rep=power_on_report(2)), T0)
    rec.take()
    assert store.observe(SITE, RACK, task(1, "Succeeded"), T0 + 1, with_report=False) is True
    assert rec.take() == []
    assert store.tasks[tid(1)].status is TaskStatus.RUNNING
    assert store.observe(SITE, RACK, done_task(1), T0 + 2) is False
    assert Kind.FINISHED in [t.kind for t in rec.take()]


def test_listing_without_report_keeps_the_report_it_had(store: Store) -> None:
    store.observe(SITE, RACK, task(1, rep=power_on_report(1)), T0)
    store.observe(SITE, RACK, task(1), T0 + 1, with_report=False)
    kept = store.tasks[tid(1)].task.report
    assert kept is not None and len(kept.stages) == 3


def test_failed_task_finishes_failed_step_and_leaves_pending_stages_silent(
    store: Store, rec: Recorder
) -> None:
    failed = task(1, "Failed", finished=T0, rep=power_on_report(1, running=False, last="failed"))
    store.observe(SITE, RACK, failed, T0)
    got = rec.take()
    assert kinds(got)[2:] == [
        (Kind.STAGE_STARTED, 1),
        (Kind.STEP_STARTED, 1),
        (Kind.STEP_FINISHED, 1),
        (Kind.STAGE_FINISHED, 1),
        (Kind.FINISHED, None),
    ]
    assert got[4].step is not None and got[4].step.status == "failed"
    assert store.totals.tasks == {(SITE, "Failed", "power_on"): 1}


def test_skipped_stages_and_steps_deliver_nothing(store: Store, rec: Recorder) -> None:
    rep = report(
        stage(1, "skipped", step("Compute", "skipped", total=0)),
        stage(2, "completed", step("NVSwitch", "completed")),
    )
    store.observe(SITE, RACK, task(1, "Succeeded", finished=T0, rep=rep), T0)
    assert {n for _, n in kinds(rec.take())} == {None, 2}


def test_unknown_description_is_reclassified_when_a_report_shows_the_layout(store: Store) -> None:
    store.observe(SITE, RACK, task(1, description="my tooling"), T0)
    assert store.tasks[tid(1)].operation is Operation.OTHER
    bring_up = report(
        *(
            stage(n, "pending", step(c))
            for n, c in enumerate(("PowerShelf", "Compute", "Compute", "NVSwitch", "NVSwitch", "Compute"), 1)
        )
    )
    store.observe(SITE, RACK, task(1, description="my tooling", rep=bring_up), T0 + 1)
    assert store.tasks[tid(1)].operation is Operation.BRING_UP


# -- totals ----------------------------------------------------------------------------------------


def test_totals_count_each_finished_task_once(store: Store) -> None:
    for n in (1, 2):
        for at in (T0, T0 + 1):  # the same final observation twice
            store.observe(SITE, RACK, done_task(n), at)
    store.observe(SITE, RACK, done_task(3, "Failed", description="API power off Tray"), T0)
    assert store.totals.tasks == {
        (SITE, "Succeeded", "power_on"): 2,
        (SITE, "Failed", "power_off"): 1,
    }


def test_tray_failures_counted_once_when_trays_are_attributed_before_finish(store: Store) -> None:
    store.tray_types = {"tray-a": "Compute", "tray-b": "NVSwitch"}
    store.observe(SITE, RACK, task(1, rep=power_on_report(1)), T0)
    store.attribute(tid(1), ["tray-a", "tray-b"])
    assert store.totals.tray_failures == {}
    store.observe(SITE, RACK, done_task(1, "Failed"), T0 + 1)
    store.observe(SITE, RACK, done_task(1, "Failed"), T0 + 2)
    # Its Compute step failed (stage 3): the NVSwitch tray is not charged.
    assert store.totals.tray_failures == {(SITE, RACK, "tray-a", "Compute"): 1}


def test_tray_failures_counted_once_when_trays_are_attributed_after_finish(store: Store) -> None:
    store.tray_types = {"tray-a": "Compute", "tray-b": "Compute"}
    store.observe(SITE, RACK, done_task(1, "Failed"), T0)
    assert store.totals.tray_failures == {}
    store.attribute(tid(1), ["tray-a"])
    store.attribute(tid(1), ["tray-a", "tray-b"])  # settled once: ignored
    assert store.totals.tray_failures == {(SITE, RACK, "tray-a", "Compute"): 1}
    assert store.tasks[tid(1)].trays == frozenset({"tray-a"})


def test_succeeded_task_counts_no_tray_failure(store: Store) -> None:
    store.observe(SITE, RACK, done_task(1), T0)
    store.attribute(tid(1), ["tray-a"])
    assert store.totals.tray_failures == {}


# -- the counting rule: baseline and creation counter -------------------------------------------
#
# Expectations here are hand-counted: how many tasks the rack's counter says were created, and
# which of them a list could name.


def baselined(store: Store, total: int = 10, at: float = T0) -> None:
    """A rack whose first active list came at ``at`` (NICo time) and whose counter read ``total``."""
    store.begin_baseline(RACK, SITE, at)
    store.observe_total(RACK, total)


def test_terminal_tasks_finished_before_the_baseline_are_history(store: Store, rec: Recorder) -> None:
    baselined(store)
    old = task(1, "Succeeded", finished=T0 - 100, created=T0 - 200)
    assert store.observe(SITE, RACK, old, T0 + 1, with_report=False) is False
    assert rec.take() == [] and not store.is_known(tid(1))
    assert store.racks[RACK].seen_new == 0
    # Seen again later (also with a report), history stays history.
    assert store.observe(SITE, RACK, done_task(1, finished=T0 - 100), T0 + 2) is False
    assert rec.take() == [] and store.totals.tasks == {}


def test_a_task_named_terminal_after_the_baseline_is_fetched_and_counted(store: Store) -> None:
    baselined(store, total=10)
    store.observe_total(RACK, 11)  # the list that names it counts it
    short = task(1, "Succeeded", finished=T0 + 50, created=T0 + 40)
    assert store.observe(SITE, RACK, short, T0 + 60, with_report=False) is True  # fetch it
    assert store.is_known(tid(1)) and store.racks[RACK].seen_new == 1
    assert store.observe(SITE, RACK, short, T0 + 61, with_report=False) is True  # named once
    assert store.racks[RACK].seen_new == 1
    store.observe(SITE, RACK, done_task(1, finished=T0 + 50), T0 + 62)  # the final fetch
    assert store.totals.tasks == {(SITE, "Succeeded", "power_on"): 1}


def test_baseline_rows_are_part_of_the_baseline_count(store: Store) -> None:
    store.begin_baseline(RACK, SITE, T0)
    store.observe(SITE, RACK, task(1, created=T0 - 1), T0, in_baseline=True)
    store.observe_total(RACK, 1)
    assert store.racks[RACK].seen_new == 0 and store.racks[RACK].baseline_total == 1
    store.observe_total(RACK, 1)
    assert store.settle(RACK) == 0


def test_unnamed_tasks_are_counted_once_from_the_creation_counter(store: Store) -> None:
    baselined(store, total=10)
    # Three tasks created since: one seen active, two never named.
    store.observe(SITE, RACK, task(1, created=T0 + 5), T0 + 6)
    assert store.observe_total(RACK, 13) is True
    assert store.settle(RACK) == 2
    assert store.totals.unobserved == {SITE: 2}
    # Nothing new: nothing more, however often it is asked.
    assert store.observe_total(RACK, 13) is False
    assert store.settle(RACK) == 0 and store.settle(RACK) == 0
    assert store.totals.unobserved == {SITE: 2}


def test_rows_an_incomplete_list_did_not_show_are_not_counted_yet(store: Store) -> None:
    baselined(store, total=0)
    for n in range(1, 21):
        store.observe(SITE, RACK, task(n, created=T0 + n), T0 + 30)
    store.observe_total(RACK, 25)  # 25 created, 20 shown: 5 active ones hidden by the 20-row cap
    assert store.settle(RACK, unseen_active=5) == 0
    assert store.unexplained(RACK) == 5
    for n in range(21, 26):  # found on the trays' lists
        store.observe(SITE, RACK, task(n, created=T0 + n), T0 + 40, with_report=False)
    assert store.settle(RACK) == 0 and store.totals.unobserved == {}


def test_a_task_named_after_it_was_counted_unobserved_is_not_counted_twice(store: Store) -> None:
    baselined(store, total=0)
    store.observe_total(RACK, 1)
    assert store.settle(RACK) == 1  # created and finished unseen
    late = task(7, "Succeeded", finished=T0 + 20, created=T0 + 10)  # a list names it later
    assert store.observe(SITE, RACK, late, T0 + 100, with_report=False) is False
    assert store.absorbed == 1 and store.is_known_terminal(tid(7))
    assert store.totals.tasks == {} and store.totals.unobserved == {SITE: 1}


def test_a_run_target_fetched_by_id_after_it_was_counted_unobserved_is_not_counted_twice(
    store: Store,
) -> None:
    # A Task Run's target names a child task created and finished between two polls: the rack's
    # counter counted it unobserved, then the final fetch (by id, with its report) arrives.
    baselined(store, total=0)
    store.observe_total(RACK, 1, T0 + 30)
    assert store.settle(RACK) == 1
    child = done_task(7, "Failed", finished=T0 + 20, created=T0 + 10)
    assert store.observe(SITE, RACK, child, T0 + 40) is False
    assert store.absorbed == 1 and store.is_known_terminal(tid(7))
    assert store.totals.tasks == {} and store.totals.unobserved == {SITE: 1}


def test_a_task_fetched_by_id_newer_than_the_explained_count_is_counted_by_name(store: Store) -> None:
    # The counter is explained in full, but by a total read before this task existed: it was not
    # among the unobserved ones, so dropping it would lose a finish (and its failure page).
    baselined(store, total=0)
    store.observe_total(RACK, 1, T0 + 30)
    assert store.settle(RACK) == 1
    newer = done_task(8, "Failed", finished=T0 + 45, created=T0 + 35)
    store.observe(SITE, RACK, newer, T0 + 50)
    assert store.absorbed == 0
    assert store.totals.tasks == {(SITE, "Failed", "power_on"): 1}
    # Within the clock margin of the read, doubt counts it rather than drops it.
    edge = done_task(9, "Succeeded", finished=T0 + 31, created=T0 + 29)
    store.observe(SITE, RACK, edge, T0 + 50)
    assert store.absorbed == 0 and store.totals.tasks[(SITE, "Succeeded", "power_on")] == 1


def test_a_task_fetched_by_id_while_nothing_was_counted_unobserved_is_counted(store: Store) -> None:
    baselined(store, total=0)
    store.observe(SITE, RACK, task(1, created=T0 + 5), T0 + 6)  # seen: explains the count
    store.observe_total(RACK, 1, T0 + 30)
    assert store.settle(RACK) == 0
    child = done_task(7, "Succeeded", finished=T0 + 20, created=T0 + 10)
    store.observe(SITE, RACK, child, T0 + 40)
    assert store.absorbed == 0 and store.totals.tasks == {(SITE, "Succeeded", "power_on"): 1}


def test_a_held_settle_judges_an_older_total_and_subtracts_every_sighting_since(store: Store) -> None:
    baselined(store, total=0)
    store.observe_total(RACK, 2, T0 + 30, local=T0 + 30)  # two created, neither seen yet
    assert store.settle(RACK, hold=20, now=T0 + 35) == 0  # no reading is 20 s old yet
    store.observe(SITE, RACK, done_task(5, finished=T0 + 28, created=T0 + 25), T0 + 40)  # named by id
    store.observe_total(RACK, 3, T0 + 50, local=T0 + 50)  # one more created, at T0 + 45
    assert store.settle(RACK, hold=20, now=T0 + 52) == 1  # judged at T0 + 30: 2 created, 1 named
    assert store.totals.unobserved == {SITE: 1}
    # The newer one is named in time and is not counted; a sighting of a task created after the
    # judged reading is not subtracted from it (it is not in that total).
    store.observe(SITE, RACK, done_task(6, finished=T0 + 47, created=T0 + 45), T0 + 55)
    assert store.settle(RACK, hold=20, now=T0 + 60) == 0
    assert store.settle(RACK, hold=20, now=T0 + 71) == 0  # judged at T0 + 50: 3 created, 2 named
    assert store.totals.unobserved == {SITE: 1}
    assert store.totals.tasks == {(SITE, "Succeeded", "power_on"): 2}


def test_sightings_after_the_judged_read_do_not_hide_an_unnamed_task(store: Store) -> None:
    baselined(store, total=0)
    store.observe_total(RACK, 1, T0 + 30, local=T0 + 30)  # one created (never seen)
    # Two tasks created after that read are seen before the settle judges it.
    store.observe(SITE, RACK, task(2, created=T0 + 40), T0 + 41)
    store.observe(SITE, RACK, task(3, created=T0 + 42), T0 + 43)
    store.observe_total(RACK, 3, T0 + 45, local=T0 + 45)
    assert store.settle(RACK, hold=10, now=T0 + 50) == 1  # the unseen one at T0 + 30 is counted
    assert store.totals.unobserved == {SITE: 1}


def test_a_child_named_late_is_absorbed_although_newer_tasks_wait_to_be_settled(store: Store) -> None:
    # X is counted unobserved from a held reading; Y, created since, is not settled yet. The runs
    # job then names X: it was counted, so it is recorded, not counted again.
    baselined(store, total=0)
    store.observe_total(RACK, 1, T0 + 10, local=T0 + 10)
    store.observe_total(RACK, 1, T0 + 20, local=T0 + 20)
    assert store.settle(RACK, hold=19, now=T0 + 30) == 1  # judged at T0 + 10: X
    store.observe_total(RACK, 2, T0 + 40, local=T0 + 40)  # Y created at T0 + 35
    x = done_task(7, "Failed", finished=T0 + 6, created=T0 + 5)
    assert store.observe(SITE, RACK, x, T0 + 41) is False
    assert store.absorbed == 1 and store.totals.tasks == {}


def test_a_task_fetched_by_id_from_around_the_baseline_is_counted(store: Store) -> None:
    # Created within the baseline's second (or between its active list and its total): it may be
    # in the baseline count, so it was never counted unobserved; a late name counts it.
    baselined(store, total=0)
    store.observe_total(RACK, 1, T0 + 30, local=T0 + 30)
    assert store.settle(RACK) == 1
    near = done_task(8, "Failed", finished=T0 + 2, created=T0 + 0.5)
    store.observe(SITE, RACK, near, T0 + 40)
    assert store.absorbed == 0 and store.totals.tasks == {(SITE, "Failed", "power_on"): 1}


def test_a_shrunk_total_forgets_the_sightings_of_the_old_count(store: Store) -> None:
    baselined(store, total=10)
    store.observe(SITE, RACK, task(1, created=T0 + 5), T0 + 6)
    store.observe_total(RACK, 4, T0 + 20, local=T0 + 20)  # a restored database
    assert not store.racks[RACK].recent and store.racks[RACK].seen_new == 0
    store.observe_total(RACK, 5, T0 + 30, local=T0 + 30)
    assert store.settle(RACK) == 1


def test_a_task_named_with_the_count_it_explains_is_counted_by_name(store: Store) -> None:
    baselined(store, total=0)
    store.observe_total(RACK, 1)  # the same response names it: not yet counted unobserved
    short = task(7, "Succeeded", finished=T0 + 20, created=T0 + 10)
    assert store.observe(SITE, RACK, short, T0 + 30, with_report=False) is True
    assert store.settle(RACK) == 0 and store.absorbed == 0


def test_a_total_that_shrinks_restarts_the_ledger(store: Store) -> None:
    baselined(store, total=10)
    store.observe_total(RACK, 12)
    assert store.settle(RACK) == 2
    store.observe_total(RACK, 4)  # a restored database
    store.observe_total(RACK, 5)
    assert store.settle(RACK) == 1
    assert store.totals.unobserved == {SITE: 3}


def test_without_a_baseline_count_nothing_is_counted_unobserved(store: Store) -> None:
    store.begin_baseline(RACK, SITE, T0)
    assert store.settle(RACK) == 0 and store.unexplained(RACK) == 0
    assert store.observe_total(RACK, 3) is False  # the first reading is the baseline count


def test_terminal_tasks_older_than_retention_are_history() -> None:
    store = Store(terminal_retention=100)
    baselined(store, at=T0)
    old = task(1, "Succeeded", finished=T0 + 500, created=T0 + 400)
    assert store.observe(SITE, RACK, old, T0 + 1000, with_report=False) is False
    assert not store.is_known(tid(1))


# -- vanish, expire, drop_rack --------------------------------------------------------------------


def test_vanish_records_the_task_without_counting_it(store: Store, rec: Recorder) -> None:
    store.observe(SITE, RACK, task(1), T0)
    rec.take()
    store.vanish(tid(1), T0 + 5)
    got = rec.take()
    assert [(t.kind, t.key) for t in got] == [(Kind.VANISHED, "vanished")]
    assert store.vanished == 1
    assert tid(1) not in store.tasks and store.rack_task_ids(RACK) == set()
    assert store.is_known_terminal(tid(1))
    assert store.totals.tasks == {}
    assert store.observe(SITE, RACK, done_task(1), T0 + 6) is False
    assert rec.take() == []


def test_vanish_of_an_untracked_task_only_records_it(store: Store, rec: Recorder) -> None:
    store.vanish(tid(1), T0)
    assert rec.take() == [] and store.vanished == 0
    assert store.terminal == {tid(1): T0}


def test_expire_drops_finished_tasks_after_the_ttl(db: Path) -> None:
    store, persistence = open_store(db, finished_ttl=60)
    store.observe(SITE, RACK, done_task(1), T0)
    store.observe(SITE, RACK, task(2), T0)
    assert store.expire(T0 + 59) == []
    assert store.expire(T0 + 60) == [tid(1)]
    assert set(store.tasks) == {tid(2)}
    store.commit()
    assert {task_id for _, task_id in persistence.load().delivered} == {tid(2)}
    persistence.close()


def test_expired_task_observed_again_is_not_counted_again() -> None:
    store = Store(finished_ttl=60)
    rec = Recorder(store)
    store.observe(SITE, RACK, done_task(1), T0)
    store.expire(T0 + 60)
    rec.take()
    assert store.observe(SITE, RACK, done_task(1), T0 + 61) is False
    assert store.observe(SITE, RACK, task(1, "Succeeded", finished=T0), T0 + 62, with_report=False) is False
    assert rec.take() == []
    assert store.totals.tasks == {(SITE, "Succeeded", "power_on"): 1}


def test_expire_forgets_terminal_ids_after_retention() -> None:
    store = Store(finished_ttl=60, terminal_retention=1000)
    store.vanish(tid(1), T0)
    store.observe(SITE, RACK, done_task(2, finished=T0), T0)
    store.expire(T0 + 1000)
    assert set(store.terminal) == {tid(1), tid(2)}
    store.expire(T0 + 1001)
    assert store.terminal == {}


def test_drop_rack_drops_tasks_but_keeps_totals_and_baseline(store: Store) -> None:
    baselined(store, total=0)
    store.observe(SITE, RACK, done_task(1), T0 + 1)
    store.observe(SITE, RACK, task(2), T0 + 1)
    store.observe(SITE, OTHER_RACK, task(3), T0 + 1)
    store.drop_rack(RACK)
    assert set(store.tasks) == {tid(3)}
    assert store.rack_task_ids(RACK) == set()
    assert store.totals.tasks == {(SITE, "Succeeded", "power_on"): 1}
    assert store.racks[RACK].baselined_at == T0


def test_a_failing_subscriber_does_not_stop_the_others(store: Store) -> None:
    def broken(transition: Transition) -> None:
        raise RuntimeError("boom")

    store.subscribe(broken)
    rec = Recorder(store)
    store.observe(SITE, RACK, done_task(1), T0)
    assert rec.take()[-1].kind is Kind.FINISHED
    assert store.totals.tasks == {(SITE, "Succeeded", "power_on"): 1}


# -- restarts ------------------------------------------------------------------------------------


def test_restart_keeps_totals_terminal_ids_baselines_and_delivered_keys(db: Path) -> None:
    first, p1 = open_store(db)
    first.begin_baseline(RACK, SITE, T0)
    first.observe_total(RACK, 1)
    first.learn_tray_type("tray-a", "Compute")
    first.observe(SITE, RACK, done_task(1, "Failed", finished=T0 + 1, created=T0 + 1), T0 + 1)
    first.attribute(tid(1), ["tray-a"])
    running = task(2, rep=power_on_report(1), created=T0 + 2)
    first.observe(SITE, RACK, running, T0 + 2)
    first.attribute(tid(2), ["tray-b", "tray-c"])
    first.commit()
    p1.close()

    second, p2 = open_store(db)
    rec = Recorder(second)
    assert second.totals.tasks == {(SITE, "Failed", "power_on"): 1}
    assert second.totals.tray_failures == {(SITE, RACK, "tray-a", "Compute"): 1}
    assert second.terminal == {tid(1): T0 + 1}
    assert second.racks[RACK].baselined_at == T0 and second.racks[RACK].baseline_total == 1
    assert second.racks[RACK].seen_new == 2
    assert second.recovered == {tid(2): (SITE, RACK, frozenset({"tray-b", "tray-c"}))}
    # The same observations again: nothing is delivered twice, nothing counted twice.
    second.observe(SITE, RACK, running, T0 + 3)
    second.observe(SITE, RACK, done_task(1, "Failed", finished=T0 + 1), T0 + 3)
    assert rec.take() == []
    assert second.tasks[tid(2)].trays == frozenset({"tray-b", "tray-c"})
    assert second.racks[RACK].seen_new == 2  # a recovered task was seen before
    # ... and what is new still is.
    second.observe(SITE, RACK, done_task(2, finished=T0 + 4), T0 + 4)
    assert [t.kind for t in rec.take()][-1] is Kind.FINISHED
    assert second.totals.tasks[(SITE, "Succeeded", "power_on")] == 1
    p2.close()


def test_restart_before_a_named_tasks_final_fetch_still_fetches_it(db: Path) -> None:
    first, p1 = open_store(db)
    first.begin_baseline(RACK, SITE, T0)
    first.observe_total(RACK, 0)
    first.observe_total(RACK, 1)
    done = task(1, "Succeeded", finished=T0 + 5, created=T0 + 2)
    assert first.observe(SITE, RACK, done, T0 + 10, with_report=False) is True
    first.commit()
    p1.close()

    second, p2 = open_store(db)
    assert tid(1) in second.recovered
    # Named before the restart: not counted unobserved, not named again as new.
    assert second.settle(RACK) == 0
    assert second.observe(SITE, RACK, done, T0 + 20, with_report=False) is True
    assert second.racks[RACK].seen_new == 1
    p2.close()


def test_unobserved_totals_and_ledgers_survive_a_restart(db: Path) -> None:
    first, p1 = open_store(db)
    first.begin_baseline(RACK, SITE, T0)
    first.observe_total(RACK, 5)
    first.observe_total(RACK, 8)
    assert first.settle(RACK) == 3
    first.commit()
    p1.close()
    second, p2 = open_store(db)
    assert second.totals.unobserved == {SITE: 3}
    second.observe_total(RACK, 8)
    assert second.settle(RACK) == 0  # counted before the restart
    second.observe_total(RACK, 9)
    assert second.settle(RACK) == 1 and second.totals.unobserved == {SITE: 4}
    p2.close()


def test_a_run_target_counted_unobserved_before_a_restart_is_not_counted_again_after_it(db: Path) -> None:
    # The time through which the counter was explained in full survives the restart: without it,
    # a child named by id after the restart could not be told from a task newer than the count.
    first, p1 = open_store(db)
    first.begin_baseline(RACK, SITE, T0)
    first.observe_total(RACK, 0)
    first.observe_total(RACK, 1, T0 + 30)
    assert first.settle(RACK) == 1
    first.commit()
    p1.close()
    second, p2 = open_store(db)
    child = done_task(7, "Failed", finished=T0 + 20, created=T0 + 10)
    assert second.observe(SITE, RACK, child, T0 + 40) is False
    assert second.absorbed == 1 and second.totals.tasks == {} and second.totals.unobserved == {SITE: 1}
    # A task newer than that time is still counted by name.
    newer = done_task(8, "Failed", finished=T0 + 45, created=T0 + 35)
    second.observe(SITE, RACK, newer, T0 + 50)
    assert second.totals.tasks == {(SITE, "Failed", "power_on"): 1}
    p2.close()


def test_delivered_keys_of_tasks_finished_before_a_restart_are_forgotten(db: Path) -> None:
    first, p1 = open_store(db, finished_ttl=60, terminal_retention=1000)
    first.observe(SITE, RACK, done_task(1, finished=T0), T0)
    first.commit()
    p1.close()

    second, p2 = open_store(db, finished_ttl=60, terminal_retention=1000)
    second.expire(T0 + 2000)
    second.commit()
    assert second.terminal == {}
    remaining = p2.load().delivered
    p2.close()
    assert remaining == []


# -- a state file that fails, and finished tasks across a restart ----------------------------------


class DiskFull(SqlitePersistence):
    """A state file whose disk is full while ``full`` is set: every write fails as SQLite's does."""

    full = False

    def _write(self, batches: tuple[StateBatch, ...]) -> None:
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        super()._write(batches)


def baselined_then_disk_full(db: Path) -> tuple[Store, DiskFull]:
    """A store whose rack is baselined (written), then whose disk fills up."""
    persistence = DiskFull(db)
    store = Store(persistence)
    store.begin_baseline(RACK, SITE, T0)
    store.observe_total(RACK, 0)
    store.commit()
    persistence.full = True
    return store, persistence


def test_writes_that_fail_are_kept_and_land_with_the_next_commit(db: Path) -> None:
    first, persistence = baselined_then_disk_full(db)
    first.observe(SITE, RACK, task(1, rep=power_on_report(1), created=T0 + 1), T0 + 1)
    first.commit()
    first.observe(SITE, RACK, done_task(1, "Failed", finished=T0 + 5, created=T0 + 1), T0 + 5)
    first.observe(SITE, RACK, done_task(2, finished=T0 + 6, created=T0 + 2), T0 + 6)
    first.commit()
    assert persistence.write_errors == 2 and len(first.unwritten) == 2
    persistence.full = False  # the disk has room again
    first.commit()  # nothing new: the kept batches alone
    assert first.unwritten == []
    persistence.close()

    second, p2 = open_store(db)
    rec = Recorder(second)
    assert second.totals.tasks == {(SITE, "Failed", "power_on"): 1, (SITE, "Succeeded", "power_on"): 1}
    assert set(second.terminal) == {tid(1), tid(2)}
    # Seen again after the restart: nothing delivered twice, nothing counted twice.
    second.observe(SITE, RACK, done_task(1, "Failed", finished=T0 + 5, created=T0 + 1), T0 + 9)
    second.observe(SITE, RACK, done_task(2, finished=T0 + 6, created=T0 + 2), T0 + 9)
    assert rec.take() == []
    assert second.totals.tasks == {(SITE, "Failed", "power_on"): 1, (SITE, "Succeeded", "power_on"): 1}
    p2.close()


def test_a_kill_while_the_disk_is_full_loses_only_what_was_never_written(db: Path) -> None:
    """The kept batches die with the process; the restart then sees those tasks for the first time
    and counts each once (not zero times, not twice)."""
    first, persistence = baselined_then_disk_full(db)
    first.observe(SITE, RACK, done_task(1, "Failed", finished=T0 + 5, created=T0 + 1), T0 + 5)
    first.commit()
    assert first.totals.tasks == {(SITE, "Failed", "power_on"): 1}
    persistence.close()  # kill -9: the kept batch is gone

    second, p2 = open_store(db)
    assert second.totals.tasks == {}
    second.observe(SITE, RACK, done_task(1, "Failed", finished=T0 + 5, created=T0 + 1), T0 + 9)
    second.observe(SITE, RACK, done_task(1, "Failed", finished=T0 + 5, created=T0 + 1), T0 + 12)
    assert second.totals.tasks == {(SITE, "Failed", "power_on"): 1}
    p2.close()


def test_finished_tasks_keep_their_series_across_a_restart_until_their_ttl(db: Path) -> None:
    first, p1 = open_store(db, finished_ttl=600)
    failed = done_task(1, "Failed", finished=T0 + 5, created=T0 + 1)
    first.observe(SITE, RACK, task(1, rep=power_on_report(1), created=T0 + 1), T0 + 1)
    first.observe(SITE, RACK, failed, T0 + 5)
    first.attribute(tid(1), ["tray-a", "tray-b"])  # settled after it finished
    first.commit()
    before = task_series(first.tasks[tid(1)], SeriesOptions())
    assert "nico_task_failure_info" in before
    p1.close()

    second, p2 = open_store(db, finished_ttl=600)
    restored = second.tasks[tid(1)]
    assert restored.task == failed
    assert (restored.trays, restored.finished_seen_at) == (frozenset({"tray-a", "tray-b"}), T0 + 5)
    assert task_series(restored, SeriesOptions()) == before  # every series as it was
    assert tid(1) in second.take_touched()  # the first snapshot after the restart shows it
    assert second.expire(T0 + 5 + 599) == []
    assert second.expire(T0 + 5 + 600) == [tid(1)]
    second.commit()
    p2.close()

    third, p3 = open_store(db, finished_ttl=600)
    assert tid(1) not in third.tasks
    p3.close()
