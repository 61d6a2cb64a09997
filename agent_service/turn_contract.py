"""What the turn loop exchanges with the rest of the agent: its ports (retrieval, tools, guardrails), the
request it takes, the typed events it yields, its settings and request validation. No gRPC here."""

from __future__ import annotations

import unicodedata
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent_service.adapters.retrieval_client import RetrievalResult
from agent_service.adapters.tools_client import TicketView, ToolOutcome
from agent_service.domain import Conversation, EscalationInfo, Flag, Source, ToolCallRecord, TurnResult
from agent_service.errors import InvalidInputError

MAX_ID_CHARS = 128
_ALLOWED_MESSAGE_CONTROLS = frozenset("\n\r\t")


# --- ports the loop needs besides the model and the store -------------------------------------------------


class Retrieval(Protocol):
    async def search(self, query: str) -> RetrievalResult: ...


class Tools(Protocol):
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


class GuardrailFlagLike(Protocol):
    @property
    def stage(self) -> str: ...
    @property
    def rule(self) -> str: ...
    @property
    def detail(self) -> str: ...


class InputVerdictLike(Protocol):
    @property
    def blocked(self) -> bool: ...
    @property
    def flags(self) -> Sequence[GuardrailFlagLike]: ...
    @property
    def safe_reply(self) -> str: ...


class OutputVerdictLike(Protocol):
    @property
    def reply(self) -> str: ...
    @property
    def flags(self) -> Sequence[GuardrailFlagLike]: ...


class Guardrails(Protocol):
    """The `agent_service.guardrails` module satisfies this."""

    def check_input(self, message: str, max_chars: int = ...) -> InputVerdictLike: ...

    def check_output(
        self, reply: str, system_prompt: str, known_links: Collection[str], allowed_domains: Collection[str]
    ) -> OutputVerdictLike: ...

    def untrusted_block(self, label: str, text: str) -> str: ...

    def extract_links(self, text: str) -> set[str]: ...

    def scan_untrusted(self, label: str, text: str) -> Sequence[GuardrailFlagLike]: ...


# --- requests and events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnRequest:
    conversation_id: str
    message: str
    turn_id: str = ""
    # From the caller's `x-customer-id` metadata; "" when the caller did not say.
    customer_id: str = ""
    stream: bool = False


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
class FinalEvent:
    result: TurnResult


TurnEvent = (
    SourcesEvent
    | ToolCallStartedEvent
    | ToolCallFinishedEvent
    | TextDeltaEvent
    | EscalationEvent
    | GuardrailEvent
    | FinalEvent
)


@dataclass(frozen=True)
class TurnSettings:
    max_tool_rounds: int = 5
    max_turns: int = 25
    max_message_chars: int = 4000
    context_token_budget: int = 6000
    link_allowlist: tuple[str, ...] = ()
    turn_lease_seconds: float = 120.0
    max_concurrent_turns: int = 1024

    @property
    def hard_max_message_chars(self) -> int:
        """Above this a message is refused outright (INVALID_ARGUMENT); between the two the guardrail blocks it."""
        return max(8 * self.max_message_chars, 16_000)


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
