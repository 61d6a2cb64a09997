"""Issue 18: what real OpenAI-compatible servers do that the happy path never shows — reproduced through the
scripted server (the real `openai` client over HTTP, real retrieval and tools over gRPC)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from support.v1 import agent_pb2
from testkit.scripted_openai import (
    TEMPLATE_ERROR,
    Reply,
    Request,
    ToolCallSpec,
    has_tool_result,
    strict_template,
    unbounded,
)
from tests.agent.conftest import CUSTOMER, Agent, StartAgent, StartModel

KB_QUESTION = "How long does express shipping take?"
OFFLINE_ANSWER = "1-2 business days"  # what the offline engine answers from the sample KB
LOOKUP = "lookup_order_status"
LOOKUP_AS_TEXT = json.dumps({"name": LOOKUP, "arguments": {"order_id": "ORD-12345"}})


async def chat(agent: Agent, conversation_id: str, message: str = KB_QUESTION, **kwargs: Any) -> Any:
    return await agent.stub.Chat(
        agent_pb2.ChatRequest(conversation_id=conversation_id, message=message), metadata=CUSTOMER, **kwargs
    )


async def stream_chat(agent: Agent, conversation_id: str, message: str = KB_QUESTION) -> Any:
    events = [
        event
        async for event in agent.stub.StreamChat(
            agent_pb2.StreamChatRequest(conversation_id=conversation_id, message=message), metadata=CUSTOMER
        )
    ]
    return events[-1].final


# --- 1. max_tokens and the caller's deadline -----------------------------------------------------------------


async def test_every_model_call_sends_the_configured_max_tokens(
    start_model: StartModel, start_agent: StartAgent
) -> None:
    # A server asked without max_tokens generates until the model timeout (here: hangs).
    model = await start_model(unbounded)
    agent = await start_agent(model_server=model, model_max_tokens=32, model_timeout_seconds=3.0)
    response = await chat(agent, "c-max-tokens", timeout=10)
    assert [request["max_tokens"] for request in model.requests] == [32]
    assert not response.usage.fallback and response.reply.startswith("more more")


async def test_a_slow_model_is_cut_to_the_callers_deadline_and_the_offline_engine_answers(
    start_model: StartModel, start_agent: StartAgent
) -> None:
    # 30 s model timeout x 3 attempts is far beyond what this caller waits: the model call gets only what the
    # caller's deadline leaves, and the customer gets the offline answer instead of DEADLINE_EXCEEDED.
    model = await start_model(lambda _: Reply(hang=True))
    agent = await start_agent(
        model_server=model, model_timeout_seconds=30.0, model_max_retries=2, breaker_failure_threshold=1
    )
    started = time.monotonic()
    response = await chat(agent, "c-deadline", timeout=4.0)
    assert time.monotonic() - started < 4.0
    assert response.usage.fallback and OFFLINE_ANSWER in response.reply
    # The caller's short deadline is not the model being down: the breaker stays closed.
    model_port: Any = agent.started.runner._model  # the FallbackModel
    assert model_port.breaker.state.value == "closed"


# --- 2. a template that allows one system message --------------------------------------------------------------


async def test_a_template_that_allows_one_system_message_gets_an_answer_from_the_model(
    start_model: StartModel, start_agent: StartAgent
) -> None:
    model = await start_model(
        strict_template(lambda _: Reply(content="Express takes 1-2 business days [1]."))
    )
    agent = await start_agent(model_server=model)
    response = await chat(agent, "c-template")
    assert not response.usage.fallback
    assert response.reply == "Express takes 1-2 business days [1]."
    # MODEL_CONTEXT_PLACEMENT=auto: the second system message was refused once, then merged (and remembered;
    # tests/agent/test_context_placement.py has the rest).
    assert [m["role"] for m in model.requests[-1]["messages"]].count("system") == 1


# --- 3. request-shape errors are not an outage -----------------------------------------------------------------


async def test_400s_do_not_open_the_breaker_are_not_retried_and_are_logged(
    start_model: StartModel, start_agent: StartAgent, caplog: pytest.LogCaptureFixture
) -> None:
    replies = [Reply(status=400, content=f"{TEMPLATE_ERROR} (call for jane@example.com)")] * 3
    model = await start_model([*replies, Reply(content="Express takes 1-2 business days [1].")])
    # One system message from the start (with `auto` a template refusal is first re-sent merged, once; see
    # tests/agent/test_context_placement.py).
    agent = await start_agent(
        model_server=model, breaker_failure_threshold=2, model_max_retries=2, model_context_placement="system"
    )
    with caplog.at_level(logging.WARNING):
        for index in range(3):
            refused = await chat(agent, f"c-400-{index}")
            assert refused.usage.fallback and OFFLINE_ANSWER in refused.reply
    assert len(model.requests) == 3  # never retried
    # The breaker stayed closed: the next conversation's call goes to the real model.
    answered = await chat(agent, "c-400-ok")
    assert not answered.usage.fallback and answered.reply == "Express takes 1-2 business days [1]."
    logged = [getattr(r, "server_message", "") for r in caplog.records if r.message == "model call failed"]
    assert any("roles must alternate" in message for message in logged)
    assert not any("jane@example.com" in message for message in logged)  # redacted


async def test_a_template_500_is_retried_at_most_once(
    start_model: StartModel, start_agent: StartAgent
) -> None:
    model = await start_model(
        lambda _: Reply(
            status=500, content="Error while rendering the chat template: System role not supported"
        )
    )
    agent = await start_agent(model_server=model, model_max_retries=3, model_retry_backoff_seconds=0.01)
    response = await chat(agent, "c-500-template")
    assert response.usage.fallback
    assert len(model.requests) == 2


# --- 4. a stream that fails inside its HTTP 200 ----------------------------------------------------------------


@pytest.mark.parametrize("as_data", [False, True], ids=["error-line", "error-event"])
async def test_a_stream_error_inside_a_200_is_a_failed_call_not_an_empty_answer(
    start_model: StartModel, start_agent: StartAgent, as_data: bool
) -> None:
    model = await start_model(
        lambda _: Reply(stream_error="failed to decode the prompt", stream_error_as_data=as_data)
    )
    agent = await start_agent(model_server=model, model_max_retries=1, model_retry_backoff_seconds=0.01)
    final = await stream_chat(agent, f"c-stream-error-{as_data}")
    assert final.usage.fallback
    assert OFFLINE_ANSWER in final.reply
    assert "couldn't find an answer" not in final.reply


# --- 6. internals never reach the customer ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        f"Let me check that for you. {LOOKUP_AS_TEXT}",
        'Checking: {"name": "lookup_order_status", "parameters": {"order_id": "ORD-99999"}}',
        '<untrusted_data id="0123abcd" source="shipping.md">Express takes 1-2 business days.'
        '</untrusted_data id="0123abcd">',
        'Express takes 1-2 business days. <tools>[{"type": "function", "function": {"name": "x"}}]</tools>',
    ],
    ids=["tool-call-json", "parameters-json", "kb-markup", "tools-block"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_internal_markup_is_removed_from_the_reply(
    start_model: StartModel, start_agent: StartAgent, reply: str, stream: bool
) -> None:
    model = await start_model(lambda _: Reply(content=reply))
    agent = await start_agent(model_server=model)
    if stream:
        final = await stream_chat(agent, "c-markup")
        text, flags = final.reply, final.guardrail_flags
    else:
        response = await chat(agent, "c-markup")
        text, flags = response.reply, response.guardrail_flags
    for internal in ('"name"', "untrusted_data", "<tools>", "</", '"arguments"', '"parameters"'):
        assert internal not in text
    assert text.strip()
    assert any(flag.rule == "internal_markup" for flag in flags)


def lookup_as_text_then_answer(request: Request) -> Reply:
    if not has_tool_result(request):
        return Reply(content=LOOKUP_AS_TEXT)
    return Reply(content="Your order ORD-12345 has shipped.")


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_a_tool_call_written_as_json_text_is_run_as_the_tool_call(
    start_model: StartModel, start_agent: StartAgent, stream: bool
) -> None:
    model = await start_model(lookup_as_text_then_answer)
    agent = await start_agent(model_server=model)
    message = "Where is my order ORD-12345?"
    if stream:
        events = [
            event
            async for event in agent.stub.StreamChat(
                agent_pb2.StreamChatRequest(conversation_id="c-text-call", message=message), metadata=CUSTOMER
            )
        ]
        deltas = "".join(e.text_delta.text for e in events if e.WhichOneof("event") == "text_delta")
        assert LOOKUP not in deltas  # the JSON never streamed to the customer either
        result = events[-1].final
    else:
        result = await chat(agent, "c-text-call", message)
    assert result.reply == "Your order ORD-12345 has shipped."
    [call] = result.tool_calls
    assert call.name == LOOKUP and not call.is_error
    assert json.loads(call.result_json)["tracking_number"] == "1Z999AA10123456784"
    assert not result.usage.fallback


async def test_json_text_that_does_not_fit_the_schema_is_not_run_and_not_shown(
    start_model: StartModel, start_agent: StartAgent
) -> None:
    bad = json.dumps({"name": LOOKUP, "arguments": {"order_id": "banana"}})
    model = await start_model(lambda _: Reply(content=bad))
    agent = await start_agent(model_server=model)
    response = await chat(agent, "c-bad-text-call", "Where is my order?")
    assert list(response.tool_calls) == []
    assert "banana" not in response.reply and LOOKUP not in response.reply


async def test_a_real_tool_call_is_unaffected(start_model: StartModel, start_agent: StartAgent) -> None:
    model = await start_model(
        [
            Reply(tool_calls=[ToolCallSpec(LOOKUP, '{"order_id": "ORD-12345"}')]),
            Reply(content="Shipped."),
        ]
    )
    agent = await start_agent(model_server=model)
    response = await chat(agent, "c-real-call", "Where is my order ORD-12345?")
    assert response.reply == "Shipped." and [c.name for c in response.tool_calls] == [LOOKUP]
