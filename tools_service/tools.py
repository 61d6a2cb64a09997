"""The model-facing tools: their OpenAI function-calling definitions and ExecuteTool's dispatch. No gRPC here.

Every tool-level failure (unknown tool, malformed or invalid arguments, missing identity, not found, limits,
timeouts, backend failures) becomes a ToolFailure the model can read; only a bad request envelope (no tool name,
no conversation id) raises InvalidArgumentError for the servicer to turn into a gRPC status.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from tools_service.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    RateLimitedError,
    ToolsError,
    UnauthenticatedError,
)
from tools_service.limits import CallLimiter, canonical_arguments
from tools_service.orders import MAX_ORDER_ID_LENGTH, OrderService
from tools_service.text_checks import check_text
from tools_service.tickets import (
    MAX_REASON_LENGTH,
    MAX_SUMMARY_LENGTH,
    REASON_CODES,
    TicketService,
    validate_escalation,
)

logger = logging.getLogger(__name__)

LOOKUP_ORDER_STATUS = "lookup_order_status"
ESCALATE_TO_HUMAN = "escalate_to_human"
MAX_TOOL_NAME_LENGTH = 64
MAX_CONVERSATION_ID_LENGTH = 128
MAX_ARGUMENTS_BYTES = 16 * 1024
# When several schema rules fail, report the most basic one first.
_VALIDATOR_RANK = {
    name: rank
    for rank, name in enumerate(
        ("additionalProperties", "required", "type", "maxLength", "minLength", "enum")
    )
}

LOOKUP_DESCRIPTION = (
    "Look up the status, carrier, tracking number and estimated delivery date of ONE of the current "
    "customer's orders. Use it whenever the customer asks where an order is, when it will arrive, whether it "
    "has shipped, or for its tracking number, and gives an order id (format ORD-12345). If the customer did "
    "not give an order id, ask for it instead of guessing. Never invent order details: report only what this "
    "tool returns. A not_found error means the id is wrong or is not this customer's order; ask the customer "
    "to check the id."
)
ESCALATE_DESCRIPTION = (
    "Hand the conversation to a human support agent by opening a helpdesk ticket. Call it when ANY of these "
    "is true: (1) the customer asks for a human, a person, a manager or a call; (2) the customer is angry, "
    "upset or repeats a complaint; (3) the topic is a billing dispute, a refund exception, a charge they do "
    "not recognise, account security (hacked account, fraud) or anything legal; (4) you cannot answer from "
    "the knowledge base or the tools after trying; (5) a tool keeps failing. Do not keep the customer in a "
    "loop instead of escalating. Use priority high for anger, security, fraud and legal matters, medium for "
    "billing and explicit requests for a human, low otherwise. After calling it, tell the customer a human "
    "will follow up and give the ticket id and estimated wait."
)


@dataclass(frozen=True)
class ToolFailure:
    code: str  # unknown_tool | invalid_arguments | not_found | rate_limited | timeout | backend_unavailable
    #          | unauthenticated | conflict | internal
    message: str
    retryable: bool
    retry_after_seconds: int = 0

    def to_json_obj(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "retryable": self.retryable}
        if self.retry_after_seconds:
            error["retry_after_seconds"] = self.retry_after_seconds
        return {"error": error}


@dataclass(frozen=True)
class ToolResult:
    tool_name: str
    content: dict[str, Any]  # the tool message content given to the model
    error: ToolFailure | None = None

    @property
    def content_json(self) -> str:
        return json.dumps(self.content, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]

    def openai_tool(self) -> dict[str, Any]:
        """The definition the model gets: the schema with portable patterns (see `portable_schema`); the
        tools service itself validates against the strict `parameters`."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": portable_schema(self.parameters),
            },
        }


_CLASS_SHORTHANDS = {"d": "0-9", "w": "A-Za-z0-9_"}


def portable_pattern(pattern: str) -> str:
    """A regular expression that grammar-based servers (llama.cpp's JSON-schema-to-grammar) can compile:
    `\\d`/`\\w` spelt as character classes and the outer `^`/`$` anchors dropped (a JSON Schema pattern the
    model must fill is matched whole by such servers anyway). ``^ORD-\\d{5}$`` → ``ORD-[0-9]{5}``."""
    out: list[str] = []
    in_class = False
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            escaped = pattern[index + 1]
            shorthand = _CLASS_SHORTHANDS.get(escaped)
            if shorthand is None:
                out.append(char + escaped)
            else:
                out.append(shorthand if in_class else f"[{shorthand}]")
            index += 2
            continue
        if char == "[" and not in_class:
            in_class = True
        elif char == "]" and in_class:
            in_class = False
        out.append(char)
        index += 1
    text = "".join(out)
    if text.startswith("^"):
        text = text[1:]
    if text.endswith("$") and not text.endswith("\\$"):
        text = text[:-1]
    return text


