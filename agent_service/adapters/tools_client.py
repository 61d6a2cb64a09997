"""ToolsService client: tool definitions (cached), tool execution, write actions (run, drop, list),
escalation and the hand-off tickets.

Every call carries a deadline and, when the caller named one, the customer id as `x-customer-id` metadata.
`execute` never raises for a tool failure: a deadline or an unavailable backend becomes the structured
error result the model is given (`{"error": {"code": "timeout" | "unavailable", ...}}`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import grpc

from agent_service.domain import ActionInfo, Source
from agent_service.turn_contract import (
    ActionRun,
    TicketView,
    ToolOutcome,
    ToolsUnavailableError,
    tool_error_json,
)
from service_kit.codes import ACTION_STATE, ESCALATION_REASON, PRIORITY, TICKET_STATUS
from service_kit.metadata import CUSTOMER_ID_KEY
from support.v1 import tools_pb2, tools_pb2_grpc, types_pb2

logger = logging.getLogger(__name__)

TOOLS_CACHE_SECONDS = 60.0


def _metadata(customer_id: str) -> tuple[tuple[str, str], ...]:
    return ((CUSTOMER_ID_KEY, customer_id),) if customer_id else ()


def _unavailable(error: grpc.aio.AioRpcError) -> ToolsUnavailableError:
    code = error.code()
    return ToolsUnavailableError(
        code.name, error.details() or "", refused_input=code == grpc.StatusCode.INVALID_ARGUMENT
    )


def _ticket_view(ticket: tools_pb2.Ticket) -> TicketView:
    return TicketView(
        ticket_id=ticket.ticket_id,
        status=TICKET_STATUS.from_proto(ticket.status, "open"),
        priority=PRIORITY.from_proto(ticket.priority, "medium"),
        reason_code=ESCALATION_REASON.from_proto(ticket.reason_code, "unspecified"),
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


def _seconds(stamp: Any) -> float:
    return float(stamp.seconds + stamp.nanos / 1e9)


def action_info(action: types_pb2.Action) -> ActionInfo:
    """support.v1.Action as the domain's `ActionInfo` (lower-case state codes)."""
    return ActionInfo(
        action_id=action.action_id,
        conversation_id=action.conversation_id,
        tool_name=action.tool_name,
        arguments_json=action.arguments_json or "{}",
        summary=action.summary,
        state=ACTION_STATE.from_proto(action.state, "unknown"),
        create_time=_seconds(action.create_time),
        expire_time=_seconds(action.expire_time),
        decide_time=_seconds(action.decide_time),
        confirmation=action.confirmation,
        result_json=action.result_json,
        note=action.note,
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
                content = tool_error_json("timeout", "The tool did not answer in time.", retryable=True)
            elif code == grpc.StatusCode.UNAVAILABLE:
                content = tool_error_json("unavailable", "The tool service is unavailable right now.", True)
            elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                content = tool_error_json("rate_limited", "Too many tool calls; try again later.", True)
            else:
                content = tool_error_json("internal", "The tool failed.", retryable=False)
            logger.warning("tool call failed", extra={"tool": name, "grpc_code": code.name})
            return ToolOutcome(content, is_error=True)
        content = response.content_json or "{}"
        pending = action_info(response.pending_action) if response.HasField("pending_action") else None
        return ToolOutcome(content, is_error=response.HasField("error"), pending_action=pending)

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
            priority=PRIORITY.to_proto(priority, types_pb2.PRIORITY_MEDIUM),
            reason_code=ESCALATION_REASON.to_proto(reason_code),
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
            raise _unavailable(error) from error
        return _ticket_view(response.ticket)

    async def list_tickets(self, conversation_id: str, customer_id: str) -> tuple[TicketView, ...]:
        try:
            response = await self._stub.ListTickets(
                tools_pb2.ListTicketsRequest(conversation_id=conversation_id, open_only=False),
                timeout=self._timeout,
                metadata=_metadata(customer_id),
            )
        except grpc.aio.AioRpcError as error:
            raise _unavailable(error) from error
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
            raise _unavailable(error) from error

    async def run_action(
        self, action_id: str, *, conversation_id: str, confirmation: str, customer_id: str
    ) -> ActionRun:
        try:
            response = await self._stub.RunAction(
                tools_pb2.RunActionRequest(
                    action_id=action_id, conversation_id=conversation_id, confirmation=confirmation
                ),
                timeout=self._timeout,
                metadata=_metadata(customer_id),
            )
        except grpc.aio.AioRpcError as error:
            raise _unavailable(error) from error
        return ActionRun(action_info(response.action), response.ran_now)

    async def drop_action(
        self, action_id: str, *, conversation_id: str, note: str, confirmation: str, customer_id: str
    ) -> ActionInfo:
        try:
            response = await self._stub.DropAction(
                tools_pb2.DropActionRequest(
                    action_id=action_id,
                    conversation_id=conversation_id,
                    note=note,
                    confirmation=confirmation,
                ),
                timeout=self._timeout,
                metadata=_metadata(customer_id),
            )
        except grpc.aio.AioRpcError as error:
            raise _unavailable(error) from error
        return action_info(response.action)

    async def list_actions(self, conversation_id: str, customer_id: str) -> tuple[ActionInfo, ...]:
        try:
            response = await self._stub.ListActions(
                tools_pb2.ListActionsRequest(conversation_id=conversation_id),
                timeout=self._timeout,
                metadata=_metadata(customer_id),
            )
        except grpc.aio.AioRpcError as error:
            raise _unavailable(error) from error
        return tuple(action_info(action) for action in response.actions)
