"""The SQLite state file: round trips, deletions, and a file that cannot be used."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.persistence import (
    LoadedState,
    NullPersistence,
    SqlitePersistence,
    StateBatch,
    open_state,
)

SITE, RACK = "site-1", "rack-1"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"  # the directory is created on open


@pytest.fixture
def db(path: Path) -> Iterator[SqlitePersistence]:
    persistence = SqlitePersistence(path)
    yield persistence
    persistence.close()


def full_batch() -> StateBatch:
    return StateBatch(
        delivered=[("t1/appeared", "t1"), ("t1/finished", "t1"), ("t2/appeared", "t2")],
        terminal={"t1": (RACK, 1000.5)},
        racks={RACK: (SITE, 900.0, 40, 47, 5, 2, 880.0), "rack-2": (SITE, None, None, None, 0, 0, None)},
        totals={(SITE, "Failed", "power_on"): 3},
        unobserved={SITE: 2},
        tray_failures={(SITE, RACK, "tray-a", "Compute"): 2},
        tracked={"t2": (SITE, RACK, frozenset({"tray-b", "tray-a"})), "t3": (SITE, RACK, None)},
    )


def reopened(path: Path) -> LoadedState:
    again = SqlitePersistence(path)
    try:
        return again.load()
    finally:
        again.close()


def test_every_field_survives_a_reopen(db: SqlitePersistence, path: Path) -> None:
    db.write(full_batch())
    db.close()
    loaded = reopened(path)
    assert sorted(loaded.delivered) == [("t1/appeared", "t1"), ("t1/finished", "t1"), ("t2/appeared", "t2")]
    assert loaded.terminal == {"t1": 1000.5}
    assert loaded.racks == {
        RACK: (SITE, 900.0, 40, 47, 5, 2, 880.0),
        "rack-2": (SITE, None, None, None, 0, 0, None),
    }
    assert loaded.totals == {(SITE, "Failed", "power_on"): 3}
    assert loaded.unobserved == {SITE: 2}
    assert loaded.tray_failures == {(SITE, RACK, "tray-a", "Compute"): 2}
    assert loaded.tracked == {"t2": (SITE, RACK, frozenset({"tray-a", "tray-b"})), "t3": (SITE, RACK, None)}


def test_later_writes_replace_counts_and_add_keys(db: SqlitePersistence) -> None:
    db.write(full_batch())
    db.write(
        StateBatch(
            delivered=[("t1/appeared", "t1"), ("t4/appeared", "t4")],
            totals={(SITE, "Failed", "power_on"): 4},
            racks={RACK: (SITE, 900.0, 40, 48, 6, 2, 890.0)},
            unobserved={SITE: 3},
        )
    )
    loaded = db.load()
    assert loaded.totals == {(SITE, "Failed", "power_on"): 4}
    assert loaded.racks[RACK] == (SITE, 900.0, 40, 48, 6, 2, 890.0)
    assert loaded.unobserved == {SITE: 3}
    assert len(loaded.delivered) == 4


def test_forget_deletes_tracked_delivered_and_terminal_rows(db: SqlitePersistence) -> None:
    db.write(full_batch())
    db.write(StateBatch(untracked={"t2"}, forget_delivered={"t1"}, forget_terminal={"t1"}))
    loaded = db.load()
    assert loaded.delivered == [("t2/appeared", "t2")]
    assert loaded.terminal == {}
    assert set(loaded.tracked) == {"t3"}


def test_untracked_wins_over_tracked_in_the_same_batch(db: SqlitePersistence) -> None:
    db.write(StateBatch(tracked={"t1": (SITE, RACK, None)}))
    db.write(StateBatch(tracked={"t1": (SITE, RACK, frozenset({"tray-a"}))}, untracked={"t1"}))
    assert db.load().tracked == {}


def older_file(path: Path, version: int, tables: str) -> None:
    """A state file as an older exporter wrote it: its schema version and ``tables`` (SQL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(version),))
    conn.executescript(tables)
    conn.commit()
    conn.close()


def test_a_schema_1_file_is_migrated_and_its_ledgers_start_again(path: Path) -> None:
    older_file(
        path,
        1,
        """
        CREATE TABLE racks (rack_id TEXT PRIMARY KEY, site_id TEXT NOT NULL, baselined_at REAL,
            known_count INTEGER NOT NULL);
        INSERT INTO racks VALUES ('r1', 's1', 900.0, 7);
        CREATE TABLE totals (site_id TEXT NOT NULL, status TEXT NOT NULL, operation TEXT NOT NULL,
            count INTEGER NOT NULL, PRIMARY KEY (site_id, status, operation));
        INSERT INTO totals VALUES ('s1', 'Succeeded', 'power_on', 12);
        """,
    )
    loaded = reopened(path)
    assert loaded.racks == {} and loaded.totals == {("s1", "Succeeded", "power_on"): 12}


def test_a_schema_2_file_keeps_its_ledgers_without_an_explained_time(path: Path) -> None:
    older_file(
        path,
        2,
        """
        CREATE TABLE racks (rack_id TEXT PRIMARY KEY, site_id TEXT NOT NULL, baselined_at REAL,
            baseline_total INTEGER, last_total INTEGER, seen_new INTEGER NOT NULL DEFAULT 0,
            unobserved INTEGER NOT NULL DEFAULT 0);
        INSERT INTO racks VALUES ('r1', 's1', 900.0, 7, 9, 1, 1);
        """,
    )
    assert reopened(path).racks == {"r1": ("s1", 900.0, 7, 9, 1, 1, None)}
    again = SqlitePersistence(path)
    again.write(StateBatch(racks={"r1": ("s1", 900.0, 7, 9, 1, 1, 950.0)}))
    again.close()
    assert reopened(path).racks["r1"][-1] == 950.0


def test_empty_batch_is_empty() -> None:
    assert StateBatch().empty
    assert not StateBatch(forget_terminal={"t1"}).empty


def test_a_write_error_is_counted_not_raised(db: SqlitePersistence) -> None:
    db.close()
    db.write(full_batch())
    db.write(full_batch())
    assert db.write_errors == 2


def test_the_file_is_in_wal_mode(db: SqlitePersistence, path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


def test_no_path_means_in_memory_state() -> None:
    for nothing in (None, ""):
        state = open_state(nothing)
        assert isinstance(state, NullPersistence)
        state.write(full_batch())
        assert state.load() == LoadedState()


def test_open_state_opens_a_good_file(path: Path) -> None:
    state = open_state(path)
    assert isinstance(state, SqlitePersistence)
    state.close()


def test_a_corrupt_file_is_moved_aside_and_a_fresh_one_started(path: Path) -> None:
    path.parent.mkdir()
    path.write_bytes(b"this is not a database, just bytes " * 200)
    state = open_state(path)
    try:
        assert isinstance(state, SqlitePersistence)
        assert state.load() == LoadedState()
    finally:
        state.close()
    aside = [p for p in path.parent.iterdir() if p.name.startswith("state.db.corrupt-")]
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not a database")


def test_another_schema_version_is_treated_as_corrupt(path: Path) -> None:
    first = SqlitePersistence(path)
    first.write(full_batch())
    first.close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(sqlite3.DatabaseError, match="schema version 99"):
        SqlitePersistence(path)
    state = open_state(path)
    try:
        assert isinstance(state, SqlitePersistence)
        assert state.load() == LoadedState()  # fresh: history will be re-baselined
    finally:
        state.close()
    assert any(p.name.startswith("state.db.corrupt-") for p in path.parent.iterdir())
