"""What exactly-once needs across restarts, in SQLite (stdlib ``sqlite3``, WAL).

Kept: delivered transition keys of tracked tasks, terminal task ids (pruned by age), rack
ledgers (baseline, creation counter, tasks seen and counted unobserved), finished and unobserved
totals (so counters continue instead of resetting), per-tray failure totals, the tasks being
tracked or named and awaiting their final fetch (to fetch them again after a restart), finished
tasks within their TTL (their series, failure infos among them, survive a restart), and the span
outbox (spans made final, until their export succeeded: see ``exporter/outbox.py``). Each poll's changes are written in one transaction, so a kill -9 at any moment leaves
either all of a poll's transitions or none: none are then delivered again, once.

A corrupt file is moved aside and a fresh one started; an unwritable one leaves the exporter
running in memory. Either way the error is logged clearly and the exporter does not crash-loop;
a fresh store has no baselines, so history is re-baselined rather than counted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from exporter.outbox import MemoryOutbox

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS racks (
    rack_id TEXT PRIMARY KEY, site_id TEXT NOT NULL, baselined_at REAL, baseline_total INTEGER,
    last_total INTEGER, seen_new INTEGER NOT NULL DEFAULT 0, unobserved INTEGER NOT NULL DEFAULT 0,
    explained_through REAL
);
CREATE TABLE IF NOT EXISTS unobserved (site_id TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS terminal (task_id TEXT PRIMARY KEY, rack_id TEXT NOT NULL, finished_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS terminal_finished ON terminal (finished_at);
CREATE TABLE IF NOT EXISTS delivered (key TEXT PRIMARY KEY, task_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS delivered_task ON delivered (task_id);
CREATE TABLE IF NOT EXISTS totals (
    site_id TEXT NOT NULL, status TEXT NOT NULL, operation TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (site_id, status, operation)
);
CREATE TABLE IF NOT EXISTS tray_failures (
    site_id TEXT NOT NULL, rack_id TEXT NOT NULL, tray_id TEXT NOT NULL, tray_type TEXT NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY (site_id, rack_id, tray_id, tray_type)
);
CREATE TABLE IF NOT EXISTS tracked (
    task_id TEXT PRIMARY KEY, site_id TEXT NOT NULL, rack_id TEXT NOT NULL, trays TEXT
);
CREATE TABLE IF NOT EXISTS finished (
    task_id TEXT PRIMARY KEY, site_id TEXT NOT NULL, rack_id TEXT NOT NULL, trays TEXT,
    first_seen REAL NOT NULL, finished_seen_at REAL NOT NULL, task TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_sites (site_id TEXT PRIMARY KEY, baselined_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS runs_final (run_id TEXT PRIMARY KEY, site_id TEXT NOT NULL, finished_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS run_totals (
    site_id TEXT NOT NULL, status TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (site_id, status)
);
CREATE TABLE IF NOT EXISTS learned (key TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS span_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, body TEXT NOT NULL
);
"""

TrackedRow = tuple[str, str, frozenset[str] | None]
# site_id, rack_id, trays, first_seen, finished_seen_at, the task as JSON (its API form)
FinishedRow = tuple[str, str, frozenset[str] | None, float, float, str]
# site_id, baselined_at, baseline_total, last_total, seen_new, unobserved, explained_through
RackRow = tuple[str, float | None, int | None, int | None, int, int, float | None]

# Schema 1 kept a different rack row (a listing's expected count): its ledgers start afresh.
_MIGRATE_FROM_1 = """
DROP TABLE racks;
"""
# Schema 2 did not keep the time through which a rack's counter was explained in full: such
# ledgers know none, as after a restart of that version.
_MIGRATE_FROM_2 = """
ALTER TABLE racks ADD COLUMN explained_through REAL;
"""


