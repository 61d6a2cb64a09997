"""SQLite conversation store (the default): one file, WAL, every write in one transaction.

Calls run in a worker thread (`asyncio.to_thread`) over one connection guarded by a lock, so the event loop
never blocks on disk. The in-flight lock lives in a table with a lease expiry, so it also holds between
processes sharing the file. A file that cannot be used (locked past the busy timeout, disk I/O error) raises
`StoreUnavailableError`.

With `retention_seconds`, conversations idle for longer than that (no turn stored since) are deleted when the
store opens and then at most every `retention_seconds / 10` (at least a minute apart) on the next write.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from agent_service.domain import Conversation, TurnResult
from agent_service.errors import DuplicateTurnError, StoreUnavailableError

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
        self._clock = clock
        self._retention = retention_seconds
        self._next_purge = 0.0
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

        return await self._run(work)

    async def get_turn(self, conversation_id: str, turn_id: str) -> TurnResult | None:
        def work(conn: sqlite3.Connection) -> TurnResult | None:
            row = conn.execute(
                "SELECT result_json FROM turns WHERE conversation_id = ? AND turn_id = ?",
                (conversation_id, turn_id),
            ).fetchone()
            return TurnResult.from_json(row[0]) if row else None

        return await self._run(work)

    async def append_turn(self, turn: TurnResult, customer_id: str = "") -> None:
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

    async def close(self) -> None:
        await self._run(lambda conn: conn.close())
