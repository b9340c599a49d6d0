"""The exporter's own conditions end to end: exporter -> Prometheus (the rules) -> Alertmanager -> webhook.

One stack for the module, every part a real process on 127.0.0.1: the simulator (one site of 40
racks, no task traffic), three exporters side by side, Debian's ``prometheus`` scraping all three
as job ``nico-task-exporter`` and evaluating the generated rules (short ``for``), and
``prometheus-alertmanager`` with the example's grouping and inhibition, its receivers replaced by
this test's webhook (``tests/e2e/test_alertmanager.py``'s receiver). The three exporters:

- *refused*: a static token the simulator does not know (NICo answers 401);
- *unreachable*: ``api.url`` a port where nothing listens (connection refused);
- *short*: the simulator's token, and a request budget of half what its 40 racks need.

They start together, so the scenarios run at once and each test only waits for its outcome. None
of them may page ``NicoSiteDown``: ``nico_site_up`` is 0 only when NICo fails to answer for a site.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.mixin import alerts
from tests.e2e.test_alertmanager import Receiver, _alertmanager_config, _Handler, binary
from tests.processes import (
    Process,
    alertmanager_process,
    exporter_command,
    free_port,
    http_ok,
    prometheus_process,
    simulator,
    wait_until,
)

pytestmark = pytest.mark.e2e

JOB = "nico-task-exporter"
RACKS = 40
# The short exporter's intervals, and what they need (exporter/poller.py, check_budget): a rack
# poll per rack per active interval, a counter read per rack per reconcile interval, 3 listings per
# site per discovery interval (the simulator serves no Task Runs: nothing for them).
ACTIVE_S, TRAY_S, RECONCILE_S, DISCOVERY_S = 2.0, 4.0, 6.0, 20.0
NEEDED_RPS = RACKS / ACTIVE_S + RACKS / RECONCILE_S + 3 / DISCOVERY_S
BUDGET_RPS = round(NEEDED_RPS / 2, 1)
# Test thresholds: seconds instead of minutes. NicoExporterNotReady waits long enough for a
# healthy start (the short exporter is ready within seconds); NicoSiteDown fires at once, so that
# a single scrape of nico_site_up == 0 would show. Every other alert keeps its shipped `for`.
FOR_S = {
    "NicoExporterCredentialsRefused": 3.0,
    "NicoExporterNotReady": 15.0,
    "NicoExporterBudgetShort": 5.0,
    "NicoSiteDown": 0.0,
}
STALE_AFTER_S = 30.0
SCENARIOS = ("refused", "unreachable", "short")


@dataclass
class Stack:
    sim: str
    prometheus: str
    alertmanager: str
    receiver: Receiver
    # scenario -> the exporter's `instance` label (127.0.0.1:port)
    instances: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def am_alerts(self) -> list[dict[str, Any]]:
        resp = httpx.get(self.alertmanager + "/api/v2/alerts", timeout=5)
        resp.raise_for_status()
        return list(resp.json())

    def query(self, promql: str) -> list[dict[str, Any]]:
        resp = httpx.get(self.prometheus + "/api/v1/query", params={"query": promql}, timeout=5)
        resp.raise_for_status()
        return list(resp.json()["data"]["result"])

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def since_start(self) -> str:
        """A range covering everything Prometheus has scraped of this stack."""
        return f"[{int(time.monotonic() - self.started) + 10}s]"


def _rules(tmp: Path, receiver_url: str) -> Path:
    config = alerts.load_alert_config()
    config = dataclasses.replace(
        config,
        runbook_url_base=receiver_url + "/runbooks",
        for_={**config.for_, **FOR_S},
        stale_after=STALE_AFTER_S,
    )
    path = tmp / "rules.yml"
    alerts.write(config, path)
    return path


def _exporter_config(tmp: Path, name: str, url: str, token: str, budget: float) -> tuple[Path, int]:
    port = free_port()
    path = tmp / f"{name}.yaml"
    path.write_text(
        f"""
api: {{url: "{url}", org: acme, token: {token}, timeout: 3s, max_requests_per_second: {budget}}}
polling: {{active_interval: {ACTIVE_S}s, tray_interval: {TRAY_S}s, reconcile_interval: {RECONCILE_S}s,
  discovery_interval: {DISCOVERY_S}s, final_fetch_interval: 1s}}
