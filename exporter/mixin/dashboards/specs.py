"""The five dashboards: fleet, stages and steps, racks and trays, rollouts (Task Runs), exporter health."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from exporter.mixin.alerts import AlertConfig, load_alert_config
from exporter.mixin.dashboards.builder import query_variable
from exporter.mixin.dashboards.conditions import (
    STUCK_CRITICAL,
    STUCK_NO_PROGRESS,
    STUCK_WARNING,
    TRAY_KEY,
    failures_over,
    failures_per_interval,
    no_progress_after,
    number,
    stuck_levels,
    stuck_thresholds,
)
from exporter.mixin.dashboards.model import (
    HEATMAP_COMPONENTS,
    JSON,
    RUNNING,
    SR,
    TEMPO_EXPLORE,
    WITH_RACK_NAME,
    WITH_SITE_NAME,
    WITH_TRACE_ID,
    DashboardSpec,
    PanelSpec,
    Query,
    Row,
    S,
)

# --- the five dashboards ---------------------------------------------------------------------


def _quantiles(
    family: str, by: str, selector: str, qs: Sequence[float], exemplar: bool = True
) -> tuple[Query, ...]:
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by ({by}, le) (rate({family}_bucket{{{selector}}}[$__rate_interval])))",
            legend=f"p{round(q * 100)} " + " ".join("{{" + label.strip() + "}}" for label in by.split(",")),
            exemplar=exemplar,
        )
        for q in qs
    )


def _organize(exclude: Sequence[str], rename: Mapping[str, str], order: Sequence[str]) -> JSON:
    return {
        "id": "organize",
        "options": {
            "excludeByName": dict.fromkeys(exclude, True),
            "renameByName": dict(rename),
            "indexByName": {name: i for i, name in enumerate(order)},
        },
    }


def _by_name(name: str, *properties: tuple[str, Any]) -> JSON:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": key, "value": value} for key, value in properties],
    }


def _trace_link(column: str) -> JSON:
    """``column`` (a task id) opens the task's trace in Tempo."""
    link = {"title": "Open the trace in Tempo", "url": TEMPO_EXPLORE, "targetBlank": True}
    return _by_name(column, ("links", [link]))


_HIDDEN = ("Time", "__name__", "instance", "job", "site_id", "rack_id")
_STUCK_MAPPINGS = (
    {
        "type": "value",
        "options": {
            str(STUCK_CRITICAL): {"text": "critical", "color": "red", "index": 0},
            str(STUCK_WARNING): {"text": "warning", "color": "orange", "index": 1},
            str(STUCK_NO_PROGRESS): {"text": "no progress", "color": "orange", "index": 2},
        },
    },
)
# The learned-duration families are absent until the learner has enough finished stages.
_COLD_START = "Cold start: the learner has too few samples of the stages yet"
_UP_MAPPINGS = (
    {
        "type": "value",
        "options": {
            "0": {"text": "DOWN", "color": "red", "index": 0},
            "1": {"text": "UP", "color": "green", "index": 1},
        },
    },
)

_SITE_UP = PanelSpec(
    "stat",
    "Site up",
    "DOWN only when NICo failed to answer for the site (most of its racks got no answer, or its "
    "breaker is open: it stopped answering or NICo lists it offline): every other panel for that "
    "site is going stale. The exporter's own failures (budget, credentials) never make it DOWN.",
    (
        Query(
            f"max by (site_id) (nico_site_up{{{S}}}) {WITH_SITE_NAME}", legend="{{site_name}}", instant=True
        ),
    ),
    w=8,
    h=4,
    thresholds=(("red", None), ("green", 1)),
    mappings=_UP_MAPPINGS,
    runbooks=("NicoSiteDown",),
    main=True,
)
_DATA_AGE = PanelSpec(
    "stat",
    "Data age per site",
    "Seconds since the exporter last polled the site successfully (freshness). It should stay near "
    "the active poll interval; orange past 2 minutes, red past 5.",
    (
        Query(
            f"time() - max by (site_id) (nico_exporter_last_successful_poll_timestamp_seconds{{{S}}}) "
            f"{WITH_SITE_NAME}",
            legend="{{site_name}}",
            instant=True,
        ),
    ),
    w=8,
    h=4,
    unit="s",
    thresholds=(("green", None), ("orange", 120), ("red", 300)),
    runbooks=("NicoExporterDataStale",),
    main=True,
)
_EXPORTER_UP = PanelSpec(
    "stat",
    "Exporter up",
    "Prometheus's `up` for the exporter's scrape job(s): DOWN means no metric on these dashboards is current.",
    (Query('max by (instance) (up{job=~".*nico.*"})', legend="{{instance}}", instant=True),),
    w=8,
    h=4,
    thresholds=(("red", None), ("green", 1)),
    mappings=_UP_MAPPINGS,
    runbooks=("NicoExporterDown",),
)


