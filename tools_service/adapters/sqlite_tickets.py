"""Helpdesk tickets in SQLite, keyed by (customer_id, conversation_id). Idempotency and "one open ticket per
conversation of a customer" are UNIQUE constraints."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar

from tools_service.adapters.sqlite_db import SqliteDatabase, transaction
from tools_service.errors import FailedPreconditionError, NotFoundError, RateLimitedError
from tools_service.tickets import (
    PRIORITIES,
    ConversationWebhookEvent,
    Escalation,
    Source,
    Ticket,
    TicketEvent,
    TicketMessage,
    new_ticket_id,
)

T = TypeVar("T")

# Ticket events (the change feed) and the webhook outbox: written in the same transaction as the change.
EVENTS_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ticket_events (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    type            TEXT NOT NULL,
    ticket_id       TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    customer_id     TEXT NOT NULL,
    data_json       TEXT NOT NULL,
    create_time     REAL NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS ticket_events_by_ticket ON ticket_events (ticket_id)",
    # Conversation events (no ticket) are published by the agent under their own ids, each at most once.
    "CREATE UNIQUE INDEX IF NOT EXISTS ticket_events_conversation_event_id "
    "ON ticket_events (json_extract(data_json, '$.event_id')) WHERE ticket_id = ''",
    """CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_seq       INTEGER NOT NULL,
    url             TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT NOT NULL DEFAULT '',
    delivered_at    REAL,
    UNIQUE (event_seq, url)
)""",
    "CREATE INDEX IF NOT EXISTS webhook_deliveries_pending ON webhook_deliveries (url, status, id)",
)

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


def _record_event(
    tx: sqlite3.Connection, ticket: Ticket, kind: str, now: float, outbox_urls: Sequence[str], **data: str
) -> None:
    """One ticket event and its webhook deliveries, inside the change's transaction."""
    seq = tx.execute(
        "INSERT INTO ticket_events (type, ticket_id, conversation_id, customer_id, data_json, create_time) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (kind, ticket.ticket_id, ticket.conversation_id, ticket.customer_id, json.dumps(data), now),
    ).lastrowid
    for url in outbox_urls:
        tx.execute(
            "INSERT INTO webhook_deliveries (event_seq, url, next_attempt_at) VALUES (?, ?, ?)",
            (seq, url, now),
        )


def _record_conversation_event(
    tx: sqlite3.Connection, event: ConversationWebhookEvent, outbox_urls: Sequence[str]
) -> bool:
    """Queues one conversation event for the webhooks unless its id was queued before; True when queued."""
    known = tx.execute(
        "SELECT 1 FROM ticket_events WHERE ticket_id = '' AND json_extract(data_json, '$.event_id') = ?",
        (event.event_id,),
    ).fetchone()
    if known is not None:
        return False
    data = {"event_id": event.event_id, "payload": event.payload}
    seq = tx.execute(
        "INSERT INTO ticket_events (type, ticket_id, conversation_id, customer_id, data_json, create_time) "
        "VALUES (?, '', ?, ?, ?, ?)",
        (event.type, event.conversation_id, event.customer_id, json.dumps(data), event.create_time),
    ).lastrowid
    for url in outbox_urls:
        tx.execute(
            "INSERT INTO webhook_deliveries (event_seq, url, next_attempt_at) VALUES (?, ?, ?)",
            (seq, url, event.create_time),
        )
    return True


def event_from_row(row: sqlite3.Row) -> TicketEvent:
    data = json.loads(row["data_json"])
    return TicketEvent(
        seq=row["seq"],
        type=row["type"],
        ticket_id=row["ticket_id"],
        conversation_id=row["conversation_id"],
        customer_id=row["customer_id"],
        create_time=row["create_time"],
        assignee=data.get("assignee", ""),
        author=data.get("author", ""),
        author_name=data.get("author_name", ""),
        text=data.get("text", ""),
        resolution_note=data.get("resolution_note", ""),
        priority=data.get("priority", ""),
        external_id=data.get("event_id", ""),
        payload_json=json.dumps(data["payload"], ensure_ascii=False) if "payload" in data else "",
    )


