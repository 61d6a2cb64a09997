"""support.v1.AgentService: proto <-> domain mapping and error mapping, nothing else."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

import grpc
from google.protobuf import timestamp_pb2

from agent_service.domain import EscalationInfo, Flag, Source, ToolCallRecord, TurnResult
from agent_service.errors import (
    ConversationBusyError,
    ConversationNotFoundError,
    InvalidInputError,
    NotYourConversationError,
    OverloadedError,
    StoreUnavailableError,
    TurnDeadlineError,
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
from service_kit import auth, observability
from service_kit.codes import CONVERSATION_STATE, ESCALATION_REASON, GUARDRAIL_STAGE, PRIORITY
from service_kit.error_guard import ErrorGuard, StatusRule, bad_request
from support.v1 import agent_pb2, agent_pb2_grpc, types_pb2

logger = logging.getLogger(__name__)

AGENT_NAME = "support-agent"

# Who may call what (enforced by service_kit.auth's interceptor before any handler runs): a backend acts for the
# customer it names in x-customer-id; staff may read any conversation.
PERMISSIONS = auth.PermissionTable(
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    {
        "Chat": auth.allow(auth.BACKEND),
        "StreamChat": auth.allow(auth.BACKEND),
        "GetConversation": auth.allow(auth.BACKEND, auth.STAFF),
    },
)

ERROR_GUARD = ErrorGuard(
    [
        StatusRule(
            InvalidInputError,
            grpc.StatusCode.INVALID_ARGUMENT,
            details=lambda error: [bad_request(error.field, error.description)],
        ),
        StatusRule(ConversationBusyError, grpc.StatusCode.ABORTED),
        StatusRule(TurnDeadlineError, grpc.StatusCode.DEADLINE_EXCEEDED),
        StatusRule(StoreUnavailableError, grpc.StatusCode.UNAVAILABLE, log="conversation store unavailable"),
        StatusRule(OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
        StatusRule(ConversationNotFoundError, grpc.StatusCode.NOT_FOUND),
        StatusRule(NotYourConversationError, grpc.StatusCode.PERMISSION_DENIED),
    ],
    internal_message="internal error; the failure was logged",
    logger=logger,
)


def state_pb(state: str) -> agent_pb2.ConversationState:
    return CONVERSATION_STATE.to_proto(state, agent_pb2.CONVERSATION_STATE_BOT)


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
        priority=PRIORITY.to_proto(escalation.priority),
        reason=ESCALATION_REASON.to_proto(escalation.reason_code),
        detail=escalation.detail,
    )


def flag_pb(flag: Flag) -> agent_pb2.GuardrailFlag:
    return agent_pb2.GuardrailFlag(
        stage=GUARDRAIL_STAGE.to_proto(flag.stage),
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
        state=state_pb(result.state),
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


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, runner: TurnRunner) -> None:
        self._runner = runner

    async def _events(self, turn_request: TurnRequest) -> AsyncGenerator[TurnEvent, None]:
        """The turn's events inside its `invoke_agent` span. Run to the end (and closed) by the caller, so the
        conversation lock is released before the response is sent rather than whenever the generator is
        garbage-collected."""
        with observability.genai_span("invoke_agent", AGENT_NAME):
            async with aclosing(self._runner.run(turn_request)) as events:
                async for event in events:
                    yield event

    async def Chat(  # noqa: N802
        self, request: agent_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ChatResponse:
        async with ERROR_GUARD(context):
            final: FinalEvent | None = None
            async with aclosing(self._events(_turn_request(request, context, stream=False))) as events:
                async for event in events:
                    if isinstance(event, FinalEvent):
                        final = event
            if final is None:
                raise RuntimeError("turn ended without a final event")
            return chat_response_pb(final.result)

    async def StreamChat(  # noqa: N802
        self, request: agent_pb2.StreamChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.StreamChatResponse]:
        async with (
            ERROR_GUARD(context),
            aclosing(self._events(_turn_request(request, context, stream=True))) as events,
        ):
            async for event in events:
                yield event_pb(event)

    async def GetConversation(  # noqa: N802
        self, request: agent_pb2.GetConversationRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.GetConversationResponse:
        async with ERROR_GUARD(context):
            view = await self._runner.conversation(request.conversation_id, _customer_scope())
            return agent_pb2.GetConversationResponse(
                conversation_id=request.conversation_id,
                state=state_pb(view.state),
                turns=[turn_pb(turn) for turn in view.conversation.turns],
                ticket_id=view.ticket_id,
                assignee=view.assignee,
            )


def _customer_scope() -> str:
    """The customer the caller acts for; "" only for staff (who may read any conversation). A call without a
    principal never gets here on a served port (the interceptor refuses it); refuse it here too."""
    principal = auth.current_principal()
    if principal is None:
        raise NotYourConversationError("no authenticated caller")
    if principal.role == auth.STAFF:
        return ""
    if not principal.customer_id:
        raise NotYourConversationError("the caller named no customer")
    return principal.customer_id


def _turn_request(
    request: agent_pb2.ChatRequest | agent_pb2.StreamChatRequest,
    context: grpc.aio.ServicerContext,
    stream: bool,
) -> TurnRequest:
    return TurnRequest(
        conversation_id=request.conversation_id,
        message=request.message,
        turn_id=request.turn_id,
        customer_id=_customer_scope(),
        stream=stream,
        time_budget_seconds=context.time_remaining(),
    )
