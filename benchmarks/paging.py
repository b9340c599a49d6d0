"""Detection to page on a busy 100-rack fleet: from NICo marking a task Failed to the pager
webhook receiving its NicoTaskFailed.

The whole path with production defaults, in real time: the v2.0 simulator (4 sites x 25 racks,
background traffic of tasks that succeed), the exporter with its default intervals (15 s active
poll), Debian's ``prometheus`` scraping and evaluating the committed rules every 15 s,
``prometheus-alertmanager`` with ``alerts/alertmanager.example.yml``'s routing and grouping
(``group_by: [alertname, site_id]``, ``group_wait`` 10 s, ``group_interval`` 5 m; its receivers
pointed at a webhook here).

Measured failures (the background has none): ``SPREAD`` failures round-robin over the sites, one
every ``STAGGER`` seconds (so they land everywhere in the poll and scrape cycles); a burst of
``BURST`` at once on one site; and ``QUICK`` that fail within one poll interval. On NICo v2.0 a
task created and over between two polls is one no list can name: it is counted in
``nico_tasks_unobserved_total`` and cannot page (docs/alerts.md).

Latency per failure: the webhook's receipt time minus the task's ``finished`` timestamp from the
simulator's ground truth (simulated time runs at real speed, anchored on one reading of its
clock). Reported: p50, p95 and max over the failures that paged; the first page of each site
after its first failure (the target: within 60 s at p95); what a later failure on an
already-paged site costs (it waits for the group's next ``group_interval`` flush); and how many
quick failures paged.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks._common import free_port, simulator_process

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "nico-task-exporter.rules.yml"
EXAMPLE = ROOT / "alerts" / "alertmanager.example.yml"
SITES = 4
RACKS_PER_SITE = 25
SPREAD = 40
STAGGER = 1.5  # seconds between spread failures: 40 x 1.5 s covers four poll and scrape cycles
BURST = 10
QUICK = 5
INTERVAL = "15s"  # scrape and evaluation, as in production
STAGE_SECONDS = 30
QUICK_STAGE_SECONDS = 1
GROUP_INTERVAL_S = 300  # the example's group_interval: later failures of a paged site wait for it


def _parse(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


class _Pages:
    """The webhook: the local time each task's first NicoTaskFailed arrived."""

    def __init__(self) -> None:
        self.received: dict[str, float] = {}
        self.lock = threading.Lock()

    def add(self, body: dict[str, Any]) -> None:
        now = time.time()
        with self.lock:
            for alert in body.get("alerts", []):
                labels = alert["labels"]
                if labels.get("alertname") == "NicoTaskFailed" and alert["status"] == "firing":
                    self.received.setdefault(labels["task_id"], now)


def _handler(pages: _Pages) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            pages.add(json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0")))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"`{name}` is not installed (Debian: apt-get install prometheus prometheus-alertmanager)"
        )
    return path


def _alertmanager_config(tmp: Path, hook: str) -> Path:
    config = yaml.safe_load(EXAMPLE.read_text())
    config["receivers"] = [{"name": "bench", "webhook_configs": [{"url": hook}]}]
    config["route"]["receiver"] = "bench"
    for child in config["route"]["routes"]:
        child["receiver"] = "bench"
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Failure:
    task_id: str
    site_id: str
    kind: str  # spread, burst or quick
    finished: float = 0.0  # local clock
    paged: float | None = None  # local clock of its first NicoTaskFailed at the webhook


