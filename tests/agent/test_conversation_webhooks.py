"""Conversation events as helpdesk webhooks, through real gRPC and a real HTTP receiver started by the test.

The agent relays its conversation events (customer message, bot reply, escalation, state change) to the tools
service's webhook outbox beside the ticket events: each arrives signed, once by event id, in offset order per
conversation; a receiver that is down while the agent restarts gets everything afterwards exactly once; a
re-published event is skipped; only the agent's service role may publish.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import grpc
import pytest

from devstack.credentials import shared_test_credentials
from support.v1 import agent_pb2, tools_pb2
from tests.agent.conftest import StartAgent, StartTools, Tools
from tests.agent.test_replicas import redis_url  # noqa: F401  (the fixture)
from tests.tools.test_webhooks import Receiver, receiver, settings  # noqa: F401  (the fixture)

CUSTOMER = (("x-customer-id", "cust-001"),)


@pytest.fixture
async def tools(start_tools: StartTools, receiver: Receiver) -> Tools:  # noqa: F811  (the receiver fixture)
    """The tools service the agent talks to, sending its webhooks to the test's receiver."""
    return await start_tools(webhooks=settings(receiver))


async def _until(hook: Receiver, wanted: set[str], within: float = 15.0) -> list[dict[str, Any]]:
    """The receiver's events once every id in `wanted` arrived."""
    for _ in range(int(within / 0.1)):
        if wanted <= {event["id"] for event in hook.received}:
            return hook.received
        await asyncio.sleep(0.1)
    missing = wanted - {event["id"] for event in hook.received}
    raise AssertionError(f"not delivered within {within} s: {sorted(missing)}")


async def _relayed_ids(agent: Any, conversation_id: str) -> set[str]:
    """The webhook ids the conversation's relayed events must arrive under (ticket-derived ones excluded)."""
    transcript = await agent.stub.GetConversation(
        agent_pb2.GetConversationRequest(conversation_id=conversation_id), metadata=CUSTOMER
    )
    ticket_kinds = {"ticket_claimed", "human_reply", "ticket_resolved"}
    return {
        f"cev-{conversation_id}-{event.offset}"
        for event in transcript.events
        if event.WhichOneof("event") not in ticket_kinds
    }


async def test_conversation_events_arrive_signed_once_and_in_order(
    start_agent: StartAgent,
    receiver: Receiver,  # noqa: F811
) -> None:
    agent = await start_agent()
    await agent.stub.Chat(
        agent_pb2.ChatRequest(conversation_id="hook-1", message="How long does shipping take?"),
        metadata=CUSTOMER,
    )
    escalated = await agent.stub.Chat(
        agent_pb2.ChatRequest(conversation_id="hook-1", message="I want to talk to a human"),
        metadata=CUSTOMER,
    )
    wanted = await _relayed_ids(agent, "hook-1")
    assert len(wanted) == 6  # two customer messages, two bot replies, the escalation and the state change
    received = await _until(receiver, wanted)

    assert receiver.rejected == 0  # every request carried a valid signature
    conversation_events = [event for event in received if event["type"].startswith("conversation.")]
    assert Counter(event["id"] for event in conversation_events) == Counter(wanted)
    offsets = [event["data"]["offset"] for event in conversation_events]
    assert offsets == sorted(offsets)
    first = conversation_events[0]
    assert first["type"] == "conversation.customer_message"
    assert first["data"]["text"] == "How long does shipping take?"
    assert first["data"]["conversation_id"] == "hook-1"
    assert first["data"]["customer_id"] == "cust-001"
    escalation = next(event for event in conversation_events if event["type"] == "conversation.escalation")
    assert escalation["data"]["ticket_id"] == escalated.escalation.ticket_id
    # The ticket's own events still come as ticket webhooks.
    assert any(event["type"] == "ticket.created" for event in received)


