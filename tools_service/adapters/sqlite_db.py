"""One SQLite connection (WAL) used from one worker thread, so the event loop never blocks on a write; point reads
by key run inline on a read-only connection (`service_kit.sqlite_reads`), cheaper than the hop to the thread."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from service_kit.sqlite_reads import InlineReader, ReadBusyError

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id        TEXT PRIMARY KEY,
    customer_id     TEXT NOT NULL,
    status          TEXT NOT NULL,
    tracking_number TEXT,
    carrier         TEXT,
    eta             TEXT,
    item_count      INTEGER NOT NULL DEFAULT 0,
    total_cents     INTEGER NOT NULL DEFAULT 0,
    currency        TEXT NOT NULL DEFAULT 'USD',
    delivered_on    TEXT,
    return_id       TEXT,
    address         TEXT  -- JSON object once change_delivery_address ran
);
CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (customer_id);

-- Write actions (tools_service/actions.py): proposed, then run once confirmed. Also the audit trail.
CREATE TABLE IF NOT EXISTS actions (
    action_id       TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    customer_id     TEXT NOT NULL,
    principal_role  TEXT NOT NULL,  -- who proposed it: service (the agent) or backend
    tool_name       TEXT NOT NULL,
    arguments_json  TEXT NOT NULL,  -- validated arguments, never the bound parameters
    summary         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN
                        ('pending', 'running', 'executed', 'declined', 'expired', 'not_executed', 'unknown')),
    idempotency_key TEXT,           -- NULL when none was given (NULLs never collide)
    create_time     REAL NOT NULL,
    expire_time     REAL NOT NULL,
    decide_time     REAL,
    confirmation    TEXT NOT NULL DEFAULT '',
    decided_by      TEXT NOT NULL DEFAULT '',  -- principal role that ran or dropped it
    result_json     TEXT NOT NULL DEFAULT '',
    note            TEXT NOT NULL DEFAULT '',
    UNIQUE (customer_id, conversation_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS actions_by_conversation ON actions (conversation_id, create_time);
CREATE INDEX IF NOT EXISTS actions_by_customer ON actions (customer_id, create_time);

CREATE TABLE IF NOT EXISTS tickets (
    ticket_id       TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    customer_id     TEXT NOT NULL,
    priority        TEXT NOT NULL CHECK (priority IN ('low', 'medium', 'high')),
    reason_code     TEXT NOT NULL,
    reason          TEXT NOT NULL,
    summary         TEXT NOT NULL,
    tools_tried     TEXT NOT NULL,  -- JSON array of tool names
    sources         TEXT NOT NULL,  -- JSON array of {doc_id, title, chunk_id, distance}
    status          TEXT NOT NULL CHECK (status IN ('open', 'assigned', 'resolved')),
    assignee        TEXT NOT NULL DEFAULT '',
    resolution_note TEXT NOT NULL DEFAULT '',
    estimated_wait  TEXT NOT NULL,
    idempotency_key TEXT,           -- NULL when the caller gave none (NULLs never collide)
    payload_hash    TEXT NOT NULL,
    create_time     REAL NOT NULL,
    update_time     REAL NOT NULL,
    UNIQUE (customer_id, conversation_id, idempotency_key)
);
-- At most one open (OPEN or ASSIGNED) ticket per conversation of a customer.
CREATE UNIQUE INDEX IF NOT EXISTS tickets_one_open_per_customer_conversation
    ON tickets (customer_id, conversation_id) WHERE status IN ('open', 'assigned');
CREATE INDEX IF NOT EXISTS tickets_by_customer ON tickets (customer_id, create_time);

CREATE TABLE IF NOT EXISTS ticket_messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_id   TEXT NOT NULL REFERENCES tickets (ticket_id),
    author      TEXT NOT NULL CHECK (author IN ('customer', 'human_agent')),
    author_name TEXT NOT NULL,
    text        TEXT NOT NULL,
    create_time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ticket_messages_by_ticket ON ticket_messages (ticket_id, id);
"""


_TICKET_COLUMNS = (
    "ticket_id, conversation_id, customer_id, priority, reason_code, reason, summary, tools_tried, sources, "
    "status, assignee, resolution_note, estimated_wait, idempotency_key, payload_hash, create_time, update_time"
)


# Order columns added after the first release: a data dir written before gets them (with their defaults).
_ADDED_ORDER_COLUMNS = {
    "item_count": "INTEGER NOT NULL DEFAULT 0",
    "total_cents": "INTEGER NOT NULL DEFAULT 0",
    "currency": "TEXT NOT NULL DEFAULT 'USD'",
    "delivered_on": "TEXT",
    "return_id": "TEXT",
    "address": "TEXT",
}


def _migrate_order_columns(conn: sqlite3.Connection) -> None:
    existing = {row[1] for row in conn.execute("PRAGMA table_info(orders)")}
    if not existing:
        return  # a new database: SCHEMA creates the table whole
    for name, declaration in _ADDED_ORDER_COLUMNS.items():
        if name not in existing:
            conn.execute(f"ALTER TABLE orders ADD COLUMN {name} {declaration}")


def _migrate_tickets_to_customer_keys(conn: sqlite3.Connection) -> None:
    """A database written before tickets were keyed by customer (UNIQUE (conversation_id, idempotency_key)) is
    rebuilt with the (customer_id, conversation_id, ...) keys, keeping every ticket and message: new table, copy,
    drop, rename, with foreign keys off and in one transaction (SQLite's documented way to change a table's
    constraints). SCHEMA then recreates the indexes."""
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'tickets'").fetchone()
    if row is None or "UNIQUE (conversation_id, idempotency_key)" not in row[0]:
        return
    create = SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS tickets") :]
    create = create[: create.index(");") + 2].replace("IF NOT EXISTS tickets", "tickets_customer_keys", 1)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(create)
        conn.execute(
            f"INSERT INTO tickets_customer_keys ({_TICKET_COLUMNS}) SELECT {_TICKET_COLUMNS} FROM tickets"
        )
        conn.execute("DROP TABLE tickets")
        conn.execute("ALTER TABLE tickets_customer_keys RENAME TO tickets")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SqliteDatabase:
    """Serialises every statement on one thread; open() creates the file, WAL mode and the schema."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tools-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._reader = InlineReader(path, row_factory=sqlite3.Row)

    def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None, timeout=5.0)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        _migrate_tickets_to_customer_keys(conn)
        _migrate_order_columns(conn)
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(SCHEMA)
        self._conn = conn

    async def open(self) -> None:
        await self.run(lambda _conn: None)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._conn is None:
                self._open()
            assert self._conn is not None
            return fn(self._conn)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A point read (one row by key): inline on the read-only connection once the database is open, else (or
        when that would wait) on the worker thread like `run`. `fn` must not write."""
        if self._conn is not None:
            try:
                return self._reader.read(fn)
            except ReadBusyError:
                pass
        return await self.run(fn)

    async def close(self) -> None:
        self._reader.close()

        def shutdown() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shutdown)
        self._executor.shutdown(wait=True)


def transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Runs fn inside BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any exception)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result
