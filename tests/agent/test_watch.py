"""WatchConversation through real gRPC: a real tools service, the agent in-process, the offline engine.

A customer's watch sees the escalation, the human's claim, the human's reply (within a second of
AppendTicketMessage) and the hand-back, in offset order; a reconnect with `after_offset` gets exactly what it
missed; bad input gets the documented codes; an idle stream gets heartbeats; a consumer that stops reading is
cut off with RESOURCE_EXHAUSTED instead of growing server memory.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agent_service.conversation_events import NewEvent
from devstack.credentials import shared_test_credentials
from support.v1 import agent_pb2, tools_pb2
from tests.agent.conftest import StartAgent, Tools
from tests.agent.test_replicas import redis_url  # noqa: F401  (the fixture)

CUSTOMER = (("x-customer-id", "cust-001"),)
OTHER_CUSTOMER = (("x-customer-id", "cust-002"),)


def staff(name: str = "dana") -> tuple[tuple[str, str], ...]:
    token = shared_test_credentials().token("staff")
    return (("authorization", f"Bearer {token}"), ("x-agent-name", name))


def kind(response: agent_pb2.WatchConversationResponse) -> str:
    if response.HasField("heartbeat"):
        return "heartbeat"
    return str(response.event.WhichOneof("event"))


class Watch:
    """A WatchConversation call read by a background task into a queue."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.items: asyncio.Queue[agent_pb2.WatchConversationResponse] = asyncio.Queue()
        self.error: grpc.aio.AioRpcError | None = None
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for item in self.call:
                self.items.put_nowait(item)
        except grpc.aio.AioRpcError as error:
            self.error = error

    async def next_event(self, within: float = 5.0) -> agent_pb2.ConversationEvent:
        while True:
            item = await asyncio.wait_for(self.items.get(), within)
            if item.HasField("event"):
                return item.event

    async def until(self, wanted: str, within: float = 5.0) -> list[agent_pb2.ConversationEvent]:
        seen = []
        while True:
            event = await self.next_event(within)
            seen.append(event)
            if event.WhichOneof("event") == wanted:
                return seen

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_a_watch_sees_escalation_claim_human_reply_and_hand_back(
    start_agent: StartAgent, tools: Tools
) -> None:
    agent = await start_agent()
    escalated = await agent.stub.Chat(
        agent_pb2.ChatRequest(conversation_id="w1", message="I want to talk to a human"), metadata=CUSTOMER
    )
    ticket_id = escalated.escalation.ticket_id
    assert ticket_id

    watch = Watch(
        agent.stub.WatchConversation(
            agent_pb2.WatchConversationRequest(conversation_id="w1"), metadata=CUSTOMER
        )
    )
    try:
        history = await watch.until("state_change")
        kinds = [event.WhichOneof("event") for event in history]
        assert kinds == ["customer_message", "escalation", "bot_reply", "state_change"]
        assert [event.offset for event in history] == [1, 2, 3, 4]
        assert history[0].customer_message.text == "I want to talk to a human"
        assert history[1].escalation.ticket_id == ticket_id
        assert history[3].state_change.state == agent_pb2.CONVERSATION_STATE_PENDING_HUMAN

        await tools.stub.ClaimTicket(
            tools_pb2.ClaimTicketRequest(ticket_id=ticket_id, assignee="Dana"), metadata=staff()
        )
        claimed = await watch.until("state_change")
        assert claimed[0].ticket_claimed.assignee == "Dana"
        assert claimed[0].ticket_claimed.text == "Dana has joined the conversation."
        assert claimed[1].state_change.state == agent_pb2.CONVERSATION_STATE_HUMAN

        sent = time.perf_counter()
        await tools.stub.AppendTicketMessage(
            tools_pb2.AppendTicketMessageRequest(
                ticket_id=ticket_id,
                text="Hi, I'm looking at your refund now.",
                author=tools_pb2.MESSAGE_AUTHOR_HUMAN_AGENT,
                author_name="Dana",
            ),
            metadata=staff(),
        )
        (reply,) = await watch.until("human_reply", within=1.0)
        latency = time.perf_counter() - sent
        assert latency < 1.0
        assert reply.human_reply.text == "Hi, I'm looking at your refund now."
        assert reply.human_reply.author_name == "Dana"
        assert reply.offset == 7

        await tools.stub.ResolveTicket(
            tools_pb2.ResolveTicketRequest(ticket_id=ticket_id, resolution_note="refund issued"),
            metadata=staff(),
        )
        back = await watch.until("hand_back")
        assert [event.WhichOneof("event") for event in back] == [
            "ticket_resolved",
            "state_change",
            "hand_back",
        ]
        assert back[1].state_change.state == agent_pb2.CONVERSATION_STATE_BOT
        assert [event.offset for event in back] == [8, 9, 10]
    finally:
        await watch.close()

    transcript = await agent.stub.GetConversation(
        agent_pb2.GetConversationRequest(conversation_id="w1"), metadata=CUSTOMER
    )
    assert transcript.end_offset == 10
    assert [event.offset for event in transcript.events] == list(range(1, 11))
    assert [e.human_reply.text for e in transcript.events if e.HasField("human_reply")] == [
        "Hi, I'm looking at your refund now."
    ]

    # The bot answers again after the hand-back, and that turn is on the log too.
    await agent.stub.Chat(
        agent_pb2.ChatRequest(conversation_id="w1", message="How long does shipping take?"), metadata=CUSTOMER
    )
    after = await agent.stub.GetConversation(
        agent_pb2.GetConversationRequest(conversation_id="w1"), metadata=CUSTOMER
    )
    assert [e.WhichOneof("event") for e in after.events[10:]] == ["customer_message", "bot_reply"]


