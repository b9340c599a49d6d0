"""Shared plumbing for benchmarks: a simulator in its own process, results file, table."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

RESULTS = Path(__file__).with_name("results.json")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def simulator_process(*args: str) -> Iterator[str]:
    """Serve the simulator over loopback in a child process (so it has its own core and GIL)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "simulate", "--web.listen-address", f"127.0.0.1:{port}", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"simulator exited early: {err[-2000:]}")
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("simulator did not come up within 30 s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def commit() -> str:
    """The commit the figures belong to (``-dirty`` when the work tree has changes)."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty.strip() else "")


def record(benchmark: str, results: dict[str, float]) -> dict[str, Any]:
    """Replace ``benchmark``'s figures in ``benchmarks/results.json``, with the commit and date.

    Each benchmark owns its section: a rerun replaces it whole, so no stale figure outlives the
    run that produced it.
    """
    merged: dict[str, Any] = {}
    if RESULTS.exists():
        with contextlib.suppress(ValueError):
            merged = json.loads(RESULTS.read_text())
    merged = {k: v for k, v in merged.items() if isinstance(v, dict)}  # drop the old flat format
    merged[benchmark] = {
        "commit": commit(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
    }
    RESULTS.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    return merged


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    header = ("benchmark", "key", "value", "target")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
