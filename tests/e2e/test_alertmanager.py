"""The pager path end to end: simulator -> exporter -> Prometheus (the rules) -> Alertmanager -> webhook.

Five parts on 127.0.0.1, each started here: the simulator, the exporter, Debian's ``prometheus``
evaluating the generated rules (short thresholds, 1 s evaluation), ``prometheus-alertmanager``
with the example's grouping and inhibition (its receivers pointed at this test), and an HTTP
server in this test that receives the webhook and serves ``docs/runbooks`` (so a runbook link can
be followed). The simulator fails one task and leaves another stuck; both must page with their
context; then the site goes down, ``NicoSiteDown`` pages and mutes the site's task alerts.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from exporter.mixin import alerts
from tests.conftest import skip_or_fail
from tests.processes import (
    Process,
    alertmanager_process,
    exporter_command,
    free_port,
    prometheus_process,
    simulator,
    truth,
    wait_until,
)
from tools.paths import ROOT

pytestmark = pytest.mark.e2e

RUNBOOKS = ROOT / "docs" / "runbooks"
FAIL_ERROR = "BMC unreachable: NVSwitch tray did not answer"
WAITING_AFTER_S = 12.0
STALE_AFTER_S = 8.0


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        skip_or_fail(
            f"`{name}` is not installed (Debian: apt-get install prometheus prometheus-alertmanager)"
        )
    assert path is not None
    return path


@dataclass
class Receiver:
    """Webhook notifications received, and the runbooks served, by the test's HTTP server."""

    url: str
    notifications: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def alerts(self, name: str, status: str = "firing") -> list[dict[str, Any]]:
        with self.lock:
            return [
                a
                for n in self.notifications
                for a in n["alerts"]
                if a["labels"]["alertname"] == name and a["status"] == status
            ]


class _Handler(BaseHTTPRequestHandler):
    receiver: Receiver

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        with self.receiver.lock:
            self.receiver.notifications.append(body)
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:
        name = self.path.removeprefix("/runbooks/")
        path = RUNBOOKS / name
        if self.path.startswith("/runbooks/") and "/" not in name and path.is_file():
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "text/markdown")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self.send_error(404)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Stack:
    sim: str
    prometheus: str
    alertmanager: str
    receiver: Receiver
    exporter: Process | None = None

    def am_alerts(self) -> list[dict[str, Any]]:
        resp = httpx.get(self.alertmanager + "/api/v2/alerts", timeout=5)
        resp.raise_for_status()
        return list(resp.json())


# The child tasks of the rollout in the first test (its failed ones page NicoTaskFailed).
ROLLOUT_TASKS: set[str] = set()


def _rules(tmp: Path, receiver_url: str) -> Path:
    """The generated rules with test thresholds: seconds instead of minutes, no ``for``."""
    config = alerts.load_alert_config()
    config = dataclasses.replace(
        config,
        runbook_url_base=receiver_url + "/runbooks",
        for_=dict.fromkeys(alerts.ALERTS, 0.0),
        stuck={"power_on": alerts.Thresholds(2, 4)},
        stuck_no_progress_after=3600,
        waiting_after=WAITING_AFTER_S,
        stale_after=STALE_AFTER_S,
        throttled_window=30.0,
    )
    path = tmp / "rules.yml"
    alerts.write(config, path)
    return path


