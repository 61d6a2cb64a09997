"""Write actions in SQLite (the `actions` table of adapters/sqlite_db.py). Every state change is one
BEGIN IMMEDIATE transaction, so a claim (pending → running) happens exactly once however many callers race."""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass, replace
from typing import Any

from tools_service.adapters.sqlite_db import SqliteDatabase, transaction
from tools_service.errors import ConflictError, NotFoundError, RateLimitedError

ACTION_NOT_FOUND_MESSAGE = "No such action in this conversation."
WINDOW_SECONDS = 3600.0
SUPERSEDED_NOTE = "superseded by a newer proposal"
INTERRUPTED_NOTE = (
    "the tools service stopped while running it; check the order (or the company system) before retrying"
)

_COLUMNS = (
    "action_id, conversation_id, customer_id, principal_role, tool_name, arguments_json, summary, state, "
    "idempotency_key, create_time, expire_time, decide_time, confirmation, decided_by, result_json, note"
)


@dataclass(frozen=True)
class StoredAction:
    action_id: str
    conversation_id: str
    customer_id: str
    principal_role: str  # who proposed it
    tool_name: str
    arguments: dict[str, Any]
    summary: str
    state: str  # pending | running | executed | declined | expired | not_executed | unknown
    idempotency_key: str | None
    create_time: float
    expire_time: float
    decide_time: float | None = None
    confirmation: str = ""
    decided_by: str = ""  # the principal role that ran or dropped it
    result_json: str = ""
    note: str = ""

    def row(self) -> tuple[Any, ...]:
        return (
            self.action_id, self.conversation_id, self.customer_id, self.principal_role, self.tool_name,
            json.dumps(self.arguments, ensure_ascii=False, sort_keys=True), self.summary, self.state,
            self.idempotency_key, self.create_time, self.expire_time, self.decide_time, self.confirmation,
            self.decided_by, self.result_json, self.note,
        )  # fmt: skip


def _action(row: sqlite3.Row) -> StoredAction:
    return StoredAction(
        action_id=row["action_id"],
        conversation_id=row["conversation_id"],
        customer_id=row["customer_id"],
        principal_role=row["principal_role"],
        tool_name=row["tool_name"],
        arguments=json.loads(row["arguments_json"]),
        summary=row["summary"],
        state=row["state"],
        idempotency_key=row["idempotency_key"],
        create_time=row["create_time"],
        expire_time=row["expire_time"],
        decide_time=row["decide_time"],
        confirmation=row["confirmation"],
        decided_by=row["decided_by"],
        result_json=row["result_json"],
        note=row["note"],
    )


def _owned(tx: sqlite3.Connection, action_id: str, customer_id: str, conversation_id: str) -> StoredAction:
    """The customer's action of that conversation; anything else (another customer's, another conversation's,
    unknown) is the same NotFoundError."""
    row = tx.execute(
        f"SELECT {_COLUMNS} FROM actions WHERE action_id = ? AND customer_id = ? AND conversation_id = ?",
        (action_id, customer_id, conversation_id),
    ).fetchone()
    if row is None or not customer_id:
        raise NotFoundError(ACTION_NOT_FOUND_MESSAGE)
    return _action(row)


def _save(tx: sqlite3.Connection, action: StoredAction) -> StoredAction:
    tx.execute(
        "UPDATE actions SET state = ?, decide_time = ?, confirmation = ?, decided_by = ?, result_json = ?, "
        "note = ? WHERE action_id = ?",
        (
            action.state, action.decide_time, action.confirmation, action.decided_by, action.result_json,
            action.note, action.action_id,
        ),
    )  # fmt: skip
    return action


def _expire_if_due(tx: sqlite3.Connection, action: StoredAction, now: float) -> StoredAction:
    if action.state == "pending" and action.expire_time <= now:
        return _save(tx, replace(action, state="expired", decide_time=now, note="not confirmed in time"))
    return action


