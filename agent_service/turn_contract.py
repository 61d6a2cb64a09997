"""What the turn exchanges with the rest of the agent: its ports (retrieval, tools, guardrails) and the
values they return, the request it takes, the typed events it yields, its settings (the one place their
defaults are written) and request validation. No gRPC here; the adapters import from this module."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent_service.domain import (
    ActionInfo,
    Conversation,
    EscalationInfo,
    Flag,
    KbHit,
    Source,
    ToolCallRecord,
    TurnResult,
)
from agent_service.errors import InvalidInputError
from agent_service.guardrails import DEFAULT_MAX_INPUT_CHARS, InputVerdict, KbScreen, OutputVerdict

MAX_ID_CHARS = 128
_ALLOWED_MESSAGE_CONTROLS = frozenset("\n\r\t")


# --- what the ports return ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrievalResult:
    hits: tuple[KbHit, ...]
    nothing_relevant: bool
    # True when the retrieval service could not be asked (the turn proceeds as a knowledge gap).
    failed: bool = False


@dataclass(frozen=True)
class ToolOutcome:
    """What a tool call gave back: exactly the JSON the model is shown, and whether it is an error. A write
    tool is only proposed: `pending_action` is the action waiting for the customer's confirmation."""

    content_json: str
    is_error: bool
    pending_action: ActionInfo | None = None


@dataclass(frozen=True)
class ActionRun:
    """What RunAction decided: the action's outcome, and whether it ran now (False: decided earlier)."""

    action: ActionInfo
    ran_now: bool


def tool_error_json(code: str, message: str, retryable: bool) -> str:
    """The structured error result a failed tool call gives the model: `{"error": {"code", "message", ...}}`."""
    return json.dumps({"error": {"code": code, "message": message, "retryable": retryable}})


@dataclass(frozen=True)
class TicketView:
    ticket_id: str
    status: str  # open | assigned | resolved
    priority: str
    reason_code: str
    assignee: str
    resolution_note: str
    estimated_wait: str
    # (author name, text) of the human agent's messages.
    human_replies: tuple[tuple[str, str], ...]
    update_time: float


class ToolsUnavailableError(Exception):
    """The tools service could not be reached or refused the call (`code` is the gRPC status name)."""

    def __init__(self, code: str, details: str, *, refused_input: bool = False) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details
        # The service rejected the request's content (INVALID_ARGUMENT), rather than being unavailable.
        self.refused_input = refused_input


# --- ports the loop needs besides the model and the store -------------------------------------------------


class Retrieval(Protocol):
    async def search(self, query: str) -> RetrievalResult: ...


class Tools(Protocol):
    """`execute` never raises for a tool failure (it returns an error outcome); the others raise
    `ToolsUnavailableError` (code "NOT_FOUND" for an action that is not the customer's, or is unknown)."""

    async def list_tools(self) -> tuple[dict[str, Any], ...]: ...

    async def execute(
        self, name: str, arguments_json: str, *, conversation_id: str, idempotency_key: str, customer_id: str
    ) -> ToolOutcome: ...

    async def escalate(
        self,
        *,
        conversation_id: str,
        customer_id: str,
        priority: str,
        reason_code: str,
        reason: str,
        summary: str,
        tools_tried: Sequence[str],
        sources: Sequence[Source],
        idempotency_key: str,
    ) -> TicketView: ...

    async def list_tickets(self, conversation_id: str, customer_id: str) -> tuple[TicketView, ...]: ...

    async def append_customer_message(self, ticket_id: str, text: str, customer_id: str) -> None: ...

    async def run_action(
        self, action_id: str, *, conversation_id: str, confirmation: str, customer_id: str
    ) -> ActionRun: ...

    async def drop_action(
        self, action_id: str, *, conversation_id: str, note: str, confirmation: str, customer_id: str
    ) -> ActionInfo: ...

    async def list_actions(self, conversation_id: str, customer_id: str) -> tuple[ActionInfo, ...]: ...


class Guardrails(Protocol):
    """The `agent_service.guardrails` package satisfies this."""

    def check_input(self, message: str, max_chars: int = ...) -> InputVerdict: ...

    def check_output(
        self, reply: str, system_prompt: str, known_links: Collection[str], allowed_domains: Collection[str]
    ) -> OutputVerdict: ...

    def untrusted_block(self, label: str, text: str) -> str: ...

    def extract_links(self, text: str) -> set[str]: ...

    def scan_untrusted(self, label: str, text: str) -> Sequence[Flag]: ...

    def screen_kb_chunk(self, doc_id: str, title: str, text: str) -> KbScreen: ...

    def warm_up(self) -> bool: ...


# --- requests and events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionDecision:
    """A ConfirmAction / DeclineAction call (the backend's button): the turn decides this action, no model."""

    action_id: str
    confirm: bool


@dataclass(frozen=True)
class TurnRequest:
    conversation_id: str
    message: str
    turn_id: str = ""
    # From the caller's `x-customer-id` metadata; "" when the caller did not say.
    customer_id: str = ""
    stream: bool = False
    # Seconds the caller still waits (its gRPC deadline) when the turn starts; None: no caller deadline. The
    # turn then ends by the sooner of this and TURN_DEADLINE_SECONDS, model calls leaving time to reply.
    time_budget_seconds: float | None = None
    # Set for ConfirmAction / DeclineAction; `message` then records the button press.
    decision: ActionDecision | None = None


