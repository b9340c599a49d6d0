"""The Grafana dashboards: schema-valid, committed as generated, every query parses, every panel explained."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from tests.conftest import skip_or_fail
from tests.families import unknown_families
from tools import dashboards

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
    committed = dashboards.DASHBOARD_DIR / name
    assert committed.exists(), f"run `python -m tools.dashboards` to write {committed}"
    assert committed.read_text(encoding="utf-8") == RENDERED[name], "run `python -m tools.dashboards`"


def test_no_stray_dashboard_files() -> None:
    assert sorted(p.name for p in dashboards.DASHBOARD_DIR.glob("*.json")) == sorted(RENDERED)


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
    doc = (dashboards.DASHBOARD_DIR.parent / "docs" / "dashboards.md").read_text(encoding="utf-8")
    for q in dashboards.panel_queries():
        if q.may_be_empty:
            assert f"| {q.dashboard} | {q.panel}" in doc and q.may_be_empty in doc, (q.dashboard, q.panel)


def test_every_query_reads_known_families() -> None:
    """Panel and variable queries name only families of exporter/metrics.py."""
    exprs = [q.expr for q in dashboards.panel_queries()]
    exprs += [e for text in RENDERED.values() for e in dashboards.variable_queries(json.loads(text))]
    assert {name for e in exprs for name in unknown_families(e)} == set()


def test_substitute_replaces_only_known_variables() -> None:
    expr = 'label_replace(x{site_id=~"$site"}[$__rate_interval], "t", "$1$2", "a", "(.)(.)") > ${stuck_after}'
    out = dashboards.substitute(expr, {"site": ".*", "__rate_interval": "1m", "stuck_after": "60"})
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
