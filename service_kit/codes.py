"""Proto enums as the lower-case codes the domain speaks ("negative_sentiment", "high"), derived from the
protos so every service and the eval suite agree with the contract. The one place enum <-> string mapping is
written: `PRIORITY.to_proto("high")`, `PRIORITY.from_proto(ticket.priority)`."""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast

from support.v1 import agent_pb2, retrieval_pb2, tools_pb2, types_pb2

_UNSPECIFIED = "UNSPECIFIED"
E = TypeVar("E", bound=int)


class ProtoEnum(Generic[E]):
    """One proto enum whose values are `<PREFIX>_<CODE>` with `<PREFIX>_UNSPECIFIED = 0` (buf lint enforces it)."""

    def __init__(self, enum_type: type[E]) -> None:
        descriptor: Any = getattr(enum_type, "DESCRIPTOR")  # noqa: B009 - not in the generated stubs
        values = descriptor.values
        unspecified = next(value.name for value in values if value.number == 0)
        if not unspecified.endswith(_UNSPECIFIED):
            raise ValueError(f"{descriptor.full_name}: value 0 must be *_{_UNSPECIFIED}")
        prefix = unspecified.removesuffix(_UNSPECIFIED)
        self._to_proto: dict[str, int] = {
            value.name.removeprefix(prefix).lower(): value.number for value in values[1:]
        }
        self._from_proto: dict[int, str] = {number: code for code, number in self._to_proto.items()}
        # Declaration order, UNSPECIFIED left out.
        self.codes: tuple[str, ...] = tuple(self._to_proto)

    def to_proto(self, code: str, default: int = 0) -> E:
        """The enum number of `code` ("high" → PRIORITY_HIGH); `default` (UNSPECIFIED) for an unknown code."""
        return cast(E, self._to_proto.get(code, default))

    def from_proto(self, number: int, default: str = "") -> str:
        """The code of an enum number (PRIORITY_HIGH → "high"); `default` for UNSPECIFIED or an unknown number."""
        return self._from_proto.get(number, default)


PRIORITY = ProtoEnum(types_pb2.Priority)
ESCALATION_REASON = ProtoEnum(types_pb2.EscalationReason)
CONVERSATION_STATE = ProtoEnum(agent_pb2.ConversationState)
GUARDRAIL_STAGE = ProtoEnum(agent_pb2.GuardrailStage)
TICKET_STATUS = ProtoEnum(tools_pb2.TicketStatus)
MESSAGE_AUTHOR = ProtoEnum(tools_pb2.MessageAuthor)
ORDER_STATUS = ProtoEnum(tools_pb2.OrderStatus)
TOOL_ERROR_CODE = ProtoEnum(tools_pb2.ToolErrorCode)
DOCUMENT_OUTCOME = ProtoEnum(retrieval_pb2.DocumentOutcome)
ACTION_STATE = ProtoEnum(types_pb2.ActionState)

ESCALATION_REASON_CODES: tuple[str, ...] = ESCALATION_REASON.codes
PRIORITY_CODES: tuple[str, ...] = PRIORITY.codes
