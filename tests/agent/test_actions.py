"""Issue 16, the agent's side: write actions proposed in a turn and run only once the customer confirms, through
real gRPC (the agent and the real tools service over SQLite), with the scripted OpenAI-compatible model (or
the offline engine). Whether an order changed is read back with LookupOrderStatus and ListActions."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import grpc
import pytest

from agent_service import texts
from agent_service.chat_cli import chat_once, pending_action, press_button
from devstack.credentials import shared_test_credentials
from service_kit.codes import ORDER_STATUS
from support.v1 import agent_pb2, tools_pb2, types_pb2
from testkit.scripted_openai import Reply, ToolCallSpec, has_tool_result
from tests.agent.conftest import Agent, StartAgent, StartModel, StartTools, Tools

ORDER = "ORD-67890"  # cust-001's order, processing: it can be cancelled
SUMMARY = "Cancel order ORD-67890 (2 items, $84.00)"
PENDING = types_pb2.ACTION_STATE_PENDING
EXECUTED = types_pb2.ACTION_STATE_EXECUTED
DECLINED = types_pb2.ACTION_STATE_DECLINED
EXPIRED = types_pb2.ACTION_STATE_EXPIRED
SHIPPING_ANSWER = "Standard shipping takes 3-5 business days."
CREDENTIALS = shared_test_credentials()


def customer(customer_id: str = "cust-001") -> tuple[tuple[str, str], ...]:
    return (("x-customer-id", customer_id),)


def last_user_message(request: dict[str, Any]) -> str:
    users = [message for message in request["messages"] if message["role"] == "user"]
    return str(users[-1]["content"]) if users else ""


def misreading_model(request: dict[str, Any]) -> Reply:
    """A model that calls cancel_order whenever the customer's message mentions cancelling (even "don't
    cancel"), and otherwise answers a shipping question."""
    if has_tool_result(request):
        return Reply(content="I've looked into that for you.")
    if "cancel" in last_user_message(request).lower():
        return Reply(
            tool_calls=[ToolCallSpec("cancel_order", json.dumps({"order_id": ORDER}), id="call_cancel")]
        )
    return Reply(content=SHIPPING_ANSWER)


async def agent_with_model(start_model: StartModel, start_agent: StartAgent, **overrides: Any) -> Agent:
    model = await start_model(misreading_model)
    return await start_agent(model_server=model, **overrides)


async def chat(
    agent: Agent, conversation_id: str, message: str, turn_id: str = "", customer_id: str = "cust-001"
) -> agent_pb2.ChatResponse:
    response: agent_pb2.ChatResponse = await agent.stub.Chat(
        agent_pb2.ChatRequest(conversation_id=conversation_id, message=message, turn_id=turn_id),
        metadata=customer(customer_id),
        timeout=30,
    )
    return response


async def confirm(
    agent: Agent, conversation_id: str, action_id: str, turn_id: str = "", metadata: Any = None
) -> agent_pb2.ChatResponse:
    reply = await agent.stub.ConfirmAction(
        agent_pb2.ConfirmActionRequest(conversation_id=conversation_id, action_id=action_id, turn_id=turn_id),
        metadata=metadata if metadata is not None else customer(),
        timeout=30,
    )
    response: agent_pb2.ChatResponse = reply.response
    return response


async def order_status(tools: Tools, order_id: str = ORDER) -> str:
    response = await tools.stub.LookupOrderStatus(
        tools_pb2.LookupOrderStatusRequest(order_id=order_id), metadata=customer(), timeout=10
    )
    return ORDER_STATUS.from_proto(response.status)


async def actions(tools: Tools, conversation_id: str) -> list[types_pb2.Action]:
    response = await tools.stub.ListActions(
        tools_pb2.ListActionsRequest(conversation_id=conversation_id), metadata=customer(), timeout=10
    )
    return list(response.actions)


async def propose(agent: Agent, conversation_id: str) -> types_pb2.Action:
    response = await chat(agent, conversation_id, f"Please cancel my order {ORDER}")
    assert response.action.state == PENDING, response
    assert (response.action.tool_name, response.action.summary) == ("cancel_order", SUMMARY)
    assert response.reply == texts.action_proposal(SUMMARY)
    return response.action