async def test_resume_from_an_offset_gets_exactly_what_was_missed(
    start_agent: StartAgent, tools: Tools
) -> None:
    agent = await start_agent()
    for message in ("What is your return policy?", "How long does shipping take?"):
        await agent.stub.Chat(agent_pb2.ChatRequest(conversation_id="w2", message=message), metadata=CUSTOMER)

    first = Watch(
        agent.stub.WatchConversation(
            agent_pb2.WatchConversationRequest(conversation_id="w2"), metadata=CUSTOMER
        )
    )
    got = [await first.next_event() for _ in range(4)]
    await first.close()
    assert [event.offset for event in got] == [1, 2, 3, 4]

    # Missed while disconnected: one more turn.
    await agent.stub.Chat(
        agent_pb2.ChatRequest(conversation_id="w2", message="Do you ship abroad?"), metadata=CUSTOMER
    )
    resumed = Watch(
        agent.stub.WatchConversation(
            agent_pb2.WatchConversationRequest(conversation_id="w2", after_offset=got[-1].offset),
            metadata=CUSTOMER,
        )
    )
    live_only = Watch(
        agent.stub.WatchConversation(
            agent_pb2.WatchConversationRequest(conversation_id="w2", live_only=True), metadata=CUSTOMER
        )
    )
    try:
        missed = [await resumed.next_event() for _ in range(2)]
        assert [event.offset for event in missed] == [5, 6]
        assert missed[0].customer_message.text == "Do you ship abroad?"
        await asyncio.sleep(0.3)
        await agent.stub.Chat(
            agent_pb2.ChatRequest(conversation_id="w2", message="Thanks!"), metadata=CUSTOMER
        )
        assert [(await resumed.next_event()).offset for _ in range(2)] == [7, 8]
        assert [(await live_only.next_event()).offset for _ in range(2)] == [7, 8]
        with pytest.raises(TimeoutError):
            await resumed.next_event(within=0.5)  # nothing repeated
    finally:
        await resumed.close()
        await live_only.close()


async def _watch_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    return caught.value