state: {{path: "{tmp / f"{name}.db"}"}}
web: {{listen_address: "127.0.0.1:{port}"}}
"""
    )
    return path, port


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus, alertmanager = binary("prometheus"), binary("prometheus-alertmanager")
    tmp = tmp_path_factory.mktemp("exporter-alerts-e2e")
    receiver = Receiver("")
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"receiver": receiver}))
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sim_args = ["--sites", "1", "--racks", str(RACKS), "--non-flow-sites", "0", "--quiet-scenario"]
    try:
        with simulator(tmp, *sim_args) as sim:
            yield from _stack(tmp, sim, receiver, prometheus, alertmanager)
    finally:
        server.shutdown()
        server.server_close()


def _stack(tmp: Path, sim: str, receiver: Receiver, prometheus: str, alertmanager: str) -> Iterator[Stack]:
    """Alertmanager, the three exporters and Prometheus; stopped (by PID) in reverse order."""
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    configs = {
        "refused": _exporter_config(tmp, "refused", sim, "not-the-sim-token", 10),
        "unreachable": _exporter_config(tmp, "unreachable", nowhere, "sim-token", 10),
        "short": _exporter_config(tmp, "short", sim, "sim-token", BUDGET_RPS),
    }
    prom_port, am_port = free_port(), free_port()
    targets = ", ".join(f'"127.0.0.1:{port}"' for _, port in configs.values())
    prometheus_config = tmp / "prometheus.yml"
    prometheus_config.write_text(
        f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: ["{_rules(tmp, receiver.url)}"]
alerting:
  alertmanagers: [{{static_configs: [{{targets: ["127.0.0.1:{am_port}"]}}]}}]
scrape_configs:
  - job_name: {JOB}
    static_configs: [{{targets: [{targets}]}}]
"""
    )
    s = Stack(sim, f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{am_port}", receiver)
    procs: list[Process] = []
    try:
        procs.append(
            alertmanager_process(alertmanager, tmp, _alertmanager_config(tmp, receiver.url), am_port)
        )
        wait_until(lambda: http_ok(s.alertmanager + "/-/ready"), 60, "Alertmanager")
        for name, (path, port) in configs.items():
            procs.append(Process(exporter_command("run", "--config.file", str(path)), tmp / f"{name}.log"))
            s.instances[name] = f"127.0.0.1:{port}"
        s.started = time.monotonic()
        procs.append(
            prometheus_process(prometheus, tmp, prometheus_config, prom_port, "--rules.alert.resend-delay=1s")
        )
        for name in SCENARIOS:
            health = f"http://{s.instances[name]}/healthz"
            wait_until(lambda u=health: http_ok(u), 60, f"the {name} exporter")  # type: ignore[misc]
        wait_until(lambda: http_ok(s.prometheus + "/-/ready"), 60, "Prometheus")
        yield s
    finally:
        for proc in reversed(procs):
            proc.stop()


# -- helpers ------------------------------------------------------------------------------------


def _firing(stack: Stack, name: str, **labels: str) -> list[dict[str, Any]]:
    """``name`` alerts the webhook received firing, with these labels."""
    return [a for a in stack.receiver.alerts(name) if all(a["labels"].get(k) == v for k, v in labels.items())]


def _arrives(stack: Stack, name: str, timeout: float = 90, **labels: str) -> dict[str, Any]:
    wait_until(
        lambda: bool(_firing(stack, name, **labels)), timeout, f"{name} {labels} at the webhook", interval=0.5
    )
    alert = _firing(stack, name, **labels)[0]
    url = alert["annotations"]["runbook_url"]
    assert url == f"{stack.receiver.url}/runbooks/{name}.md"
    resp = httpx.get(url, timeout=5)
    assert resp.status_code == 200 and resp.text.startswith(f"# {name}\n")
    return alert


def _prometheus_firing(stack: Stack, name: str, instance: str) -> bool:
    return bool(stack.query(f'ALERTS{{alertname="{name}", alertstate="firing", instance="{instance}"}}'))


def _notifications_with(stack: Stack, name: str) -> list[dict[str, Any]]:
    with stack.receiver.lock:
        return [
            n
            for n in stack.receiver.notifications
            if any(a["labels"]["alertname"] == name and a["status"] == "firing" for a in n["alerts"])
        ]


def _never_site_down(stack: Stack) -> None:
    """No NicoSiteDown anywhere: not at the webhook, never even pending in Prometheus."""
    assert stack.receiver.alerts("NicoSiteDown") == []
    assert stack.query(f'count_over_time(ALERTS{{alertname="NicoSiteDown"}}{stack.since_start()})') == []


# -- the scenarios ------------------------------------------------------------------------------


def test_refused_credentials_page_once_and_mute_not_ready(stack: Stack) -> None:
    instance = stack.instances["refused"]
    alert = _arrives(stack, "NicoExporterCredentialsRefused", instance=instance)
    assert alert["labels"]["severity"] == "critical"
    assert {k: alert["labels"].get(k) for k in ("job", "site_id")} == {"job": JOB, "site_id": None}

    # The exporter is not ready either: the rule fires in Prometheus, and Alertmanager holds it back,
    # inhibited by the refused credentials of the same exporter.
    wait_until(
        lambda: _prometheus_firing(stack, "NicoExporterNotReady", instance),
        60,
        "NicoExporterNotReady of the refused exporter to fire in Prometheus",
        interval=0.5,
    )
    held: list[dict[str, Any]] = []

    def suppressed() -> bool:
        am = stack.am_alerts()
        refused = {
            a["fingerprint"]
            for a in am
            if a["labels"]["alertname"] == "NicoExporterCredentialsRefused"
            and a["labels"].get("instance") == instance
        }
        held[:] = [
            a
            for a in am
            if a["labels"]["alertname"] == "NicoExporterNotReady" and a["labels"].get("instance") == instance
        ]
        return bool(held and refused) and all(
            a["status"]["state"] == "suppressed" and set(a["status"]["inhibitedBy"]) <= refused for a in held
        )

    wait_until(
        suppressed, 30, "NicoExporterNotReady suppressed by NicoExporterCredentialsRefused", interval=0.5
    )
    time.sleep(3)  # a few more group intervals (1 s): nothing new may be sent
    assert _firing(stack, "NicoExporterNotReady", instance=instance) == []
    notifications = _notifications_with(stack, "NicoExporterCredentialsRefused")
    assert len(notifications) == 1, notifications
    assert [a["labels"]["instance"] for a in notifications[0]["alerts"]] == [instance]
    # It fails fast: after the first refusals the calls stop inside the exporter, not at NICo.
    rejected = stack.value(f'sum(nico_exporter_api_requests_total{{instance="{instance}", code="401"}})')
    failed_fast = stack.value(
        f'sum(nico_exporter_self_failures_total{{instance="{instance}", cause="credentials"}})'
    )
    assert rejected is not None and 1 <= rejected <= 6, rejected
    assert failed_fast is not None and failed_fast >= 1, failed_fast
    _never_site_down(stack)


def test_an_unreachable_api_pages_not_ready(stack: Stack) -> None:
    instance = stack.instances["unreachable"]
    alert = _arrives(stack, "NicoExporterNotReady", instance=instance)
    assert alert["labels"]["severity"] == "critical"
    # The description says what GET /site got: it could not connect.
    assert "connection x" in alert["annotations"]["description"], alert["annotations"]["description"]
    assert _firing(stack, "NicoExporterCredentialsRefused", instance=instance) == []
    assert (
        stack.value(
            f'max_over_time(nico_exporter_credentials_refused{{instance="{instance}"}}{stack.since_start()})'
        )
        == 0.0
    )
    _never_site_down(stack)


def test_a_short_budget_tickets_keeps_the_site_up_and_baselines_every_rack(stack: Stack) -> None:
    instance = stack.instances["short"]
    sel = f'instance="{instance}"'
    wait_until(
        lambda: (stack.value(f"nico_exporter_budget_required_requests_per_second{{{sel}}}") or 0) > 0,
        60,
        "the short exporter's budget gauges",
        interval=0.5,
    )
    needed = stack.value(f"nico_exporter_budget_required_requests_per_second{{{sel}}}")
    budget = stack.value(f"nico_exporter_budget_requests_per_second{{{sel}}}")
    assert needed is not None and budget == BUDGET_RPS
    assert 0.3 < budget / needed < 0.7, (needed, budget)  # about half of what the racks need

    alert = _arrives(stack, "NicoExporterBudgetShort", instance=instance)
    assert alert["labels"]["severity"] == "warning"
    description = alert["annotations"]["description"]
    assert f"needs {needed:.1f} requests/s" in description and f"of {budget:.1f} requests/s" in description

    # Every rack gets its baseline, the budget notwithstanding.
    def baselined() -> bool:
        return stack.value(f"sum(nico_exporter_racks_not_baselined{{{sel}}})") == 0 and stack.value(
            f"sum(nico_exporter_racks_baselined{{{sel}}})"
        ) == float(RACKS)

    wait_until(baselined, 120, f"all {RACKS} racks of the short exporter to be baselined", interval=1)
    window = stack.since_start()
    waited = stack.value(f"max_over_time(nico_exporter_rack_polls_waiting{{{sel}}}{window})")
    assert waited is not None and waited > 0  # the budget really was short: polls waited for it
    # The site was up all along: the exporter's own waits are not NICo failing to answer.
    assert stack.value(f"count(nico_site_up{{{sel}}})") == 1
    assert stack.value(f"min(min_over_time(nico_site_up{{{sel}}}{window}))") == 1
    _never_site_down(stack)

    # Nothing else of this exporter reached the webhook, and nothing critical at all but the two
    # pages the other scenarios expect.
    with stack.receiver.lock:
        received = [a for n in stack.receiver.notifications for a in n["alerts"] if a["status"] == "firing"]
    assert {a["labels"]["alertname"] for a in received if a["labels"].get("instance") == instance} == {
        "NicoExporterBudgetShort"
    }
    assert {
        (a["labels"]["alertname"], a["labels"].get("instance"))
        for a in received
        if a["labels"]["severity"] == "critical"
    } <= {
        ("NicoExporterCredentialsRefused", stack.instances["refused"]),
        ("NicoExporterNotReady", stack.instances["unreachable"]),
    }