async def refused(call: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == code, raised.value.details()
    return raised.value


# --- by message -----------------------------------------------------------------------------------------------


async def test_yes_runs_the_proposed_cancellation_once_and_replays_never_run_it_again(
    start_model: StartModel, start_agent: StartAgent, tools: Tools
) -> None:
    agent = await agent_with_model(start_model, start_agent)
    action = await propose(agent, "act-yes")
    assert await order_status(tools) == "processing", "a proposal changes nothing"

    done = await chat(agent, "act-yes", "yes, cancel it", turn_id="turn-yes")
    assert done.action.action_id == action.action_id
    assert done.action.state == EXECUTED
    assert done.action.confirmation == "message:turn-yes"
    assert "cancelled" in done.reply and "$84.00" in done.reply
    assert await order_status(tools) == "cancelled"

    replayed = await chat(agent, "act-yes", "yes, cancel it", turn_id="turn-yes")
    assert replayed.replayed and replayed.reply == done.reply and replayed.action == done.action
    again = await chat(agent, "act-yes", "yes")  # nothing pending any more: a normal turn
    assert not again.HasField("action")
    [only] = await actions(tools, "act-yes")
    assert (only.action_id, only.state, only.confirmation) == (action.action_id, EXECUTED, "message:turn-yes")

    conversation = await agent.stub.GetConversation(
        agent_pb2.GetConversationRequest(conversation_id="act-yes"), metadata=customer(), timeout=10
    )
    states = [
        (turn.action.state, turn.action.confirmation)
        for turn in conversation.turns
        if turn.HasField("action")
    ]
    assert states == [(PENDING, ""), (EXECUTED, "message:turn-yes")]
    events = [event.action for event in conversation.events if event.WhichOneof("event") == "action"]
    assert [event.state for event in events] == [PENDING, EXECUTED]
    assert json.loads(events[-1].result_json)["status"] == "cancelled"


async def test_no_declines_and_nothing_runs(
    start_model: StartModel, start_agent: StartAgent, tools: Tools
) -> None:
    agent = await agent_with_model(start_model, start_agent)
    action = await propose(agent, "act-no")
    declined = await chat(agent, "act-no", "no", turn_id="turn-no")
    assert declined.reply == texts.ACTION_DECLINED
    assert (declined.action.state, declined.action.note) == (DECLINED, "declined by the customer")
    assert declined.action.confirmation == "message:turn-no"
    follow_up = await chat(agent, "act-no", "yes")  # too late: it was declined
    assert not follow_up.HasField("action")
    assert await order_status(tools) == "processing"
    [only] = await actions(tools, "act-no")
    assert (only.action_id, only.state) == (action.action_id, DECLINED)


async def test_an_unrelated_message_drops_the_action_and_is_answered_normally(
    start_model: StartModel, start_agent: StartAgent, tools: Tools
) -> None:
    agent = await agent_with_model(start_model, start_agent)
    await propose(agent, "act-other")
    answered = await chat(agent, "act-other", "How long does standard shipping take?")
    assert answered.reply == SHIPPING_ANSWER
    assert (answered.action.state, answered.action.note) == (DECLINED, "the customer moved on")
    await chat(agent, "act-other", "yes")
    assert await order_status(tools) == "processing"
    assert [action.state for action in await actions(tools, "act-other")] == [DECLINED]


async def test_a_message_that_refuses_the_write_proposes_nothing_even_when_the_model_calls_it(
    start_model: StartModel, start_agent: StartAgent, tools: Tools
) -> None:
    model = await start_model(misreading_model)
    agent = await start_agent(model_server=model)
    response = await chat(agent, "act-dont", f"Don't cancel {ORDER}, I only wanted to check it")
    assert not response.HasField("action")
    [call] = response.tool_calls
    assert call.name == "cancel_order" and call.is_error
    assert json.loads(call.result_json)["error"]["code"] == "not_requested"
    assert response.reply == "I've looked into that for you."
    assert await actions(tools, "act-dont") == []
    assert await order_status(tools) == "processing"


async def test_an_expired_action_is_not_run(
    start_model: StartModel, start_agent: StartAgent, start_tools: StartTools
) -> None:
    short = await start_tools(action_ttl_seconds=1.0)
    agent = await agent_with_model(start_model, start_agent, tools_addr=short.addr)
    action = await propose(agent, "act-expired")
    ttl = action.expire_time.ToSeconds() - action.create_time.ToSeconds()
    await asyncio.sleep(ttl + 1.0)  # past the expiry
    late = await chat(agent, "act-expired", "yes")
    assert late.action.state == EXPIRED
    assert late.reply == texts.ACTION_EXPIRED
    assert await order_status(short) == "processing"


async def test_stream_chat_emits_the_action_event_before_the_final_response(
    start_model: StartModel, start_agent: StartAgent
) -> None:
    agent = await agent_with_model(start_model, start_agent)
    events = [
        event
        async for event in agent.stub.StreamChat(
            agent_pb2.StreamChatRequest(conversation_id="act-stream", message=f"Cancel {ORDER} please"),
            metadata=customer(),
            timeout=30,
        )
    ]
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds.count("action") == 1 and kinds[-1] == "final"
    action = events[kinds.index("action")].action
    assert (action.state, action.summary) == (PENDING, SUMMARY)
    assert events[-1].final.action == action


async def test_the_offline_engine_proposes_and_a_spanish_yes_confirms(
    start_agent: StartAgent, tools: Tools
) -> None:
    agent = await start_agent()
    proposed = await chat(agent, "act-offline", f"Please cancel my order {ORDER}")
    assert proposed.action.state == PENDING and proposed.action.summary == SUMMARY
    done = await chat(agent, "act-offline", "sí, adelante")
    assert done.action.state == EXECUTED
    assert await order_status(tools) == "cancelled"


# --- by button (ConfirmAction / DeclineAction) ------------------------------------------------------------------


async def test_confirm_button_runs_once_and_a_retry_returns_the_first_response(
    start_model: StartModel, start_agent: StartAgent, tools: Tools
) -> None:
    agent = await agent_with_model(start_model, start_agent)
    action = await propose(agent, "act-button")
    first = await confirm(agent, "act-button", action.action_id, turn_id="press-1")
    assert (first.action.state, first.action.confirmation) == (EXECUTED, "button")
    assert "cancelled" in first.reply
    retried = await confirm(agent, "act-button", action.action_id, turn_id="press-1")
    assert retried.replayed and retried.action == first.action and retried.reply == first.reply
    await refused(
        confirm(agent, "act-button", action.action_id, turn_id="press-2"), grpc.StatusCode.FAILED_PRECONDITION
    )
    await refused(
        agent.stub.DeclineAction(
            agent_pb2.DeclineActionRequest(conversation_id="act-button", action_id=action.action_id),
            metadata=customer(),
            timeout=30,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert [(item.state, item.confirmation) for item in await actions(tools, "act-button")] == [
        (EXECUTED, "button")
    ]
    assert await order_status(tools) == "cancelled"


async def test_decline_button_drops_it_for_a_service_caller_too(
    start_model: StartModel, start_agent: StartAgent, tools: Tools
) -> None:
    agent = await agent_with_model(start_model, start_agent)
    action = await propose(agent, "act-decline")
    reply = await agent.stub.DeclineAction(
        agent_pb2.DeclineActionRequest(
            conversation_id="act-decline", action_id=action.action_id, turn_id="d-1"
        ),
        metadata=CREDENTIALS.metadata("service", customer_id="cust-001"),
        timeout=30,
    )
    assert reply.response.reply == texts.ACTION_DECLINED
    assert (reply.response.action.state, reply.response.action.confirmation) == (DECLINED, "button")
    assert await order_status(tools) == "processing"


async def test_another_customer_cannot_confirm_and_staff_may_not(
    start_model: StartModel, start_agent: StartAgent, tools: Tools
) -> None:
    agent = await agent_with_model(start_model, start_agent)
    action = await propose(agent, "act-owner")
    stranger = customer("cust-002")
    await refused(confirm(agent, "act-owner", action.action_id, metadata=stranger), grpc.StatusCode.NOT_FOUND)
    await chat(agent, "act-stranger", "hello", customer_id="cust-002")
    await refused(
        confirm(agent, "act-stranger", action.action_id, metadata=stranger), grpc.StatusCode.NOT_FOUND
    )
    await refused(confirm(agent, "act-owner", "act-unknown"), grpc.StatusCode.NOT_FOUND)
    staff = CREDENTIALS.metadata("staff", agent_name="dana")
    await refused(
        confirm(agent, "act-owner", action.action_id, metadata=staff), grpc.StatusCode.PERMISSION_DENIED
    )
    assert await order_status(tools) == "processing"
    assert [item.state for item in await actions(tools, "act-owner")] == [PENDING]
    # The owner still can; the stranger replaying the owner's press gets nothing of it.
    assert (
        await confirm(agent, "act-owner", action.action_id, turn_id="press-owner")
    ).action.state == EXECUTED
    await refused(
        confirm(agent, "act-owner", action.action_id, turn_id="press-owner", metadata=stranger),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_support_chat_shows_the_pending_summary_and_y_presses_confirm(
    start_agent: StartAgent, tools: Tools
) -> None:
    agent = await start_agent()
    out = io.StringIO()
    final = await chat_once(agent.stub, "act-cli", f"Please cancel my order {ORDER}", "cust-001", out)
    pending = pending_action(final)
    assert pending is not None and pending.summary == SUMMARY
    assert f"[action] pending: {SUMMARY}" in out.getvalue()
    response = await press_button(agent.stub, "act-cli", pending, True, "cust-001", out)
    assert pending_action(response) is None
    assert f"[action] executed: {SUMMARY}" in out.getvalue()
    assert await order_status(tools) == "cancelled"