async def test_bad_input_and_foreign_callers(start_agent: StartAgent, tools: Tools) -> None:
    agent = await start_agent()
    await agent.stub.Chat(
        agent_pb2.ChatRequest(conversation_id="w3", message="What is your return policy?"), metadata=CUSTOMER
    )
    request = agent_pb2.WatchConversationRequest

    unknown = await _watch_error(
        agent.stub.WatchConversation(request(conversation_id="nope"), metadata=CUSTOMER)
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND

    beyond = await _watch_error(
        agent.stub.WatchConversation(request(conversation_id="w3", after_offset=99), metadata=CUSTOMER)
    )
    assert beyond.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "end_offset 2" in (beyond.details() or "")
    status = rpc_status.from_call(beyond)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info) and info.metadata["end_offset"] == "2"

    foreign = await _watch_error(
        agent.stub.WatchConversation(request(conversation_id="w3"), metadata=OTHER_CUSTOMER)
    )
    assert foreign.code() == grpc.StatusCode.PERMISSION_DENIED

    anonymous = await _watch_error(agent.stub.WatchConversation(request(conversation_id="w3")))
    assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED

    empty = await _watch_error(agent.stub.WatchConversation(request(conversation_id=""), metadata=CUSTOMER))
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT

    # Staff see any conversation.
    helpdesk = Watch(agent.stub.WatchConversation(request(conversation_id="w3"), metadata=staff()))
    try:
        assert (await helpdesk.next_event()).offset == 1
    finally:
        await helpdesk.close()


async def test_an_idle_stream_gets_heartbeats(start_agent: StartAgent, tools: Tools) -> None:
    agent = await start_agent()
    await agent.stub.Chat(
        agent_pb2.ChatRequest(conversation_id="w4", message="What is your return policy?"), metadata=CUSTOMER
    )
    watch = Watch(
        agent.stub.WatchConversation(
            agent_pb2.WatchConversationRequest(conversation_id="w4", live_only=True, heartbeat_seconds=1),
            metadata=CUSTOMER,
        )
    )
    try:
        started = time.perf_counter()
        first = await asyncio.wait_for(watch.items.get(), 3)
        second = await asyncio.wait_for(watch.items.get(), 3)
        assert kind(first) == kind(second) == "heartbeat"
        assert first.heartbeat.end_offset == 2
        assert 1.5 <= time.perf_counter() - started < 3.5
    finally:
        await watch.close()


async def test_a_consumer_that_stops_reading_is_cut_off_not_buffered(
    start_agent: StartAgent, tools: Tools
) -> None:
    agent = await start_agent(watch=_watch_settings(slow_consumer_seconds=1.0, batch_events=16))
    await agent.stub.Chat(
        agent_pb2.ChatRequest(conversation_id="w5", message="What is your return policy?"), metadata=CUSTOMER
    )
    store: Any = agent.started.store
    big = "x" * 4000
    for _ in range(20):
        await store.append_events(
            "w5", [NewEvent("human_reply", {"ticket_id": "T", "author_name": "D", "text": big})] * 50
        )

    # A raw channel with a small flow-control window that never reads the stream.
    token = shared_test_credentials().token("backend")
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{agent.started.port}",
        options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16384)],
    ) as channel:
        call = channel.unary_stream(
            "/support.v1.AgentService/WatchConversation",
            request_serializer=agent_pb2.WatchConversationRequest.SerializeToString,
            response_deserializer=agent_pb2.WatchConversationResponse.FromString,
        )(
            agent_pb2.WatchConversationRequest(conversation_id="w5"),
            metadata=(("authorization", f"Bearer {token}"), *CUSTOMER),
        )
        await asyncio.sleep(4.0)  # not reading
        received = 0
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                received += 1
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "after_offset" in (caught.value.details() or "")
        assert 0 < received < 1000


def _watch_settings(**overrides: Any) -> Any:
    import dataclasses

    from agent_service.conversation_events import WatchSettings

    return dataclasses.replace(WatchSettings(), **overrides)


