"""The span outbox: a span leaves it only after the export of its batch succeeded.

Flow, one way:

1. On the poller's thread, :class:`exporter.tracing.SpanBuilder` encodes each span made final by
   a transition into the store's batch (``StateBatch.spans``). So a span becomes pending in the
   same SQLite transaction as the transition that makes it final: a kill -9 at any moment leaves
   both or neither, and a transition redelivered after a restart builds the same span again.
2. After each commit the poller wakes the :class:`Sender` (its own thread). The sender reads
   pending spans with its own connection to the state file, exports a batch, and deletes the
   batch's rows only once the export succeeded. On failure it keeps them and retries with
   backoff. After a restart the pending rows are sent again.

Duplicates: a span whose export succeeded and whose row was not yet deleted when the process
died is sent twice. Span ids are deterministic, so the re-send is the identical span and a
backend that deduplicates (Tempo, Jaeger) keeps one. The spans found pending at start are
counted as ``nico_exporter_spans_resent_total``: an upper bound on such duplicates.

Bounds: at most ``max_pending`` spans wait (default 100,000, a few tens of MB of state file);
a commit that would exceed it drops the oldest, counted as ``nico_exporter_spans_dropped_total``.
In memory the sender holds one batch, whatever the collector does.

Without a state file the outbox is in memory (:class:`MemoryOutbox`): the same flow, and nothing
survives a restart, like the rest of the state.

Threads: the sender's thread owns its connection and its counters, and publishes what the
metrics read as a frozen :class:`SenderStats` (one reference assignment). The poller's thread
owns the writes. The two meet only in SQLite (or the memory outbox's lock).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

log = logging.getLogger(__name__)

MAX_PENDING = 100_000
BATCH_SIZE = 512
BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
IDLE_WAKE_S = 5.0  # look for pending spans at least this often, woken or not

Row = tuple[int, str]  # (seq, encoded span)


class Outbox(Protocol):
    """What the sender reads: pending spans in order, and marking a batch done."""

    def pending(self, limit: int) -> list[Row]: ...

    def done(self, seqs: Sequence[int]) -> None: ...

    def count(self) -> int: ...

    def close(self) -> None: ...


class SqliteOutbox:
    """The ``span_outbox`` table of the state file, through the sender's own connection."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._conn: sqlite3.Connection | None = None

    def _c(self) -> sqlite3.Connection:
        # Opened on first use, on the sender's thread, which alone uses it.
        if self._conn is None:
            self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._conn.execute("PRAGMA busy_timeout = 30000")
        return self._conn

    def pending(self, limit: int) -> list[Row]:
        rows = self._c().execute("SELECT seq, body FROM span_outbox ORDER BY seq LIMIT ?", (limit,))
        return [(int(seq), str(body)) for seq, body in rows]

    def done(self, seqs: Sequence[int]) -> None:
        c = self._c()
        c.execute("BEGIN IMMEDIATE")
        try:
            c.executemany("DELETE FROM span_outbox WHERE seq = ?", [(s,) for s in seqs])
            c.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            raise

    def count(self) -> int:
        return int(self._c().execute("SELECT COUNT(*) FROM span_outbox").fetchone()[0])

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None


class MemoryOutbox:
    """The outbox without a state file: a bounded queue, shared under a lock with the sender."""

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self.max_pending = max_pending
        self._rows: collections.deque[tuple[int, str, str]] = collections.deque()
        self._keys: set[str] = set()
        self._seq = 0
        self._lock = threading.Lock()

    def add(self, rows: Sequence[tuple[str, str]]) -> int:
        """Append (key, body) rows (a key already pending is ignored); returns how many old rows
        were dropped to stay within the bound."""
        dropped = 0
        with self._lock:
            for key, body in rows:
                if key in self._keys:
                    continue
                self._seq += 1
                self._rows.append((self._seq, key, body))
                self._keys.add(key)
            while len(self._rows) > self.max_pending:
                _, key, _ = self._rows.popleft()
                self._keys.discard(key)
                dropped += 1
        return dropped

    def pending(self, limit: int) -> list[Row]:
        with self._lock:
            return [(seq, body) for seq, _, body in list(self._rows)[:limit]]

    def done(self, seqs: Sequence[int]) -> None:
        gone = set(seqs)
        with self._lock:
            kept = collections.deque(row for row in self._rows if row[0] not in gone)
            for seq, key, _ in self._rows:
                if seq in gone:
                    self._keys.discard(key)
            self._rows = kept

    def count(self) -> int:
        with self._lock:
            return len(self._rows)

    def close(self) -> None:
        return None


