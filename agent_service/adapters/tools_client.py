"""ToolsService client: tool definitions (cached), tool execution, escalation and the hand-off tickets.

Every call carries a deadline and, when the caller named one, the customer id as `x-customer-id` metadata.
`execute` never raises for a tool failure: a deadline or an unavailable backend becomes the structured
error result the model is given (`{"error": {"code": "timeout" | "unavailable", ...}}`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc

from agent_service.domain import Source
from service_kit.metadata import CUSTOMER_ID_KEY
from support.v1 import tools_pb2, tools_pb2_grpc, types_pb2

logger = logging.getLogger(__name__)

TOOLS_CACHE_SECONDS = 60.0
PRIORITY_TO_PROTO = {
    "low": types_pb2.PRIORITY_LOW,
    "medium": types_pb2.PRIORITY_MEDIUM,
    "high": types_pb2.PRIORITY_HIGH,
}
PRIORITY_FROM_PROTO = {value: key for key, value in PRIORITY_TO_PROTO.items()}
_TICKET_STATUS = {
    tools_pb2.TICKET_STATUS_OPEN: "open",
    tools_pb2.TICKET_STATUS_ASSIGNED: "assigned",
    tools_pb2.TICKET_STATUS_RESOLVED: "resolved",
}


def reason_to_proto(reason_code: str) -> types_pb2.EscalationReason:
    try:
        return cast(
            types_pb2.EscalationReason,
            types_pb2.EscalationReason.Value(f"ESCALATION_REASON_{reason_code.upper()}"),
        )
    except ValueError:
        return types_pb2.ESCALATION_REASON_UNSPECIFIED


class ToolsUnavailableError(Exception):
    """The tools service could not be reached or refused the call (details in the message)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    @property
    def refused_input(self) -> bool:
        """The service rejected the request's content (INVALID_ARGUMENT), rather than being unavailable."""
        return bool(self.code == grpc.StatusCode.INVALID_ARGUMENT)


@dataclass(frozen=True)
class ToolOutcome:
    content_json: str
    is_error: bool


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


def _metadata(customer_id: str) -> tuple[tuple[str, str], ...]:
    return ((CUSTOMER_ID_KEY, customer_id),) if customer_id else ()


def error_result(code: str, message: str, retryable: bool) -> str:
    return json.dumps({"error": {"code": code, "message": message, "retryable": retryable}})


def _ticket_view(ticket: tools_pb2.Ticket) -> TicketView:
    return TicketView(
        ticket_id=ticket.ticket_id,
        status=_TICKET_STATUS.get(ticket.status, "open"),
        priority=PRIORITY_FROM_PROTO.get(ticket.priority, "medium"),
        reason_code=types_pb2.EscalationReason.Name(ticket.reason_code)
        .removeprefix("ESCALATION_REASON_")
        .lower(),
        assignee=ticket.assignee,
        resolution_note=ticket.resolution_note,
        estimated_wait=ticket.estimated_wait,
        human_replies=tuple(
            (message.author_name, message.text)
            for message in ticket.messages
            if message.author == tools_pb2.MESSAGE_AUTHOR_HUMAN_AGENT
        ),
        update_time=ticket.update_time.seconds + ticket.update_time.nanos / 1e9,
    )


