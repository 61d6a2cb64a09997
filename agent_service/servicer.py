"""support.v1.AgentService: proto <-> domain mapping and error mapping, nothing else."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from agent_service import conversation_events as ce
from agent_service import texts
from agent_service.action_flow import ActionNotFoundError, ActionNotPendingError
from agent_service.conversation_events import (
    ConversationEvent,
    ConversationWatcher,
    Heartbeat,
    OffsetOutOfRangeError,
    SlowConsumerError,
)
from agent_service.domain import ActionInfo, EscalationInfo, Flag, Source, ToolCallRecord, TurnResult
from agent_service.errors import (
    ConversationBusyError,
    ConversationNotFoundError,
    InvalidInputError,
    NotYourConversationError,
    OverloadedError,
    ShuttingDownError,
    StoreUnavailableError,
    TurnDeadlineError,
)
from agent_service.turn import TurnRunner
from agent_service.turn_contract import (
    ActionDecision,
    ActionEvent,
    EscalationEvent,
    FinalEvent,
    GuardrailEvent,
    SourcesEvent,
    TextDeltaEvent,
    ToolCallFinishedEvent,
    ToolCallStartedEvent,
    TurnEvent,
    TurnRequest,
    validate_id,
)
from service_kit import auth, observability
from service_kit.codes import ACTION_STATE, CONVERSATION_STATE, ESCALATION_REASON, GUARDRAIL_STAGE, PRIORITY
from service_kit.error_guard import ErrorGuard, StatusRule, bad_request
from support.v1 import agent_pb2, agent_pb2_grpc, types_pb2

logger = logging.getLogger(__name__)

AGENT_NAME = "support-agent"

# Who may call what (enforced by service_kit.auth's interceptor before any handler runs): a backend acts for the
# customer it names in x-customer-id; staff may read any conversation. Only the customer's side (a backend or
# a service, naming the customer) confirms or declines a write action.
PERMISSIONS = auth.PermissionTable(
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    {
        "Chat": auth.allow(auth.BACKEND),
        "StreamChat": auth.allow(auth.BACKEND),
        "GetConversation": auth.allow(auth.BACKEND, auth.STAFF),
        "WatchConversation": auth.allow(auth.BACKEND, auth.STAFF),
        "ConfirmAction": auth.allow(auth.BACKEND, auth.SERVICE),
        "DeclineAction": auth.allow(auth.BACKEND, auth.SERVICE),
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
        StatusRule(ShuttingDownError, grpc.StatusCode.UNAVAILABLE),
        StatusRule(OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
        StatusRule(ConversationNotFoundError, grpc.StatusCode.NOT_FOUND),
        StatusRule(ActionNotFoundError, grpc.StatusCode.NOT_FOUND),
        StatusRule(ActionNotPendingError, grpc.StatusCode.FAILED_PRECONDITION),
        StatusRule(NotYourConversationError, grpc.StatusCode.PERMISSION_DENIED),
        StatusRule(
            OffsetOutOfRangeError,
            grpc.StatusCode.OUT_OF_RANGE,
            details=lambda error: [
                error_details_pb2.ErrorInfo(
                    reason="OFFSET_BEYOND_END",
                    domain="support.v1.AgentService",
                    metadata={"end_offset": str(error.end_offset)},
                )
            ],
        ),
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


def action_pb(action: ActionInfo) -> types_pb2.Action:
    message = types_pb2.Action(
        action_id=action.action_id,
        conversation_id=action.conversation_id,
        tool_name=action.tool_name,
        arguments_json=action.arguments_json,
        summary=action.summary,
        state=ACTION_STATE.to_proto(action.state),
        confirmation=action.confirmation,
        result_json=action.result_json,
        note=action.note,
    )
    for field, seconds in (
        ("create_time", action.create_time),
        ("expire_time", action.expire_time),
        ("decide_time", action.decide_time),
    ):
        if seconds:
            getattr(message, field).CopyFrom(_timestamp(seconds))
    return message


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
            cached_tokens=result.usage.cached_tokens,
        ),
        knowledge_gap=result.knowledge_gap,
        replayed=result.replayed,
        assignee=result.assignee,
        ticket_id=result.ticket_id,
    )
    if result.escalation is not None:
        response.escalation.CopyFrom(escalation_pb(result.escalation))
    if result.action is not None:
        response.action.CopyFrom(action_pb(result.action))
    return response


def turn_pb(result: TurnResult) -> agent_pb2.Turn:
    turn = agent_pb2.Turn(
        turn_id=result.turn_id,
        user_message=result.user_message,
        reply=result.reply,
        tool_calls=[tool_call_pb(call) for call in result.tool_calls],
        sources=[source_pb(source) for source in result.sources],
        guardrail_flags=[flag_pb(flag) for flag in result.flags],
        create_time=_timestamp(result.create_time),
        system_note=result.system_note,
    )
    if result.escalation is not None:
        turn.escalation.CopyFrom(escalation_pb(result.escalation))
    if result.action is not None:
        turn.action.CopyFrom(action_pb(result.action))
    return turn


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))


# How each stored event kind becomes its proto message; the kind is the name of its `event` oneof field.
_EVENT_BUILDERS: dict[str, Callable[[Mapping[str, Any]], Message]] = {
    ce.CUSTOMER_MESSAGE: lambda data: agent_pb2.CustomerMessageEvent(
        turn_id=data.get("turn_id", ""), text=data.get("text", "")
    ),
    ce.BOT_REPLY: lambda data: agent_pb2.BotReplyEvent(
        turn_id=data.get("turn_id", ""),
        text=data.get("text", ""),
        sources=[source_pb(Source(**item)) for item in data.get("sources", ())],
        tool_calls=[tool_call_pb(ToolCallRecord(**item)) for item in data.get("tool_calls", ())],
        guardrail_flags=[flag_pb(Flag(**item)) for item in data.get("guardrail_flags", ())],
    ),
    ce.ESCALATION: lambda data: escalation_pb(EscalationInfo(**data)),
    ce.STATE_CHANGE: lambda data: agent_pb2.StateChangeEvent(
        state=state_pb(data.get("state", "bot")),
        ticket_id=data.get("ticket_id", ""),
        assignee=data.get("assignee", ""),
    ),
    ce.TICKET_CLAIMED: lambda data: agent_pb2.TicketClaimedEvent(
        ticket_id=data.get("ticket_id", ""), assignee=data.get("assignee", ""), text=data.get("text", "")
    ),
    ce.HUMAN_REPLY: lambda data: agent_pb2.HumanReplyEvent(
        ticket_id=data.get("ticket_id", ""),
        author_name=data.get("author_name", ""),
        text=data.get("text", ""),
    ),
    ce.TICKET_RESOLVED: lambda data: agent_pb2.TicketResolvedEvent(
        ticket_id=data.get("ticket_id", ""), assignee=data.get("assignee", "")
    ),
    ce.HAND_BACK: lambda data: agent_pb2.HandBackEvent(
        ticket_id=data.get("ticket_id", ""), text=data.get("text", "")
    ),
    ce.ACTION: lambda data: action_pb(ActionInfo(**data)),
}


def conversation_event_pb(event: ConversationEvent) -> agent_pb2.ConversationEvent:
    """A stored event (kind + JSON data) as the proto; a kind this build does not know has an empty oneof."""
    message = agent_pb2.ConversationEvent(
        conversation_id=event.conversation_id, offset=event.offset, create_time=_timestamp(event.create_time)
    )
    build = _EVENT_BUILDERS.get(event.kind)
    if build is not None:
        getattr(message, event.kind).CopyFrom(build(event.data))
    return message


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
    if isinstance(event, ActionEvent):
        return agent_pb2.StreamChatResponse(action=action_pb(event.action))
    return agent_pb2.StreamChatResponse(final=chat_response_pb(event.result))


MAX_EVENTS_IN_GET_CONVERSATION = 10_000


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, runner: TurnRunner, watcher: ConversationWatcher | None = None) -> None:
        self._runner = runner
        self._watcher = watcher

    async def _events(self, turn_request: TurnRequest) -> AsyncGenerator[TurnEvent, None]:
        """The turn's events inside its `invoke_agent` span. Run to the end (and closed) by the caller, so the
        conversation lock is released before the response is sent rather than whenever the generator is
        garbage-collected."""
        with observability.genai_span("invoke_agent", AGENT_NAME):
            async with aclosing(self._runner.run(turn_request)) as events:
                async for event in events:
                    yield event

    async def _final(self, turn_request: TurnRequest) -> TurnResult:
        final: FinalEvent | None = None
        async with aclosing(self._events(turn_request)) as events:
            async for event in events:
                if isinstance(event, FinalEvent):
                    final = event
        if final is None:
            raise RuntimeError("turn ended without a final event")
        return final.result

    async def Chat(  # noqa: N802
        self, request: agent_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ChatResponse:
        async with ERROR_GUARD(context):
            return chat_response_pb(await self._final(_turn_request(request, context, stream=False)))

    async def ConfirmAction(  # noqa: N802
        self, request: agent_pb2.ConfirmActionRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ConfirmActionResponse:
        async with ERROR_GUARD(context):
            return agent_pb2.ConfirmActionResponse(
                response=await self._decide(request, context, confirm=True)
            )

    async def DeclineAction(  # noqa: N802
        self, request: agent_pb2.DeclineActionRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.DeclineActionResponse:
        async with ERROR_GUARD(context):
            return agent_pb2.DeclineActionResponse(
                response=await self._decide(request, context, confirm=False)
            )

    async def _decide(
        self,
        request: agent_pb2.ConfirmActionRequest | agent_pb2.DeclineActionRequest,
        context: grpc.aio.ServicerContext,
        confirm: bool,
    ) -> agent_pb2.ChatResponse:
        """A button press is a turn (stored, replayed on its turn_id) that decides the pending action."""
        turn_request = TurnRequest(
            conversation_id=request.conversation_id,
            message=texts.button_message(confirm, request.action_id),
            turn_id=request.turn_id,
            customer_id=_customer_scope(),
            time_budget_seconds=context.time_remaining(),
            decision=ActionDecision(request.action_id, confirm),
        )
        try:
            result = await self._final(turn_request)
        except NotYourConversationError:
            # Another customer's action is indistinguishable from one that does not exist.
            raise ActionNotFoundError(f"no action {request.action_id!r} in this conversation") from None
        return chat_response_pb(result)

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
            events = (
                await self._watcher.history(request.conversation_id, MAX_EVENTS_IN_GET_CONVERSATION)
                if self._watcher is not None
                else []
            )
            return agent_pb2.GetConversationResponse(
                conversation_id=request.conversation_id,
                state=state_pb(view.state),
                turns=[turn_pb(turn) for turn in view.conversation.turns],
                ticket_id=view.ticket_id,
                assignee=view.assignee,
                events=[conversation_event_pb(event) for event in events],
                end_offset=events[-1].offset if events else 0,
            )

    async def WatchConversation(  # noqa: N802
        self, request: agent_pb2.WatchConversationRequest, context: grpc.aio.ServicerContext
    ) -> None:
        """Writes each event with a deadline: a caller that stops reading is cut off (RESOURCE_EXHAUSTED) once
        gRPC's flow-control window and one batch are full, instead of the server buffering without bound."""
        async with ERROR_GUARD(context):
            if self._watcher is None:
                raise ConversationNotFoundError("this agent keeps no conversation events")
            validate_id(request.conversation_id, "conversation_id", required=True)
            stream = await self._watcher.watch(
                request.conversation_id,
                _customer_scope(),
                after_offset=request.after_offset,
                live_only=request.live_only,
                heartbeat_seconds=float(request.heartbeat_seconds),
            )
            limit = self._watcher.settings.slow_consumer_seconds
            async with aclosing(stream) as items:
                async for item in items:
                    if isinstance(item, Heartbeat):
                        response = agent_pb2.WatchConversationResponse(
                            heartbeat=agent_pb2.WatchHeartbeat(
                                end_offset=item.end_offset, time=_timestamp(item.time)
                            )
                        )
                    else:
                        response = agent_pb2.WatchConversationResponse(event=conversation_event_pb(item))
                    try:
                        await asyncio.wait_for(context.write(response), timeout=limit)
                    except TimeoutError:
                        raise SlowConsumerError(
                            f"the stream was not read for {limit:g} s; reconnect with after_offset set to the "
                            "last offset you received"
                        ) from None


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
