"""``python -m tools.dashboards``: write dashboards/*.json, or draw docs/img/*.png from a Prometheus."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tools.dashboards import DASHBOARD_DIR, render_all
from tools.dashboards.model import DEFAULT_RUNBOOK_BASE


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.dashboards", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--runbook-base-url", default=DEFAULT_RUNBOOK_BASE, help="where docs/runbooks/ is served"
    )
    parser.add_argument("--out", type=Path, default=DASHBOARD_DIR, help="directory for the JSON files")
    parser.add_argument(
        "--render-png", metavar="PROMETHEUS_URL", help="draw docs/img/<uid>.png from this Prometheus"
    )
    parser.add_argument("--window", type=float, default=900.0, help="seconds of history the PNGs show")
    args = parser.parse_args(argv)
    if args.render_png:
        from tools.dashboards.render import render_pngs  # matplotlib (the docs extra) only here

        for path in render_pngs(args.render_png, args.window):
            print(f"wrote {path}", file=sys.stderr)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in render_all(args.runbook_base_url).items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
