"""Reading the tool results the turn acts on: the ticket an escalate_to_human call opened, the priority it
was given, the metric label of an outcome and whether the tools kept failing. Pure functions over the JSON
the tools service returns (`{"ticket": {...}}` or flat fields; `{"error": {"code": ...}}` for failures)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

from agent_service.domain import ToolCallRecord
from agent_service.turn_contract import ToolOutcome

ESCALATE_TOOL: Final[str] = "escalate_to_human"
# Transient tool failures (timeouts, unavailable backends) in one turn before the agent escalates itself.
TOOL_FAILURES_BEFORE_ESCALATION: Final[int] = 2
_TRANSIENT_TOOL_ERRORS: Final[frozenset[str]] = frozenset({"timeout", "unavailable", "backend_unavailable"})
_METRIC_ERROR_CODES: Final[frozenset[str]] = frozenset(
    {"invalid_arguments", "unknown_tool", "timeout", "rate_limited"}
)


def _json_mapping(text: str) -> Mapping[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, Mapping) else None


def _error_code(text: str) -> str:
    data = _json_mapping(text)
    error = data.get("error") if data is not None else None
    return str(error.get("code", "")) if isinstance(error, Mapping) else ""


def parse_ticket_id(content_json: str) -> str:
    """The ticket id in an escalate_to_human result (`{"ticket_id": ...}` or `{"ticket": {...}}`)."""
    data = _json_mapping(content_json)
    if data is None:
        return ""
    ticket = data.get("ticket")
    if isinstance(ticket, Mapping) and ticket.get("ticket_id"):
        return str(ticket["ticket_id"])
    return str(data.get("ticket_id") or "")


def _priority_of(raw: Any) -> str:
    text = str(raw or "").lower().removeprefix("priority_")
    return text if text in {"low", "medium", "high"} else ""


def escalation_priority(call: ToolCallRecord) -> str:
    """low | medium | high from the call's result (else its arguments); "" when neither says."""
    for text in (call.result_json, call.arguments_json):
        data = _json_mapping(text)
        if data is None:
            continue
        ticket = data.get("ticket")
        nested = ticket.get("priority") if isinstance(ticket, Mapping) else None
        priority = _priority_of(nested) or _priority_of(data.get("priority"))
        if priority:
            return priority
    return ""


def metric_outcome(outcome: ToolOutcome) -> str:
    """ok | invalid_arguments | unknown_tool | timeout | rate_limited | error (the metric's label values)."""
    if not outcome.is_error:
        return "ok"
    code = _error_code(outcome.content_json)
    return code if code in _METRIC_ERROR_CODES else "error"


def tools_kept_failing(calls: Iterable[ToolCallRecord]) -> bool:
    """True after TOOL_FAILURES_BEFORE_ESCALATION transient failures (timeouts, unavailable backends)."""
    failures = sum(
        1 for call in calls if call.is_error and _error_code(call.result_json) in _TRANSIENT_TOOL_ERRORS
    )
    return failures >= TOOL_FAILURES_BEFORE_ESCALATION
