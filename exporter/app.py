"""``nico-task-exporter run``: config, client, state store, poller and scheduler, wired together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from exporter.addresses import parse_listen_address
from exporter.client import ClientHooks, NicoClient
from exporter.config import Config
from exporter.connect import nico_client
from exporter.learner import Learner
from exporter.metrics import ClientMetrics, SeriesOptions, TaskMetrics, family_filter
from exporter.operations import Classifier
from exporter.outbox import MemoryOutbox, SenderStats, SqliteOutbox
from exporter.persistence import NullPersistence, SqlitePersistence, open_state
from exporter.poller import Intervals, Poller
from exporter.ratelimit import TokenBucket
from exporter.scheduler import Runner
from exporter.sharding import Shard
from exporter.snapshot import Publisher
from exporter.state import Store
from exporter.tracing import TracingHandle, configure_tracing
from exporter.web import MetricsServer

log = logging.getLogger("exporter")

SUMMARY_INTERVAL = 60.0
PROBE_INTERVAL_MIN_S = 15.0


@dataclass
class Exporter:
    """The running parts, for the HTTP server and tests to look at."""

    config: Config
    client: NicoClient
    store: Store
    poller: Poller
    runner: Runner
    persistence: SqlitePersistence | NullPersistence
    registry: CollectorRegistry
    publisher: Publisher
    tracing: TracingHandle | None = None


def build(
    config: Config,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    environ: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> Exporter:
    """Construct everything ``run`` needs, without starting anything: the one place it is wired.

    Args:
        config: the validated configuration.
        transport: how the client reaches NICo (tests hand in an in-process simulator); the
            network by default.
        environ: the ``OTEL_*`` environment tracing is configured from; ``os.environ`` by default.
        clock: wall-clock epoch seconds (timestamps compared with NICo's, snapshot stamps).
        monotonic: seconds for the poller's own pacing.
    """
    client_metrics = ClientMetrics()
    hooks = ClientHooks(
        on_request=client_metrics.on_request,
        on_parse_error=client_metrics.on_parse_error,
        on_failure=client_metrics.on_failure,
    )
    # One request budget, spent by the client and watched by the poller (it sheds when it is short);
    # this replica's share when the replicas share one (sharding.fleet_max_requests_per_second).
    budget = config.sharding.request_budget(config.api.max_requests_per_second, config.api.burst)
    limiter = TokenBucket(budget.rate, budget.burst)
    client = nico_client(config.api, hooks=hooks, transport=transport, limiter=limiter)
    # A site that stopped answering is probed once per active interval (at least every 15 s).
    client.breakers.probe_interval = max(config.polling.active_interval, PROBE_INTERVAL_MIN_S)
    # Tracing is off unless an OTLP endpoint is configured (the standard OTEL_* environment).
    tracing = configure_tracing(config.tracing.service_name, environ)
    persistence = open_state(config.state.path)
    if tracing is not None and isinstance(persistence, NullPersistence):
        persistence = NullPersistence(MemoryOutbox())  # no state file: spans wait in memory
    store = Store(
        persistence,
        classifier=Classifier(config.operations.extra_patterns),
        finished_ttl=config.state.finished_task_ttl,
        terminal_retention=config.state.terminal_retention,
    )
    polling = config.polling
    poller = Poller(
        client,
        store,
        intervals=Intervals(
            active=polling.active_interval,
            tray_attribution=polling.tray_interval,
            reconcile=polling.reconcile_interval,
            discovery=polling.discovery_interval,
            final_fetch=polling.final_fetch_interval,
        ),
        sites=config.sites,
        shard=Shard(config.sharding.shard, config.sharding.total_shards),
        clock=clock,
        monotonic=monotonic,
        limiter=limiter,
    )
    task_metrics = TaskMetrics()
    store.subscribe(task_metrics)
    learner = Learner(store)  # learned durations, kept in the state file
    if tracing is not None:
        builder = tracing.builder(
            site_name=poller.site_name, rack_name=poller.rack_name, run_of=poller.runs.run_of
        )
        builder.attach(store)
        poller.runs.on_final = builder.on_run_final
    # Process, platform and GC metrics: prometheus_client's own collectors, safe from any thread.
    registry = CollectorRegistry(auto_describe=False)
    for standard in (ProcessCollector, PlatformCollector, GCCollector):
        standard(registry=registry)
    metrics = config.metrics
    publisher = Publisher(
        store,
        poller,
        task_metrics,
        client_metrics,
        spans=lambda: tracing.sender.stats if tracing is not None and tracing.sender else SenderStats(),
        learner=learner,
        options=SeriesOptions(
            status_one_hot=metrics.task_status == "one_hot",
            per_task_stages=metrics.per_task_stages,
            families=family_filter(metrics.allowlist, metrics.denylist),
        ),
        persistent=persistence.durable,
        clock=clock,
    )
    return Exporter(config, client, store, poller, Runner(poller), persistence, registry, publisher, tracing)


def start_tracing(exporter: Exporter) -> None:
    """Start the span sender (its own thread): pending spans left by the last process go first."""
    tracing, persistence = exporter.tracing, exporter.persistence
    if tracing is None:
        return
    if isinstance(persistence, SqlitePersistence):
        sender = tracing.start_sender(SqliteOutbox(persistence.path), durable=True)
    else:
        assert persistence.outbox is not None
        sender = tracing.start_sender(persistence.outbox, durable=False)
    exporter.store.after_commit(sender.wake)


async def _summaries(exporter: Exporter) -> None:
    """A status line a minute: what an operator tailing the log wants before metrics exist."""
    while True:
        await asyncio.sleep(SUMMARY_INTERVAL)
        store, view = exporter.store, exporter.poller.view()
        active = Counter(r.status.value for r in store.records() if not r.is_terminal)
        log.info(
            "status",
            extra={
                "racks": len(view.racks),
                "sites_up": sum(1 for site in view.sites if site.up),
                "sites": len(view.sites),
                "active_tasks": sum(active.values()),
                "finished_counted": sum(store.totals.tasks.values()),
                "cycle_seconds": round(view.last_cycle_seconds, 1),
                "active": dict(active),
                "final_fetch_queue": view.final_fetch_queue,
            },
        )


async def serve(exporter: Exporter, stop: asyncio.Event) -> None:
    """Serve ``/metrics`` and run the jobs until ``stop`` is set, then release everything."""
    config = exporter.config
    publisher = exporter.publisher
    server = MetricsServer(
        lambda: publisher.latest,
        exporter.registry,
        listen=parse_listen_address(config.web.listen_address),
        web_config_file=config.web.config_file,
        ready=lambda: exporter.poller.ready,
    )
    # The first snapshot before the first scrape: what the state file restored (finished tasks
    # within their TTL, their failure infos, the totals) is on /metrics from the start, never an
    # empty page that would resolve their alerts.
    publisher.publish()
    await server.start()
    start_tracing(exporter)
    log.info("serving metrics", extra={"url": server.url + "/metrics"})
    summaries = asyncio.create_task(_summaries(exporter))
    publishing = asyncio.create_task(publisher.run(stop))
    try:
        await exporter.runner.run(stop)
    finally:
        stop.set()
        await publishing
        await server.stop()
        summaries.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await summaries
        await exporter.client.aclose()
        if exporter.tracing is not None:  # send what is pending, bounded (tracing.SHUTDOWN_TIMEOUT_S)
            await asyncio.to_thread(exporter.tracing.shutdown)
        exporter.persistence.close()
        log.info("stopped")


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (a clean shutdown) instead of killing the loop."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def run(config: Config, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``), then stop cleanly."""
    stop = stop or asyncio.Event()
    stop_on_signals(stop)
    exporter = build(config)
    log.info("starting", extra={"config": config.redacted_summary()})
    await serve(exporter, stop)