def _fleet(config: AlertConfig) -> DashboardSpec:
    """Fleet overview; its stuck stat and table hold tasks stuck as NicoTaskStuck holds them, at
    ``config``'s thresholds, and its overrun colours turn red at NicoTaskOverrunning's ratio."""
    stuck, thresholds, no_progress = stuck_levels(config), stuck_thresholds(config), no_progress_after(config)
    overrun = number(config.overrun_ratio)
    return DashboardSpec(
        uid="nico-fleet",
        title="NICo tasks / Fleet overview",
        description="What is running, what failed, what is stuck, where and why, across the chosen sites.",
        runbooks=(
            "NicoTaskFailed",
            "NicoTaskStuck",
            "NicoTaskOverrunning",
            "NicoTaskWaitingTooLong",
            "NicoTaskFailureRateHigh",
            "NicoSiteDown",
            "NicoExporterDataStale",
        ),
        rows=(
            Row("Exporter health", (_SITE_UP, _DATA_AGE, _EXPORTER_UP)),
            Row(
                "Now",
                (
                    PanelSpec(
                        "stat",
                        "Active tasks",
                        "Tasks NICo reports as Pending (queued), Waiting (blocked by another task on the rack) or "
                        "Running, now, over the chosen sites.",
                        (Query(f"sum by (status) (nico_tasks{{{S}}})", legend="{{status}}", instant=True),),
                        w=8,
                        h=5,
                        thresholds=(("blue", None),),
                        main=True,
                    ),
                    PanelSpec(
                        "stat",
                        "Finished in the time range",
                        "Tasks that became Succeeded, Failed or Terminated within the dashboard's time range "
                        "(each counted once, also across exporter restarts).",
                        (
                            Query(
                                f"round(sum by (status) (increase(nico_tasks_finished_total{{{S}}}[$__range])))",
                                legend="{{status}}",
                                instant=True,
                            ),
                        ),
                        w=8,
                        h=5,
                        thresholds=(("green", None),),
                        overrides=(
                            {
                                "matcher": {"id": "byName", "options": "Failed"},
                                "properties": [
                                    {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}}
                                ],
                            },
                        ),
                        runbooks=("NicoTaskFailed",),
                        main=True,
                    ),
                    PanelSpec(
                        "stat",
                        "Stuck tasks",
                        "Running tasks NicoTaskStuck holds stuck: running longer than their operation's "
                        f"warning threshold ({thresholds}, the alert's own thresholds), or unchanged for "
                        f"{no_progress}. The alert fires once that has held for its `for`. The table below lists "
                        "them with their stage, rack and which condition holds.",
                        (Query(f"count({stuck}) or vector(0)", legend="stuck", instant=True),),
                        w=8,
                        h=5,
                        thresholds=(("green", None), ("red", 1)),
                        runbooks=("NicoTaskStuck",),
                        main=True,
                    ),
                ),
            ),
            Row(
                "Throughput and outcomes",
                (
                    PanelSpec(
                        "timeseries",
                        "Active tasks by status and operation",
                        "Pending, Waiting and Running tasks over time, stacked, by operation. A growing Pending or "
                        "Waiting band means work is queueing behind something.",
                        (
                            Query(
                                f"sum by (status, operation) (nico_tasks{{{S}}})",
                                legend="{{status}} {{operation}}",
                            ),
                        ),
                        w=24,
                        stacked=True,
                        runbooks=("NicoTaskWaitingTooLong",),
                        main=True,
                    ),
                    PanelSpec(
                        "timeseries",
                        "Completions by status",
                        "Tasks finishing per minute, by final status.",
                        (
                            Query(
                                f"sum by (status) (rate(nico_tasks_finished_total{{{S}}}[$__rate_interval])) * 60",
                                legend="{{status}}",
                            ),
                        ),
                        unit="opm",
                        main=True,
                    ),
                    PanelSpec(
                        "timeseries",
                        "Failure ratio by operation",
                        "Share of finished tasks that Failed, per operation, over a sliding window. Terminated "
                        "(cancelled) tasks count as finished, not failed.",
                        (
                            Query(
                                f'sum by (operation) (rate(nico_tasks_finished_total{{{S}, status="Failed"}}'
                                "[$__rate_interval])) / sum by (operation) "
                                f"(rate(nico_tasks_finished_total{{{S}}}[$__rate_interval]))",
                                legend="{{operation}}",
                            ),
                        ),
                        unit="percentunit",
                        min=0,
                        max=1,
                        runbooks=("NicoTaskFailureRateHigh",),
                        main=True,
                    ),
                ),
            ),
            Row(
                "Durations",
                (
                    PanelSpec(
                        "timeseries",
                        "Task duration percentiles by operation",
                        "p50 and p90 of task run time (started to finished) per operation. Exemplars (dots) "
                        "carry the task's trace id: click one to open the trace in Tempo.",
                        _quantiles("nico_task_duration_seconds", "operation", S, (0.5, 0.9)),
                        unit="s",
                        main=True,
                    ),
                    PanelSpec(
                        "timeseries",
                        "Queue wait percentiles by operation",
                        "p50 and p90 of the time tasks waited before running (created to started): NICo's queue "
                        "plus the per-rack lock.",
                        _quantiles(
                            "nico_task_queue_duration_seconds", "operation", S, (0.5, 0.9), exemplar=False
                        ),
                        unit="s",
                        runbooks=("NicoTaskWaitingTooLong",),
                        main=True,
                    ),
                ),
            ),
            Row(
                "Stuck and failed",
                (
                    PanelSpec(
                        "table",
                        "Stuck tasks (longest running first)",
                        "Running tasks by age (now minus started), with operation, rack and the stage they are "
                        "in. Stuck says which NicoTaskStuck condition holds: critical or warning (running past "
                        "the operation's threshold, warning/critical: "
                        f"{thresholds}) or no progress (unchanged for {no_progress}); empty when none "
                        "does. Overrun is "
                        f"the current stage's elapsed time over its learned p99 (orange past 1, red past {overrun}, where "
                        "NicoTaskOverrunning fires); Expected finish adds the remaining stages at their learned "
                        "p50. Both stay empty until the exporter has learned the task's stages.",
                        (
                            Query(
                                f"topk(50, (time() - nico_task_started_timestamp_seconds{{{SR}}}) "
                                f"* on (site_id, rack_id, task_id) group_left () {RUNNING}) "
                                "* on (site_id, rack_id, task_id) group_left (operation) "
                                f"group by (site_id, rack_id, task_id, operation) (nico_task_info{{{SR}}}) "
                                f"{WITH_RACK_NAME} {WITH_SITE_NAME}",
                                instant=True,
                                table=True,
                            ),
                            Query(
                                f"max by (site_id, rack_id, task_id) (nico_task_current_stage{{{SR}}})",
                                instant=True,
                                table=True,
                            ),
                            Query(
                                "max by (site_id, rack_id, task_id) "
                                f"(nico_task_expected_finish_timestamp_seconds{{{SR}}}) * 1000",
                                instant=True,
                                table=True,
                                may_be_empty=f"{_COLD_START}: no Running task has an expected finish.",
                            ),
                            Query(
                                f"max by (site_id, rack_id, task_id) (nico_task_overrun_ratio{{{SR}}})",
                                instant=True,
                                table=True,
                                may_be_empty=f"{_COLD_START}: no Running task has an overrun ratio.",
                            ),
                            Query(
                                f"max by (site_id, rack_id, task_id) ({stuck})",
                                instant=True,
                                table=True,
                                may_be_empty="No Running task is stuck: none is past its operation's threshold "
                                "or unchanged for long.",
                            ),
                        ),
                        w=24,
                        h=8,
                        unit="s",
                        sort_by="Age",
                        transformations=(
                            {"id": "merge", "options": {}},
                            {
                                "id": "filterByValue",
                                "options": {
                                    "type": "include",
                                    "match": "all",
                                    "filters": [
                                        {
                                            "fieldName": "Value #A",
                                            "config": {"id": "greater", "options": {"value": 0}},
                                        }
                                    ],
                                },
                            },
                            _organize(
                                _HIDDEN,
                                {
                                    "Value #A": "Age",
                                    "Value #B": "Stage",
                                    "Value #C": "Expected finish",
                                    "Value #D": "Overrun",
                                    "Value #E": "Stuck",
                                    "site_name": "Site",
                                    "rack_name": "Rack",
                                    "operation": "Operation",
                                    "task_id": "Task",
                                },
                                (
                                    "Value #A",
                                    "Value #E",
                                    "operation",
                                    "Value #B",
                                    "Value #D",
                                    "Value #C",
                                    "site_name",
                                    "rack_name",
                                    "task_id",
                                ),
                            ),
                        ),
                        overrides=(
                            _by_name(
                                "Stuck",
                                ("mappings", list(_STUCK_MAPPINGS)),
                                ("custom.cellOptions", {"type": "color-background"}),
                            ),
                            _by_name("Stage", ("unit", "none"), ("decimals", 0)),
                            _by_name("Expected finish", ("unit", "dateTimeAsIso")),
                            _by_name(
                                "Overrun",
                                ("unit", "none"),
                                ("decimals", 1),
                                (
                                    "thresholds",
                                    {
                                        "mode": "absolute",
                                        "steps": [
                                            {"color": "green", "value": None},
                                            {"color": "orange", "value": 1},
                                            {"color": "red", "value": overrun},
                                        ],
                                    },
                                ),
                                ("custom.cellOptions", {"type": "color-background"}),
                            ),
                        ),
                        runbooks=("NicoTaskStuck", "NicoTaskOverrunning"),
                        main=True,
                    ),
                    PanelSpec(
                        "table",
                        "Recent failures",
                        "Failed tasks the exporter still tracks (finished within state.finished_task_ttl, 1 h by "
                        "default), newest first: the stage and component type that failed and the cause of NICo's "
                        "error (cut to 200 characters). Click the task id to open its trace in Tempo.",
                        (
                            Query(
                                WITH_TRACE_ID.format(
                                    expr=f"max by (site_id, rack_id, task_id) "
                                    f"(nico_task_finished_timestamp_seconds{{{SR}}}) * 1000 "
                                    "* on (site_id, rack_id, task_id) group_left (operation, stage_number, "
                                    "component_type, reason, error) group by (site_id, rack_id, task_id, operation, "
                                    f"stage_number, component_type, reason, error) (nico_task_failure_info{{{SR}}}) "
                                    f"{WITH_RACK_NAME} {WITH_SITE_NAME}"
                                ),
                                instant=True,
                                table=True,
                            ),
                        ),
                        w=24,
                        h=9,
                        unit="dateTimeAsIso",
                        sort_by="Finished",
                        transformations=(
                            _organize(
                                (*_HIDDEN, "trace_id"),
                                {
                                    "Value": "Finished",
                                    "site_name": "Site",
                                    "rack_name": "Rack",
                                    "operation": "Operation",
                                    "stage_number": "Stage",
                                    "component_type": "Component type",
                                    "reason": "Reason",
                                    "error": "Error",
                                    "task_id": "Task",
                                },
                                (
                                    "Value",
                                    "operation",
                                    "stage_number",
                                    "component_type",
                                    "reason",
                                    "error",
                                    "site_name",
                                    "rack_name",
                                    "task_id",
                                ),
                            ),
                        ),
                        overrides=(
                            _trace_link("Task"),
                            _by_name("Error", ("custom.width", 520)),
                        ),
                        runbooks=("NicoTaskFailed",),
                        main=True,
                    ),
                ),
            ),
        ),
    )