class ToolsClient:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        timeout_seconds: float = 10.0,
        cache_seconds: float = TOOLS_CACHE_SECONDS,
    ) -> None:
        self._stub = tools_pb2_grpc.ToolsServiceStub(channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout_seconds
        self._cache_seconds = cache_seconds
        self._tools: tuple[dict[str, Any], ...] = ()
        self._fetched_at = float("-inf")

    async def list_tools(self) -> tuple[dict[str, Any], ...]:
        """The OpenAI tool objects from ListTools, cached; a stale copy (or none) when the service is down."""
        if time.monotonic() - self._fetched_at < self._cache_seconds and self._tools:
            return self._tools
        try:
            response = await self._stub.ListTools(tools_pb2.ListToolsRequest(), timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            logger.warning(
                "ListTools failed; using cached definitions",
                extra={"grpc_code": error.code().name, "cached_tools": len(self._tools)},
            )
            return self._tools
        tools = []
        for definition in response.tools:
            try:
                tool = json.loads(definition.openai_tool_json)
            except ValueError:
                logger.error("tool definition is not JSON; skipped", extra={"tool": definition.name})
                continue
            if isinstance(tool, dict):
                tools.append(tool)
        self._tools = tuple(tools)
        self._fetched_at = time.monotonic()
        return self._tools

    async def execute(
        self,
        name: str,
        arguments_json: str,
        *,
        conversation_id: str,
        idempotency_key: str,
        customer_id: str,
    ) -> ToolOutcome:
        request = tools_pb2.ExecuteToolRequest(
            tool_name=name,
            arguments_json=arguments_json,
            conversation_id=conversation_id,
            idempotency_key=idempotency_key,
        )
        try:
            response = await self._stub.ExecuteTool(
                request, timeout=self._timeout, metadata=_metadata(customer_id)
            )
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                content = error_result("timeout", "The tool did not answer in time.", retryable=True)
            elif code == grpc.StatusCode.UNAVAILABLE:
                content = error_result("unavailable", "The tool service is unavailable right now.", True)
            elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                content = error_result("rate_limited", "Too many tool calls; try again later.", True)
            else:
                content = error_result("internal", "The tool failed.", retryable=False)
            logger.warning("tool call failed", extra={"tool": name, "grpc_code": code.name})
            return ToolOutcome(content, is_error=True)
        content = response.content_json or "{}"
        return ToolOutcome(content, is_error=response.HasField("error"))

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
    ) -> TicketView:
        request = tools_pb2.EscalateToHumanRequest(
            conversation_id=conversation_id,
            priority=PRIORITY_TO_PROTO.get(priority, types_pb2.PRIORITY_MEDIUM),
            reason_code=reason_to_proto(reason_code),
            reason=reason[:500],
            summary=summary[:4000],
            tools_tried=list(dict.fromkeys(tools_tried)),
            sources=[
                types_pb2.SourceRef(
                    doc_id=source.doc_id,
                    title=source.title,
                    chunk_id=source.chunk_id,
                    distance=source.distance,
                )
                for source in sources
            ],
            idempotency_key=idempotency_key,
        )
        try:
            response = await self._stub.EscalateToHuman(
                request, timeout=self._timeout, metadata=_metadata(customer_id)
            )
        except grpc.aio.AioRpcError as error:
            raise ToolsUnavailableError(error.code(), error.details() or "") from error
        return _ticket_view(response.ticket)

    async def list_tickets(self, conversation_id: str, customer_id: str) -> tuple[TicketView, ...]:
        try:
            response = await self._stub.ListTickets(
                tools_pb2.ListTicketsRequest(conversation_id=conversation_id, open_only=False),
                timeout=self._timeout,
                metadata=_metadata(customer_id),
            )
        except grpc.aio.AioRpcError as error:
            raise ToolsUnavailableError(error.code(), error.details() or "") from error
        return tuple(_ticket_view(ticket) for ticket in response.tickets)

    async def append_customer_message(self, ticket_id: str, text: str, customer_id: str) -> None:
        try:
            await self._stub.AppendTicketMessage(
                tools_pb2.AppendTicketMessageRequest(
                    ticket_id=ticket_id, text=text, author=tools_pb2.MESSAGE_AUTHOR_CUSTOMER
                ),
                timeout=self._timeout,
                metadata=_metadata(customer_id),
            )
        except grpc.aio.AioRpcError as error:
            raise ToolsUnavailableError(error.code(), error.details() or "") from error


def parse_ticket_id(content_json: str) -> str:
    """The ticket id in an escalate_to_human result (`{"ticket_id": ...}` or `{"ticket": {...}}`)."""
    try:
        data = json.loads(content_json)
    except ValueError:
        return ""
    if not isinstance(data, Mapping):
        return ""
    ticket = data.get("ticket")
    if isinstance(ticket, Mapping) and ticket.get("ticket_id"):
        return str(ticket["ticket_id"])
    return str(data.get("ticket_id") or "")
