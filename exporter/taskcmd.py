"""``nico-task-exporter tasks``: list tasks, show one with its stage/step timings, cancel one;
``tasks runs list`` and ``tasks runs show RUN_ID`` for Task Runs (NICo main).

An operator's tool for the moment an alert fires: it talks to NICo directly with the exporter's
configuration (same URL, org and credentials), not to the exporter. Cancelling happens only on
explicit request (``tasks cancel ID --yes``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO

from exporter.client import NicoClient
from exporter.config import Config
from exporter.connect import nico_client
from exporter.errors import BadRequest, NicoError, RouteMissing
from exporter.errortext import error_cause, one_line, valid_utf8
from exporter.facts import ERROR_LABEL_MAX
from exporter.models import ReportStatus, TargetStatus, Task, TaskRun, TaskRunTarget
from exporter.operations import Classifier


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _took(start: datetime | None, end: datetime | None, now: datetime) -> str:
    if start is None:
        return "-"
    seconds = int(((end or now) - start).total_seconds())
    text = (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
        if seconds >= 3600
        else (f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")
    )
    return text + ("" if end is not None else " (running)")


def _cause(error: str | None, limit: int) -> str:
    """An error's cause on one line (the wrapping off, see :mod:`exporter.errortext`)."""
    return one_line(error_cause(error), limit) if error else ""


def render_task(task: Task, *, site_id: str, now: datetime, classifier: Classifier | None = None) -> str:
    """A task and its report as an operator reads it: what, where, when, which stage failed and why.

    Errors read as their cause in the status line and the table; the full text NICo kept follows
    the table (``error``), or the status line when there is no report error.
    """
    op = (classifier or Classifier()).classify(task.description, task.report)
    message = _cause(task.message, ERROR_LABEL_MAX)
    lines = [
        f"task        {task.id}",
        f"site        {site_id}",
        f"status      {task.status.value}" + (f"  ({message})" if message else ""),
        f"operation   {op.value}  ({task.description})",
        f"rule        {task.rule_id or '-'}",
        f"created     {_when(task.created)}",
        f"started     {_when(task.started)}   queued {_took(task.created, task.started, now)}",
        f"finished    {_when(task.finished)}   ran {_took(task.started, task.finished, now)}",
        f"trace id    {task.id.replace('-', '')}",
    ]
    report = task.report
    if report is not None and report.error:
        tail = [
            "",
            f"cause       {_cause(report.error, ERROR_LABEL_MAX)}",
            f"error       {valid_utf8(report.error)}",
        ]
    elif task.message and error_cause(task.message) != task.message.strip():
        tail = ["", f"error       {valid_utf8(task.message)}"]
    else:
        tail = []
    if report is None:
        lines.append("report      none yet (Flow has not resolved the task's rule)")
        return "\n".join(lines + tail) + "\n"
    lines += ["", f"{'stage':<7}{'step':<6}{'component':<12}{'status':<11}{'started':<21}{'took':<16}error"]
    for stage in report.stages:
        lines.append(
            f"{stage.number:<7}{'':<6}{'':<12}{stage.status.value:<11}{_when(stage.started_at):<21}"
            f"{_took(stage.started_at, stage.finished_at, now) if stage.status is not ReportStatus.PENDING else '-':<16}"
            f"{_cause(stage.error, 120)}"
        )
        for index, step in enumerate(stage.steps):
            took = "-" if step.started_at is None else _took(step.started_at, step.finished_at, now)
            count = f"x{step.total_components}" if step.total_components else ""
            lines.append(
                f"{'':<7}{index:<6}{(step.component_type.value + count):<12}{step.status.value:<11}"
                f"{_when(step.started_at):<21}{took:<16}{_cause(step.error, 120)}"
            )
    return "\n".join(lines + tail) + "\n"


def render_list(
    rows: Sequence[tuple[str, str, Task]], now: datetime, classifier: Classifier | None = None
) -> str:
    c = classifier or Classifier()
    out = [f"{'task':<38}{'status':<12}{'operation':<19}{'rack':<38}{'created':<21}age"]
    for _, rack_id, task in rows:
        out.append(
            f"{task.id:<38}{task.status.value:<12}{c.classify(task.description, task.report).value:<19}"
            f"{rack_id:<38}{_when(task.created):<21}{_took(task.created, task.finished, now)}"
        )
    return "\n".join(out) + "\n"