_OPERATION_VARIABLE = query_variable(
    "operation",
    "Operation",
    f"label_values(nico_task_stage_duration_seconds_count{{{S}}}, operation)",
    "",
    "Operations that ran stages on the chosen sites.",
)
SO = f'{S}, operation=~"$operation"'
_LEARNED_EMPTY = f"{_COLD_START}: no stage has a learned duration."


def _learned(quantile: str, by: str) -> str:
    """The learned stage duration at ``quantile``, the slowest component type (and site) per ``by``."""
    return f'max by ({by}) (nico_stage_duration_expected_seconds{{{SO}, quantile="{quantile}"}})'


def _failed(family: str) -> str:
    return f'{family}{{{SO}, status="failed"}}'


def _step_heatmap(component: str) -> PanelSpec:
    return PanelSpec(
        "heatmap",
        f"{component} step durations",
        f"How long steps on {component} trays took, per time bucket: each cell counts steps that finished "
        "in that duration band. A band creeping upwards is a slowing firmware or BMC; exemplars link to traces.",
        (
            Query(
                f'sum by (le) (increase(nico_task_step_duration_seconds_bucket{{{SO}, component_type="{component}"}}'
                "[$__rate_interval]))",
                legend="{{le}}",
                heatmap=True,
                exemplar=True,
            ),
        ),
        w=8,
        h=9,
        unit="s",
        main=True,
    )


