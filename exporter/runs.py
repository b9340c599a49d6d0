"""Task Runs (phased rollouts over many racks: NICo ``main``; v2.0 has none) and Operation Rules
(v2.0 and main; 1.6 has none).

Owned by the poller's thread, like the poller itself. Per site, each active interval:

1. ``GET /task/run`` (paged: these lists accept pageNumber and pageSize) names the site's runs.
   A server without Task Runs (v2.0) refuses it: ``GET /task/run`` matches ``GET /task/{id}``,
   whose handler answers 400 "Unknown query parameter specified in request" to our paging keys
   (or "Invalid Task ID specified in URL" without them; the other run routes are the
   router 404, :class:`~exporter.errors.RouteMissing`, accepted too). The feature switches itself
   off for that site, says so once in the log and in
   ``nico_exporter_task_runs_supported``, and asks again only every ``probe_interval``.
2. Every run that is not final, and every run that just became final, is fetched with its stats
   (``GET /task/run/{id}?includeStats=true``) and its targets (``GET /task/run/{id}/target``,
   every phase begun so far). A final run is fetched once more and then no longer.
3. A target names its task's id as soon as Flow submits it; a task the store does not know yet
   is handed to the poller's final fetch (``on_task``), so a short run task that a capped v2.0
   list never shows is still fetched by id and counted with its real status.

A run that became final is counted once (``nico_task_runs_finished_total``, through the store
and its state file); one that was final before the site's first listing is history. Final runs
stay on ``/metrics`` for ``ttl`` seconds after they were seen final, then leave.

Operation Rules (``GET /task/rule``) are read at each discovery, whether or not the site serves
Task Runs (release/v2.0 rest-api/api/pkg/api/routes.go:945-970 has the rule routes and no run
route): their stage layouts name the custom rule a task ran (``ruleId`` is null on v2.0 tasks;
the publisher matches each task's report layout against them, :func:`task_layout`). A server
without rules (1.6) refuses the call as it refuses ``GET /task/run``, and the site keeps none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from exporter.client import NicoClient
from exporter.errors import BadRequest, NicoError, RouteMissing
from exporter.models import ComponentType, OperationRule, Task, TaskRun, TaskRunTarget
from exporter.state import Store

log = logging.getLogger(__name__)

Layout = tuple[tuple[int, tuple[ComponentType, ...]], ...]


def task_layout(task: Task) -> Layout | None:
    """A task's stage layout from its report: (stage number, its component types), in order."""
    if task.report is None or not task.report.stages:
        return None
    return tuple(
        (stage.number, tuple(sorted({step.component_type for step in stage.steps})))
        for stage in sorted(task.report.stages, key=lambda s: s.number)
    )


@dataclass
class RunRecord:
    """What the exporter keeps of one run between polls."""

    site_id: str
    run: TaskRun
    targets: tuple[TaskRunTarget, ...] = ()
    final_seen_at: float | None = None


@dataclass(frozen=True)
class RunsView:
    """The runs state for the metrics, as values (built on the poller's thread)."""

    supported: tuple[tuple[str, bool], ...] = ()
    runs: tuple[tuple[str, TaskRun, tuple[TaskRunTarget, ...]], ...] = ()
    rules: tuple[tuple[str, OperationRule], ...] = ()
    finished: tuple[tuple[tuple[str, str], int], ...] = ()


