"""One turn of Chat, as a stream of typed events. No gRPC here; the ports, request, events and settings the
turn works with are in `turn_contract`, the architecture in docs/architecture.md.

`TurnRunner.run` reads top-down as the stages of a turn: validate → the customer's rate → replay a retried
turn id → take the conversation's lock (renewed while the turn runs) → the conversation's message cap → route
a button press (ConfirmAction / DeclineAction) to its action, a human-owned conversation to its ticket (or hand
off at the turn cap) → screen the input → answer a pending write action (`action_flow`) → retrieve and
quarantine → model/tool rounds (a proposed write action ends them) → decide the escalation (`turn_outcome`) →
screen the output → cite → persist.
Everything after the lock runs under the turn's deadline. The turn always yields its events and ends with
exactly one `FinalEvent`; Chat collects them, StreamChat forwards them as they happen.

The turn's record (`_Turn`) changes in two visible ways only: a stage assigns its own fields, and an event
that changes the record goes through `_Turn.record`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from agent_service import action_flow, metrics, query_rewrite, texts
from agent_service.conversation_store import ConversationStore
from agent_service.domain import (
    ActionInfo,
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
    ConversationFullError,
    ConversationNotFoundError,
    DuplicateTurnError,
    InvalidInputError,
    NotYourConversationError,
    OverloadedError,
    RateLimitedError,
    StoreUnavailableError,
    TurnDeadlineError,
)
from agent_service.escalation_policy import EscalationDecision, EscalationPolicy
from agent_service.guardrails.stream_screen import DeltaScreen
from agent_service.model_port import ModelPort, ModelRequest, ModelResult, TextChunk, ToolCallRequest
from agent_service.prompts import SYSTEM_PROMPT, model_messages
from agent_service.rate_limit import CustomerRateLimiter
from agent_service.tool_results import (
    ESCALATE_TOOL,
    TOOL_FAILURES_BEFORE_ESCALATION,
    escalation_priority,
    metric_outcome,
    parse_ticket_id,
    tools_kept_failing,
)
from agent_service.turn_contract import (
    ActionEvent,
    ConversationView,
    EscalationEvent,
    FinalEvent,
    GuardrailEvent,
    Guardrails,
    Retrieval,
    RetrievalResult,
    SourcesEvent,
    TextDeltaEvent,
    TicketView,
    ToolCallFinishedEvent,
    ToolCallStartedEvent,
    ToolOutcome,
    Tools,
    ToolsUnavailableError,
    TurnEvent,
    TurnRequest,
    TurnSettings,
    tool_error_json,
    validate_id,
    validate_request,
)
from agent_service.turn_outcome import TurnFacts, TurnOutcome, decide_outcome
from service_kit import observability
from service_kit.redact import redact

logger = logging.getLogger(__name__)
audit = logging.getLogger("agent_service.audit")

# Of the turn's time budget, what model calls leave for persisting and replying (the smaller of the two).
MAX_REPLY_RESERVE_SECONDS = 2.0
REPLY_RESERVE_SHARE = 0.2
# At most one "turns shed" log line per this many seconds (it carries the count since the last one).
SHED_LOG_SECONDS = 1.0
NEUTRAL_SUMMARY = "See the conversation transcript in the support console."
_CITATION = re.compile(r"\[(\d{1,3})\]")
# The digest a withheld or truncated stored message ends with (texts.withheld_message, truncated_message).
_STORED_DIGEST = re.compile(r"sha256:([0-9a-f]{16})\]$")
_OPEN_TICKET_STATES = frozenset({"open", "assigned"})

_Event = TypeVar("_Event", bound=TurnEvent)


@dataclass
class _Lease:
    """The conversation lock a turn holds; `released` once the stored turn gave it back."""

    holder: str
    released: bool = False


@dataclass
class _Turn:
    """The record of one turn while it runs; `_persist` turns it into the stored `TurnResult`."""

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
    sources: tuple[Source, ...] = ()
    # The model gave a final reply within the allowed rounds.
    answered: bool = False
    # False when the engine said itself that it found nothing to answer from (see ModelResult.knew_answer).
    knew_answer: bool = True
    outcome: TurnOutcome | None = None
    usage: UsageInfo = field(default_factory=UsageInfo)
    # The input guardrail's rules that blocked the message ("" when it was not blocked).
    blocked_by: str = ""
    # The event-loop time by which every model call must be over (leaving time to persist and reply).
    model_deadline: float = float("inf")
    # The write action this turn proposed, ran or dropped.
    action: ActionInfo | None = None

    @property
    def log_ids(self) -> dict[str, str]:
        return {"conversation_id": self.request.conversation_id, "turn_id": self.turn_id}

    def record(self, event: _Event) -> _Event:
        """Folds an event that changes the turn into the record, and returns it for the caller to yield."""
        if isinstance(event, GuardrailEvent):
            self.flags.append(event.flag)
        elif isinstance(event, ToolCallFinishedEvent):
            self.tool_calls.append(event.call)
        elif isinstance(event, EscalationEvent):
            self.escalation = event.escalation
            self.state = "pending_human"
            self.ticket_id = event.escalation.ticket_id
        elif isinstance(event, ActionEvent):
            self.action = event.action
        return event

    def count(self, result: ModelResult, default_model: str) -> None:
        self.usage = UsageInfo(
            model=result.model or default_model,
            model_calls=self.usage.model_calls + 1,
            prompt_tokens=self.usage.prompt_tokens + result.prompt_tokens,
            completion_tokens=self.usage.completion_tokens + result.completion_tokens,
            fallback=self.usage.fallback or result.fallback,
            cached_tokens=self.usage.cached_tokens + result.cached_tokens,
        )


def _tool_names(tools: Sequence[Mapping[str, Any]]) -> set[str]:
    return {
        str(tool.get("function", {}).get("name"))
        for tool in tools
        if isinstance(tool.get("function"), Mapping)
    }


def _unique_call_ids(
    calls: Sequence[ToolCallRequest], used: set[str], round_index: int
) -> list[ToolCallRequest]:
    """Every call needs an id unique in the turn: it pairs the tool message with its call and scopes the
    idempotency key. Missing or repeated ids from the model are replaced (consistently)."""
    unique = []
    for index, call in enumerate(calls):
        call_id = call.id if call.id and call.id not in used else f"call_{round_index}_{index}"
        used.add(call_id)
        unique.append(replace(call, id=call_id))
    return unique


def _assistant_message(content: str, calls: Sequence[ToolCallRequest]) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": content or None,
        "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in calls
        ],
    }


def _latest_open_ticket(tickets: Sequence[TicketView]) -> TicketView | None:
    open_tickets = [ticket for ticket in tickets if ticket.status in _OPEN_TICKET_STATES]
    return max(open_tickets, key=lambda ticket: ticket.update_time) if open_tickets else None


def _owned_state(ticket: TicketView) -> str:
    return "human" if ticket.status == "assigned" else "pending_human"


def _digest(message: str) -> str:
    return hashlib.sha256(message.encode("utf-8")).hexdigest()[:16]


# Idempotency keys the tools service is sent stay short whatever the turn id and the model's call ids are.
MAX_IDEMPOTENCY_KEY_CHARS = 128


def idempotency_key(*parts: str) -> str:
    """`parts` joined by ":" — or, when that is longer than MAX_IDEMPOTENCY_KEY_CHARS, its SHA-256 (the same
    parts always give the same key, so a retried turn still finds its earlier calls)."""
    key = ":".join(parts)
    if len(key) <= MAX_IDEMPOTENCY_KEY_CHARS:
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def _same_message(stored: str, message: str) -> bool:
    """Whether a stored user message is `message`: verbatim, or withheld/truncated with its digest."""
    if stored == message:
        return True
    match = _STORED_DIGEST.search(stored)
    return match is not None and match.group(1) == _digest(message)


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
        self._actions = action_flow.ActionFlow(tools)
        self._active = 0
        self._warm: asyncio.Future[None] | None = None
        self._shed_logged_at = -SHED_LOG_SECONDS
        self._shed_since_log = 0
        self._rate = CustomerRateLimiter(settings.customer_turns_per_minute, settings.customer_turn_burst)

    @property
    def active_turns(self) -> int:
        return self._active

    def _log_shed(self) -> None:
        """One WARNING line per `SHED_LOG_SECONDS` with the number of turns shed since the last one: a burst of
        rejections is one event for the operator, and a line per rejection cost the burst's latency."""
        self._shed_since_log += 1
        now = time.monotonic()
        if now - self._shed_logged_at >= SHED_LOG_SECONDS:
            logger.warning(
                "turns shed: too many turns in flight",
                extra={"active_turns": self._active, "shed": self._shed_since_log},
            )
            self._shed_logged_at, self._shed_since_log = now, 0

    def start_warm_up(self) -> asyncio.Future[None]:
        """Loads the embedding models of the injection detector and the escalation backstop in a worker thread
        (about 2 s), once. Turns wait for it without holding the event loop: built on first use inside a turn,
        the models would stall every other turn, lease renewal and health check of the process meanwhile."""
        if self._warm is None:
            self._warm = asyncio.ensure_future(asyncio.to_thread(self._warm_up_models))
        return self._warm

    def _warm_up_models(self) -> None:
        # The checks build (or do without) what they can on first use: a failed warm-up never fails a turn.
        try:
            self._guardrails.warm_up()
            self._policy.warm_up()
        except Exception:
            logger.exception("warming up the guardrail and escalation models failed")

    # --- the turn, top-down ------------------------------------------------------------------------------

    async def run(self, request: TurnRequest) -> AsyncGenerator[TurnEvent, None]:
        """The turn's events, ending with exactly one `FinalEvent`. Raises `AgentError`s for refused turns."""
        validate_request(request, self._settings)
        self._check_rate(request)
        if self._active >= self._settings.max_concurrent_turns:
            self._log_shed()
            raise OverloadedError("the agent is at capacity; retry shortly")
        self._active += 1
        warm = self.start_warm_up()
        budget = self._settings.turn_deadline_seconds
        if request.time_budget_seconds is not None:
            budget = max(0.0, min(budget, request.time_budget_seconds))
        deadline = asyncio.get_running_loop().time() + budget
        try:
            if not warm.done():
                await asyncio.shield(warm)
            replayed = await self._replayed(request)
            if replayed is not None:
                yield FinalEvent(replayed)
                return
            # Retrieval depends on nothing but the message: start it now, off the lock/load/hand-off path.
            search = asyncio.create_task(self._retrieval.search(request.message))
            try:
                async with self._conversation_lock(request) as lease:
                    # A retry that raced the original may find it stored now that we hold the lock.
                    replayed = await self._replayed(request)
                    if replayed is not None:
                        yield FinalEvent(replayed)
                        return
                    turn = _Turn(request, request.turn_id or uuid.uuid4().hex, time.time())
                    turn.model_deadline = deadline - min(
                        MAX_REPLY_RESERVE_SECONDS, REPLY_RESERVE_SHARE * budget
                    )
                    async with self._deadline(turn, deadline):
                        conversation = await self._load_owned(request)
                        self._check_room(conversation)
                        conversation, open_ticket = await self._record_handbacks(conversation, turn)
                    if request.decision is not None:
                        stages = self._button(turn, conversation)
                    elif open_ticket is not None:
                        stages = self._forward_to_human(turn, open_ticket)
                    elif conversation.turns_since_handback >= self._settings.max_turns:
                        stages = self._turn_cap(turn)
                    else:
                        stages = self._bot_turn(turn, conversation, search)
                    async for event in self._until(turn, deadline, stages):
                        self._audit(turn, event)
                        yield event
                    yield FinalEvent(await self._persist(turn, lease))
            finally:
                await self._settle(search)
        finally:
            self._active -= 1

    async def _bot_turn(
        self, turn: _Turn, conversation: Conversation, search: asyncio.Task[RetrievalResult]
    ) -> AsyncIterator[TurnEvent]:
        verdict = self._guardrails.check_input(turn.request.message, self._settings.max_message_chars)
        for flag in verdict.flags:
            yield turn.record(GuardrailEvent(flag))
        if verdict.blocked:
            turn.blocked_by = ", ".join(dict.fromkeys(flag.rule for flag in verdict.flags)) or "blocked"
            # A blocked message the policy hands to a person still goes to a person (a false positive of the
            # injection detector must never keep a defrauded customer from a human): the human reads it, the
            # model never does.
            policy_decision = self._policy.evaluate(turn.request.message)
            if policy_decision is None:
                turn.reply = verdict.safe_reply
                yield TextDeltaEvent(turn.reply)
            else:
                turn.outcome = TurnOutcome.ESCALATE_POLICY_TRIGGER
                async for event in self._apply_outcome(turn, turn.outcome, policy_decision):
                    yield event
            return

        pending = action_flow.pending_action(conversation.turns)
        if pending is not None:
            settled = await self._actions.answer(pending, turn.request, turn.turn_id)
            async for event in self._settled(turn, settled):
                yield event
            if settled.reply is not None:
                return

        async for event in self._retrieve(turn, conversation, search):
            yield event

        policy_decision = self._policy.evaluate(turn.request.message)
        async for event in self._model_rounds(turn, conversation, policy_decision):
            yield event

        turn.outcome = decide_outcome(
            TurnFacts(
                answered=turn.answered,
                model_escalated=turn.escalation is not None,
                policy_triggered=policy_decision is not None,
                tools_kept_failing=tools_kept_failing(turn.tool_calls),
                knowledge_gap=turn.knowledge_gap,
                used_tools=bool(turn.tool_calls),
                reply_empty=not turn.reply.strip(),
            )
        )
        async for event in self._apply_outcome(turn, turn.outcome, policy_decision):
            yield event

        async for event in self._screen_output(turn):
            yield event
        turn.sources = self._citations(turn)

    # --- the stages -----------------------------------------------------------------------------------------

    async def _button(self, turn: _Turn, conversation: Conversation) -> AsyncIterator[TurnEvent]:
        """ConfirmAction / DeclineAction: the conversation's pending action, decided without the model."""
        settled = await self._actions.press(conversation.turns, turn.request)
        async for event in self._settled(turn, settled):
            yield event

    @staticmethod
    async def _settled(turn: _Turn, settled: action_flow.Settled) -> AsyncIterator[TurnEvent]:
        yield turn.record(ActionEvent(settled.action))
        if settled.reply is not None:
            turn.reply = settled.reply
            yield TextDeltaEvent(turn.reply)

    def _check_rate(self, request: TurnRequest) -> None:
        """The customer's token bucket (keyed by the validated customer id) → RateLimitedError when empty."""
        wait = self._rate.try_acquire(request.customer_id)
        if wait > 0:
            audit.warning(
                "turn refused: customer rate limit",
                extra={"event": "turn_rate_limited", "conversation_id": request.conversation_id},
            )
            raise RateLimitedError(f"too many messages from this customer; retry in {max(1, round(wait))} s")

    def _check_room(self, conversation: Conversation) -> None:
        """The hard cap on stored turns. A human-owned conversation is never handed back to the bot by it; it
        is refused like any other."""
        limit = self._settings.max_conversation_messages
        if len(conversation.turns) >= limit:
            raise ConversationFullError(
                f"this conversation reached its limit of {limit} messages; start a new conversation"
            )

    @asynccontextmanager
    async def _deadline(self, turn: _Turn, deadline: float) -> AsyncIterator[None]:
        """Runs the body under the turn's deadline; past it the body is cancelled → TurnDeadlineError."""
        timeout = asyncio.timeout_at(deadline)
        try:
            async with timeout:
                yield
        except TimeoutError:
            if not timeout.expired():
                raise
            audit.warning(
                "turn stopped at its deadline",
                extra={
                    **turn.log_ids,
                    "event": "turn_deadline",
                    "deadline_seconds": self._settings.turn_deadline_seconds,
                },
            )
            raise TurnDeadlineError(
                f"the turn took longer than {self._settings.turn_deadline_seconds:g} s and was stopped; "
                "nothing was stored, retry with the same turn_id"
            ) from None

    async def _until(
        self, turn: _Turn, deadline: float, stages: AsyncIterator[TurnEvent]
    ) -> AsyncIterator[TurnEvent]:
        """`stages`' events, each one awaited under the deadline (never the caller's handling of an event)."""
        while True:
            async with self._deadline(turn, deadline):
                try:
                    event = await anext(stages)
                except StopAsyncIteration:
                    return
            yield event

    @asynccontextmanager
    async def _conversation_lock(self, request: TurnRequest) -> AsyncIterator[_Lease]:
        """The conversation's lease for the turn: taken or ABORTED, renewed every third of the lease while the
        turn runs, released with the stored turn (`_persist`) or else at the end (a store outage at release
        leaves a lease that simply expires)."""
        holder = uuid.uuid4().hex
        lease = _Lease(holder)
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
        renewal = asyncio.create_task(self._renew_lease(conversation_id, lease))
        try:
            yield lease
        finally:
            renewal.cancel()
            await asyncio.gather(renewal, return_exceptions=True)
            if not lease.released:
                await self._release(conversation_id, holder)

    async def _release(self, conversation_id: str, holder: str) -> None:
        try:
            await asyncio.shield(self._store.release_lock(conversation_id, holder))
        except StoreUnavailableError as error:
            logger.warning(
                "could not release the conversation lease; it expires by itself",
                extra={
                    "conversation_id": conversation_id,
                    "lease_seconds": self._settings.turn_lease_seconds,
                    "error": str(error),
                },
            )

    async def _renew_lease(self, conversation_id: str, lease: _Lease) -> None:
        seconds = self._settings.turn_lease_seconds
        while True:
            await asyncio.sleep(seconds / 3)
            if lease.released:
                return
            try:
                kept = await self._store.renew_lock(conversation_id, lease.holder, seconds)
            except StoreUnavailableError as error:
                logger.warning(
                    "could not renew the conversation lease; retrying",
                    extra={"conversation_id": conversation_id, "error": str(error)},
                )
                continue
            if not kept and not lease.released:
                logger.error(
                    "the conversation lease was lost while the turn ran",
                    extra={"conversation_id": conversation_id},
                )
                return

    @staticmethod
    async def _settle(search: asyncio.Task[RetrievalResult]) -> None:
        if not search.done():
            search.cancel()
        # Consume the outcome so an unused search never logs "exception was never retrieved".
        await asyncio.gather(search, return_exceptions=True)

    async def _replayed(self, request: TurnRequest) -> TurnResult | None:
        if not request.turn_id:
            return None
        stored = await self._store.get_turn(request.conversation_id, request.turn_id)
        if stored is None:
            return None
        await self._load_owned(request)  # another customer's stored turn is not theirs to replay
        if not _same_message(stored.user_message, request.message):
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

    async def _load_owned(self, request: TurnRequest) -> Conversation:
        conversation = await self._store.load(request.conversation_id)
        if (
            conversation.customer_id
            and request.customer_id
            and conversation.customer_id != request.customer_id
        ):
            raise NotYourConversationError("this conversation belongs to another customer")
        return conversation

    async def _record_handbacks(
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
                extra={**turn.log_ids, "grpc_code": error.code},
            )
            return conversation, None
        notes = []
        for ticket in sorted(tickets, key=lambda item: item.update_time):
            if ticket.status != "resolved" or ticket.ticket_id in conversation.handed_back_ticket_ids:
                continue
            record = TurnResult(
                conversation_id=request.conversation_id,
                turn_id=f"handback-{ticket.ticket_id}",
                system_note=texts.handback_note(
                    ticket.assignee, ticket.ticket_id, ticket.resolution_note, ticket.human_replies
                ),
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
        return conversation, _latest_open_ticket(tickets)

    async def _forward_to_human(self, turn: _Turn, ticket: TicketView) -> AsyncIterator[TurnEvent]:
        request = turn.request
        turn.ticket_id = ticket.ticket_id
        turn.assignee = ticket.assignee
        turn.state = _owned_state(ticket)
        try:
            await self._tools.append_customer_message(ticket.ticket_id, request.message, request.customer_id)
        except ToolsUnavailableError as error:
            logger.error(
                "could not attach the message to the ticket",
                extra={**turn.log_ids, "ticket_id": ticket.ticket_id, "grpc_code": error.code},
            )
            turn.reply = texts.message_not_passed_on(ticket.ticket_id)
        else:
            if turn.state == "human":
                turn.reply = texts.passed_to_assignee(ticket.assignee, ticket.ticket_id)
            else:
                turn.reply = texts.waiting_for_human(ticket.ticket_id, ticket.estimated_wait)
        audit.info(
            "message forwarded to the human-owned ticket",
            extra={
                **turn.log_ids,
                "event": "forwarded_to_human",
                "ticket_id": ticket.ticket_id,
                "state": turn.state,
            },
        )
        yield TextDeltaEvent(turn.reply)

    async def _turn_cap(self, turn: _Turn) -> AsyncIterator[TurnEvent]:
        decision = self._policy.decision_for(
            "conversation_limit", f"conversation reached {self._settings.max_turns} turns"
        )
        async for event in self._agent_escalation(turn, decision):
            yield event
        if turn.escalation is not None:
            turn.reply = texts.TURN_CAP_HANDED_OVER + texts.ticket_sentence(turn.escalation.ticket_id)
        else:
            turn.reply = texts.TURN_CAP_NO_HELPDESK
        yield TextDeltaEvent(turn.reply)

    async def _retrieve(
        self, turn: _Turn, conversation: Conversation, search: asyncio.Task[RetrievalResult]
    ) -> AsyncIterator[TurnEvent]:
        """Awaits the search started with the turn (fused with a search in the context of the previous message
        for a follow-up) and screens each chunk for instructions (`screen_kb_chunk`): what carries them never
        reaches the model (nor the customer through it)."""
        retrieved = await self._searched(turn, conversation, search)
        kept = []
        for hit in () if retrieved.nothing_relevant else retrieved.hits:
            # The title reaches the model too (as data), so it is screened with the text.
            screen = self._guardrails.screen_kb_chunk(hit.doc_id, hit.title, hit.text)
            for flag in screen.flags:
                yield turn.record(GuardrailEvent(flag))
            if screen.text is not None:
                kept.append(hit if not screen.flags else replace(hit, title=screen.title, text=screen.text))
        turn.hits = tuple(kept)
        turn.knowledge_gap = not turn.hits
        yield SourcesEvent(tuple(Source.of(hit) for hit in turn.hits), turn.knowledge_gap)

    async def _searched(
        self, turn: _Turn, conversation: Conversation, search: asyncio.Task[RetrievalResult]
    ) -> RetrievalResult:
        """The search of the message as written; for a follow-up that leans on the previous turn ("and how long
        does that take?") fused with a second search of it in the context of the customer's previous
        message(s) (`query_rewrite`). Other messages wait for nothing more than the search started with the
        turn."""
        message = turn.request.message
        if not query_rewrite.is_follow_up(message):
            return await search
        contextual = query_rewrite.contextual_query(
            message, query_rewrite.previous_customer_messages(conversation.turns)
        )
        if contextual is None:
            return await search
        logger.debug("follow-up: searching with the previous message too", extra=turn.log_ids)
        literal, in_context = await asyncio.gather(search, self._retrieval.search(contextual))
        return query_rewrite.fuse(literal, in_context)

    async def _model_rounds(
        self,
        turn: _Turn,
        conversation: Conversation,
        policy_decision: EscalationDecision | None,
    ) -> AsyncIterator[TurnEvent]:
        """Up to `max_tool_rounds` model calls; the tools each one asks for run before the next. Sets
        `answered` and `reply` when a call gives the final reply (else the rounds ran out)."""
        request = turn.request
        tools = await self._tools.list_tools()
        tool_names = _tool_names(tools)
        messages = model_messages(
            hits=turn.hits,
            turns=conversation.turns,
            message=request.message,
            budget_tokens=self._settings.context_token_budget,
            untrusted_block=self._guardrails.untrusted_block,
        )
        used_ids: set[str] = set()
        known_links = self._known_links(turn)
        screen = DeltaScreen(
            lambda text: (
                self._guardrails.check_output(
                    text, SYSTEM_PROMPT, known_links, self._settings.link_allowlist
                ).reply
            )
        )
        for round_index in range(self._settings.max_tool_rounds):
            result: ModelResult | None = None
            left = turn.model_deadline - asyncio.get_running_loop().time()
            model_request = ModelRequest(
                messages=tuple(messages),
                tools=tools,
                stream=request.stream,
                user_message=request.message,
                hits=turn.hits,
                escalation_hint=policy_decision,
                timeout=None if left == float("inf") else left,
            )
            async for chunk in self._model.generate(model_request):
                if isinstance(chunk, TextChunk):
                    released = screen.feed(chunk.text)
                    if released:
                        yield TextDeltaEvent(released)
                else:
                    result = chunk
            assert result is not None, "a model port must end with a ModelResult"
            released = screen.flush()
            if released:
                yield TextDeltaEvent(released)
            turn.count(result, self._model.name)
            if not result.tool_calls:
                turn.reply = result.content
                turn.knew_answer = result.knew_answer
                turn.answered = True
                return
            calls = _unique_call_ids(result.tool_calls, used_ids, round_index)
            messages.append(_assistant_message(result.content, calls))
            for call in calls:
                yield ToolCallStartedEvent(ToolCallRecord(call.id, call.name, call.arguments))
            executed = await asyncio.gather(*(self._execute(turn, call, tool_names) for call in calls))
            for call, (outcome, quarantine_flags) in zip(calls, executed, strict=True):
                for flag in quarantine_flags:
                    yield turn.record(GuardrailEvent(flag))
                record = ToolCallRecord(
                    call.id, call.name, call.arguments, outcome.content_json, outcome.is_error
                )
                messages.append({"role": "tool", "tool_call_id": call.id, "content": outcome.content_json})
                yield turn.record(ToolCallFinishedEvent(record))
                escalation = self._model_escalation(turn, record, policy_decision)
                if escalation is not None:
                    yield turn.record(EscalationEvent(escalation))
            # A proposed write action ends the rounds: the customer confirms it (or not) in their next message.
            proposed = action_flow.proposed_action(outcome for outcome, _ in executed)
            if proposed is not None:
                yield turn.record(ActionEvent(proposed))
                turn.reply, turn.answered = texts.action_proposal(proposed.summary), True
                yield TextDeltaEvent(turn.reply)
                return

    @staticmethod
    def _model_escalation(
        turn: _Turn, call: ToolCallRecord, policy_decision: EscalationDecision | None
    ) -> EscalationInfo | None:
        """The escalation an escalate_to_human call of the model opened (the first one counts)."""
        if call.name != ESCALATE_TOOL or call.is_error or turn.escalation is not None:
            return None
        ticket_id = parse_ticket_id(call.result_json)
        if not ticket_id:
            return None
        return EscalationInfo(
            ticket_id=ticket_id,
            priority=escalation_priority(call) or (policy_decision.priority if policy_decision else "medium"),
            reason_code=policy_decision.reason_code if policy_decision else "model_initiated",
            detail=policy_decision.trigger if policy_decision else "the model called escalate_to_human",
        )

    async def _apply_outcome(
        self, turn: _Turn, outcome: TurnOutcome, policy_decision: EscalationDecision | None
    ) -> AsyncIterator[TurnEvent]:
        if outcome is TurnOutcome.ESCALATE_LOOP_LIMIT:
            decision = self._policy.decision_for(
                "loop_limit", f"{self._settings.max_tool_rounds} tool rounds without a final answer"
            )
            async for event in self._agent_escalation(turn, decision):
                yield event
            turn.reply = self._escalation_reply(turn, decision)
            yield TextDeltaEvent(turn.reply)
        elif outcome in (TurnOutcome.ESCALATE_POLICY_TRIGGER, TurnOutcome.ESCALATE_TOOL_FAILURES):
            decision = policy_decision or self._policy.decision_for(
                "tool_failure", f"{TOOL_FAILURES_BEFORE_ESCALATION}+ tool calls timed out or were unavailable"
            )
            async for event in self._agent_escalation(turn, decision):
                yield event
            addition = self._escalation_reply(turn, decision)
            had_reply = bool(turn.reply.strip())
            turn.reply = f"{turn.reply}\n\n{addition}" if had_reply else addition
            yield TextDeltaEvent(("\n\n" if had_reply else "") + addition)
        elif outcome is TurnOutcome.DONT_KNOW:
            logger.info("nothing to answer from: answering that we do not know", extra=turn.log_ids)
            turn.reply = texts.DONT_KNOW
        if turn.escalation is not None and turn.escalation.ticket_id not in turn.reply:
            turn.reply += texts.ticket_sentence(turn.escalation.ticket_id)

    def _known_links(self, turn: _Turn) -> set[str]:
        known_links: set[str] = set()
        for hit in turn.hits:
            known_links |= self._guardrails.extract_links(hit.text)
        return known_links

    async def _screen_output(self, turn: _Turn) -> AsyncIterator[TurnEvent]:
        checked = self._guardrails.check_output(
            turn.reply, SYSTEM_PROMPT, self._known_links(turn), self._settings.link_allowlist
        )
        turn.reply = checked.reply
        for flag in checked.flags:
            yield turn.record(GuardrailEvent(flag))

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
            turn.hits
            and not turn.tool_calls
            and turn.escalation is None
            and turn.outcome is TurnOutcome.ANSWER
            and turn.knew_answer
        )
        return (Source.of(turn.hits[0]),) if answered_from_kb else ()

    # --- escalation and tools -------------------------------------------------------------------------------

    @staticmethod
    def _escalation_reply(turn: _Turn, decision: EscalationDecision) -> str:
        if turn.escalation is None:
            return texts.HELPDESK_UNREACHABLE
        return decision.customer_message + texts.ticket_sentence(turn.escalation.ticket_id)

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
                    idempotency_key=idempotency_key(turn.turn_id),
                )
                break
            except ToolsUnavailableError as error:
                logger.error(
                    "escalation failed",
                    extra={**turn.log_ids, "reason_code": decision.reason_code, "grpc_code": error.code},
                )
                # The helpdesk refuses some customer text (e.g. injection-like); retry once without it.
                if not error.refused_input:
                    break
        if ticket is None:
            return
        escalation = EscalationInfo(
            ticket_id=ticket.ticket_id,
            priority=ticket.priority or decision.priority,
            reason_code=decision.reason_code,
            detail=decision.trigger,
        )
        yield turn.record(EscalationEvent(escalation))

    async def _execute(
        self, turn: _Turn, call: ToolCallRequest, tool_names: set[str]
    ) -> tuple[ToolOutcome, tuple[Flag, ...]]:
        """Runs one tool call; a result carrying instructions is withheld from the model (its flags are
        returned for the caller to record)."""
        started = time.perf_counter()
        outcome = await self._call_tool(turn, call, tool_names)
        flags = tuple(self._guardrails.scan_untrusted(f"tool:{call.name[:32]}", outcome.content_json))
        if flags:
            outcome = ToolOutcome(
                tool_error_json(
                    "untrusted_content",
                    "The tool result contained instruction-like text and was withheld; offer the customer a human.",
                    retryable=False,
                ),
                is_error=True,
            )
        seconds = time.perf_counter() - started
        metric_name = call.name if call.name in tool_names else "unknown"
        metrics.record_tool_call(metric_name, metric_outcome(outcome), seconds)
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
        return outcome, flags

    async def _call_tool(self, turn: _Turn, call: ToolCallRequest, tool_names: set[str]) -> ToolOutcome:
        if call.name not in tool_names:
            message = f"There is no tool named {call.name[:64]!r}. Available tools: {', '.join(sorted(tool_names))}."
            return ToolOutcome(tool_error_json("unknown_tool", message, retryable=False), is_error=True)
        refused = action_flow.refusal(turn.request.message, call.name)
        if refused is not None:
            return refused
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            message = "The arguments must be a JSON object; they did not parse."
            return ToolOutcome(tool_error_json("invalid_arguments", message, retryable=False), is_error=True)
        with observability.genai_span("execute_tool", call.name):
            return await self._tools.execute(
                call.name,
                call.arguments,
                conversation_id=turn.request.conversation_id,
                idempotency_key=idempotency_key(turn.turn_id, call.id),
                customer_id=turn.request.customer_id,
            )

    # --- audit and persistence ---------------------------------------------------------------------------

    @staticmethod
    def _audit(turn: _Turn, event: TurnEvent) -> None:
        """The audit log and metrics of the events that matter after the fact."""
        if isinstance(event, GuardrailEvent):
            flag = event.flag
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
        elif isinstance(event, EscalationEvent):
            escalation = event.escalation
            metrics.record_escalation(escalation.reason_code)
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
        elif isinstance(event, ActionEvent):
            action_flow.audit_action(turn.log_ids, event.action)

    async def _persist(self, turn: _Turn, lease: _Lease) -> TurnResult:
        request = turn.request
        result = TurnResult(
            conversation_id=request.conversation_id,
            turn_id=turn.turn_id,
            user_message=self._stored_message(turn),
            reply=turn.reply,
            tool_calls=tuple(turn.tool_calls),
            escalation=turn.escalation,
            sources=turn.sources,
            flags=tuple(turn.flags),
            state=turn.state,
            usage=turn.usage,
            knowledge_gap=turn.knowledge_gap,
            assignee=turn.assignee,
            ticket_id=turn.ticket_id,
            create_time=turn.started,
            action=turn.action,
        )
        try:
            await self._store.append_turn(
                result, customer_id=request.customer_id, release_holder=lease.holder
            )
            lease.released = True
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

    def _stored_message(self, turn: _Turn) -> str:
        """What the transcript keeps of the customer's message: never a blocked message verbatim (a placeholder
        with its digest), and no more than `max_message_chars` of any other."""
        message = turn.request.message
        if turn.blocked_by:
            return texts.withheld_message(turn.blocked_by, _digest(message))
        limit = self._settings.max_message_chars
        if len(message) > limit:
            return texts.truncated_message(message[:limit], len(message), _digest(message))
        return message

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
                open_ticket = _latest_open_ticket(
                    await self._tools.list_tickets(conversation_id, conversation.customer_id or customer_id)
                )
            except ToolsUnavailableError:
                open_ticket = None
                last = conversation.turns[-1]
                state, ticket_id, assignee = last.state, last.ticket_id, last.assignee
            if open_ticket is not None:
                state = _owned_state(open_ticket)
                ticket_id, assignee = open_ticket.ticket_id, open_ticket.assignee
        return ConversationView(conversation, state, ticket_id, assignee)
