"""The conversation's event log: what WatchConversation delivers, in order, each event with its offset.

Every event of a conversation — customer message, write action (proposed, run or dropped), bot reply (sources,
tool calls, flags), escalation, state change, ticket claimed, human reply, ticket resolved, hand-back — is one row of the log in the conversation
store, with offsets 1, 2, 3, … per conversation. No gRPC here.

* A turn's events are written by the store in the same transaction as the turn (`events_of_turn`), so the
  log and the transcript never disagree.
* Human actions happen in tools_service. `TicketEventFollower` (adapters/ticket_feed.py) reads its ticket
  change feed (`WatchTicketEvents`) and appends `events_of_ticket_change` to the conversation, each under a
  `source_key` ("ticket:<event id>") the store keeps unique per conversation: several agent replicas may all
  follow the feed and each change still appears once.
* `EventHub` wakes the streams of a conversation when its log grows: at once for writes of this process
  (the store calls `notify` after each commit), and by polling the store's global change feed every
  `poll_seconds` for writes of other replicas.
* `ConversationWatcher.watch` is one stream: the history after an offset (or none), then live events, then
  heartbeats while idle. It reads the log in batches of at most `batch_events`; the servicer writes each
  event with a deadline (`slow_consumer_seconds`), so a consumer that stops reading holds at most one batch
  plus gRPC's flow-control window in memory and is then cut off with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from agent_service.domain import TurnResult
from agent_service.errors import (
    AgentError,
    ConversationNotFoundError,
    NotYourConversationError,
    OverloadedError,
    ShuttingDownError,
)
from service_kit.env import env_float, env_int

logger = logging.getLogger(__name__)

# Kinds of event (the `event` oneof of support.v1.ConversationEvent).
CUSTOMER_MESSAGE = "customer_message"
BOT_REPLY = "bot_reply"
ESCALATION = "escalation"
STATE_CHANGE = "state_change"
TICKET_CLAIMED = "ticket_claimed"
HUMAN_REPLY = "human_reply"
TICKET_RESOLVED = "ticket_resolved"
HAND_BACK = "hand_back"
ACTION = "action"
KINDS = (
    CUSTOMER_MESSAGE,
    BOT_REPLY,
    ESCALATION,
    STATE_CHANGE,
    TICKET_CLAIMED,
    HUMAN_REPLY,
    TICKET_RESOLVED,
    HAND_BACK,
    ACTION,
)

DEFAULT_HEARTBEAT_SECONDS = 15.0
MIN_HEARTBEAT_SECONDS = 1.0
MAX_HEARTBEAT_SECONDS = 300.0


def claimed_text(assignee: str) -> str:
    return f"{assignee} has joined the conversation."


HAND_BACK_TEXT = "You're chatting with our automated assistant again."


class OffsetOutOfRangeError(AgentError):
    """after_offset is beyond the conversation's last event. → OUT_OF_RANGE (the message names the end)."""

    def __init__(self, after_offset: int, end_offset: int) -> None:
        super().__init__(
            f"after_offset {after_offset} is beyond the end of the conversation (end_offset {end_offset})"
        )
        self.end_offset = end_offset


class SlowConsumerError(OverloadedError):
    """The caller did not read the stream for too long. → RESOURCE_EXHAUSTED; resume from the last offset."""


@dataclass(frozen=True)
class ConversationEvent:
    conversation_id: str
    offset: int
    kind: str
    data: Mapping[str, Any]
    create_time: float


@dataclass(frozen=True)
class NewEvent:
    """An event to append: `source_key` (optional) makes the append idempotent per conversation."""

    kind: str
    data: Mapping[str, Any]
    source_key: str = ""
    create_time: float = 0.0


@dataclass(frozen=True)
class TicketChange:
    """One change of a ticket, as the tools service's feed reports it."""

    seq: int
    event_id: str
    type: str  # created | claimed | message_added | resolved
    ticket_id: str
    conversation_id: str
    customer_id: str
    create_time: float
    assignee: str = ""
    author: str = ""  # customer | human_agent
    author_name: str = ""
    text: str = ""


@runtime_checkable
class EventLog(Protocol):
    """The event half of the conversation store (SQLite and Redis implement it)."""

    async def conversation_owner(self, conversation_id: str) -> str | None:
        """The customer a conversation belongs to ("" for none yet); None when the conversation is unknown."""
        ...

    async def append_events(
        self, conversation_id: str, events: Sequence[NewEvent], customer_id: str | None = None
    ) -> list[ConversationEvent]:
        """Appends atomically with the next offsets; events whose source_key is already in the conversation
        are skipped. With `customer_id`, nothing is appended unless the conversation exists and belongs to
        that customer. Returns what was appended."""
        ...

    async def read_events(
        self, conversation_id: str, after_offset: int, limit: int
    ) -> list[ConversationEvent]:
        """Events with offset > after_offset, oldest first, at most `limit`."""
        ...

    async def end_offset(self, conversation_id: str) -> int:
        """The last offset (0 for none)."""
        ...

    async def changed_since(self, cursor: str) -> tuple[str, set[str]]:
        """The global change feed: (new cursor, conversations with events written after `cursor`). The cursor
        "" means "now": returns the current position and no conversations; `feed_start` the beginning."""
        ...

    @property
    def feed_start(self) -> str:
        """The change feed's first position: `changed_since(feed_start)` reads it from the beginning."""
        ...

    async def get_cursor(self, name: str) -> int: ...

    async def set_cursor(self, name: str, value: int) -> None: ...

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """`listener(conversation_id)` is called after events of the conversation were committed here."""
        ...


