"""Helpdesk webhooks: every ticket event and every conversation event the agent publishes
(PublishConversationEvents: customer message, bot reply, escalation, hand-back, action, ...), POSTed as signed
JSON to the URLs an operator configures.

The outbox is durable: a ticket change writes its event and one `webhook_deliveries` row per configured URL in
the same SQLite transaction (adapters/sqlite_tickets.py), so an event is never lost between the change and
its delivery, and a restart picks up where the last process stopped. `WebhookDeliverer` sends, per URL, the
oldest pending delivery first (so a receiver sees each conversation's events in order), at least once:

* 2xx → delivered. Anything else (a 5xx, a 4xx, a timeout, a refused connection) → retried after
  `backoff_seconds · 2^(attempts-1)` (capped at `max_backoff_seconds`, with jitter: 50-100 % of it).
* After `max_attempts` failed attempts the delivery is dead-lettered (status `dead`) and the next one goes.
  `support-tickets webhooks` lists pending and dead deliveries and requeues dead ones (`--redeliver`).

The body is `{"id", "type", "time", "data"}`; the headers carry the event id and type, a timestamp and
`X-Support-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`. A receiver recomputes the HMAC over
the raw body, compares in constant time and refuses timestamps outside its replay window (`verify_signature`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from tools_service.adapters.sqlite_db import SqliteDatabase, transaction
from tools_service.adapters.sqlite_tickets import event_from_row
from tools_service.tickets import TicketEvent
from tools_service.webhooks_config import WebhookSettings

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Support-Signature"
TIMESTAMP_HEADER = "X-Support-Timestamp"
EVENT_ID_HEADER = "X-Support-Event-Id"
EVENT_TYPE_HEADER = "X-Support-Event-Type"
DEFAULT_REPLAY_WINDOW_SECONDS = 300
MAX_ERROR_CHARS = 300
STATUSES = ("pending", "delivered", "dead")


# --- the message -------------------------------------------------------------------------------------------


def event_payload(event: TicketEvent) -> dict[str, Any]:
    data: dict[str, Any]
    if event.payload_json:  # a conversation event: the agent's payload as published
        data = json.loads(event.payload_json)
        data.setdefault("conversation_id", event.conversation_id)
        data.setdefault("customer_id", event.customer_id)
        return {
            "id": event.event_id,
            "type": event.webhook_type,
            "time": _iso(event.create_time),
            "data": data,
        }
    data = {
        "ticket_id": event.ticket_id,
        "conversation_id": event.conversation_id,
        "customer_id": event.customer_id,
    }
    if event.type == "created":
        data["priority"] = event.priority
    elif event.type == "claimed":
        data["assignee"] = event.assignee
    elif event.type == "message_added":
        data.update(author=event.author, author_name=event.author_name, text=event.text)
    elif event.type == "resolved":
        data.update(assignee=event.assignee, resolution_note=event.resolution_note)
    return {"id": event.event_id, "type": event.webhook_type, "time": _iso(event.create_time), "data": data}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify_signature(
    secret: str,
    body: bytes,
    timestamp_header: str,
    signature_header: str,
    *,
    now: float | None = None,
    window_seconds: float = DEFAULT_REPLAY_WINDOW_SECONDS,
) -> bool:
    """What a receiver checks: the timestamp is within the replay window and the signature matches."""
    try:
        timestamp = int(timestamp_header)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - timestamp) > window_seconds:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature_header)


def signed_request(secret: str, event: TicketEvent, now: float | None = None) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(event_payload(event), ensure_ascii=False, separators=(",", ":")).encode()
    timestamp = int(time.time() if now is None else now)
    headers = {
        "Content-Type": "application/json",
        EVENT_ID_HEADER: event.event_id,
        EVENT_TYPE_HEADER: event.webhook_type,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }
    return body, headers


# --- the outbox ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    delivery_id: int
    url: str
    status: str
    attempts: int
    next_attempt_at: float
    last_error: str
    event: TicketEvent


_SELECT = (
    "SELECT d.id AS delivery_id, d.url, d.status, d.attempts, d.next_attempt_at, d.last_error, e.* "
    "FROM webhook_deliveries d JOIN ticket_events e ON e.seq = d.event_seq"
)


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(
        delivery_id=row["delivery_id"],
        url=row["url"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        event=event_from_row(row),
    )


class Outbox:
    """The webhook_deliveries table (created with the ticket events; see SqliteTicketStore.ensure_schema)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def head(self, url: str) -> Delivery | None:
        """The oldest pending delivery to `url`."""

        def fetch(conn: sqlite3.Connection) -> Delivery | None:
            row = conn.execute(
                f"{_SELECT} WHERE d.url = ? AND d.status = 'pending' ORDER BY d.id LIMIT 1", (url,)
            ).fetchone()
            return _delivery(row) if row else None

        return await self._db.run(fetch)

    async def mark_delivered(self, delivery_id: int, now: float) -> None:
        await self._db.run(
            lambda conn: conn.execute(
                "UPDATE webhook_deliveries SET status = 'delivered', attempts = attempts + 1, "
                "delivered_at = ?, last_error = '' WHERE id = ?",
                (now, delivery_id),
            )
        )

    async def mark_failed(self, delivery_id: int, error: str, next_attempt_at: float, dead: bool) -> None:
        await self._db.run(
            lambda conn: conn.execute(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?, "
                "status = ? WHERE id = ?",
                (error[:MAX_ERROR_CHARS], next_attempt_at, "dead" if dead else "pending", delivery_id),
            )
        )

    async def list(self, statuses: tuple[str, ...], limit: int) -> list[Delivery]:
        marks = ", ".join("?" for _ in statuses)

        def fetch(conn: sqlite3.Connection) -> list[Delivery]:
            rows = conn.execute(
                f"{_SELECT} WHERE d.status IN ({marks}) ORDER BY d.id LIMIT ?", (*statuses, limit)
            ).fetchall()
            return [_delivery(row) for row in rows]

        return await self._db.run(fetch)

    async def requeue_dead(self, delivery_ids: tuple[int, ...], now: float) -> int:
        """Dead deliveries (all, or those named) back to pending with a fresh attempt count."""

        def requeue(tx: sqlite3.Connection) -> int:
            sql = (
                "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = ? "
                "WHERE status = 'dead'"
            )
            if not delivery_ids:
                return tx.execute(sql, (now,)).rowcount
            marks = ", ".join("?" for _ in delivery_ids)
            return tx.execute(f"{sql} AND id IN ({marks})", (now, *delivery_ids)).rowcount

        return await self._db.run(lambda conn: transaction(conn, requeue))


