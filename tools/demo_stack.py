"""``make demo-stack``: the demo, plus a real Prometheus evaluating the shipped alert rules and, where
installed, Alertmanager, so a newcomer sees alerts fire without writing a configuration.

    python -m tools.demo_stack [the demo's flags] [--prometheus.listen-address 127.0.0.1:9090]
                               [--alertmanager.listen-address 127.0.0.1:9093]

Prometheus (``prometheus`` on PATH) loads ``alerts/nico-task-exporter.rules.yml`` as shipped and
scrapes the demo's exporter as job ``nico-task-exporter`` (the job the rules select). Alertmanager
(``prometheus-alertmanager`` or ``alertmanager``) gets ``alerts/alertmanager.example.yml``'s routing,
grouping and inhibition with receivers that send nothing. Both bind to 127.0.0.1 by default, keep
their data in a temporary directory and stop with the demo. A binary that is missing, or that
does not start, is said so and left out: the demo runs without it. This reads the repository's
``alerts/``, so it runs from a checkout (the wheel has no alert files), like the other tools.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

from exporter import logs
from exporter.app import stop_on_signals
from exporter.cli import demo_flags, demo_options, listen_address
from exporter.demo import DemoOptions, run_demo
from exporter.simulator.harness import Child
from tools.paths import ROOT

RULES = ROOT / "alerts" / "nico-task-exporter.rules.yml"
ALERTMANAGER_EXAMPLE = ROOT / "alerts" / "alertmanager.example.yml"
# The job name the shipped rules select (exporter/mixin/config.yml: selector).
JOB = "nico-task-exporter"
PROMETHEUS_BINARIES = ("prometheus",)
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")
SCRAPE_INTERVAL = "5s"
READY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class StackOptions:
    """Where the demo's exporter serves and where Prometheus and Alertmanager listen."""

    exporter: tuple[str, int]
    prometheus: tuple[str, int] = ("127.0.0.1", 9090)
    alertmanager: tuple[str, int] = ("127.0.0.1", 9093)


def _url(address: tuple[str, int]) -> str:
    host, port = address
    return f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}"  # noqa: S104


def _target(address: tuple[str, int]) -> str:
    host, port = address
    return f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"  # noqa: S104