@dataclass
class RunTracker:
    """Polls the Task Runs of each site; see the module docstring.

    Args:
        client: the NICo client (its budget is shared with the task polls).
        store: counts each final run once, across restarts.
        on_task: called with (site_id, rack_id, task_id) for a target's task the store does not
            know yet (the poller fetches it by id).
        ttl: seconds a final run stays on /metrics after it was seen final.
        probe_interval: seconds between asking a site without Task Runs again.
        clock: epoch seconds.
    """

    client: NicoClient
    store: Store
    on_task: Callable[[str, str, str], None] = lambda site_id, rack_id, task_id: None
    # Called when a run becomes final, in the poll that counts it (its trace: tracing.run_spans).
    on_final: Callable[[str, TaskRun, tuple[TaskRunTarget, ...]], None] = lambda site_id, run, targets: None
    ttl: float = 3600.0
    probe_interval: float = 600.0
    clock: Callable[[], float] = time.time
    supported: dict[str, bool] = field(default_factory=dict)
    records: dict[str, RunRecord] = field(default_factory=dict)
    rules: dict[str, tuple[OperationRule, ...]] = field(default_factory=dict)
    # Task id -> (run id, 0-based phase index), from the targets of the runs on /metrics.
    task_phase: dict[str, tuple[str, int]] = field(default_factory=dict)
    _probed_at: dict[str, float] = field(default_factory=dict)

    # -- polling -----------------------------------------------------------------------------------

    def _wanted(self, site_id: str) -> bool:
        if self.supported.get(site_id, True):
            return True
        return self.clock() - self._probed_at.get(site_id, 0.0) >= self.probe_interval

    def _unsupported(self, site_id: str) -> None:
        self._probed_at[site_id] = self.clock()
        if self.supported.get(site_id) is not False:
            log.warning(
                "task runs not served by this NICo: run metrics off for the site",
                extra={"site_id": site_id, "recheck_in_s": self.probe_interval},
            )
        self.supported[site_id] = False

    def _supported(self, site_id: str) -> None:
        if self.supported.get(site_id) is False:
            log.info("task runs served again: run metrics on for the site", extra={"site_id": site_id})
        self.supported[site_id] = True

    async def poll_site(self, site_id: str, deadline: float | None = None) -> None:
        """One round for one site: list its runs, refresh those not final."""
        if not self._wanted(site_id):
            return
        try:
            listing = await self.client.list_task_runs(site_id, deadline=deadline)
        except (RouteMissing, BadRequest) as exc:
            if isinstance(exc, RouteMissing) or _task_id_refusal(exc):
                self._unsupported(site_id)
            else:
                log.warning("task run listing refused", extra={"site_id": site_id, "error": str(exc)})
            return
        except NicoError as exc:
            log.info("task run listing failed", extra={"site_id": site_id, "error": str(exc)})
            return
        self._supported(site_id)
        baseline = self.store.run_baseline(site_id, listing.server_date or self.clock())
        for run in listing.items:
            record = self.records.get(run.id)
            if record is not None and record.final_seen_at is not None:
                continue  # fetched once more when it became final: nothing moves any more
            if run.is_terminal and record is None and self.store.run_is_final(run.id):
                continue  # counted (or history) before a restart
            if run.is_terminal and record is None and _finished_at(run) < baseline:
                self.store.run_finished(site_id, run.id, run.status.value, _finished_at(run))
                continue  # history: final before the site's first listing
            await self._refresh(site_id, run, deadline)
        self._expire()

    async def _refresh(self, site_id: str, listed: TaskRun, deadline: float | None) -> None:
        try:
            run = await self.client.get_task_run(site_id, listed.id, deadline=deadline)
            targets = await self.client.list_task_run_targets(site_id, listed.id, deadline=deadline)
        except NicoError as exc:
            log.info("task run refresh failed", extra={"run_id": listed.id, "error": str(exc)})
            return
        record = self.records.get(run.id)
        if record is None:
            record = self.records[run.id] = RunRecord(site_id, run)
        record.run = run
        record.targets = tuple(sorted(targets.items, key=lambda t: (t.phase_index, t.sequence_index)))
        for target in record.targets:
            if target.task_id:
                self.task_phase[target.task_id] = (run.id, target.phase_index)
            task_id = target.task_id
            if task_id and not self.store.is_known(task_id):  # tracked, final, or awaiting a fetch
                self.on_task(site_id, target.rack_id, task_id)
        if run.is_terminal:
            record.final_seen_at = self.clock()
            if self.store.run_finished(site_id, run.id, run.status.value, _finished_at(run)):
                self.on_final(site_id, run, record.targets)

    def _expire(self) -> None:
        now = self.clock()
        for run_id in [
            r
            for r, rec in self.records.items()
            if rec.final_seen_at is not None and now - rec.final_seen_at > self.ttl
        ]:
            del self.records[run_id]

    async def read_rules(self, site_id: str, deadline: float | None = None) -> None:
        """The site's Operation Rules (at discovery, also on a site without Task Runs); a server
        without them keeps none."""
        try:
            listing = await self.client.list_operation_rules(site_id, deadline=deadline)
        except (RouteMissing, BadRequest) as exc:
            if isinstance(exc, BadRequest) and not _task_id_refusal(exc):
                log.warning("operation rule listing refused", extra={"site_id": site_id, "error": str(exc)})
            self.rules.pop(site_id, None)
            return
        except NicoError as exc:
            log.info("operation rule listing failed", extra={"site_id": site_id, "error": str(exc)})
            return
        self.rules[site_id] = tuple(sorted(listing.items, key=lambda r: r.id))

    def drop_site(self, site_id: str) -> None:
        self.supported.pop(site_id, None)
        self.rules.pop(site_id, None)
        for run_id in [r for r, rec in self.records.items() if rec.site_id == site_id]:
            del self.records[run_id]

    # -- what the metrics and traces read -------------------------------------------------------

    def run_of(self, task_id: str) -> tuple[str, int] | None:
        """The run whose target names ``task_id``, and the target's 0-based phase index."""
        return self.task_phase.get(task_id)

    def view(self) -> RunsView:
        return RunsView(
            supported=tuple(sorted(self.supported.items())),
            runs=tuple((rec.site_id, rec.run, rec.targets) for _, rec in sorted(self.records.items())),
            rules=tuple((site_id, rule) for site_id, rules in sorted(self.rules.items()) for rule in rules),
            finished=tuple(sorted(self.store.totals.runs.items())),
        )


# NICo v2.0 has no /task/run (and 1.6 no /task/rule): GET on them matches GET /task/{id}, whose handler
# first refuses the query keys it does not know (our paging: release/v2.0
# rest-api/api/pkg/api/handler/task.go:74-76, model APIGetTaskRequest takes siteId only), then the
# id (task.go:111-114); the other methods and deeper paths are the router 404.
_GET_TASK_REFUSALS = ("Invalid Task ID specified in URL", "Unknown query parameter specified in request")


def _task_id_refusal(exc: BadRequest) -> bool:
    return any(text in str(exc) for text in _GET_TASK_REFUSALS)


def _finished_at(run: TaskRun) -> float:
    when = run.finished or run.updated or run.created
    return when.timestamp() if when is not None else 0.0
