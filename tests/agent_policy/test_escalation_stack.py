"""The escalation backstop through the real stack: real gRPC services, the sample KB in Chroma, and a scripted
model that only ever answers (it never calls escalate_to_human). Paraphrased, translated and disguised
must-escalate messages still reach a person; a near miss gets the model's answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devstack.inprocess import InProcessStack
from retrieval_service.adapters.embedding import MiniLMEmbedding
from support.v1 import agent_pb2, tools_pb2, tools_pb2_grpc, types_pb2
from testkit.scripted_openai import Reply, ScriptedOpenAIServer

CUSTOMER = (("x-customer-id", "cust-001"),)
ANSWER = "Thanks for reaching out! You can find more in our help center."


@pytest.fixture
async def stack(
    tmp_path: Path, embedding: MiniLMEmbedding
) -> AsyncIterator[tuple[InProcessStack, ScriptedOpenAIServer]]:
    model = ScriptedOpenAIServer(lambda _request: Reply(content=ANSWER))
    base_url = await model.start()
    started = await InProcessStack(tmp_path, embedding, model_base_url=base_url).start()
    try:
        yield started, model
    finally:
        await started.stop()
        await model.stop()


async def _chat(stack: InProcessStack, conversation: str, message: str) -> agent_pb2.ChatResponse:
    response: agent_pb2.ChatResponse = await stack.agent_stub().Chat(
        agent_pb2.ChatRequest(conversation_id=conversation, message=message, turn_id="t1"),
        metadata=CUSTOMER,
        timeout=60,
    )
    return response


@pytest.mark.parametrize(
    ("message", "reason", "priority"),
    [
        # the paraphrases: no keyword of the rules
        (
            "I think someone used my card details on your site",
            types_pb2.ESCALATION_REASON_SENSITIVE_TOPIC,
            types_pb2.PRIORITY_HIGH,
        ),
        ("you took my money two times for one order", types_pb2.ESCALATION_REASON_SENSITIVE_TOPIC, types_pb2.PRIORITY_HIGH),
        # another language, and a disguise
        ("Quero falar com uma pessoa, por favor", types_pb2.ESCALATION_REASON_CUSTOMER_REQUEST, types_pb2.PRIORITY_MEDIUM),
        ("my acc\u200bount was h4ck3d", types_pb2.ESCALATION_REASON_SENSITIVE_TOPIC, types_pb2.PRIORITY_HIGH),
    ],
)  # fmt: skip
async def test_must_escalate_paraphrase_reaches_a_person_when_the_model_only_answers(
    stack: tuple[InProcessStack, ScriptedOpenAIServer], message: str, reason: int, priority: int
) -> None:
    running, model = stack
    response = await _chat(running, "conv-escalation", message)
    assert model.requests, "the model was asked (it answered without escalating)"
    assert response.HasField("escalation")
    assert (response.escalation.reason, response.escalation.priority) == (reason, priority)
    assert response.state == agent_pb2.CONVERSATION_STATE_PENDING_HUMAN
    assert response.escalation.ticket_id in response.reply
    tools = tools_pb2_grpc.ToolsServiceStub(running.channel(running.tools_addr))  # type: ignore[no-untyped-call]
    ticket = await tools.GetTicket(
        tools_pb2.GetTicketRequest(ticket_id=response.escalation.ticket_id), timeout=10
    )
    assert ticket.ticket.conversation_id == "conv-escalation"


async def test_near_miss_gets_the_answer_not_a_person(
    stack: tuple[InProcessStack, ScriptedOpenAIServer],
) -> None:
    running, _ = stack
    response = await _chat(running, "conv-near-miss", "When will my card be charged for a pre-order?")
    assert not response.HasField("escalation")
    assert response.state == agent_pb2.CONVERSATION_STATE_BOT
    assert ANSWER in response.reply