async def test_two_replicas_on_redis_deliver_each_others_events_once(
    start_agent: StartAgent,
    tools: Tools,
    redis_url: str,  # noqa: F811 (the fixture imported above)
) -> None:
    first = await start_agent(redis_url=redis_url)
    second = await start_agent(redis_url=redis_url)
    escalated = await first.stub.Chat(
        agent_pb2.ChatRequest(conversation_id="wr", message="I want to talk to a human"), metadata=CUSTOMER
    )
    ticket_id = escalated.escalation.ticket_id
    watch = Watch(
        second.stub.WatchConversation(
            agent_pb2.WatchConversationRequest(conversation_id="wr"), metadata=CUSTOMER
        )
    )
    try:
        assert len(await watch.until("state_change")) == 4
        # Both replicas follow the ticket feed; each change still lands once.
        await tools.stub.ClaimTicket(
            tools_pb2.ClaimTicketRequest(ticket_id=ticket_id, assignee="Dana"), metadata=staff()
        )
        await tools.stub.AppendTicketMessage(
            tools_pb2.AppendTicketMessageRequest(
                ticket_id=ticket_id, text="Hello from Dana", author=tools_pb2.MESSAGE_AUTHOR_HUMAN_AGENT
            ),
            metadata=staff(),
        )
        got = await watch.until("human_reply", within=2.0)
        assert [event.WhichOneof("event") for event in got] == [
            "ticket_claimed",
            "state_change",
            "human_reply",
        ]
        # A turn written by the first replica reaches the second replica's stream (the feed poll).
        await first.stub.Chat(
            agent_pb2.ChatRequest(conversation_id="wr", message="thanks"), metadata=CUSTOMER
        )
        forwarded = await watch.until("bot_reply", within=2.0)
        assert forwarded[0].customer_message.text == "thanks"
        with pytest.raises(TimeoutError):
            await watch.next_event(within=1.0)
    finally:
        await watch.close()
    transcript = await first.stub.GetConversation(
        agent_pb2.GetConversationRequest(conversation_id="wr"), metadata=CUSTOMER
    )
    assert [event.offset for event in transcript.events] == list(range(1, transcript.end_offset + 1))
    assert transcript.end_offset == 9


async def test_support_chat_prints_the_human_side_while_the_customer_waits(
    start_agent: StartAgent, tools: Tools
) -> None:
    import io

    from agent_service.chat_cli import chat_once, follow

    agent = await start_agent()
    out = io.StringIO()
    # The session's watcher starts before the conversation exists (a new conversation): it waits for it.
    watcher = asyncio.create_task(follow(agent.stub, "cli-live", "cust-001", out))
    try:
        await asyncio.sleep(0.3)
        await chat_once(agent.stub, "cli-live", "I want to talk to a human", "cust-001", out)
        ticket_id = out.getvalue().split("[escalated] ticket ")[1].split(",")[0]
        await tools.stub.ClaimTicket(
            tools_pb2.ClaimTicketRequest(ticket_id=ticket_id, assignee="Dana"), metadata=staff()
        )
        await tools.stub.AppendTicketMessage(
            tools_pb2.AppendTicketMessageRequest(
                ticket_id=ticket_id, text="Hi, Dana here.", author=tools_pb2.MESSAGE_AUTHOR_HUMAN_AGENT
            ),
            metadata=staff("Dana"),
        )
        await tools.stub.ResolveTicket(
            tools_pb2.ResolveTicketRequest(ticket_id=ticket_id, resolution_note="done"), metadata=staff()
        )
        deadline = time.monotonic() + 5
        while "automated assistant again" not in out.getvalue():
            assert time.monotonic() < deadline, out.getvalue()
            await asyncio.sleep(0.05)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    text = out.getvalue()
    assert text.index("[Dana has joined the conversation.]") < text.index("Dana> Hi, Dana here.")
    assert text.index("Dana> Hi, Dana here.") < text.index(
        "[You're chatting with our automated assistant again.]"
    )
    assert text.count("Dana> Hi, Dana here.") == 1


async def test_a_draining_agent_ends_open_watches_with_the_offset_to_resume_from(
    start_agent: StartAgent, tools: Tools
) -> None:
    agent = await start_agent()
    await agent.stub.Chat(
        agent_pb2.ChatRequest(conversation_id="w-drain", message="What is your return policy?"),
        metadata=CUSTOMER,
    )
    watch = Watch(
        agent.stub.WatchConversation(
            agent_pb2.WatchConversationRequest(conversation_id="w-drain"), metadata=CUSTOMER
        )
    )
    try:
        seen = [await watch.next_event(), await watch.next_event()]
        started = time.perf_counter()
        await agent.started.stop(10.0)
        # An open-ended stream must not hold the drain for its whole grace period.
        assert time.perf_counter() - started < 5.0
        await asyncio.wait_for(watch.task, 5)
        assert watch.error is not None
        assert watch.error.code() == grpc.StatusCode.UNAVAILABLE
        assert f"after_offset={seen[-1].offset}" in (watch.error.details() or "")
    finally:
        await watch.close()