@dataclass(frozen=True)
class SourcesEvent:
    sources: tuple[Source, ...]
    knowledge_gap: bool


@dataclass(frozen=True)
class ToolCallStartedEvent:
    call: ToolCallRecord


@dataclass(frozen=True)
class ToolCallFinishedEvent:
    call: ToolCallRecord


@dataclass(frozen=True)
class TextDeltaEvent:
    text: str


@dataclass(frozen=True)
class EscalationEvent:
    escalation: EscalationInfo


@dataclass(frozen=True)
class GuardrailEvent:
    flag: Flag


@dataclass(frozen=True)
class ActionEvent:
    """A write action was proposed, run or dropped."""

    action: ActionInfo


@dataclass(frozen=True)
class FinalEvent:
    result: TurnResult


TurnEvent = (
    SourcesEvent
    | ToolCallStartedEvent
    | ToolCallFinishedEvent
    | TextDeltaEvent
    | EscalationEvent
    | GuardrailEvent
    | ActionEvent
    | FinalEvent
)


@dataclass(frozen=True)
class TurnSettings:
    """The turn's limits. `Config` takes its defaults from here."""

    # Model calls per turn; the last one must answer, else the turn escalates with loop_limit.
    max_tool_rounds: int = 5
    # Customer turns since the last hand-back before the conversation goes to a person.
    max_turns: int = 25
    # Above this the input guardrail blocks the message (see `hard_max_message_chars`).
    max_message_chars: int = DEFAULT_MAX_INPUT_CHARS
    # Rough token budget for the history sent to the model (system prompt and KB context always kept).
    context_token_budget: int = 6000
    # Link domains the reply may carry besides the links in the retrieved KB text.
    link_allowlist: tuple[str, ...] = ()
    # How long a conversation's in-flight lock lives if its holder dies without releasing it. A running turn
    # renews it every third of this, so a slow turn keeps it.
    turn_lease_seconds: float = 120.0
    # Load shedding: turns beyond this run concurrently are refused at once (OverloadedError).
    max_concurrent_turns: int = 1024
    # A turn still running after this long is stopped (TurnDeadlineError → DEADLINE_EXCEEDED), nothing stored.
    # Below the lease, so even a turn whose renewals fail ends before its lease can expire.
    turn_deadline_seconds: float = 90.0
    # Per-customer token bucket for Chat turns (0 turns a minute = no limit); anonymous callers are not counted.
    customer_turns_per_minute: float = 600.0
    customer_turn_burst: int = 120
    # Hard cap on stored turns per conversation (customer turns, hand-back notes, messages forwarded to a
    # human): beyond it the conversation takes no more (ConversationFullError → RESOURCE_EXHAUSTED).
    max_conversation_messages: int = 1000

    @property
    def hard_max_message_chars(self) -> int:
        """Above this a message is refused outright (INVALID_ARGUMENT); between the two the guardrail blocks it."""
        return max(8 * self.max_message_chars, 16_000)

    def __post_init__(self) -> None:
        if self.turn_deadline_seconds <= 0 or self.turn_lease_seconds <= 0:
            raise ValueError("turn_deadline_seconds and turn_lease_seconds must be positive")
        if self.customer_turns_per_minute < 0 or self.customer_turn_burst < 1:
            raise ValueError("customer_turns_per_minute must be >= 0 and customer_turn_burst >= 1")
        if self.max_conversation_messages <= self.max_turns:
            raise ValueError("max_conversation_messages must be larger than max_turns")


@dataclass(frozen=True)
class ConversationView:
    conversation: Conversation
    state: str
    ticket_id: str
    assignee: str


# --- validation ---------------------------------------------------------------------------------------------


def validate_id(value: str, field_name: str, required: bool) -> None:
    if not value:
        if required:
            raise InvalidInputError(field_name, "is required")
        return
    if len(value) > MAX_ID_CHARS:
        raise InvalidInputError(field_name, f"must be at most {MAX_ID_CHARS} characters")
    if any(char.isspace() or unicodedata.category(char) in {"Cc", "Cf"} for char in value):
        raise InvalidInputError(field_name, "must not contain whitespace or control characters")


def validate_request(request: TurnRequest, settings: TurnSettings) -> None:
    """Raises `InvalidInputError` naming the first bad field."""
    validate_id(request.conversation_id, "conversation_id", required=True)
    validate_id(request.turn_id, "turn_id", required=False)
    if not request.message.strip():
        raise InvalidInputError("message", "is required")
    if len(request.message) > settings.hard_max_message_chars:
        raise InvalidInputError("message", f"must be at most {settings.max_message_chars} characters")
    if any(
        unicodedata.category(char) == "Cc" and char not in _ALLOWED_MESSAGE_CONTROLS
        for char in request.message
    ):
        raise InvalidInputError("message", "must not contain control characters")
    validate_id(request.customer_id, "x-customer-id", required=False)
    if request.decision is not None:
        validate_id(request.decision.action_id, "action_id", required=True)