class SqliteTicketStore:
    """`outbox_urls`: every ticket event is queued for delivery to each (tools_service.webhooks delivers)."""

    def __init__(self, db: SqliteDatabase, outbox_urls: Sequence[str] = ()) -> None:
        self._db = db
        self._outbox_urls = tuple(outbox_urls)
        self._schema_ready = False
        self._listeners: list[Callable[[], None]] = []

    @property
    def db(self) -> SqliteDatabase:
        return self._db

    def add_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    async def ensure_schema(self) -> None:
        if not self._schema_ready:

            def create(conn: sqlite3.Connection) -> None:
                for statement in EVENTS_SCHEMA:
                    conn.execute(statement)

            await self._db.run(create)
            self._schema_ready = True

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A ticket change (with its events) in one transaction; then the feed's listeners are woken."""
        await self.ensure_schema()
        result = await self._db.run(lambda conn: transaction(conn, fn))
        self._notify()
        return result

    async def events_after(self, seq: int, limit: int) -> list[TicketEvent]:
        await self.ensure_schema()

        def fetch(conn: sqlite3.Connection) -> list[TicketEvent]:
            rows = conn.execute(
                "SELECT * FROM ticket_events WHERE seq > ? AND ticket_id != '' ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
            return [event_from_row(row) for row in rows]

        return await self._db.run(fetch)

    async def last_event_seq(self) -> int:
        await self.ensure_schema()
        return int(
            await self._db.run(
                lambda conn: conn.execute("SELECT COALESCE(MAX(seq), 0) FROM ticket_events").fetchone()[0]
            )
        )

    async def publish_conversation_events(
        self, events: Sequence[ConversationWebhookEvent]
    ) -> tuple[int, int]:
        """Queues the events for the webhooks in one transaction; returns (queued, duplicates)."""

        def publish(tx: sqlite3.Connection) -> tuple[int, int]:
            queued = sum(_record_conversation_event(tx, event, self._outbox_urls) for event in events)
            return queued, len(events) - queued

        return await self._write(publish)

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
                    ticket = _require(tx, candidate)
                    _record_event(tx, ticket, "created", now, self._outbox_urls, priority=ticket.priority)
                    return ticket, True
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

        return await self._write(create)

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
            claimed = _require(tx, ticket_id)
            _record_event(tx, claimed, "claimed", now, self._outbox_urls, assignee=assignee)
            return claimed

        return await self._write(claim)

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
            resolved = _require(tx, ticket_id)
            _record_event(
                tx,
                resolved,
                "resolved",
                now,
                self._outbox_urls,
                assignee=resolved.assignee,
                resolution_note=note,
            )
            return resolved

        return await self._write(resolve)

    async def purge_resolved(self, resolved_before: float) -> int:
        """Deletes tickets resolved (last updated) before `resolved_before`, with their messages; returns how
        many. Open and assigned tickets are never purged, however old."""

        await self.ensure_schema()

        def purge(tx: sqlite3.Connection) -> int:
            stale = "SELECT ticket_id FROM tickets WHERE status = 'resolved' AND update_time < ?"
            tx.execute(f"DELETE FROM ticket_messages WHERE ticket_id IN ({stale})", (resolved_before,))
            # Their events go too, once no webhook delivery of them is still pending.
            tx.execute(
                f"DELETE FROM webhook_deliveries WHERE status != 'pending' AND event_seq IN "
                f"(SELECT seq FROM ticket_events WHERE ticket_id IN ({stale}))",
                (resolved_before,),
            )
            tx.execute(
                f"DELETE FROM ticket_events WHERE ticket_id IN ({stale}) AND seq NOT IN "
                "(SELECT event_seq FROM webhook_deliveries)",
                (resolved_before,),
            )
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
            updated = _require(tx, ticket_id)
            _record_event(
                tx,
                updated,
                "message_added",
                message.create_time,
                self._outbox_urls,
                author=message.author,
                author_name=message.author_name,
                text=message.text,
            )
            return updated

        return await self._write(append)
