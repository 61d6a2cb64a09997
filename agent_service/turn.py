"""One turn of Chat (DESIGN.md "One turn of Chat"), as a stream of typed events. No gRPC here.
Its ports, request, events and settings are in `turn_contract`.

`TurnRunner.run` validates, replays a retried turn id, takes the conversation's in-flight lock, routes a
human-owned conversation to its ticket, enforces the turn cap, applies the input guardrail, retrieves,
builds the prompt, runs the model/tool rounds, backs the model up with the deterministic escalation policy,
applies the output guardrail, picks the citations, persists the turn atomically and ends with `FinalEvent`.
Chat collects the events; StreamChat forwards them as they happen. Both share this one loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from agent_service.adapters.offline_model import DONT_KNOW
from agent_service.adapters.retrieval_client import RetrievalResult
from agent_service.adapters.tools_client import (
    TicketView,
    ToolOutcome,
    ToolsUnavailableError,
    error_result,
    parse_ticket_id,
)
from agent_service.conversation_store import ConversationStore
from agent_service.domain import (
    Conversation,
    EscalationInfo,
    Flag,
    KbHit,
    Source,
    ToolCallRecord,
    TurnResult,
    UsageInfo,
)
from agent_service.errors import (
    ConversationBusyError,
    ConversationNotFoundError,
    DuplicateTurnError,
    InvalidInputError,
    NotYourConversationError,
    OverloadedError,
)
from agent_service.escalation_policy import EscalationDecision, EscalationPolicy
from agent_service.model_port import (
    EscalationHint,
    ModelPort,
    ModelRequest,
    ModelResult,
    TextChunk,
    ToolCallRequest,
)
from agent_service.prompts import SYSTEM_PROMPT, history_messages, kb_context_message
from agent_service.turn_contract import (
    ConversationView,
    EscalationEvent,
    FinalEvent,
    GuardrailEvent,
    GuardrailFlagLike,
    Guardrails,
    Retrieval,
    SourcesEvent,
    TextDeltaEvent,
    ToolCallFinishedEvent,
    ToolCallStartedEvent,
    Tools,
    TurnEvent,
    TurnRequest,
    TurnSettings,
    validate_id,
    validate_request,
)
from service_kit import observability
from service_kit.redact import redact

logger = logging.getLogger(__name__)
audit = logging.getLogger("agent_service.audit")

ESCALATE_TOOL = "escalate_to_human"
# Transient tool failures (timeouts, unavailable backends) in one turn before the agent escalates itself.
TOOL_FAILURES_BEFORE_ESCALATION = 2
_TRANSIENT_TOOL_ERRORS = frozenset({"timeout", "unavailable", "backend_unavailable"})
NEUTRAL_SUMMARY = "See the conversation transcript in the support console."
_CITATION = re.compile(r"\[(\d{1,3})\]")


# --- the turn -----------------------------------------------------------------------------------------------


@dataclass
class _Turn:
    """Mutable accumulator of one turn while it runs."""

    request: TurnRequest
    turn_id: str
    started: float
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    escalation: EscalationInfo | None = None
    hits: tuple[KbHit, ...] = ()
    knowledge_gap: bool = False
    reply: str = ""
    state: str = "bot"
    ticket_id: str = ""
    assignee: str = ""
    model: str = ""
    model_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    fallback: bool = False
    sources: tuple[Source, ...] = ()

    @property
    def log_ids(self) -> dict[str, str]:
        return {"conversation_id": self.request.conversation_id, "turn_id": self.turn_id}


def _priority_of(raw: Any) -> str:
    text = str(raw or "").lower().removeprefix("priority_")
    return text if text in {"low", "medium", "high"} else ""


def _escalation_priority(call: ToolCallRecord) -> str:
    for text in (call.result_json, call.arguments_json):
        try:
            data = json.loads(text)
        except ValueError:
            continue
        if isinstance(data, Mapping):
            ticket = data.get("ticket")
            nested = ticket.get("priority") if isinstance(ticket, Mapping) else None
            priority = _priority_of(nested) or _priority_of(data.get("priority"))
            if priority:
                return priority
    return ""


def _metric_outcome(outcome: ToolOutcome) -> str:
    """ok | invalid_arguments | unknown_tool | timeout | rate_limited | error (the metric's label values)."""
    if not outcome.is_error:
        return "ok"
    try:
        code = json.loads(outcome.content_json).get("error", {}).get("code", "")
    except (ValueError, AttributeError):
        code = ""
    return code if code in {"invalid_arguments", "unknown_tool", "timeout", "rate_limited"} else "error"


def _ticket_sentence(ticket_id: str) -> str:
    return f" Your ticket number is {ticket_id}."


class TurnRunner:
    def __init__(
        self,
        *,
        settings: TurnSettings,
        model: ModelPort,
        retrieval: Retrieval,
        tools: Tools,
        store: ConversationStore,
        policy: EscalationPolicy,
        guardrails: Guardrails,
    ) -> None:
        self._settings = settings
        self._model = model
        self._retrieval = retrieval
        self._tools = tools
        self._store = store
        self._policy = policy
        self._guardrails = guardrails
        self._active = 0

    @property
    def active_turns(self) -> int:
        return self._active

    async def run(self, request: TurnRequest) -> AsyncGenerator[TurnEvent, None]:
        """The turn's events, ending with exactly one `FinalEvent`. Raises `AgentError`s for refused turns."""
        validate_request(request, self._settings)
        if self._active >= self._settings.max_concurrent_turns:
            logger.warning("turn shed: too many turns in flight", extra={"active_turns": self._active})
            raise OverloadedError("the agent is at capacity; retry shortly")
        self._active += 1
        try:
            async for event in self._run_locked(request):
                yield event
        finally:
            self._active -= 1

    async def _replayed(self, request: TurnRequest) -> TurnResult | None:
        if not request.turn_id:
            return None
        stored = await self._store.get_turn(request.conversation_id, request.turn_id)
        if stored is None:
            return None
        if stored.user_message != request.message:
            raise InvalidInputError(
                "turn_id", "was already used for a different message in this conversation"
            )
        audit.info(
            "turn replayed",
            extra={
                "event": "turn_replayed",
                "conversation_id": request.conversation_id,
                "turn_id": request.turn_id,
            },
        )
        return stored.as_replayed()

    async def _run_locked(self, request: TurnRequest) -> AsyncIterator[TurnEvent]:
        replayed = await self._replayed(request)
        if replayed is not None:
            yield FinalEvent(replayed)
            return
        holder = uuid.uuid4().hex
        # Retrieval depends on nothing but the message: start it now, off the lock/load/hand-off path.
        search = asyncio.create_task(self._retrieval.search(request.message))
        try:
            async for event in self._locked(request, holder, search):
                yield event
        finally:
            if not search.done():
                search.cancel()
            # Consume the outcome so an unused search never logs "exception was never retrieved".
            await asyncio.gather(search, return_exceptions=True)

    async def _locked(
        self, request: TurnRequest, holder: str, search: asyncio.Task[RetrievalResult]
    ) -> AsyncIterator[TurnEvent]:
        conversation_id = request.conversation_id
        if not await self._store.acquire_lock(conversation_id, holder, self._settings.turn_lease_seconds):
            audit.info(
                "turn refused: conversation busy",
                extra={
                    "event": "turn_aborted",
                    "conversation_id": conversation_id,
                    "turn_id": request.turn_id,
                },
            )
            raise ConversationBusyError(
                f"conversation {conversation_id!r} already has a turn in flight; retry when it has finished"
            )
        try:
            # A retry that raced the original may find it stored now that we hold the lock.
            replayed = await self._replayed(request)
            if replayed is not None:
                yield FinalEvent(replayed)
                return
            async for event in self._turn(request, search):
                yield event
        finally:
            await asyncio.shield(self._store.release_lock(conversation_id, holder))

    async def _turn(
        self, request: TurnRequest, search: asyncio.Task[RetrievalResult]
    ) -> AsyncIterator[TurnEvent]:
        turn = _Turn(request=request, turn_id=request.turn_id or uuid.uuid4().hex, started=time.time())
        conversation = await self._store.load(request.conversation_id)
        if (
            conversation.customer_id
            and request.customer_id
            and conversation.customer_id != request.customer_id
        ):
            raise NotYourConversationError("this conversation belongs to another customer")

        conversation, open_ticket = await self._handoff(conversation, turn)
        if open_ticket is not None:
            async for event in self._forward_to_human(turn, open_ticket):
                yield event
        elif conversation.turns_since_handback >= self._settings.max_turns:
            async for event in self._turn_cap(turn):
                yield event
        else:
            async for event in self._bot_turn(turn, conversation, search):
                yield event
        yield FinalEvent(await self._persist(turn))

    # --- hand-off ------------------------------------------------------------------------------------------

    async def _handoff(
        self, conversation: Conversation, turn: _Turn
    ) -> tuple[Conversation, TicketView | None]:
        """Records hand-backs of newly resolved tickets; returns the open ticket if a human owns the chat."""
        if not conversation.ever_escalated:
            return conversation, None
        request = turn.request
        try:
            tickets = await self._tools.list_tickets(request.conversation_id, request.customer_id)
        except ToolsUnavailableError as error:
            logger.warning(
                "could not read the conversation's tickets; answering as the bot",
                extra={**turn.log_ids, "grpc_code": error.code.name},
            )
            return conversation, None
        seen = conversation.handed_back_ticket_ids
        notes = []
        for ticket in sorted(tickets, key=lambda item: item.update_time):
            if ticket.status != "resolved" or ticket.ticket_id in seen:
                continue
            note = self._handback_note(ticket)
            record = TurnResult(
                conversation_id=request.conversation_id,
                turn_id=f"handback-{ticket.ticket_id}",
                system_note=note,
                ticket_id=ticket.ticket_id,
                assignee=ticket.assignee,
                create_time=ticket.update_time or time.time(),
            )
            try:
                await self._store.append_turn(record)
            except DuplicateTurnError:
                continue
            notes.append(record)
            audit.info(
                "conversation handed back to the bot",
                extra={**turn.log_ids, "event": "handback", "ticket_id": ticket.ticket_id},
            )
        if notes:
            conversation = replace(conversation, turns=conversation.turns + tuple(notes))
        open_tickets = [ticket for ticket in tickets if ticket.status in {"open", "assigned"}]
        if not open_tickets:
            return conversation, None
        return conversation, max(open_tickets, key=lambda item: item.update_time)

    @staticmethod
    def _handback_note(ticket: TicketView) -> str:
        who = ticket.assignee or "a human agent"
        note = f"Handed back to the bot by {who} (ticket {ticket.ticket_id})"
        note += f": {ticket.resolution_note}" if ticket.resolution_note else "."
        if ticket.human_replies:
            replies = " | ".join(f"{name or 'agent'}: {text}" for name, text in ticket.human_replies[-3:])
            note += f" Human replies to the customer: {replies}"
        return note[:2000]

    async def _forward_to_human(self, turn: _Turn, ticket: TicketView) -> AsyncIterator[TurnEvent]:
        request = turn.request
        turn.ticket_id = ticket.ticket_id
        turn.assignee = ticket.assignee
        turn.state = "human" if ticket.status == "assigned" else "pending_human"
        try:
            await self._tools.append_customer_message(ticket.ticket_id, request.message, request.customer_id)
        except ToolsUnavailableError as error:
            logger.error(
                "could not attach the message to the ticket",
                extra={**turn.log_ids, "ticket_id": ticket.ticket_id, "grpc_code": error.code.name},
            )
            turn.reply = (
                f"Your conversation is with our support team (ticket {ticket.ticket_id}), but I couldn't pass "
                "this message on just now. Please send it again in a moment."
            )
        else:
            if turn.state == "human":
                turn.reply = (
                    f"{ticket.assignee or 'A member of our support team'} is handling your conversation "
                    f"(ticket {ticket.ticket_id}). I've passed your message on to them."
                )
            else:
                wait = f" Expected wait: {ticket.estimated_wait}." if ticket.estimated_wait else ""
                turn.reply = (
                    f"Your conversation is waiting for a member of our support team (ticket {ticket.ticket_id}). "
                    f"I've added your message to the ticket.{wait}"
                )
        audit.info(
            "message forwarded to the human-owned ticket",
            extra={
                **turn.log_ids,
                "event": "forwarded_to_human",
                "ticket_id": ticket.ticket_id,
                "state": turn.state,
            },
        )
        if request.stream:
            yield TextDeltaEvent(turn.reply)

    # --- turn cap ------------------------------------------------------------------------------------------

    async def _turn_cap(self, turn: _Turn) -> AsyncIterator[TurnEvent]:
        decision = self._policy.decision_for(
            "conversation_limit", f"conversation reached {self._settings.max_turns} turns"
        )
        lead = (
            "This conversation has reached the length limit for our automated assistant, so I'm handing it "
            "to a person who can help you further."
        )
        async for event in self._agent_escalation(turn, decision):
            yield event
        if turn.escalation is not None:
            turn.reply = lead + _ticket_sentence(turn.escalation.ticket_id)
        else:
            turn.reply = (
                "This conversation has reached the length limit for our automated assistant. Please start a "
                "new conversation, or ask there for a member of our support team."
            )
        if turn.request.stream:
            yield TextDeltaEvent(turn.reply)

    # --- the bot's turn ------------------------------------------------------------------------------------

    async def _bot_turn(
        self, turn: _Turn, conversation: Conversation, search: asyncio.Task[RetrievalResult]
    ) -> AsyncIterator[TurnEvent]:
        request = turn.request
        verdict = self._guardrails.check_input(request.message, self._settings.max_message_chars)
        for flag in verdict.flags:
            yield self._flag(turn, flag)
        if verdict.blocked:
            turn.reply = verdict.safe_reply
            if request.stream:
                yield TextDeltaEvent(turn.reply)
            return

        retrieved = await search
        hits = () if retrieved.nothing_relevant else retrieved.hits
        # Quarantine: a chunk carrying instructions never reaches the model (nor the customer through it).
        kept = []
        for hit in hits:
            suspicious = self._guardrails.scan_untrusted(f"kb:{hit.doc_id}", hit.text)
            for raw in suspicious:
                yield self._flag(turn, raw)
            if not suspicious:
                kept.append(hit)
        turn.hits = tuple(kept)
        turn.knowledge_gap = not turn.hits
        yield SourcesEvent(tuple(Source.of(hit) for hit in turn.hits), turn.knowledge_gap)

        decision = self._policy.evaluate(request.message)
        hint = (
            EscalationHint(
                decision.reason_code, decision.priority, decision.trigger, decision.customer_message
            )
            if decision
            else None
        )
        tools = await self._tools.list_tools()
        tool_names = {
            str(tool.get("function", {}).get("name"))
            for tool in tools
            if isinstance(tool.get("function"), Mapping)
        }
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "system", "content": kb_context_message(turn.hits, self._guardrails.untrusted_block)},
            *history_messages(conversation.turns, self._settings.context_token_budget),
            {"role": "user", "content": request.message},
        ]

        answered = False
        used_ids: set[str] = set()
        for round_index in range(self._settings.max_tool_rounds):
            result: ModelResult | None = None
            async for chunk in self._model.generate(
                ModelRequest(
                    messages=tuple(messages),
                    tools=tools,
                    stream=request.stream,
                    user_message=request.message,
                    hits=turn.hits,
                    escalation_hint=hint,
                )
            ):
                if isinstance(chunk, TextChunk):
                    if request.stream and chunk.text:
                        yield TextDeltaEvent(chunk.text)
                else:
                    result = chunk
            assert result is not None, "a model port must end with a ModelResult"
            self._count_usage(turn, result)
            if not result.tool_calls:
                turn.reply = result.content
                answered = True
                break
            # Every call needs an id unique in the turn: it pairs the tool message with its call and scopes
            # the idempotency key. Missing or repeated ids from the model are replaced (consistently).
            calls = []
            for index, call in enumerate(result.tool_calls):
                call_id = call.id if call.id and call.id not in used_ids else f"call_{round_index}_{index}"
                used_ids.add(call_id)
                calls.append(replace(call, id=call_id))
            messages.append(
                {
                    "role": "assistant",
                    "content": result.content or None,
                    "tool_calls": [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments},
                        }
                        for call in calls
                    ],
                }
            )
            for call in calls:
                yield ToolCallStartedEvent(ToolCallRecord(call.id, call.name, call.arguments))
            outcomes = await asyncio.gather(*(self._execute(turn, call, tool_names) for call in calls))
            for call, outcome in zip(calls, outcomes, strict=True):
                record = ToolCallRecord(
                    call.id, call.name, call.arguments, outcome.content_json, outcome.is_error
                )
                turn.tool_calls.append(record)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": outcome.content_json})
                yield ToolCallFinishedEvent(record)
                if call.name == ESCALATE_TOOL and not outcome.is_error and turn.escalation is None:
                    ticket_id = parse_ticket_id(outcome.content_json)
                    if ticket_id:
                        turn.escalation = EscalationInfo(
                            ticket_id=ticket_id,
                            priority=_escalation_priority(record) or (hint.priority if hint else "medium"),
                            reason_code=hint.reason_code if hint else "model_initiated",
                            detail=hint.trigger if hint else "the model called escalate_to_human",
                        )
                        yield self._escalated(turn)

        if not answered:
            decision_limit = self._policy.decision_for(
                "loop_limit", f"{self._settings.max_tool_rounds} tool rounds without a final answer"
            )
            async for event in self._agent_escalation(turn, decision_limit):
                yield event
            turn.reply = self._escalation_reply(turn, decision_limit)
            if request.stream:
                yield TextDeltaEvent(turn.reply)
        else:
            if decision is None and turn.escalation is None and self._tools_kept_failing(turn):
                decision = self._policy.decision_for(
                    "tool_failure",
                    f"{TOOL_FAILURES_BEFORE_ESCALATION}+ tool calls timed out or were unavailable",
                )
            if decision is not None and turn.escalation is None:
                async for event in self._agent_escalation(turn, decision):
                    yield event
                addition = self._escalation_reply(turn, decision)
                turn.reply = f"{turn.reply}\n\n{addition}" if turn.reply.strip() else addition
                if request.stream:
                    yield TextDeltaEvent(("\n\n" if turn.reply != addition else "") + addition)
            elif turn.escalation is None and (
                not turn.reply.strip()
                or self._policy.decide_no_answer(turn.knowledge_gap, bool(turn.tool_calls))
            ):
                if turn.reply != DONT_KNOW:
                    logger.info(
                        "no relevant knowledge and no tool used: answering that we do not know",
                        extra=turn.log_ids,
                    )
                turn.reply = DONT_KNOW
        if turn.escalation is not None and turn.escalation.ticket_id not in turn.reply:
            turn.reply += _ticket_sentence(turn.escalation.ticket_id)

        known_links: set[str] = set()
        for hit in turn.hits:
            known_links |= self._guardrails.extract_links(hit.text)
        checked = self._guardrails.check_output(
            turn.reply, SYSTEM_PROMPT, known_links, self._settings.link_allowlist
        )
        turn.reply = checked.reply
        for flag in checked.flags:
            yield self._flag(turn, flag)
        turn.sources = self._citations(turn)

    @staticmethod
    def _tools_kept_failing(turn: _Turn) -> bool:
        failures = 0
        for call in turn.tool_calls:
            if not call.is_error:
                continue
            try:
                error = json.loads(call.result_json).get("error", {})
            except (ValueError, AttributeError):
                continue
            if isinstance(error, Mapping) and error.get("code") in _TRANSIENT_TOOL_ERRORS:
                failures += 1
        return failures >= TOOL_FAILURES_BEFORE_ESCALATION

    def _escalation_reply(self, turn: _Turn, decision: EscalationDecision) -> str:
        if turn.escalation is None:
            return (
                "I'm an automated assistant and I wanted to hand this to a member of our support team, but the "
                "helpdesk is not reachable right now. Please try again in a few minutes."
            )
        return decision.customer_message + _ticket_sentence(turn.escalation.ticket_id)

    async def _agent_escalation(self, turn: _Turn, decision: EscalationDecision) -> AsyncIterator[TurnEvent]:
        """The agent escalates itself (idempotency key: the turn id)."""
        request = turn.request
        summary = f"Customer's last message: {redact(request.message)[:1000]}"
        ticket: TicketView | None = None
        for attempt_summary in (summary, NEUTRAL_SUMMARY):
            try:
                ticket = await self._tools.escalate(
                    conversation_id=request.conversation_id,
                    customer_id=request.customer_id,
                    priority=decision.priority,
                    reason_code=decision.reason_code,
                    reason=decision.trigger,
                    summary=attempt_summary,
                    tools_tried=[call.name for call in turn.tool_calls],
                    sources=[Source.of(hit) for hit in turn.hits],
                    idempotency_key=turn.turn_id,
                )
                break
            except ToolsUnavailableError as error:
                logger.error(
                    "escalation failed",
                    extra={**turn.log_ids, "reason_code": decision.reason_code, "grpc_code": error.code.name},
                )
                # The helpdesk refuses some customer text (e.g. injection-like); retry once without it.
                if not error.refused_input:
                    break
        if ticket is None:
            return
        turn.escalation = EscalationInfo(
            ticket_id=ticket.ticket_id,
            priority=ticket.priority or decision.priority,
            reason_code=decision.reason_code,
            detail=decision.trigger,
        )
        yield self._escalated(turn)

    def _escalated(self, turn: _Turn) -> EscalationEvent:
        escalation = turn.escalation
        assert escalation is not None
        turn.state = "pending_human"
        turn.ticket_id = escalation.ticket_id
        observability.record_escalation(escalation.reason_code)
        audit.info(
            "escalated to a human",
            extra={
                **turn.log_ids,
                "event": "escalation",
                "ticket_id": escalation.ticket_id,
                "priority": escalation.priority,
                "reason_code": escalation.reason_code,
                "trigger": escalation.detail,
            },
        )
        return EscalationEvent(escalation)

    def _flag(self, turn: _Turn, raw: GuardrailFlagLike) -> GuardrailEvent:
        flag = Flag(stage=str(raw.stage), rule=str(raw.rule), detail=str(raw.detail))
        turn.flags.append(flag)
        audit.warning(
            "guardrail tripped",
            extra={
                **turn.log_ids,
                "event": "guardrail",
                "stage": flag.stage,
                "rule": flag.rule,
                "detail": flag.detail,
            },
        )
        return GuardrailEvent(flag)

    def _count_usage(self, turn: _Turn, result: ModelResult) -> None:
        turn.model = result.model or self._model.name
        turn.model_calls += 1
        turn.prompt_tokens += result.prompt_tokens
        turn.completion_tokens += result.completion_tokens
        turn.fallback = turn.fallback or result.fallback

    async def _execute(self, turn: _Turn, call: ToolCallRequest, tool_names: set[str]) -> ToolOutcome:
        started = time.perf_counter()
        if call.name not in tool_names:
            outcome = ToolOutcome(
                error_result(
                    "unknown_tool",
                    f"There is no tool named {call.name[:64]!r}. Available tools: {', '.join(sorted(tool_names))}.",
                    retryable=False,
                ),
                is_error=True,
            )
        else:
            try:
                arguments = json.loads(call.arguments or "{}")
            except ValueError:
                arguments = None
            if not isinstance(arguments, dict):
                outcome = ToolOutcome(
                    error_result(
                        "invalid_arguments", "The arguments must be a JSON object; they did not parse.", False
                    ),
                    is_error=True,
                )
            else:
                with observability.genai_span("execute_tool", call.name):
                    outcome = await self._tools.execute(
                        call.name,
                        call.arguments,
                        conversation_id=turn.request.conversation_id,
                        idempotency_key=f"{turn.turn_id}:{call.id}",
                        customer_id=turn.request.customer_id,
                    )
        suspicious = self._guardrails.scan_untrusted(f"tool:{call.name[:32]}", outcome.content_json)
        if suspicious:
            # Quarantine: a result carrying instructions is withheld from the model.
            for raw in suspicious:
                self._flag(turn, raw)
            outcome = ToolOutcome(
                error_result(
                    "untrusted_content",
                    "The tool result contained instruction-like text and was withheld; offer the customer a human.",
                    retryable=False,
                ),
                is_error=True,
            )
        seconds = time.perf_counter() - started
        metric_name = call.name if call.name in tool_names else "unknown"
        observability.record_tool_call(metric_name, _metric_outcome(outcome), seconds)
        audit.info(
            "tool call",
            extra={
                **turn.log_ids,
                "event": "tool_call",
                "tool": call.name[:64],
                "tool_call_id": call.id,
                "is_error": outcome.is_error,
                "duration_ms": round(seconds * 1000, 1),
            },
        )
        return outcome

    def _citations(self, turn: _Turn) -> tuple[Source, ...]:
        """Sources the reply used: its [n] markers; else the top hit when it answered from the KB unaided."""
        cited: list[Source] = []
        for match in _CITATION.finditer(turn.reply):
            number = int(match.group(1))
            if 1 <= number <= len(turn.hits):
                source = Source.of(turn.hits[number - 1])
                if source not in cited:
                    cited.append(source)
        if cited:
            return tuple(cited)
        answered_from_kb = (
            turn.hits and not turn.tool_calls and turn.escalation is None and turn.reply != DONT_KNOW
        )
        return (Source.of(turn.hits[0]),) if answered_from_kb else ()

    # --- persistence ---------------------------------------------------------------------------------------

    async def _persist(self, turn: _Turn) -> TurnResult:
        request = turn.request
        result = TurnResult(
            conversation_id=request.conversation_id,
            turn_id=turn.turn_id,
            user_message=request.message,
            reply=turn.reply,
            tool_calls=tuple(turn.tool_calls),
            escalation=turn.escalation,
            sources=turn.sources,
            flags=tuple(turn.flags),
            state=turn.state,
            usage=UsageInfo(
                model=turn.model,
                model_calls=turn.model_calls,
                prompt_tokens=turn.prompt_tokens,
                completion_tokens=turn.completion_tokens,
                fallback=turn.fallback,
            ),
            knowledge_gap=turn.knowledge_gap,
            assignee=turn.assignee,
            ticket_id=turn.ticket_id,
            create_time=turn.started,
        )
        try:
            await self._store.append_turn(result, customer_id=request.customer_id)
        except DuplicateTurnError:
            stored = await self._store.get_turn(request.conversation_id, turn.turn_id)
            if stored is None:
                raise
            return stored.as_replayed()
        audit.info(
            "turn completed",
            extra={
                **turn.log_ids,
                "event": "turn",
                "state": result.state,
                "tool_calls": len(result.tool_calls),
                "escalated": result.escalation is not None,
                "knowledge_gap": result.knowledge_gap,
                "sources": len(result.sources),
                "guardrail_flags": len(result.flags),
                "model": result.usage.model,
                "model_calls": result.usage.model_calls,
                "fallback": result.usage.fallback,
                "duration_ms": round((time.time() - turn.started) * 1000, 1),
            },
        )
        return result

    # --- reading ---------------------------------------------------------------------------------------------

    async def conversation(self, conversation_id: str, customer_id: str = "") -> ConversationView:
        validate_id(conversation_id, "conversation_id", required=True)
        conversation = await self._store.load(conversation_id)
        if not conversation.turns:
            raise ConversationNotFoundError(f"no conversation {conversation_id!r}")
        if conversation.customer_id and customer_id and conversation.customer_id != customer_id:
            raise NotYourConversationError("this conversation belongs to another customer")
        state, ticket_id, assignee = "bot", "", ""
        if conversation.ever_escalated:
            try:
                tickets = await self._tools.list_tickets(conversation_id, customer_id)
            except ToolsUnavailableError:
                tickets = ()
                last = conversation.turns[-1]
                state, ticket_id, assignee = last.state, last.ticket_id, last.assignee
            open_tickets = [ticket for ticket in tickets if ticket.status in {"open", "assigned"}]
            if open_tickets:
                ticket = max(open_tickets, key=lambda item: item.update_time)
                state = "human" if ticket.status == "assigned" else "pending_human"
                ticket_id, assignee = ticket.ticket_id, ticket.assignee
        return ConversationView(conversation, state, ticket_id, assignee)