async def run_tasks_command(
    config: Config,
    action: str,
    *,
    site: str | None,
    rack: str | None = None,
    task_id: str | None = None,
    active_only: bool = True,
    confirmed: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """``list`` (a site's or a rack's tasks), ``show`` (one task), ``cancel`` (one task, with --yes)."""
    classifier = Classifier(config.operations.extra_patterns)
    async with nico_client(config.api) as client:
        try:
            sites = [site] if site else [s.id for s in (await client.list_sites()).items]
            now = datetime.now(UTC)
            if action == "list":
                rows: list[tuple[str, str, Task]] = []
                notes: list[str] = []
                for site_id in sites:
                    racks = [rack] if rack else [r.id for r in (await client.list_racks(site_id)).items]
                    for rack_id in racks:
                        listing = await client.list_rack_tasks(site_id, rack_id, active_only=active_only)
                        rows.extend((site_id, rack_id, t) for t in listing.items)
                        if not listing.complete and listing.total is not None:
                            notes.append(
                                f"note: rack {rack_id}: {len(listing.items)} of {listing.total} tasks shown "
                                "(NICo v2.0 lists stop at 20 rows; `tasks show ID` shows any task)"
                            )
                rows.sort(key=lambda row: row[2].created or now)
                out.write(render_list(rows, now, classifier))
                out.writelines(note + "\n" for note in notes)
                return 0
            assert task_id is not None
            if action == "show":
                task, site_id = await _find(client, sites, task_id)
                out.write(render_task(task, site_id=site_id, now=now, classifier=classifier))
                return 0
            if action == "cancel":
                if not confirmed:
                    out.write(f"not cancelling {task_id}: add --yes to cancel it\n")
                    return 2
                task, site_id = await _find(client, sites, task_id)
                cancelled = await client.cancel_task(site_id, task_id)
                if cancelled is None:
                    # NICo cancelled it but could not read it back: `tasks show` asks again.
                    out.write(f"cancel requested: {task_id} was cancelled (NICo sent no task back)\n")
                else:
                    out.write(f"cancel requested: {task_id} is {cancelled.status.value}\n")
                return 0
        except NicoError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    raise ValueError(f"unknown action {action!r}")


def render_runs(rows: Sequence[tuple[str, TaskRun]], now: datetime) -> str:
    """Task Runs, newest first: what they do, where they stand."""
    out = [f"{'run':<38}{'name':<28}{'status':<23}{'reason':<22}{'phases':<8}{'created':<21}age"]
    for _, run in rows:
        out.append(
            f"{run.id:<38}{run.name[:27]:<28}{run.status.value:<23}{run.status_reason.value:<22}"
            f"{run.total_phases:<8}{_when(run.created):<21}{_took(run.created, run.finished, now)}"
        )
    return "\n".join(out) + "\n"


def render_run(
    run: TaskRun, targets: Sequence[TaskRunTarget], tasks: dict[str, Task], *, site_id: str, now: datetime
) -> str:
    """One run: its phases, each target with its child task's status, and what failed."""
    stats = run.stats
    phase = (
        f"{stats.current_phase.phase_index + 1} of {run.total_phases}"
        if stats
        else f"? of {run.total_phases}"
    )
    lines = [
        f"run         {run.id}",
        f"name        {run.name}  ({run.operation_type} {run.operation_code})",
        f"site        {site_id}",
        f"status      {run.status.value}  reason {run.status_reason.value}"
        + (f"  ({run.status_message})" if run.status_message else ""),
        f"phase       {phase}",
        f"created     {_when(run.created)}",
        f"started     {_when(run.started)}",
        f"finished    {_when(run.finished)}   ran {_took(run.started, run.finished, now)}",
        f"trace id    {run.id.replace('-', '')}",
    ]
    if stats is not None:
        c = stats.cumulative_phase.outcome_counts
        lines.append(
            f"outcomes    completed {c.completed}  failed {c.failed}  terminated {c.terminated}  skipped {c.skipped}"
        )
    lines += ["", f"{'phase':<7}{'rack':<38}{'target':<12}{'task':<38}task status"]
    for t in targets:
        child = tasks.get(t.task_id or "")
        lines.append(
            f"{t.phase_index + 1:<7}{t.rack_id:<38}{t.status.value:<12}{(t.task_id or '-'):<38}"
            f"{child.status.value if child else '-'}"
        )
    failed = [t for t in targets if t.status is TargetStatus.FAILED]
    if failed:
        lines += ["", "failed"]
        for t in failed:
            child = tasks.get(t.task_id or "")
            why = (child.message if child and child.message else t.message) or "-"
            lines.append(f"  rack {t.rack_id} phase {t.phase_index + 1}: {why}")
    return "\n".join(lines) + "\n"


async def run_runs_command(
    config: Config, action: str, *, site: str | None, run_id: str | None = None, out: TextIO = sys.stdout
) -> int:
    """``runs list`` (every site's Task Runs) and ``runs show ID`` (phases, targets, child tasks)."""
    async with nico_client(config.api) as client:
        try:
            sites = [site] if site else [s.id for s in (await client.list_sites()).items]
            now = datetime.now(UTC)
            if action == "list":
                rows: list[tuple[str, TaskRun]] = []
                for site_id in sites:
                    try:
                        rows.extend((site_id, r) for r in (await client.list_task_runs(site_id)).items)
                    except (RouteMissing, BadRequest):
                        out.write(f"note: site {site_id} serves no Task Runs (NICo before main)\n")
                rows.sort(key=lambda row: row[1].created or now, reverse=True)
                out.write(render_runs(rows, now))
                return 0
            if action == "show" and run_id:
                last: NicoError | None = None
                for site_id in sites:
                    try:
                        run = await client.get_task_run(site_id, run_id)
                    except NicoError as exc:
                        last = exc
                        continue
                    targets = (await client.list_task_run_targets(site_id, run_id)).items
                    tasks = {}
                    for t in targets:
                        if t.task_id:
                            tasks[t.task_id] = await client.get_task(site_id, t.task_id)
                    out.write(render_run(run, targets, tasks, site_id=site_id, now=now))
                    return 0
                raise last if last is not None else NicoError(f"run {run_id} not found on any site")
        except NicoError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print("usage: tasks runs list | tasks runs show RUN_ID", file=sys.stderr)
    return 2


async def _find(client: NicoClient, sites: Sequence[str], task_id: str) -> tuple[Task, str]:
    """The task, from the first site that has it (a task id names no site)."""
    last: NicoError | None = None
    for site_id in sites:
        try:
            return await client.get_task(site_id, task_id), site_id
        except NicoError as exc:
            last = exc
    raise last if last is not None else NicoError(f"task {task_id} not found on any site")