def _alertmanager_config(tmp: Path, receiver_url: str) -> Path:
    """The example's routing tree, grouping and inhibition, every receiver replaced by the test's."""
    config = yaml.safe_load((ROOT / "alerts" / "alertmanager.example.yml").read_text())
    config["receivers"] = [{"name": "test", "webhook_configs": [{"url": receiver_url + "/hook"}]}]
    route = config["route"]
    route.update(receiver="test", group_wait="1s", group_interval="1s")
    for child in route["routes"]:
        child["receiver"] = "test"
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus, alertmanager = binary("prometheus"), binary("prometheus-alertmanager")
    tmp = tmp_path_factory.mktemp("alertmanager-e2e")
    receiver = Receiver("")
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"receiver": receiver}))
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sim_args = ["--sites", "1", "--racks", "4", "--non-flow-sites", "0", "--quiet-scenario", "--task-runs"]
    with simulator(tmp, *sim_args) as sim:
        exporter_port, prom_port, am_port = free_port(), free_port(), free_port()
        exporter_config = tmp / "exporter.yaml"
        exporter_config.write_text(
            f"""
api: {{url: "{sim}", org: acme, token: sim-token, timeout: 2s, max_requests_per_second: 50}}
polling: {{active_interval: 1s, tray_interval: 2s, reconcile_interval: 5s, discovery_interval: 30s}}
state: {{path: "{tmp / "state.db"}"}}
web: {{listen_address: "127.0.0.1:{exporter_port}"}}
"""
        )
        prometheus_config = tmp / "prometheus.yml"
        prometheus_config.write_text(
            f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: ["{_rules(tmp, receiver.url)}"]
alerting:
  alertmanagers: [{{static_configs: [{{targets: ["127.0.0.1:{am_port}"]}}]}}]
scrape_configs:
  - job_name: nico-task-exporter
    static_configs: [{{targets: ["127.0.0.1:{exporter_port}"]}}]
"""
        )
        procs = [
            Process(exporter_command("run", "--config.file", str(exporter_config)), tmp / "exporter.log"),
            alertmanager_process(alertmanager, tmp, _alertmanager_config(tmp, receiver.url), am_port),
            prometheus_process(
                prometheus, tmp, prometheus_config, prom_port, "--rules.alert.resend-delay=1s"
            ),
        ]
        s = Stack(sim, f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{am_port}", receiver, procs[0])
        try:
            wait_until(lambda: _ok(f"http://127.0.0.1:{exporter_port}/readyz"), 60, "the exporter")
            wait_until(lambda: _ok(s.alertmanager + "/-/ready"), 60, "Alertmanager")
            wait_until(lambda: _ok(s.prometheus + "/-/ready"), 60, "Prometheus")
            yield s
        finally:
            for proc in reversed(procs):
                proc.stop()
            server.shutdown()
            server.server_close()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _create(sim: str, body: dict[str, Any]) -> str:
    resp = httpx.post(sim + "/_sim/tasks", json=body, timeout=5)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["taskId"])


def _one(stack: Stack, name: str, task_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def arrived() -> bool:
        found[:] = [a for a in stack.receiver.alerts(name) if a["labels"].get("task_id") == task_id]
        return bool(found)

    wait_until(arrived, 60, f"{name} for task {task_id} at the webhook", interval=0.5)
    return found[0]


def _check_runbook(alert: dict[str, Any], receiver: Receiver) -> None:
    url = alert["annotations"]["runbook_url"]
    name = alert["labels"]["alertname"]
    assert url == f"{receiver.url}/runbooks/{name}.md"
    assert (RUNBOOKS / f"{name}.md").is_file()
    resp = httpx.get(url, timeout=5)
    assert resp.status_code == 200 and resp.text.startswith(f"# {name}")


def test_a_safety_gate_pause_pages_with_the_site_the_run_its_phase_and_the_reason(stack: Stack) -> None:
    """A firmware rollout whose first phase fails: Flow's failure-rate gate pauses it."""
    site = truth(stack.sim)["sites"][0]
    body = {"siteId": site["id"], "version": "2.0.1", "name": "e2e-gate", "phases": 2,
            "maxConcurrentTargets": 1, "failureRatePercent": 50, "childFailPhases": [0],
            "childStageSeconds": 1}  # fmt: skip
    resp = httpx.post(stack.sim + "/_sim/task-runs", json=body, timeout=5)
    assert resp.status_code == 201, resp.text
    run_id = resp.json()["runId"]
    labels = _arrives(stack, "NicoTaskRunPaused", timeout=120, run_id=run_id)["labels"]
    assert (labels["severity"], labels["reason"]) == ("critical", "SafetyGate")
    assert (labels["site_id"], labels["site_name"]) == (site["id"], site["name"])
    assert (labels["run_name"], labels["phase"]) == ("e2e-gate", "1")

    def children_done() -> bool:
        (run,) = [r for r in truth(stack.sim)["taskRuns"] if r["id"] == run_id]
        ids = {t["taskId"] for t in run["targets"] if t["taskId"]}
        ROLLOUT_TASKS.update(ids)
        return all(_finished(stack.sim, task_id) for task_id in ids)

    # The paused run submits nothing more; the next tests need its racks free.
    wait_until(children_done, 60, "the run's child tasks to finish", interval=0.5)


def test_failed_and_stuck_tasks_page_then_a_site_outage_mutes_them(stack: Stack) -> None:
    state = truth(stack.sim)
    site = state["sites"][0]
    rack_a, rack_b = (r["id"] for r in site["racks"][:2])
    failed_id = _create(
        stack.sim,
        {
            "siteId": site["id"],
            "rackId": rack_a,
            "operation": "power_on",
            "outcome": "fail",
            "failStage": 2,
            "error": FAIL_ERROR,
            "stageSeconds": 1,
        },
    )
    stuck_id = _create(
        stack.sim,
        {
            "siteId": site["id"],
            "rackId": rack_b,
            "operation": "power_on",
            "outcome": "stuck",
            "stageSeconds": 1,
        },
    )

    failed = _one(stack, "NicoTaskFailed", failed_id)
    labels = failed["labels"]
    assert labels["severity"] == "critical"
    assert labels["site_id"] == site["id"] and labels["site_name"] == site["name"]
    assert labels["rack_id"] == rack_a and labels["rack_name"] == site["racks"][0]["name"]
    assert labels["operation"] == "power_on"
    assert labels["stage_number"] == "2"
    assert labels["component_type"] == "NVSwitch"  # power_on's stage 2 acts on the NVSwitch trays
    assert labels["error"] == FAIL_ERROR and labels["reason"] == "unreachable"
    assert labels["trace_id"] == failed_id.replace("-", "")
    description = failed["annotations"]["description"]
    for part in (failed_id, FAIL_ERROR, site["name"], labels["rack_name"], labels["trace_id"], "stage 2"):
        assert part in description
    _check_runbook(failed, stack.receiver)

    stuck = _one(stack, "NicoTaskStuck", stuck_id)
    assert stuck["labels"]["condition"] == "running_too_long"
    assert stuck["labels"]["site_id"] == site["id"] and stuck["labels"]["rack_id"] == rack_b
    assert stuck["labels"]["operation"] == "power_on"
    assert stuck["labels"]["trace_id"] == stuck_id.replace("-", "")
    _check_runbook(stuck, stack.receiver)
    # The first notification may predate the stage: Flow begins stage 1 up to a second after
    # Running, and poll, scrape and evaluation each add up to a second against a 2 s threshold.
    # Prometheus renders the annotation again at every evaluation; it names the stage the
    # simulator holds the task in once that is scraped.
    (truth_stuck,) = [t for t in truth(stack.sim)["tasks"] if t["id"] == stuck_id]
    wanted = f"in stage {truth_stuck['stuckStage']},"
    wait_until(
        lambda: any(wanted in d for d in _prometheus_descriptions(stack, "NicoTaskStuck", stuck_id)),
        30,
        f"NicoTaskStuck's description to say {wanted!r}",
        interval=0.5,
    )
    # The rollout's failed children page too (each a real failure); nothing else does.
    assert {a["labels"]["task_id"] for a in stack.receiver.alerts("NicoTaskFailed")} - ROLLOUT_TASKS == {
        failed_id
    }

    resp = httpx.post(f"{stack.sim}/_sim/sites/{site['id']}/down", json={}, timeout=5)
    assert resp.status_code == 200
    wait_until(
        lambda: any(a["labels"]["site_id"] == site["id"] for a in stack.receiver.alerts("NicoSiteDown")),
        60,
        "NicoSiteDown at the webhook",
        interval=0.5,
    )

    def muted() -> bool:
        by_name: dict[str, list[dict[str, Any]]] = {}
        for alert in stack.am_alerts():
            if alert["labels"].get("site_id") == site["id"]:
                by_name.setdefault(alert["labels"]["alertname"], []).append(alert)
        down = by_name.get("NicoSiteDown", [])
        tasks = by_name.get("NicoTaskFailed", []) + by_name.get("NicoTaskStuck", [])
        return (
            bool(down)
            and all(a["status"]["state"] == "active" for a in down)
            and {a["labels"]["task_id"] for a in tasks} >= {failed_id, stuck_id}
            and all(a["status"]["state"] == "suppressed" and a["status"]["inhibitedBy"] for a in tasks)
        )

    wait_until(muted, 30, "the site's task alerts to be inhibited by NicoSiteDown", interval=0.5)
    httpx.post(f"{stack.sim}/_sim/sites/{site['id']}/up", json={}, timeout=5)


# -- the other six alerts, each with a near miss that stays silent ----------------------------------


def _finished(sim: str, task_id: str) -> bool:
    return any(t["id"] == task_id and t["finished"] for t in truth(sim)["tasks"])


def _run(sim: str, body: dict[str, Any]) -> str:
    """Submit a task and wait for it to finish (tasks on one rack must not overlap: REST conflicts)."""
    task_id = _create(sim, {"stageSeconds": 0.3, **body})
    wait_until(lambda: _finished(sim, task_id), 30, f"task {task_id} to finish", interval=0.2)
    return task_id


def _trays(sim: str, rack_id: str, kind: str = "Compute") -> list[str]:
    site_id = truth(sim)["sites"][0]["id"]
    resp = httpx.get(
        f"{sim}/v2/org/acme/nico/tray",
        params={"siteId": site_id, "rackId": rack_id, "pageSize": 100},
        headers={"Authorization": "Bearer sim-token"},
        timeout=5,
    )
    resp.raise_for_status()
    return [tray["id"] for tray in resp.json() if tray["type"] == kind]


def _prometheus_descriptions(stack: Stack, name: str, task_id: str) -> list[str]:
    """The descriptions Prometheus holds now for ``name`` alerts of ``task_id``."""
    resp = httpx.get(stack.prometheus + "/api/v1/alerts", timeout=5)
    resp.raise_for_status()
    return [
        a["annotations"].get("description", "")
        for a in resp.json()["data"]["alerts"]
        if a["labels"].get("alertname") == name and a["labels"].get("task_id") == task_id
    ]


def _firing(stack: Stack, name: str, **labels: str) -> list[dict[str, Any]]:
    return [a for a in stack.receiver.alerts(name) if all(a["labels"].get(k) == v for k, v in labels.items())]


def _arrives(stack: Stack, name: str, timeout: float = 60, **labels: str) -> dict[str, Any]:
    wait_until(
        lambda: bool(_firing(stack, name, **labels)), timeout, f"{name} {labels} at the webhook", interval=0.5
    )
    alert = _firing(stack, name, **labels)[0]
    _check_runbook(alert, stack.receiver)
    return alert


def _faults(stack: Stack, **faults: object) -> None:
    assert httpx.put(stack.sim + "/_sim/faults", json=faults, timeout=5).status_code == 200


def test_the_other_alerts_page_end_to_end_and_their_near_misses_stay_silent(stack: Stack) -> None:
    """Run after the first test (module order): its site is up again."""
    site = truth(stack.sim)["sites"][0]
    rack_c, rack_d = site["racks"][2]["id"], site["racks"][3]["id"]
    wait_until(lambda: not _firing_now(stack, "NicoSiteDown"), 60, "the site to be up again")

    # NicoTaskWaitingTooLong: a leak-detection task queues behind a long power-on (fires); another
    # queues behind a short one and starts before the threshold (near miss).
    blocker = _create(
        stack.sim, {"siteId": site["id"], "rackId": rack_c, "operation": "power_on", "stageSeconds": 6}
    )
    waiting = _create(
        stack.sim,
        {"siteId": site["id"], "rackId": rack_c, "operation": "force_power_off", "source": "leak_detection",
         "trayIds": _trays(stack.sim, rack_c)[:1], "stageSeconds": 0.3},
    )  # fmt: skip
    short = _create(
        stack.sim, {"siteId": site["id"], "rackId": rack_d, "operation": "power_on", "stageSeconds": 0.5}
    )
    brief = _create(
        stack.sim,
        {"siteId": site["id"], "rackId": rack_d, "operation": "force_power_off", "source": "leak_detection",
         "trayIds": _trays(stack.sim, rack_d)[:1], "stageSeconds": 0.3},
    )  # fmt: skip
    alert = _arrives(stack, "NicoTaskWaitingTooLong", task_id=waiting)
    assert alert["labels"]["rack_id"] == rack_c and alert["labels"]["site_name"] == site["name"]
    assert _firing(stack, "NicoTaskWaitingTooLong", task_id=brief) == []
    for task_id in (blocker, waiting, short, brief):
        wait_until(lambda t=task_id: _finished(stack.sim, t), 60, "the queue to drain")  # type: ignore[misc]

    # NicoTrayRepeatedFailures and NicoTaskFailureRateHigh: one tray in 3 failed power-offs (fires),
    # another in 2 (near miss); power-off fails 6 of 6 (fires); power-cycle fails 3 of 3, fewer
    # than min_tasks 4 (near miss; increase() even misses a new counter's first increment).
    tray_a, tray_b, tray_c = _trays(stack.sim, rack_c)[:3]
    for tray in (tray_a, tray_b, tray_a, tray_b, tray_a, tray_c):
        _run(stack.sim, {"siteId": site["id"], "rackId": rack_c, "operation": "power_off", "outcome": "fail",
                         "failStage": 1, "error": "BMC unreachable", "trayIds": [tray],
                         "stageSeconds": 3})  # fmt: skip  # long enough for a tray poll (2 s) to name it
    for _ in range(3):
        _run(stack.sim, {"siteId": site["id"], "rackId": rack_d, "operation": "power_cycle", "outcome": "fail",
                         "failStage": 1})  # fmt: skip
    repeated = _arrives(stack, "NicoTrayRepeatedFailures", tray_id=tray_a)
    assert (
        repeated["labels"]["rack_id"] == rack_c
        and repeated["labels"]["rack_name"] == site["racks"][2]["name"]
    )
    rate = _arrives(stack, "NicoTaskFailureRateHigh", operation="power_off")
    assert rate["labels"]["site_id"] == site["id"]
    assert _firing(stack, "NicoTrayRepeatedFailures", tray_id=tray_b) == []
    assert _firing(stack, "NicoTaskFailureRateHigh", operation="power_cycle") == []

    # NicoAPIThrottled: a real 429 storm from NICo's limiter (fires); before it, a burst of 503s,
    # which is not throttling (near miss), shorter than the stale threshold.
    _faults(stack, error_5xx=1.0)
    wait_until(lambda: _requests(stack, "5") >= 5, 30, "5xx answers to be counted", interval=0.5)
    _faults(stack, error_5xx=0.0)
    # The storm is shorter than the stale threshold too: every call refused for 10 s made the data
    # 10 s old, and a slow Throttled notification on a loaded CI machine then met a real stale alert.
    _faults(stack, throttle_every_s=3600.0, throttle_seconds=STALE_AFTER_S / 2)
    throttled = _arrives(stack, "NicoAPIThrottled")
    _faults(stack, throttle_every_s=0.0, throttle_seconds=0.0)
    assert throttled["labels"]["severity"] == "warning"
    assert [
        a for a in stack.receiver.alerts("NicoAPIThrottled") if a["startsAt"] < throttled["startsAt"]
    ] == []
    assert _firing(stack, "NicoExporterDataStale") == []  # the 503 burst and the storm were shorter

    # NicoExporterDataStale: every call fails for longer than the threshold. It reaches
    # Alertmanager, which holds it back: the site is down too (NicoSiteDown), and the example's
    # inhibition mutes a down site's staleness, so the page is NicoSiteDown's.
    _faults(stack, down=True)
    stale: list[dict[str, Any]] = []

    def held_back() -> bool:
        stale[:] = [
            a
            for a in stack.am_alerts()
            if a["labels"]["alertname"] == "NicoExporterDataStale"
            and a["labels"].get("site_id") == site["id"]
        ]
        return bool(stale) and all(
            a["status"]["state"] == "suppressed" and a["status"]["inhibitedBy"] for a in stale
        )

    wait_until(
        held_back, 60, "NicoExporterDataStale at Alertmanager, inhibited by NicoSiteDown", interval=0.5
    )
    _faults(stack, down=False)
    assert stale[0]["labels"]["site_name"] == site["name"]
    assert stale[0]["annotations"]["runbook_url"].endswith("/NicoExporterDataStale.md")
    assert _firing(stack, "NicoSiteDown", site_id=site["id"])

    # NicoExporterDown: the exporter is killed; Prometheus's scrape fails.
    assert stack.exporter is not None
    stack.exporter.kill9()
    down = _arrives(stack, "NicoExporterDown")
    assert down["labels"]["severity"] == "critical"


def _firing_now(stack: Stack, name: str) -> bool:
    return any(
        a["labels"]["alertname"] == name and a["status"]["state"] == "active" for a in stack.am_alerts()
    )


def _requests(stack: Stack, code_prefix: str) -> float:
    resp = httpx.get(
        stack.prometheus + "/api/v1/query",
        params={"query": f'sum(nico_exporter_api_requests_total{{code=~"{code_prefix}.."}})'},
        timeout=5,
    )
    result = resp.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0
