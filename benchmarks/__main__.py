"""``python -m benchmarks [NAME ...]``: run benchmarks, print a table, update results.json."""

from __future__ import annotations

import sys
from collections.abc import Callable

from benchmarks import client_overhead, fleet, overrun, paging, polling, render, task_runs, tracing
from benchmarks._common import print_table, record

# name -> (runner, {key: target text})
BENCHMARKS: dict[str, tuple[Callable[[], dict[str, float]], dict[str, str]]] = {
    "client_overhead": (
        client_overhead.run,
        {"client_overhead_ratio": "<= 1.1", "client_cold_parse_overhead_ratio": "(worst case)"},
    ),
    "render": (
        render.run,
        {
            "render_ratio": "<= 0.1",
            "poll_rate_under_scrape_ratio": ">= 0.8",
            "bytes_per_task": "<= 8192",
        },
    ),
    "polling": (
        polling.run,
        {
            f"{server}_{key}": target
            for server in polling.SERVERS
            for key, target in (
                ("economy_ratio", ">= 25"),
                ("freshness_p99_s", "<= 20"),
                ("throttled_ratio", "<= 0.005"),
            )
        },
    ),
    # healthy-site freshness beside 0, 1 and 3 sites whose agents are silent (NICo holds their calls 50 s)
    "fleet": (
        fleet.run,
        {f"silent_{n}_p99_ratio": "<= 1.2" for n in fleet.SILENT_CASES if n},
    ),
    "tracing": (tracing.run, {"spans_per_s": ""}),
    # learned stuck detection on the slow-nvswitch preset (time scaled x20), against NicoTaskStuck,
    # both evaluated by Prometheus's rule engine (promtool test rules) over the scraped exposition
    "overrun": (
        overrun.run,
        {"overrun_detection_lead_s": "> 0", "overrun_false_positive_alerts": "0"},
    ),
    # Task Runs (NICo main): list + get with stats + targets per site and active interval
    "task_runs": (task_runs.run, {"task_run_calls_per_active_run_per_minute": "(3 per 15 s interval)"}),
    # detection to page on a busy 100-rack fleet: simulator -> exporter -> Prometheus -> Alertmanager
    "paging": (paging.run, {"first_page_per_site_p95_s": "<= 60", "quick_failures_paged": "(v2.0: 0)"}),
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    rows: list[tuple[str, str, str, str]] = []
    for name in names:
        runner, targets = BENCHMARKS[name]
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results = runner()
        record(name, results)
        rows.extend((name, key, f"{value:g}", targets.get(key, "")) for key, value in results.items())
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