def _stages(config: AlertConfig) -> DashboardSpec:
    """Stages and steps; its learned-duration panel names NicoTaskOverrunning's ratio from ``config``."""
    return DashboardSpec(
        uid="nico-stages",
        title="NICo tasks / Stages and steps",
        description="Where inside a task time goes and where it fails: stages by operation, steps by component type.",
        runbooks=("NicoTaskFailed", "NicoTaskStuck", "NicoTaskOverrunning", "NicoTaskFailureRateHigh"),
        extra_variables=(_OPERATION_VARIABLE,),
        rows=(
            Row("Step durations by component type", tuple(_step_heatmap(c) for c in HEATMAP_COMPONENTS)),
            Row(
                "Stage durations",
                (
                    PanelSpec(
                        "timeseries",
                        "Stage duration p90 by operation and stage",
                        "90th percentile of each stage's run time, per operation and stage number, from the "
                        "task reports. Exemplars link to the task's trace.",
                        _quantiles("nico_task_stage_duration_seconds", "operation, stage_number", SO, (0.9,)),
                        unit="s",
                        main=True,
                    ),
                    PanelSpec(
                        "timeseries",
                        "Learned stage duration p50 and p99 by operation and stage",
                        "What the exporter learned each stage takes, per operation and stage number (the "
                        "slowest component type and site): compare with the observed p90 beside it. "
                        f"NicoTaskOverrunning fires when a running stage passes {number(config.overrun_ratio)}x "
                        "its p99. Empty until the "
                        "learner has enough finished stages (cold start).",
                        tuple(
                            Query(
                                _learned(quantile, "operation, stage_number"),
                                legend=f"{label} {{{{operation}}}} stage {{{{stage_number}}}}",
                                may_be_empty=_LEARNED_EMPTY,
                            )
                            for quantile, label in (("0.5", "p50"), ("0.99", "p99"))
                        ),
                        unit="s",
                        runbooks=("NicoTaskOverrunning",),
                    ),
                    PanelSpec(
                        "bargauge",
                        "Mean stage duration over the time range",
                        "Average run time of each stage number per operation over the dashboard's time range: "
                        "which stage dominates an operation.",
                        (
                            Query(
                                f"sum by (operation, stage_number) (increase(nico_task_stage_duration_seconds_sum{{{SO}}}"
                                "[$__range])) / sum by (operation, stage_number) "
                                f"(increase(nico_task_stage_duration_seconds_count{{{SO}}}[$__range]))",
                                legend="{{operation}} stage {{stage_number}}",
                                instant=True,
                            ),
                        ),
                        unit="s",
                        thresholds=(("blue", None),),
                        main=True,
                    ),
                    PanelSpec(
                        "timeseries",
                        "Step duration p90 by component type",
                        "90th percentile of step run time per component type (a step is one component type "
                        "within a stage).",
                        _quantiles("nico_task_step_duration_seconds", "component_type", SO, (0.9,)),
                        unit="s",
                    ),
                ),
            ),
            Row(
                "Learned durations",
                (
                    PanelSpec(
                        "table",
                        "Learned stage durations by component type",
                        "The exporter's learned duration of each stage per site, operation, stage number and "
                        "component type (p50, p90, p99). A task's expected finish adds its remaining stages "
                        "at their p50; its overrun ratio divides the current stage's elapsed time by the p99 "
                        "of the stage's slowest component type. Empty until the learner has enough finished "
                        "stages (cold start).",
                        tuple(
                            Query(
                                f"{_learned(quantile, 'site_id, operation, stage_number, component_type')} "
                                f"{WITH_SITE_NAME}",
                                instant=True,
                                table=True,
                                may_be_empty=_LEARNED_EMPTY,
                            )
                            for quantile in ("0.5", "0.9", "0.99")
                        ),
                        w=24,
                        h=8,
                        unit="s",
                        sort_by="p99",
                        transformations=(
                            {"id": "merge", "options": {}},
                            _organize(
                                _HIDDEN,
                                {
                                    "site_name": "Site",
                                    "operation": "Operation",
                                    "stage_number": "Stage",
                                    "component_type": "Component type",
                                    "Value #A": "p50",
                                    "Value #B": "p90",
                                    "Value #C": "p99",
                                },
                                (
                                    "site_name",
                                    "operation",
                                    "stage_number",
                                    "component_type",
                                    "Value #A",
                                    "Value #B",
                                    "Value #C",
                                ),
                            ),
                        ),
                        runbooks=("NicoTaskOverrunning",),
                    ),
                ),
            ),
            Row(
                "Failures",
                (
                    PanelSpec(
                        "bargauge",
                        "Failed steps by component type",
                        "Steps that failed within the time range, per component type: which kind of tray breaks. "
                        "A component type's first failed step counts too.",
                        (
                            Query(
                                "round(sum by (component_type) "
                                f"{failures_over(_failed('nico_task_step_duration_seconds_count'))})",
                                legend="{{component_type}}",
                                instant=True,
                            ),
                        ),
                        w=8,
                        thresholds=(("orange", None), ("red", 5)),
                        runbooks=("NicoTaskFailed",),
                        main=True,
                    ),
                    PanelSpec(
                        "bargauge",
                        "Failed stages by operation and stage number",
                        "Stages that failed within the time range, per operation and stage number: where in a "
                        "rule tasks break. A stage's first failure counts too.",
                        (
                            Query(
                                "round(sum by (operation, stage_number) "
                                f"{failures_over(_failed('nico_task_stage_duration_seconds_count'))})",
                                legend="{{operation}} stage {{stage_number}}",
                                instant=True,
                            ),
                        ),
                        w=8,
                        thresholds=(("orange", None), ("red", 5)),
                        main=True,
                    ),
                    PanelSpec(
                        "table",
                        "Recent failures by component type and stage",
                        "Failed tasks still tracked (within the finished-task TTL), counted by operation, stage "
                        "number, component type and reason.",
                        (
                            Query(
                                "count by (operation, stage_number, component_type, reason) "
                                f'(nico_task_failure_info{{{SR}, operation=~"$operation"}})',
                                instant=True,
                                table=True,
                            ),
                        ),
                        w=8,
                        sort_by="Failed tasks",
                        thresholds=(("orange", None), ("red", 3)),
                        transformations=(
                            _organize(
                                ("Time",),
                                {
                                    "Value": "Failed tasks",
                                    "operation": "Operation",
                                    "stage_number": "Stage",
                                    "component_type": "Component type",
                                    "reason": "Reason",
                                },
                                ("operation", "stage_number", "component_type", "reason", "Value"),
                            ),
                        ),
                        runbooks=("NicoTaskFailed",),
                    ),
                ),
            ),
        ),
    )


_TRAY_FAILURES = f"nico_tray_task_failures_total{{{SR}}}"
_TRAY_FAILURES_24H = failures_over(_TRAY_FAILURES, "24h", key=TRAY_KEY)
_TRAY_FAILURES_PER_INTERVAL = failures_per_interval(_TRAY_FAILURES, key=TRAY_KEY)

_ACTIVE_PER_RACK = (
    f'sum by (rack_name, status) ((nico_task_status{{{SR}, status=~"Pending|Waiting|Running"}} == 1) '
    f"{WITH_RACK_NAME})"
)