# --- what becomes an event ---------------------------------------------------------------------------------


def events_of_turn(turn: TurnResult) -> list[NewEvent]:
    """The events one stored turn adds to the log (a hand-back note adds none: the resolve already did)."""
    if turn.system_note:
        return []
    when = turn.create_time or time.time()
    events = []
    if turn.user_message:
        events.append(
            NewEvent(CUSTOMER_MESSAGE, {"turn_id": turn.turn_id, "text": turn.user_message}, "", when)
        )
    if turn.action is not None:
        events.append(NewEvent(ACTION, asdict(turn.action), "", when))
    if turn.escalation is not None:
        events.append(NewEvent(ESCALATION, asdict(turn.escalation), "", when))
    events.append(
        NewEvent(
            BOT_REPLY,
            {
                "turn_id": turn.turn_id,
                "text": turn.reply,
                "sources": [asdict(source) for source in turn.sources],
                "tool_calls": [asdict(call) for call in turn.tool_calls],
                "guardrail_flags": [asdict(flag) for flag in turn.flags],
            },
            "",
            when,
        )
    )
    if turn.escalation is not None:
        events.append(
            NewEvent(
                STATE_CHANGE,
                {"state": turn.state, "ticket_id": turn.ticket_id, "assignee": turn.assignee},
                "",
                when,
            )
        )
    return events


def events_of_ticket_change(change: TicketChange) -> list[NewEvent]:
    """The customer-facing events of a ticket change (creation is the turn's escalation event already; the
    customer's own messages are the turn's customer_message)."""
    key = f"ticket:{change.event_id}"
    when = change.create_time
    ticket = change.ticket_id
    if change.type == "claimed":
        return [
            NewEvent(
                TICKET_CLAIMED,
                {"ticket_id": ticket, "assignee": change.assignee, "text": claimed_text(change.assignee)},
                key,
                when,
            ),
            NewEvent(
                STATE_CHANGE,
                {"state": "human", "ticket_id": ticket, "assignee": change.assignee},
                key + ":state",
                when,
            ),
        ]
    if change.type == "message_added" and change.author == "human_agent":
        return [
            NewEvent(
                HUMAN_REPLY,
                {"ticket_id": ticket, "author_name": change.author_name, "text": change.text},
                key,
                when,
            )
        ]
    if change.type == "resolved":
        return [
            NewEvent(TICKET_RESOLVED, {"ticket_id": ticket, "assignee": change.assignee}, key, when),
            NewEvent(STATE_CHANGE, {"state": "bot", "ticket_id": "", "assignee": ""}, key + ":state", when),
            NewEvent(HAND_BACK, {"ticket_id": ticket, "text": HAND_BACK_TEXT}, key + ":handback", when),
        ]
    return []


# --- waking streams -------------------------------------------------------------------------------------------


class EventHub:
    """Per-process wake-ups of the streams watching a conversation."""

    def __init__(self, log: EventLog, poll_seconds: float = 0.2) -> None:
        self._log = log
        self._poll_seconds = poll_seconds
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._poller: asyncio.Task[None] | None = None
        self.draining = False
        log.add_listener(self.notify)

    @property
    def watchers(self) -> int:
        return sum(len(waiters) for waiters in self._waiters.values())

    def notify(self, conversation_id: str) -> None:
        for waiter in self._waiters.get(conversation_id, ()):
            waiter.set()

    def subscribe(self, conversation_id: str) -> asyncio.Event:
        waiter = asyncio.Event()
        self._waiters[conversation_id].add(waiter)
        if self._poll_seconds > 0 and (self._poller is None or self._poller.done()):
            self._poller = asyncio.create_task(self._poll(), name="conversation-event-poller")
        return waiter

    def unsubscribe(self, conversation_id: str, waiter: asyncio.Event) -> None:
        waiters = self._waiters.get(conversation_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[conversation_id]

    async def _poll(self) -> None:
        """Events other replicas wrote (this replica's own writes notify at once)."""
        cursor = ""
        while self._waiters:
            try:
                cursor, changed = await self._log.changed_since(cursor)
            except Exception as error:  # a store outage: keep the streams, try again
                logger.warning("could not poll the conversation event feed", extra={"error": str(error)})
                changed = set()
            for conversation_id in changed:
                self.notify(conversation_id)
            await asyncio.sleep(self._poll_seconds)

    async def drain(self) -> None:
        """Ends every open stream (they raise ShuttingDownError) so a shutdown does not wait for them."""
        self.draining = True
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.set()

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)


