"""Alert and recording rules, rendered from one file of thresholds and selectors.

The variables are ``config.yml`` beside this module (every variable, documented there), or a
user's file over them (:func:`load_alert_config`). :func:`render_rules` and
:func:`render_prometheus_rule` give the same groups as a Prometheus rule file and as a Kubernetes
``PrometheusRule``; ``nico-task-exporter mixin`` writes both (and the dashboards), and the
repository's ``make generate`` commits them with the shipped variables (``tests/test_alerts.py``
fails when the committed files differ from what this renders).

Rule shapes:

- Per-task alerts join ``nico:task:info`` (the task's operation, the site's and rack's names,
  and ``trace_id``: the task UUID without dashes, the id of the task's trace), so every page names
  where and what without a lookup.
- ``NicoTaskStuck`` follows kube-state-metrics' ``KubeJobNotCompleted``: seconds since the task
  started, over a per-operation threshold, at warning and at critical under one alert name; plus
  a Running task whose ``updated`` has not moved for long (``condition="no_progress"``).
- ``NicoTaskOverrunning`` compares a Running task's current stage with what the exporter learned
  that stage takes (``nico_task_overrun_ratio``: elapsed over the learned p99 of the stage's
  slowest component type): it fires well before ``NicoTaskStuck``'s fixed thresholds, which stay
  as the floor for stages the learner knows nothing about yet (no ratio series, no alert).
- ``NicoTaskFailed`` is an event: ``nico_task_failure_info`` exists for a failed task until the
  exporter's TTL (1 h) has passed, so the alert fires at once (``for: 0m``) and stays up long
  enough to page, carrying the failure context as labels.
- Per-run alerts (Task Runs, NICo's rollouts) join ``nico:task_run:info`` (the run's name, its
  operation and the site's name). The severity that depends on a label (a run paused by its safety
  gate pages, any other pause is a ticket; Failed pages, CompletedWithFailures is a ticket) is two
  rules under one alert name, as ``NicoTaskStuck`` does for its thresholds.
- ``NicoSiteDown`` is NICo failing to answer for a site (``nico_site_up``), never the exporter's
  own failures; those are the exporter's alerts (``NicoExporterCredentialsRefused``,
  ``NicoExporterNotReady``, ``NicoExporterBudgetShort``), one per exporter instance (``job``,
  ``instance``), whose descriptions query the exporter's own series for the why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from exporter import yamlfile
from exporter.durations import parse_duration
from exporter.operations import OPERATIONS

# The shipped variables: package data of the wheel, and the only copy in the repository.
CONFIG_PATH = Path(__file__).with_name("config.yml")

ALERTS = (
    "NicoTaskFailed",
    "NicoTaskStuck",
    "NicoTaskOverrunning",
    "NicoTaskWaitingTooLong",
    "NicoTaskFailureRateHigh",
    "NicoTrayRepeatedFailures",
    "NicoTaskRunPaused",
    "NicoTaskRunFailed",
    "NicoTaskRunStalled",
    "NicoTaskRunFailureRateHigh",
    "NicoSiteDown",
    "NicoExporterDataStale",
    "NicoExporterDown",
    "NicoExporterNotReady",
    "NicoExporterCredentialsRefused",
    "NicoExporterBudgetShort",
    "NicoAPIThrottled",
)
SEVERITIES = ("critical", "warning", "info")
TASK_KEY = "site_id, rack_id, task_id"
RUN_KEY = "site_id, run_id"
_UUID = "([0-9a-f]{8})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{12})"


# -- the variables -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """How long a task of one operation may run: warning, then critical (seconds)."""

    warning: float
    critical: float


@dataclass(frozen=True)
class AlertConfig:
    """Every threshold and selector the rules use; the shipped ``config.yml`` documents each one."""

    selector: str
    up_selector: str
    runbook_url_base: str
    trace_url_prefix: str
    prometheus_rule_name: str
    prometheus_rule_labels: Mapping[str, str]
    severity: Mapping[str, str]
    for_: Mapping[str, float]
    task_failed_keep_firing_for: float
    stuck_default: Thresholds
    stuck: Mapping[str, Thresholds]
    stuck_no_progress_after: float
    overrun_ratio: float
    waiting_after: float
    failure_ratio: float
    failure_ratio_window: float
    failure_ratio_min_tasks: float
    tray_failures: int
    tray_failures_window: float
    run_paused_safety_gate_severity: str
    run_failed_keep_firing_for: float
    run_completed_with_failures_severity: str
    run_stalled_window: float
    run_failure_ratio: float
    run_failure_ratio_min_targets: float
    stale_after: float
    throttled_rate: float
    throttled_window: float


def _seconds(value: object, where: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _positive(seconds: float, where: str) -> float:
    if seconds <= 0:
        raise ValueError(f"{where}: must be longer than 0s")
    return seconds


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{where}: {value!r} is not a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {value!r} is not a number") from None


def _positive_number(value: Any, where: str) -> float:
    number = _number(value, where)
    if number <= 0:
        raise ValueError(f"{where}: must be greater than 0")
    return number


def _thresholds(raw: Mapping[str, Any], where: str) -> Thresholds:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: want {{warning: ..., critical: ...}}")
    t = Thresholds(
        _seconds(raw["warning"], f"{where}.warning"), _seconds(raw["critical"], f"{where}.critical")
    )
    if t.critical <= t.warning:
        raise ValueError(f"{where}: critical must be longer than warning")
    return t


def config_from_mapping(raw: Mapping[str, Any]) -> AlertConfig:
    """An ``AlertConfig`` from the parsed variables file; raises ``ValueError`` naming a bad key."""
    try:
        alerts: Mapping[str, Mapping[str, Any]] = raw["alerts"]
        unknown = set(alerts) - set(ALERTS)
        if unknown or set(alerts) != set(ALERTS):
            raise ValueError(f"alerts: want exactly {', '.join(ALERTS)}; unknown {sorted(unknown)}")
        # NicoTaskStuck's running-too-long rules are warning and critical by design; its variable
        # is the severity of the no-progress rule.
        severity = {name: str(alerts[name]["severity"]) for name in ALERTS if name != "NicoTaskStuck"}
        severity["NicoTaskStuck"] = str(alerts["NicoTaskStuck"]["no_progress_severity"])
        paused, run_failed = alerts["NicoTaskRunPaused"], alerts["NicoTaskRunFailed"]
        run_stalled, run_rate = alerts["NicoTaskRunStalled"], alerts["NicoTaskRunFailureRateHigh"]
        # The second severity of the two alerts whose severity depends on a label.
        extra_severity = {
            "NicoTaskRunPaused.safety_gate_severity": str(paused["safety_gate_severity"]),
            "NicoTaskRunFailed.completed_with_failures_severity": str(
                run_failed["completed_with_failures_severity"]
            ),
        }
        for name, sev in {**{f"{n}.severity": v for n, v in severity.items()}, **extra_severity}.items():
            if sev not in SEVERITIES:
                raise ValueError(f"alerts.{name}: {sev!r} is not one of {SEVERITIES}")
        for_ = {name: _seconds(alerts[name].get("for", 0), f"alerts.{name}.for") for name in ALERTS}
        failed, stuck, waiting = (
            alerts["NicoTaskFailed"],
            alerts["NicoTaskStuck"],
            alerts["NicoTaskWaitingTooLong"],
        )
        overrun = alerts["NicoTaskOverrunning"]
        rate, tray = alerts["NicoTaskFailureRateHigh"], alerts["NicoTrayRepeatedFailures"]
        stale, throttled = alerts["NicoExporterDataStale"], alerts["NicoAPIThrottled"]
        bad_ops = {str(op) for op in stuck["operations"]} - set(OPERATIONS)
        if bad_ops:
            raise ValueError(f"alerts.NicoTaskStuck.operations: unknown operation(s) {sorted(bad_ops)}")
        per_op = {
            str(op): _thresholds(t, f"alerts.NicoTaskStuck.operations.{op}")
            for op, t in stuck["operations"].items()
        }
        return AlertConfig(
            selector=str(raw["selector"]),
            up_selector=str(raw["up_selector"]),
            runbook_url_base=str(raw["runbook_url_base"]).rstrip("/"),
            trace_url_prefix=str(raw.get("trace_url_prefix") or ""),
            prometheus_rule_name=str(raw["prometheus_rule"]["name"]),
            prometheus_rule_labels={str(k): str(v) for k, v in raw["prometheus_rule"]["labels"].items()},
            severity=severity,
            for_=for_,
            task_failed_keep_firing_for=_seconds(
                failed.get("keep_firing_for", 0), "alerts.NicoTaskFailed.keep_firing_for"
            ),
            stuck_default=_thresholds(stuck["default"], "alerts.NicoTaskStuck.default"),
            stuck=per_op,
            stuck_no_progress_after=_seconds(
                stuck["no_progress_after"], "alerts.NicoTaskStuck.no_progress_after"
            ),
            overrun_ratio=_positive_number(overrun["ratio"], "alerts.NicoTaskOverrunning.ratio"),
            waiting_after=_seconds(waiting["after"], "alerts.NicoTaskWaitingTooLong.after"),
            failure_ratio=_number(rate["ratio"], "alerts.NicoTaskFailureRateHigh.ratio"),
            failure_ratio_window=_seconds(rate["window"], "alerts.NicoTaskFailureRateHigh.window"),
            failure_ratio_min_tasks=_number(rate["min_tasks"], "alerts.NicoTaskFailureRateHigh.min_tasks"),
            tray_failures=int(_positive_number(tray["failures"], "alerts.NicoTrayRepeatedFailures.failures")),
            tray_failures_window=_seconds(tray["window"], "alerts.NicoTrayRepeatedFailures.window"),
            run_paused_safety_gate_severity=extra_severity["NicoTaskRunPaused.safety_gate_severity"],
            run_failed_keep_firing_for=_seconds(
                run_failed.get("keep_firing_for", 0), "alerts.NicoTaskRunFailed.keep_firing_for"
            ),
            run_completed_with_failures_severity=extra_severity[
                "NicoTaskRunFailed.completed_with_failures_severity"
            ],
            run_stalled_window=_positive(
                _seconds(run_stalled["window"], "alerts.NicoTaskRunStalled.window"),
                "alerts.NicoTaskRunStalled.window",
            ),
            run_failure_ratio=_number(run_rate["ratio"], "alerts.NicoTaskRunFailureRateHigh.ratio"),
            run_failure_ratio_min_targets=_number(
                run_rate["min_targets"], "alerts.NicoTaskRunFailureRateHigh.min_targets"
            ),
            stale_after=_seconds(stale["after"], "alerts.NicoExporterDataStale.after"),
            throttled_rate=_number(throttled["rate"], "alerts.NicoAPIThrottled.rate"),
            throttled_window=_seconds(throttled["window"], "alerts.NicoAPIThrottled.window"),
        )
    except KeyError as exc:
        raise ValueError(f"missing variable {exc.args[0]!r}") from None


def _read(path: Path, *, empty_ok: bool = False) -> dict[str, Any]:
    try:
        raw = yamlfile.loads(path.read_text(encoding="utf-8"))  # a duplicate key is an error
    except yaml.YAMLError as exc:
        raise ValueError(yamlfile.describe_error(exc, str(path))) from None
    if raw is None and empty_ok:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: want a YAML mapping")
    return raw


def shipped_variables() -> dict[str, Any]:
    """The shipped variables file, parsed."""
    return _read(CONFIG_PATH)


# Mappings whose keys are the user's to choose (extra labels) or checked on their own (operations).
_OPEN_KEYS = {"prometheus_rule.labels", "alerts.NicoTaskStuck.operations"}


def _over(defaults: Mapping[str, Any], raw: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """``raw`` over ``defaults``, mappings merged key by key; a key the defaults lack is an error
    (a misspelt variable would otherwise be ignored in silence)."""
    merged = dict(defaults)
    for key, value in raw.items():
        name = f"{where}{key}"
        if key not in defaults and where.removesuffix(".") not in _OPEN_KEYS:
            raise ValueError(f"{name}: unknown variable (nico-task-exporter mixin --print-config lists them)")
        default = defaults.get(key)
        if isinstance(default, Mapping) and not isinstance(value, Mapping):
            raise ValueError(f"{name}: want a mapping, like the shipped file's")
        if isinstance(default, Mapping) and isinstance(value, Mapping):
            merged[key] = _over(default, value, f"{name}.")
        else:
            merged[key] = value
    return merged


def load_alert_config(path: Path | None = None) -> AlertConfig:
    """The shipped variables, or ``path``'s over them, parsed and checked.

    A user's file holds only what it changes; everything else keeps the shipped value of the
    installed version. Raises ``ValueError`` naming the variable that is wrong or unknown.
    """
    shipped = shipped_variables()
    if path is None:
        return config_from_mapping(shipped)
    raw = _read(path, empty_ok=True)
    try:
        return config_from_mapping(_over(shipped, raw))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


# -- PromQL helpers ------------------------------------------------------------------------------


def _d(seconds: float) -> str:
    """A Prometheus duration (``15m``), for ranges and ``for``."""
    whole = round(seconds)
    if whole <= 0:
        return "0s"
    out = ""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            out += f"{count}{unit}"
    return out


def _n(value: float) -> str:
    """A number as PromQL writes it (no trailing ``.0``)."""
    return f"{value:g}"


def increase_from_zero(
    series: str, window: str, *, key: str = "", fresh: bool = False, up: str = "up"
) -> str:
    """``increase(series[window])`` per series, where a series born within the window counts whole.

    A counter series appears with its first event, at 1; ``increase()`` and ``rate()`` need an
    earlier sample, so they read 0 for the first event of every new label set. Here a series
    that was absent at the window's start while its target was scraped then counts its value (it
    counted from 0 since). The result is per series: aggregate after it, never before (a new
    series summed into a group with older ones would vanish from the group's increase).

    An absence counts only where the scrape at the window's start says the series did not exist:
    its target answered then (``up == 1``), or the target appeared since while its job answered
    then (a restarted pod with a new address). A failed scrape or an outage at that instant (stale
    series, ``up == 0``) never makes an old series look new. With ``fresh``, a job Prometheus did
    not scrape at all then counts too (a new Prometheus, or a new exporter): for windows as long as
    a dashboard's range, which would otherwise hide every first failure for that long after an
    install; it counts whole what the exporter counted before Prometheus first scraped it.

    ``key`` (labels) marks a counter that survives the exporter's restarts (the state file): a
    series is new only when no target of its job had its key at the start, so a restarted
    exporter with a new address does not count its history again.
    """
    start = f"{up} offset {window}"
    scraped = [
        f"{start} == 1",
        f"(group by (job, instance) ({up}) unless on (job, instance) {start}) and on (job) ({start} == 1)",
    ]
    if fresh:
        scraped.append(f"group by (job, instance) ({up}) unless on (job) {start}")
    match = f" on (job, {key})" if key else ""
    new = (
        f"({series} unless{match} {series} offset {window}) "
        f"and on (job, instance) ({' or '.join(f'({s})' for s in scraped)})"
    )
    return f"({new} or increase({series}[{window}]))"


@dataclass(frozen=True)
class _Promql:
    config: AlertConfig

    def m(self, name: str, *matchers: str) -> str:
        """``name{selector, matchers}``, leaving out an empty selector."""
        parts = [p for p in (self.config.selector, *matchers) if p]
        return f"{name}{{{', '.join(parts)}}}" if parts else name

    def named_site(self, expr: str, key: str) -> str:
        """``expr`` with the site's name, kept (without it) when the site has no info series."""
        return (
            f"(\n  {expr}\n) * on (site_id) group_left (site_name) nico:site:info\n"
            f"or on ({key}) (\n  {expr}\n)"
        )


# -- rules ---------------------------------------------------------------------------------------


@dataclass
class _Rules:
    config: AlertConfig
    records: list[dict[str, Any]] = field(default_factory=list)
    task_alerts: list[dict[str, Any]] = field(default_factory=list)
    run_records: list[dict[str, Any]] = field(default_factory=list)
    run_alerts: list[dict[str, Any]] = field(default_factory=list)
    exporter_alerts: list[dict[str, Any]] = field(default_factory=list)

    def alert(
        self,
        group: list[dict[str, Any]],
        name: str,
        expr: str,
        summary: str,
        description: str,
        *,
        severity: str | None = None,
        labels: Mapping[str, str] | None = None,
        for_: float | None = None,
        keep_firing_for: float = 0.0,
        trace: bool = False,
    ) -> None:
        c = self.config
        rule: dict[str, Any] = {"alert": name, "expr": expr}
        wait = c.for_[name] if for_ is None else for_
        if wait > 0:
            rule["for"] = _d(wait)
        if keep_firing_for > 0:
            rule["keep_firing_for"] = _d(keep_firing_for)
        rule["labels"] = {"severity": severity or c.severity[name], **(labels or {})}
        annotations = {
            "summary": summary,
            "description": description,
            "runbook_url": f"{c.runbook_url_base}/{name}.md",
        }
        if trace and c.trace_url_prefix:
            annotations["trace_url"] = c.trace_url_prefix + "{{ $labels.trace_id }}"
        rule["annotations"] = annotations
        group.append(rule)


# A name, or the id when the name is unknown (its info series missing).
_RACK = "{{ or $labels.rack_name $labels.rack_id }}"
_SITE = "{{ or $labels.site_name $labels.site_id }}"
_WHERE = f"rack {_RACK} ({{{{ $labels.rack_id }}}}) at site {_SITE} ({{{{ $labels.site_id }}}})"
_STAGE = (
    '{{ with printf "nico_task_current_stage{task_id=%q}" $labels.task_id | query }}'
    ", in stage {{ . | first | value }}{{ end }}"
)
# NicoTaskOverrunning: how long the current stage has run and how long it usually takes (its
# learned p50); each part is left out when its series is missing.
_STAGE_ELAPSED = (
    '{{ with printf "time() - nico_task_current_stage_started_timestamp_seconds{task_id=%q}" $labels.task_id'
    " | query }} for {{ . | first | value | humanizeDuration }}{{ end }}"
)
_STAGE_USUAL = (
    '{{ with printf `nico_task_current_stage_expected_seconds{task_id=%q, quantile="0.5"}` $labels.task_id'
    " | query }}; it usually takes {{ . | first | value | humanizeDuration }} (p50){{ end }}"
)


def _task_records(r: _Rules, q: _Promql) -> None:
    c = r.config
    by_task = f"max by ({TASK_KEY})"
    r.records += [
        {"record": "nico:site:info", "expr": f"max by (site_id, site_name) ({q.m('nico_site_info')})"},
        {
            "record": "nico:rack:info",
            "expr": f"max by (site_id, rack_id, rack_name) ({q.m('nico_rack_info')})",
        },
        {
            # The task's operation, site and rack names and trace id, for every per-task alert.
            "record": "nico:task:info",
            "expr": (
                "label_replace(\n"
                "  (\n"
                f"      max by ({TASK_KEY}, operation) ({q.m('nico_task_info')})\n"
                "    * on (site_id) group_left (site_name) nico:site:info\n"
                "    * on (site_id, rack_id) group_left (rack_name) nico:rack:info\n"
                "  )\n"
                f"  or on ({TASK_KEY})\n"
                f"  max by ({TASK_KEY}, operation) ({q.m('nico_task_info')}),\n"
                f'  "trace_id", "$1$2$3$4$5", "task_id", "{_UUID}"\n'
                ")"
            ),
        },
    ]
    info = f"on ({TASK_KEY}) group_left (operation, site_name, rack_name, trace_id) nico:task:info"

    def since(timestamp: str, statuses: str) -> str:
        status = f'status="{statuses}"' if "|" not in statuses else f'status=~"{statuses}"'
        return (
            f"(time() - {by_task} ({q.m(timestamp)}))\n"
            f"  * {info}\n"
            f"and on ({TASK_KEY})\n"
            f"  {by_task} ({q.m('nico_task_status', status)}) == 1"
        )

    r.records += [
        {
            "record": "nico:task_running:seconds",
            "expr": since("nico_task_started_timestamp_seconds", "Running"),
        },
        {
            "record": "nico:task_unchanged:seconds",
            "expr": since("nico_task_updated_timestamp_seconds", "Running"),
        },
        {
            "record": "nico:task_waiting:seconds",
            "expr": since("nico_task_created_timestamp_seconds", "Pending|Waiting"),
        },
    ]
    w = _d(c.failure_ratio_window)
    outcomes = q.m("nico_tasks_finished_total", 'status=~"Succeeded|Failed"')
    failed = q.m("nico_tasks_finished_total", 'status="Failed"')
    r.records += [
        {
            "record": f"site_id_operation:nico_tasks_finished:increase{w}",
            "expr": f"sum by (site_id, operation) (\n  increase({outcomes}[{w}])\n)",
        },
        {
            "record": f"site_id_operation:nico_tasks_failed:ratio{w}",
            "expr": (
                "sum by (site_id, operation) (\n"
                f"  increase({failed}[{w}])\n"
                ")\n"
                f"/ site_id_operation:nico_tasks_finished:increase{w}"
            ),
        },
    ]


def _stuck_expr(c: AlertConfig, level: str) -> str:
    listed = sorted(c.stuck)
    arms = [
        f'nico:task_running:seconds{{operation="{op}"}} > {_n(getattr(c.stuck[op], level))}' for op in listed
    ]
    rest = f'{{operation!~"{"|".join(listed)}"}}' if listed else ""
    arms.append(f"nico:task_running:seconds{rest} > {_n(getattr(c.stuck_default, level))}")
    return "\n  or ".join(arms)


def _task_alerts(r: _Rules, q: _Promql) -> None:
    c, g = r.config, r.task_alerts
    failure_labels = "operation, stage_number, component_type, reason, error"
    r.alert(
        g,
        "NicoTaskFailed",
        (
            f"max by ({TASK_KEY}, {failure_labels}) ({q.m('nico_task_failure_info')})\n"
            f"  * on ({TASK_KEY}) group_left (site_name, rack_name, trace_id) nico:task:info"
        ),
        "NICo task {{ $labels.operation }} failed on rack " + _RACK + " at site " + _SITE,
        (
            "Task {{ $labels.task_id }} ({{ $labels.operation }}) failed in stage {{ $labels.stage_number }} "
            "on {{ $labels.component_type }}: {{ $labels.error }}. "
            f"Where: {_WHERE}. Trace id: {{{{ $labels.trace_id }}}}."
        ),
        keep_firing_for=c.task_failed_keep_firing_for,
        trace=True,
    )
    for level in ("warning", "critical"):
        r.alert(
            g,
            "NicoTaskStuck",
            _stuck_expr(c, level),
            "NICo task {{ $labels.operation }} running too long on rack " + _RACK + " at site " + _SITE,
            (
                "Task {{ $labels.task_id }} ({{ $labels.operation }}) has been running for "
                "{{ $value | humanizeDuration }}" + _STAGE + f", past its {level} threshold. "
                f"Where: {_WHERE}. Trace id: {{{{ $labels.trace_id }}}}."
            ),
            severity=level,
            labels={"condition": "running_too_long"},
            trace=True,
        )
    r.alert(
        g,
        "NicoTaskStuck",
        f"nico:task_unchanged:seconds > {_n(c.stuck_no_progress_after)}",
        "NICo task {{ $labels.operation }} has made no progress on rack " + _RACK + " at site " + _SITE,
        (
            "Task {{ $labels.task_id }} ({{ $labels.operation }}) is Running but has not changed for "
            "{{ $value | humanizeDuration }}" + _STAGE + ". "
            f"Where: {_WHERE}. Trace id: {{{{ $labels.trace_id }}}}."
        ),
        labels={"condition": "no_progress"},
        trace=True,
    )
    overrun = (
        "(\n"
        f"    (max by ({TASK_KEY}) ({q.m('nico_task_overrun_ratio')}) > {_n(c.overrun_ratio)})\n"
        f"  * on ({TASK_KEY}) group_left (stage_number, component_type)\n"
        f"    max by ({TASK_KEY}, stage_number, component_type) ({q.m('nico_task_overrun_info')})\n"
        ")\n"
        f"* on ({TASK_KEY}) group_left (operation, site_name, rack_name, trace_id) nico:task:info"
    )
    r.alert(
        g,
        "NicoTaskOverrunning",
        overrun,
        (
            "NICo task {{ $labels.operation }} overrunning stage {{ $labels.stage_number }} on rack "
            + _RACK
            + " at site "
            + _SITE
        ),
        (
            "Task {{ $labels.task_id }} ({{ $labels.operation }}) has been in stage {{ $labels.stage_number }} "
            "on {{ $labels.component_type }}" + _STAGE_ELAPSED + _STAGE_USUAL + ". "
            'Its elapsed time is {{ $value | printf "%.1f" }}x the stage\'s learned p99, over '
            f"{_n(c.overrun_ratio)}x for at least {_d(c.for_['NicoTaskOverrunning'])}. "
            f"Where: {_WHERE}. Trace id: {{{{ $labels.trace_id }}}}."
        ),
        trace=True,
    )
    r.alert(
        g,
        "NicoTaskWaitingTooLong",
        f"nico:task_waiting:seconds > {_n(c.waiting_after)}",
        "NICo task {{ $labels.operation }} queued too long on rack " + _RACK + " at site " + _SITE,
        (
            "Task {{ $labels.task_id }} ({{ $labels.operation }}) has waited {{ $value | humanizeDuration }} "
            "without starting; NICo expires queued tasks after about 1h. "
            f"Where: {_WHERE}. Trace id: {{{{ $labels.trace_id }}}}."
        ),
        trace=True,
    )
    w = _d(c.failure_ratio_window)
    ratio = (
        f"site_id_operation:nico_tasks_failed:ratio{w} > {_n(c.failure_ratio)}\n"
        f"  and on (site_id, operation)\n"
        f"  site_id_operation:nico_tasks_finished:increase{w} >= {_n(c.failure_ratio_min_tasks)}"
    )
    r.alert(
        g,
        "NicoTaskFailureRateHigh",
        q.named_site(ratio.replace("\n", "\n  "), "site_id, operation"),
        "Many {{ $labels.operation }} tasks fail at site " + _SITE,
        (
            "{{ $value | humanizePercentage }} of the {{ $labels.operation }} tasks that finished at site "
            + _SITE
            + " ({{ $labels.site_id }}) in the last "
            f"{w} failed (threshold {c.failure_ratio:.0%}, at least {_n(c.failure_ratio_min_tasks)} tasks)."
        ),
    )
    tw = _d(c.tray_failures_window)
    failures = q.m("nico_tray_task_failures_total")
    # The counter holds the failures charged to the tray itself (its component type's step failed,
    # or the error named it), not every failed task that targeted it. Its series appears with its
    # first failure (value 1), which increase() cannot see: a series born within the window counts
    # its value (increase_from_zero), but only where the exporter was scraped at the window's start
    # (a failed scrape then, or a restarted pod, never makes a tray's lifetime count look new), or
    # where Prometheus did not scrape the exporter at all then (a new install: otherwise no tray
    # alert for a day; a new Prometheus beside an old exporter may fire once for old failures).
    up = f"up{{{c.up_selector}}}" if c.up_selector else "up"
    charged = increase_from_zero(failures, tw, key="site_id, rack_id, tray_id, tray_type", fresh=True, up=up)
    tray = (
        f"(\n"
        f"  {charged} >= {c.tray_failures}\n"
        f")\n"
        f"* on (site_id, rack_id) group_left (rack_name) nico:rack:info\n"
        f"* on (site_id) group_left (site_name) nico:site:info"
    )
    r.alert(
        g,
        "NicoTrayRepeatedFailures",
        tray,
        "Tray {{ $labels.tray_id }} keeps failing tasks on rack " + _RACK + " at site " + _SITE,
        (
            "{{ $labels.tray_type }} tray {{ $labels.tray_id }} was charged with "
            '{{ $value | printf "%.0f" }} failed tasks '
            f"in the last {tw} (threshold {c.tray_failures}): tasks on it that failed in a "
            "{{ $labels.tray_type }} step, or whose error named its component. "
            f"Where: {_WHERE}."
        ),
    )


# -- Task Runs (rollouts) ------------------------------------------------------------------------

_RUN = "{{ or $labels.run_name $labels.run_id }}"
# The run's name first (its id when the info series is missing), then its id and operation.
_RUN_ID = f"Run {_RUN} ({{{{ $labels.run_id }}}}, {{{{ $labels.operation_type }}}})"
_RUN_WHERE = f"Where: site {_SITE} ({{{{ $labels.site_id }}}})."
_RUN_PHASES = (
    '{{ with printf "nico_task_run_phases{run_id=%q}" $labels.run_id | query }}'
    " of {{ . | first | value }}{{ end }}"
)
_RUN_PHASE = (
    '{{ with printf "nico_task_run_phase{run_id=%q}" $labels.run_id | query }}'
    ", in phase {{ . | first | value }}{{ end }}" + _RUN_PHASES
)
_RUN_FAILED_TARGETS = (
    '{{ with printf `nico_task_run_outcomes{run_id=%q, outcome="failed"}` $labels.run_id | query }}'
    '{{ . | first | value | printf "%.0f" }} target(s) failed. {{ end }}'
)
# Target statuses that count as done (the run's progress), and the outcomes that count as finished
# for the failure ratio (skipped targets neither succeed nor fail).
RUN_DONE_TARGETS = "Completed|Failed|Terminated|Skipped"
RUN_FINISHED_OUTCOMES = "completed|failed|terminated"


def _run_records(r: _Rules, q: _Promql) -> None:
    info = q.m("nico_task_run_info")
    labels = f"{RUN_KEY}, run_name, operation_type, operation_code"
    named = f'max by ({labels}) (\n  label_replace({info}, "run_name", "$1", "name", "(.*)")\n)'
    status = q.m("nico_task_run_status", 'status="Paused"')
    outcome = f"max by ({RUN_KEY}, outcome) ({{}})"
    failed = q.m("nico_task_run_outcomes", 'outcome="failed"')
    r.run_records += [
        {
            # The run's name (NICo's `name`, as run_name beside site_name), operation and site name.
            "record": "nico:task_run:info",
            "expr": (
                f"{named}\n* on (site_id) group_left (site_name) nico:site:info\nor on ({RUN_KEY})\n{named}"
            ),
        },
        {
            # A Paused run's current phase (1-based): the value NicoTaskRunPaused labels `phase` with.
            "record": "nico:task_run_paused:phase",
            "expr": (
                f"max by ({RUN_KEY}) ({q.m('nico_task_run_phase')})\n"
                f"and on ({RUN_KEY})\n"
                f"max by ({RUN_KEY}) ({status}) == 1"
            ),
        },
        {
            "record": "site_id_run_id:nico_task_run_finished_targets:sum",
            "expr": (
                f"sum by ({RUN_KEY}) (\n  "
                + outcome.format(q.m("nico_task_run_outcomes", f'outcome=~"{RUN_FINISHED_OUTCOMES}"'))
                + "\n)"
            ),
        },
        {
            "record": "site_id_run_id:nico_task_run_failed_targets:ratio",
            "expr": (
                f"max by ({RUN_KEY}) ({failed})\n"
                f"/ on ({RUN_KEY})\n"
                "site_id_run_id:nico_task_run_finished_targets:sum"
            ),
        },
    ]


def _run_alerts(r: _Rules, q: _Promql) -> None:
    c, g = r.config, r.run_alerts
    with_info = f"* on ({RUN_KEY}) group_left (run_name, operation_type, site_name) nico:task_run:info"
    reason = f"max by ({RUN_KEY}, reason, message) ({{}})"
    paused_summary = (
        "NICo run " + _RUN + " is paused at site " + _SITE + "{{ with $labels.reason }} ({{ . }}){{ end }}"
    )
    paused_description = (
        f"{_RUN_ID} has been Paused for at least "
        f"{_d(c.for_['NicoTaskRunPaused'])} in phase {{{{ $value }}}}{_RUN_PHASES}"
        "{{ with $labels.reason }}, reason {{ . }}{{ end }}{{ with $labels.message }}: {{ . }}{{ end }}. "
        + _RUN_WHERE
    )
    safety = reason.format(q.m("nico_task_run_status_reason_info", 'reason="SafetyGate"'))
    r.alert(
        g,
        "NicoTaskRunPaused",
        (
            "(\n"
            f"    nico:task_run_paused:phase\n"
            f"  * on ({RUN_KEY}) group_left (reason, message)\n"
            f"    {safety}\n"
            ")\n"
            f"{with_info}"
        ),
        paused_summary,
        paused_description,
        severity=c.run_paused_safety_gate_severity,
        labels={"phase": "{{ $value }}"},
    )
    other = reason.format(q.m("nico_task_run_status_reason_info", 'reason!="SafetyGate"'))
    r.alert(
        g,
        "NicoTaskRunPaused",
        (
            "(\n"
            f"    nico:task_run_paused:phase\n"
            f"  * on ({RUN_KEY}) group_left (reason, message)\n"
            f"    {other}\n"
            # No reason series: still a paused run (a warning, its reason unknown).
            f"  or on ({RUN_KEY})\n"
            f"    nico:task_run_paused:phase unless on ({RUN_KEY}) {q.m('nico_task_run_status_reason_info')}\n"
            ")\n"
            f"{with_info}"
        ),
        paused_summary,
        paused_description,
        labels={"phase": "{{ $value }}"},
    )
    for status, severity in (
        ("Failed", c.severity["NicoTaskRunFailed"]),
        ("CompletedWithFailures", c.run_completed_with_failures_severity),
    ):
        ended = q.m("nico_task_run_status", f'status="{status}"')
        r.alert(
            g,
            "NicoTaskRunFailed",
            f"(max by ({RUN_KEY}, status) ({ended}) == 1)\n{with_info}",
            "NICo run " + _RUN + " ended {{ $labels.status }} at site " + _SITE,
            f"{_RUN_ID} ended {{{{ $labels.status }}}}{_RUN_PHASE}. {_RUN_FAILED_TARGETS}{_RUN_WHERE}",
            severity=severity,
            keep_firing_for=c.run_failed_keep_firing_for,
        )
    window = _d(c.run_stalled_window)
    done = q.m("nico_task_run_targets", f'status=~"{RUN_DONE_TARGETS}"')
    running = q.m("nico_task_run_status", 'status="Running"')
    stalled = (
        "(\n"
        f"    max by ({RUN_KEY}) ({running}) == 1\n"
        f"  unless on ({RUN_KEY})\n"
        f"    max by ({RUN_KEY}) (changes({q.m('nico_task_run_outcomes')}[{window}])) > 0\n"
        f"  unless on ({RUN_KEY})\n"
        f"    max by ({RUN_KEY}) (changes({done}[{window}])) > 0\n"
        ")\n"
        f"{with_info}"
    )
    r.alert(
        g,
        "NicoTaskRunStalled",
        stalled,
        "NICo run " + _RUN + " has made no progress at site " + _SITE,
        (
            f"{_RUN_ID} is Running{_RUN_PHASE}, but no target has finished for "
            f"{_d(c.for_['NicoTaskRunStalled'])}. {_RUN_WHERE}"
        ),
    )
    ratio = (
        "(\n"
        f"    site_id_run_id:nico_task_run_failed_targets:ratio > {_n(c.run_failure_ratio)}\n"
        f"  and on ({RUN_KEY})\n"
        f"    site_id_run_id:nico_task_run_finished_targets:sum >= {_n(c.run_failure_ratio_min_targets)}\n"
        f"  and on ({RUN_KEY})\n"
        f"    max by ({RUN_KEY}) ({running}) == 1\n"
        ")\n"
        f"{with_info}"
    )
    r.alert(
        g,
        "NicoTaskRunFailureRateHigh",
        ratio,
        "Many targets of NICo run " + _RUN + " fail at site " + _SITE,
        (
            f"{_RUN_ID} is Running{_RUN_PHASE}, and {{{{ $value | humanizePercentage }}}} of its finished "
            f"targets failed (threshold {c.run_failure_ratio:.0%}, at least "
            f"{_n(c.run_failure_ratio_min_targets)} finished): its safety gate has not stopped it (yet). "
            + _RUN_WHERE
        ),
    )


# Per exporter instance: a live query of one of its own families (job and instance of the alert).
_SELF = "{{{{ with printf `{query}` $labels.job $labels.instance | query{sort} }}}}"


def _self_query(family: str, matchers: str = "", by: str = "") -> str:
    extra = f", {matchers}" if matchers else ""
    series = f"{family}{{job=%q, instance=%q{extra}}}"
    query = f"sum by ({by}) ({series})" if by else series
    return _SELF.format(query=query, sort=f' | sortByLabel "{by}"' if by else "")


def _counts(family: str, matchers: str, by: str, none: str) -> str:
    """``label N, label N`` of a family's series summed by ``by`` (``none`` when there is none)."""
    return (
        _self_query(family, matchers, by)
        + "{{ range $i, $s := . }}{{ if $i }}, {{ end }}"
        + f'{{{{ $s.Labels.{by} }}}} x{{{{ $s.Value | printf "%.0f" }}}}'
        + "{{ end }}{{ else }}"
        + none
        + "{{ end }}"
    )


def _exporter_alerts(r: _Rules, q: _Promql) -> None:
    c, g = r.config, r.exporter_alerts
    site = f"site {_SITE} ({{{{ $labels.site_id }}}})"
    # NICo's own view and the breaker, named when they are why (left out when their series say not).
    online = (
        "{{ with printf `nico_site_online{instance=%q, site_id=%q} == 0` $labels.instance $labels.site_id"
        " | query }} NICo's site list shows it offline (nico_site_online is 0).{{ end }}"
    )
    breaker = (
        "{{ with printf `nico_exporter_site_breaker_open{instance=%q, site_id=%q} == 1` $labels.instance"
        " $labels.site_id | query }} Its circuit breaker is open (nico_exporter_site_breaker_open is 1).{{ end }}"
    )
    r.alert(
        g,
        "NicoSiteDown",
        q.named_site(f"{q.m('nico_site_up')} == 0", "site_id, instance"),
        "NICo does not answer for site " + _SITE,
        (
            f"NICo has failed to answer for {site} for at least {_d(c.for_['NicoSiteDown'])} "
            "(nico_site_up is 0): the site's breaker is open after consecutive timeouts or 5xx answers, "
            f"NICo lists the site offline, or most of its rack polls got no answer.{online}{breaker} "
            "The exporter's own failures (budget, credentials, refused requests) never count here. "
            "The site's tasks are not being watched, and their alerts are muted."
        ),
    )
    r.alert(
        g,
        "NicoExporterDataStale",
        q.named_site(
            f"time() - {q.m('nico_exporter_last_successful_poll_timestamp_seconds')} > {_n(c.stale_after)}",
            "site_id, instance",
        ),
        "NICo task data for site " + _SITE + " is stale",
        (
            f"The last successful poll of {site} by {{{{ $labels.instance }}}} was "
            "{{ $value | humanizeDuration }} ago "
            f"(threshold {_d(c.stale_after)}): task alerts for the site cannot be trusted."
        ),
    )
    up = f"up{{{c.up_selector}}}" if c.up_selector else "up"
    r.alert(
        g,
        "NicoExporterDown",
        f"{up} == 0\nor\nabsent({up})",
        "The NICo task exporter is down",
        (
            "Prometheus cannot scrape the exporter{{ with $labels.instance }} {{ . }}{{ end }} "
            f"({up} is 0 or absent) for {_d(c.for_['NicoExporterDown'])}: "
            "no NICo task is watched and no task alert can fire."
        ),
    )
    r.alert(
        g,
        "NicoExporterNotReady",
        f"{q.m('nico_exporter_ready')} == 0",
        "The NICo task exporter {{ $labels.instance }} is not ready",
        (
            "{{ $labels.instance }} has not been ready for at least "
            f"{_d(c.for_['NicoExporterNotReady'])} (nico_exporter_ready is 0): NICo's site list has not "
            "answered it, or no site's racks could be listed, so no site is watched and no task alert "
            "can fire. Since it started, GET /site ended (nico_exporter_api_requests_total"
            '{endpoint="/site"}, by code): '
            + _counts("nico_exporter_api_requests_total", 'endpoint="/site"', "code", "not yet")
            + '; calls about no site failed inside the exporter (nico_exporter_self_failures_total{site_id=""}): '
            + _counts("nico_exporter_self_failures_total", 'site_id=""', "cause", "none")
            + "."
        ),
    )
    r.alert(
        g,
        "NicoExporterCredentialsRefused",
        f"max by (job, instance) ({q.m('nico_exporter_credentials_refused')}) == 1",
        "NICo refuses the credentials of the NICo task exporter {{ $labels.instance }}",
        (
            "NICo or its identity provider has refused the credentials of {{ $labels.instance }} for at "
            f"least {_d(c.for_['NicoExporterCredentialsRefused'])} (nico_exporter_credentials_refused is 1): "
            "no call reaches NICo, so no site is polled and no task alert can fire. The exporter fails "
            "its calls fast and tries again after 30s, doubling to 5m; it never marks a site down for this."
        ),
    )
    budget = _self_query("nico_exporter_budget_requests_per_second") + (
        '{{ . | first | value | printf "%.1f" }}{{ end }}'
    )
    shortfall = _self_query("nico_exporter_freshness_shortfall_seconds") + (
        "{{ . | first | value | humanizeDuration }}{{ end }}"
    )
    waiting = _self_query("nico_exporter_rack_polls_waiting") + (
        '; {{ . | first | value | printf "%.0f" }} rack polls wait for the budget now{{ end }}'
    )
    r.alert(
        g,
        "NicoExporterBudgetShort",
        (
            f"{q.m('nico_exporter_budget_required_requests_per_second')}\n"
            f"> on (job, instance)\n"
            f"{q.m('nico_exporter_budget_requests_per_second')}"
        ),
        "The NICo task exporter {{ $labels.instance }} needs more requests than its budget",
        (
            '{{ $labels.instance }} needs {{ $value | printf "%.1f" }} requests/s for its racks at the '
            f"configured intervals, more than its budget (api.max_requests_per_second) of {budget} "
            f"requests/s, for at least {_d(c.for_['NicoExporterBudgetShort'])}. Every rack is still polled "
            f"in turn (baselines first), but its data is up to {shortfall} older than "
            "polling.active_interval (nico_exporter_freshness_shortfall_seconds), and task alerts arrive "
            f"that much later{waiting}."
        ),
    )
    tw = _d(c.throttled_window)
    throttled = q.m("nico_exporter_api_requests_total", 'code="429"')
    r.alert(
        g,
        "NicoAPIThrottled",
        # Per second over the window; the 429 series appears with the first refusal, which rate()
        # cannot see: a short storm would go unnoticed (increase_from_zero counts it).
        f"sum by (job, instance) (\n  {increase_from_zero(throttled, tw, up=up)}\n) / {_n(c.throttled_window)} "
        f"> {_n(c.throttled_rate)}",
        "NICo is throttling the exporter (HTTP 429)",
        (
            '{{ $value | printf "%.2f" }} requests/s from {{ $labels.instance }} were answered 429 Too Many Requests '
            f"over {tw} (threshold {_n(c.throttled_rate)}/s): polls are delayed and data goes stale."
        ),
    )


def rule_groups(config: AlertConfig) -> list[dict[str, Any]]:
    """The rule groups: task rules and run rules (records first, then the alerts that use them),
    exporter rules."""
    r, q = _Rules(config), _Promql(config)
    _task_records(r, q)
    _task_alerts(r, q)
    _run_records(r, q)
    _run_alerts(r, q)
    _exporter_alerts(r, q)
    return [
        {"name": "nico-task-exporter.tasks", "rules": [*r.records, *r.task_alerts]},
        {"name": "nico-task-exporter.runs", "rules": [*r.run_records, *r.run_alerts]},
        {"name": "nico-task-exporter.exporter", "rules": r.exporter_alerts},
    ]


# -- rendering -----------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block scalars for multi-line expressions, keys in insertion order."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)

_HEADER = (
    "# Generated by `nico-task-exporter mixin` from its variables (`--print-config`); do not edit by hand.\n"
    "# Alerts, thresholds and routing: docs/alerts.md. Runbooks: docs/runbooks/<AlertName>.md.\n"
)


def _dump(data: object) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=1_000_000, allow_unicode=True)


def render_rules(config: AlertConfig) -> str:
    """The Prometheus rule file."""
    return _HEADER + _dump({"groups": rule_groups(config)})


def render_prometheus_rule(config: AlertConfig) -> str:
    """The same groups as a Kubernetes ``monitoring.coreos.com/v1`` ``PrometheusRule``."""
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": config.prometheus_rule_name, "labels": dict(config.prometheus_rule_labels)},
        "spec": {"groups": rule_groups(config)},
    }
    return _HEADER + _dump(doc)


def write(config: AlertConfig, rules_path: Path, rule_path: Path | None = None) -> list[Path]:
    """Write the rule file (and the PrometheusRule, when ``rule_path`` is given); returns the paths."""
    rules_path.parent.mkdir(parents=True, exist_ok=True)
    rules_path.write_text(render_rules(config), encoding="utf-8")
    written = [rules_path]
    if rule_path is not None:
        rule_path.parent.mkdir(parents=True, exist_ok=True)
        rule_path.write_text(render_prometheus_rule(config), encoding="utf-8")
        written.append(rule_path)
    return written
