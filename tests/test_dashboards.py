"""The Grafana dashboards: schema-valid, committed as generated, every query parses, every panel explained."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from exporter.mixin import alerts, dashboards
from exporter.mixin.dashboards import conditions
from exporter.operations import OPERATIONS
from tests.conftest import skip_or_fail
from tests.families import unknown_families
from tools.paths import DASHBOARD_DIR, RULES_PATH

# The project's schema (always checked) and, when available, the full one generated from
# @grafana/schema (NICO_GRAFANA_SCHEMA, or the design sources' copy beside the project).
MINIMAL_SCHEMA = Path(__file__).resolve().parent / "data" / "grafana-dashboard.schema.json"
GRAFANA_SCHEMA_ENV = "NICO_GRAFANA_SCHEMA"
DEFAULT_GRAFANA_SCHEMA = (
    Path(__file__).resolve().parents[2] / "shared" / "grafana-schema" / "grafana-dashboard.schema.json"
)
RENDERED = dashboards.render_all()


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def _full_schema() -> dict[str, Any]:
    """Grafana's full strict schema; skips (fails under ``NICO_REQUIRE_E2E`` when it was asked for
    by ``NICO_GRAFANA_SCHEMA``) when it is not there."""
    configured = os.environ.get(GRAFANA_SCHEMA_ENV, "")
    path = Path(configured) if configured else DEFAULT_GRAFANA_SCHEMA
    if not path.exists():
        reason = (
            f"the full Grafana dashboard schema is not at {path}: set {GRAFANA_SCHEMA_ENV} to the "
            "strict grafana-dashboard.schema.json generated from @grafana/schema to check against it too"
        )
        if configured:
            skip_or_fail(reason)
        pytest.skip(reason)
    return dict(json.loads(path.read_text(encoding="utf-8")))


def _minimal_schema() -> dict[str, Any]:
    return dict(json.loads(MINIMAL_SCHEMA.read_text(encoding="utf-8")))


@pytest.fixture(scope="module", params=("minimal", "grafana"))
def validator(request: pytest.FixtureRequest) -> Draft7Validator:
    schema = _minimal_schema() if request.param == "minimal" else _full_schema()
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def _errors(validator: Draft7Validator, board: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(board)]


def _reasons(validator: Draft7Validator, board: Any) -> list[str]:
    """Every error message, with those under each ``anyOf`` branch (a panel is a Panel or a RowPanel)."""
    pending, out = list(validator.iter_errors(board)), []
    while pending:
        error = pending.pop()
        out.append(error.message)
        pending.extend(error.context or ())
    return out


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_dashboard_validates_against_the_grafana_schema(name: str, validator: Draft7Validator) -> None:
    assert _errors(validator, json.loads(RENDERED[name])) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda b: b["panels"][1].update(colour="red"), "Additional properties are not allowed"),
        (lambda b: b["panels"][1]["gridPos"].update(w=25), "25 is greater than the maximum of 24"),
        (lambda b: b["panels"][1]["targets"][0].pop("refId"), "'refId' is a required property"),
        (lambda b: b["templating"]["list"][0].update(type="list"), "is not one of"),
        (lambda b: b.pop("uid"), "'uid' is a required property"),
    ],
)
def test_the_minimal_schema_rejects_what_grafana_would(change: Callable[[Any], object], problem: str) -> None:
    board = json.loads(RENDERED["nico-fleet.json"])
    assert board["panels"][1]["type"] != "row"
    change(board)
    reasons = _reasons(Draft7Validator(_minimal_schema()), board)
    assert any(problem in r for r in reasons), reasons


def test_the_minimal_schema_allows_no_key_grafana_does_not() -> None:
    """Each strict object of the minimal schema allows a subset of the same object's keys in the
    full schema, so passing the minimal one never hides a key Grafana would refuse."""
    full = _full_schema()["definitions"]
    for name, definition in _minimal_schema()["definitions"].items():
        if definition.get("additionalProperties") is False:
            assert name in full, name
            assert set(definition["properties"]) <= set(full[name]["properties"]), name


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_committed_json_equals_the_generators_output(name: str) -> None:
    committed = DASHBOARD_DIR / name
    assert committed.exists(), f"run `make generate` to write {committed}"
    assert committed.read_text(encoding="utf-8") == RENDERED[name], "run `make generate`"


def test_no_stray_dashboard_files() -> None:
    assert sorted(p.name for p in DASHBOARD_DIR.glob("*.json")) == sorted(RENDERED)


def test_uids_are_unique_stable_and_tagged() -> None:
    boards = [json.loads(text) for text in RENDERED.values()]
    uids = [b["uid"] for b in boards]
    assert sorted(uids) == ["nico-exporter", "nico-fleet", "nico-racks", "nico-rollouts", "nico-stages"]
    for board in boards:
        assert board["schemaVersion"] >= 39
        assert "nico" in board["tags"]
        assert 8 <= len(board["uid"]) <= 40


def test_every_panel_has_a_title_a_description_and_unique_id() -> None:
    for text in RENDERED.values():
        board = json.loads(text)
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in _panels(board):
            assert panel["title"]
            assert len(panel["description"]) > 30, panel["title"]
            assert panel["targets"], panel["title"]
            assert all(
                t["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for t in panel["targets"]
            )


def test_panels_stay_inside_the_grid_and_do_not_overlap() -> None:
    for text in RENDERED.values():
        taken: set[tuple[int, int]] = set()
        for panel in json.loads(text)["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24
            cells = {
                (x, y)
                for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])
            }
            assert not cells & taken, panel["title"]
            taken |= cells


def test_variables_show_names_and_feed_every_query() -> None:
    for text in RENDERED.values():
        board = json.loads(text)
        by_name = {v["name"]: v for v in board["templating"]["list"]}
        assert (
            by_name["datasource"]["type"] == "datasource" and by_name["datasource"]["query"] == "prometheus"
        )
        assert by_name["tempo"]["type"] == "datasource" and by_name["tempo"]["query"] == "tempo"
        assert "nico_site_info" in by_name["site"]["query"] and "(?<text>" in by_name["site"]["regex"]
        assert "nico_rack_info" in by_name["rack"]["query"] and '$site"' in by_name["rack"]["query"]
        assert "(?<text>" in by_name["rack"]["regex"]
        used = {
            name for p in _panels(board) for t in p["targets"] for name in by_name if f"${name}" in t["expr"]
        }
        assert "site" in used, board["uid"]


def test_site_and_rack_regexes_pick_id_as_value_and_name_as_text() -> None:
    """Grafana applies the variable regex to query_result lines like these."""
    import re

    board = json.loads(RENDERED["nico-fleet.json"])
    by_name = {v["name"]: v for v in board["templating"]["list"]}
    line = '{site_id="3e1c26d3-23ef-423e-a848-f808f54d35bf", site_name="sjc-1"} 1 1700000000000'
    match = re.search(by_name["site"]["regex"].strip("/").replace("(?<", "(?P<"), line)
    assert match and match["value"] == "3e1c26d3-23ef-423e-a848-f808f54d35bf" and match["text"] == "sjc-1"
    line = '{rack_id="1c8fb400-d98d-4c6c-ae37-499e30ac8b56", rack_name="rack-07", site_id="3e1c"} 1 1700000000000'
    match = re.search(by_name["rack"]["regex"].strip("/").replace("(?<", "(?P<"), line)
    assert match and match["value"] == "1c8fb400-d98d-4c6c-ae37-499e30ac8b56" and match["text"] == "rack-07"


def test_runbook_links_and_trace_links() -> None:
    alerts = set()
    for text in RENDERED.values():
        board = json.loads(text)
        urls = [link.get("url", "") for link in board["links"]]
        urls += [link["url"] for p in _panels(board) for link in p["links"]]
        alerts |= {u.split("/")[-1].removesuffix(".md") for u in urls if u.startswith("${runbook_base}/")}
    assert alerts == {
        "NicoTaskFailed", "NicoTaskStuck", "NicoTaskOverrunning", "NicoTaskWaitingTooLong", "NicoTaskFailureRateHigh",
        "NicoTrayRepeatedFailures", "NicoSiteDown", "NicoExporterDataStale", "NicoExporterDown", "NicoAPIThrottled",
        "NicoTaskRunPaused", "NicoTaskRunFailed", "NicoTaskRunStalled", "NicoTaskRunFailureRateHigh",
        "NicoExporterNotReady", "NicoExporterCredentialsRefused", "NicoExporterBudgetShort",
    }  # fmt: skip
    fleet = json.loads(RENDERED["nico-fleet.json"])
    failures = next(p for p in _panels(fleet) if p["title"] == "Recent failures")
    links = [link for o in failures["fieldConfig"]["overrides"] for prop in o["properties"] if prop["id"] == "links"
             for link in prop["value"]]  # fmt: skip
    assert links and "${tempo}" in links[0]["url"] and "${__data.fields.trace_id}" in links[0]["url"]
    assert "label_replace(" in failures["targets"][0]["expr"]
    assert any(t.get("exemplar") for p in _panels(fleet) for t in p["targets"])
    rollouts = json.loads(RENDERED["nico-rollouts.json"])
    failed = next(p for p in _panels(rollouts) if p["title"] == "Failed targets")
    links = [link for o in failed["fieldConfig"]["overrides"] for prop in o["properties"] if prop["id"] == "links"
             for link in prop["value"]]  # fmt: skip
    assert links and "${__data.fields.trace_id}" in links[0]["url"]
    assert "label_replace(" in failed["targets"][0]["expr"]


def test_queries_that_may_be_empty_are_documented() -> None:
    """Each ``Query.may_be_empty`` panel and its reason are in docs/dashboards.md (the e2e test,
    which accepts them empty, checks the same against a live Prometheus)."""
    doc = (DASHBOARD_DIR.parent / "docs" / "dashboards.md").read_text(encoding="utf-8")
    for q in dashboards.panel_queries():
        if q.may_be_empty:
            assert f"| {q.dashboard} | {q.panel}" in doc and q.may_be_empty in doc, (q.dashboard, q.panel)


def test_every_query_reads_known_families() -> None:
    """Panel and variable queries name only families of exporter/metrics.py."""
    exprs = [q.expr for q in dashboards.panel_queries()]
    exprs += [e for text in RENDERED.values() for e in dashboards.variable_queries(json.loads(text))]
    assert {name for e in exprs for name in unknown_families(e)} == set()


def test_substitute_replaces_only_known_variables() -> None:
    expr = 'label_replace(x{site_id=~"$site"}[$__rate_interval], "t", "$1$2", "a", "(.)(.)") > ${threshold}'
    out = dashboards.substitute(expr, {"site": ".*", "__rate_interval": "1m", "threshold": "60"})
    assert out == 'label_replace(x{site_id=~".*"}[1m], "t", "$1$2", "a", "(.)(.)") > 60'


def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("`promtool` is not installed (Debian: apt-get install prometheus)")
    assert promtool is not None
    values = dashboards.example_values()
    exprs = [dashboards.substitute(q.expr, values) for q in dashboards.panel_queries()]
    for text in RENDERED.values():
        exprs += [dashboards.substitute(e, values) for e in dashboards.variable_queries(json.loads(text))]
    assert all("$" not in e.replace("$1$2$3$4$5", "") for e in exprs), "a variable was left unsubstituted"
    rules = {"groups": [{"name": "dashboards", "rules": [{"record": f"dashboard:query_{i}", "expr": e}
                                                         for i, e in enumerate(exprs)]}]}  # fmt: skip
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules, width=10_000))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout + result.stderr


def test_promtool_catches_a_broken_query(tmp_path: Path) -> None:
    """The parse check above is real: a bad expression fails it."""
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("`promtool` is not installed (Debian: apt-get install prometheus)")
    assert promtool is not None
    path = tmp_path / "rules.yml"
    bad = {
        "groups": [
            {"name": "g", "rules": [{"record": "r", "expr": 'sum by (x) (rate(y{a="b"}[$__rate_interval]))'}]}
        ]
    }
    path.write_text(yaml.safe_dump(bad))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0


# --- failures count from the first, and stuck tasks agree with NicoTaskStuck -----------------


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("`promtool` is not installed (Debian: apt-get install prometheus)")
    assert promtool is not None
    return promtool


def _promtool_test(tmp_path: Path, rule_files: list[str], test: dict[str, Any]) -> str:
    """Run one ``promtool test rules`` case; returns its output (asserting it passed)."""
    path = tmp_path / "test.yml"
    path.write_text(
        yaml.safe_dump(
            {"rule_files": rule_files, "evaluation_interval": "1m", "tests": [test]}, width=100_000
        )
    )
    result = subprocess.run(
        [_promtool(), "test", "rules", str(path)], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _minutes(present: Callable[[int], bool], value: Callable[[int], float] | float, until: int = 20) -> str:
    """promtool input values for minutes 0..until: ``value`` where ``present``, else missing
    (``stale`` right after a sample, as Prometheus marks a series a scrape no longer returns)."""
    out = []
    for m in range(until + 1):
        if present(m):
            out.append(f"{value(m) if callable(value) else value:g}")
        else:
            out.append("stale" if m > 0 and present(m - 1) else "_")
    return " ".join(out)


def _always(m: int) -> bool:
    return True


# Hand-written: job j's targets and counter series c over minutes 0..20, and what each kind of
# series must count over the 10 minutes before minute 20 (the window starts at minute 10).
_UP = {
    'up{job="j", instance="a"}': _minutes(_always, 1),
    # b's scrapes fail from minute 4 to 11: its series are stale (absent) at the window's start.
    'up{job="j", instance="b"}': _minutes(_always, lambda m: 0 if 4 <= m <= 11 else 1),
    # The exporter restarts at minute 12 with a new address (a new pod): c1 goes, c2 comes.
    'up{job="j", instance="c1"}': _minutes(lambda m: m <= 11, 1),
    'up{job="j", instance="c2"}': _minutes(lambda m: m >= 12, 1),
    # A job Prometheus first scrapes at minute 15 (a new install).
    'up{job="f", instance="f"}': _minutes(lambda m: m >= 15, 1),
}
_COUNTERS = {
    # series: (values, what it counts over the window with each of _VARIANTS)
    'c{job="j", instance="a", k="new"}': (_minutes(lambda m: m >= 15, 1), (1, 1, 1)),
    'c{job="j", instance="a", k="old"}': (_minutes(_always, 1), (0, 0, 0)),
    'c{job="j", instance="a", k="moved"}': (_minutes(_always, lambda m: 1 if m < 15 else 3), (2, 2, 2)),
    # The exporter restarted (same address) at minute 13: 5 before, counting from 0 again after.
    'c{job="j", instance="a", k="reset"}': (_minutes(lambda m: m <= 12 or m >= 14, lambda m: 5 if m <= 12 else 1), (1, 1, 1)),
    # Absent at the window's start only because b's scrapes failed: never its lifetime value.
    'c{job="j", instance="b", k="blip"}': (_minutes(lambda m: m <= 3 or m >= 12, 4), (0, 0, 0)),
    # The restarted exporter serves the same counter again: from 0 (a histogram, counted whole) or
    # from its state file (a tray counter, key=k: history, not new).
    'c{job="j", instance="c1", k="carried"}': (_minutes(lambda m: m <= 11, 7), (0, 0, 0)),
    'c{job="j", instance="c2", k="carried"}': (_minutes(lambda m: m >= 12, 7), (7, 0, 7)),
    'c{job="j", instance="c2", k="after_restart"}': (_minutes(lambda m: m >= 16, 1), (1, 1, 1)),
    # A new install's first failure counts only with fresh (windows as long as a dashboard's range).
    'c{job="f", instance="f", k="fresh"}': (_minutes(lambda m: m >= 15, 1), (0, 0, 1)),
}  # fmt: skip
# The builder's modes: as is, for a counter kept across restarts (key), for a dashboard's range (fresh).
_VARIANTS: tuple[dict[str, Any], ...] = ({}, {"key": "k"}, {"fresh": True})


def test_the_failure_builder_counts_each_new_series_from_zero(tmp_path: Path) -> None:
    """``increase_from_zero`` on hand-written series, evaluated by promtool: a new series counts its
    value; an old, a stale-at-the-start, a carried-over one count only what moved; plain
    ``increase()`` reads 0 for the new one (the bug the builder exists for)."""
    (tmp_path / "none.yml").write_text("groups: []\n")
    cases = []
    for i, kwargs in enumerate(_VARIANTS):
        expected: dict[str, float] = {}
        for series, (_, counts) in _COUNTERS.items():
            k = series.split('k="')[1].split('"')[0]
            expected[k] = expected.get(k, 0) + counts[i]
        cases.append(
            {
                "expr": f"round(sum by (k) {alerts.increase_from_zero('c', '10m', **kwargs)})",
                "eval_time": "20m",
                "exp_samples": [{"labels": f'{{k="{k}"}}', "value": v} for k, v in sorted(expected.items())],
            }
        )
    cases.append(
        {
            "expr": 'round(increase(c{k="new"}[10m]))',
            "eval_time": "20m",
            "exp_samples": [{"labels": '{instance="a", job="j", k="new"}', "value": 0}],
        }
    )
    inputs = [{"series": s, "values": v} for s, v in _UP.items()]
    inputs += [{"series": s, "values": v} for s, (v, _) in _COUNTERS.items()]
    _promtool_test(
        tmp_path, ["none.yml"], {"interval": "1m", "input_series": inputs, "promql_expr_test": cases}
    )


# Counters whose series are born with their first failure (not pre-created at 0), and the panels
# that count them (hand-written; the e2e test in tests/e2e/test_failure_panels.py feeds each).
FAILURE_FAMILIES = (
    'nico_task_step_duration_seconds_count{site_id=~"$site", operation=~"$operation", status="failed"}',
    'nico_task_stage_duration_seconds_count{site_id=~"$site", operation=~"$operation", status="failed"}',
    'nico_tray_task_failures_total{site_id=~"$site", rack_id=~"$rack"}',
    'nico_exporter_site_failures_total{site_id=~"$site"}',
    'nico_exporter_self_failures_total{site_id=~"$site"}',
    'nico_exporter_api_requests_total{code="429"}',
    'nico_exporter_api_requests_total{code!~"2.."}',
    "nico_exporter_parse_errors_total",
    "nico_exporter_jobs_shed_total",
)
FAILURE_PANELS = {
    ("nico-stages", "Failed steps by component type"),
    ("nico-stages", "Failed stages by operation and stage number"),
    ("nico-racks", "Trays with repeated failures (24 h)"),
    ("nico-racks", "Tray failures per rack"),
    ("nico-exporter", "Failed calls: NICo's and the exporter's own"),
    ("nico-exporter", "Throttled calls (HTTP 429)"),
    ("nico-exporter", "Failed calls by endpoint and code"),
    ("nico-exporter", "Parse errors by endpoint and reason"),
    ("nico-exporter", "Jobs shed"),
}
# Families every series of which counts failures; the others count failures only where their
# matchers pick failed stages and steps, or calls answered other than 2xx.
_ALWAYS_FAILURES = {
    "nico_tray_task_failures_total",
    "nico_exporter_site_failures_total",
    "nico_exporter_self_failures_total",
    "nico_exporter_parse_errors_total",
    "nico_exporter_jobs_shed_total",
}


def _reads_failures(name: str, matchers: str) -> bool:
    return name in _ALWAYS_FAILURES or bool(re.search(r'status="failed"|code(!~"2\.\."|="[^2])', matchers))


def test_every_failure_panel_counts_through_the_builder() -> None:
    """Every increase() or rate() over failure series sits inside the builder's union with the
    series' own value, and the panels doing it are the ones the e2e test feeds."""
    counting = set()
    for q in dashboards.panel_queries():
        for match in re.finditer(r"\b(increase|rate)\((\w+)(\{[^}]*\})?\[([^\]]+)\]\)", q.expr):
            kind, name, matchers, window = match.groups()
            if not _reads_failures(name, matchers or ""):
                continue
            counting.add((q.dashboard, q.panel))
            series = name + (matchers or "")
            assert kind == "increase", (q.panel, "rate() cannot count a new series' first failure")
            assert series in FAILURE_FAMILIES, (q.panel, series)
            assert f"({series} unless" in q.expr and f"{series} offset {window}" in q.expr, q.panel
            assert f"up offset {window} == 1" in q.expr, q.panel
    assert counting == FAILURE_PANELS


