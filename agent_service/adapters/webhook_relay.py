"""Relays conversation events to the helpdesk webhooks: the agent's event log → tools_service's outbox.

The tools service delivers webhooks (signed, at least once, retried, dead-lettered: tools_service/webhooks.py).
Ticket events are queued there as tickets change; the conversation's own events — customer message, bot reply,
escalation, state change, hand-back, action — are written here, in the agent's conversation store. This task
publishes them with `PublishConversationEvents`:

* One relay at a time across replicas: it holds a lease in the conversation store (the turn lock table, under a
  name no conversation id can have) and renews it while it runs; another replica takes over when it lapses.
* Position per conversation: the last offset relayed is a durable cursor (`webhook:<conversation id>`), set only
  after the tools service accepted the batch, so a crash or a dropped call re-sends and loses nothing. Each
  event's id is `cev-<conversation id>-<offset>` and the tools service skips ids it has queued: a re-sent event
  is delivered once.
* Which conversations to look at: the store's global change feed, followed from its beginning when the relay
  takes the lease (conversations already relayed cost one cursor read each), then from where it is.
* Ticket-derived events (claimed, human reply, resolved) are not relayed: their ticket events are the webhooks.
* A tools service without webhook URLs answers `webhooks_configured: false`; the relay then idles and asks again
  every `idle_seconds`, leaving the cursors where they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Sequence

import grpc
from google.protobuf import timestamp_pb2

from agent_service.adapters.background_loop import BackgroundLoop
from agent_service.conversation_events import (
    HUMAN_REPLY,
    TICKET_CLAIMED,
    TICKET_RESOLVED,
    ConversationEvent,
    EventLog,
)
from agent_service.conversation_store import ConversationStore
from support.v1 import tools_pb2, tools_pb2_grpc

logger = logging.getLogger(__name__)

# Whitespace: never a valid conversation id (turn_contract.validate_id), so the lease cannot collide with one.
LEASE_NAME = "webhook relay"
LEASE_SECONDS = 10.0
POLL_SECONDS = 0.5
IDLE_SECONDS = 30.0
STOP_SECONDS = 2.0
BATCH_EVENTS = 200
CURSOR_PREFIX = "webhook:"
# The ticket events already are these webhooks (ticket.claimed, ticket.message_added, ticket.resolved).
TICKET_DERIVED_KINDS = frozenset({TICKET_CLAIMED, HUMAN_REPLY, TICKET_RESOLVED})


def webhook_event_id(conversation_id: str, offset: int) -> str:
    return f"cev-{conversation_id}-{offset}"


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def webhook_event(event: ConversationEvent, customer_id: str) -> tools_pb2.ConversationWebhookEvent:
    return tools_pb2.ConversationWebhookEvent(
        event_id=webhook_event_id(event.conversation_id, event.offset),
        type=f"conversation.{event.kind}",
        conversation_id=event.conversation_id,
        customer_id=customer_id,
        create_time=_timestamp(event.create_time),
        data_json=json.dumps({"offset": event.offset, **event.data}, ensure_ascii=False),
    )


class ConversationEventRelay(BackgroundLoop):
    def __init__(
        self,
        channel: grpc.aio.Channel,
        log: EventLog,
        store: ConversationStore,
        *,
        poll_seconds: float = POLL_SECONDS,
        idle_seconds: float = IDLE_SECONDS,
        timeout_seconds: float = 10.0,
    ) -> None:
        super().__init__()
        self._stub = tools_pb2_grpc.ToolsServiceStub(channel)  # type: ignore[no-untyped-call]
        self._log = log
        self._store = store
        self._poll = poll_seconds
        self._idle = idle_seconds
        self._timeout = timeout_seconds
        self._holder = f"relay-{uuid.uuid4().hex[:12]}"
        self._holding = False
        # The change feed's position; None: read it from the beginning (after taking the lease).
        self._position: str | None = None
        self.relayed = 0

    def start(self) -> None:
        self._start(self._run(), "conversation-event-relay")

    async def stop(self) -> None:
        await self._stop_loop()
        if self._holding:
            self._holding = False
            # Best effort and bounded: an unreleased lease lapses by itself after LEASE_SECONDS.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._store.release_lock(LEASE_NAME, self._holder), STOP_SECONDS)

    async def _run(self) -> None:
        while not self.stopping:
            delay = self._poll
            try:
                if await self._lease():
                    delay = self._poll if await self.relay_once() else self._idle
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as error:
                logger.warning(
                    "relaying conversation events failed; retrying", extra={"grpc_code": error.code().name}
                )
            except Exception:
                logger.exception("relaying conversation events failed; retrying")
            if self.stopping:
                return
            await asyncio.sleep(delay)

    async def _lease(self) -> bool:
        if self._holding:
            self._holding = await self._store.renew_lock(LEASE_NAME, self._holder, LEASE_SECONDS)
        else:
            self._holding = await self._store.acquire_lock(LEASE_NAME, self._holder, LEASE_SECONDS)
            self._position = None  # a new holder reads the feed from the beginning
        return self._holding

    async def relay_once(self) -> bool:
        """Relays what changed since the last call; False when the tools service sends no webhooks."""
        if not await self._publish([]):
            return False
        start = self._position or self._log.feed_start
        position, changed = await self._log.changed_since(start)
        for conversation_id in sorted(changed):
            await self._relay_conversation(conversation_id)
        self._position = position
        return True

    async def _relay_conversation(self, conversation_id: str) -> None:
        cursor_name = CURSOR_PREFIX + conversation_id
        after = await self._log.get_cursor(cursor_name)
        customer_id = ""
        while True:
            events = await self._log.read_events(conversation_id, after, BATCH_EVENTS)
            if not events:
                return
            if not customer_id:
                customer_id = await self._log.conversation_owner(conversation_id) or ""
            batch = [
                webhook_event(event, customer_id)
                for event in events
                if event.kind not in TICKET_DERIVED_KINDS
            ]
            if batch:
                await self._publish(batch)
            after = events[-1].offset
            await self._log.set_cursor(cursor_name, after)
            self.relayed += len(batch)

    async def _publish(self, events: Sequence[tools_pb2.ConversationWebhookEvent]) -> bool:
        response = await self._stub.PublishConversationEvents(
            tools_pb2.PublishConversationEventsRequest(events=list(events)), timeout=self._timeout
        )
        return bool(response.webhooks_configured)
