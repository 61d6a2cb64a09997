"""Helpdesk tickets: the escalation payload, access rules and lifecycle OPEN → ASSIGNED → RESOLVED. No gRPC here.

Tickets belong to a customer and are keyed by (customer_id, conversation_id): the same conversation id from two
customers opens two tickets, and neither customer ever sees the other's. Callers (`Caller`, from the principal
service_kit.auth set for the call): a *customer* caller (the agent or a backend acting for one customer) sees
only that customer's tickets (others are NOT_FOUND) and may only append CUSTOMER messages to them; *staff* (a
helpdesk human agent) see every ticket, claim, resolve and reply as HUMAN_AGENT.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from service_kit.codes import ESCALATION_REASON_CODES, PRIORITY_CODES
from tools_service.deadlines import budget, with_timeout
from tools_service.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    UnauthenticatedError,
)
from tools_service.limits import WindowLimiter
from tools_service.text_checks import check_text, clean_message

PRIORITIES = PRIORITY_CODES
REASON_CODES = ESCALATION_REASON_CODES
STATUSES = ("open", "assigned", "resolved")
OPEN_STATUSES = ("open", "assigned")
AUTHORS = ("customer", "human_agent")

MAX_ID_LENGTH = 128
MAX_REASON_LENGTH = 500
MAX_SUMMARY_LENGTH = 4000
MAX_MESSAGE_LENGTH = 4000
MAX_NAME_LENGTH = 100
MAX_LIST_ITEMS = 50
LIST_LIMIT = 200
# A ticket takes at most this many messages (both sides together); further appends are RESOURCE_EXHAUSTED.
MAX_MESSAGES_PER_TICKET = 500
# Tickets a customer may open per minute (idempotent replays and repeat escalations of an open ticket are free).
ESCALATIONS_PER_CUSTOMER_PER_MINUTE = 30

ESTIMATED_WAIT = {"high": "about 5 minutes", "medium": "about 30 minutes", "low": "within 24 hours"}


@dataclass(frozen=True)
class Source:
    doc_id: str
    title: str
    chunk_id: str
    distance: float


@dataclass(frozen=True)
class TicketMessage:
    author: str  # one of AUTHORS
    author_name: str
    text: str
    create_time: float


@dataclass(frozen=True)
class Ticket:
    ticket_id: str
    conversation_id: str
    customer_id: str
    priority: str
    reason_code: str
    reason: str
    summary: str
    tools_tried: tuple[str, ...]
    sources: tuple[Source, ...]
    status: str
    assignee: str
    resolution_note: str
    estimated_wait: str
    create_time: float
    update_time: float
    messages: tuple[TicketMessage, ...] = ()

    def to_tool_content(self) -> dict[str, str]:
        """What the model sees after escalate_to_human."""
        return {
            "ticket_id": self.ticket_id,
            "status": self.status,
            "priority": self.priority,
            "estimated_wait": self.estimated_wait,
        }


@dataclass(frozen=True)
class Caller:
    """Who touches tickets: `customer_id` set for a customer caller (only that customer's tickets), empty for
    staff (`agent_name`: the human agent, author of their replies)."""

    customer_id: str
    agent_name: str = ""

    @property
    def is_staff(self) -> bool:
        return not self.customer_id


@dataclass(frozen=True)
class Escalation:
    """A validated request to hand a conversation to a human."""

    conversation_id: str
    customer_id: str
    priority: str
    reason_code: str
    reason: str
    summary: str = ""
    tools_tried: tuple[str, ...] = ()
    sources: tuple[Source, ...] = field(default_factory=tuple)
    idempotency_key: str = ""

    def payload_hash(self) -> str:
        """Identifies the payload: the same idempotency key with a different hash is a conflict."""
        payload = asdict(self)
        payload.pop("idempotency_key")
        encoded = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


EVENT_TYPES = ("created", "claimed", "message_added", "resolved")
# Conversation events share the event table and the webhook outbox (tools_service/webhooks.py) but not the
# ticket change feed.
CONVERSATION_EVENT_PREFIX = "conversation."
# How often a ticket feed looks for events other processes wrote (its own are seen at once).
FEED_POLL_SECONDS = 0.5
FEED_HEARTBEAT_SECONDS = 15.0
FEED_BATCH = 200


@dataclass(frozen=True)
class ConversationWebhookEvent:
    """A conversation event the agent publishes for the helpdesk webhooks (PublishConversationEvents)."""

    event_id: str
    type: str  # "conversation.<kind>"
    conversation_id: str
    customer_id: str
    create_time: float
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class TicketEvent:
    """One change of a ticket, stored in the same transaction as the change (the feed and the webhook outbox
    read these). `seq` increases by one per event across all tickets."""

    seq: int
    type: str  # one of EVENT_TYPES
    ticket_id: str
    conversation_id: str
    customer_id: str
    create_time: float
    assignee: str = ""
    author: str = ""
    author_name: str = ""
    text: str = ""
    resolution_note: str = ""
    priority: str = ""
    # A conversation event the agent published for the webhooks (type "conversation.<kind>", no ticket): its
    # own id and its payload as JSON.
    external_id: str = ""
    payload_json: str = ""

    @property
    def event_id(self) -> str:
        return self.external_id or f"tev-{self.seq}"

    @property
    def webhook_type(self) -> str:
        """The `type` of the webhook body: "ticket.<type>", or a conversation event's own "conversation.<kind>"."""
        return self.type if self.type.startswith(CONVERSATION_EVENT_PREFIX) else f"ticket.{self.type}"


class TicketStore(Protocol):
    """Durable tickets. `create` is idempotent per (customer_id, conversation_id, idempotency_key) and keeps at
    most one open ticket per (customer_id, conversation_id); both through UNIQUE constraints, never
    check-then-insert."""

    async def create(
        self, ticket_id: str, escalation: Escalation, estimated_wait: str, now: float
    ) -> tuple[Ticket, bool]:
        """(ticket, created). A known key returns its ticket, whatever the payload (a retried escalation whose
        summary changed is still the same escalation)."""
        ...

    async def get(self, ticket_id: str) -> Ticket | None: ...

    async def list(self, conversation_id: str, customer_id: str, open_only: bool, limit: int) -> list[Ticket]:
        """Newest first; empty conversation_id/customer_id means no filter on it."""
        ...

    async def claim(self, ticket_id: str, assignee: str, now: float) -> Ticket: ...

    async def resolve(self, ticket_id: str, note: str, now: float) -> Ticket: ...

    async def append_message(self, ticket_id: str, message: TicketMessage, max_messages: int) -> Ticket:
        """Raises RateLimitedError when the ticket already holds `max_messages`."""
        ...

    async def events_after(self, seq: int, limit: int) -> builtins.list[TicketEvent]:
        """Ticket events with seq > `seq`, oldest first."""
        ...

    async def last_event_seq(self) -> int: ...

    async def publish_conversation_events(
        self, events: Sequence[ConversationWebhookEvent]
    ) -> tuple[int, int]:
        """Queues conversation events for the webhooks, skipping ids queued before: (queued, duplicates)."""
        ...

    def add_listener(self, listener: Callable[[], None]) -> None:
        """`listener()` is called after this process committed ticket events."""
        ...


def new_ticket_id() -> str:
    """TKT- + 12 random base32 characters (60 bits): unique, unguessable, never a fixed demo id."""
    return "TKT-" + "".join(secrets.choice("0123456789ABCDEFGHJKMNPQRSTVWXYZ") for _ in range(12))


def _check_id(field_name: str, value: str) -> str:
    return check_text(field_name, value, MAX_ID_LENGTH, required=True, multiline=False)


MAX_IDEMPOTENCY_KEY_LENGTH = 512


def stored_idempotency_key(value: str) -> str:
    """A caller's idempotency key as stored: keys longer than MAX_ID_LENGTH (a 128-character turn id plus
    ':' and a call id) are kept as their SHA-256, so any key up to MAX_IDEMPOTENCY_KEY_LENGTH works."""
    key = check_text("idempotency_key", value, MAX_IDEMPOTENCY_KEY_LENGTH, required=False, multiline=False)
    if len(key) <= MAX_ID_LENGTH:
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


MAX_PUBLISHED_EVENTS = 500
MAX_EVENT_PAYLOAD_BYTES = 64 * 1024
_EVENT_KIND = re.compile(r"[a-z][a-z_]{0,39}")


def validate_conversation_event(
    *, event_id: str, type: str, conversation_id: str, customer_id: str, create_time: float, data_json: str
) -> ConversationWebhookEvent:
    """A published conversation event, checked: ids, a "conversation.<kind>" type, a JSON object payload."""
    _check_id("event_id", event_id)
    _check_id("conversation_id", conversation_id)
    kind = type.removeprefix(CONVERSATION_EVENT_PREFIX)
    if not type.startswith(CONVERSATION_EVENT_PREFIX) or not _EVENT_KIND.fullmatch(kind):
        raise InvalidArgumentError(
            "type", 'type must look like "conversation.<kind>", e.g. conversation.bot_reply.'
        )
    check_text("customer_id", customer_id, MAX_ID_LENGTH, required=False, multiline=False)
    if len(data_json.encode("utf-8")) > MAX_EVENT_PAYLOAD_BYTES:
        raise InvalidArgumentError("data_json", f"data_json is larger than {MAX_EVENT_PAYLOAD_BYTES} bytes.")
    try:
        payload = json.loads(data_json or "{}")
    except (ValueError, RecursionError):
        raise InvalidArgumentError("data_json", "data_json is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise InvalidArgumentError("data_json", "data_json must be a JSON object.")
    return ConversationWebhookEvent(
        event_id=event_id,
        type=type,
        conversation_id=conversation_id,
        customer_id=customer_id,
        create_time=create_time or time.time(),
        payload=payload,
    )


def validate_escalation(
    *,
    conversation_id: str,
    customer_id: str,
    priority: str,
    reason_code: str,
    reason: str,
    summary: str = "",
    tools_tried: tuple[str, ...] = (),
    sources: tuple[Source, ...] = (),
    idempotency_key: str = "",
) -> Escalation:
    """Checks an escalation from any caller: enums, lengths, control characters. Text the *model* wrote is
    also checked for prompt-injection strings, by the tool runner, before it gets here; the agent's own
    summary may quote the customer verbatim and is not."""
    if priority not in PRIORITIES:
        raise InvalidArgumentError("priority", f"priority must be one of {', '.join(PRIORITIES)}.")
    if reason_code not in REASON_CODES:
        raise InvalidArgumentError("reason_code", "reason_code is required.")
    if len(tools_tried) > MAX_LIST_ITEMS:
        raise InvalidArgumentError("tools_tried", f"tools_tried has more than {MAX_LIST_ITEMS} items.")
    if len(sources) > MAX_LIST_ITEMS:
        raise InvalidArgumentError("sources", f"sources has more than {MAX_LIST_ITEMS} items.")
    return Escalation(
        conversation_id=_check_id("conversation_id", conversation_id),
        customer_id=customer_id,
        priority=priority,
        reason_code=reason_code,
        reason=check_text("reason", reason, MAX_REASON_LENGTH, required=True, multiline=True),
        summary=check_text("summary", summary, MAX_SUMMARY_LENGTH, required=False, multiline=True),
        tools_tried=tuple(
            check_text("tools_tried", name, MAX_NAME_LENGTH, required=True, multiline=False)
            for name in tools_tried
        ),
        sources=sources,
        idempotency_key=stored_idempotency_key(idempotency_key),
    )


class TicketService:
    def __init__(
        self,
        store: TicketStore,
        timeout_seconds: float,
        *,
        max_messages: int = MAX_MESSAGES_PER_TICKET,
        escalation_limiter: WindowLimiter | None = None,
    ) -> None:
        self._store = store
        self._timeout = timeout_seconds
        self._max_messages = max_messages
        self._escalations = escalation_limiter or WindowLimiter(
            ESCALATIONS_PER_CUSTOMER_PER_MINUTE, "escalations_per_customer_per_minute", "new tickets"
        )

    async def publish_conversation_events(
        self, events: Sequence[ConversationWebhookEvent], deadline: float | None
    ) -> tuple[int, int]:
        if len(events) > MAX_PUBLISHED_EVENTS:
            raise InvalidArgumentError("events", f"send at most {MAX_PUBLISHED_EVENTS} events per call.")
        if not events:
            return 0, 0
        return await with_timeout(
            self._store.publish_conversation_events(events), budget(self._timeout, deadline), "ticket system"
        )

    async def _visible(self, caller: Caller, ticket_id: str, deadline: float | None) -> Ticket:
        _check_id("ticket_id", ticket_id)
        ticket = await with_timeout(
            self._store.get(ticket_id), budget(self._timeout, deadline), "ticket system"
        )
        if ticket is None or (not caller.is_staff and ticket.customer_id != caller.customer_id):
            raise NotFoundError(f"No ticket {ticket_id} was found.")
        return ticket

    @staticmethod
    def _staff_only(caller: Caller, action: str) -> None:
        if not caller.is_staff:
            raise PermissionDeniedError(f"Only helpdesk staff may {action} a ticket.")

    async def escalate(self, escalation: Escalation, deadline: float | None) -> tuple[Ticket, bool]:
        """Opens (or returns) the customer's ticket for the conversation; at most
        ESCALATIONS_PER_CUSTOMER_PER_MINUTE new tickets per customer per minute."""
        if not escalation.customer_id:
            raise UnauthenticatedError("Escalating needs the customer's identity (x-customer-id).")
        seconds = budget(self._timeout, deadline)
        try:
            self._escalations.check(escalation.customer_id)
        except RateLimitedError:
            # Over the limit: a repeat escalation of the conversation's open ticket still gets that ticket.
            waiting = await with_timeout(
                self._store.list(escalation.conversation_id, escalation.customer_id, True, 1),
                seconds,
                "ticket system",
            )
            if waiting:
                return waiting[0], False
            raise
        wait = ESTIMATED_WAIT[escalation.priority]
        ticket, created = await with_timeout(
            self._store.create(new_ticket_id(), escalation, wait, time.time()), seconds, "ticket system"
        )
        if created:
            self._escalations.record(escalation.customer_id)
        return ticket, created

    async def get(self, caller: Caller, ticket_id: str, deadline: float | None) -> Ticket:
        return await self._visible(caller, ticket_id, deadline)

    async def list(
        self, caller: Caller, conversation_id: str, open_only: bool, deadline: float | None
    ) -> list[Ticket]:
        if conversation_id:
            _check_id("conversation_id", conversation_id)
        return await with_timeout(
            self._store.list(conversation_id, caller.customer_id, open_only, LIST_LIMIT),
            budget(self._timeout, deadline),
            "ticket system",
        )

    async def claim(self, caller: Caller, ticket_id: str, assignee: str, deadline: float | None) -> Ticket:
        self._staff_only(caller, "claim")
        assignee = check_text("assignee", assignee, MAX_NAME_LENGTH, required=True, multiline=False)
        await self._visible(caller, ticket_id, deadline)
        return await with_timeout(
            self._store.claim(ticket_id, assignee, time.time()),
            budget(self._timeout, deadline),
            "ticket system",
        )

    async def resolve(self, caller: Caller, ticket_id: str, note: str, deadline: float | None) -> Ticket:
        self._staff_only(caller, "resolve")
        note = check_text("resolution_note", note, MAX_MESSAGE_LENGTH, required=True, multiline=True)
        await self._visible(caller, ticket_id, deadline)
        return await with_timeout(
            self._store.resolve(ticket_id, note, time.time()),
            budget(self._timeout, deadline),
            "ticket system",
        )

    async def append(
        self,
        caller: Caller,
        ticket_id: str,
        author: str,
        author_name: str,
        text: str,
        deadline: float | None,
    ) -> Ticket:
        """Staff write as HUMAN_AGENT (named by `author_name`, else their x-agent-name); a customer caller writes
        as CUSTOMER on its own tickets only."""
        if author not in AUTHORS:
            raise InvalidArgumentError(
                "author", "author must be MESSAGE_AUTHOR_CUSTOMER or MESSAGE_AUTHOR_HUMAN_AGENT."
            )
        # Chat text is stored for a human to read: control characters are dropped rather than refused (the
        # customer's message must reach the human), and "injection" phrases are kept (anyone may quote them).
        text = clean_message(text)
        if not text:
            raise InvalidArgumentError("text", "text is required.")
        if len(text) > MAX_MESSAGE_LENGTH:
            raise InvalidArgumentError("text", f"text is longer than {MAX_MESSAGE_LENGTH} characters.")
        if author == "human_agent":
            self._staff_only(caller, "reply on")
            author_name = check_text(
                "author_name",
                author_name or caller.agent_name,
                MAX_NAME_LENGTH,
                required=True,
                multiline=False,
            )
        elif caller.is_staff:
            raise PermissionDeniedError("Helpdesk staff reply as MESSAGE_AUTHOR_HUMAN_AGENT.")
        else:
            author_name = check_text(
                "author_name", author_name, MAX_NAME_LENGTH, required=False, multiline=False
            )
        ticket = await self._visible(caller, ticket_id, deadline)
        if ticket.status == "resolved":
            raise FailedPreconditionError(f"Ticket {ticket_id} is resolved; messages can no longer be added.")
        message = TicketMessage(author=author, author_name=author_name, text=text, create_time=time.time())
        return await with_timeout(
            self._store.append_message(ticket_id, message, self._max_messages),
            budget(self._timeout, deadline),
            "ticket system",
        )


class TicketFeed:
    """The ticket change feed one WatchTicketEvents stream reads: the events after a seq, then live ones (woken
    at once by this process's writes, and every FEED_POLL_SECONDS for other processes sharing the store), with
    a heartbeat (the newest seq) after FEED_HEARTBEAT_SECONDS without an event."""

    def __init__(
        self,
        store: TicketStore,
        *,
        poll_seconds: float = FEED_POLL_SECONDS,
        heartbeat_seconds: float = FEED_HEARTBEAT_SECONDS,
    ) -> None:
        self._store = store
        self._poll_seconds = poll_seconds
        self._heartbeat_seconds = heartbeat_seconds
        self._waiters: set[asyncio.Event] = set()
        store.add_listener(self._wake)

    def _wake(self) -> None:
        for waiter in self._waiters:
            waiter.set()

    async def watch(self, after_seq: int) -> AsyncIterator[TicketEvent | int]:
        """TicketEvents, and ints (the newest seq) as heartbeats."""
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        loop = asyncio.get_running_loop()
        position = max(0, after_seq)
        try:
            yield await self._store.last_event_seq()
            idle_since = loop.time()
            while True:
                waiter.clear()
                batch = await self._store.events_after(position, FEED_BATCH)
                for event in batch:
                    position = event.seq
                    yield event
                if batch:
                    idle_since = loop.time()
                    if len(batch) == FEED_BATCH:
                        continue
                if loop.time() - idle_since >= self._heartbeat_seconds:
                    idle_since = loop.time()
                    yield position
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.wait(), timeout=self._poll_seconds)
        finally:
            self._waiters.discard(waiter)