class SqliteActionStore:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def _tx(self, fn: Any) -> Any:
        return await self._db.run(lambda conn: transaction(conn, fn))

    async def propose(self, action: StoredAction, per_hour: int, now: float) -> tuple[StoredAction, bool]:
        """Records `action` (PENDING), dropping the conversation's older pending action; (action, created).
        The same idempotency key returns the recorded action (ConflictError when it named another tool or other
        arguments). RateLimitedError when the customer proposed `per_hour` actions in the last hour."""

        def propose(tx: sqlite3.Connection) -> tuple[StoredAction, bool]:
            if action.idempotency_key is not None:
                row = tx.execute(
                    f"SELECT {_COLUMNS} FROM actions WHERE customer_id = ? AND conversation_id = ? "
                    "AND idempotency_key = ?",
                    (action.customer_id, action.conversation_id, action.idempotency_key),
                ).fetchone()
                if row is not None:
                    existing = _action(row)
                    if (existing.tool_name, existing.arguments) != (action.tool_name, action.arguments):
                        raise ConflictError("This idempotency key was already used for another action.")
                    return _expire_if_due(tx, existing, now), False
            count, oldest = tx.execute(
                "SELECT COUNT(*), MIN(create_time) FROM actions WHERE customer_id = ? AND create_time > ?",
                (action.customer_id, now - WINDOW_SECONDS),
            ).fetchone()
            if count >= per_hour:
                retry_after = max(1, math.ceil(oldest + WINDOW_SECONDS - now))
                raise RateLimitedError(
                    f"Too many changes proposed for this customer; try again in {retry_after} seconds.",
                    limit="write_actions_per_customer_per_hour",
                    retry_after_seconds=retry_after,
                )
            tx.execute(
                "UPDATE actions SET state = 'declined', decide_time = ?, note = ? "
                "WHERE customer_id = ? AND conversation_id = ? AND state = 'pending'",
                (now, SUPERSEDED_NOTE, action.customer_id, action.conversation_id),
            )
            tx.execute(f"INSERT INTO actions ({_COLUMNS}) VALUES ({', '.join('?' * 16)})", action.row())
            return action, True

        result: tuple[StoredAction, bool] = await self._tx(propose)
        return result

    async def claim(
        self, action_id: str, customer_id: str, conversation_id: str, confirmation: str, role: str, now: float
    ) -> tuple[StoredAction, bool]:
        """PENDING (not expired) → RUNNING, once: (the action, True) for the one caller that claimed it."""

        def claim(tx: sqlite3.Connection) -> tuple[StoredAction, bool]:
            action = _expire_if_due(tx, _owned(tx, action_id, customer_id, conversation_id), now)
            if action.state != "pending":
                return action, False
            running = replace(
                action, state="running", decide_time=now, confirmation=confirmation, decided_by=role
            )
            return _save(tx, running), True

        result: tuple[StoredAction, bool] = await self._tx(claim)
        return result

    async def finish(
        self, action: StoredAction, state: str, result_json: str, note: str, now: float
    ) -> StoredAction:
        """RUNNING → the outcome (EXECUTED, NOT_EXECUTED or UNKNOWN)."""

        def finish(tx: sqlite3.Connection) -> StoredAction:
            return _save(
                tx, replace(action, state=state, decide_time=now, result_json=result_json, note=note)
            )

        result: StoredAction = await self._tx(finish)
        return result

    async def drop(
        self,
        action_id: str,
        customer_id: str,
        conversation_id: str,
        note: str,
        confirmation: str,
        role: str,
        now: float,
    ) -> StoredAction:
        """PENDING → DECLINED with `note`; an expired one becomes EXPIRED; a decided one stays as it is."""

        def drop(tx: sqlite3.Connection) -> StoredAction:
            action = _expire_if_due(tx, _owned(tx, action_id, customer_id, conversation_id), now)
            if action.state != "pending":
                return action
            declined = replace(
                action,
                state="declined",
                decide_time=now,
                note=note,
                confirmation=confirmation,
                decided_by=role,
            )
            return _save(tx, declined)

        result: StoredAction = await self._tx(drop)
        return result

    async def get(self, action_id: str, customer_id: str, conversation_id: str) -> StoredAction:
        def get(tx: sqlite3.Connection) -> StoredAction:
            return _owned(tx, action_id, customer_id, conversation_id)

        result: StoredAction = await self._tx(get)
        return result

    async def list(self, conversation_id: str, customer_id: str | None, now: float) -> list[StoredAction]:
        """The conversation's actions oldest first (`customer_id` None: every customer's, for staff); pending
        ones past their expiry become EXPIRED first."""

        def list_(tx: sqlite3.Connection) -> list[StoredAction]:
            query = f"SELECT {_COLUMNS} FROM actions WHERE conversation_id = ?"
            params: tuple[str, ...] = (conversation_id,)
            if customer_id is not None:
                query += " AND customer_id = ?"
                params += (customer_id,)
            rows = tx.execute(query + " ORDER BY create_time, rowid", params).fetchall()
            return [_expire_if_due(tx, _action(row), now) for row in rows]

        result: list[StoredAction] = await self._tx(list_)
        return result

    async def recover_interrupted(self, now: float) -> int:
        """Actions left RUNNING by a stopped process become UNKNOWN (whether the write happened is not known)."""

        def recover(tx: sqlite3.Connection) -> int:
            cursor = tx.execute(
                "UPDATE actions SET state = 'unknown', decide_time = ?, note = ? WHERE state = 'running'",
                (now, INTERRUPTED_NOTE),
            )
            return cursor.rowcount

        result: int = await self._tx(recover)
        return result
