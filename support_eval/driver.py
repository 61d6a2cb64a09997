"""Replays a suite's conversations over AgentService.Chat and records every response.

A `confirm` / `decline` turn with `button` calls AgentService.ConfirmAction / DeclineAction on the latest
action an earlier turn of the conversation carried. Conversations that confirm an action (they may change an
order other conversations read) run after all the others, one at a time, in suite order."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

import grpc

from service_kit import auth
from service_kit.codes import ACTION_STATE, CONVERSATION_STATE, ESCALATION_REASON, PRIORITY
from service_kit.metadata import CUSTOMER_ID_KEY
from support.v1 import agent_pb2, agent_pb2_grpc, types_pb2
from support_eval.records import (
    ActionRecord,
    ConversationRecord,
    EscalationRecord,
    SourceRecord,
    ToolCallRecord,
    TurnRecord,
)
from support_eval.suite import ConversationSpec, Suite, TurnSpec

CHAT_TIMEOUT_SECONDS = 60.0

# Callers that send no token (a stack without authentication, e.g. a test double).
NO_CREDENTIALS = auth.AuthConfig()


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def turn_record(message: str, response: agent_pb2.ChatResponse, latency_ms: float) -> TurnRecord:
    """The proto response as plain data."""
    escalation = None
    if response.HasField("escalation"):
        escalation = EscalationRecord(
            ticket_id=response.escalation.ticket_id,
            priority=PRIORITY.from_proto(response.escalation.priority, "unspecified"),
            reason=ESCALATION_REASON.from_proto(response.escalation.reason, "unspecified"),
            detail=response.escalation.detail,
        )
    return TurnRecord(
        message=message,
        reply=response.reply,
        tool_calls=tuple(
            ToolCallRecord(call.name, call.arguments_json, call.result_json, call.is_error)
            for call in response.tool_calls
        ),
        escalation=escalation,
        sources=tuple(
            SourceRecord(source.doc_id, source.chunk_id, source.title, round(source.distance, 4))
            for source in response.sources
        ),
        knowledge_gap=response.knowledge_gap,
        state=CONVERSATION_STATE.from_proto(response.state, "unspecified"),
        model=response.usage.model,
        fallback=response.usage.fallback,
        guardrail_flags=tuple(flag.rule for flag in response.guardrail_flags),
        latency_ms=latency_ms,
        turn_id=response.turn_id,
        action=action_record(response.action) if response.HasField("action") else None,
    )


def action_record(action: types_pb2.Action) -> ActionRecord:
    return ActionRecord(
        action_id=action.action_id,
        tool=action.tool_name,
        state=ACTION_STATE.from_proto(action.state, "unspecified"),
        summary=action.summary,
        note=action.note,
    )


def _button_label(turn: TurnSpec) -> str:
    return "[button: confirm]" if turn.confirm else "[button: decline]"


async def _send(
    stub: agent_pb2_grpc.AgentServiceStub,
    turn: TurnSpec,
    conversation_id: str,
    turn_id: str,
    action_id: str,
    metadata: tuple[tuple[str, str], ...],
    call_timeout: float,
) -> agent_pb2.ChatResponse:
    """The turn's RPC: Chat with its message, or the button's ConfirmAction / DeclineAction."""
    if not turn.button:
        request = agent_pb2.ChatRequest(
            conversation_id=conversation_id, message=turn.message, turn_id=turn_id
        )
        response: agent_pb2.ChatResponse = await stub.Chat(request, metadata=metadata, timeout=call_timeout)
        return response
    if turn.confirm:
        confirm = agent_pb2.ConfirmActionRequest(
            conversation_id=conversation_id, action_id=action_id, turn_id=turn_id
        )
        confirmed: agent_pb2.ConfirmActionResponse = await stub.ConfirmAction(
            confirm, metadata=metadata, timeout=call_timeout
        )
        return confirmed.response
    decline = agent_pb2.DeclineActionRequest(
        conversation_id=conversation_id, action_id=action_id, turn_id=turn_id
    )
    declined: agent_pb2.DeclineActionResponse = await stub.DeclineAction(
        decline, metadata=metadata, timeout=call_timeout
    )
    return declined.response


async def run_conversation(
    stub: agent_pb2_grpc.AgentServiceStub,
    spec: ConversationSpec,
    run_id: str,
    call_timeout: float = CHAT_TIMEOUT_SECONDS,
) -> ConversationRecord:
    """Every turn in order on a fresh conversation id; a failed RPC is recorded and the next turn still runs."""
    conversation_id = f"eval-{run_id}-{spec.id}"
    metadata = ((CUSTOMER_ID_KEY, spec.customer_id),)
    turns: list[TurnRecord] = []
    for index, turn in enumerate(spec.turns):
        turn_id = f"{conversation_id}-t{index}"
        message = _button_label(turn) if turn.button else turn.message
        action_id = next((record.action.action_id for record in reversed(turns) if record.action), "")
        if turn.button and not action_id:
            error = "no earlier turn carried an action to confirm or decline"
            turns.append(TurnRecord(message=message, error=error, turn_id=turn_id))
            continue
        started = time.perf_counter()
        try:
            response = await _send(stub, turn, conversation_id, turn_id, action_id, metadata, call_timeout)
        except grpc.aio.AioRpcError as error:
            latency_ms = (time.perf_counter() - started) * 1000.0
            turns.append(
                TurnRecord(
                    message=message,
                    latency_ms=latency_ms,
                    error=f"{error.code().name}: {error.details()}",
                    turn_id=turn_id,
                )
            )
            continue
        turns.append(turn_record(message, response, (time.perf_counter() - started) * 1000.0))
    return ConversationRecord(spec.id, conversation_id, spec.customer_id, tuple(turns))


async def run_suite(
    suite: Suite,
    agent_addr: str,
    run_id: str | None = None,
    call_timeout: float = CHAT_TIMEOUT_SECONDS,
    concurrency: int = 1,
    only: Sequence[str] = (),
    *,
    auth_config: auth.AuthConfig = NO_CREDENTIALS,
) -> list[ConversationRecord]:
    """Conversations run `concurrency` at a time (turns within one always in order); results in suite order.
    `auth_config`: the caller's credentials (the `backend` role; the customer is each conversation's)."""
    run_id = run_id or new_run_id()
    specs = [spec for spec in suite.conversations if not only or spec.id in only]
    limit = asyncio.Semaphore(max(1, concurrency))
    async with grpc.aio.insecure_channel(
        agent_addr, interceptors=auth.client_interceptors(auth_config)
    ) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=call_timeout)
        stub = agent_pb2_grpc.AgentServiceStub(channel)  # type: ignore[no-untyped-call]

        async def one(spec: ConversationSpec) -> ConversationRecord:
            async with limit:
                return await run_conversation(stub, spec, run_id, call_timeout)

        readers = [spec for spec in specs if not spec.changes_orders]
        records = {record.spec_id: record for record in await asyncio.gather(*map(one, readers))}
        for spec in specs:
            if spec.changes_orders:
                records[spec.id] = await run_conversation(stub, spec, run_id, call_timeout)
        return [records[spec.id] for spec in specs]
