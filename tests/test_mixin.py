"""``nico-task-exporter mixin``: the alert rules and dashboards from an installed exporter.

The real CLI runs as a subprocess. With no ``--config`` it must write the committed files byte
for byte; with a user's file it must change them exactly where that file says: each expectation
is the committed text with a hand-written substitution, so anything else that moved fails.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter import cli
from exporter.mixin import alerts, dashboards
from tools.paths import DASHBOARD_DIR, PROMETHEUS_RULE_PATH, ROOT, RULES_PATH

SHIPPED = ROOT / "exporter" / "mixin" / "config.yml"
COMMITTED = {
    "nico-task-exporter.rules.yml": RULES_PATH,
    "prometheusrule.yaml": PROMETHEUS_RULE_PATH,
    **{f"dashboards/{p.name}": p for p in DASHBOARD_DIR.glob("*.json")},
}

# A user's variables: only what changes (the rest keeps the shipped values).
SELECTOR = 'job="nte", cluster="prod"'
USER_VARIABLES = f"""\
selector: '{SELECTOR}'
alerts:
  NicoTaskStuck:
    operations:
      power_on: {{critical: 45m}}
"""
SHIPPED_SELECTOR = 'job="nico-task-exporter"'  # exporter/mixin/config.yml's, by hand
# power_on's critical threshold, shipped 30m (1800 s) and the user's 45m (2700 s); its warning
# stays 15m.
STUCK_RULE_BEFORE = 'nico:task_running:seconds{operation="power_on"} > 1800'
STUCK_RULE_AFTER = 'nico:task_running:seconds{operation="power_on"} > 2700'
STUCK_VECTOR_BEFORE = 'label_replace(vector(1800), \\"operation\\", \\"power_on\\"'
STUCK_VECTOR_AFTER = 'label_replace(vector(2700), \\"operation\\", \\"power_on\\"'


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("nico-task-exporter")  # the installed entry point
    command = [str(script)] if script.exists() else [sys.executable, "-m", "exporter"]
    return subprocess.run(
        [*command, "mixin", *args], capture_output=True, text=True, check=False, timeout=120, cwd=cwd
    )


def _written(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): p.read_text(encoding="utf-8")
        for p in directory.rglob("*")
        if p.is_file()
    }


def _user_selector(text: str) -> str:
    """``text`` with the user's selector in every nico_* matcher that carried the shipped one."""
    return re.sub(r"(nico_[a-z0-9_]+)\{" + re.escape(SHIPPED_SELECTOR), rf"\1{{{SELECTOR}", text)


