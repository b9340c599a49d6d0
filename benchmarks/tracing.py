"""Spans built and exported per second: store transitions to OTLP/HTTP bytes at a local receiver.

Finished tasks (three stages, five steps, a status change each) go through a real ``Store`` with
the ``SpanBuilder`` attached; each commit hands their spans to a ``BatchSpanProcessor`` whose
OTLP/HTTP exporter posts to a receiver on 127.0.0.1 that decodes and counts them. The figure is
spans received per second of wall time, from the first observation to the last span received.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource

from exporter.models import Task
from exporter.outbox import SqliteOutbox, wait_until_sent
from exporter.persistence import SqlitePersistence
from exporter.state import Store
from exporter.tracing import TracingHandle

SITE = "11111111-1111-4111-8111-111111111111"
RACK = "22222222-2222-4222-8222-222222222222"
TASKS = 3000
PER_COMMIT = 50
T0 = 1_780_000_000.0


class _Count:
    def __init__(self) -> None:
        self.spans = 0
        self.lock = threading.Lock()


@contextlib.contextmanager
def _receiver() -> Iterator[tuple[str, _Count]]:
    count = _Count()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = ExportTraceServiceRequest()
            request.ParseFromString(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            with count.lock:
                count.spans += n
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", count
    finally:
        server.shutdown()
        server.server_close()


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


def _task(n: int) -> Task:
    def step(kind: str, a: float, b: float) -> dict[str, Any]:
        return {
            "componentType": kind,
            "status": "completed",
            "totalComponents": 9,
            "startedAt": _iso(a),
            "finishedAt": _iso(b),
        }

    def stage(number: int, a: float, b: float, *steps: dict[str, Any]) -> dict[str, Any]:
        return {
            "number": number,
            "status": "completed",
            "startedAt": _iso(a),
            "finishedAt": _iso(b),
            "steps": list(steps),
        }

    t = T0 + n
    return Task.parse(
        {
            "id": f"00000000-0000-4000-8000-{n:012d}",
            "status": "Succeeded",
            "description": "API power cycle Rack",
            "created": _iso(t),
            "started": _iso(t + 5),
            "finished": _iso(t + 95),
            "report": {
                "version": 1,
                "stages": [
                    stage(1, t + 5, t + 20, step("PowerShelf", t + 5, t + 20)),
                    stage(
                        2, t + 20, t + 60, step("Compute", t + 20, t + 60), step("NVSwitch", t + 20, t + 50)
                    ),
                    stage(
                        3, t + 60, t + 95, step("Compute", t + 60, t + 95), step("NVSwitch", t + 60, t + 90)
                    ),
                ],
            },
        }
    )


def run() -> dict[str, float]:
    """Spans a second from the first commit to the receiver, through the outbox in the state file."""
    tasks = [_task(n) for n in range(TASKS)]
    with _receiver() as (url, received), tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "state.db"
        handle = TracingHandle(
            OTLPSpanExporter(endpoint=url + "/v1/traces"),
            Resource.create({"service.name": "nico"}),
            "http",
            url,
        )
        persistence = SqlitePersistence(db)
        store = Store(persistence)
        handle.builder().attach(store)
        sender = handle.start_sender(SqliteOutbox(db), durable=True)
        store.after_commit(sender.wake)
        began = time.perf_counter()
        for start in range(0, TASKS, PER_COMMIT):
            for task in tasks[start : start + PER_COMMIT]:
                store.observe(SITE, RACK, task, T0 + 200)
            store.commit()
        if not wait_until_sent(sender, 120):
            raise RuntimeError("the outbox did not empty within 120 s")
        elapsed = time.perf_counter() - began
        stats = sender.stats
        handle.shutdown()
        persistence.close()
    if stats.errors or received.spans != stats.exported:
        raise RuntimeError(f"export failed: {stats}, received {received.spans}")
    return {"spans_per_s": round(received.spans / elapsed)}


if __name__ == "__main__":
    print(run())