# --- delivery -------------------------------------------------------------------------------------------------


def backoff_delay(settings: WebhookSettings, attempts: int, rng: random.Random | None = None) -> float:
    """The wait after the `attempts`-th failure: exponential, capped, 50-100 % jitter."""
    base = min(settings.max_backoff_seconds, settings.backoff_seconds * 2.0 ** max(0, attempts - 1))
    return float(base * (0.5 + 0.5 * (rng or random).random()))


class WebhookDeliverer:
    """One task per configured URL, each sending that URL's pending deliveries oldest first."""

    def __init__(self, outbox: Outbox, settings: WebhookSettings) -> None:
        self._outbox = outbox
        self._settings = settings
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None

    def wake(self) -> None:
        """A new event was written: deliver it now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        if not self._settings.urls:
            return
        self._client = httpx.AsyncClient(timeout=self._settings.timeout_seconds, follow_redirects=False)
        self._tasks = [
            asyncio.create_task(self._run(url), name=f"webhook-deliverer-{index}")
            for index, url in enumerate(self._settings.urls)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self, url: str) -> None:
        while True:
            try:
                delay = await self._deliver_next(url)
            except Exception:
                logger.exception("webhook delivery loop failed; retrying")
                delay = self._settings.poll_seconds
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=min(delay, self._settings.poll_seconds))

    async def _deliver_next(self, url: str) -> float:
        """Attempts the head of `url`'s queue if it is due; returns how long to wait before looking again."""
        delivery = await self._outbox.head(url)
        if delivery is None:
            return self._settings.poll_seconds
        now = time.time()
        if delivery.next_attempt_at > now:
            return float(delivery.next_attempt_at) - now
        error = await self._post(delivery)
        if error is None:
            await self._outbox.mark_delivered(delivery.delivery_id, time.time())
            return 0.0
        attempts = delivery.attempts + 1
        dead = attempts >= self._settings.max_attempts
        next_at = time.time() + backoff_delay(self._settings, attempts)
        await self._outbox.mark_failed(delivery.delivery_id, error, next_at, dead)
        log = logger.error if dead else logger.warning
        log(
            "webhook delivery dead-lettered" if dead else "webhook delivery failed; will retry",
            extra={"event_id": delivery.event.event_id, "attempts": attempts, "error": error[:200]},
        )
        return 0.0 if dead else next_at - time.time()

    async def _post(self, delivery: Delivery) -> str | None:
        """None when the receiver accepted the event (2xx), else what went wrong."""
        assert self._client is not None
        body, headers = signed_request(self._settings.secret, delivery.event)
        try:
            response = await self._client.post(delivery.url, content=body, headers=headers)
        except httpx.HTTPError as error:
            return f"{type(error).__name__}: {error}"
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"
