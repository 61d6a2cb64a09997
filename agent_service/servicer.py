"""support.v1.AgentService: proto <-> domain mapping and error mapping, nothing else."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import NoReturn, TypeVar

import grpc
from google.protobuf import timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from agent_service.adapters.tools_client import PRIORITY_TO_PROTO, reason_to_proto
from agent_service.domain import EscalationInfo, Flag, Source, ToolCallRecord, TurnResult
from agent_service.errors import (
    AgentError,
    ConversationBusyError,
    ConversationNotFoundError,
    InvalidInputError,
    NotYourConversationError,
    OverloadedError,
)
from agent_service.turn import TurnRunner
from agent_service.turn_contract import (
    EscalationEvent,
    FinalEvent,
    GuardrailEvent,
    SourcesEvent,
    TextDeltaEvent,
    ToolCallFinishedEvent,
    ToolCallStartedEvent,
    TurnEvent,
    TurnRequest,
)
from service_kit import observability
from service_kit.jsonlog import conversation_id_var, request_id_var
from service_kit.metadata import CUSTOMER_ID_KEY, REQUEST_ID_KEY, metadata_value
from support.v1 import agent_pb2, agent_pb2_grpc, types_pb2

logger = logging.getLogger(__name__)

T = TypeVar("T")

AGENT_NAME = "support-agent"

_STATES = {
    "bot": agent_pb2.CONVERSATION_STATE_BOT,
    "pending_human": agent_pb2.CONVERSATION_STATE_PENDING_HUMAN,
    "human": agent_pb2.CONVERSATION_STATE_HUMAN,
}
_STAGES = {"input": agent_pb2.GUARDRAIL_STAGE_INPUT, "output": agent_pb2.GUARDRAIL_STAGE_OUTPUT}


# --- domain → proto ----------------------------------------------------------------------------------------


def source_pb(source: Source) -> types_pb2.SourceRef:
    return types_pb2.SourceRef(
        doc_id=source.doc_id, title=source.title, chunk_id=source.chunk_id, distance=source.distance
    )


def tool_call_pb(call: ToolCallRecord) -> agent_pb2.ToolCall:
    return agent_pb2.ToolCall(
        id=call.id,
        name=call.name,
        arguments_json=call.arguments_json,
        result_json=call.result_json,
        is_error=call.is_error,
    )


def escalation_pb(escalation: EscalationInfo) -> agent_pb2.Escalation:
    return agent_pb2.Escalation(
        ticket_id=escalation.ticket_id,
        priority=PRIORITY_TO_PROTO.get(escalation.priority, types_pb2.PRIORITY_UNSPECIFIED),
        reason=reason_to_proto(escalation.reason_code),
        detail=escalation.detail,
    )


def flag_pb(flag: Flag) -> agent_pb2.GuardrailFlag:
    return agent_pb2.GuardrailFlag(
        stage=_STAGES.get(flag.stage, agent_pb2.GUARDRAIL_STAGE_UNSPECIFIED),
        rule=flag.rule,
        detail=flag.detail,
    )


def chat_response_pb(result: TurnResult) -> agent_pb2.ChatResponse:
    response = agent_pb2.ChatResponse(
        conversation_id=result.conversation_id,
        turn_id=result.turn_id,
        reply=result.reply,
        tool_calls=[tool_call_pb(call) for call in result.tool_calls],
        sources=[source_pb(source) for source in result.sources],
        guardrail_flags=[flag_pb(flag) for flag in result.flags],
        state=_STATES.get(result.state, agent_pb2.CONVERSATION_STATE_BOT),
        usage=agent_pb2.Usage(
            model=result.usage.model,
            model_calls=result.usage.model_calls,
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            fallback=result.usage.fallback,
        ),
        knowledge_gap=result.knowledge_gap,
        replayed=result.replayed,
        assignee=result.assignee,
        ticket_id=result.ticket_id,
    )
    if result.escalation is not None:
        response.escalation.CopyFrom(escalation_pb(result.escalation))
    return response


def turn_pb(result: TurnResult) -> agent_pb2.Turn:
    turn = agent_pb2.Turn(
        turn_id=result.turn_id,
        user_message=result.user_message,
        reply=result.reply,
        tool_calls=[tool_call_pb(call) for call in result.tool_calls],
        sources=[source_pb(source) for source in result.sources],
        guardrail_flags=[flag_pb(flag) for flag in result.flags],
        create_time=timestamp_pb2.Timestamp(
            seconds=int(result.create_time), nanos=int((result.create_time % 1) * 1e9)
        ),
        system_note=result.system_note,
    )
    if result.escalation is not None:
        turn.escalation.CopyFrom(escalation_pb(result.escalation))
    return turn


def event_pb(event: TurnEvent) -> agent_pb2.StreamChatResponse:
    if isinstance(event, SourcesEvent):
        return agent_pb2.StreamChatResponse(
            sources=agent_pb2.SourcesRetrieved(
                sources=[source_pb(source) for source in event.sources], knowledge_gap=event.knowledge_gap
            )
        )
    if isinstance(event, ToolCallStartedEvent):
        return agent_pb2.StreamChatResponse(
            tool_call=agent_pb2.ToolCallStarted(tool_call=tool_call_pb(event.call))
        )
    if isinstance(event, ToolCallFinishedEvent):
        return agent_pb2.StreamChatResponse(
            tool_result=agent_pb2.ToolCallFinished(tool_call=tool_call_pb(event.call))
        )
    if isinstance(event, TextDeltaEvent):
        return agent_pb2.StreamChatResponse(text_delta=agent_pb2.TextDelta(text=event.text))
    if isinstance(event, EscalationEvent):
        return agent_pb2.StreamChatResponse(escalation=escalation_pb(event.escalation))
    if isinstance(event, GuardrailEvent):
        return agent_pb2.StreamChatResponse(guardrail=flag_pb(event.flag))
    return agent_pb2.StreamChatResponse(final=chat_response_pb(event.result))


# --- errors ------------------------------------------------------------------------------------------------


async def _abort(context: grpc.aio.ServicerContext, error: Exception) -> NoReturn:
    if isinstance(error, InvalidInputError):
        status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(error))
        detail = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.description)
            ]
        )
        status.details.add().Pack(detail)
        await context.abort_with_status(rpc_status.to_status(status))
    mapping: list[tuple[type[AgentError], grpc.StatusCode]] = [
        (ConversationBusyError, grpc.StatusCode.ABORTED),
        (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (ConversationNotFoundError, grpc.StatusCode.NOT_FOUND),
        (NotYourConversationError, grpc.StatusCode.PERMISSION_DENIED),
    ]
    for kind, code in mapping:
        if isinstance(error, kind):
            await context.abort(code, str(error))
    logger.error("unhandled error in the agent", exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; the failure was logged")
    raise AssertionError("unreachable: abort raises")


async def _guarded(context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except Exception as error:
        await _abort(context, error)


def _set_log_context(context: grpc.aio.ServicerContext, conversation_id: str) -> None:
    """Every log line of this call carries the conversation id and the caller's x-request-id (or a new one)."""
    conversation_id_var.set(conversation_id[:128])
    request_id_var.set(metadata_value(context, REQUEST_ID_KEY)[:64] or uuid.uuid4().hex[:16])


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, runner: TurnRunner) -> None:
        self._runner = runner

    def _turn_request(
        self,
        request: agent_pb2.ChatRequest | agent_pb2.StreamChatRequest,
        context: grpc.aio.ServicerContext,
        stream: bool,
    ) -> TurnRequest:
        _set_log_context(context, request.conversation_id)
        return TurnRequest(
            conversation_id=request.conversation_id,
            message=request.message,
            turn_id=request.turn_id,
            customer_id=metadata_value(context, CUSTOMER_ID_KEY),
            stream=stream,
        )

    async def Chat(  # noqa: N802
        self, request: agent_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ChatResponse:
        turn_request = self._turn_request(request, context, stream=False)

        async def run() -> agent_pb2.ChatResponse:
            final: FinalEvent | None = None
            # Run the generator to its end (and close it here), so the conversation lock is released
            # before the response is sent rather than whenever the generator is garbage-collected.
            with observability.genai_span("invoke_agent", AGENT_NAME):
                async with aclosing(self._runner.run(turn_request)) as events:
                    async for event in events:
                        if isinstance(event, FinalEvent):
                            final = event
            if final is None:
                raise RuntimeError("turn ended without a final event")
            return chat_response_pb(final.result)

        return await _guarded(context, run)

    async def StreamChat(  # noqa: N802
        self, request: agent_pb2.StreamChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.StreamChatResponse]:
        turn_request = self._turn_request(request, context, stream=True)
        try:
            with observability.genai_span("invoke_agent", AGENT_NAME):
                async with aclosing(self._runner.run(turn_request)) as events:
                    async for event in events:
                        yield event_pb(event)
        except Exception as error:
            await _abort(context, error)

    async def GetConversation(  # noqa: N802
        self, request: agent_pb2.GetConversationRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.GetConversationResponse:
        _set_log_context(context, request.conversation_id)
        customer_id = metadata_value(context, CUSTOMER_ID_KEY)

        async def read() -> agent_pb2.GetConversationResponse:
            view = await self._runner.conversation(request.conversation_id, customer_id)
            return agent_pb2.GetConversationResponse(
                conversation_id=request.conversation_id,
                state=_STATES.get(view.state, agent_pb2.CONVERSATION_STATE_BOT),
                turns=[turn_pb(turn) for turn in view.conversation.turns],
                ticket_id=view.ticket_id,
                assignee=view.assignee,
            )

        return await _guarded(context, read)
