"""Inline reads on a read-only connection: they see every committed write, never an open one, never wait on a
writer, cannot write, and say ReadBusyError when the database cannot be read."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from service_kit.sqlite_reads import InlineReader, ReadBusyError


def writer(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, value TEXT)")
    return conn


def value(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT value FROM items WHERE id = 'a'").fetchone()
    return None if row is None else str(row[0])


def test_reads_see_committed_writes_and_not_an_open_transaction(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    conn = writer(path)
    reader = InlineReader(path)
    assert reader.read(value) is None
    conn.execute("INSERT INTO items VALUES ('a', 'one')")
    assert reader.read(value) == "one"
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE items SET value = 'two' WHERE id = 'a'")
    assert reader.read(value) == "one"  # the writer's open transaction neither shows nor blocks the read
    conn.execute("COMMIT")
    assert reader.read(value) == "two"
    reader.close()
    conn.close()


def test_a_write_or_a_missing_database_is_read_busy(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    missing = InlineReader(tmp_path / "absent.sqlite3")
    with pytest.raises(ReadBusyError):
        missing.read(value)
    assert not (tmp_path / "absent.sqlite3").exists()
    conn = writer(path)
    reader = InlineReader(path)
    with pytest.raises(ReadBusyError):
        reader.read(lambda c: c.execute("INSERT INTO items VALUES ('b', 'x')"))
    assert conn.execute("SELECT COUNT(*) FROM items").fetchone() == (0,)
    reader.close()
    conn.close()
