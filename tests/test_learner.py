"""The duration learner: convergence, the window after a shift, persistence, cold start, prediction.

Expectations are computed here from the distributions the tests draw (numpy-free: sorted lists),
never read back from the learner's own state.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from exporter.learner import Learner, Window, predict
from exporter.operations import Operation
from exporter.persistence import SqlitePersistence
from exporter.state import Store, TaskRecord
from tests.builders import RACK, SITE, T0, report, stage, step, task

KEY = (SITE, "power_on", 2, "NVSwitch")


def _exact(values: list[float], q: float) -> float:
    """The lower q-quantile, rank q * (n - 1), as DDSketch defines it."""
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def test_quantiles_converge_on_a_known_distribution() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(3.0, 0.4) for _ in range(2000)]
    window = Window(window=2000)
    for v in values:
        window.add(v)
    # All 2,000 in the window (the current sketch rotated at 2,000: the previous holds them).
    for q in (0.5, 0.9, 0.99):
        got = window.quantile(q)
        assert got is not None and got == pytest.approx(_exact(values, q), rel=0.03)


def test_a_shift_is_mixed_after_one_window_and_fully_learned_within_two() -> None:
    learner = Learner(window=50, min_samples=20)
    for _ in range(210):  # the old fleet; 10 of its samples sit in the current sketch
        learner.stages.setdefault(KEY, Window(50)).add(40.0)
    assert learner.stage_quantile(KEY, 0.5) == pytest.approx(40.0, rel=0.02)
    for _ in range(25):  # the fleet slowed down: both speeds are in the window
        learner.stages[KEY].add(200.0)
    assert learner.stage_quantile(KEY, 0.99) == pytest.approx(200.0, rel=0.02)
    assert learner.stage_quantile(KEY, 0.25) == pytest.approx(40.0, rel=0.02)
    for _ in range(75):  # 100 = 2 x window new samples: nothing of the old fleet is left
        learner.stages[KEY].add(200.0)
    assert learner.stage_quantile(KEY, 0.0) == pytest.approx(200.0, rel=0.02)


def _finished(n: int, nvswitch_s: float) -> object:
    rep = report(
        stage(1, "completed", step("PowerShelf", "completed", T0, T0 + 10), start=T0, end=T0 + 10),
        stage(2, "completed", step("NVSwitch", "completed", T0 + 10, T0 + 10 + nvswitch_s),
              start=T0 + 10, end=T0 + 10 + nvswitch_s),
    )  # fmt: skip
    return task(n, "Succeeded", started=T0, finished=T0 + 10 + nvswitch_s, rep=rep)


def test_what_was_learned_survives_a_restart(tmp_path: Path) -> None:
    store = Store(SqlitePersistence(tmp_path / "state.db"))
    learner = Learner(store, min_samples=5)
    durations = [30.0 + n for n in range(30)]
    for n, seconds in enumerate(durations, start=1):
        store.observe(SITE, RACK, _finished(n, seconds), T0 + 100)  # type: ignore[arg-type]
    store.commit()
    before = learner.stage_quantile(KEY, 0.9)
    assert before == pytest.approx(_exact(durations, 0.9), rel=0.03)
    assert learner.task_quantile((SITE, "power_on"), 0.5) == pytest.approx(
        _exact([10 + d for d in durations], 0.5), rel=0.03
    )
    store.persistence.close()
    again = Learner(Store(SqlitePersistence(tmp_path / "state.db")), min_samples=5)
    assert again.stage_quantile(KEY, 0.9) == before
    assert again.stages[KEY].count == len(durations)


def _running(nvswitch_started: float) -> TaskRecord:
    rep = report(
        stage(1, "completed", step("PowerShelf", "completed", T0, T0 + 10), start=T0, end=T0 + 10),
        stage(2, "running", step("NVSwitch", "running", nvswitch_started), start=nvswitch_started),
        stage(3, "pending", step("Compute", "pending")),
    )
    return TaskRecord(SITE, RACK, task(99, "Running", started=T0, rep=rep), Operation.POWER_ON, T0, T0)


def test_a_cold_start_predicts_nothing_and_the_fixed_thresholds_stay() -> None:
    learner = Learner(min_samples=20)
    for _ in range(19):
        learner.stages.setdefault(KEY, Window()).add(40.0)
        learner.stages.setdefault((SITE, "power_on", 3, "Compute"), Window()).add(60.0)
    assert learner.stage_quantile(KEY, 0.5) is None
    assert predict(_running(T0 + 10), learner, now=T0 + 500) is None


def test_overrun_and_expected_finish_from_the_learned_stages() -> None:
    learner = Learner(min_samples=20)
    for n in range(40):
        learner.stages.setdefault(KEY, Window()).add(40.0 + n % 5)  # 40-44 s
        learner.stages.setdefault((SITE, "power_on", 3, "Compute"), Window()).add(60.0)
    record = _running(T0 + 10)
    early = predict(record, learner, now=T0 + 30)  # 20 s into a ~42 s stage
    assert early is not None and (early.stage_number, early.component_type) == (2, "NVSwitch")
    assert early.overrun_ratio == pytest.approx(20 / 44, rel=0.03)
    # The stage's expected end (start + p50), then stage 3 at its p50.
    assert early.expected_finish == pytest.approx(T0 + 10 + 42 + 60, abs=1.5)
    late = predict(record, learner, now=T0 + 10 + 176)  # 4x the p99 of 44 s
    assert late is not None and late.overrun_ratio == pytest.approx(4.0, rel=0.03)
    # Past its p50 the current stage is expected to end now: the finish moves with the clock.
    assert late.expected_finish == pytest.approx(T0 + 10 + 176 + 60, abs=1.5)
