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


def test_online_check_names_a_refused_connection_and_an_unknown_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NICO_TOKEN", raising=False)
    from exporter.simulator.harness import free_port

    code, out = _online(tmp_path, f"http://127.0.0.1:{free_port()}", capsys)
    assert code == 1 and "cannot list sites: cannot reach the API: connection refused" in out
    code, out = _online(tmp_path, "http://nico-rest-api.does-not-exist.invalid", capsys)
    assert code == 1 and "cannot reach the API: unknown host (DNS)" in out
    with serve_app(create_app(_sim())) as url:  # plain HTTP where the config says https
        code, out = _online(tmp_path, url.replace("http://", "https://"), capsys)
    assert code == 1 and "cannot reach the API: TLS handshake failed" in out


def test_online_check_ends_within_its_bound_against_an_api_that_never_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that accepts connections and never answers: the check must not nest retries in
    retries (it took 500 s once); it ends within its bound and says it got no answer."""
    import asyncio
    import io
    import socket
    import threading
    import time

    from exporter.configload import load_config
    from exporter.probe import check_online

    monkeypatch.delenv("NICO_TOKEN", raising=False)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not done.is_set():
            try:
                held.append(listener.accept()[0])  # accepted, never answered
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    config = load_config(
        _config(tmp_path, f"http://127.0.0.1:{port}"),
        env={"NICO_EXPORTER_API__TIMEOUT": "2s"},
    )
    out = io.StringIO()
    began = time.monotonic()
    try:
        code = asyncio.run(check_online(config, out, bound_s=6))
    finally:
        done.set()
        thread.join(2)
        for conn in held:
            conn.close()
        listener.close()
    took = time.monotonic() - began
    assert code == 1
    assert took < 6 + 5, f"took {took:.1f} s"
    assert "no answer in time" in out.getvalue(), out.getvalue()


def test_online_check_names_a_missing_role_and_nicos_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NICO_TOKEN", raising=False)
    sim = _sim()
    sim.tokens  # noqa: B018 - the simulator as configured
    app = create_app(sim)
    with serve_app(app) as url:
        import httpx

        assert httpx.put(url + "/_sim/auth", json={"providerAdmin": False}, timeout=5).status_code == 200
        code, out = _online(tmp_path, url, capsys)
    # The site list answers (any org member may list sites); each Flow site's racks are refused.
    flow = [line for line in out.splitlines() if "Flow on, but" in line]
    assert flow and all(
        "forbidden (HTTP 403): User does not have Provider Admin role with org" in line
        and "PROVIDER_ADMIN" in line
        for line in flow
    ), out
    assert code == 1