# --- one stream -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Heartbeat:
    end_offset: int
    time: float


@dataclass(frozen=True)
class WatchSettings:
    """WATCH_HEARTBEAT_SECONDS, WATCH_BATCH_EVENTS (the per-stream buffer), WATCH_SLOW_CONSUMER_SECONDS,
    WATCH_POLL_SECONDS (how often other replicas' writes are looked for)."""

    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    batch_events: int = 64
    slow_consumer_seconds: float = 10.0
    poll_seconds: float = 0.2

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WatchSettings:
        return cls(
            heartbeat_seconds=min(
                MAX_HEARTBEAT_SECONDS,
                env_float(
                    "WATCH_HEARTBEAT_SECONDS",
                    DEFAULT_HEARTBEAT_SECONDS,
                    environ,
                    minimum=MIN_HEARTBEAT_SECONDS,
                ),
            ),
            batch_events=env_int("WATCH_BATCH_EVENTS", 64, environ, minimum=1),
            slow_consumer_seconds=env_float("WATCH_SLOW_CONSUMER_SECONDS", 10.0, environ, minimum=0.01),
            poll_seconds=env_float("WATCH_POLL_SECONDS", 0.2, environ, minimum=0.01),
        )


class ConversationWatcher:
    def __init__(self, log: EventLog, hub: EventHub, settings: WatchSettings) -> None:
        self._log = log
        self._hub = hub
        self.settings = settings
        # Streams of one conversation at the same offset share one read of the log (a reply fanned out to a
        # thousand watches is one query, not a thousand).
        self._reads: dict[tuple[str, int], asyncio.Future[list[ConversationEvent]]] = {}

    def _forget(self, key: tuple[str, int], done: asyncio.Future[list[ConversationEvent]]) -> None:
        self._reads.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved: a failed read with no waiter left is not "never retrieved"

    async def _read(self, conversation_id: str, after_offset: int) -> list[ConversationEvent]:
        key = (conversation_id, after_offset)
        pending = self._reads.get(key)
        if pending is None:
            pending = asyncio.ensure_future(
                self._log.read_events(conversation_id, after_offset, self.settings.batch_events)
            )
            self._reads[key] = pending
            pending.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(pending)

    async def history(self, conversation_id: str, limit: int) -> list[ConversationEvent]:
        return await self._log.read_events(conversation_id, 0, limit)

    async def authorize(self, conversation_id: str, customer_scope: str) -> None:
        """NOT_FOUND for an unknown conversation, PERMISSION_DENIED for another customer's ("" = staff)."""
        owner = await self._log.conversation_owner(conversation_id)
        if owner is None:
            raise ConversationNotFoundError(f"no conversation {conversation_id!r}")
        if customer_scope and owner != customer_scope:
            raise NotYourConversationError("this conversation belongs to another customer")

    async def watch(
        self,
        conversation_id: str,
        customer_scope: str,
        *,
        after_offset: int = 0,
        live_only: bool = False,
        heartbeat_seconds: float = 0.0,
    ) -> AsyncGenerator[ConversationEvent | Heartbeat, None]:
        """The events after `after_offset` (or after the current end with `live_only`), then live ones, with
        a heartbeat after each `heartbeat_seconds` without an event. Checks run before the first item."""
        await self.authorize(conversation_id, customer_scope)
        if after_offset < 0:
            after_offset = 0
        waiter = self._hub.subscribe(conversation_id)
        try:
            end = await self._log.end_offset(conversation_id)
            if live_only:
                after_offset = end
            elif after_offset > end:
                raise OffsetOutOfRangeError(after_offset, end)
        except BaseException:
            self._hub.unsubscribe(conversation_id, waiter)
            raise
        return self._stream(conversation_id, after_offset, waiter, heartbeat_seconds)

    async def _stream(
        self, conversation_id: str, after_offset: int, waiter: asyncio.Event, heartbeat_seconds: float
    ) -> AsyncGenerator[ConversationEvent | Heartbeat, None]:
        interval = heartbeat_seconds or self.settings.heartbeat_seconds
        interval = min(MAX_HEARTBEAT_SECONDS, max(MIN_HEARTBEAT_SECONDS, interval))
        position = after_offset
        try:
            while True:
                if self._hub.draining:
                    raise ShuttingDownError(
                        f"this agent replica is shutting down; reconnect with after_offset={position}"
                    )
                waiter.clear()
                batch = await self._read(conversation_id, position)
                for event in batch:
                    position = event.offset
                    yield event
                if len(batch) == self.settings.batch_events:
                    continue
                try:
                    await asyncio.wait_for(waiter.wait(), timeout=interval)
                except TimeoutError:
                    yield Heartbeat(end_offset=position, time=time.time())
        finally:
            self._hub.unsubscribe(conversation_id, waiter)
