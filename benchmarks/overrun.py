"""How much earlier the learned overrun alert fires than the fixed NicoTaskStuck threshold,
with both alerts evaluated by Prometheus's own rule engine.

The simulator's ``slow-nvswitch`` preset slows one site's NVSwitch firmware stage 5x halfway,
here with every time scaled by ``SCALE`` (20: 8-12 minute stages, the slow-down at 4 h): with the
preset's 30-second stages a slowed stage is over in 2.5 minutes, before the alert's 5-minute
``for`` could hold. The exporter (poller, learner, publisher) runs against it in simulated time
with a 15 s active interval. Every 15 s a scrape renders the snapshot's exposition, as ``/metrics``
would, and keeps the samples of the families the two alerts read.

The scrapes become the input series of a ``promtool test rules`` run of the shipped rule file
(``alerts/nico-task-exporter.rules.yml``, unchanged: the real thresholds, ``for`` and joins), so
Prometheus's rule manager evaluates every rule at 15 s steps over the whole run and writes its
``ALERTS`` series; one query then reads the first firing time of each alert per task. The
differences from a live Prometheus, said plainly: time is simulated (the run covers 11.7 hours),
the scrape adds the ``job`` label as the rules' selector expects, a vanished series gets a
staleness marker as a scrape would give it, and the ``*_timestamp_seconds`` values are shifted so
that the test's epoch (promtool starts its clock at 0) is the first scrape.

Reported: the lead of the first slowed task over the fixed threshold, the overrun alerts on the
slowed site and elsewhere, and the alerts on the ``steady-firmware`` preset (no slow-down: false
positives, target 0). The slowed tasks run about an hour, under NicoTaskStuck's 2 h firmware
warning, so that alert fires for none of them: the lead is measured against the time it would
fire (start + warning + its ``for``), and ``stuck_alerts_fired`` says how often it did.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import shutil
import subprocess
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.exposition import Format
from exporter.learner import Learner
from exporter.metrics import ClientMetrics, TaskMetrics
from exporter.mixin import alerts
from exporter.poller import Intervals
from exporter.simulator import ScenarioConfig
from exporter.simulator.scenario import SLOW_NVSWITCH_HORIZON_S
from exporter.snapshot import Publisher
from tests.pollharness import Harness, simulation
from tools.paths import ROOT

SCRAPE_S = 15.0
SCALE = 20.0
RULES = ROOT / "alerts" / "nico-task-exporter.rules.yml"
ALERTS = ("NicoTaskOverrunning", "NicoTaskStuck")
JOB = "nico-task-exporter"

Series = tuple[str, tuple[tuple[str, str], ...]]


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


def families_read(rules: dict[str, Any], alert_names: tuple[str, ...]) -> set[str]:
    """The exporter families that ``alert_names`` read, through the recording rules they use."""
    exprs: dict[str, list[str]] = defaultdict(list)
    for group in rules["groups"]:
        for rule in group["rules"]:
            exprs[rule.get("alert") or rule.get("record")].append(rule["expr"])
    wanted: set[str] = set()
    todo = list(alert_names)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for expr in exprs[name]:
            wanted |= set(re.findall(r"\bnico_[a-z0-9_]+", expr))
            todo += [r for r in re.findall(r"\bnico:[a-z0-9_:]+", expr) if r in exprs]
    return wanted


@dataclass
class Recording:
    """Samples per series per scrape (``None``: absent), the first scrape's time, task facts."""

    start: float
    steps: int
    values: dict[Series, dict[int, float]]
    started: dict[str, float]
    sites: dict[str, str]
    finished: set[str]
    flow_sites: list[str]


async def _record(scenario: ScenarioConfig, families: set[str]) -> Recording:
    sim, clock = simulation(scenario)
    h = Harness(
        sim, clock, intervals=Intervals(active=SCRAPE_S, tray_attribution=600, reconcile=120, discovery=300)
    )
    publisher = Publisher(
        h.store, h.poller, TaskMetrics(), ClientMetrics(), learner=Learner(h.store), clock=h.now
    )
    begin = h.now()
    values: dict[Series, dict[int, float]] = defaultdict(dict)
    started: dict[str, float] = {}
    sites: dict[str, str] = {}
    step = 0
    start = math.nan
    while h.now() - begin < (SLOW_NVSWITCH_HORIZON_S + 600) * SCALE:
        await h.run(SCRAPE_S, step=SCRAPE_S)
        if step == 0:
            start = h.now()
        text = publisher.publish().render(Format.TEXT, names=families, now=h.now()).decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name not in families:
                    continue
                value = sample.value
                if sample.name.endswith("_timestamp_seconds"):
                    value -= start  # promtool's clock starts at 0 at the first scrape
                labels = tuple(sorted({**sample.labels, "job": JOB}.items()))
                values[(sample.name, labels)][step] = value
        for record in h.store.records():
            sites[record.id] = record.site_id
            if record.task.started is not None:
                started[record.id] = record.task.started.timestamp()
        step += 1
    finished = set(h.finished_ids())
    flow_sites = [site.id for site in sim.world.sites.values() if site.flow]
    await h.close()
    return Recording(start, step, dict(values), started, sites, finished, flow_sites)


