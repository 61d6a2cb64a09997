"""Helpdesk tickets in SQLite, keyed by (customer_id, conversation_id). Idempotency and "one open ticket per
conversation of a customer" are UNIQUE constraints."""

from __future__ import annotations

import json
import logging
import sqlite3

from tools_service.adapters.sqlite_db import SqliteDatabase, transaction
from tools_service.errors import FailedPreconditionError, NotFoundError, RateLimitedError
from tools_service.tickets import PRIORITIES, Escalation, Source, Ticket, TicketMessage, new_ticket_id

_INSERT = """
INSERT INTO tickets (ticket_id, conversation_id, customer_id, priority, reason_code, reason, summary,
                     tools_tried, sources, status, estimated_wait, idempotency_key, payload_hash,
                     create_time, update_time)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING
"""
_ID_ATTEMPTS = 3

logger = logging.getLogger(__name__)


def _load(conn: sqlite3.Connection, ticket_id: str) -> Ticket | None:
    row = conn.execute("SELECT * FROM tickets WHERE ticket_id = ?", (ticket_id,)).fetchone()
    if row is None:
        return None
    return _ticket(conn, row)


def _ticket(conn: sqlite3.Connection, row: sqlite3.Row) -> Ticket:
    messages = tuple(
        TicketMessage(
            author=m["author"], author_name=m["author_name"], text=m["text"], create_time=m["create_time"]
        )
        for m in conn.execute(
            "SELECT author, author_name, text, create_time FROM ticket_messages WHERE ticket_id = ? ORDER BY id",
            (row["ticket_id"],),
        )
    )
    return Ticket(
        ticket_id=row["ticket_id"],
        conversation_id=row["conversation_id"],
        customer_id=row["customer_id"],
        priority=row["priority"],
        reason_code=row["reason_code"],
        reason=row["reason"],
        summary=row["summary"],
        tools_tried=tuple(json.loads(row["tools_tried"])),
        sources=tuple(Source(**item) for item in json.loads(row["sources"])),
        status=row["status"],
        assignee=row["assignee"],
        resolution_note=row["resolution_note"],
        estimated_wait=row["estimated_wait"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        messages=messages,
    )


def _require(conn: sqlite3.Connection, ticket_id: str) -> Ticket:
    ticket = _load(conn, ticket_id)
    if ticket is None:
        raise NotFoundError(f"No ticket {ticket_id} was found.")
    return ticket


class SqliteTicketStore:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def create(
        self, ticket_id: str, escalation: Escalation, estimated_wait: str, now: float
    ) -> tuple[Ticket, bool]:
        payload_hash = escalation.payload_hash()
        key = escalation.idempotency_key or None

        def create(tx: sqlite3.Connection) -> tuple[Ticket, bool]:
            candidate = ticket_id
            for _ in range(_ID_ATTEMPTS):
                inserted = tx.execute(
                    _INSERT,
                    (
                        candidate,
                        escalation.conversation_id,
                        escalation.customer_id,
                        escalation.priority,
                        escalation.reason_code,
                        escalation.reason,
                        escalation.summary,
                        json.dumps(list(escalation.tools_tried)),
                        json.dumps([vars(source) for source in escalation.sources]),
                        estimated_wait,
                        key,
                        payload_hash,
                        now,
                        now,
                    ),
                ).rowcount
                if inserted == 1:
                    return _require(tx, candidate), True
                if key is not None:
                    row = tx.execute(
                        "SELECT * FROM tickets WHERE customer_id = ? AND conversation_id = ? "
                        "AND idempotency_key = ?",
                        (escalation.customer_id, escalation.conversation_id, key),
                    ).fetchone()
                    if row is not None:
                        if row["payload_hash"] != payload_hash:
                            # A retry whose summary or reason was rewritten is still the same escalation: the
                            # customer gets the ticket that exists, never "the helpdesk is unreachable".
                            logger.info(
                                "escalation retried with a changed payload; returning the existing ticket",
                                extra={"ticket_id": row["ticket_id"]},
                            )
                        return _ticket(tx, row), False
                row = tx.execute(
                    "SELECT * FROM tickets WHERE customer_id = ? AND conversation_id = ? "
                    "AND status IN ('open', 'assigned')",
                    (escalation.customer_id, escalation.conversation_id),
                ).fetchone()
                if row is not None:
                    if PRIORITIES.index(escalation.priority) > PRIORITIES.index(row["priority"]):
                        # A more urgent escalation of a conversation already waiting raises its priority.
                        tx.execute(
                            "UPDATE tickets SET priority = ?, estimated_wait = ?, update_time = ? WHERE ticket_id = ?",
                            (escalation.priority, estimated_wait, now, row["ticket_id"]),
                        )
                        return _require(tx, row["ticket_id"]), False
                    return _ticket(tx, row), False
                candidate = new_ticket_id()  # the random id collided with an existing ticket
            raise RuntimeError("could not allocate a unique ticket id")

        return await self._db.run(lambda conn: transaction(conn, create))

    async def get(self, ticket_id: str) -> Ticket | None:
        return await self._db.run(lambda conn: _load(conn, ticket_id))

    async def list(self, conversation_id: str, customer_id: str, open_only: bool, limit: int) -> list[Ticket]:
        clauses: list[str] = []
        params: list[object] = []
        if conversation_id:
            clauses.append("conversation_id = ?")
            params.append(conversation_id)
        if customer_id:
            clauses.append("customer_id = ?")
            params.append(customer_id)
        if open_only:
            clauses.append("status IN ('open', 'assigned')")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM tickets {where} ORDER BY create_time DESC, ticket_id LIMIT ?"

        def fetch(conn: sqlite3.Connection) -> list[Ticket]:
            return [_ticket(conn, row) for row in conn.execute(sql, (*params, limit)).fetchall()]

        return await self._db.run(fetch)

    async def claim(self, ticket_id: str, assignee: str, now: float) -> Ticket:
        def claim(tx: sqlite3.Connection) -> Ticket:
            ticket = _require(tx, ticket_id)
            if ticket.status == "assigned" and ticket.assignee == assignee:
                return ticket  # a retried claim
            if ticket.status != "open":
                holder = f" by {ticket.assignee}" if ticket.status == "assigned" else ""
                raise FailedPreconditionError(f"Ticket {ticket_id} is already {ticket.status}{holder}.")
            tx.execute(
                "UPDATE tickets SET status = 'assigned', assignee = ?, update_time = ? WHERE ticket_id = ?",
                (assignee, now, ticket_id),
            )
            return _require(tx, ticket_id)

        return await self._db.run(lambda conn: transaction(conn, claim))

    async def resolve(self, ticket_id: str, note: str, now: float) -> Ticket:
        def resolve(tx: sqlite3.Connection) -> Ticket:
            ticket = _require(tx, ticket_id)
            if ticket.status == "resolved":
                if ticket.resolution_note == note:
                    return ticket  # a retried resolve
                raise FailedPreconditionError(f"Ticket {ticket_id} is already resolved.")
            tx.execute(
                "UPDATE tickets SET status = 'resolved', resolution_note = ?, update_time = ? WHERE ticket_id = ?",
                (note, now, ticket_id),
            )
            return _require(tx, ticket_id)

        return await self._db.run(lambda conn: transaction(conn, resolve))

    async def purge_resolved(self, resolved_before: float) -> int:
        """Deletes tickets resolved (last updated) before `resolved_before`, with their messages; returns how
        many. Open and assigned tickets are never purged, however old."""

        def purge(tx: sqlite3.Connection) -> int:
            stale = "SELECT ticket_id FROM tickets WHERE status = 'resolved' AND update_time < ?"
            tx.execute(f"DELETE FROM ticket_messages WHERE ticket_id IN ({stale})", (resolved_before,))
            return tx.execute(
                "DELETE FROM tickets WHERE status = 'resolved' AND update_time < ?", (resolved_before,)
            ).rowcount

        return await self._db.run(lambda conn: transaction(conn, purge))

    async def append_message(self, ticket_id: str, message: TicketMessage, max_messages: int) -> Ticket:
        def append(tx: sqlite3.Connection) -> Ticket:
            ticket = _require(tx, ticket_id)
            if ticket.status == "resolved":
                raise FailedPreconditionError(
                    f"Ticket {ticket_id} is resolved; messages can no longer be added."
                )
            if len(ticket.messages) >= max_messages:
                raise RateLimitedError(
                    f"Ticket {ticket_id} reached its limit of {max_messages} messages.",
                    limit="messages_per_ticket",
                    retry_after_seconds=0,
                )
            tx.execute(
                "INSERT INTO ticket_messages (ticket_id, author, author_name, text, create_time) VALUES (?, ?, ?, ?, ?)",
                (ticket_id, message.author, message.author_name, message.text, message.create_time),
            )
            tx.execute(
                "UPDATE tickets SET update_time = ? WHERE ticket_id = ?", (message.create_time, ticket_id)
            )
            return _require(tx, ticket_id)

        return await self._db.run(lambda conn: transaction(conn, append))
