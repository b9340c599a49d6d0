"""Running the simulator for tests, benchmarks and scripts: in a thread, or in its own process.

- :func:`serve_in_thread` serves an ASGI app (the simulator's, or any) with uvicorn on a thread,
  on 127.0.0.1 and a port the OS picks, and stops it on exit.
- :func:`simulator_process` runs ``nico-task-exporter simulate`` as a child process (its own core
  and interpreter lock), waits for ``/healthz``, and ends it by PID on exit.
- :class:`Child` is a child process with its output in a file, stopped by PID.

Everything binds to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import uvicorn

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``predicate`` until it holds; raise naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def exporter_command(*args: str) -> list[str]:
    """``nico-task-exporter ARGS`` with this interpreter (no installed script needed)."""
    return [sys.executable, "-m", "exporter", *args]


class Child:
    """A child process with its output in a file, in its own session, stopped by PID."""

    def __init__(self, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.log = log
        self._out = log.open("ab")
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            self.args,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
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


def healthy(url: str) -> bool:
    """``GET url/healthz`` answers 200."""
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def simulator_process(*args: str, log_dir: Path | None = None, timeout: float = 30.0) -> Iterator[str]:
    """``nico-task-exporter simulate ARGS`` on a free port; yields its base URL.

    Its output goes to ``log_dir/simulator-<port>.log`` (a temporary directory when not given,
    removed on exit); a simulator that exits early raises with the end of its log.
    """
    with contextlib.ExitStack() as stack:
        where = log_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nico-sim-")))
        port = free_port()
        child = Child(
            exporter_command("simulate", "--web.listen-address", f"{LOOPBACK}:{port}", *args),
            where / f"simulator-{port}.log",
        )
        stack.callback(child.stop)
        url = f"http://{LOOPBACK}:{port}"
        wait_until(lambda: healthy(url) or not child.alive(), timeout, "the simulator to start")
        if not child.alive():
            raise RuntimeError(f"the simulator exited early: {child.output()[-2000:]}")
        yield url


@contextlib.contextmanager
def serve_in_thread(app: Any, *, ready_timeout: float = 10.0) -> Iterator[str]:
    """Serve the ASGI ``app`` with uvicorn in a thread; yields its base URL; stops and joins on exit.

    The app runs on the server thread's event loop: change a served simulator's state over HTTP
    (its ``/_sim`` control API), not directly.
    """
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="critical", lifespan="off", access_log=False, date_header=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + ready_timeout
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