RACKS = DashboardSpec(
    uid="nico-racks",
    title="NICo tasks / Racks and trays",
    description="Which racks are busy or failing, and which trays keep failing.",
    runbooks=("NicoTrayRepeatedFailures", "NicoTaskStuck", "NicoTaskFailed"),
    rows=(
        Row(
            "Racks now",
            (
                PanelSpec(
                    "bargauge",
                    "Active tasks per rack",
                    "Pending, Waiting and Running tasks on each rack now. NICo runs one task per rack at a "
                    "time, so more than one Running is unusual and a long Waiting list means a blocked rack.",
                    (Query(_ACTIVE_PER_RACK, legend="{{rack_name}} {{status}}", instant=True),),
                    thresholds=(("blue", None),),
                    main=True,
                ),
                PanelSpec(
                    "table",
                    "Trays with repeated failures (24 h)",
                    "The 20 trays charged with the most failed tasks in the last 24 hours "
                    "(nico_tray_task_failures_total: the trays of the component type whose step failed, or the "
                    "one tray the error names), a tray's first failure included. Two or more is red; "
                    "NicoTrayRepeatedFailures pages at its own threshold.",
                    (
                        Query(
                            f"topk(20, round(sum by ({TRAY_KEY}) {_TRAY_FAILURES_24H}) > 0) {WITH_RACK_NAME}",
                            instant=True,
                            table=True,
                        ),
                    ),
                    sort_by="Failures (24 h)",
                    thresholds=(("orange", None), ("red", 2)),
                    transformations=(
                        _organize(
                            _HIDDEN,
                            {
                                "Value": "Failures (24 h)",
                                "rack_name": "Rack",
                                "tray_type": "Tray type",
                                "tray_id": "Tray",
                            },
                            ("rack_name", "tray_type", "tray_id", "Value"),
                        ),
                    ),
                    overrides=(
                        _by_name(
                            "Failures (24 h)",
                            ("custom.cellOptions", {"type": "color-background"}),
                            ("decimals", 0),
                        ),
                    ),
                    runbooks=("NicoTrayRepeatedFailures",),
                    main=True,
                ),
            ),
        ),
        Row(
            "Per-rack history",
            (
                PanelSpec(
                    "timeseries",
                    "Active tasks per rack over time",
                    "Pending, Waiting and Running tasks per rack over time, stacked.",
                    (
                        Query(
                            f'sum by (rack_name) ((nico_task_status{{{SR}, status=~"Pending|Waiting|Running"}} == 1) '
                            f"{WITH_RACK_NAME})",
                            legend="{{rack_name}}",
                        ),
                    ),
                    stacked=True,
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Tray failures per rack",
                    "Tray failures per rack over time, per graph interval, counted per charged tray (the "
                    "trays of the component type whose step failed, or the one tray the error names), a "
                    "tray's first failure included: a spike is a bad task, a steady stream a bad rack.",
                    (
                        Query(
                            f"sum by (rack_name) ({_TRAY_FAILURES_PER_INTERVAL} {WITH_RACK_NAME})",
                            legend="{{rack_name}}",
                        ),
                    ),
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Failed tasks per rack (within the TTL)",
                    "Failed tasks the exporter still tracks per rack (finished within state.finished_task_ttl).",
                    (
                        Query(
                            f"count by (rack_name) (nico_task_failure_info{{{SR}}} {WITH_RACK_NAME})",
                            legend="{{rack_name}}",
                        ),
                    ),
                    runbooks=("NicoTaskFailed",),
                ),
                PanelSpec(
                    "bargauge",
                    "Active tasks per tray type and rack",
                    "Tasks now active on each rack's trays, by tray type (known once the exporter has "
                    "attributed the task to its trays).",
                    (
                        Query(
                            f"sum by (rack_name, tray_type) (nico_tray_tasks{{{SR}}} {WITH_RACK_NAME})",
                            legend="{{rack_name}} {{tray_type}}",
                            instant=True,
                        ),
                    ),
                    thresholds=(("blue", None),),
                ),
            ),
        ),
    ),
)

# --- rollouts: NICo Task Runs ---------------------------------------------------------------

RUN = "site_id, run_id"
# A run's name (NICo's `name`) for legends and tables; ``group by`` as for the site and rack names.
WITH_RUN_NAME = f"* on ({RUN}) group_left (name) group by ({RUN}, name) (nico_task_run_info{{{S}}})"
RUN_DONE = "Completed|Failed|Terminated|Skipped"


def _run_targets(statuses: str = "") -> str:
    """A run's targets (of the phases begun so far), in ``statuses`` or all, deduplicated across replicas.

    A run none of whose targets is in ``statuses`` yet shows 0 (its other targets times 0), not
    nothing: a rollout at 0 % must stay on the progress panels.
    """
    every = f"sum by ({RUN}) (max by ({RUN}, status) (nico_task_run_targets{{{S}}}))"
    if not statuses:
        return every
    some = f'sum by ({RUN}) (max by ({RUN}, status) (nico_task_run_targets{{{S}, status=~"{statuses}"}}))'
    return f"({some} or {every} * 0)"


_RUNS_BY_STATUS = f"count by (status) (max by ({RUN}, status) (nico_task_run_status{{{S}}}) == 1)"
_FAILED_SHARE = (
    f'max by ({RUN}) (nico_task_run_outcomes{{{S}, outcome="failed"}}) / on ({RUN}) '
    f"sum by ({RUN}) (max by ({RUN}, outcome) "
    f'(nico_task_run_outcomes{{{S}, outcome=~"completed|failed|terminated"}}))'
)
_RUN_STATUS_COLORS = (
    {
        "type": "value",
        "options": {
            "Failed": {"color": "red", "index": 0},
            "CompletedWithFailures": {"color": "orange", "index": 1},
            "Paused": {"color": "orange", "index": 2},
            "Running": {"color": "blue", "index": 3},
            "Completed": {"color": "green", "index": 4},
        },
    },
)


def _fixed(name: str, color: str) -> JSON:
    return _by_name(name, ("color", {"mode": "fixed", "fixedColor": color}))