@dataclass(frozen=True)
class SenderStats:
    """What the sender has done, as the metrics show it (replaced whole, never changed)."""

    exported: int = 0
    errors: int = 0
    resent: int = 0
    pending: int = 0
    # Times the sender found nothing pending (tests wait on it: see wait_until_sent).
    idle: int = 0


class Sender:
    """Exports the outbox's pending spans on its own thread (see the module docstring).

    Args:
        outbox: where pending spans wait.
        exporter: the OTLP span exporter.
        decode: an encoded span back to a :class:`ReadableSpan`.
        batch_size: spans per export call.
        durable: the outbox survived the last process (pending spans at start are re-sends).
    """

    def __init__(
        self,
        outbox: Outbox,
        exporter: SpanExporter,
        decode: Callable[[str], ReadableSpan],
        *,
        batch_size: int = BATCH_SIZE,
        durable: bool = True,
    ) -> None:
        self.outbox = outbox
        self.exporter = exporter
        self.decode = decode
        self.batch_size = batch_size
        self.durable = durable
        self.stats = SenderStats()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- called from the poller's thread ------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="span-sender", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """New spans were committed."""
        self._wake.set()

    def stop(self, timeout_s: float) -> None:
        """Send what is pending for up to ``timeout_s``, then stop; the rest stays pending."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("span export did not finish before shutdown; the rest stays pending")
                with contextlib.suppress(Exception):
                    self.exporter.shutdown()  # aborts its retries
                self._thread.join(5.0)

    def drain(self) -> bool:
        """Send everything pending on the calling thread (tests without a sender thread); False
        if an export failed (what it held stays pending)."""
        while True:
            sent = self._send_one_batch()
            if sent is None:
                return False
            if sent == 0:
                return True

    def drain_after_commit(self) -> None:
        """:meth:`drain` as a ``Store.after_commit`` listener."""
        self.drain()

    # -- the sender's thread -------------------------------------------------------------------

    def _publish(self, **changes: int) -> None:
        self.stats = dataclasses.replace(self.stats, **changes)

    def _run(self) -> None:
        try:
            pending = self.outbox.count()
            self._publish(resent=pending if self.durable else 0, pending=pending)
            if pending and self.durable:
                log.info("sending spans left pending by the last process", extra={"spans": pending})
            failures = 0
            while True:
                sent = self._send_one_batch()
                if sent is None:  # the export failed: back off, unless stopping
                    failures += 1
                    if self._stop.is_set():
                        return
                    self._stop.wait(BACKOFF_S[min(failures, len(BACKOFF_S)) - 1])
                    continue
                failures = 0
                if sent:
                    continue  # there may be more
                if self._stop.is_set():
                    return
                self._wake.wait(IDLE_WAKE_S)
                self._wake.clear()
        except Exception:
            log.exception("span sender stopped")
        finally:
            self.outbox.close()

    def _send_one_batch(self) -> int | None:
        """Export one batch; its size (0: nothing pending), or None when the export failed."""
        rows = self.outbox.pending(self.batch_size)
        if not rows:
            self._publish(pending=0, idle=self.stats.idle + 1)
            return 0
        spans = []
        undecodable = []
        for seq, body in rows:
            try:
                spans.append(self.decode(body))
            except (ValueError, KeyError, TypeError):
                log.error("unreadable span in the outbox; dropped", extra={"seq": seq})
                undecodable.append(seq)
        try:
            result = self.exporter.export(spans) if spans else SpanExportResult.SUCCESS
        except Exception:
            log.exception("span export failed")
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self._publish(errors=self.stats.errors + len(spans), pending=self.outbox.count())
            return None
        self.outbox.done([seq for seq, _ in rows])
        self._publish(exported=self.stats.exported + len(spans), pending=self.outbox.count())
        return len(rows)


def wait_until_sent(sender: Sender, timeout_s: float) -> bool:
    """For tests and benchmarks: True once the sender found nothing pending in a look that began
    after this call (it is woken for it), False after ``timeout_s``."""
    start = sender.stats.idle
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # Two empty looks: the first may have begun before the call.
        if sender.stats.idle >= start + 2:
            return True
        sender.wake()
        time.sleep(0.02)
    return False
