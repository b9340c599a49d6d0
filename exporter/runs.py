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
from exporter.errors import BadRequest, NicoError, RouteMissing, ServerError, TransportError
from exporter.models import ComponentType, OperationRule, Task, TaskRun, TaskRunTarget
from exporter.state import Store

log = logging.getLogger(__name__)

# Run or rule calls a site hangs (or fails with a 5xx) in a row, while its tasks answer, before the
# capability is taken for missing on the site (and asked again every probe interval).
SILENT_CALLS = 3

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
    rules_supported: tuple[tuple[str, bool], ...] = ()
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
    # Whether a site's breaker is open (it does not answer at all): then a failed run or rule call
    # says nothing about the capability.
    site_down: Callable[[str], bool] = lambda site_id: False
    supported: dict[str, bool] = field(default_factory=dict)
    # Operation Rules per site: False once the site answered 501, or hung the calls
    # ``SILENT_CALLS`` times in a row, while its tasks answered (asked again every probe interval).
    rules_supported: dict[str, bool] = field(default_factory=dict)
    records: dict[str, RunRecord] = field(default_factory=dict)
    rules: dict[str, tuple[OperationRule, ...]] = field(default_factory=dict)
    # Task id -> (run id, 0-based phase index), from the targets of the runs on /metrics.
    task_phase: dict[str, tuple[str, int]] = field(default_factory=dict)
    _probed_at: dict[str, float] = field(default_factory=dict)
    _rules_probed_at: dict[str, float] = field(default_factory=dict)
    # Consecutive run / rule calls a site hung or failed with a 5xx, while it answered otherwise.
    _silent: dict[tuple[str, str], int] = field(default_factory=dict)
    # Sites whose runs were listed whole once: later listings stop at the first page of runs
    # already final here (Flow lists newest first and never deletes a run).
    _listed: set[str] = field(default_factory=set)
    # Sites whose last rule listing failed without saying the rules are missing: asked again at
    # the next task-runs round rather than the next discovery.
    _rules_retry: set[str] = field(default_factory=set)

    def rules_retry_due(self, site_id: str) -> bool:
        return site_id in self._rules_retry

    # -- polling -----------------------------------------------------------------------------------

    def _wanted(self, site_id: str) -> bool:
        if self.supported.get(site_id, True):
            return True
        return self.clock() - self._probed_at.get(site_id, 0.0) >= self.probe_interval

    def _unsupported(self, site_id: str, why: str = "not served by this NICo") -> None:
        self._probed_at[site_id] = self.clock()
        if self.supported.get(site_id) is not False:
            log.warning(
                "task runs unavailable on this site: run metrics off for the site",
                extra={"site_id": site_id, "reason": why, "recheck_in_s": self.probe_interval},
            )
        self.supported[site_id] = False

    def _capability_failed(self, site_id: str, capability: str, exc: NicoError) -> str | None:
        """Why ``capability`` counts as missing on the site after this failure, or None.

        A 501 is the site's Flow saying it has no such API (a v2.0 Flow behind a newer agent:
        release/v2.0 rest-api/flow/internal/service/server_impl_operation_run.go:63-103). A call
        hung or failed ``SILENT_CALLS`` times in a row while the site answers otherwise is an
        agent that never registered the workflow (main site-agent/pkg/components/managers/
        flowgrpc/subscriber.go:170-191 vs release/v2.0 :111-148). Failures while the whole site
        is down (its breaker open) say nothing about the capability.
        """
        if exc.status == 501:
            return "not implemented by the site's Flow (501)"
        key = (site_id, capability)
        if not isinstance(exc, TransportError | ServerError) or self.site_down(site_id):
            return None
        self._silent[key] = self._silent.get(key, 0) + 1
        if self._silent[key] >= SILENT_CALLS:
            self._silent.pop(key, None)
            return f"{SILENT_CALLS} calls in a row got no answer (an agent older than the REST server)"
        return None

    def _supported(self, site_id: str) -> None:
        if self.supported.get(site_id) is False:
            log.info("task runs served again: run metrics on for the site", extra={"site_id": site_id})
        self.supported[site_id] = True

    async def poll_site(self, site_id: str, deadline: float | None = None) -> None:
        """One round for one site: list its runs, refresh those not final."""
        if not self._wanted(site_id) or self.site_down(site_id):
            return
        try:
            listing = await self.client.list_task_runs(
                site_id, deadline=deadline, stop_after=self._stop_after(site_id)
            )
        except (RouteMissing, BadRequest) as exc:
            if isinstance(exc, RouteMissing) or _task_id_refusal(exc):
                self._unsupported(site_id)
            else:
                log.warning("task run listing refused", extra={"site_id": site_id, "error": str(exc)})
            return
        except NicoError as exc:
            why = self._capability_failed(site_id, "runs", exc)
            if why is not None:
                self._unsupported(site_id, why)
            else:
                log.info("task run listing failed", extra={"site_id": site_id, "error": str(exc)})
            return
        self._silent.pop((site_id, "runs"), None)
        self._listed.add(site_id)
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

    def _stop_after(self, site_id: str) -> Callable[[list[TaskRun]], bool] | None:
        """After a site's first whole listing: stop at a page whose runs are all final and known
        final here (every run not final is refreshed by id, whatever page it is on)."""
        if site_id not in self._listed:
            return None

        def known_final(page: list[TaskRun]) -> bool:
            return bool(page) and all(
                run.is_terminal
                and (
                    self.store.run_is_final(run.id)
                    or (run.id in self.records and self.records[run.id].final_seen_at is not None)
                )
                for run in page
            )

        return known_final

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
        without them keeps none. A site that answers 501, or hangs the call ``SILENT_CALLS`` times
        in a row, is asked again only every ``probe_interval``."""
        if self.site_down(site_id):
            return
        resting = self.clock() - self._rules_probed_at.get(site_id, 0.0) < self.probe_interval
        if self.rules_supported.get(site_id) is False and resting:
            return
        try:
            listing = await self.client.list_operation_rules(site_id, deadline=deadline)
        except (RouteMissing, BadRequest) as exc:
            if isinstance(exc, BadRequest) and not _task_id_refusal(exc):
                log.warning("operation rule listing refused", extra={"site_id": site_id, "error": str(exc)})
            self.rules.pop(site_id, None)
            return
        except NicoError as exc:
            why = self._capability_failed(site_id, "rules", exc)
            if why is None:
                self._rules_retry.add(site_id)  # the task-runs round asks again
                log.info("operation rule listing failed", extra={"site_id": site_id, "error": str(exc)})
                return
            self._rules_retry.discard(site_id)
            self._rules_probed_at[site_id] = self.clock()
            if self.rules_supported.get(site_id) is not False:
                log.warning(
                    "operation rules unavailable on this site: rule names off for the site",
                    extra={"site_id": site_id, "reason": why, "recheck_in_s": self.probe_interval},
                )
            self.rules_supported[site_id] = False
            return
        self._silent.pop((site_id, "rules"), None)
        self._rules_retry.discard(site_id)
        if self.rules_supported.get(site_id) is False:
            log.info("operation rules answer again", extra={"site_id": site_id})
        self.rules_supported[site_id] = True
        self.rules[site_id] = tuple(sorted(listing.items, key=lambda r: r.id))

    def drop_site(self, site_id: str) -> None:
        self.supported.pop(site_id, None)
        self.rules.pop(site_id, None)
        self.rules_supported.pop(site_id, None)
        self._listed.discard(site_id)
        self._rules_retry.discard(site_id)
        for run_id in [r for r, rec in self.records.items() if rec.site_id == site_id]:
            del self.records[run_id]

    # -- what the metrics and traces read -------------------------------------------------------

    def run_of(self, task_id: str) -> tuple[str, int] | None:
        """The run whose target names ``task_id``, and the target's 0-based phase index."""
        return self.task_phase.get(task_id)

    def view(self) -> RunsView:
        return RunsView(
            supported=tuple(sorted(self.supported.items())),
            rules_supported=tuple(sorted(self.rules_supported.items())),
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
