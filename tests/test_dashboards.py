"""The Grafana dashboards: schema-valid, committed as generated, every query parses, every panel explained."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from tests.conftest import skip_or_fail
from tools import dashboards

SCHEMA = (
    Path(__file__).resolve().parent.parent.parent
    / "shared"
    / "grafana-schema"
    / "grafana-dashboard.schema.json"
)
RENDERED = dashboards.render_all()


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    if not SCHEMA.exists():
        skip_or_fail(f"the Grafana dashboard schema is missing ({SCHEMA})")
    schema = json.loads(SCHEMA.read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_dashboard_validates_against_the_grafana_schema(name: str, validator: Draft7Validator) -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(json.loads(RENDERED[name]))
    ]
    assert errors == []


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
    assert sorted(uids) == ["nico-exporter", "nico-fleet", "nico-racks", "nico-stages"]
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
        "NicoTaskFailed", "NicoTaskStuck", "NicoTaskWaitingTooLong", "NicoTaskFailureRateHigh",
        "NicoTrayRepeatedFailures", "NicoSiteDown", "NicoExporterDataStale", "NicoExporterDown", "NicoAPIThrottled",
    }  # fmt: skip
    fleet = json.loads(RENDERED["nico-fleet.json"])
    failures = next(p for p in _panels(fleet) if p["title"] == "Recent failures")
    links = [link for o in failures["fieldConfig"]["overrides"] for prop in o["properties"] if prop["id"] == "links"
             for link in prop["value"]]  # fmt: skip
    assert links and "${tempo}" in links[0]["url"] and "${__data.fields.trace_id}" in links[0]["url"]
    assert "label_replace(" in failures["targets"][0]["expr"]
    assert any(t.get("exemplar") for p in _panels(fleet) for t in p["targets"])


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