@dataclass
class StateBatch:
    """Changes since the last commit; written in one transaction."""

    delivered: list[tuple[str, str]] = field(default_factory=list)
    terminal: dict[str, tuple[str, float]] = field(default_factory=dict)
    racks: dict[str, RackRow] = field(default_factory=dict)
    totals: dict[tuple[str, str, str], int] = field(default_factory=dict)
    tray_failures: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    unobserved: dict[str, int] = field(default_factory=dict)
    tracked: dict[str, TrackedRow] = field(default_factory=dict)
    untracked: set[str] = field(default_factory=set)
    forget_delivered: set[str] = field(default_factory=set)
    forget_terminal: set[str] = field(default_factory=set)
    # Finished tasks within their TTL (their series survive a restart), and those that left.
    finished: dict[str, FinishedRow] = field(default_factory=dict)
    forget_finished: set[str] = field(default_factory=set)
    # Spans made final by this batch's transitions (span key, encoded span): the outbox.
    spans: list[tuple[str, str]] = field(default_factory=list)
    # Task Runs: each site's baseline time, the runs seen final (counted or history), the totals.
    run_sites: dict[str, float] = field(default_factory=dict)
    runs_final: dict[str, tuple[str, float]] = field(default_factory=dict)
    run_totals: dict[tuple[str, str], int] = field(default_factory=dict)
    # What the duration learner knows, by key (serialised sketches): exporter/learner.py.
    learned: dict[str, bytes] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not any(
            (
                self.finished,
                self.forget_finished,
                self.spans,
                self.delivered,
                self.terminal,
                self.racks,
                self.totals,
                self.tray_failures,
                self.unobserved,
                self.tracked,
                self.untracked,
                self.forget_delivered,
                self.forget_terminal,
                self.run_sites,
                self.runs_final,
                self.run_totals,
                self.learned,
            )
        )


@dataclass
class LoadedState:
    racks: dict[str, RackRow] = field(default_factory=dict)
    terminal: dict[str, float] = field(default_factory=dict)
    delivered: list[tuple[str, str]] = field(default_factory=list)
    totals: dict[tuple[str, str, str], int] = field(default_factory=dict)
    tray_failures: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    unobserved: dict[str, int] = field(default_factory=dict)
    tracked: dict[str, TrackedRow] = field(default_factory=dict)
    finished: dict[str, FinishedRow] = field(default_factory=dict)
    run_sites: dict[str, float] = field(default_factory=dict)
    runs_final: dict[str, tuple[str, float]] = field(default_factory=dict)
    run_totals: dict[tuple[str, str], int] = field(default_factory=dict)
    learned: dict[str, bytes] = field(default_factory=dict)


class Persistence(Protocol):
    def load(self) -> LoadedState: ...

    def write(self, *batches: StateBatch) -> bool:
        """Write ``batches``, in order, in one transaction; False (logged, counted) if they could
        not be written (then none of them is)."""
        ...

    def close(self) -> None: ...


class NullPersistence:
    """Nothing survives a restart (tests, or a state file that cannot be used).

    ``outbox``: where committed spans wait for export when tracing is on (in memory).
    """

    durable = False
    write_errors = 0

    def __init__(self, outbox: MemoryOutbox | None = None) -> None:
        self.outbox = outbox
        self.spans_dropped = 0

    def load(self) -> LoadedState:
        return LoadedState()

    def write(self, *batches: StateBatch) -> bool:
        if self.outbox is not None:
            for batch in batches:
                self.spans_dropped += self.outbox.add(batch.spans)
        return True

    def close(self) -> None:
        return None


class StateFileError(Exception):
    """The state file cannot be used at all (unwritable directory, not a database we can fix)."""


