"""SQLite conversation store (the default): one file, WAL, every write in one transaction.

Calls run in a worker thread (`asyncio.to_thread`) over one connection guarded by a lock, so the event loop
never blocks on disk. The in-flight lock lives in a table with a lease expiry, so it also holds between
processes sharing the file.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from agent_service.domain import Conversation, TurnResult
from agent_service.errors import DuplicateTurnError

T = TypeVar("T")

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

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._clock = clock

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                return work(self._conn)

        return await asyncio.to_thread(locked)

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

    async def release_lock(self, conversation_id: str, holder: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM turn_locks WHERE conversation_id = ? AND holder = ?", (conversation_id, holder)
            )

        await self._run(work)

    async def close(self) -> None:
        await self._run(lambda conn: conn.close())