def prometheus_config(options: StackOptions, *, alertmanager: bool) -> dict[str, Any]:
    """Prometheus's configuration: the shipped rules, the exporter as ``JOB``, Alertmanager if any."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [_target(options.exporter)]}]}],
    }
    if alertmanager:
        targets = [_target(options.alertmanager)]
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": targets}]}]}
    return config


def alertmanager_config() -> dict[str, Any]:
    """The example's routing tree, grouping and inhibition; each receiver keeps its name and sends
    nothing (the demo pages nobody)."""
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text(encoding="utf-8"))
    config["receivers"] = [{"name": receiver["name"]} for receiver in config["receivers"]]
    return config


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


class DemoStack(contextlib.AbstractContextManager["DemoStack"]):
    """Prometheus and Alertmanager for the demo, started on entry and stopped (by PID) on exit.

    ``lines`` says, for the demo's banner, where each one is or why it is not there.
    """

    def __init__(
        self, options: StackOptions, workdir: Path, *, which: Callable[[str], str | None] = shutil.which
    ) -> None:
        self.options = options
        self.workdir = workdir
        self.which = which
        self.lines: list[str] = []
        self.children: list[Child] = []
        self.prometheus_url: str | None = None
        self.alertmanager_url: str | None = None

    def __enter__(self) -> DemoStack:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start what is installed (a few seconds: each is waited for until ready)."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop everything started (SIGTERM by PID, then SIGKILL if it lingers)."""
        while self.children:
            self.children.pop().stop()

    def _find(self, names: Sequence[str]) -> str | None:
        return next((path for name in names if (path := self.which(name))), None)

    def _start(self) -> None:
        prometheus = self._find(PROMETHEUS_BINARIES)
        if prometheus is None:
            self.lines.append(
                "prometheus:     not on PATH (Debian: apt-get install prometheus): the demo runs without it"
            )
            return
        if not RULES.is_file():
            self.lines.append(f"prometheus:     {RULES} is missing (run from a checkout): not started")
            return
        alertmanager = self._find(ALERTMANAGER_BINARIES)
        if alertmanager is None:
            self.lines.append(
                "alertmanager:   not on PATH (Debian: apt-get install prometheus-alertmanager): "
                "see the alerts in Prometheus"
            )
        else:
            self.alertmanager_url = self._alertmanager(alertmanager)
        self.prometheus_url = self._prometheus(prometheus, alertmanager=self.alertmanager_url is not None)

    def _launch(self, name: str, args: list[str], url: str) -> Child | None:
        """Start ``args``, wait until ``url`` is ready; None (said in ``lines``) if it did not start."""
        child = Child(args, self.workdir / f"{name}.log")
        self.children.append(child)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while child.alive() and not _ready(url) and time.monotonic() < deadline:
            time.sleep(0.2)
        if child.alive() and _ready(url):
            return child
        self.children.remove(child)
        child.stop()
        tail = child.output().strip().splitlines()[-1:] or ["no output"]
        self.lines.append(f"{name + ':':<15} did not start ({tail[0][:200]}): the demo runs without it")
        return None

    def _alertmanager(self, binary: str) -> str | None:
        config = self.workdir / "alertmanager.yml"
        config.write_text(yaml.safe_dump(alertmanager_config()), encoding="utf-8")
        host, port = self.options.alertmanager
        url = f"http://{_target(self.options.alertmanager)}"
        args = [
            binary,
            f"--config.file={config}",
            f"--storage.path={self.workdir / 'alertmanager'}",
            f"--web.listen-address={host}:{port}",
            "--cluster.listen-address=",  # no peers: one local instance
            "--log.level=warn",
        ]
        if self._launch("alertmanager", args, url) is None:
            return None
        self.lines.append(
            f"alertmanager:   {_url(self.options.alertmanager)}   (the example's routing and inhibition; "
            "its receivers send nothing)"
        )
        return url

    def _prometheus(self, binary: str, *, alertmanager: bool) -> str | None:
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(prometheus_config(self.options, alertmanager=alertmanager)))
        host, port = self.options.prometheus
        url = f"http://{_target(self.options.prometheus)}"
        args = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'prometheus'}",
            f"--web.listen-address={host}:{port}",
            "--log.level=warn",
        ]
        if self._launch("prometheus", args, url) is None:
            return None
        shown = _url(self.options.prometheus)
        self.lines.append(
            f"prometheus:     {shown}/alerts   (the shipped rules, {RULES.relative_to(ROOT)}; "
            f"the exporter scraped every {SCRAPE_INTERVAL} as job {JOB})"
        )
        return url


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.demo_stack",
        description="nico-task-exporter demo, with Prometheus (the shipped rules) and Alertmanager",
    )
    demo_flags(parser)
    parser.add_argument(
        "--prometheus.listen-address",
        dest="prometheus_listen",
        type=listen_address,
        default=listen_address("127.0.0.1:9090"),
        help="where Prometheus listens (default 127.0.0.1:9090)",
    )
    parser.add_argument(
        "--alertmanager.listen-address",
        dest="alertmanager_listen",
        type=listen_address,
        default=listen_address("127.0.0.1:9093"),
        help="where Alertmanager listens (default 127.0.0.1:9093)",
    )
    return parser


async def _serving(url: str, demo: asyncio.Task[None]) -> bool:
    """Wait until the demo's exporter answers ``url``; False if the demo ended first."""
    async with httpx.AsyncClient(timeout=2) as client:
        while not demo.done():
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return True
            await asyncio.sleep(0.2)
    return False


async def run_stack(options: DemoOptions, stack_options: StackOptions, workdir: Path) -> None:
    """The demo until Ctrl-C or SIGTERM; Prometheus and Alertmanager from when its exporter
    serves (so the first scrape finds it up) until it stops."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    demo = asyncio.create_task(run_demo(options, stop=stop))
    try:
        if not await _serving(f"http://{_target(options.exporter)}/metrics", demo):
            return
        stack = DemoStack(stack_options, workdir)
        try:
            await asyncio.to_thread(stack.start)
            for line in stack.lines:
                print(line, flush=True)
            await asyncio.shield(demo)
        finally:
            await asyncio.to_thread(stack.close)
    finally:
        stop.set()
        await demo


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level or "info", args.log_format or "logfmt")
    options = demo_options(args)
    stack_options = StackOptions(options.exporter, args.prometheus_listen, args.alertmanager_listen)
    with (
        contextlib.suppress(KeyboardInterrupt),
        tempfile.TemporaryDirectory(prefix="nico-demo-stack-") as tmp,
    ):
        asyncio.run(run_stack(options, stack_options, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