ROLLOUTS = DashboardSpec(
    uid="nico-rollouts",
    title="NICo tasks / Rollouts",
    description="NICo Task Runs (rollouts of one operation over many racks, in phases): what runs, how far "
    "each got, where gates stopped them, which racks failed.",
    runbooks=(
        "NicoTaskRunPaused",
        "NicoTaskRunFailed",
        "NicoTaskRunStalled",
        "NicoTaskRunFailureRateHigh",
        "NicoTaskFailed",
    ),
    rows=(
        Row(
            "Runs now",
            (
                PanelSpec(
                    "stat",
                    "Task Runs available",
                    "ON when the site's NICo serves Task Runs. OFF: it answered the Task Run routes 404 "
                    "(NICo v2.0), the exporter does not poll runs there, and this dashboard is empty for it.",
                    (
                        Query(
                            f"max by (site_id) (nico_exporter_task_runs_supported{{{S}}}) {WITH_SITE_NAME}",
                            legend="{{site_name}}",
                            instant=True,
                        ),
                    ),
                    w=6,
                    h=5,
                    thresholds=(("orange", None), ("green", 1)),
                    mappings=(
                        {
                            "type": "value",
                            "options": {
                                "0": {"text": "OFF", "color": "orange", "index": 0},
                                "1": {"text": "ON", "color": "green", "index": 1},
                            },
                        },
                    ),
                    main=True,
                ),
                PanelSpec(
                    "stat",
                    "Runs by status",
                    "Task Runs the exporter tracks (active, and finished ones it still holds), by their "
                    "current status. Paused runs wait for a human (NicoTaskRunPaused); Failed and "
                    "CompletedWithFailures left racks behind (NicoTaskRunFailed).",
                    (Query(_RUNS_BY_STATUS, legend="{{status}}", instant=True),),
                    w=18,
                    h=5,
                    thresholds=(("blue", None),),
                    overrides=(
                        _fixed("Failed", "red"),
                        _fixed("CompletedWithFailures", "orange"),
                        _fixed("Paused", "orange"),
                        _fixed("Completed", "green"),
                    ),
                    runbooks=("NicoTaskRunPaused", "NicoTaskRunFailed"),
                    main=True,
                ),
            ),
        ),
        Row(
            "Runs",
            (
                PanelSpec(
                    "table",
                    "Runs",
                    "Every tracked run, newest start first: its status and why (NICo's reason and status "
                    "message), phase N of M, targets done (Completed, Failed, Terminated or Skipped) of the "
                    "targets of the phases begun so far, started, and age (since created).",
                    (
                        Query(
                            f"group by ({RUN}, status) (nico_task_run_status{{{S}}} == 1) "
                            f"* on ({RUN}) group_left (name, operation_type) "
                            f"group by ({RUN}, name, operation_type) (nico_task_run_info{{{S}}}) {WITH_SITE_NAME}",
                            instant=True,
                            table=True,
                        ),
                        Query(
                            f"group by ({RUN}, reason, message) (nico_task_run_status_reason_info{{{S}}})",
                            instant=True,
                            table=True,
                        ),
                        Query(f"max by ({RUN}) (nico_task_run_phase{{{S}}})", instant=True, table=True),
                        Query(f"max by ({RUN}) (nico_task_run_phases{{{S}}})", instant=True, table=True),
                        Query(_run_targets(RUN_DONE), instant=True, table=True),
                        Query(_run_targets(), instant=True, table=True),
                        Query(f"{_run_targets(RUN_DONE)} / {_run_targets()}", instant=True, table=True),
                        Query(
                            f"max by ({RUN}) (nico_task_run_started_timestamp_seconds{{{S}}}) * 1000",
                            instant=True,
                            table=True,
                        ),
                        Query(
                            f"time() - max by ({RUN}) (nico_task_run_created_timestamp_seconds{{{S}}})",
                            instant=True,
                            table=True,
                        ),
                    ),
                    w=24,
                    h=9,
                    unit="none",
                    sort_by="Started",
                    transformations=(
                        {"id": "merge", "options": {}},
                        _organize(
                            (*_HIDDEN, "Value #A", "Value #B"),
                            {
                                "name": "Run",
                                "operation_type": "Operation",
                                "site_name": "Site",
                                "status": "Status",
                                "reason": "Reason",
                                "message": "Message",
                                "Value #C": "Phase",
                                "Value #D": "Phases",
                                "Value #E": "Targets done",
                                "Value #F": "Targets",
                                "Value #G": "Progress",
                                "Value #H": "Started",
                                "Value #I": "Age",
                                "run_id": "Run id",
                            },
                            (
                                "name",
                                "operation_type",
                                "site_name",
                                "status",
                                "reason",
                                "message",
                                "Value #C",
                                "Value #D",
                                "Value #E",
                                "Value #F",
                                "Value #G",
                                "Value #H",
                                "Value #I",
                                "run_id",
                            ),
                        ),
                    ),
                    overrides=(
                        _by_name(
                            "Status",
                            ("custom.cellOptions", {"type": "color-text"}),
                            ("mappings", list(_RUN_STATUS_COLORS)),
                        ),
                        _by_name("Phase", ("decimals", 0)),
                        _by_name("Phases", ("decimals", 0)),
                        _by_name("Targets done", ("decimals", 0)),
                        _by_name("Targets", ("decimals", 0)),
                        _by_name(
                            "Progress",
                            ("unit", "percentunit"),
                            ("min", 0),
                            ("max", 1),
                            ("custom.cellOptions", {"type": "gauge", "mode": "basic"}),
                        ),
                        _by_name("Started", ("unit", "dateTimeAsIso")),
                        _by_name("Age", ("unit", "s")),
                        _by_name("Message", ("custom.width", 360)),
                    ),
                    runbooks=("NicoTaskRunPaused", "NicoTaskRunStalled"),
                    main=True,
                ),
            ),
        ),
        Row(
            "Progress",
            (
                PanelSpec(
                    "timeseries",
                    "Run progress",
                    "Share of each run's targets that are done (Completed, Failed, Terminated or Skipped), "
                    "of the phases begun so far: it drops when a new phase adds targets. A flat line on a "
                    "Running run is a stall (NicoTaskRunStalled).",
                    (
                        Query(
                            f"({_run_targets(RUN_DONE)} / {_run_targets()}) {WITH_RUN_NAME}",
                            legend="{{name}}",
                        ),
                    ),
                    unit="percentunit",
                    min=0,
                    max=1,
                    runbooks=("NicoTaskRunStalled",),
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Current phase per run",
                    "The phase each run is in (1-based) over time. NICo exports no per-phase duration: each "
                    "step up is a phase change, and the width of a step is how long that phase took.",
                    (
                        Query(
                            f"max by ({RUN}) (nico_task_run_phase{{{S}}}) {WITH_RUN_NAME}", legend="{{name}}"
                        ),
                    ),
                    min=0,
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Targets by status",
                    "Targets of every tracked run by status, stacked: Pending and Blocked wait, Submitted "
                    "and Claimed run as child tasks, the rest are done.",
                    (
                        Query(
                            f"sum by (status) (max by ({RUN}, status) (nico_task_run_targets{{{S}}}))",
                            legend="{{status}}",
                        ),
                    ),
                    stacked=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Runs by status over time",
                    "Tracked runs per status over time, stacked.",
                    (Query(_RUNS_BY_STATUS, legend="{{status}}"),),
                    stacked=True,
                ),
            ),
        ),
        Row(
            "Gates and failures",
            (
                PanelSpec(
                    "timeseries",
                    "Runs held at a gate",
                    "Runs whose reason is SafetyGate (the run stopped itself on failed targets: "
                    "NicoTaskRunPaused pages) or PhaseGate (a finished phase waits for approval), over time.",
                    (
                        Query(
                            f"count by (reason) (group by ({RUN}, reason) "
                            f'(nico_task_run_status_reason_info{{{S}, reason=~"SafetyGate|PhaseGate"}}))',
                            legend="{{reason}}",
                            may_be_empty="No run is held at a gate: no run's reason is SafetyGate or PhaseGate.",
                        ),
                    ),
                    overrides=(_fixed("SafetyGate", "red"), _fixed("PhaseGate", "blue")),
                    runbooks=("NicoTaskRunPaused",),
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Failed share of finished targets per run",
                    "failed / (completed + failed + terminated) of each run's outcomes so far (skipped "
                    "targets are not counted). NicoTaskRunFailureRateHigh warns above 20 % while a run is "
                    "Running, before its safety gate trips.",
                    (Query(f"({_FAILED_SHARE}) {WITH_RUN_NAME}", legend="{{name}}"),),
                    unit="percentunit",
                    min=0,
                    max=1,
                    runbooks=("NicoTaskRunFailureRateHigh",),
                    main=True,
                ),
                PanelSpec(
                    "table",
                    "Failed targets",
                    "Each failed target of a tracked run: the rack, the phase, the child task and, while the "
                    "exporter still tracks that task (state.finished_task_ttl), its error. Click the task id "
                    "to open its trace in Tempo. The rack filter applies here.",
                    (
                        Query(
                            WITH_TRACE_ID.format(
                                expr=f"group by ({RUN}, rack_id, task_id, phase) "
                                f"(nico_task_run_failed_target_info{{{SR}}}) "
                                f"{WITH_RUN_NAME} {WITH_RACK_NAME} {WITH_SITE_NAME}"
                            ),
                            instant=True,
                            table=True,
                            may_be_empty="No tracked run has a failed target.",
                        ),
                        Query(
                            "group by (site_id, rack_id, task_id, reason, error) "
                            f"(nico_task_failure_info{{{SR}}}) * on (site_id, rack_id, task_id) group_left "
                            f"(run_id) group by ({RUN}, rack_id, task_id) (nico_task_run_failed_target_info{{{SR}}})",
                            instant=True,
                            table=True,
                            may_be_empty="No failed target, or its task finished longer ago than "
                            "state.finished_task_ttl: no failure info to join.",
                        ),
                    ),
                    w=24,
                    h=9,
                    unit="none",
                    transformations=(
                        {"id": "merge", "options": {}},
                        _organize(
                            (*_HIDDEN, "Value #A", "Value #B", "trace_id", "run_id"),
                            {
                                "name": "Run",
                                "site_name": "Site",
                                "rack_name": "Rack",
                                "phase": "Phase",
                                "task_id": "Task",
                                "reason": "Reason",
                                "error": "Error",
                            },
                            ("name", "phase", "site_name", "rack_name", "reason", "error", "task_id"),
                        ),
                    ),
                    overrides=(
                        _trace_link("Task"),
                        _by_name("Error", ("custom.width", 520)),
                    ),
                    runbooks=("NicoTaskRunFailed", "NicoTaskFailed"),
                    main=True,
                ),
            ),
        ),
        Row(
            "Durations",
            (
                PanelSpec(
                    "bargauge",
                    "Run duration",
                    "Started to finished of each tracked run that has ended (finished minus started).",
                    (
                        Query(
                            f"(max by ({RUN}) (nico_task_run_finished_timestamp_seconds{{{S}}}) - on ({RUN}) "
                            f"max by ({RUN}) (nico_task_run_started_timestamp_seconds{{{S}}})) {WITH_RUN_NAME}",
                            legend="{{name}}",
                            instant=True,
                            may_be_empty="No tracked run has ended: a run has a finished timestamp only then.",
                        ),
                    ),
                    w=8,
                    unit="s",
                    thresholds=(("blue", None),),
                    main=True,
                ),
                PanelSpec(
                    "bargauge",
                    "Running for",
                    "Seconds since each Running run started. A long bar whose progress is flat is a stall.",
                    (
                        Query(
                            f"(time() - max by ({RUN}) (nico_task_run_started_timestamp_seconds{{{S}}})) "
                            f"* on ({RUN}) group_left () "
                            f'(max by ({RUN}) (nico_task_run_status{{{S}, status="Running"}}) == 1) {WITH_RUN_NAME}',
                            legend="{{name}}",
                            instant=True,
                            may_be_empty="No run is Running now.",
                        ),
                    ),
                    w=8,
                    unit="s",
                    thresholds=(("blue", None),),
                    runbooks=("NicoTaskRunStalled",),
                ),
                PanelSpec(
                    "stat",
                    "Runs finished in the time range",
                    "Task Runs that ended within the dashboard's time range, by final status (each counted "
                    "once, also across exporter restarts).",
                    (
                        Query(
                            f"round(sum by (status) (increase(nico_task_runs_finished_total{{{S}}}[$__range])))",
                            legend="{{status}}",
                            instant=True,
                            may_be_empty="No run has ended yet: a status has a series only once a run ended with it.",
                        ),
                    ),
                    w=8,
                    thresholds=(("green", None),),
                    overrides=(_fixed("Failed", "red"), _fixed("CompletedWithFailures", "orange")),
                    runbooks=("NicoTaskRunFailed",),
                ),
            ),
        ),
    ),
)

