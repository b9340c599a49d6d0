"""Shared plumbing for benchmarks: a simulator in its own process, results file, table."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from exporter.simulator.harness import free_port, simulator_process

__all__ = ["RESULTS", "free_port", "simulator_process"]

RESULTS = Path(__file__).with_name("results.json")


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
