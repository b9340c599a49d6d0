"""The alert rules: generated from the mixin's variables, valid, unit-tested, documented, routable."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from exporter.mixin import alerts
from tests.conftest import skip_or_fail
from tests.families import unknown_families
from tools.paths import PROMETHEUS_RULE_PATH, ROOT, RULES_PATH

TESTS_DIR = ROOT / "alerts" / "tests"
EXAMPLE = ROOT / "alerts" / "alertmanager.example.yml"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        skip_or_fail(
            f"`{name}` is not installed (Debian: apt-get install prometheus prometheus-alertmanager)"
        )
    assert path is not None
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False, cwd=ROOT)


def _alert_rules(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _committed_groups() -> list[dict[str, Any]]:
    return list(yaml.safe_load(RULES_PATH.read_text())["groups"])


def test_committed_files_are_what_the_generator_renders() -> None:
    config = alerts.load_alert_config()
    assert RULES_PATH.read_text() == alerts.render_rules(config), (
        "alerts/nico-task-exporter.rules.yml is stale: run `make generate`"
    )
    assert PROMETHEUS_RULE_PATH.read_text() == alerts.render_prometheus_rule(config), (
        "deploy/kubernetes/base/prometheusrule.yaml is stale: run `make generate`"
    )


def test_prometheus_rule_has_the_same_groups_as_the_rule_file() -> None:
    rule = yaml.safe_load(PROMETHEUS_RULE_PATH.read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["name"]
    assert rule["spec"]["groups"] == _committed_groups()


def test_every_alert_of_the_contract_is_defined() -> None:
    names = {rule["alert"] for rule in _alert_rules(_committed_groups())}
    assert names == set(alerts.ALERTS)
    contract = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    assert all(f"`{name}`" in contract for name in alerts.ALERTS)


def test_every_alert_is_actionable() -> None:
    for rule in _alert_rules(_committed_groups()):
        name = rule["alert"]
        assert rule["labels"]["severity"] in alerts.SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        url = annotations["runbook_url"]
        assert url == f"{alerts.load_alert_config().runbook_url_base}/{name}.md"
        runbook = ROOT / "docs" / "runbooks" / f"{name}.md"
        assert runbook.exists(), f"no runbook for {name}"
        text = runbook.read_text()
        assert text.startswith(f"# {name}\n")
        for section in ("## Meaning", "## Impact", "## Diagnosis", "## Mitigation", "## Escalation"):
            assert section in text, f"{runbook.name} lacks {section}"


def test_every_rule_reads_known_families() -> None:
    """Expressions and the annotations' queries name only families of exporter/metrics.py."""
    for group in _committed_groups():
        for rule in group["rules"]:
            text = rule["expr"] + " ".join(rule.get("annotations", {}).values())
            assert unknown_families(text) == set(), rule.get("alert") or rule.get("record")


def test_run_alerts_have_their_two_severities() -> None:
    rules = _alert_rules(_committed_groups())
    paused = [r for r in rules if r["alert"] == "NicoTaskRunPaused"]
    assert {r["labels"]["severity"] for r in paused} == {"critical", "warning"}
    critical = next(r for r in paused if r["labels"]["severity"] == "critical")
    assert 'reason="SafetyGate"' in critical["expr"]
    failed = {r["labels"]["severity"]: r["expr"] for r in rules if r["alert"] == "NicoTaskRunFailed"}
    assert 'status="Failed"' in failed["critical"]
    assert 'status="CompletedWithFailures"' in failed["warning"]


def test_stuck_has_warning_and_critical_and_no_progress() -> None:
    stuck = [r for r in _alert_rules(_committed_groups()) if r["alert"] == "NicoTaskStuck"]
    assert {(r["labels"]["severity"], r["labels"]["condition"]) for r in stuck} == {
        ("warning", "running_too_long"),
        ("critical", "running_too_long"),
        ("warning", "no_progress"),
    }
    config = alerts.load_alert_config()
    critical = next(r for r in stuck if r["labels"]["severity"] == "critical")
    for operation, thresholds in config.stuck.items():
        assert f'{{operation="{operation}"}} > {thresholds.critical:g}' in critical["expr"]


def test_trace_url_is_added_only_when_a_tracing_ui_is_configured() -> None:
    config = alerts.load_alert_config()
    assert "trace_url" not in alerts.render_rules(dataclasses.replace(config, trace_url_prefix=""))
    traced = dataclasses.replace(config, trace_url_prefix="https://jaeger.example.com/trace/")
    failed = next(r for r in _alert_rules(alerts.rule_groups(traced)) if r["alert"] == "NicoTaskFailed")
    assert failed["annotations"]["trace_url"] == "https://jaeger.example.com/trace/{{ $labels.trace_id }}"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("alerts", "NicoSiteDown", "severity"), "page", "severity"),
        (("alerts", "NicoTaskStuck", "operations", "reboot"), {"warning": "1m", "critical": "2m"}, "reboot"),
        (("alerts", "NicoTaskStuck", "default"), {"warning": "2h", "critical": "1h"}, "critical must be"),
        (("alerts", "NicoTaskWaitingTooLong", "after"), "soon", "after"),
        (("alerts", "NicoTaskRunPaused", "safety_gate_severity"), "page", "safety_gate_severity"),
        (("alerts", "NicoTaskRunStalled", "window"), "0s", "window"),
        (("alerts", "NicoTaskOverrunning", "ratio"), 0, "NicoTaskOverrunning.ratio"),
        (("alerts", "NicoTaskOverrunning", "ratio"), "often", "NicoTaskOverrunning.ratio"),
        (("alerts", "NicoExporterBudgetShort", "severity"), "page", "NicoExporterBudgetShort.severity"),
        (("alerts", "NicoExporterCredentialsRefused", "for"), "soon", "NicoExporterCredentialsRefused.for"),
    ],
)
def test_bad_variables_are_named(path: tuple[str, ...], value: object, message: str) -> None:
    raw = yaml.safe_load(alerts.CONFIG_PATH.read_text())
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ValueError, match=message):
        alerts.config_from_mapping(raw)