def _alert_thresholds(groups: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """NicoTaskStuck's running-too-long thresholds per level, for every operation, from its rules."""
    out: dict[str, dict[str, float]] = {}
    for rule in (r for g in groups for r in g["rules"]):
        if rule.get("alert") != "NicoTaskStuck" or rule["labels"]["condition"] != "running_too_long":
            continue
        expr = rule["expr"]
        own = {op: float(n) for op, n in re.findall(r'\{operation="(\w+)"\} > (\d+)', expr)}
        (default,) = re.findall(r'\{operation!~"[^"]*"\} > (\d+)', expr)
        out[rule["labels"]["severity"]] = {op: own.get(op, float(default)) for op in OPERATIONS}
    return out


def _dashboard_thresholds(expr: str) -> dict[str, dict[str, float]]:
    """The stuck expression's threshold vector per level (its ``* 0 + N`` value, named as the
    table's value mappings name it)."""
    fleet = json.loads(RENDERED["nico-fleet.json"])
    table = next(p for p in _panels(fleet) if p["title"] == "Stuck tasks (longest running first)")
    stuck = next(o for o in table["fieldConfig"]["overrides"] if o["matcher"]["options"] == "Stuck")
    (mappings,) = [p["value"] for p in stuck["properties"] if p["id"] == "mappings"]
    names = {value: m["text"] for value, m in mappings[0]["options"].items()}
    out = {}
    for vector, value in re.findall(
        r"group_left \(\) \(((?:label_replace\(.*?\)(?: or )?)+)\)\) \* 0 \+ (\d)", expr
    ):
        pairs = re.findall(r'label_replace\(vector\((\d+)\), "operation", "(\w+)", "", ""\)', vector)
        out[names[value]] = {op: float(n) for n, op in pairs}
    return out


def _stuck_stat() -> str:
    fleet = json.loads(RENDERED["nico-fleet.json"])
    (target,) = next(p for p in _panels(fleet) if p["title"] == "Stuck tasks")["targets"]
    return str(target["expr"])


def test_the_stuck_stat_uses_the_alerts_thresholds() -> None:
    """The stat (and the table's Stuck column) compare with NicoTaskStuck's own thresholds, every
    operation's, read from the committed rule file; its no-progress limit is the alert's too."""
    groups = yaml.safe_load(RULES_PATH.read_text())["groups"]
    stat = _stuck_stat()
    assert _dashboard_thresholds(stat) == _alert_thresholds(groups)
    assert "stuck_after" not in json.dumps(json.loads(RENDERED["nico-fleet.json"])["templating"])
    (no_progress,) = [r for g in groups for r in g["rules"]
                      if r.get("alert") == "NicoTaskStuck" and r["labels"]["condition"] == "no_progress"]  # fmt: skip
    limit = no_progress["expr"].split(" > ")[1]
    assert "nico_task_updated_timestamp_seconds" in stat and f"> {limit}) * 0 + 1" in stat
    fleet = json.loads(RENDERED["nico-fleet.json"])
    table = next(p for p in _panels(fleet) if p["title"] == "Stuck tasks (longest running first)")
    assert any(conditions.stuck_levels(alerts.load_alert_config()) in t["expr"] for t in table["targets"])


def test_a_changed_threshold_moves_the_alert_and_the_stat_together() -> None:
    raw = yaml.safe_load(alerts.CONFIG_PATH.read_text())
    raw["alerts"]["NicoTaskStuck"]["operations"]["power_on"]["warning"] = "7m"
    raw["alerts"]["NicoTaskStuck"]["default"]["warning"] = "50m"
    config = alerts.config_from_mapping(raw)
    alert = _alert_thresholds(alerts.rule_groups(config))["warning"]
    stat = _dashboard_thresholds(conditions.stuck_levels(config))["warning"]
    assert alert["power_on"] == stat["power_on"] == 420
    assert alert["warm_reset"] == stat["warm_reset"] == 3000  # not listed: the default
    assert alert == stat


_TASK = 'job="nico-task-exporter", instance="e:1", site_id="s", rack_id="r"'
# Hand-written: Running tasks at minute 40 (time() = 2400) and which NicoTaskStuck condition holds
# for each (the shipped thresholds, exporter/mixin/config.yml: power_on 15m/30m, firmware_update 2h/4h, any
# operation not listed 1h/2h, no progress 1h; every one held for longer than the alert's for: 5m).
_TASKS = {
    # task: (operation, started, updated, status, condition)
    "t1": ("power_on", 0, 2300, "Running", "critical"),  # ran 40m
    "t2": ("power_on", 1000, 2300, "Running", "warning"),  # ran 23m
    "t3": ("power_on", 2000, 2300, "Running", None),  # ran 6m40s
    "t4": ("firmware_update", 0, 2300, "Running", None),  # ran 40m of its 2h
    "t5": ("warm_reset", -2000, 2300, "Running", "warning"),  # ran 73m of the default 1h
    "t6": ("firmware_update", 1000, -2000, "Running", "no progress"),  # unchanged for 73m
    "t7": ("power_on", -5000, -5000, "Succeeded", None),  # finished: never stuck
}


# What NicoTaskStuck fires for each condition: (severity, condition label).
_FIRING = {
    "critical": (("critical", "running_too_long"), ("warning", "running_too_long")),
    "warning": (("warning", "running_too_long"),),
    "no progress": (("warning", "no_progress"),),
}


def test_the_stuck_stat_counts_the_tasks_nico_task_stuck_fires_for(tmp_path: Path) -> None:
    series = []
    for task, (operation, started, updated, status, _) in _TASKS.items():
        labels = f'{_TASK}, task_id="{task}"'
        series += [
            {"series": f'nico_task_info{{{labels}, operation="{operation}"}}', "values": "1x40"},
            {"series": f'nico_task_status{{{labels}, status="{status}"}}', "values": "1x40"},
            {"series": f"nico_task_started_timestamp_seconds{{{labels}}}", "values": f"{started}x40"},
            {"series": f"nico_task_updated_timestamp_seconds{{{labels}}}", "values": f"{updated}x40"},
        ]
    values = {"site": ".*", "rack": ".*"}
    stuck = {t: c for t, (*_, c) in _TASKS.items() if c}
    fleet = json.loads(RENDERED["nico-fleet.json"])
    table = next(p for p in _panels(fleet) if p["title"] == "Stuck tasks (longest running first)")
    column = next(t["expr"] for t in table["targets"] if t["refId"] == "E")
    stuck_override = next(o for o in table["fieldConfig"]["overrides"] if o["matcher"]["options"] == "Stuck")
    (mappings,) = [p["value"] for p in stuck_override["properties"] if p["id"] == "mappings"]
    value_of = {m["text"]: float(v) for v, m in mappings[0]["options"].items()}
    test = {
        "interval": "1m",
        "input_series": series,
        "promql_expr_test": [
            {
                "expr": dashboards.substitute(_stuck_stat(), values),
                "eval_time": "40m",
                "exp_samples": [{"labels": "{}", "value": len(stuck)}],
            },
            {
                "expr": dashboards.substitute(column, values),
                "eval_time": "40m",
                "exp_samples": [
                    {"labels": f'{{site_id="s", rack_id="r", task_id="{t}"}}', "value": value_of[c]}
                    for t, c in sorted(stuck.items())
                ],
            },
            {
                "expr": 'group by (task_id, severity, condition) (ALERTS{alertname="NicoTaskStuck", '
                'alertstate="firing"})',
                "eval_time": "40m",
                "exp_samples": [
                    {"labels": f'{{task_id="{t}", severity="{sev}", condition="{cond}"}}', "value": 1}
                    for t, c in sorted(stuck.items())
                    for sev, cond in _FIRING[c]
                ],
            },
        ],
    }
    _promtool_test(tmp_path, [str(RULES_PATH)], test)
