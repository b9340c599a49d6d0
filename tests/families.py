"""Which ``nico_*`` names a generated file reads that ``exporter.metrics`` does not define."""

from __future__ import annotations

import re

from exporter.metrics import FAMILY

# Issue 14 (Task Runs): these families are added to exporter/metrics.py on main, in parallel with
# the alerts and the Rollouts dashboard that read them. TEMPORARY: delete this set at the merge
# (the checks below must then pass against FAMILY alone).
PENDING_FAMILIES = frozenset(
    {
        "nico_task_run_info",
        "nico_task_run_status",
        "nico_task_run_status_reason_info",
        "nico_task_run_phase",
        "nico_task_run_phases",
        "nico_task_run_targets",
        "nico_task_run_outcomes",
        "nico_task_run_created_timestamp_seconds",
        "nico_task_run_started_timestamp_seconds",
        "nico_task_run_finished_timestamp_seconds",
        "nico_task_runs_finished_total",
        "nico_task_run_failed_target_info",
        "nico_operation_rule_info",
        "nico_exporter_task_runs_supported",
    }
)

# A metric name: not part of a recording rule's name (``nico:task:info``,
# ``site_id_operation:nico_tasks_finished:increase1h``) nor of a longer word.
_NAME = re.compile(r"(?<![\w:])nico_[a-z0-9_]+(?![\w:])")
_SUFFIXES = ("_bucket", "_sum", "_count")


def unknown_families(text: str) -> set[str]:
    """The ``nico_*`` metric names in ``text`` (PromQL, or a template's query) that are no family."""
    known = set(FAMILY) | PENDING_FAMILIES
    names = set(_NAME.findall(text))
    return {
        name
        for name in names
        if name not in known and not any(name.removesuffix(s) in known for s in _SUFFIXES if name.endswith(s))
    }
