"""Real processes for end-to-end tests: the simulator and the exporter, started and ended by PID."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from exporter.simulator.harness import Child as Process
from exporter.simulator.harness import exporter_command, free_port, simulator_process, wait_until

__all__ = ["Process", "exporter_command", "free_port", "simulator", "wait_until"]


@contextlib.contextmanager
def simulator(tmp: Path, *args: str) -> Iterator[str]:
    """``nico-task-exporter simulate`` on a free port, its log in ``tmp``; yields its base URL."""
    with simulator_process(*args, log_dir=tmp) as url:
        yield url


def truth(url: str) -> dict[str, Any]:
    return dict(httpx.get(url + "/_sim/truth", timeout=10).json())


def traffic_over(url: str) -> bool:
    """The scenario stopped submitting (its horizon passed) and every task it made finished."""
    state = truth(url)
    end = state.get("arrivalsEnd")
    past = end is not None and state["now"] > end  # both RFC 3339 UTC with fractions: comparable
    return past and all(t["finished"] is not None for t in state["tasks"])


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def exporter_config(
    tmp: Path, sim_url: str, *, name: str = "exporter", port: int | None = None
) -> tuple[Path, int]:
    """A config for a fast end-to-end exporter against ``sim_url``; returns (path, metrics port).

    Polls every second at a 50 req/s budget, keeps its state in ``<name>.db`` and serves
    ``/metrics`` on 127.0.0.1 only.
    """
    port = port or free_port()
    path = tmp / f"{name}.yaml"
    path.write_text(
        f"""
api: {{url: "{sim_url}", org: acme, token: sim-token, timeout: 3s, max_requests_per_second: 50}}
polling: {{active_interval: 1s, tray_interval: 2s, reconcile_interval: 3s, discovery_interval: 20s,
  final_fetch_interval: 1s}}
state: {{path: "{tmp / f"{name}.db"}"}}
web: {{listen_address: "127.0.0.1:{port}"}}
"""
    )
    return path, port


def prometheus_process(prometheus: str, tmp: Path, config: Path, port: int, *extra_args: str) -> Process:
    """Debian's ``prometheus`` with ``config`` on 127.0.0.1:``port``, its data and log in ``tmp``."""
    return Process(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            *extra_args,
        ],
        tmp / "prometheus.log",
    )


def alertmanager_process(alertmanager: str, tmp: Path, config: Path, port: int) -> Process:
    """Debian's Alertmanager with ``config`` on 127.0.0.1:``port``, alone (no cluster), data in ``tmp``."""
    return Process(
        [
            alertmanager,
            f"--config.file={config}",
            f"--storage.path={tmp / 'am'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        tmp / "alertmanager.log",
    )


def start_prometheus(
    prometheus: str,
    tmp: Path,
    exporter_port: int,
    *extra_args: str,
    rule_files: tuple[Path, ...] = (),
    alertmanager: str | None = None,
) -> tuple[Process, str]:
    """Debian's ``prometheus`` on 127.0.0.1, scraping the exporter every second; returns (process, URL)."""
    port = free_port()
    rules = "".join(f'\n  - "{r}"' for r in rule_files)
    alerting = (
        f'\nalerting:\n  alertmanagers: [{{static_configs: [{{targets: ["{alertmanager}"]}}]}}]'
        if alertmanager
        else ""
    )
    config = tmp / "prometheus.yml"
    config.write_text(
        f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: nico-task-exporter
    static_configs: [{{targets: ["127.0.0.1:{exporter_port}"]}}]
rule_files:{rules or " []"}{alerting}
"""
    )
    proc = prometheus_process(prometheus, tmp, config, port, *extra_args)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(url + "/-/ready") or not proc.alive(), 60, "Prometheus to be ready")
        assert proc.alive(), proc.output()[-2000:]
    except BaseException:
        proc.stop()
        raise
    return proc, url
