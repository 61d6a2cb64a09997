"""What the agent did, turn by turn: plain data, independent of gRPC, so the scorer stays pure."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolCallRecord:
    name: str
    arguments_json: str = "{}"
    result_json: str = ""
    is_error: bool = False

    @property
    def arguments(self) -> dict[str, Any] | None:
        """The parsed arguments, or None when the model produced malformed JSON (or not an object)."""
        try:
            value = json.loads(self.arguments_json or "{}")
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class EscalationRecord:
    ticket_id: str
    # "low" | "medium" | "high" | "unspecified"
    priority: str
    reason: str = ""
    detail: str = ""


@dataclass(frozen=True)
class SourceRecord:
    doc_id: str
    chunk_id: str = ""
    title: str = ""
    distance: float = 0.0


@dataclass(frozen=True)
class ActionRecord:
    """The write action a response carries (ChatResponse.action)."""

    action_id: str
    tool: str
    # service_kit.codes.ACTION_STATE codes: "pending" | "executed" | "declined" | "expired" | "not_executed" |
    # "unknown" ("unspecified" when the agent sent none)
    state: str
    summary: str = ""
    note: str = ""


@dataclass(frozen=True)
class TurnRecord:
    """One Chat call: the customer's message and everything the response said (or the RPC error)."""

    message: str
    reply: str = ""
    tool_calls: tuple[ToolCallRecord, ...] = ()
    escalation: EscalationRecord | None = None
    sources: tuple[SourceRecord, ...] = ()
    knowledge_gap: bool = False
    # "bot" | "pending_human" | "human" | "unspecified"
    state: str = "bot"
    model: str = ""
    fallback: bool = False
    guardrail_flags: tuple[str, ...] = ()
    latency_ms: float = 0.0
    # "CODE: details" when the RPC failed; every expectation of such a turn fails.
    error: str | None = None
    turn_id: str = ""
    action: ActionRecord | None = None


@dataclass(frozen=True)
class ConversationRecord:
    # The suite's conversation id, and the conversation id actually sent (fresh per run).
    spec_id: str
    conversation_id: str
    customer_id: str
    turns: tuple[TurnRecord, ...] = field(default_factory=tuple)
