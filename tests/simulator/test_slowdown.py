"""Stage slow-downs (``ScenarioConfig.slowdowns``) and the ``slow-nvswitch`` preset: a simulation
scenario, not NICo behaviour (docs/simulator.md, *Preset slow-nvswitch*)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from exporter.cli import _simulation, build_parser
from exporter.models import ComponentType
from exporter.simulator import ManualClock, Operation, ScenarioConfig, Simulation
from exporter.simulator.scenario import SLOW_NVSWITCH_AT_S, Slowdown
from tests.simulator.world import config, make_world

START = datetime.fromisoformat("2026-06-08T18:00:00+00:00")
# Every task of the preset has finished by then (arrivals stop at 1500 s).
END_S = 2400.0

Key = tuple[str, int, str]  # (site name, stage number, component type)


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def run_preset(scenario: ScenarioConfig) -> tuple[Simulation, dict[str, Any]]:
    clock = ManualClock(START)
    sim = Simulation(config(scenario=scenario), clock=clock)
    # In steps, as a poller sees it: the lazily advanced world must not depend on the step size.
    for _ in range(int(END_S // 300)):
        clock.advance(300.0)
    return sim, sim.truth_json()


def stage_durations(truth: dict[str, Any], at: datetime) -> dict[tuple[Key, bool], list[float]]:
    """Seconds per (site, stage, component type) and whether the stage began at ``at`` or later."""
    names = {site["id"]: site["name"] for site in truth["sites"]}
    out: dict[tuple[Key, bool], list[float]] = defaultdict(list)
    for task in truth["tasks"]:
        for stage in task["report"]["stages"]:
            (step,) = stage["steps"]
            began = parse(stage["startedAt"])
            seconds = (parse(stage["finishedAt"]) - began).total_seconds()
            out[((names[task["siteId"]], stage["number"], step["componentType"]), began >= at)].append(
                seconds
            )
    return out


@pytest.fixture(scope="module")
def slow() -> tuple[Simulation, dict[str, Any]]:
    return run_preset(ScenarioConfig.slow_nvswitch())


def test_preset_shape() -> None:
    preset = ScenarioConfig.slow_nvswitch()
    assert (preset.sites, preset.racks_per_site, preset.failure_rate, preset.stuck_tasks) == (3, 8, 0.0, 0)
    assert preset.operation_mix == {Operation.FIRMWARE_UPDATE: 1.0}
    assert preset.slowdowns == (
        Slowdown(site_index=1, factor=5.0, at_s=SLOW_NVSWITCH_AT_S, operation="firmware_update"),
    )
    assert preset.slowdowns[0].component_type is ComponentType.NVSWITCH
    # factor 1 is the baseline: the same traffic and no slow-down at all.
    assert ScenarioConfig.slow_nvswitch(factor=1.0) == ScenarioConfig.steady_firmware()
    assert ScenarioConfig.steady_firmware().slowdowns == ()


def test_truth_names_the_slow_site_and_when(slow: tuple[Simulation, dict[str, Any]]) -> None:
    sim, truth = slow
    site_b = next(site for site in sim.sites() if site.name == "site-b")
    assert truth["slowdowns"] == [
        {
            "siteId": site_b.id,
            "siteName": "site-b",
            "operation": "firmware_update",
            "componentType": "NVSwitch",
            "factor": 5.0,
            "at": "2026-06-08T18:12:00Z",
        }
    ]


def test_nothing_fails_or_sticks(slow: tuple[Simulation, dict[str, Any]]) -> None:
    _, truth = slow
    assert {task["status"] for task in truth["tasks"]} == {"Succeeded"}
    assert {task["operation"] for task in truth["tasks"]} == {"firmware_update"}
    assert {len(task["trayIds"]) for task in truth["tasks"]} == {35}  # rack-wide only
    assert max(parse(task["finished"]) for task in truth["tasks"]) < START + timedelta(seconds=1800)


def test_slow_site_nvswitch_takes_five_times_as_long(slow: tuple[Simulation, dict[str, Any]]) -> None:
    _, truth = slow
    at = parse(truth["slowdowns"][0]["at"])
    durations = stage_durations(truth, at)
    keys = {key for key, _after in durations}
    assert keys == {
        (site, n, kind)
        for site in ("site-a", "site-b", "site-c")
        for n, kind in ((1, "Compute"), (2, "NVSwitch"))
    }
    for key in keys:
        before, after = durations[(key, False)], durations[(key, True)]
        # An exporter learning per (site, operation, stage, component type) has well over 20 samples.
        assert len(before) >= 30, (key, len(before))
        assert len(after) >= 20, (key, len(after))
        assert all(24.0 <= seconds <= 36.0 for seconds in before), key  # 30 s +-20 %
        ratio = statistics.median(after) / statistics.median(before)
        if key == ("site-b", 2, "NVSwitch"):
            assert 4.0 <= ratio <= 6.0, ratio
            assert all(120.0 <= seconds <= 180.0 for seconds in after)
        else:
            assert 0.8 <= ratio <= 1.25, (key, ratio)
            assert all(24.0 <= seconds <= 36.0 for seconds in after), key


async def test_rest_reports_show_the_slow_down() -> None:
    """What the exporter sees: each task's report over REST, not the truth."""
    async for w in make_world(config(scenario=ScenarioConfig.slow_nvswitch())):
        w.advance(END_S)
        site = next(site for site in w.sim.sites() if site.name == "site-b")
        at = START + timedelta(seconds=SLOW_NVSWITCH_AT_S)
        before: list[float] = []
        after: list[float] = []
        for truth in w.sim.truth():
            if truth.site_id != site.id:
                continue
            response = await w.get(f"/task/{truth.id}", siteId=site.id)
            assert response.status_code == 200, response.text
            stage = response.json()["report"]["stages"][1]
            assert stage["steps"][0]["componentType"] == "NVSwitch"
            began = parse(stage["startedAt"])
            (after if began >= at else before).append((parse(stage["finishedAt"]) - began).total_seconds())
        assert 4.0 <= statistics.median(after) / statistics.median(before) <= 6.0


