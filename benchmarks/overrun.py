"""How much earlier the learned overrun alert fires than the fixed NicoTaskStuck threshold.

The simulator's ``slow-nvswitch`` preset slows one site's NVSwitch firmware stage 5x halfway,
here with every time scaled by ``SCALE`` (20: 8-12 minute stages, the slow-down at 4 h): with the
preset's 30-second stages a slowed stage is over in 2.5 minutes, before the alert's 5-minute
``for`` could hold. The exporter's poller and learner run against it in simulated time (15 s
active interval). Each 15 s
"scrape" takes the overrun ratio the exporter would export; the alert's condition is applied as
the generated rule does (``ratio > 3`` held for its ``for``, from alerts/config.yml). The fixed
threshold fires at the task's start plus NicoTaskStuck's firmware warning threshold plus its
``for``. Reported: the lead of the first slowed task, and the alerts fired on the
``steady-firmware`` preset (no slow-down: false positives, target 0).

Shortfall, said plainly: the rule is applied here to the exported values, not evaluated by a real
Prometheus (the preset's 28 minutes would need a real-time run of the whole stack).
"""

from __future__ import annotations

import asyncio
import dataclasses

from exporter.learner import Learner, predict
from exporter.poller import Intervals
from exporter.simulator import ScenarioConfig
from exporter.simulator.scenario import SLOW_NVSWITCH_HORIZON_S
from tests.pollharness import Harness, simulation
from tools import alerts

SCRAPE_S = 15.0
SCALE = 20.0


def _scaled(preset: ScenarioConfig) -> ScenarioConfig:
    firmware = {
        k: (lo * SCALE, hi * SCALE) for k, (lo, hi) in preset.stage_seconds.items() if k == "firmware"
    }
    return dataclasses.replace(
        preset,
        arrivals_per_rack_per_hour=preset.arrivals_per_rack_per_hour / SCALE,
        horizon_hours=preset.horizon_hours * SCALE if preset.horizon_hours else None,
        stage_seconds={**preset.stage_seconds, **firmware},
        slowdowns=tuple(dataclasses.replace(s, at_s=s.at_s * SCALE) for s in preset.slowdowns),
    )


async def _alerts(scenario: ScenarioConfig) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """Per task: when the overrun alert fired, when the task started, its site."""
    config = alerts.load_alert_config()
    ratio, hold = config.overrun_ratio, config.for_["NicoTaskOverrunning"]
    sim, clock = simulation(scenario)
    start = clock.now().timestamp()
    h = Harness(
        sim, clock, intervals=Intervals(active=SCRAPE_S, tray_attribution=600, reconcile=120, discovery=300)
    )
    learner = Learner(h.store)
    above_since: dict[str, float] = {}
    fired: dict[str, float] = {}
    started: dict[str, float] = {}
    sites: dict[str, str] = {}
    while h.now() - start < (SLOW_NVSWITCH_HORIZON_S + 600) * SCALE:
        await h.run(SCRAPE_S, step=SCRAPE_S)
        now = h.now()
        for record in h.store.records():
            guess = predict(record, learner, now)
            if guess is None or guess.overrun_ratio <= ratio:
                above_since.pop(record.id, None)
                continue
            since = above_since.setdefault(record.id, now)
            if now - since >= hold and record.id not in fired:
                fired[record.id] = now
                sites[record.id] = record.site_id
                if record.task.started is not None:
                    started[record.id] = record.task.started.timestamp()
    await h.close()
    return fired, started, sites


def run() -> dict[str, float]:
    config = alerts.load_alert_config()
    stuck_after = config.stuck["firmware_update"].warning + config.for_["NicoTaskStuck"]
    fired, started, _ = asyncio.run(_alerts(_scaled(ScenarioConfig.slow_nvswitch())))
    first = min(fired, key=lambda t: fired[t])
    lead = started[first] + stuck_after - fired[first]
    false_fired, _, _ = asyncio.run(_alerts(_scaled(ScenarioConfig.steady_firmware())))
    return {
        "overrun_detection_lead_s": round(lead, 1),
        "overrun_alerts_slowed_site": float(len(fired)),
        "overrun_false_positive_alerts": float(len(false_fired)),
    }


if __name__ == "__main__":
    print(run())