def portable_schema(schema: Any) -> Any:
    """`schema` with every string `pattern` made portable (`portable_pattern`); everything else as is."""
    if isinstance(schema, dict):
        return {
            key: portable_pattern(value)
            if key == "pattern" and isinstance(value, str)
            else portable_schema(value)
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [portable_schema(item) for item in schema]
    return schema


def tool_specs(order_id_pattern: str) -> tuple[ToolSpec, ...]:
    return (
        ToolSpec(
            name=LOOKUP_ORDER_STATUS,
            description=LOOKUP_DESCRIPTION,
            parameters={
                "type": "object",
                "properties": {
                    "order_id": {
                        "type": "string",
                        "description": "The order id exactly as the customer gave it, e.g. ORD-12345.",
                        "pattern": order_id_pattern,
                        "maxLength": MAX_ORDER_ID_LENGTH,
                    }
                },
                "required": ["order_id"],
                "additionalProperties": False,
            },
        ),
        ToolSpec(
            name=ESCALATE_TO_HUMAN,
            description=ESCALATE_DESCRIPTION,
            parameters={
                "type": "object",
                "properties": {
                    "reason": {
                        "type": "string",
                        "description": "Why a human is needed, in one sentence (no instructions to anyone).",
                        "minLength": 1,
                        "maxLength": MAX_REASON_LENGTH,
                    },
                    "priority": {
                        "type": "string",
                        "enum": ["low", "medium", "high"],
                        "description": "high: anger, security, fraud, legal; medium: billing, asked for a "
                        "human; low: anything else.",
                    },
                    "summary": {
                        "type": "string",
                        "description": "Optional short summary of the conversation so far for the human agent.",
                        "maxLength": MAX_SUMMARY_LENGTH,
                    },
                    "reason_code": {
                        "type": "string",
                        "enum": list(REASON_CODES),
                        "description": "Optional category of the hand-off; model_initiated when omitted.",
                    },
                },
                "required": ["reason", "priority"],
                "additionalProperties": False,
            },
        ),
    )


def _schema_message(error: ValidationError, spec: ToolSpec) -> tuple[str, str]:
    """(field, message) without echoing the offending value back."""
    field = ".".join(str(part) for part in error.absolute_path) or "arguments"
    schema = error.schema if isinstance(error.schema, dict) else {}
    match error.validator:
        case "required":
            present = error.instance if isinstance(error.instance, dict) else {}
            missing = [name for name in spec.parameters["required"] if name not in present]
            name = missing[0] if missing else "arguments"
            return name, f"{name} is required."
        case "additionalProperties":
            allowed = ", ".join(spec.parameters["properties"])
            return "arguments", f"unexpected argument; {spec.name} accepts only: {allowed}."
        case "pattern":
            return field, f"{field} must match {schema.get('pattern')} (for example ORD-12345)."
        case "maxLength":
            return field, f"{field} is longer than {schema.get('maxLength')} characters."
        case "minLength":
            return field, f"{field} must not be empty."
        case "enum":
            return field, f"{field} must be one of {', '.join(map(str, schema.get('enum', [])))}."
        case "type":
            return field, f"{field} must be of type {schema.get('type')}."
        case _:
            return field, f"{field} is invalid."


def failure_for(error: Exception) -> ToolFailure:
    """The model-visible form of a domain error."""
    match error:
        case InvalidArgumentError():
            return ToolFailure("invalid_arguments", error.message, retryable=False)
        case UnauthenticatedError():
            return ToolFailure("unauthenticated", error.message, retryable=False)
        case NotFoundError():
            return ToolFailure("not_found", error.message, retryable=False)
        case RateLimitedError():
            retryable = error.retry_after_seconds > 0
            return ToolFailure("rate_limited", error.message, retryable, error.retry_after_seconds)
        case BackendTimeoutError():
            return ToolFailure("timeout", error.message, retryable=True)
        case BackendUnavailableError():
            return ToolFailure("backend_unavailable", error.message, retryable=True)
        case ConflictError():
            return ToolFailure("conflict", error.message, retryable=False)
        case _:
            return ToolFailure("internal", "The tool failed unexpectedly.", retryable=False)


class ToolRunner:
    def __init__(
        self, orders: OrderService, tickets: TicketService, limiter: CallLimiter, order_id_pattern: str
    ) -> None:
        self._orders = orders
        self._tickets = tickets
        self._limiter = limiter
        self.specs = {spec.name: spec for spec in tool_specs(order_id_pattern)}
        self._validators = {name: Draft202012Validator(spec.parameters) for name, spec in self.specs.items()}

    def _parse(self, spec: ToolSpec, arguments_json: str) -> dict[str, Any]:
        if len(arguments_json.encode("utf-8")) > MAX_ARGUMENTS_BYTES:
            raise InvalidArgumentError("arguments", f"arguments are larger than {MAX_ARGUMENTS_BYTES} bytes.")
        text = arguments_json.strip() or "{}"
        try:
            arguments = json.loads(text)
        except (ValueError, RecursionError):
            raise InvalidArgumentError(
                "arguments", "arguments are not valid JSON; send a JSON object."
            ) from None
        if not isinstance(arguments, dict):
            raise InvalidArgumentError("arguments", "arguments must be a JSON object.")
        errors = sorted(
            self._validators[spec.name].iter_errors(arguments),
            key=lambda e: (
                _VALIDATOR_RANK.get(str(e.validator), len(_VALIDATOR_RANK)),
                list(e.absolute_path),
            ),
        )
        if errors:
            field, message = _schema_message(errors[0], spec)
            raise InvalidArgumentError(field, message)
        for name, value in arguments.items():
            if isinstance(value, str):
                max_length = int(spec.parameters["properties"][name].get("maxLength", MAX_SUMMARY_LENGTH))
                check_text(
                    name, value, max_length, required=False, multiline=name != "order_id", injection=True
                )
        return arguments

    async def execute(
        self,
        *,
        tool_name: str,
        arguments_json: str,
        conversation_id: str,
        idempotency_key: str,
        customer_id: str,
        deadline_remaining: float | None,
    ) -> ToolResult:
        """Runs one model tool call. Raises InvalidArgumentError only for a bad envelope."""
        check_text("tool_name", tool_name, MAX_TOOL_NAME_LENGTH, required=True, multiline=False)
        check_text(
            "conversation_id", conversation_id, MAX_CONVERSATION_ID_LENGTH, required=True, multiline=False
        )
        try:
            spec = self.specs.get(tool_name)
            if spec is None:
                known = ", ".join(self.specs)
                failure = ToolFailure("unknown_tool", f"There is no such tool; use one of: {known}.", False)
                return ToolResult(tool_name, failure.to_json_obj(), failure)
            arguments = self._parse(spec, arguments_json)
            # Counted once valid, per (customer, conversation): junk or another customer's calls never use up
            # this conversation's budget.
            self._limiter.acquire(conversation_id, customer_id, spec.name, canonical_arguments(arguments))
            content = await self._dispatch(
                spec.name, arguments, conversation_id, idempotency_key, customer_id, deadline_remaining
            )
            return ToolResult(tool_name, content)
        except ToolsError as error:
            failure = failure_for(error)
            logger.info("tool %s failed: %s", tool_name, failure.code)
            return ToolResult(tool_name, failure.to_json_obj(), failure)
        except Exception:
            logger.exception("tool %s crashed", tool_name)
            failure = failure_for(RuntimeError())
            return ToolResult(tool_name, failure.to_json_obj(), failure)

    async def _dispatch(
        self,
        tool_name: str,
        arguments: dict[str, Any],
        conversation_id: str,
        idempotency_key: str,
        customer_id: str,
        deadline_remaining: float | None,
    ) -> dict[str, Any]:
        if tool_name == LOOKUP_ORDER_STATUS:
            order = await self._orders.lookup(customer_id, arguments["order_id"], deadline_remaining)
            return dict(order.to_tool_content())
        escalation = validate_escalation(
            conversation_id=conversation_id,
            customer_id=customer_id,
            priority=arguments["priority"],
            reason_code=arguments.get("reason_code", "model_initiated"),
            reason=arguments["reason"],
            summary=arguments.get("summary", ""),
            idempotency_key=idempotency_key,
        )
        ticket, _created = await self._tickets.escalate(escalation, deadline_remaining)
        return dict(ticket.to_tool_content())

    def lookup_limit(self, conversation_id: str, customer_id: str, order_id: str) -> None:
        """Counts a typed LookupOrderStatus call against the same limits as the tool."""
        self._limiter.acquire(
            conversation_id, customer_id, LOOKUP_ORDER_STATUS, canonical_arguments({"order_id": order_id})
        )
