"""``make demo-stack`` end to end: the demo with Debian's ``prometheus`` (and ``prometheus-alertmanager``
where installed) started by ``python -m tools.demo_stack``, as a newcomer runs it (only the ports are
the test's).

Prometheus must load the shipped rule file without error, scrape the demo's exporter (target up),
and the demo's failed task must raise ``NicoTaskFailed`` (no ``for``: firing at once) within a bound,
and reach Alertmanager when there is one. Stopping the demo stops both.
"""

from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.simulator.harness import Child, free_port, wait_until
from tests.conftest import skip_or_fail
from tools.demo_stack import ALERTMANAGER_BINARIES, JOB, RULES
from tools.paths import ROOT

pytestmark = pytest.mark.e2e

BOUND_S = 120.0


def _get(url: str) -> Any:
    try:
        resp = httpx.get(url, timeout=3)
    except httpx.HTTPError:
        return None
    return resp.json() if resp.status_code == 200 else None


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return True


def test_the_demo_stack_loads_the_shipped_rules_scrapes_the_demo_and_pages_its_failed_task(
    tmp_path: Path,
) -> None:
    if shutil.which("prometheus") is None:
        skip_or_fail("`prometheus` is not installed (Debian: apt-get install prometheus)")
    with_alertmanager = any(shutil.which(name) for name in ALERTMANAGER_BINARIES)
    exporter, prometheus, alertmanager = free_port(), free_port(), free_port()
    args = [
        sys.executable, "-m", "tools.demo_stack",
        "--web.listen-address", f"127.0.0.1:{exporter}",
        "--simulator.listen-address", f"127.0.0.1:{free_port()}",
        "--prometheus.listen-address", f"127.0.0.1:{prometheus}",
        "--alertmanager.listen-address", f"127.0.0.1:{alertmanager}",
        "--status-interval", "3600",
    ]  # fmt: skip
    prom = f"http://127.0.0.1:{prometheus}"
    am = f"http://127.0.0.1:{alertmanager}"
    demo = Child(args, tmp_path / "demo-stack.log", env={"PYTHONPATH": str(ROOT)})
    try:
        wait_until(lambda: _answers(prom + "/-/ready") or not demo.alive(), 60, "Prometheus")
        wait_until(lambda: "prometheus:" in demo.output() or not demo.alive(), 60, "the demo's banner")
        assert demo.alive(), demo.output()[-3000:]
        banner = demo.output()
        assert f"prometheus:     http://localhost:{prometheus}/alerts" in banner, banner
        if with_alertmanager:
            assert f"alertmanager:   http://localhost:{alertmanager}" in banner, banner

        def target_up() -> bool:
            targets = (_get(prom + "/api/v1/targets") or {}).get("data", {}).get("activeTargets", [])
            return any(t["labels"]["job"] == JOB and t["health"] == "up" for t in targets)

        wait_until(target_up, 60, f"Prometheus to scrape the demo's exporter as job {JOB}", interval=1)

        def rules() -> list[dict[str, Any]]:
            groups = (_get(prom + "/api/v1/rules") or {}).get("data", {}).get("groups", [])
            return [rule for group in groups if group["file"] == str(RULES) for rule in group["rules"]]

        # Every rule of the shipped file is loaded and evaluates without error.
        wait_until(lambda: bool(rules()) and all(r["health"] == "ok" for r in rules()), 60, "rules evaluated")
        names = {rule["name"] for rule in rules()}
        assert {"NicoTaskFailed", "NicoTaskStuck", "NicoTaskOverrunning", "NicoTaskRunPaused"} <= names
        assert not [r for r in rules() if r.get("lastError")]

        def failed(state: set[str]) -> bool:
            alerts = (_get(prom + "/api/v1/alerts") or {}).get("data", {}).get("alerts", [])
            return any(a["labels"]["alertname"] == "NicoTaskFailed" and a["state"] in state for a in alerts)

        wait_until(lambda: failed({"pending", "firing"}), BOUND_S, "NicoTaskFailed in Prometheus", interval=1)
        if with_alertmanager:
            wait_until(
                lambda: any(
                    a["labels"]["alertname"] == "NicoTaskFailed" for a in _get(am + "/api/v2/alerts") or []
                ),
                60,
                "NicoTaskFailed in Alertmanager",
                interval=1,
            )
    finally:
        if demo.alive():
            demo.proc.send_signal(signal.SIGINT)  # Ctrl-C, as a newcomer stops it
            demo.proc.wait(timeout=60)
        code = demo.stop()
    assert code == 0, demo.output()[-3000:]
    assert not _answers(prom + "/-/ready"), "Prometheus outlived the demo"
    assert not _answers(am + "/-/ready"), "Alertmanager outlived the demo"
