"""The overrun benchmark's bridge to Prometheus's rule engine (``promtool test rules``).

The benchmark's figure is only as good as this bridge: the series notation (gaps, staleness)
and the first-firing read-back are checked here against a hand-computed expectation, with a
tiny rule file whose ``for`` makes the answer known in advance.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from benchmarks import overrun
from tests.conftest import skip_or_fail


def test_the_series_notation_marks_gaps_and_staleness() -> None:
    assert overrun._values({2: 1.0, 3: 2.5}, 6) == "_x1 1.0 2.5 stale _"
    assert overrun._values({0: 4.0}, 1) == "4.0"
    assert overrun._values({}, 3) == "_x2"


def test_the_families_read_follow_recording_rules() -> None:
    rules = yaml.safe_load(overrun.RULES.read_text())
    families = overrun.families_read(rules, ("NicoTaskOverrunning",))
    # The ratio and its info directly; task, site and rack info through nico:task:info.
    assert {"nico_task_overrun_ratio", "nico_task_overrun_info", "nico_task_info"} <= families
    assert {"nico_site_info", "nico_rack_info"} <= families
    assert "nico_task_started_timestamp_seconds" not in families  # only NicoTaskStuck reads it
    assert "nico_task_started_timestamp_seconds" in overrun.families_read(rules, ("NicoTaskStuck",))


def test_first_firing_reads_back_what_the_rule_engine_fired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("promtool is not installed (Debian: apt-get install prometheus)")
        return
    rules = tmp_path / "rules.yml"
    rule = {
        "alert": "NicoTaskOverrunning",
        "expr": 'nico_task_overrun_ratio{job="nico-task-exporter"} > 3',
        "for": "30s",
    }
    rules.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [rule]}]}))
    monkeypatch.setattr(overrun, "RULES", rules)

    def labels(task: str) -> tuple[tuple[str, str], ...]:
        return (("job", overrun.JOB), ("task_id", task))

    recording = overrun.Recording(
        start=1000.0,
        steps=12,
        # a: above 3 from step 2 (t=30 s), held 30 s: fires at t=60 s. b: above 3 only at steps
        # 4-5, then stale: it never holds for 30 s. c: never above 3.
        values={
            ("nico_task_overrun_ratio", labels("a")): {i: 1.0 if i < 2 else 4.0 for i in range(10)},
            ("nico_task_overrun_ratio", labels("b")): {3: 1.0, 4: 5.0, 5: 5.0},
            ("nico_task_overrun_ratio", labels("c")): {i: 2.0 for i in range(12)},
        },
        started={},
        sites={},
        finished=set(),
        flow_sites=[],
    )
    assert overrun.first_firing(recording, promtool) == {("NicoTaskOverrunning", "a"): 1060.0}