def _values(points: dict[int, float], steps: int) -> str:
    """promtool's series notation: ``_`` before the first sample, ``stale`` after each run."""
    out: list[str] = []
    for i in range(steps):
        if i in points:
            out.append(repr(points[i]))
        elif i - 1 in points:
            out.append("stale")
        else:
            out.append("_")
    # Collapse runs of "_" (promtool: "_xN" is N+1 missing samples).
    text: list[str] = []
    run = 0
    for token in [*out, ""]:
        if token == "_":
            run += 1
            continue
        if run:
            text.append("_" if run == 1 else f"_x{run - 1}")
            run = 0
        if token:
            text.append(token)
    return " ".join(text)


GOT = re.compile(r"\{([^{}]*)\} (\S+?)(?:, |$)")
LABEL = re.compile(r'(\w+)="([^"]*)"')


def first_firing(recording: Recording, promtool: str) -> dict[tuple[str, str], float]:
    """(alert, task id) -> when Prometheus's rule engine first had it firing (sim epoch seconds)."""
    end = recording.steps * int(SCRAPE_S)
    query = (
        f'min by (alertname, task_id) (min_over_time(timestamp(ALERTS{{alertstate="firing", '
        f'alertname=~"{"|".join(ALERTS)}"}})[{end}s:{int(SCRAPE_S)}s]))'
    )
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": f"{int(SCRAPE_S)}s",
        "tests": [
            {
                "interval": f"{int(SCRAPE_S)}s",
                "input_series": [
                    {
                        "series": name + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}",
                        "values": _values(points, recording.steps),
                    }
                    for (name, labels), points in recording.values.items()
                ],
                # Expects nothing, so promtool prints what the query found.
                "promql_expr_test": [
                    {"expr": query, "eval_time": f"{end - int(SCRAPE_S)}s", "exp_samples": []}
                ],
            }
        ],
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "overrun-test.yml"
        path.write_text(yaml.safe_dump(test, width=1 << 20))
        proc = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return {}  # nothing fired
    got = next((line for line in out.splitlines() if line.strip().startswith("got:")), None)
    if got is None:
        raise RuntimeError(f"promtool failed without a result:\n{out[-2000:]}")
    fired: dict[tuple[str, str], float] = {}
    for labels, value in GOT.findall(got.split("got:", 1)[1].strip()):
        found = dict(LABEL.findall(labels))
        fired[(found["alertname"], found["task_id"])] = recording.start + float(value)
    return fired


def run() -> dict[str, float]:
    promtool = shutil.which("promtool")
    if promtool is None:
        raise RuntimeError("the overrun benchmark needs promtool (Debian: apt-get install prometheus)")
    config = alerts.load_alert_config()
    stuck_after = config.stuck["firmware_update"].warning + config.for_["NicoTaskStuck"]
    families = families_read(yaml.safe_load(RULES.read_text()), ALERTS)

    preset = ScenarioConfig.slow_nvswitch()
    slow = asyncio.run(_record(_scaled(preset), families))
    fired = first_firing(slow, promtool)
    overrun = {t: at for (name, t), at in fired.items() if name == "NicoTaskOverrunning"}
    slow_site = slow.flow_sites[preset.slowdowns[0].site_index]
    first = min((t for t in overrun if slow.sites[t] == slow_site), key=lambda t: overrun[t])
    lead = slow.started[first] + stuck_after - overrun[first]

    steady = asyncio.run(_record(_scaled(ScenarioConfig.steady_firmware()), families))
    false_fired = first_firing(steady, promtool)
    return {
        "overrun_detection_lead_s": round(lead, 1),
        "overrun_alerts_slowed_site": float(sum(slow.sites[t] == slow_site for t in overrun)),
        "overrun_alerts_other_sites": float(sum(slow.sites[t] != slow_site for t in overrun)),
        "stuck_alerts_fired": float(sum(name == "NicoTaskStuck" for name, _ in fired)),
        "overrun_false_positive_alerts": float(sum(name == "NicoTaskOverrunning" for name, _ in false_fired)),
        "tasks_finished": float(len(slow.finished)),
    }


if __name__ == "__main__":
    print(run())
