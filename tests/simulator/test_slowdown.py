"""Stage slow-downs (``ScenarioConfig.slowdowns``): a simulation scenario, not NICo behaviour."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest

from exporter.models import ComponentType
from exporter.simulator import ScenarioConfig
from exporter.simulator.scenario import Slowdown
from tests.simulator.world import config, make_world


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


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
