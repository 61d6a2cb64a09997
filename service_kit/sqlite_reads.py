"""Small SQLite reads on the event loop's own thread, on a read-only connection of their own.

The services write SQLite from a worker thread so the event loop never waits on a write lock or a commit. A read
by key in a WAL database is another matter: it takes no lock a writer holds, and with the page in the cache it
costs tens of microseconds, less than the hop to a worker thread and back (a submit, a thread wake-up, a
`call_soon_threadsafe`), which `make bench` measured at about twice the lookup itself (BENCHMARKS.md). So point
reads (an order by id, a conversation by id) run inline here. Anything that may scan or wait stays on the worker
thread: if the inline read finds the database busy (a WAL recovery, a checkpoint that truncates the log), it
says so with `ReadBusyError` and the caller runs the same read on its worker thread instead.

Each statement in autocommit mode starts its own read transaction, so a read sees every write committed before
it, from any connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# How long an inline read may wait for a lock before it goes to the worker thread instead: short, since the
# event loop waits with it.
INLINE_BUSY_TIMEOUT_SECONDS = 0.05


class ReadBusyError(Exception):
    """The inline read could not run now; run it on the worker thread."""


class InlineReader:
    """A read-only connection to an existing WAL database, used only from the thread that runs the event loop."""

    def __init__(self, path: Path, row_factory: type | None = None) -> None:
        self._path = path
        self._row_factory = row_factory
        self._conn: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            f"{self._path.resolve().as_uri()}?mode=ro",
            uri=True,
            isolation_level=None,
            timeout=INLINE_BUSY_TIMEOUT_SECONDS,
            check_same_thread=False,
        )
        if self._row_factory is not None:
            conn.row_factory = self._row_factory
        conn.execute("PRAGMA query_only=ON")
        return conn

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(connection)` now, on this thread; ReadBusyError when the database cannot be read without waiting."""
        try:
            if self._conn is None:
                self._conn = self._open()
            return fn(self._conn)
        except sqlite3.OperationalError as error:
            raise ReadBusyError(str(error)) from error

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
