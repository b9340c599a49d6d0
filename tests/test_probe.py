"""``check-config --online`` against simulated servers of each kind, over a real socket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from exporter import cli
from exporter.simulator import ManualClock, ScenarioConfig, Simulation, SimulatorConfig, create_app
from tests.servers import serve_app


def _sim(**config: Any) -> Simulation:
    scenario = ScenarioConfig.quiet(sites=2, racks_per_site=3, non_flow_sites=1)
    scenario.history_tasks_per_rack = (25, 25)
    return Simulation(
        SimulatorConfig(tokens=("probe-token",), scenario=scenario, **config), clock=ManualClock()
    )


def _config(tmp_path: Path, url: str, token: str = "probe-token") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"api: {{url: {url!r}, org: acme, token: {token}}}\n")
    return path


def _online(tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str], **kw: str) -> tuple[int, str]:
    code = cli.main(["check-config", "--online", "--config.file", str(_config(tmp_path, url, **kw))])
    return code, capsys.readouterr().out


@pytest.mark.parametrize(
    ("config", "server_line"),
    [
        (
            {},
            "server: each task list is its first 20 rows, no paging (NICo v2.0 and later), with stage and step reports",
        ),
        (
            {"task_list_paging": True},
            "server: task lists page (as the OpenAPI spec says), with stage and step reports",
        ),
        ({"nico_version": "1.6"}, "without reports (no stage or step data)"),
    ],
)
def test_online_check_says_what_each_site_shows(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    config: dict[str, Any],
    server_line: str,
) -> None:
    monkeypatch.delenv("NICO_TOKEN", raising=False)
    sim = _sim(**config)
    with serve_app(create_app(sim)) as url:
        code, out = _online(tmp_path, url, capsys)
    assert code == 0, out
    assert server_line in out
    for site in sim.sites():
        line = next(line for line in out.splitlines() if site.id in line)
        if site.flow:
            assert "Flow on, 3 racks" in line
            shown = "1 of its 25 tasks" if config.get("task_list_paging") else "20 of its 25 tasks"
            assert shown in line
        else:
            assert "no NICo Flow" in line


def test_online_check_fails_clearly_on_bad_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NICO_TOKEN", raising=False)
    with serve_app(create_app(_sim())) as url:
        code, out = _online(tmp_path, url, capsys, token="wrong-token")
    assert code == 1
    assert "cannot list sites" in out and "Invalid authorization token in request" in out
    assert "wrong-token" not in out