def _measure(tmp: Path, sim: str, pages: _Pages, hook: str) -> list[Failure]:
    exporter_port, prom_port, am_port = free_port(), free_port(), free_port()
    exporter_config = tmp / "exporter.yaml"
    exporter_config.write_text(
        f'api: {{url: "{sim}", org: acme, token: sim-token}}\n'
        f'state: {{path: "{tmp / "state.db"}"}}\n'
        f'web: {{listen_address: "127.0.0.1:{exporter_port}"}}\n'
    )
    prometheus_config = tmp / "prometheus.yml"
    prometheus_config.write_text(
        f"global: {{scrape_interval: {INTERVAL}, evaluation_interval: {INTERVAL}}}\n"
        f'rule_files: ["{RULES}"]\n'
        f'alerting: {{alertmanagers: [{{static_configs: [{{targets: ["127.0.0.1:{am_port}"]}}]}}]}}\n'
        "scrape_configs:\n"
        f'  - {{job_name: nico-task-exporter, static_configs: [{{targets: ["127.0.0.1:{exporter_port}"]}}]}}\n'
    )
    procs = [
        _start(
            [sys.executable, "-m", "exporter", "run", "--config.file", str(exporter_config)],
            tmp / "exporter.log",
        ),
        _start(
            [
                _binary("prometheus-alertmanager"),
                f"--config.file={_alertmanager_config(tmp, hook)}",
                f"--storage.path={tmp / 'am'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
            tmp / "alertmanager.log",
        ),
        _start(
            [
                _binary("prometheus"),
                f"--config.file={prometheus_config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            tmp / "prometheus.log",
        ),
    ]
    try:
        prom = f"http://127.0.0.1:{prom_port}"
        _wait(lambda: _ok(f"http://127.0.0.1:{exporter_port}/readyz"), 60, "the exporter")
        _wait(lambda: _ok(f"http://127.0.0.1:{am_port}/-/ready"), 60, "Alertmanager")
        _wait(lambda: _ok(prom + "/-/ready"), 60, "Prometheus")

        def scraped() -> bool:
            resp = httpx.get(prom + "/api/v1/query", params={"query": "nico:site:info"}, timeout=5)
            return bool(resp.json()["data"]["result"])

        _wait(scraped, 90, "the rules to see the exporter's series")
        state = httpx.get(sim + "/_sim/truth", timeout=10).json()
        sim_offset = _parse(state["now"]) - time.time()
        sites = state["sites"][:SITES]
        plan: list[tuple[int, int, int, str]] = []  # (site, rack, stage seconds, kind)
        for n in range(SPREAD):
            plan.append((n % SITES, 1 + n // SITES, STAGE_SECONDS, "spread"))
        plan += [(0, 12 + n, STAGE_SECONDS, "burst") for n in range(BURST)]
        plan += [(SITES - 1, 12 + n, QUICK_STAGE_SECONDS, "quick") for n in range(QUICK)]
        failures: list[Failure] = []
        for site_n, rack_n, stage_seconds, kind in plan:
            site = sites[site_n]
            for rack in site["racks"][rack_n:] + site["racks"][:rack_n]:  # the next free rack
                body = {
                    "siteId": site["id"],
                    "rackId": rack["id"],
                    "operation": "power_on",
                    "outcome": "fail",
                    "failStage": 1,
                    "error": "BMC unreachable: power shelf did not answer",
                    "stageSeconds": stage_seconds,
                }
                resp = httpx.post(sim + "/_sim/tasks", json=body, timeout=5)
                if resp.status_code != 409:  # refused: the rack is busy with background work
                    break
            resp.raise_for_status()
            failures.append(Failure(str(resp.json()["taskId"]), site["id"], kind))
            if kind == "spread":
                time.sleep(STAGGER)
        must_page = {f.task_id for f in failures if f.kind != "quick"}
        _wait(lambda: must_page <= set(pages.received), 90 + GROUP_INTERVAL_S + 60, "every failure to page")
        time.sleep(20)  # the quick ones, if any page at all
        finished = {
            t["id"]: t["finished"] for t in httpx.get(sim + "/_sim/truth", timeout=10).json()["tasks"]
        }
        for failure in failures:
            failure.finished = _parse(finished[failure.task_id]) - sim_offset
            failure.paged = pages.received.get(failure.task_id)
        return failures
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run() -> dict[str, float]:
    pages = _Pages()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(pages))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}/hook"
    sim_args = [
        "--sites", str(SITES), "--racks", str(RACKS_PER_SITE), "--non-flow-sites", "0",
        "--arrivals-per-rack-per-hour", "6", "--failure-rate", "0", "--stuck-tasks", "0",
        "--history-hours", "1", "--stage-seconds", "power=20:60,firmware=60:180",
    ]  # fmt: skip
    try:
        with tempfile.TemporaryDirectory(prefix="nico-paging-") as tmp, simulator_process(*sim_args) as sim:
            failures = _measure(Path(tmp), sim, pages, hook)
    finally:
        server.shutdown()
        server.server_close()
    paged = [f for f in failures if f.paged is not None]
    latencies = [f.paged - f.finished for f in paged if f.paged is not None]
    first_by_site: dict[str, float] = {}
    first_failure: dict[str, float] = {}
    for f in failures:
        if f.kind == "quick":
            continue
        first_failure[f.site_id] = min(first_failure.get(f.site_id, f.finished), f.finished)
        if f.paged is not None:
            first_by_site[f.site_id] = min(first_by_site.get(f.site_id, f.paged), f.paged)
    first_pages = [first_by_site[s] - first_failure[s] for s in first_by_site]
    later = [
        f.paged - f.finished
        for f in paged
        if f.paged is not None and f.kind != "quick" and f.paged > first_by_site.get(f.site_id, 0) + 1
    ]
    return {
        "failures": float(len(failures)),
        "failures_paged": float(len(paged)),
        "page_latency_p50_s": round(statistics.median(latencies), 1),
        "page_latency_p95_s": round(_quantile(latencies, 0.95), 1),
        "page_latency_max_s": round(max(latencies), 1),
        "first_page_per_site_p95_s": round(_quantile(first_pages, 0.95), 1),
        "first_page_per_site_max_s": round(max(first_pages), 1),
        "later_failure_on_paged_site_p50_s": round(statistics.median(later), 1) if later else 0.0,
        "quick_failures_paged": float(sum(1 for f in paged if f.kind == "quick")),
    }


if __name__ == "__main__":
    print(run())
