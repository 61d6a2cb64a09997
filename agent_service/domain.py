"""The agent's domain vocabulary: plain frozen dataclasses shared by the loop, the store and the servicer.

No gRPC here. `TurnResult` is what one turn produced (and what Chat returns); it is also the unit the
conversation store persists, serialised with `to_json` / `from_json`, so a replayed turn is byte-for-byte
the stored one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

# Where a guardrail tripped: on the customer's message (or untrusted data on its way in) or on the reply.
Stage = Literal["input", "output"]


@dataclass(frozen=True)
class KbHit:
    """A retrieved knowledge-base chunk."""

    doc_id: str
    chunk_id: str
    title: str
    text: str
    distance: float


@dataclass(frozen=True)
class Source:
    """A chunk a reply used; always one of the turn's retrieved hits."""

    doc_id: str
    title: str
    chunk_id: str
    distance: float

    @classmethod
    def of(cls, hit: KbHit) -> Source:
        return cls(hit.doc_id, hit.title, hit.chunk_id, hit.distance)


@dataclass(frozen=True)
class ToolCallRecord:
    id: str
    name: str
    arguments_json: str
    # Exactly what the model was given back.
    result_json: str = ""
    is_error: bool = False


@dataclass(frozen=True)
class EscalationInfo:
    ticket_id: str
    priority: str  # low | medium | high
    reason_code: str  # one of escalation_policy.REASON_CODES
    detail: str = ""


@dataclass(frozen=True)
class Flag:
    """A guardrail that tripped. `detail` is short and carries no customer data."""

    stage: Stage
    # prompt_injection | system_prompt_request | role_play_system | encoded_payload | oversize_input
    # | control_characters | system_prompt_leak | unknown_link
    rule: str
    detail: str = ""


@dataclass(frozen=True)
class UsageInfo:
    model: str = ""
    model_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    fallback: bool = False
    # Of prompt_tokens, those the model server took from its prompt cache.
    cached_tokens: int = 0


@dataclass(frozen=True)
class ActionInfo:
    """A write action (support.v1.Action): proposed by a turn, run only once the customer confirms it.
    `state` is one of service_kit.codes.ACTION_STATE's codes; times are epoch seconds (0: not set)."""

    action_id: str
    conversation_id: str
    tool_name: str
    arguments_json: str = "{}"
    # What will happen, for the customer: "Cancel order ORD-67890 (2 items, $84.00)".
    summary: str = ""
    state: str = "pending"  # pending | executed | declined | expired | not_executed | unknown
    create_time: float = 0.0
    expire_time: float = 0.0
    decide_time: float = 0.0
    # "message:<turn_id>" or "button": what confirmed (or dropped) it.
    confirmation: str = ""
    result_json: str = ""
    note: str = ""

    @property
    def is_pending(self) -> bool:
        return self.state == "pending"


@dataclass(frozen=True)
class TurnResult:
    """One turn as returned to the caller and as persisted. A hand-back note is a turn with `system_note`."""

    conversation_id: str
    turn_id: str
    user_message: str = ""
    reply: str = ""
    tool_calls: tuple[ToolCallRecord, ...] = ()
    escalation: EscalationInfo | None = None
    sources: tuple[Source, ...] = ()
    flags: tuple[Flag, ...] = ()
    state: str = "bot"
    usage: UsageInfo = field(default_factory=UsageInfo)
    knowledge_gap: bool = False
    replayed: bool = False
    assignee: str = ""
    ticket_id: str = ""
    system_note: str = ""
    create_time: float = 0.0
    # The write action this turn proposed, ran or dropped.
    action: ActionInfo | None = None

    @property
    def is_customer_turn(self) -> bool:
        return not self.system_note

    def as_replayed(self) -> TurnResult:
        return replace(self, replayed=True)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TurnResult:
        data: dict[str, Any] = json.loads(text)
        escalation = data.get("escalation")
        action = data.get("action")
        return cls(
            conversation_id=data["conversation_id"],
            turn_id=data["turn_id"],
            user_message=data.get("user_message", ""),
            reply=data.get("reply", ""),
            tool_calls=tuple(ToolCallRecord(**item) for item in data.get("tool_calls", ())),
            escalation=EscalationInfo(**escalation) if escalation else None,
            sources=tuple(Source(**item) for item in data.get("sources", ())),
            flags=tuple(Flag(**item) for item in data.get("flags", ())),
            state=data.get("state", "bot"),
            usage=UsageInfo(**data.get("usage", {})),
            knowledge_gap=bool(data.get("knowledge_gap", False)),
            replayed=bool(data.get("replayed", False)),
            assignee=data.get("assignee", ""),
            ticket_id=data.get("ticket_id", ""),
            system_note=data.get("system_note", ""),
            create_time=float(data.get("create_time", 0.0)),
            action=ActionInfo(**action) if action else None,
        )


@dataclass(frozen=True)
class Conversation:
    """A conversation's persisted history, oldest first."""

    conversation_id: str
    customer_id: str = ""
    turns: tuple[TurnResult, ...] = ()

    @property
    def turns_since_handback(self) -> int:
        """Customer turns since the last hand-back note: what the turn cap counts (a hand-back resets it)."""
        count = 0
        for turn in reversed(self.turns):
            if turn.system_note:
                break
            count += 1
        return count

    @property
    def ever_escalated(self) -> bool:
        return any(turn.escalation is not None or turn.ticket_id for turn in self.turns)

    @property
    def handed_back_ticket_ids(self) -> frozenset[str]:
        return frozenset(turn.ticket_id for turn in self.turns if turn.system_note and turn.ticket_id)
