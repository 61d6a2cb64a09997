"""Follows tools_service's ticket change feed (`WatchTicketEvents`) into the conversations' event logs.

Claims, human replies and resolves happen in tools_service; this task turns each into the conversation's
customer-facing events (`conversation_events.events_of_ticket_change`) within milliseconds of the change. Its
position (the last ticket event seq handled) is kept in the conversation store (`event_cursors`), so a
restarted agent resumes where it stopped; every append carries the event's id as `source_key`, so several
replicas following the same feed, or a replay after a crash, never write an event twice. A dropped stream is
reopened with a capped back-off. A tools service whose feed is behind the cursor (a fresh database) is read from
the start again.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from agent_service.adapters.background_loop import BackgroundLoop
from agent_service.conversation_events import EventLog, TicketChange, events_of_ticket_change
from service_kit.codes import MESSAGE_AUTHOR
from support.v1 import tools_pb2, tools_pb2_grpc

logger = logging.getLogger(__name__)

CURSOR_NAME = "ticket_feed"
RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)

_TYPE = {
    tools_pb2.TICKET_EVENT_TYPE_CREATED: "created",
    tools_pb2.TICKET_EVENT_TYPE_CLAIMED: "claimed",
    tools_pb2.TICKET_EVENT_TYPE_MESSAGE_ADDED: "message_added",
    tools_pb2.TICKET_EVENT_TYPE_RESOLVED: "resolved",
}


def ticket_change(event: tools_pb2.TicketEvent) -> TicketChange:
    return TicketChange(
        seq=event.seq,
        event_id=event.event_id,
        type=_TYPE.get(event.type, ""),
        ticket_id=event.ticket_id,
        conversation_id=event.conversation_id,
        customer_id=event.customer_id,
        create_time=event.create_time.seconds + event.create_time.nanos / 1e9,
        assignee=event.assignee,
        author=MESSAGE_AUTHOR.from_proto(event.author, ""),
        author_name=event.author_name,
        text=event.text,
    )


class TicketEventFollower(BackgroundLoop):
    def __init__(self, channel: grpc.aio.Channel, log: EventLog) -> None:
        super().__init__()
        self._stub = tools_pb2_grpc.ToolsServiceStub(channel)  # type: ignore[no-untyped-call]
        self._log = log
        self.handled = 0

    def start(self) -> None:
        self._start(self._run(), "ticket-event-follower")

    async def stop(self) -> None:
        await self._stop_loop()

    async def _run(self) -> None:
        failures = 0
        while not self.stopping:
            try:
                await self._follow()
                failures = 0
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as error:
                if failures == 2:
                    logger.warning(
                        "the ticket event feed is unavailable; retrying",
                        extra={"grpc_code": error.code().name},
                    )
                failures += 1
            except Exception:
                logger.exception("following the ticket event feed failed; retrying")
                failures += 1
            if self.stopping:
                return
            await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])

    async def _follow(self) -> None:
        cursor = await self._log.get_cursor(CURSOR_NAME)
        call = self._stub.WatchTicketEvents(tools_pb2.WatchTicketEventsRequest(after_seq=cursor))
        first = True
        async for item in call:
            if not item.HasField("event"):
                if first and item.heartbeat_seq < cursor:
                    # The tools service's feed is behind us (a new database): read it from the start.
                    logger.warning("the ticket event feed restarted; reading it from the beginning")
                    await self._log.set_cursor(CURSOR_NAME, 0)
                    call.cancel()
                    return
                first = False
                continue
            first = False
            await self.handle(ticket_change(item.event))
            await self._log.set_cursor(CURSOR_NAME, item.event.seq)

    async def handle(self, change: TicketChange) -> None:
        events = events_of_ticket_change(change)
        if events:
            await self._log.append_events(change.conversation_id, events, customer_id=change.customer_id)
        self.handled += 1