class SqlitePersistence:
    """The state file. ``open_state`` is the forgiving way to get one."""

    durable = True

    def __init__(self, path: str | os.PathLike[str], *, max_pending_spans: int = 100_000) -> None:
        self.path = Path(path)
        self.write_errors = 0
        self.max_pending_spans = max_pending_spans
        self.spans_dropped = 0
        self._conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateFileError(
                f"cannot create the directory of state file {self.path}: {exc.strerror}"
            ) from None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a killed process loses nothing committed (only an OS crash could).
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            check = conn.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                conn.close()
                raise sqlite3.DatabaseError(f"integrity check failed: {check[0] if check else 'no answer'}")
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is not None and int(row[0]) == 1:
                log.warning(
                    "state file from an older exporter: rack ledgers start again",
                    extra={"path": str(self.path)},
                )
                conn.executescript(_MIGRATE_FROM_1)
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
            elif row is not None and int(row[0]) == 2:
                conn.executescript(_MIGRATE_FROM_2)
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
            elif row is not None and int(row[0]) != SCHEMA_VERSION:
                conn.close()
                raise sqlite3.DatabaseError(f"schema version {row[0]}, this exporter writes {SCHEMA_VERSION}")
            conn.executescript(_SCHEMA)
            if row is None:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
            conn.execute("CREATE TABLE IF NOT EXISTS _probe (x)")  # fails now if read-only
            conn.execute("DROP TABLE _probe")
            return conn
        except sqlite3.DatabaseError as exc:
            if _is_unwritable(exc):
                raise StateFileError(f"state file {self.path} is not writable: {exc}") from None
            raise

    def load(self) -> LoadedState:
        c = self._conn
        state = LoadedState()
        state.racks = {
            r: (s, b, bt, lt, int(n), int(u), e)
            for r, s, b, bt, lt, n, u, e in c.execute(
                "SELECT rack_id, site_id, baselined_at, baseline_total, last_total, seen_new, unobserved,"
                " explained_through FROM racks"
            )
        }
        state.unobserved = {s: int(n) for s, n in c.execute("SELECT site_id, count FROM unobserved")}
        state.terminal = {t: float(f) for t, _, f in c.execute("SELECT * FROM terminal")}
        state.delivered = [(k, t) for k, t in c.execute("SELECT key, task_id FROM delivered")]
        state.totals = {(s, st, o): int(n) for s, st, o, n in c.execute("SELECT * FROM totals")}
        state.run_sites = {s: float(t) for s, t in c.execute("SELECT site_id, baselined_at FROM run_sites")}
        state.runs_final = {
            r: (s, float(t)) for r, s, t in c.execute("SELECT run_id, site_id, finished_at FROM runs_final")
        }
        state.run_totals = {
            (s, st): int(n) for s, st, n in c.execute("SELECT site_id, status, count FROM run_totals")
        }
        state.learned = {k: bytes(b) for k, b in c.execute("SELECT key, body FROM learned")}
        state.tray_failures = {
            (s, r, t, ty): int(n) for s, r, t, ty, n in c.execute("SELECT * FROM tray_failures")
        }
        state.tracked = {t: (s, r, _trays(trays)) for t, s, r, trays in c.execute("SELECT * FROM tracked")}
        state.finished = {
            t: (s, r, _trays(trays), float(first), float(seen), task)
            for t, s, r, trays, first, seen, task in c.execute(
                "SELECT task_id, site_id, rack_id, trays, first_seen, finished_seen_at, task FROM finished"
            )
        }
        return state

    def write(self, *batches: StateBatch) -> bool:
        try:
            self._write(batches)
        except sqlite3.Error as exc:
            self.write_errors += 1
            # The store keeps working in memory; exactly-once across a restart is what is at risk.
            log.error("could not write the state file", extra={"path": str(self.path), "error": str(exc)})
            return False
        return True

    def _write(self, batches: tuple[StateBatch, ...]) -> None:
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            for batch in batches:
                self._apply(batch)
            dropped = self._bound_outbox() if any(b.spans for b in batches) else 0
            c.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            raise
        if dropped:
            self.spans_dropped += dropped
            log.warning("span outbox full: oldest spans dropped", extra={"spans": dropped})

    def _bound_outbox(self) -> int:
        """Drop the oldest pending spans beyond ``max_pending_spans``; how many were dropped."""
        c = self._conn
        low, high = c.execute("SELECT MIN(seq), MAX(seq) FROM span_outbox").fetchone()
        if low is None or high - low + 1 <= self.max_pending_spans:
            return 0  # seq has gaps where spans were sent: this bound is cheap and never low
        excess = int(c.execute("SELECT COUNT(*) FROM span_outbox").fetchone()[0]) - self.max_pending_spans
        if excess <= 0:
            return 0
        c.execute(
            "DELETE FROM span_outbox WHERE seq IN (SELECT seq FROM span_outbox ORDER BY seq LIMIT ?)",
            (excess,),
        )
        return excess

    def _apply(self, b: StateBatch) -> None:
        c = self._conn
        c.executemany("INSERT OR IGNORE INTO delivered (key, task_id) VALUES (?, ?)", b.delivered)
        c.executemany(
            "INSERT OR REPLACE INTO terminal (task_id, rack_id, finished_at) VALUES (?, ?, ?)",
            [(t, r, f) for t, (r, f) in b.terminal.items()],
        )
        c.executemany(
            "INSERT OR REPLACE INTO racks (rack_id, site_id, baselined_at, baseline_total, last_total,"
            " seen_new, unobserved, explained_through) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(r, *row) for r, row in b.racks.items()],
        )
        c.executemany(
            "INSERT OR REPLACE INTO unobserved (site_id, count) VALUES (?, ?)", list(b.unobserved.items())
        )
        c.executemany(
            "INSERT OR REPLACE INTO totals (site_id, status, operation, count) VALUES (?, ?, ?, ?)",
            [(*k, n) for k, n in b.totals.items()],
        )
        c.executemany(
            "INSERT OR REPLACE INTO run_sites (site_id, baselined_at) VALUES (?, ?)",
            list(b.run_sites.items()),
        )
        c.executemany(
            "INSERT OR REPLACE INTO runs_final (run_id, site_id, finished_at) VALUES (?, ?, ?)",
            [(r, s, t) for r, (s, t) in b.runs_final.items()],
        )
        c.executemany(
            "INSERT OR REPLACE INTO run_totals (site_id, status, count) VALUES (?, ?, ?)",
            [(*k, n) for k, n in b.run_totals.items()],
        )
        c.executemany("INSERT OR REPLACE INTO learned (key, body) VALUES (?, ?)", list(b.learned.items()))
        c.executemany(
            "INSERT OR REPLACE INTO tray_failures (site_id, rack_id, tray_id, tray_type, count) VALUES (?, ?, ?, ?, ?)",
            [(*k, n) for k, n in b.tray_failures.items()],
        )
        c.executemany(
            "INSERT OR REPLACE INTO tracked (task_id, site_id, rack_id, trays) VALUES (?, ?, ?, ?)",
            [(t, s, r, _trays_text(trays)) for t, (s, r, trays) in b.tracked.items() if t not in b.untracked],
        )
        c.executemany(
            "INSERT OR REPLACE INTO finished (task_id, site_id, rack_id, trays, first_seen, finished_seen_at,"
            " task) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (t, s, r, _trays_text(trays), first, seen, task)
                for t, (s, r, trays, first, seen, task) in b.finished.items()
                if t not in b.forget_finished
            ],
        )
        c.executemany("INSERT OR IGNORE INTO span_outbox (key, body) VALUES (?, ?)", b.spans)
        c.executemany("DELETE FROM tracked WHERE task_id = ?", [(t,) for t in b.untracked])
        c.executemany("DELETE FROM finished WHERE task_id = ?", [(t,) for t in b.forget_finished])
        c.executemany("DELETE FROM delivered WHERE task_id = ?", [(t,) for t in b.forget_delivered])
        c.executemany("DELETE FROM terminal WHERE task_id = ?", [(t,) for t in b.forget_terminal])

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()


