"""support.v1.ToolsService: proto <-> domain mapping and error mapping, nothing else."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from service_kit.jsonlog import conversation_id_var, request_id_var
from service_kit.metadata import CUSTOMER_ID_KEY, REQUEST_ID_KEY, metadata_value
from support.v1 import tools_pb2, tools_pb2_grpc, types_pb2
from tools_service.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    ConflictError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ToolsError,
    UnauthenticatedError,
)
from tools_service.orders import OrderService
from tools_service.tickets import (
    AUTHORS,
    PRIORITIES,
    REASON_CODES,
    Source,
    Ticket,
    TicketService,
    validate_escalation,
)
from tools_service.tools import ToolFailure, ToolRunner

logger = logging.getLogger(__name__)

T = TypeVar("T")

_TOOL_ERROR_CODES = {
    "unknown_tool": tools_pb2.TOOL_ERROR_CODE_UNKNOWN_TOOL,
    "invalid_arguments": tools_pb2.TOOL_ERROR_CODE_INVALID_ARGUMENTS,
    "not_found": tools_pb2.TOOL_ERROR_CODE_NOT_FOUND,
    "rate_limited": tools_pb2.TOOL_ERROR_CODE_RATE_LIMITED,
    "timeout": tools_pb2.TOOL_ERROR_CODE_TIMEOUT,
    "backend_unavailable": tools_pb2.TOOL_ERROR_CODE_BACKEND_UNAVAILABLE,
    "unauthenticated": tools_pb2.TOOL_ERROR_CODE_UNAUTHENTICATED,
    "conflict": tools_pb2.TOOL_ERROR_CODE_CONFLICT,
    "internal": tools_pb2.TOOL_ERROR_CODE_INTERNAL,
}
_CODES: tuple[tuple[type[ToolsError], int], ...] = (
    (InvalidArgumentError, code_pb2.INVALID_ARGUMENT),
    (UnauthenticatedError, code_pb2.UNAUTHENTICATED),
    (NotFoundError, code_pb2.NOT_FOUND),
    (PermissionDeniedError, code_pb2.PERMISSION_DENIED),
    (RateLimitedError, code_pb2.RESOURCE_EXHAUSTED),
    (ConflictError, code_pb2.ALREADY_EXISTS),
    (FailedPreconditionError, code_pb2.FAILED_PRECONDITION),
    (BackendTimeoutError, code_pb2.DEADLINE_EXCEEDED),
    (BackendUnavailableError, code_pb2.UNAVAILABLE),
)
MAX_CUSTOMER_ID_LENGTH = 128
# time_remaining() without a client deadline is effectively infinite.
_NO_DEADLINE_SECONDS = 10**6


# Proto enum number = position + 1 in the domain tuples (0 is always *_UNSPECIFIED).
def _enum_to_domain(value: int, names: tuple[str, ...]) -> str:
    return names[value - 1] if 1 <= value <= len(names) else ""


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def ticket_to_proto(ticket: Ticket) -> tools_pb2.Ticket:
    return tools_pb2.Ticket(
        ticket_id=ticket.ticket_id,
        conversation_id=ticket.conversation_id,
        customer_id=ticket.customer_id,
        priority=f"PRIORITY_{ticket.priority.upper()}",
        reason_code=f"ESCALATION_REASON_{ticket.reason_code.upper()}",
        reason=ticket.reason,
        summary=ticket.summary,
        tools_tried=list(ticket.tools_tried),
        sources=[
            types_pb2.SourceRef(doc_id=s.doc_id, title=s.title, chunk_id=s.chunk_id, distance=s.distance)
            for s in ticket.sources
        ],
        status=f"TICKET_STATUS_{ticket.status.upper()}",
        assignee=ticket.assignee,
        resolution_note=ticket.resolution_note,
        messages=[
            tools_pb2.TicketMessage(
                author=f"MESSAGE_AUTHOR_{m.author.upper()}",
                text=m.text,
                create_time=_timestamp(m.create_time),
                author_name=m.author_name,
            )
            for m in ticket.messages
        ],
        create_time=_timestamp(ticket.create_time),
        update_time=_timestamp(ticket.update_time),
        estimated_wait=ticket.estimated_wait,
    )


def tool_error_to_proto(failure: ToolFailure) -> tools_pb2.ToolError:
    return tools_pb2.ToolError(
        code=_TOOL_ERROR_CODES.get(failure.code, tools_pb2.TOOL_ERROR_CODE_INTERNAL),
        message=failure.message,
        retryable=failure.retryable,
        retry_after_seconds=failure.retry_after_seconds,
    )


def _status_for(error: ToolsError) -> status_pb2.Status:
    code = next((code for kind, code in _CODES if isinstance(error, kind)), code_pb2.INTERNAL)
    status = status_pb2.Status(code=code, message=error.message)
    if isinstance(error, InvalidArgumentError):
        detail = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.message)
            ]
        )
        status.details.add().Pack(detail)
    elif isinstance(error, RateLimitedError):
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(subject=error.limit, description=error.message)
            ]
        )
        status.details.add().Pack(quota)
        if error.retry_after_seconds > 0:
            retry = error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(seconds=error.retry_after_seconds)
            )
            status.details.add().Pack(retry)
    return status


async def _abort(context: grpc.aio.ServicerContext[object, object], error: Exception) -> NoReturn:
    if isinstance(error, ToolsError):
        await context.abort_with_status(rpc_status.to_status(_status_for(error)))
    logger.exception("unexpected error in ToolsService", exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")
    raise AssertionError("unreachable: abort raises")


def _deadline(context: grpc.aio.ServicerContext[object, object]) -> float | None:
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_SECONDS:
        return None
    return float(remaining)


def _customer(context: grpc.aio.ServicerContext[object, object]) -> str:
    """The caller-stated customer ("" when none): at most 128 printable characters."""
    value = metadata_value(context, CUSTOMER_ID_KEY).strip()
    if len(value) > MAX_CUSTOMER_ID_LENGTH or not value.isprintable():
        raise InvalidArgumentError(
            CUSTOMER_ID_KEY, f"{CUSTOMER_ID_KEY} must be at most 128 printable characters."
        )
    return value


class ToolsServicer(tools_pb2_grpc.ToolsServiceServicer):
    def __init__(self, runner: ToolRunner, orders: OrderService, tickets: TicketService) -> None:
        self._runner = runner
        self._orders = orders
        self._tickets = tickets

    async def _guard(
        self, context: grpc.aio.ServicerContext[object, object], call: Callable[[], Awaitable[T]]
    ) -> T:
        """Runs one RPC body: binds the request id for logging and maps every exception to a status."""
        request_id_var.set(metadata_value(context, REQUEST_ID_KEY)[:128])
        try:
            return await call()
        except Exception as error:
            await _abort(context, error)

    async def ListTools(  # noqa: N802
        self, request: tools_pb2.ListToolsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> tools_pb2.ListToolsResponse:
        return tools_pb2.ListToolsResponse(
            tools=[
                tools_pb2.ToolDefinition(
                    name=spec.name,
                    description=spec.description,
                    openai_tool_json=json.dumps(spec.openai_tool()),
                )
                for spec in self._runner.specs.values()
            ]
        )

    async def ExecuteTool(  # noqa: N802
        self, request: tools_pb2.ExecuteToolRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> tools_pb2.ExecuteToolResponse:
        conversation_id_var.set(request.conversation_id[:128])

        async def run() -> tools_pb2.ExecuteToolResponse:
            result = await self._runner.execute(
                tool_name=request.tool_name,
                arguments_json=request.arguments_json,
                conversation_id=request.conversation_id,
                idempotency_key=request.idempotency_key,
                customer_id=_customer(context),
                deadline_remaining=_deadline(context),
            )
            response = tools_pb2.ExecuteToolResponse(
                tool_name=result.tool_name, content_json=result.content_json
            )
            if result.error is not None:
                response.error.CopyFrom(tool_error_to_proto(result.error))
            return response

        return await self._guard(context, run)

    async def LookupOrderStatus(  # noqa: N802
        self, request: tools_pb2.LookupOrderStatusRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> tools_pb2.LookupOrderStatusResponse:
        conversation_id_var.set(request.conversation_id[:128])

        async def run() -> tools_pb2.LookupOrderStatusResponse:
            customer_id = _customer(context)
            self._orders.validate_order_id(request.order_id)
            self._runner.lookup_limit(request.conversation_id, customer_id, request.order_id)
            order = await self._orders.lookup(customer_id, request.order_id, _deadline(context))
            return tools_pb2.LookupOrderStatusResponse(
                order_id=order.order_id,
                status=f"ORDER_STATUS_{order.status.upper()}",
                tracking_number=order.tracking_number or "",
                carrier=order.carrier or "",
                eta=order.eta or "",
            )

        return await self._guard(context, run)

    async def EscalateToHuman(  # noqa: N802
        self, request: tools_pb2.EscalateToHumanRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> tools_pb2.EscalateToHumanResponse:
        conversation_id_var.set(request.conversation_id[:128])

        async def run() -> tools_pb2.EscalateToHumanResponse:
            reason_code = _enum_to_domain(request.reason_code, REASON_CODES)
            if not reason_code:
                raise InvalidArgumentError("reason_code", "reason_code is required.")
            escalation = validate_escalation(
                conversation_id=request.conversation_id,
                customer_id=_customer(context),
                priority=_enum_to_domain(request.priority, PRIORITIES),
                reason_code=reason_code,
                reason=request.reason,
                summary=request.summary,
                tools_tried=tuple(request.tools_tried),
                sources=tuple(
                    Source(doc_id=s.doc_id, title=s.title, chunk_id=s.chunk_id, distance=round(s.distance, 6))
                    for s in request.sources
                ),
                idempotency_key=request.idempotency_key,
            )
            ticket, created = await self._tickets.escalate(escalation, _deadline(context))
            if created:
                logger.info("ticket %s created (priority %s)", ticket.ticket_id, ticket.priority)
            return tools_pb2.EscalateToHumanResponse(ticket=ticket_to_proto(ticket), created=created)

        return await self._guard(context, run)

    async def GetTicket(  # noqa: N802
        self, request: tools_pb2.GetTicketRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> tools_pb2.GetTicketResponse:
        async def run() -> tools_pb2.GetTicketResponse:
            ticket = await self._tickets.get(_customer(context), request.ticket_id, _deadline(context))
            return tools_pb2.GetTicketResponse(ticket=ticket_to_proto(ticket))

        return await self._guard(context, run)

    async def ListTickets(  # noqa: N802
        self, request: tools_pb2.ListTicketsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> tools_pb2.ListTicketsResponse:
        async def run() -> tools_pb2.ListTicketsResponse:
            tickets = await self._tickets.list(
                _customer(context), request.conversation_id, request.open_only, _deadline(context)
            )
            return tools_pb2.ListTicketsResponse(tickets=[ticket_to_proto(t) for t in tickets])

        return await self._guard(context, run)

    async def ClaimTicket(  # noqa: N802
        self, request: tools_pb2.ClaimTicketRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> tools_pb2.ClaimTicketResponse:
        async def run() -> tools_pb2.ClaimTicketResponse:
            ticket = await self._tickets.claim(
                _customer(context), request.ticket_id, request.assignee, _deadline(context)
            )
            logger.info("ticket %s claimed", ticket.ticket_id)
            return tools_pb2.ClaimTicketResponse(ticket=ticket_to_proto(ticket))

        return await self._guard(context, run)

    async def ResolveTicket(  # noqa: N802
        self, request: tools_pb2.ResolveTicketRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> tools_pb2.ResolveTicketResponse:
        async def run() -> tools_pb2.ResolveTicketResponse:
            ticket = await self._tickets.resolve(
                _customer(context), request.ticket_id, request.resolution_note, _deadline(context)
            )
            logger.info("ticket %s resolved", ticket.ticket_id)
            return tools_pb2.ResolveTicketResponse(ticket=ticket_to_proto(ticket))

        return await self._guard(context, run)

    async def AppendTicketMessage(  # noqa: N802
        self, request: tools_pb2.AppendTicketMessageRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> tools_pb2.AppendTicketMessageResponse:
        async def run() -> tools_pb2.AppendTicketMessageResponse:
            ticket = await self._tickets.append(
                _customer(context),
                request.ticket_id,
                _enum_to_domain(request.author, AUTHORS),
                request.author_name,
                request.text,
                _deadline(context),
            )
            return tools_pb2.AppendTicketMessageResponse(ticket=ticket_to_proto(ticket))

        return await self._guard(context, run)
