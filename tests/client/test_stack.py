"""support_agent_client.AgentClient against the real agent, tools and retrieval services (offline engine)."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from support_agent_client import (
    AgentClient,
    ChatResponse,
    ConversationState,
    InvalidRequest,
    StreamChatResponse,
    Unauthenticated,
)

from devstack.inprocess import InProcessStack
from service_kit.auth import AuthConfig
from tests.client.conftest import CUSTOMER, start_agent

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_chat_with_customer_id_looks_up_the_order(stack: InProcessStack) -> None:
    async with AgentClient(stack.agent_addr, customer_id=CUSTOMER, timeout=20) as client:
        response = await client.chat("conv-order", "Where is my order ORD-12345?")

    assert isinstance(response, ChatResponse)
    assert response.conversation_id == "conv-order"
    assert response.turn_id, "the client generates a turn id when none is given"
    assert [call.name for call in response.tool_calls] == ["lookup_order_status"]
    call = response.tool_calls[0]
    assert not call.is_error
    # The tracking number of cust-001's order proves x-customer-id reached the tools service.
    assert "1Z999AA10123456784" in call.result_json
    assert response.state == ConversationState.Value("CONVERSATION_STATE_BOT")


async def test_chat_without_customer_id_cannot_see_the_order(stack: InProcessStack) -> None:
    # Issue 13: a backend must name its customer; a call without x-customer-id is refused outright.
    async with AgentClient(stack.agent_addr, timeout=20) as client:
        with pytest.raises(Unauthenticated) as caught:
            await client.chat("conv-anon", "Where is my order ORD-12345?")

    assert "1Z999AA10123456784" not in str(caught.value)


async def test_same_turn_id_replays_the_stored_turn(stack: InProcessStack) -> None:
    async with AgentClient(stack.agent_addr, customer_id=CUSTOMER, timeout=20) as client:
        first = await client.chat("conv-replay", "Where is my order ORD-67890?", turn_id="t-1")
        again = await client.chat("conv-replay", "Where is my order ORD-67890?", turn_id="t-1")
        conversation = await client.get_conversation("conv-replay")

    assert not first.replayed
    assert again.replayed
    assert again.reply == first.reply
    assert [turn.turn_id for turn in conversation.turns] == ["t-1"]


async def test_stream_chat_yields_events_ending_with_final(stack: InProcessStack) -> None:
    events: list[StreamChatResponse] = []
    async with AgentClient(stack.agent_addr, customer_id=CUSTOMER, timeout=20) as client:
        async for event in client.stream_chat("conv-stream", "How long do refunds take?", turn_id="s-1"):
            events.append(event)

    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[-1] == "final"
    assert kinds.count("final") == 1
    assert "sources" in kinds
    final = events[-1].final
    assert final.turn_id == "s-1"
    assert final.reply
    streamed = "".join(event.text_delta.text for event in events if event.WhichOneof("event") == "text_delta")
    assert streamed == final.reply


async def test_get_conversation_returns_the_turns(stack: InProcessStack) -> None:
    async with AgentClient(stack.agent_addr, customer_id=CUSTOMER, timeout=20) as client:
        await client.chat("conv-history", "Where is my order ORD-11223?", turn_id="h-1")
        await client.chat("conv-history", "And ORD-33445?", turn_id="h-2")
        conversation = await client.get_conversation("conv-history")

    assert conversation.conversation_id == "conv-history"
    assert [turn.turn_id for turn in conversation.turns] == ["h-1", "h-2"]
    assert conversation.turns[0].user_message == "Where is my order ORD-11223?"
    assert conversation.state == ConversationState.Value("CONVERSATION_STATE_BOT")


async def test_empty_conversation_id_is_an_invalid_request_naming_the_field(stack: InProcessStack) -> None:
    async with AgentClient(stack.agent_addr, customer_id=CUSTOMER, timeout=20) as client:
        with pytest.raises(InvalidRequest) as caught:
            await client.chat("", "hello")

    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "conversation_id" in error.details
    assert error.fields == ("conversation_id",)
    assert error.field_violations[0].description == "is required"
    assert not error.retryable


async def test_stream_chat_maps_errors_too(stack: InProcessStack) -> None:
    async with AgentClient(stack.agent_addr, customer_id=CUSTOMER, timeout=20) as client:
        with pytest.raises(InvalidRequest) as caught:
            async for _ in client.stream_chat("conv-blank", "   "):
                pass

    assert caught.value.fields == ("message",)


async def test_auth_token_is_sent_as_bearer(stack: InProcessStack, tmp_path) -> None:
    token = "client-test-token-0123456789"
    # This agent accepts `token` as its only backend token (the stack's own backend token is refused).
    tokens = {**stack.credentials.tokens, "backend": (token,)}
    config = dataclasses.replace(
        stack.agent_config, auth=AuthConfig.with_tokens(tokens, outbound_role="service")
    )
    agent = await start_agent(config, tmp_path / "agent-auth")
    target = f"127.0.0.1:{agent.port}"
    try:
        async with AgentClient(target, customer_id=CUSTOMER, timeout=20) as client:
            with pytest.raises(Unauthenticated):
                await client.get_conversation("conv-auth")
        async with AgentClient(target, customer_id=CUSTOMER, auth_token=token, timeout=20) as client:
            response = await client.chat("conv-auth", "Where is my order ORD-12345?")
    finally:
        await agent.stop(None)

    assert [call.name for call in response.tool_calls] == ["lookup_order_status"]