def test_without_variables_it_writes_the_committed_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _cli("--output-dir", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = _written(out)
    assert sorted(written) == sorted(COMMITTED)
    for name, path in COMMITTED.items():
        assert written[name] == path.read_text(encoding="utf-8"), name


def test_a_users_variables_change_the_outputs_exactly_there(tmp_path: Path) -> None:
    variables = tmp_path / "my-mixin.yml"
    variables.write_text(USER_VARIABLES, encoding="utf-8")
    out = tmp_path / "out"
    result = _cli("--config", str(variables), "--output-dir", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = _written(out)
    assert sorted(written) == sorted(COMMITTED)

    for name in ("nico-task-exporter.rules.yml", "prometheusrule.yaml"):
        committed = COMMITTED[name].read_text(encoding="utf-8")
        assert committed.count(STUCK_RULE_BEFORE) == 1, "the shipped critical threshold moved"
        expected = _user_selector(committed).replace(STUCK_RULE_BEFORE, STUCK_RULE_AFTER)
        assert expected != committed
        assert written[name] == expected, name

    groups = yaml.safe_load(written["nico-task-exporter.rules.yml"])["groups"]
    exprs = [rule["expr"] for group in groups for rule in group["rules"]]
    matchers = [m for expr in exprs for m in re.findall(r"(?<![\w:])nico_[a-z0-9_]+(?![\w:])(.{0,40})", expr)]
    assert len(matchers) > 30  # the rules read nico_* series throughout
    assert all(m.startswith("{" + SELECTOR) for m in matchers), [m for m in matchers if SELECTOR not in m]
    assert 'up{job="nico-task-exporter"}' in "\n".join(exprs)  # up_selector is its own variable

    for name, path in COMMITTED.items():
        if not name.startswith("dashboards/"):
            continue
        committed = path.read_text(encoding="utf-8")
        expected = committed
        if name == "dashboards/nico-fleet.json":  # the stuck stat and table: text and query
            assert committed.count("power_on 15m/30m") == 2 and committed.count(STUCK_VECTOR_BEFORE) == 2
            expected = committed.replace("power_on 15m/30m", "power_on 15m/45m").replace(
                STUCK_VECTOR_BEFORE, STUCK_VECTOR_AFTER
            )
            assert expected != committed
        assert written[name] == expected, f"{name}: the dashboards take no selector, only the thresholds"


def test_print_config_is_the_shipped_file_and_a_valid_start(tmp_path: Path) -> None:
    printed = _cli("--print-config", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == SHIPPED.read_text(encoding="utf-8")
    start = tmp_path / "start.yml"
    start.write_text(printed.stdout, encoding="utf-8")
    assert alerts.load_alert_config(start) == alerts.load_alert_config()


def _stuck_overrun(board: dict[str, Any]) -> object:
    panels = [p for p in board["panels"] if p.get("title") == "Stuck tasks (longest running first)"]
    (overrides,) = [p["fieldConfig"]["overrides"] for p in panels]
    (overrun,) = [o for o in overrides if o["matcher"]["options"] == "Overrun"]
    (thresholds,) = [p["value"] for p in overrun["properties"] if p["id"] == "thresholds"]
    return thresholds["steps"][-1]["value"]


def test_the_overrun_colour_follows_the_alerts_ratio(tmp_path: Path) -> None:
    variables = tmp_path / "ratio.yml"
    variables.write_text("alerts: {NicoTaskOverrunning: {ratio: 4.5}}\n", encoding="utf-8")
    fleet = json.loads(dashboards.render_all(alerts.load_alert_config(variables))["nico-fleet.json"])
    assert _stuck_overrun(fleet) == 4.5
    shipped = json.loads((DASHBOARD_DIR / "nico-fleet.json").read_text(encoding="utf-8"))
    assert (
        _stuck_overrun(shipped)
        == yaml.safe_load(SHIPPED.read_text())["alerts"]["NicoTaskOverrunning"]["ratio"]
    )


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("alerts: {NicoTaskStuck: {fro: 5m}}\n", "alerts.NicoTaskStuck.fro"),
        ("selectr: 'job=\"x\"'\n", "selectr"),
        ("alerts: {NicoSiteDown: {severity: page}}\n", "NicoSiteDown.severity"),
        ("alerts: {NicoTaskStuck: {operations: {power_on: {critical: soon}}}}\n", "power_on.critical"),
        ("alerts: {NicoTaskStuck: {operations: {reboot: {warning: 1m, critical: 2m}}}}\n", "reboot"),
        ("alerts: {NicoTaskStuck: 5m}\n", "alerts.NicoTaskStuck"),
        ("alerts: {NicoTaskOverrunning: {ratio: often}}\n", "NicoTaskOverrunning.ratio"),
        ("alerts: [\n", "line 2"),
    ],
)
def test_a_bad_variables_file_exits_non_zero_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, named: str
) -> None:
    variables = tmp_path / "bad.yml"
    variables.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    assert cli.main(["mixin", "--config", str(variables), "--output-dir", str(out)]) == 1
    error = capsys.readouterr().err
    assert named in error and str(variables) in error, error
    assert not out.exists()  # nothing half-written


def test_a_missing_output_dir_or_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["mixin"]) == 2
    assert "--output-dir" in capsys.readouterr().err
    missing = tmp_path / "nowhere.yml"
    assert cli.main(["mixin", "--config", str(missing), "--output-dir", str(tmp_path / "out")]) == 1
    assert str(missing) in capsys.readouterr().err
