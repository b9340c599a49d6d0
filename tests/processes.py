"""Real processes for end-to-end tests: the simulator and the exporter, started and ended by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Process:
    """A child process with its output in a file, stopped by PID on exit."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log = log
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            args,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._out.close()
        return int(self.proc.returncode)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def exporter_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "exporter", *args]


@contextlib.contextmanager
def simulator(tmp: Path, *args: str) -> Iterator[str]:
    """``nico-task-exporter simulate`` on a free port; yields its base URL."""
    port = free_port()
    proc = Process(
        exporter_command("simulate", "--web.listen-address", f"127.0.0.1:{port}", *args),
        tmp / f"simulator-{port}.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(url) or not proc.alive(), 30, "the simulator to start")
        assert proc.alive(), proc.output()[-2000:]
        yield url
    finally:
        proc.stop()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


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
    proc = Process(
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
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(url + "/-/ready") or not proc.alive(), 60, "Prometheus to be ready")
        assert proc.alive(), proc.output()[-2000:]
    except BaseException:
        proc.stop()
        raise
    return proc, url