def test_promtool_accepts_the_rules() -> None:
    result = _run(_tool("promtool"), "check", "rules", str(RULES_PATH))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_promtool_tests_that_fire_and_stay_silent() -> None:
    for name in alerts.ALERTS:
        path = TESTS_DIR / f"{name}.yml"
        assert path.exists(), f"no promtool test for {name}"
        cases = [
            case
            for test in yaml.safe_load(path.read_text())["tests"]
            for case in test.get("alert_rule_test", [])
            if case["alertname"] == name
        ]
        assert any(case.get("exp_alerts") for case in cases), f"{name}: no firing case"
        assert any(not case.get("exp_alerts") for case in cases), f"{name}: no silent case"
        for case in cases:
            for alert in case.get("exp_alerts") or []:
                assert {"summary", "description", "runbook_url"} <= set(alert["exp_annotations"])
                assert "severity" in alert["exp_labels"]


def test_promtool_unit_tests_pass() -> None:
    files = sorted(str(p) for p in TESTS_DIR.glob("*.yml"))
    result = _run(_tool("promtool"), "test", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_example_is_valid() -> None:
    result = _run(_tool("amtool"), "check-config", str(EXAMPLE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_example_routes_pages_groups_by_site_and_inhibits() -> None:
    config = yaml.safe_load(EXAMPLE.read_text())
    route = config["route"]
    assert route["group_by"] == ["alertname", "site_id"]
    receivers = {r["name"]: r for r in config["receivers"]}
    critical = next(r for r in route["routes"] if 'severity="critical"' in r["matchers"])
    assert "routing_key_file" in receivers[critical["receiver"]]["pagerduty_configs"][0]
    warning = next(r for r in route["routes"] if 'severity="warning"' in r["matchers"])
    assert receivers[warning["receiver"]].get("webhook_configs")
    inhibit = config["inhibit_rules"]
    for source in ("NicoSiteDown", "NicoExporterDataStale"):
        rule = next(r for r in inhibit if r["source_matchers"] == [f'alertname="{source}"'])
        assert rule["equal"] == ["site_id"]
        assert all(
            name in rule["target_matchers"][0]
            for name in ("NicoTaskStuck", "NicoTaskFailed", "NicoTaskOverrunning")
        )
        assert all(
            name in rule["target_matchers"][0] for name in alerts.ALERTS if name.startswith("NicoTaskRun")
        )
    assert any(
        r["source_matchers"] == ['severity="critical"'] and {"task_id", "run_id"} <= set(r["equal"])
        for r in inhibit
    )
    # The fixed-threshold floor mutes the learned-duration warning of the same task only.
    stuck = next(r for r in inhibit if r["source_matchers"] == ['alertname="NicoTaskStuck"'])
    assert stuck["target_matchers"] == ['alertname="NicoTaskOverrunning"']
    assert stuck["equal"] == ["site_id", "rack_id", "task_id"]


def test_overrunning_joins_the_stage_and_the_task() -> None:
    rule = next(r for r in _alert_rules(_committed_groups()) if r["alert"] == "NicoTaskOverrunning")
    config = alerts.load_alert_config()
    assert f"nico_task_overrun_ratio{{{config.selector}}}) > {config.overrun_ratio:g})" in rule["expr"]
    assert "group_left (stage_number, component_type)" in rule["expr"]
    assert "nico:task:info" in rule["expr"]
    assert rule["labels"]["severity"] == config.severity["NicoTaskOverrunning"]


# -- the exporter's own conditions ---------------------------------------------------------------

EXPORTER_SIDE = ("NicoExporterCredentialsRefused", "NicoExporterNotReady", "NicoExporterBudgetShort")
# What a NICo outage or a task pages with: no exporter-side condition may mute these.
NEVER_MUTED_BY_THE_EXPORTER = tuple(
    name
    for name in alerts.ALERTS
    if name.startswith("NicoTask") or name in ("NicoSiteDown", "NicoTrayRepeatedFailures")
)
_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*$')


def _matches(matchers: list[str], labels: dict[str, str]) -> bool:
    """Alertmanager's matcher semantics: a missing label is "", regular expressions are anchored."""
    for matcher in matchers:
        found = _MATCHER.match(matcher)
        assert found, f"cannot read matcher {matcher!r}"
        name, op, value = found.groups()
        actual = labels.get(name, "")
        if op == "=":
            ok = actual == value
        elif op == "!=":
            ok = actual != value
        elif op == "=~":
            ok = re.fullmatch(value, actual) is not None
        else:
            ok = re.fullmatch(value, actual) is None
        if not ok:
            return False
    return True


def _muted_by(rules: list[dict[str, Any]], firing: list[dict[str, str]]) -> dict[int, set[str]]:
    """Which of ``firing`` the inhibit rules mute (by index), and by which source alerts.

    As Alertmanager's inhibitor: a rule mutes an alert matching its target matchers when another
    firing alert matches its source matchers with the same values of ``equal`` (a label missing on
    both sides is equal); an alert that matches both sides of a rule is not muted by another such
    alert. A muted alert still mutes others.
    """
    out: dict[int, set[str]] = {}
    for i, target in enumerate(firing):
        for rule in rules:
            if not _matches(rule.get("target_matchers", []), target):
                continue
            both = _matches(rule.get("source_matchers", []), target)
            for j, source in enumerate(firing):
                if j == i or not _matches(rule.get("source_matchers", []), source):
                    continue
                if both and _matches(rule.get("target_matchers", []), source):
                    continue
                if all(source.get(label, "") == target.get(label, "") for label in rule.get("equal", [])):
                    out.setdefault(i, set()).add(source["alertname"])
    return out


def _inhibit_rules() -> list[dict[str, Any]]:
    return list(yaml.safe_load(EXAMPLE.read_text())["inhibit_rules"])


def test_exporter_side_conditions_mute_only_what_they_cause_on_the_same_exporter() -> None:
    rules = _inhibit_rules()
    targets: dict[str, set[str]] = {}
    for rule in rules:
        sources = {n for n in alerts.ALERTS if _matches(rule["source_matchers"], {"alertname": n})}
        for source in sources & set(EXPORTER_SIDE):
            assert rule["equal"] == ["job", "instance"], rule
            for severity in alerts.SEVERITIES:
                targets.setdefault(source, set()).update(
                    n
                    for n in alerts.ALERTS
                    if _matches(rule["target_matchers"], {"alertname": n, "severity": severity})
                )
    assert targets == {
        "NicoExporterCredentialsRefused": {"NicoExporterNotReady", "NicoExporterDataStale"},
        "NicoExporterNotReady": {"NicoExporterDataStale"},
        "NicoExporterBudgetShort": {"NicoExporterDataStale"},
    }


def _alert(name: str, instance: str = "exporter-a:9842", **labels: str) -> dict[str, str]:
    severity = "warning" if name in ("NicoExporterBudgetShort", "NicoTaskOverrunning") else "critical"
    return {
        "alertname": name,
        "job": "nico-task-exporter",
        "instance": instance,
        "severity": severity,
        **labels,
    }


def test_exporter_side_conditions_never_mute_a_site_outage_nor_a_task_alert() -> None:
    """Every exporter-side condition firing at once on the exporter that also sees a site down and
    every task and run alert: those all stay unmuted (only the example's own site and task rules,
    which no exporter-side alert is part of, could mute them; no site is stale here)."""
    exporter_side = [_alert(name) for name in EXPORTER_SIDE]
    # NicoExporterNotReady is itself muted by the refused credentials; it still takes part.
    watched = [_alert("NicoSiteDown", site_id="site-1")] + [
        _alert(name, site_id="site-2", rack_id="rack-1", task_id=f"task-{name}", run_id=f"run-{name}")
        for name in NEVER_MUTED_BY_THE_EXPORTER
        if name != "NicoSiteDown"
    ]
    firing = exporter_side + watched
    muted = _muted_by(_inhibit_rules(), firing)
    for index, alert in enumerate(firing):
        if alert in watched:
            assert index not in muted, f"{alert['alertname']} muted by {muted.get(index)}"
    assert muted == {EXPORTER_SIDE.index("NicoExporterNotReady"): {"NicoExporterCredentialsRefused"}}


@pytest.mark.parametrize("source", EXPORTER_SIDE)
def test_each_exporter_side_condition_mutes_its_staleness_and_not_the_site_down(source: str) -> None:
    """One condition on exporter A; site-1 down and site-2 stale on A; site-3 stale on exporter B;
    a failed task at the down site."""
    firing = [
        _alert(source),
        _alert("NicoSiteDown", site_id="site-1"),
        _alert("NicoExporterDataStale", site_id="site-2"),
        _alert("NicoExporterDataStale", "exporter-b:9842", site_id="site-3"),
        _alert("NicoTaskFailed", site_id="site-1", rack_id="rack-1", task_id="task-1"),
    ]
    muted = _muted_by(_inhibit_rules(), firing)
    assert 1 not in muted  # NicoSiteDown pages whatever the exporter's state
    assert muted[2] == {source}  # the same exporter's staleness
    assert 3 not in muted  # another exporter's staleness
    assert muted[4] == {"NicoSiteDown"}  # the down site's task alerts: by the outage, as before
