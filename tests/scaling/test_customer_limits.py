"""Bounded under abuse, through gRPC: a customer over their Chat turn rate gets RESOURCE_EXHAUSTED (other
customers do not), and a conversation at its message cap takes no more turns (RESOURCE_EXHAUSTED)."""

from __future__ import annotations

import grpc
import pytest

from support.v1 import agent_pb2
from tests.scaling.conftest import StartAgent, StartRetrieval


async def test_per_customer_turn_rate_and_conversation_message_cap(
    start_retrieval: StartRetrieval, start_agent: StartAgent
) -> None:
    retrieval = await start_retrieval("retrieval", ingest=False)
    agent = await start_agent(
        "agent",
        retrieval_addr=f"127.0.0.1:{retrieval.port}",
        customer_turns_per_minute=1.0,
        customer_turn_burst=4,
        max_turns=2,
        max_conversation_messages=3,
    )

    async def chat(customer: str, conversation: str) -> agent_pb2.ChatResponse:
        response: agent_pb2.ChatResponse = await agent.stub.Chat(
            agent_pb2.ChatRequest(conversation_id=conversation, message="How do returns work?"),
            metadata=(("x-customer-id", customer),),
            timeout=30,
        )
        return response

    for index in range(4):
        await chat("cust-001", f"rate-{index}")
    with pytest.raises(grpc.aio.AioRpcError) as limited:
        await chat("cust-001", "rate-4")
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many messages from this customer" in (limited.value.details() or "")

    # cust-002 has a bucket of its own; its conversation fills up to the cap and then refuses more turns.
    await chat("cust-002", "full")  # turn 1
    await chat("cust-002", "full")  # turn 2
    capped = await chat("cust-002", "full")  # turn 3: the turn cap (2) hands the conversation over
    assert capped.reply
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await chat("cust-002", "full")
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit of 3 messages" in (full.value.details() or "")