def test_reproducible_by_seed(slow: tuple[Simulation, dict[str, Any]]) -> None:
    _, truth = slow
    _, again = run_preset(ScenarioConfig.slow_nvswitch())
    assert again["tasks"] == truth["tasks"]
    assert again["rejected"] == truth["rejected"]
    _, other = run_preset(ScenarioConfig.slow_nvswitch(seed=2))
    assert [task["created"] for task in other["tasks"]] != [task["created"] for task in truth["tasks"]]


def test_baseline_is_the_same_traffic_without_the_slow_down(slow: tuple[Simulation, dict[str, Any]]) -> None:
    _, truth = slow
    _, baseline = run_preset(ScenarioConfig.steady_firmware())
    assert baseline["slowdowns"] == []
    at = START + timedelta(seconds=SLOW_NVSWITCH_AT_S)

    def early(t: dict[str, Any]) -> list[tuple[str, str, str]]:
        return [
            (task["id"], task["rackId"], task["created"])
            for task in t["tasks"]
            if parse(task["created"]) < at
        ]

    # Until the slow-down begins the two runs are the same run.
    assert early(baseline) == early(truth)
    durations = stage_durations(baseline, at)
    assert {task["status"] for task in baseline["tasks"]} == {"Succeeded"}
    for (key, _after), seconds in durations.items():
        assert all(24.0 <= value <= 36.0 for value in seconds), key


# --- the knob on a quiet world ----------------------------------------------------------------


def slowed(**slowdown: Any) -> Any:
    quiet = ScenarioConfig.quiet(sites=1, racks_per_site=2, non_flow_sites=1)
    return make_world(config(scenario=replace(quiet, slowdowns=(Slowdown(site_index=0, **slowdown),))))


def seconds_of(task: dict[str, Any]) -> list[float]:
    return [
        (parse(stage["finishedAt"]) - parse(stage["startedAt"])).total_seconds()
        for stage in task["report"]["stages"]
    ]


