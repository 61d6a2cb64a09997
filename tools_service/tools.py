"""The model-facing tools: ExecuteTool's dispatch over the declared tools (tool_catalog.py). No gRPC here.

Read tools run at once (built-in order lookup and escalation, or an HTTP endpoint). Write tools are checked now
(arguments, ownership, the order's rules) and only proposed: a PENDING action of the action desk (actions.py),
run by `run_write` once the customer confirmed.

Every tool-level failure (unknown tool, malformed or invalid arguments, missing identity, not found, not allowed,
limits, timeouts, backend failures) becomes a ToolFailure the model can read; only a bad request envelope (no tool
name, no conversation id) raises InvalidArgumentError for the servicer to turn into a gRPC status.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from tools_service import order_rules
from tools_service.actions import ActionDesk, Outcome
from tools_service.adapters.sqlite_actions import StoredAction
from tools_service.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    ConflictError,
    InvalidArgumentError,
    NotAllowedError,
    NotFoundError,
    RateLimitedError,
    ToolsError,
    UnauthenticatedError,
    WriteOutcomeUnknownError,
    WriteRefusedError,
)
from tools_service.http_tool import HttpTools
from tools_service.limits import CallLimiter, canonical_arguments
from tools_service.orders import Order, OrderService, OrderWriter
from tools_service.text_checks import check_text
from tools_service.tickets import MAX_SUMMARY_LENGTH, TicketService, validate_escalation
from tools_service.tool_catalog import ToolSpec, load_tools, portable_pattern, portable_schema

__all__ = ["ToolFailure", "ToolResult", "ToolRunner", "ToolSpec", "portable_pattern", "portable_schema"]

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class ToolFailure:
    code: str  # unknown_tool | invalid_arguments | not_found | not_allowed | rate_limited | timeout
    #          | backend_unavailable | unauthenticated | conflict | internal
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
    action: StoredAction | None = None  # a write tool's proposal

    @property
    def content_json(self) -> str:
        return json.dumps(self.content, ensure_ascii=False, separators=(",", ":"))


def _schema_message(error: ValidationError, spec: ToolSpec) -> tuple[str, str]:
    """(field, message) without echoing the offending value back."""
    path = [str(part) for part in error.absolute_path]
    field = ".".join(path) or "arguments"
    schema = error.schema if isinstance(error.schema, dict) else {}
    prefix = f"{field}." if path else ""
    match error.validator:
        case "required":
            present = error.instance if isinstance(error.instance, dict) else {}
            missing = [name for name in schema.get("required", []) if name not in present]
            name = prefix + missing[0] if missing else field
            return name, f"{name} is required."
        case "additionalProperties":
            allowed = ", ".join(schema.get("properties", {}))
            owner = field if path else spec.name
            return field, f"unexpected argument; {owner} accepts only: {allowed}."
        case "pattern":
            example = " (for example ORD-12345)" if path and path[-1] == "order_id" else ""
            return field, f"{field} must match {schema.get('pattern')}{example}."
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
        case NotAllowedError():
            return ToolFailure("not_allowed", error.message, retryable=False)
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
        self,
        orders: OrderService,
        tickets: TicketService,
        limiter: CallLimiter,
        order_id_pattern: str,
        *,
        specs: tuple[ToolSpec, ...] | None = None,
        desk: ActionDesk | None = None,
        order_writer: OrderWriter | None = None,
        http_tools: HttpTools | None = None,
        return_window_days: int = order_rules.RETURN_WINDOW_DAYS,
        today: Callable[[], dt.date] = order_rules.utc_today,
    ) -> None:
        self._orders = orders
        self._tickets = tickets
        self._limiter = limiter
        declared = specs if specs is not None else load_tools(order_id_pattern=order_id_pattern)
        self.specs = {spec.name: spec for spec in declared}
        self._validators = {name: Draft202012Validator(spec.parameters) for name, spec in self.specs.items()}
        self._desk = desk
        self._writer = order_writer
        self._http = http_tools or HttpTools()
        self._return_window_days = return_window_days
        self._today = today

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
        principal_role: str = "service",
    ) -> ToolResult:
        """Runs one model tool call (a write tool: proposes it). Raises InvalidArgumentError only for a bad
        envelope."""
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
            if spec.changes_state:
                action = await self._propose(
                    spec, arguments, conversation_id, idempotency_key, customer_id, principal_role,
                    deadline_remaining,
                )  # fmt: skip
                assert self._desk is not None
                return ToolResult(tool_name, self._desk.pending_content(action), action=action)
            content = await self._read(
                spec, arguments, conversation_id, idempotency_key, customer_id, deadline_remaining
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

    def _bound(self, spec: ToolSpec, conversation_id: str, customer_id: str) -> dict[str, str]:
        bound: dict[str, str] = {}
        for name, source in spec.bind.items():
            if source == "principal":
                if not customer_id:
                    raise UnauthenticatedError("The customer is not identified, so this tool cannot be used.")
                bound[name] = customer_id
            else:
                bound[name] = conversation_id
        return bound

    async def _read(
        self,
        spec: ToolSpec,
        arguments: dict[str, Any],
        conversation_id: str,
        idempotency_key: str,
        customer_id: str,
        deadline_remaining: float | None,
    ) -> dict[str, Any]:
        if spec.http is not None:
            bound = self._bound(spec, conversation_id, customer_id)
            return await self._http.read(spec, arguments, bound)
        if spec.builtin == "orders.lookup":
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

    def _order_check(self, spec: ToolSpec, order: Order, arguments: dict[str, Any]) -> str:
        """Applies the order's rule for this write now (NotAllowedError / InvalidArgumentError); its summary."""
        match spec.builtin:
            case "orders.cancel":
                order_rules.check_cancel(order)
                return order_rules.cancel_summary(order)
            case "orders.start_return":
                order_rules.validate_reason(arguments)
                order_rules.check_return(order, self._today(), self._return_window_days)
                return order_rules.return_summary(order)
            case _:
                address = order_rules.validate_address(arguments.get("address"))
                order_rules.check_address_change(order)
                return order_rules.address_summary(order, address)

    async def _propose(
        self,
        spec: ToolSpec,
        arguments: dict[str, Any],
        conversation_id: str,
        idempotency_key: str,
        customer_id: str,
        principal_role: str,
        deadline_remaining: float | None,
    ) -> StoredAction:
        if not customer_id:
            raise UnauthenticatedError("The customer is not identified, so nothing can be changed.")
        if self._desk is None:
            raise BackendUnavailableError("Changes cannot be made right now.")
        if spec.builtin is not None:
            if spec.builtin == "orders.change_address":
                order_rules.validate_address(arguments.get("address"))  # the field error before any lookup
            order = await self._orders.lookup(customer_id, arguments["order_id"], deadline_remaining)
            summary = self._order_check(spec, order, arguments)
        else:
            assert spec.summary is not None
            summary = spec.summary.format_map({name: str(value) for name, value in arguments.items()})
        return await self._desk.propose(
            customer_id=customer_id,
            principal_role=principal_role,
            conversation_id=conversation_id,
            tool_name=spec.name,
            arguments=arguments,
            summary=summary,
            idempotency_key=idempotency_key,
        )

    async def run_write(self, action: StoredAction, deadline_remaining: float | None) -> Outcome:
        """Runs a confirmed action's write once: the rule is checked again, then the backend acts (it has the
        last word). Never raises for an outcome: refused → not_executed, unanswered → unknown."""
        spec = self.specs.get(action.tool_name)
        if spec is None or not spec.changes_state:
            return Outcome("not_executed", note="This change is no longer offered; nothing changed.")
        try:
            if spec.http is not None:
                bound = self._bound(spec, action.conversation_id, action.customer_id)
                result = await self._http.write(spec, action.arguments, bound, action.action_id)
            else:
                result = await self._run_order_write(spec, action, deadline_remaining)
        except (NotAllowedError, NotFoundError, WriteRefusedError, InvalidArgumentError) as error:
            return Outcome("not_executed", note=error.message)
        except (BackendTimeoutError, BackendUnavailableError):
            # Raised by the pre-check read, before anything was sent.
            return Outcome(
                "not_executed", note="The order system did not answer; nothing changed. Try again."
            )
        except WriteOutcomeUnknownError as error:
            return Outcome("unknown", note=error.message)
        return Outcome("executed", result=result)

    async def _run_order_write(
        self, spec: ToolSpec, action: StoredAction, deadline_remaining: float | None
    ) -> dict[str, Any]:
        if self._writer is None:
            raise WriteRefusedError("The order system cannot change orders; nothing changed.")
        arguments, customer_id, action_id = action.arguments, action.customer_id, action.action_id
        order_id = arguments["order_id"]
        order = await self._orders.lookup(customer_id, order_id, deadline_remaining)
        self._order_check(spec, order, arguments)
        match spec.builtin:
            case "orders.cancel":
                expected = order_rules.cancel_result(order)
                done = await self._writer.cancel_order(order_id, customer_id, action_id)
            case "orders.start_return":
                expected = order_rules.return_result(order_id, "")
                reason = order_rules.validate_reason(arguments)
                done = await self._writer.start_return(order_id, customer_id, reason, action_id)
            case _:
                address = order_rules.validate_address(arguments["address"])
                expected = order_rules.address_result(order_id, address)
                done = await self._writer.change_address(
                    order_id, customer_id, address.to_json_obj(), action_id
                )
        return {**expected, **done}

    def lookup_limit(self, conversation_id: str, customer_id: str, order_id: str) -> None:
        """Counts a typed LookupOrderStatus call against the same limits as the tool."""
        self._limiter.acquire(
            conversation_id, customer_id, "lookup_order_status", canonical_arguments({"order_id": order_id})
        )

    async def close(self) -> None:
        await self._http.close()
