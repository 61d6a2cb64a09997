"""SQLite conversation store (the default): one file, WAL, every write in one transaction.

Writes run in a worker thread (`asyncio.to_thread`) over one connection guarded by a lock, so the event loop
never waits on a write lock or a commit; reads of one conversation by id (`load`, `get_turn`,
`conversation_owner`) run inline on a read-only connection (`service_kit.sqlite_reads`), which costs less than
the hop to the thread, and fall back to the thread when the file is busy. The in-flight lock lives in a table with a lease expiry, so it also holds between
processes sharing the file. A file that cannot be used (locked past the busy timeout, disk I/O error) raises
`StoreUnavailableError`.

With `retention_seconds`, conversations idle for longer than that (no turn stored since) are deleted when the
store opens and then at most every `retention_seconds / 10` (at least a minute apart) on the next write.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from agent_service.conversation_events import ConversationEvent, NewEvent, events_of_turn
from agent_service.domain import Conversation, TurnResult
from agent_service.errors import DuplicateTurnError, StoreUnavailableError
from service_kit.sqlite_reads import InlineReader, ReadBusyError

T = TypeVar("T")

logger = logging.getLogger(__name__)
MIN_PURGE_INTERVAL_SECONDS = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    conversation_id TEXT PRIMARY KEY,
    customer_id     TEXT NOT NULL DEFAULT '',
    create_time     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS turns (
    conversation_id TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    turn_id         TEXT NOT NULL,
    result_json     TEXT NOT NULL,
    create_time     REAL NOT NULL,
    PRIMARY KEY (conversation_id, seq),
    UNIQUE (conversation_id, turn_id)
);
CREATE TABLE IF NOT EXISTS turn_locks (
    conversation_id TEXT PRIMARY KEY,
    holder          TEXT NOT NULL,
    expires_at      REAL NOT NULL
);
-- The event log WatchConversation reads: offsets 1, 2, ... per conversation; `id` is the global change feed.
CREATE TABLE IF NOT EXISTS conversation_events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL,
    event_offset    INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    data_json       TEXT NOT NULL,
    source_key      TEXT,
    create_time     REAL NOT NULL,
    UNIQUE (conversation_id, event_offset),
    UNIQUE (conversation_id, source_key)
);
CREATE TABLE IF NOT EXISTS event_cursors (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class SqliteConversationStore:
    """`ConversationStore` on SQLite. `clock` (wall time) is injectable for lease tests."""

    def __init__(
        self,
        path: Path,
        clock: Callable[[], float] = time.time,
        *,
        retention_seconds: float | None = None,
    ) -> None:
        if retention_seconds is not None and retention_seconds <= 0:
            raise ValueError("retention_seconds must be positive when set")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._reader = InlineReader(path)
        self._clock = clock
        self._retention = retention_seconds
        self._next_purge = 0.0
        self._listeners: list[Callable[[str], None]] = []
        if retention_seconds is not None:
            with self._lock:
                self._purge(self._conn)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                try:
                    return work(self._conn)
                except sqlite3.OperationalError as error:
                    raise StoreUnavailableError(f"conversation store unavailable: {error}") from error

        return await asyncio.to_thread(locked)

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """A read by conversation id: inline (see the module docstring), else on the worker thread."""
        try:
            return self._reader.read(work)
        except ReadBusyError:
            return await self._run(work)

    def _purge(self, conn: sqlite3.Connection) -> int:
        """Deletes conversations whose newest turn is older than the retention; returns how many."""
        assert self._retention is not None
        now = self._clock()
        self._next_purge = now + max(MIN_PURGE_INTERVAL_SECONDS, self._retention / 10)
        cutoff = now - self._retention
        conn.execute("BEGIN IMMEDIATE")
        try:
            idle = [
                conversation_id
                for (conversation_id,) in conn.execute(
                    "SELECT conversation_id FROM conversations WHERE create_time < ? AND NOT EXISTS "
                    "(SELECT 1 FROM turns WHERE turns.conversation_id = conversations.conversation_id "
                    "AND turns.create_time >= ?)",
                    (cutoff, cutoff),
                )
            ]
            for conversation_id in idle:
                conn.execute("DELETE FROM turns WHERE conversation_id = ?", (conversation_id,))
                conn.execute("DELETE FROM conversation_events WHERE conversation_id = ?", (conversation_id,))
                conn.execute("DELETE FROM conversations WHERE conversation_id = ?", (conversation_id,))
            conn.execute("DELETE FROM turn_locks WHERE expires_at < ?", (cutoff,))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if idle:
            logger.info("purged idle conversations past their retention", extra={"conversations": len(idle)})
        return len(idle)

    async def purge_expired(self) -> int:
        """Deletes the conversations idle past the retention now (0 without a retention setting)."""
        if self._retention is None:
            return 0
        return await self._run(self._purge)

    async def load(self, conversation_id: str) -> Conversation:
        def work(conn: sqlite3.Connection) -> Conversation:
            row = conn.execute(
                "SELECT customer_id FROM conversations WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()
            turns = conn.execute(
                "SELECT result_json FROM turns WHERE conversation_id = ? ORDER BY seq", (conversation_id,)
            ).fetchall()
            return Conversation(
                conversation_id=conversation_id,
                customer_id=row[0] if row else "",
                turns=tuple(TurnResult.from_json(text) for (text,) in turns),
            )

        return await self._read(work)

    async def get_turn(self, conversation_id: str, turn_id: str) -> TurnResult | None:
        def work(conn: sqlite3.Connection) -> TurnResult | None:
            row = conn.execute(
                "SELECT result_json FROM turns WHERE conversation_id = ? AND turn_id = ?",
                (conversation_id, turn_id),
            ).fetchone()
            return TurnResult.from_json(row[0]) if row else None

        return await self._read(work)

    async def append_turn(self, turn: TurnResult, customer_id: str = "", release_holder: str = "") -> None:
        def work(conn: sqlite3.Connection) -> None:
            now = self._clock()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT OR IGNORE INTO conversations (conversation_id, customer_id, create_time) VALUES (?, ?, ?)",
                    (turn.conversation_id, customer_id, now),
                )
                if customer_id:
                    conn.execute(
                        "UPDATE conversations SET customer_id = ? WHERE conversation_id = ? AND customer_id = ''",
                        (customer_id, turn.conversation_id),
                    )
                (seq,) = conn.execute(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM turns WHERE conversation_id = ?",
                    (turn.conversation_id,),
                ).fetchone()
                conn.execute(
                    "INSERT INTO turns (conversation_id, seq, turn_id, result_json, create_time) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (turn.conversation_id, seq, turn.turn_id, turn.to_json(), turn.create_time or now),
                )
                _insert_events(conn, turn.conversation_id, events_of_turn(turn), now)
                if release_holder:
                    conn.execute(
                        "DELETE FROM turn_locks WHERE conversation_id = ? AND holder = ?",
                        (turn.conversation_id, release_holder),
                    )
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK")
                raise DuplicateTurnError(f"turn {turn.turn_id!r} already stored") from None
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            if self._retention is not None and now >= self._next_purge:
                self._purge(conn)

        await self._run(work)
        self._notify(turn.conversation_id)

    async def acquire_lock(self, conversation_id: str, holder: str, lease_seconds: float) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            now = self._clock()
            cursor = conn.execute(
                "INSERT INTO turn_locks (conversation_id, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (conversation_id) DO UPDATE SET holder = excluded.holder, "
                "expires_at = excluded.expires_at WHERE turn_locks.expires_at <= ?",
                (conversation_id, holder, now + lease_seconds, now),
            )
            return cursor.rowcount == 1

        return await self._run(work)

    async def renew_lock(self, conversation_id: str, holder: str, lease_seconds: float) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            now = self._clock()
            cursor = conn.execute(
                "UPDATE turn_locks SET expires_at = ? WHERE conversation_id = ? AND holder = ?",
                (now + lease_seconds, conversation_id, holder),
            )
            return cursor.rowcount == 1

        return await self._run(work)

    async def release_lock(self, conversation_id: str, holder: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM turn_locks WHERE conversation_id = ? AND holder = ?", (conversation_id, holder)
            )

        await self._run(work)

    # --- the event log (conversation_events.EventLog) -----------------------------------------------------

    def add_listener(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    def _notify(self, conversation_id: str) -> None:
        for listener in self._listeners:
            listener(conversation_id)

    async def conversation_owner(self, conversation_id: str) -> str | None:
        def work(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT customer_id FROM conversations WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._read(work)

    async def append_events(
        self, conversation_id: str, events: Sequence[NewEvent], customer_id: str | None = None
    ) -> list[ConversationEvent]:
        def work(conn: sqlite3.Connection) -> list[ConversationEvent]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if customer_id is not None:
                    row = conn.execute(
                        "SELECT customer_id FROM conversations WHERE conversation_id = ?", (conversation_id,)
                    ).fetchone()
                    if row is None or row[0] != customer_id:
                        conn.execute("ROLLBACK")
                        return []
                appended = _insert_events(conn, conversation_id, events, self._clock())
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return appended

        appended = await self._run(work)
        if appended:
            self._notify(conversation_id)
        return appended

    async def read_events(
        self, conversation_id: str, after_offset: int, limit: int
    ) -> list[ConversationEvent]:
        def work(conn: sqlite3.Connection) -> list[ConversationEvent]:
            rows = conn.execute(
                "SELECT event_offset, kind, data_json, create_time FROM conversation_events "
                "WHERE conversation_id = ? AND event_offset > ? ORDER BY event_offset LIMIT ?",
                (conversation_id, after_offset, limit),
            ).fetchall()
            return [
                ConversationEvent(conversation_id, offset, kind, json.loads(data), create_time)
                for offset, kind, data, create_time in rows
            ]

        return await self._run(work)

    async def end_offset(self, conversation_id: str) -> int:
        def work(conn: sqlite3.Connection) -> int:
            (end,) = conn.execute(
                "SELECT COALESCE(MAX(event_offset), 0) FROM conversation_events WHERE conversation_id = ?",
                (conversation_id,),
            ).fetchone()
            return int(end)

        return await self._run(work)

    @property
    def feed_start(self) -> str:
        return "0"

    async def changed_since(self, cursor: str) -> tuple[str, set[str]]:
        def work(conn: sqlite3.Connection) -> tuple[str, set[str]]:
            if not cursor:
                (last,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM conversation_events").fetchone()
                return str(last), set()
            rows = conn.execute(
                "SELECT id, conversation_id FROM conversation_events WHERE id > ? ORDER BY id LIMIT 10000",
                (int(cursor),),
            ).fetchall()
            if not rows:
                return cursor, set()
            return str(rows[-1][0]), {conversation_id for _, conversation_id in rows}

        return await self._run(work)

    async def get_cursor(self, name: str) -> int:
        def work(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT value FROM event_cursors WHERE name = ?", (name,)).fetchone()
            return int(row[0]) if row else 0

        return await self._run(work)

    async def set_cursor(self, name: str, value: int) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO event_cursors (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

        await self._run(work)

    async def close(self) -> None:
        self._reader.close()
        await self._run(lambda conn: conn.close())


def _insert_events(
    conn: sqlite3.Connection, conversation_id: str, events: Sequence[NewEvent], now: float
) -> list[ConversationEvent]:
    """Appends inside the caller's transaction; an event whose source_key the conversation has is skipped."""
    appended: list[ConversationEvent] = []
    for event in events:
        if (
            event.source_key
            and conn.execute(
                "SELECT 1 FROM conversation_events WHERE conversation_id = ? AND source_key = ?",
                (conversation_id, event.source_key),
            ).fetchone()
        ):
            continue
        (offset,) = conn.execute(
            "SELECT COALESCE(MAX(event_offset), 0) + 1 FROM conversation_events WHERE conversation_id = ?",
            (conversation_id,),
        ).fetchone()
        when = event.create_time or now
        conn.execute(
            "INSERT INTO conversation_events "
            "(conversation_id, event_offset, kind, data_json, source_key, create_time) VALUES (?, ?, ?, ?, ?, ?)",
            (
                conversation_id,
                offset,
                event.kind,
                json.dumps(event.data, ensure_ascii=False, separators=(",", ":")),
                event.source_key or None,
                when,
            ),
        )
        appended.append(ConversationEvent(conversation_id, offset, event.kind, event.data, when))
    return appended