async def test_a_receiver_down_while_the_agent_restarts_gets_every_event_once(
    start_agent: StartAgent,
    receiver: Receiver,  # noqa: F811
) -> None:
    receiver.status = 500
    first = await start_agent()
    for message in ("Where is my order ORD-12345?", "How do I return an item?"):
        await first.stub.Chat(
            agent_pb2.ChatRequest(conversation_id="hook-2", message=message), metadata=CUSTOMER
        )
    wanted = await _relayed_ids(first, "hook-2")
    for _ in range(100):  # the relay queued them and the receiver is refusing deliveries
        if receiver.attempts:
            break
        await asyncio.sleep(0.1)
    assert receiver.attempts and not receiver.received
    await first.started.stop()

    second = await start_agent()  # a new relay: reads the change feed from the start
    await second.stub.Chat(
        agent_pb2.ChatRequest(conversation_id="hook-2", message="Thanks, bye"), metadata=CUSTOMER
    )
    wanted = await _relayed_ids(second, "hook-2")
    receiver.status = 200
    received = await _until(receiver, wanted)
    await asyncio.sleep(1.0)  # anything re-sent by mistake would arrive in this time

    counts = Counter(event["id"] for event in received if event["type"].startswith("conversation."))
    assert counts == Counter(wanted)


async def test_publishing_is_idempotent_validated_and_for_the_agent_only(
    tools: Tools,
    receiver: Receiver,  # noqa: F811
) -> None:
    event = tools_pb2.ConversationWebhookEvent(
        event_id="cev-direct-1",
        type="conversation.bot_reply",
        conversation_id="direct",
        customer_id="cust-001",
        data_json=json.dumps({"offset": 1, "text": "hello"}),
    )
    request = tools_pb2.PublishConversationEventsRequest(events=[event])
    first = await tools.stub.PublishConversationEvents(request)
    again = await tools.stub.PublishConversationEvents(request)
    assert (first.queued, first.duplicates, first.webhooks_configured) == (1, 0, True)
    assert (again.queued, again.duplicates) == (0, 1)
    await _until(receiver, {"cev-direct-1"})

    bad = tools_pb2.ConversationWebhookEvent(event_id="x", type="ticket.created", conversation_id="direct")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await tools.stub.PublishConversationEvents(tools_pb2.PublishConversationEventsRequest(events=[bad]))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "conversation.<kind>" in (refused.value.details() or "")

    backend = (("authorization", f"Bearer {shared_test_credentials().token('backend')}"), *CUSTOMER)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await tools.stub.PublishConversationEvents(request, metadata=backend)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await asyncio.sleep(0.5)
    assert [e["id"] for e in receiver.received].count("cev-direct-1") == 1


async def test_without_webhook_urls_nothing_is_queued(start_tools: StartTools) -> None:
    tools = await start_tools()
    event = tools_pb2.ConversationWebhookEvent(
        event_id="cev-none-1", type="conversation.bot_reply", conversation_id="none", data_json="{}"
    )
    response = await tools.stub.PublishConversationEvents(
        tools_pb2.PublishConversationEventsRequest(events=[event])
    )
    assert (response.queued, response.webhooks_configured) == (0, False)


async def test_two_replicas_on_redis_relay_each_event_once(
    start_agent: StartAgent,
    receiver: Receiver,  # noqa: F811
    redis_url: str,  # noqa: F811 (the fixture imported above)
) -> None:
    first = await start_agent(redis_url=redis_url)
    second = await start_agent(redis_url=redis_url)
    for agent, message in ((first, "How long does shipping take?"), (second, "And to Canada?")):
        await agent.stub.Chat(
            agent_pb2.ChatRequest(conversation_id="hook-r", message=message), metadata=CUSTOMER
        )
    wanted = await _relayed_ids(first, "hook-r")
    received = await _until(receiver, wanted)
    await first.started.stop()  # the lease holder (or not) goes away; the other replica carries on
    await second.stub.Chat(
        agent_pb2.ChatRequest(conversation_id="hook-r", message="Thanks"), metadata=CUSTOMER
    )
    wanted = await _relayed_ids(second, "hook-r")
    received = await _until(receiver, wanted, within=30.0)  # up to one lease period for a take-over
    await asyncio.sleep(1.0)
    counts = Counter(event["id"] for event in received if event["type"].startswith("conversation."))
    assert counts == Counter(wanted)