def _trays(text: str | None) -> frozenset[str] | None:
    return frozenset(json.loads(text)) if text is not None else None


def _trays_text(trays: frozenset[str] | None) -> str | None:
    return None if trays is None else json.dumps(sorted(trays))


def _is_unwritable(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("readonly", "read-only", "unable to open", "permission", "disk i/o"))


def open_state(path: str | os.PathLike[str] | None) -> SqlitePersistence | NullPersistence:
    """Open the state file, or explain why not and carry on without it.

    A corrupt file is renamed to ``<name>.corrupt-<epoch>`` (kept for a post-mortem) and a new
    one created. A path that cannot be written at all gives in-memory state, logged as an error:
    the exporter runs, but exactly-once across restarts is lost until the path is fixed.
    """
    if path is None or str(path) == "":
        return NullPersistence()
    target = Path(path)
    try:
        return SqlitePersistence(target)
    except StateFileError as exc:
        log.error(
            "state file unusable: keeping state in memory only (restarts will re-baseline)",
            extra={"path": str(target), "error": str(exc)},
        )
        return NullPersistence()
    except (sqlite3.DatabaseError, ValueError) as exc:
        aside = target.with_name(f"{target.name}.corrupt-{int(time.time())}")
        log.error(
            "state file corrupt: moved aside, starting fresh (history will be re-baselined)",
            extra={"path": str(target), "moved_to": str(aside), "error": str(exc)},
        )
        try:
            target.rename(aside)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    Path(str(target) + suffix).rename(Path(str(aside) + suffix))
            return SqlitePersistence(target)
        except (OSError, sqlite3.Error, StateFileError) as again:
            log.error(
                "cannot start a fresh state file either: keeping state in memory only",
                extra={"path": str(target), "error": str(again)},
            )
            return NullPersistence()