async def test_only_stages_beginning_after_the_moment_slow_down() -> None:
    async for w in slowed(factor=3.0, at_s=20.0):
        # Admitted at 1 s, stage 1 from 2 s to 12 s, stage 2 from 12 s: before the slow-down.
        early = w.sim.create_task(w.site_id, w.rack_id, "firmware_update", stage_seconds=10.0)
        w.advance(15.0)
        # Stage 1 begins at 17 s (before), stage 2 at 27 s (after): only stage 2 slows.
        late = w.sim.create_task(w.site_id, w.rack2_id, "firmware_update", stage_seconds=10.0)
        w.advance(100.0)
        assert seconds_of(await w.task(early)) == [10.0, 10.0]
        assert seconds_of(await w.task(late)) == [10.0, 30.0]


async def test_other_operations_and_component_types_keep_their_pace() -> None:
    async for w in slowed(factor=4.0, at_s=0.0):
        compute_only = w.sim.create_task(
            w.site_id,
            w.rack_id,
            "firmware_update",
            tray_ids=[w.tray(ComponentType.COMPUTE)],
            stage_seconds=10.0,
        )
        power = w.sim.create_task(w.site_id, w.rack2_id, "power_on", stage_seconds=10.0)
        w.advance(100.0)
        # Stage 2 has no NVSwitch to update: it completes at once.
        assert seconds_of(await w.task(compute_only)) == [10.0, 0.0]
        assert seconds_of(await w.task(power)) == [10.0, 10.0, 10.0]


async def test_a_slowdown_of_power_shelves_on_power_on() -> None:
    """The knob is general: any operation and component type its rule has a step for."""
    async for w in slowed(
        factor=2.0, at_s=0.0, operation="power_on", component_type=ComponentType.POWERSHELF
    ):
        task = w.sim.create_task(w.site_id, w.rack_id, "power_on", stage_seconds=10.0)
        firmware = w.sim.create_task(w.site_id, w.rack2_id, "firmware_update", stage_seconds=10.0)
        w.advance(100.0)
        assert seconds_of(await w.task(task)) == [20.0, 10.0, 10.0]
        assert seconds_of(await w.task(firmware)) == [10.0, 10.0]


async def test_truth_says_where_and_when() -> None:
    async for w in slowed(factor=3.0, at_s=90.0):
        assert (await w.http.get("/_sim/truth")).json()["slowdowns"] == [
            {
                "siteId": w.site_id,
                "siteName": "site-a",
                "operation": "firmware_update",
                "componentType": "NVSwitch",
                "factor": 3.0,
                "at": "2026-06-08T18:01:30Z",
            }
        ]
    async for w in make_world():
        assert (await w.http.get("/_sim/truth")).json()["slowdowns"] == []


def test_slowdowns_are_checked() -> None:
    with pytest.raises(ValueError, match="no PowerShelf step"):
        Slowdown(site_index=0, factor=5.0, at_s=0.0, component_type=ComponentType.POWERSHELF)
    with pytest.raises(ValueError, match="factor must be positive"):
        Slowdown(site_index=0, factor=0.0, at_s=0.0)
    with pytest.raises(ValueError, match="only 1 Flow sites"):
        replace(ScenarioConfig.quiet(), slowdowns=(Slowdown(site_index=1, factor=5.0, at_s=0.0),))


@pytest.mark.parametrize(("preset", "slowdowns"), [("slow-nvswitch", 1), ("steady-firmware", 0)])
def test_cli_presets(preset: str, slowdowns: int) -> None:
    args = build_parser().parse_args(["simulate", "--scenario", preset, "--seed", "3"])
    sim = _simulation(args)
    assert sim.config.scenario == ScenarioConfig.slow_nvswitch(seed=3, factor=5.0 if slowdowns else 1.0)
    assert not sim.config.task_runs  # a v2.0 server: the preset needs no Task Runs
    assert len(sim.truth_json()["slowdowns"]) == slowdowns