_API = "nico_exporter_api_requests_total"

EXPORTER = DashboardSpec(
    uid="nico-exporter",
    title="NICo tasks / Exporter health",
    description="Is the exporter keeping up: NICo API calls, latency, throttling, freshness, budget, "
    "payload problems and span export.",
    runbooks=(
        "NicoExporterDown",
        "NicoExporterNotReady",
        "NicoExporterCredentialsRefused",
        "NicoExporterBudgetShort",
        "NicoExporterDataStale",
        "NicoAPIThrottled",
        "NicoSiteDown",
    ),
    rows=(
        Row("Freshness", (_SITE_UP, _DATA_AGE, _EXPORTER_UP)),
        Row(
            "Who failed: NICo or the exporter",
            (
                PanelSpec(
                    "timeseries",
                    "Failed calls: NICo's and the exporter's own",
                    "Calls that failed after their retries, per graph interval (a cause's first failure "
                    "included). NICo's (the site or the REST server did not "
                    "answer as it should): timeout, connection, server_error, unavailable (not sent: the "
                    "site's breaker is open). The exporter's own, never a NICo outage: queue, budget, "
                    "deadline (its own limits), credentials, forbidden, rejected, throttled. Empty is good.",
                    (
                        Query(
                            "sum by (cause) "
                            + failures_per_interval(f"nico_exporter_site_failures_total{{{S}}}"),
                            legend="NICo: {{cause}}",
                            may_be_empty="NICo answered every call: no failure series exists.",
                        ),
                        Query(
                            "sum by (cause) "
                            + failures_per_interval(f"nico_exporter_self_failures_total{{{S}}}"),
                            legend="exporter: {{cause}}",
                            may_be_empty="The exporter's own limits and credentials held: no series exists.",
                        ),
                    ),
                    runbooks=("NicoExporterCredentialsRefused", "NicoExporterBudgetShort"),
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Sites cut off: breaker open, NICo lists offline",
                    "A site whose breaker is open gets one probe per interval instead of its polls (it "
                    "stopped answering); NICo's own site list marks a site offline after 15 minutes "
                    "without inventory from its agent. Empty is good.",
                    (
                        Query(
                            f"(max by (site_id) (nico_exporter_site_breaker_open{{{S}}}) == 1) {WITH_SITE_NAME}",
                            legend="breaker open {{site_name}}",
                            may_be_empty="Every site answers: no breaker is open.",
                        ),
                        Query(
                            f"(max by (site_id) (nico_site_online{{{S}}}) == 0) {WITH_SITE_NAME}",
                            legend="offline in NICo {{site_name}}",
                            may_be_empty="NICo lists every site online.",
                        ),
                    ),
                    runbooks=("NicoSiteDown",),
                ),
                PanelSpec(
                    "timeseries",
                    "Clock offset per site",
                    "How far each site's clock (its tasks' times) is ahead of NICo's REST server, as the "
                    "exporter corrects it when counting. 0 for a site whose clock agrees within a second.",
                    (
                        Query(
                            f"max by (site_id) (nico_site_clock_offset_seconds{{{S}}}) {WITH_SITE_NAME}",
                            legend="{{site_name}}",
                        ),
                    ),
                    unit="s",
                ),
                PanelSpec(
                    "timeseries",
                    "Racks without a baseline, polls waiting, credentials",
                    "Racks not yet counting (their first poll sets it; baselines go first when the budget is "
                    "short), rack polls due but waiting for the budget, and 1 while credentials are refused.",
                    (
                        Query(
                            f"sum(nico_exporter_racks_not_baselined{{{S}}})",
                            legend="racks without a baseline",
                        ),
                        Query("sum(nico_exporter_rack_polls_waiting)", legend="rack polls waiting"),
                        Query("max(nico_exporter_credentials_refused)", legend="credentials refused"),
                    ),
                ),
            ),
        ),
        Row(
            "NICo API",
            (
                PanelSpec(
                    "timeseries",
                    "API calls by endpoint and code",
                    "NICo API calls per second by endpoint template and HTTP code.",
                    (
                        Query(
                            f"sum by (endpoint, code) (rate({_API}[$__rate_interval]))",
                            legend="{{endpoint}} {{code}}",
                        ),
                    ),
                    unit="reqps",
                    stacked=True,
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "API latency by endpoint",
                    "p50 and p99 of NICo API call duration per endpoint template.",
                    _quantiles(
                        "nico_exporter_api_request_duration_seconds", "endpoint", "", (0.5, 0.99), False
                    ),
                    unit="s",
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Throttled calls (HTTP 429)",
                    "Calls NICo refused with 429 Too Many Requests, per graph interval (an endpoint's first "
                    "429 included): lower api.max_requests_per_second or lengthen the poll intervals. Empty "
                    "is good.",
                    (
                        Query(
                            "sum by (endpoint) " + failures_per_interval(f'{_API}{{code="429"}}'),
                            legend="{{endpoint}}",
                            may_be_empty="NICo throttles nothing: no 429 series exists until a call is refused.",
                        ),
                    ),
                    runbooks=("NicoAPIThrottled",),
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Failed calls by endpoint and code",
                    "Calls that did not answer 2xx, per graph interval, by endpoint and code (`timeout` and "
                    "`connection` when no response came; the first of each included); 5xx and those mean "
                    "NICo or the network is in trouble. Empty is good.",
                    (
                        Query(
                            "sum by (endpoint, code) " + failures_per_interval(f'{_API}{{code!~"2.."}}'),
                            legend="{{endpoint}} {{code}}",
                            may_be_empty="NICo answered every call with 2xx: no other code has a series.",
                        ),
                    ),
                ),
            ),
        ),
        Row(
            "Budget and freshness",
            (
                PanelSpec(
                    "timeseries",
                    "Data age per site over time",
                    "Seconds since each site's last successful poll. A sawtooth at the poll interval is "
                    "healthy; a ramp is a site the exporter cannot reach.",
                    (
                        Query(
                            f"time() - max by (site_id) (nico_exporter_last_successful_poll_timestamp_seconds{{{S}}}) "
                            f"{WITH_SITE_NAME}",
                            legend="{{site_name}}",
                        ),
                    ),
                    unit="s",
                    runbooks=("NicoExporterDataStale",),
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Request budget: required vs available",
                    "Requests per second the configured poll intervals need for the current fleet, against "
                    "the budget (api.max_requests_per_second). Required above budget means polls slip.",
                    (
                        Query(
                            "sum by (instance) (nico_exporter_budget_required_requests_per_second)",
                            legend="required {{instance}}",
                        ),
                        Query(
                            "sum by (instance) (nico_exporter_budget_requests_per_second)",
                            legend="budget {{instance}}",
                        ),
                    ),
                    unit="reqps",
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Freshness shortfall and poll cycle",
                    "Shortfall: seconds by which the budget cannot hold the configured active interval (0 is "
                    "good). Poll cycle: how long the last active poll of every rack took.",
                    (
                        Query(
                            "max by (instance) (nico_exporter_freshness_shortfall_seconds)",
                            legend="shortfall {{instance}}",
                        ),
                        Query(
                            "max by (instance) (nico_exporter_active_poll_cycle_seconds)",
                            legend="poll cycle {{instance}}",
                        ),
                    ),
                    unit="s",
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Jobs shed",
                    "Scheduled job runs skipped because the request budget was saturated, per job and graph "
                    "interval (a job's first shed run included).",
                    (
                        Query(
                            "sum by (poll_job) " + failures_per_interval("nico_exporter_jobs_shed_total"),
                            legend="{{poll_job}}",
                            may_be_empty="The budget never saturates: no job is shed, so no series exists.",
                        ),
                    ),
                ),
            ),
        ),
        Row(
            "Payloads, spans and state",
            (
                PanelSpec(
                    "timeseries",
                    "Parse errors by endpoint and reason",
                    "Payload problems the exporter survived (an item skipped, a value tolerated), per graph "
                    "interval (the first of each included). Any is worth a look: NICo's API may have changed.",
                    (
                        Query(
                            "sum by (endpoint, reason) "
                            + failures_per_interval("nico_exporter_parse_errors_total"),
                            legend="{{endpoint}} {{reason}}",
                            may_be_empty="Clean payloads: a series appears only once a payload problem is seen.",
                        ),
                    ),
                    w=8,
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Spans exported and failed",
                    "Spans sent over OTLP per second and those that failed to export. Both stay 0 when "
                    "tracing is off (no OTEL_EXPORTER_OTLP_ENDPOINT).",
                    (
                        Query(
                            "sum(rate(nico_exporter_spans_exported_total[$__rate_interval]))",
                            legend="exported",
                        ),
                        Query(
                            "sum(rate(nico_exporter_span_export_errors_total[$__rate_interval]))",
                            legend="failed",
                        ),
                    ),
                    w=8,
                    unit="ops",
                    main=True,
                ),
                PanelSpec(
                    "timeseries",
                    "Tracked tasks and final-fetch queue",
                    "Tasks held in memory (active, plus finished within the TTL) and tasks waiting for their "
                    "final fetch. The queue should drain to 0 between polls.",
                    (
                        Query("sum(nico_exporter_tracked_tasks)", legend="tracked"),
                        Query("sum(nico_exporter_final_fetch_queue)", legend="final-fetch queue"),
                    ),
                    w=8,
                ),
            ),
        ),
    ),
)


def dashboards(config: AlertConfig) -> tuple[DashboardSpec, ...]:
    """The five dashboards, with the alerts' variables ``config`` where their panels show an
    alert's threshold (NicoTaskStuck's, NicoTaskOverrunning's)."""
    return (_fleet(config), _stages(config), RACKS, ROLLOUTS, EXPORTER)


DASHBOARDS: tuple[DashboardSpec, ...] = dashboards(load_alert_config())
"""The dashboards with the shipped variables: what ``dashboards/*.json`` holds."""
