"""Scrapes stay correct while the state churns: four scrapers against the real HTTP server while
the poller's side changes over 100 tasks a second on a store of 10,000 tracked tasks.

The expectations are independent of the renderer: client_python's parsers (text and
OpenMetrics) and ``promtool check metrics`` judge the bodies; counters are compared between each
scraper's consecutive bodies; the one-hot rule is checked per task on the parsed samples.
``promtool check metrics`` reads the text format only, so OpenMetrics bodies are judged by
client_python's OpenMetrics parser, which is the stricter of the two.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics import parser as om_parser
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.render import LAYOUT, TASKS, State, _task, build_state
from exporter.metrics import STATUSES
from exporter.models import Task
from exporter.web import MetricsServer
from tests.conftest import skip_or_fail

pytestmark = pytest.mark.e2e

# Paced (a flat-out churn grows the store, and every body, by thousands of finished tasks a
# minute); the test asserts it made at least 100 changes/s while the scrapers ran.
CHURN_PER_S = 300
SCRAPES_PER_THREAD = 2
SCRAPE_INTERVAL_S = 1.0  # as a Prometheus scrape interval, shortened: a new snapshot each time
PUBLISH_EVERY_S = 0.5
SCRAPERS = (
    ("text", {"Accept-Encoding": "identity"}),
    ("openmetrics", {"Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "identity"}),
    ("text", {"Accept-Encoding": "gzip"}),
    ("openmetrics", {"Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"}),
)


def _finished(rng: random.Random, task_id: str, now: datetime) -> dict[str, Any]:
    """A terminal version of a task: Succeeded (every stage completed) or Failed at its running stage."""
    data = _task(rng, now, task_id)
    failed = rng.random() < 0.3
    data["status"] = "Failed" if failed else "Succeeded"
    data["finished"] = now.isoformat()
    for stage in data["report"]["stages"]:
        status = stage["status"]
        if status == "running" and failed:
            stage["status"] = "failed"
            for step in stage["steps"]:
                step.update(status="failed", error="Timed out waiting for tray")
        elif status != "completed" and not failed:
            stage["status"] = "completed"
            stage["startedAt"] = stage.get("startedAt") or now.strftime("%Y-%m-%dT%H:%M:%SZ")
            for step in stage["steps"]:
                step["status"] = "completed"
        if stage["status"] in ("completed", "failed"):
            stage["finishedAt"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return data


@dataclass
class Churn:
    """The poller's side, on its own thread: stage moves, finishes and new tasks; a publish every
    0.5 s. It alone touches the store and the publisher; the HTTP threads read snapshots."""

    state: State
    changes: int = 0
    finished: int = 0
    errors: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        rng = random.Random(3)
        store, tasks = self.state.store, self.state.tasks
        next_publish = time.monotonic()
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                now = datetime.now(UTC)
                index = rng.randrange(len(tasks))
                site_id, rack_id, task_id = tasks[index]
                if rng.random() < 0.6:
                    task = Task.parse(_task(rng, now, task_id, rng.randrange(len(LAYOUT))))
                    store.observe(site_id, rack_id, task, time.time())
                else:
                    store.observe(site_id, rack_id, Task.parse(_finished(rng, task_id, now)), time.time())
                    fresh = Task.parse(_task(rng, now))
                    store.observe(site_id, rack_id, fresh, time.time())
                    tasks[index] = (site_id, rack_id, fresh.id)
                    self.finished += 1
                store.commit()
                self.changes += 1
                if time.monotonic() >= next_publish:
                    self.state.publisher.publish()
                    next_publish += PUBLISH_EVERY_S
                pause = 1.0 / CHURN_PER_S - (time.monotonic() - started)
                if pause > 0:
                    time.sleep(pause)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)


@dataclass
class Body:
    kind: str
    encoding: str | None
    text: str


def _scrape(url: str, kind: str, headers: dict[str, str], out: list[Body], errors: list[str]) -> None:
    with httpx.Client(timeout=120) as http:
        for n in range(SCRAPES_PER_THREAD):
            if n:
                time.sleep(SCRAPE_INTERVAL_S)
            try:
                resp = http.get(url, headers=headers)
            except httpx.HTTPError as exc:
                errors.append(f"{kind}: {exc!r}")
                continue
            if resp.status_code != 200:
                errors.append(f"{kind}: HTTP {resp.status_code}: {resp.text[:200]}")
                continue
            out.append(Body(kind, resp.headers.get("content-encoding"), resp.text))


def _families(body: Body) -> list[Any]:
    parse = (
        om_parser.text_string_to_metric_families
        if body.kind == "openmetrics"
        else text_string_to_metric_families
    )
    return list(parse(body.text))


def _counters(families: list[Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample that must never go down: counters and histogram buckets, sums and counts."""
    out = {}
    for family in families:
        if family.type not in ("counter", "histogram"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _status_by_task(families: list[Any]) -> Iterator[tuple[str, list[tuple[str, float]]]]:
    by_task: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for family in families:
        if family.name == "nico_task_status":
            for sample in family.samples:
                by_task[sample.labels["task_id"]].append((sample.labels["status"], sample.value))
    return iter(by_task.items())


@pytest.fixture(scope="module")
def stress() -> tuple[Churn, list[list[Body]], list[str], float]:
    state = build_state()
    assert len(state.tasks) >= 10_000 == TASKS
    state.publisher.publish()
    churn = Churn(state)
    bodies: list[list[Body]] = [[] for _ in SCRAPERS]
    errors: list[str] = []

    async def main() -> float:
        server = MetricsServer(lambda: state.publisher.latest, listen=("127.0.0.1", 0))
        await server.start()
        thread = threading.Thread(target=churn.run, daemon=True)
        thread.start()
        try:
            await asyncio.sleep(1.0)  # the churn is running before the first scrape
            before, started = churn.changes, time.monotonic()
            scrapers = [
                threading.Thread(target=_scrape, args=(server.url + "/metrics", kind, headers, out, errors))
                for (kind, headers), out in zip(SCRAPERS, bodies, strict=True)
            ]
            for scraper in scrapers:
                scraper.start()
            for scraper in scrapers:
                await asyncio.to_thread(scraper.join)
            return (churn.changes - before) / (time.monotonic() - started)
        finally:
            churn.stop.set()
            thread.join()
            await server.stop()

    rate = asyncio.run(main())
    return churn, bodies, errors, rate


def test_the_churn_is_real_and_nothing_failed(
    stress: tuple[Churn, list[list[Body]], list[str], float],
) -> None:
    churn, bodies, errors, rate = stress
    assert churn.errors == [] and errors == []
    assert rate >= 100, f"the poller's side made only {rate:.0f} changes/s while scrapers ran"
    assert churn.finished > 0
    assert [len(b) for b in bodies] == [SCRAPES_PER_THREAD] * len(SCRAPERS)
    assert [b[0].encoding for b in bodies] == [None, None, "gzip", "gzip"]
    for scraper in bodies:
        # Consecutive scrapes saw different snapshots (the state moved between them).
        assert len({body.text for body in scraper}) == len(scraper)


@dataclass
class Judged:
    """What a body's parse shows (computed in a worker process: parsing 30 MB takes seconds)."""

    duplicate_families: list[str]
    tasks: int
    not_one_hot: list[str]
    counters: dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _judge(body: Body) -> Judged:
    families = _families(body)
    names = [f.name for f in families]
    tasks, not_one_hot = 0, []
    for task_id, statuses in _status_by_task(families):
        tasks += 1
        if sorted(s for s, _ in statuses) != sorted(STATUSES) or sorted(v for _, v in statuses) != [0.0] * (
            len(STATUSES) - 1
        ) + [1.0]:
            not_one_hot.append(task_id)
    return Judged(sorted({n for n in names if names.count(n) > 1}), tasks, not_one_hot, _counters(families))


def test_every_body_parses_with_each_family_once_and_one_hot_status(
    stress: tuple[Churn, list[list[Body]], list[str], float],
) -> None:
    _, bodies, _, _ = stress
    with ProcessPoolExecutor(max_workers=2) as pool:
        judged = [list(pool.map(_judge, scraper)) for scraper in bodies]
    finished = "nico_tasks_finished_total"
    for scraper in judged:
        previous: Judged | None = None
        for body in scraper:
            assert body.duplicate_families == [], "a family's HELP/TYPE appeared twice"
            assert body.not_one_hot == []
            assert body.tasks >= TASKS
            if previous is not None:
                before = previous.counters
                went_down = {
                    k: (before[k], v) for k, v in body.counters.items() if k in before and v < before[k]
                }
                assert went_down == {}
                assert sum(v for (n, _), v in body.counters.items() if n == finished) > sum(
                    v for (n, _), v in before.items() if n == finished
                ), "tasks finished between the scrapes but the counter did not move"
            previous = body


def test_every_text_body_passes_promtool(
    stress: tuple[Churn, list[list[Body]], list[str], float], tmp_path: Path
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("`promtool` is not installed (Debian: apt-get install prometheus)")
    assert promtool is not None
    _, bodies, _, _ = stress
    texts = [body for scraper in bodies for body in scraper if body.kind == "text"]
    assert len(texts) == 2 * SCRAPES_PER_THREAD
    for n, body in enumerate(texts):
        path = tmp_path / f"body-{n}.prom"
        path.write_text(body.text)
        with path.open("rb") as stdin:
            result = subprocess.run(
                [promtool, "check", "metrics"], stdin=stdin, capture_output=True, text=True, check=False
            )
        # promtool exits 0 on a valid body; lint findings (naming advice) would print but exit 3.
        assert result.returncode == 0, (result.stdout + result.stderr)[:2000]
