"""``docs/metrics.md``, generated from ``FAMILIES``: ``python -m tools.metrics_doc`` writes it.

The page holds the family table, the histogram buckets, how exemplars and per-task series work,
and the series count of a reference fleet. That count comes from :func:`fleet_series`, a formula
over the family definitions; ``tests/test_cardinality.py`` builds the reference fleet's state,
renders it, and checks the collector emits exactly that many series, so the figure on the page is
the collector's, not an estimate.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from exporter.config import StateConfig
from exporter.durations import format_duration
from exporter.metrics import (
    FAMILIES,
    FAMILY,
    STATUSES,
    ClientMetrics,
    HistogramSet,
    TaskMetrics,
    family_filter,
)
from exporter.models import NVL72_TRAYS, TERMINAL_STATUSES, ComponentType, TaskRunStatus, TaskStatus
from exporter.operations import OPERATIONS, Operation
from tools.paths import ROOT

DOC_PATH = ROOT / "docs" / "metrics.md"

_C, _S, _P = ComponentType.COMPUTE, ComponentType.NVSWITCH, ComponentType.POWERSHELF
_ALL = (_C, _S, _P)

Layout = tuple[tuple[ComponentType, ...], ...]

# Stages of each operation (the component types each stage's steps run on): Flow's default rules,
# and one rack-wide stage for leak detection.
REFERENCE_LAYOUTS: dict[Operation, Layout] = {
    Operation.POWER_ON: ((_P,), (_S,), (_C,)),
    Operation.POWER_OFF: ((_C,), (_S,), (_P,)),
    Operation.POWER_CYCLE: ((_C,), (_S,), (_P,), (_P,), (_S,), (_C,)),
    Operation.FORCE_POWER_OFF: ((_C,), (_S,), (_P,), _ALL),
    Operation.FORCE_POWER_CYCLE: ((_C,), (_S,), (_P,), _ALL, (_P,), (_S,), (_C,), _ALL),
    Operation.FIRMWARE_UPDATE: ((_C,), (_S,)),
    Operation.BRING_UP: ((_P,), (_C,), (_C,), (_S,), (_S,), (_C,)),
    Operation.LEAK_DETECTION: (_ALL,),
}


def busy_stage(layout: Layout) -> int:
    """The stage a reference Running task runs, and the one a reference Failed task failed in."""
    return min(2, len(layout))


@dataclass(frozen=True)
class Fleet:
    """A fleet's state at one scrape, as the cardinality formula assumes it.

    Tasks are spread so that every site has every operation in every active status, and finished
    Succeeded and Failed. Running tasks carry a report: stages before :func:`busy_stage` completed,
    that one running, the rest pending; Pending and Waiting tasks have neither a report nor a start
    time. Finished tasks have every timestamp and a report: Succeeded ones completed every stage,
    Failed ones failed every step of the busy stage. Trays are known for ``attributed_running``
    Running tasks (one per rack) and ``attributed_failed`` Failed tasks (each on its own rack), each
    on every tray of its rack; a failed one is charged to the trays of its busy stage's component
    types. Finished tasks take the operations in turn, and every ``racks // failed``-th of the first
    ``racks`` failed. Every API endpoint answered with every code.
    """

    sites: int = 2
    racks_per_site: int = 500
    trays: Mapping[ComponentType, int] = field(default_factory=lambda: dict(NVL72_TRAYS))
    layouts: Mapping[Operation, Layout] = field(default_factory=lambda: dict(REFERENCE_LAYOUTS))
    # Active tasks by status, in the order tasks are dealt round-robin.
    active: Mapping[TaskStatus, int] = field(
        default_factory=lambda: {
            TaskStatus.RUNNING: 6_000,
            TaskStatus.PENDING: 2_000,
            TaskStatus.WAITING: 2_000,
        }
    )
    finished: int = 2_000
    failed: int = 200
    attributed_running: int = 1_000
    attributed_failed: int = 100
    endpoints: tuple[str, ...] = (
        "/site",
        "/rack",
        "/tray",
        "/rack/{id}/task",
        "/tray/{id}/task",
        "/task/{id}",
    )
    codes: tuple[str, ...] = ("200", "429")
    parse_errors: tuple[tuple[str, str], ...] = (("/rack/{id}/task", "unknown_status"),)
    shed_jobs: tuple[str, ...] = ("discovery",)
    per_task_stages: bool = False
    # Task Runs being polled (all of them with stats), target statuses per run, failed targets
    # (none on NICo v2.0), and Operation Rules per site (none until an operator creates them).
    task_runs: int = 0
    run_target_statuses: int = 0
    failed_run_targets: int = 0
    rules_per_site: int = 0
    # Running tasks whose current stage the learner knows (0: a cold start).
    learned_running: int = 0
    # metrics.task_status: "one_hot" (every status, the default) or "current".
    status_one_hot: bool = True
    # metrics.allowlist / metrics.denylist (see metrics.family_filter).
    allowlist: tuple[str, ...] = ()
    denylist: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        ops = len(self.layouts)
        if self.running % ops or self.finished % ops:
            raise ValueError("running and finished tasks must spread evenly over the operations")
        if min(*self.active.values(), self.failed, self.finished - self.failed) < self.sites * ops:
            raise ValueError("too few tasks for every site to see every operation in every status")

    @property
    def racks(self) -> int:
        return self.sites * self.racks_per_site

    @property
    def trays_per_rack(self) -> int:
        return sum(self.trays.values())

    @property
    def charged_trays(self) -> int:
        """Tray failure series: the trays each attributed failed task is charged to."""
        if not self.failed:
            return 0
        ops = list(self.layouts)
        stride = self.racks // self.failed
        failed = [self.layouts[ops[j % len(ops)]] for j in range(0, min(self.racks, self.finished), stride)]
        return sum(
            self.trays.get(kind, 0)
            for layout in failed[: self.attributed_failed]
            for kind in set(layout[busy_stage(layout) - 1])
        )

    @property
    def active_tasks(self) -> int:
        return sum(self.active.values())

    @property
    def running(self) -> int:
        return self.active.get(TaskStatus.RUNNING, 0)

    @property
    def tracked(self) -> int:
        return self.active_tasks + self.finished

    def describe(self) -> str:
        """The fleet in one sentence, for the docs."""
        trays = ", ".join(f"{n} {kind.value}" for kind, n in self.trays.items())
        active = ", ".join(f"{n:,} {status.value}" for status, n in self.active.items())
        return (
            f"{self.sites} sites x {self.racks_per_site:,} racks ({self.racks:,} racks) of "
            f"{self.trays_per_rack} trays ({trays}); {self.active_tasks:,} active tasks ({active}) over "
            f"{len(self.layouts)} operations; {self.finished:,} tasks finished within the TTL, "
            f"{self.failed:,} of them failed; trays known for {self.attributed_running:,} running and "
            f"{self.attributed_failed:,} failed tasks (every tray of their rack; a failure charged to "
            "the trays of its failed stage's component types); "
            f"{len(self.endpoints)} API endpoints x {len(self.codes)} response codes; "
            f"per-task stage series {'on' if self.per_task_stages else 'off'}"
        )


REFERENCE_FLEET = Fleet()


def _histogram_series(name: str, label_sets: int) -> int:
    """Samples of ``label_sets`` histograms: a bucket per bound, ``+Inf``, ``_sum`` and ``_count``."""
    bounds = {h.family.name: len(h.bounds) for h in _histograms()}
    return label_sets * (bounds[name] + 3)


def _histograms() -> list[HistogramSet]:
    t = TaskMetrics()
    return [t.duration, t.queue, t.stage, t.step, ClientMetrics().durations]


def fleet_series(fleet: Fleet) -> dict[str, int]:
    """Series (exposition samples) per family for ``fleet``, derived from the family definitions.

    Histograms count their buckets, ``_sum`` and ``_count``; families with no series count 0.
    """
    s, ops = fleet.sites, len(fleet.layouts)
    finished_statuses = (1 if fleet.finished > fleet.failed else 0) + (1 if fleet.failed else 0)
    stage_sets = sum(len(layout) + (1 if fleet.failed else 0) for layout in fleet.layouts.values())
    step_sets = sum(
        len({kind for stage in layout for kind in stage})
        + (len(set(layout[busy_stage(layout) - 1])) if fleet.failed else 0)
        for layout in fleet.layouts.values()
    )
    # Running and finished tasks are spread evenly over the operations (checked by the Fleet).
    stage_status = (fleet.running + fleet.finished) // ops * sum(len(lay) for lay in fleet.layouts.values())
    scalars = [f.name for f in FAMILIES if not f.labels]
    counts: dict[str, int] = {
        "nico_tasks": s * len(fleet.active) * ops,
        # Every (status, operation) from the start, at 0 until counted (see snapshot._from_zero).
        "nico_tasks_finished_total": s * len(TERMINAL_STATUSES) * len(Operation),
        "nico_tasks_unobserved_total": s,
        "nico_task_duration_seconds": _histogram_series(
            "nico_task_duration_seconds", s * finished_statuses * ops
        ),
        "nico_task_queue_duration_seconds": _histogram_series("nico_task_queue_duration_seconds", s * ops),
        "nico_task_stage_duration_seconds": _histogram_series(
            "nico_task_stage_duration_seconds", s * stage_sets
        ),
        "nico_task_step_duration_seconds": _histogram_series(
            "nico_task_step_duration_seconds", s * step_sets
        ),
        "nico_task_status": (len(STATUSES) if fleet.status_one_hot else 1) * fleet.tracked,
        "nico_task_info": fleet.tracked,
        "nico_task_created_timestamp_seconds": fleet.tracked,
        "nico_task_started_timestamp_seconds": fleet.running + fleet.finished,
        "nico_task_updated_timestamp_seconds": fleet.tracked,
        "nico_task_finished_timestamp_seconds": fleet.finished,
        "nico_task_current_stage": fleet.running,
        "nico_task_failure_info": fleet.failed,
        "nico_task_stage_status": stage_status if fleet.per_task_stages else 0,
        "nico_tray_tasks": fleet.attributed_running * fleet.trays_per_rack,
        "nico_tray_task_failures_total": fleet.charged_trays,
        "nico_site_info": s,
        "nico_rack_info": fleet.racks,
        "nico_site_up": s,
        "nico_site_online": s,
        "nico_site_clock_offset_seconds": s,
        "nico_exporter_site_breaker_open": s,
        "nico_exporter_last_successful_poll_timestamp_seconds": s,
        "nico_exporter_racks": s,
        "nico_exporter_racks_baselined": s,
        "nico_exporter_racks_not_baselined": s,
        # A healthy fleet: no call failed (each is a series per site and cause once one does).
        "nico_exporter_site_failures_total": 0,
        "nico_exporter_self_failures_total": 0,
        "nico_exporter_api_requests_total": len(fleet.endpoints) * len(fleet.codes),
        "nico_exporter_api_request_duration_seconds": _histogram_series(
            "nico_exporter_api_request_duration_seconds", len(fleet.endpoints)
        ),
        "nico_exporter_parse_errors_total": len(fleet.parse_errors),
        "nico_exporter_jobs_shed_total": len(fleet.shed_jobs),
        "nico_exporter_build_info": 1,
        **dict.fromkeys(scalars, 1),
        # Task Runs (NICo main): the reference fleet runs NICo v2.0, which has none; each site
        # answered the router 404 once and says so in nico_exporter_task_runs_supported.
        **dict.fromkeys(
            (
                "nico_task_run_info",
                "nico_task_run_phase",
                "nico_task_run_phases",
                "nico_task_run_created_timestamp_seconds",
                "nico_task_run_started_timestamp_seconds",
                "nico_task_run_finished_timestamp_seconds",
            ),
            fleet.task_runs,
        ),
        "nico_task_run_status": fleet.task_runs * len(TaskRunStatus),
        "nico_task_run_status_reason_info": fleet.task_runs,
        "nico_task_run_outcomes": fleet.task_runs * 4,
        "nico_task_run_targets": fleet.task_runs * fleet.run_target_statuses,
        "nico_task_run_failed_target_info": fleet.failed_run_targets,
        # Each final status from the start on sites that serve Task Runs (none here).
        "nico_task_runs_finished_total": 0,
        "nico_operation_rule_info": s * fleet.rules_per_site,
        "nico_exporter_task_runs_supported": s,
        "nico_exporter_operation_rules_supported": s,
        # Learned durations: the reference state is a cold start (the learner has seen nothing).
        **dict.fromkeys(
            (
                "nico_task_overrun_ratio",
                "nico_task_overrun_info",
                "nico_task_current_stage_started_timestamp_seconds",
                "nico_task_expected_finish_timestamp_seconds",
            ),
            fleet.learned_running,
        ),
        "nico_task_current_stage_expected_seconds": 2 * fleet.learned_running,
        "nico_task_duration_expected_seconds": 0,
        "nico_stage_duration_expected_seconds": 0,
    }
    unknown = set(counts) - set(FAMILY)
    missing = set(FAMILY) - set(counts)
    if unknown or missing:
        raise ValueError(f"fleet_series is out of date: unknown {sorted(unknown)}, missing {sorted(missing)}")
    wanted = family_filter(fleet.allowlist, fleet.denylist)
    return {f.name: counts[f.name] if f.name in wanted else 0 for f in FAMILIES}


# -- the page --------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _seconds(value: float) -> str:
    return f"{value:g}"


def _family_table() -> list[str]:
    lines = ["| family | type | labels | meaning |", "|---|---|---|---|"]
    for f in FAMILIES:
        labels = ", ".join(f.labels) if f.labels else "—"
        lines.append(f"| `{f.name}` | {f.type} | {labels} | {_cell(f.help)} |")
    return lines


def _bucket_table() -> list[str]:
    lines = ["| family | upper bounds (seconds) |", "|---|---|"]
    for h in _histograms():
        lines.append(f"| `{h.family.name}` | {', '.join(_seconds(b) for b in h.bounds)}, +Inf |")
    return lines


def _cardinality(fleet: Fleet) -> list[str]:
    counts = fleet_series(fleet)
    total = sum(counts.values())
    per_task = sum(n for name, n in counts.items() if "task_id" in FAMILY[name].labels)
    with_stages = sum(fleet_series(replace(fleet, per_task_stages=True)).values())
    lines = [
        "## Cardinality",
        "",
        f"Reference fleet: {fleet.describe()}.",
        "",
        f"It exposes **{total:,} series**, {per_task:,} of them per-task series "
        f"({per_task / total:.0%}). Turning on `metrics.per_task_stages` makes it {with_stages:,}.",
        "Per-task series scale with tracked tasks (active, plus finished within the TTL), tray series "
        "with the trays of racks whose tasks' trays are known; aggregates scale with sites x "
        "operations only. `tests/test_cardinality.py` renders this fleet and checks the count.",
        "",
        "| family | series |",
        "|---|---:|",
    ]
    lines += [f"| `{name}` | {n:,} |" for name, n in counts.items() if n]
    lines.append(f"| **total** | **{total:,}** |")
    return lines


# Cardinality controls shown on the page: (what to set, the fleet with it, what it costs).
CONTROLS: tuple[tuple[str, dict[str, Any], str], ...] = (
    (
        "`metrics.task_status: current`",
        {"status_one_hot": False},
        "one `nico_task_status` series per task (value 1) instead of one per status. Queries "
        "that compare a status with `== 1` still work; `== 0` and `absent` on a status do not.",
    ),
    (
        "`--metrics.denylist 'nico_tray_.*'`",
        {"denylist": ("nico_tray_.*",)},
        "no per-tray series: the rack drill-down's tray panels go blank.",
    ),
    (
        "`--metrics.denylist 'nico_task_(started|updated)_timestamp_seconds'`",
        {"denylist": ("nico_task_(started|updated)_timestamp_seconds",)},
        "`NicoTaskStuck` (running too long, and no progress for an hour) never fires.",
    ),
    (
        "`--metrics.allowlist 'nico_tasks.*,nico_task_(duration|queue_duration)_seconds,nico_site_.*,"
        "nico_exporter_.*'`",
        {
            "allowlist": (
                "nico_tasks.*",
                "nico_task_(duration|queue_duration)_seconds",
                "nico_site_.*",
                "nico_exporter_.*",
            )
        },
        "aggregates and self-metrics only: no per-task, per-rack or per-tray series, so no "
        "per-task alert (failed, stuck) and no drill-down below the site.",
    ),
)


def _consumers() -> dict[str, list[str]]:
    """Which shipped alert rules and dashboards read each family (from the generated files)."""
    files = [ROOT / "alerts" / "nico-task-exporter.rules.yml", *sorted((ROOT / "dashboards").glob("*.json"))]
    texts = {path.name: path.read_text(encoding="utf-8") for path in files if path.exists()}
    names = sorted(FAMILY, key=len, reverse=True)
    used: dict[str, list[str]] = {name: [] for name in FAMILY}
    for file, text in texts.items():
        for name in names:
            pattern = rf"\b{re.escape(name)}(_bucket|_sum|_count|_total)?\b"
            if re.search(pattern, text):
                used[name].append(file)
    return used


def _controls(fleet: Fleet) -> list[str]:
    base = sum(fleet_series(fleet).values())
    lines = [
        "## Cardinality controls",
        "",
        "As with kube-state-metrics: `--metrics.allowlist` / `--metrics.denylist` (config "
        "`metrics.allowlist` / `metrics.denylist`, lists) take family names or regular expressions "
        "that must match the whole name, comma-separated on the command line; the allowlist keeps "
        "only what it matches (empty: everything), then the denylist removes what it matches. "
        "`metrics.task_status: current` emits only the current status series of each task. A bad "
        "regular expression is a config error that names the field. Series saved on the reference "
        f"fleet ({base:,} series):",
        "",
        "| setting | series | saved | what you give up |",
        "|---|---:|---:|---|",
    ]
    for setting, change, cost in CONTROLS:
        total = sum(fleet_series(replace(fleet, **change)).values())
        lines.append(
            f"| {_cell(setting)} | {total:,} | {base - total:,} ({(base - total) / base:.0%}) | {cost} |"
        )
    used = _consumers()
    lines += [
        "",
        "Families the shipped alert rules and dashboards read (dropping one silences what reads it):",
        "",
        "| family | read by |",
        "|---|---|",
    ]
    lines += [f"| `{name}` | {', '.join(files)} |" for name, files in used.items() if files]
    return lines


def render_metrics_doc(fleet: Fleet = REFERENCE_FLEET) -> str:
    """The whole of ``docs/metrics.md``."""
    ttl = format_duration(StateConfig.model_fields["finished_task_ttl"].default)
    lines = [
        "# Metrics",
        "",
        "<!-- Generated from exporter/metrics.py by `python -m tools.metrics_doc`; do not edit by hand. -->",
        "",
        "Every family the exporter serves on `/metrics`. A scrape never calls NICo: the collector "
        "renders what the poller and the state store already hold. No task id ever labels an aggregate.",
        "",
        "## Families",
        "",
        *_family_table(),
        "",
        "`operation` is one of "
        + ", ".join(f"`{op}`" for op in OPERATIONS)
        + ": read from the task's description when a REST handler or Flow wrote it in a fixed "
        "format, otherwise from the report's stage layout when it is one of Flow's default rules "
        "(see `exporter/operations.py`).",
        "",
        "## Histogram buckets",
        "",
        "Histograms are fed by transitions, each delivered once, so a duration is observed once "
        "however often it is scraped.",
        "",
        *_bucket_table(),
        "",
        "## Exemplars and per-task series",
        "",
        "Each observation of `nico_task_duration_seconds`, `nico_task_stage_duration_seconds` and "
        "`nico_task_step_duration_seconds` carries an exemplar `trace_id`: the task UUID's 128 bits as "
        "32 hex digits, the trace id of the task's spans, so a slow bucket links to its trace. Exemplars "
        "are only in the OpenMetrics exposition (`Accept: application/openmetrics-text`); Prometheus keeps "
        "them with `--enable-feature=exemplar-storage`. Per-task series (those with a `task_id` label) "
        "exist for active tasks and for finished tasks until `state.finished_task_ttl` (default "
        f"{ttl}) has passed since the exporter saw them finish; then they disappear, while the "
        "aggregates keep counting. `nico_task_stage_status` is opt-in (`metrics.per_task_stages`).",
        "",
        *_cardinality(fleet),
        "",
        *_controls(fleet),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
    DOC_PATH.write_text(render_metrics_doc(), encoding="utf-8")
    print(f"wrote {DOC_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
