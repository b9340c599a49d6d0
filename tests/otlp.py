"""An OTLP/HTTP traces receiver for the end-to-end tests: ``http.server`` on 127.0.0.1 that
decodes every ``POST /v1/traces`` with opentelemetry-proto, so assertions are about the bytes on
the wire."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span


@dataclass(frozen=True)
class WireSpan:
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root
    name: str
    task_status: str = ""  # the root's nico.task.status attribute

    @property
    def task_id(self) -> str:
        return str(uuid.UUID(self.trace_id))


@dataclass
class Received:
    spans: list[WireSpan] = field(default_factory=list)
    requests: int = 0
    # While set the receiver answers 503 and keeps nothing (a collector that is down).
    down: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> list[WireSpan]:
        with self.lock:
            return list(self.spans)

    def roots(self) -> Counter[str]:
        """Root spans by task id (the trace id read back as a UUID)."""
        return Counter(str(uuid.UUID(s.trace_id)) for s in self.snapshot() if not s.parent_span_id)


def _status(span: Span) -> str:
    return next((a.value.string_value for a in span.attributes if a.key == "nico.task.status"), "")


def _handler(received: Received) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != "/v1/traces":
                self.send_response(404)
                self.end_headers()
                return
            if received.down:
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            spans = [
                WireSpan(s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.name, _status(s))
                for rs in request.resource_spans
                for ss in rs.scope_spans
                for s in ss.spans
            ]
            with received.lock:
                received.spans.extend(spans)
                received.requests += 1
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:  # quiet test output
            return

    return Handler


@contextlib.contextmanager
def receiver(received: Received, port: int = 0) -> Iterator[tuple[str, ThreadingHTTPServer]]:
    """An OTLP/HTTP traces receiver on loopback (a free port unless given); yields its base URL
    and server. Leaving the block takes it down: its port then refuses connections."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(received))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
