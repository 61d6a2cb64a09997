"""Lower-case codes of the shared support.v1 enums ("negative_sentiment", "high"), derived from the protos
so every service and the eval suite agree with the contract."""

from __future__ import annotations

from typing import Any

from support.v1 import types_pb2


def enum_codes(enum_type: Any, prefix: str) -> tuple[str, ...]:
    """The enum's value names without `prefix`, lower-cased, in declaration order, UNSPECIFIED left out."""
    names = (value.name for value in enum_type.DESCRIPTOR.values)
    return tuple(name.removeprefix(prefix).lower() for name in names if not name.endswith("_UNSPECIFIED"))


ESCALATION_REASON_CODES: tuple[str, ...] = enum_codes(types_pb2.EscalationReason, "ESCALATION_REASON_")
PRIORITY_CODES: tuple[str, ...] = enum_codes(types_pb2.Priority, "PRIORITY_")
