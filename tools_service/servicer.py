"""support.v1.ToolsService: proto <-> domain mapping and error mapping, nothing else."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from service_kit import auth
from service_kit.codes import (
    ACTION_STATE,
    ESCALATION_REASON,
    MESSAGE_AUTHOR,
    ORDER_STATUS,
    PRIORITY,
    TICKET_STATUS,
    TOOL_ERROR_CODE,
)
from service_kit.error_guard import ErrorGuard, StatusRule, bad_request
from support.v1 import tools_pb2, tools_pb2_grpc, types_pb2
from tools_service.actions import ActionDesk
from tools_service.adapters.sqlite_actions import StoredAction
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
    Caller,
    Source,
    Ticket,
    TicketEvent,
    TicketFeed,
    TicketService,
    validate_conversation_event,
    validate_escalation,
)
from tools_service.tools import ToolFailure, ToolRunner
from tools_service.webhooks import Outbox

logger = logging.getLogger(__name__)

# time_remaining() without a client deadline is effectively infinite.
_NO_DEADLINE_SECONDS = 10**6


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def ticket_to_proto(ticket: Ticket) -> tools_pb2.Ticket:
    return tools_pb2.Ticket(
        ticket_id=ticket.ticket_id,
        conversation_id=ticket.conversation_id,
        customer_id=ticket.customer_id,
        priority=PRIORITY.to_proto(ticket.priority),
        reason_code=ESCALATION_REASON.to_proto(ticket.reason_code),
        reason=ticket.reason,
        summary=ticket.summary,
        tools_tried=list(ticket.tools_tried),
        sources=[
            types_pb2.SourceRef(doc_id=s.doc_id, title=s.title, chunk_id=s.chunk_id, distance=s.distance)
            for s in ticket.sources
        ],
        status=TICKET_STATUS.to_proto(ticket.status),
        assignee=ticket.assignee,
        resolution_note=ticket.resolution_note,
        messages=[
            tools_pb2.TicketMessage(
                author=MESSAGE_AUTHOR.to_proto(m.author),
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


def action_to_proto(action: StoredAction) -> types_pb2.Action:
    """A running action is still PENDING to callers (its outcome is not known yet)."""
    proto = types_pb2.Action(
        action_id=action.action_id,
        conversation_id=action.conversation_id,
        tool_name=action.tool_name,
        arguments_json=json.dumps(action.arguments, ensure_ascii=False, separators=(",", ":")),
        summary=action.summary,
        state=ACTION_STATE.to_proto("pending" if action.state == "running" else action.state),
        create_time=_timestamp(action.create_time),
        expire_time=_timestamp(action.expire_time),
        confirmation=action.confirmation,
        result_json=action.result_json,
        note=action.note,
    )
    if action.decide_time is not None and action.state != "running":
        proto.decide_time.CopyFrom(_timestamp(action.decide_time))
    return proto


def tool_error_to_proto(failure: ToolFailure) -> tools_pb2.ToolError:
    return tools_pb2.ToolError(
        code=TOOL_ERROR_CODE.to_proto(failure.code, tools_pb2.TOOL_ERROR_CODE_INTERNAL),
        message=failure.message,
        retryable=failure.retryable,
        retry_after_seconds=failure.retry_after_seconds,
    )


def _quota_details(error: RateLimitedError) -> list[Message]:
    details: list[Message] = [
        error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(subject=error.limit, description=error.message)
            ]
        )
    ]
    if error.retry_after_seconds > 0:
        details.append(
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=error.retry_after_seconds))
        )
    return details


ERROR_GUARD = ErrorGuard(
    [
        StatusRule(
            InvalidArgumentError,
            grpc.StatusCode.INVALID_ARGUMENT,
            details=lambda error: [bad_request(error.field, error.message)],
        ),
        StatusRule(UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
        StatusRule(NotFoundError, grpc.StatusCode.NOT_FOUND),
        StatusRule(PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
        StatusRule(RateLimitedError, grpc.StatusCode.RESOURCE_EXHAUSTED, details=_quota_details),
        StatusRule(ConflictError, grpc.StatusCode.ALREADY_EXISTS),
        StatusRule(FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
        StatusRule(BackendTimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
        StatusRule(BackendUnavailableError, grpc.StatusCode.UNAVAILABLE),
        StatusRule(ToolsError, grpc.StatusCode.INTERNAL),
    ],
    internal_message="internal error",
    logger=logger,
)


def _deadline(context: grpc.aio.ServicerContext[object, object]) -> float | None:
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_SECONDS:
        return None
    return float(remaining)


def _principal() -> auth.Principal:
    """The caller, set by service_kit.auth's interceptor (which already refused anyone the table does not allow)."""
    principal = auth.current_principal()
    if principal is None:
        raise UnauthenticatedError("no authenticated caller")
    return principal


def _customer() -> str:
    """The customer a backend or service caller acts for ("" when a service caller named none)."""
    return _principal().customer_id


def _caller() -> Caller:
    """Who is touching tickets: staff (any ticket, as a human agent) or a customer's backend/agent (only that
    customer's tickets, as the customer)."""
    principal = _principal()
    if principal.role == auth.STAFF:
        return Caller(customer_id="", agent_name=principal.agent_name)
    if not principal.customer_id:
        raise UnauthenticatedError("a customer caller must send x-customer-id")
    return Caller(customer_id=principal.customer_id, agent_name="")


# Who may call what (enforced by service_kit.auth's interceptor before any handler runs). `service` is the agent,
# acting for the customer it forwards in x-customer-id; `backend` a customer-facing backend; `staff` the helpdesk.
_CUSTOMER_CALLERS = (auth.SERVICE, auth.BACKEND)
PERMISSIONS = auth.PermissionTable(
    tools_pb2.DESCRIPTOR.services_by_name["ToolsService"].full_name,
    {
        "ListTools": auth.allow(*_CUSTOMER_CALLERS, service_needs_customer=False),
        # Without a customer the tools answer a structured `unauthenticated` error the model can read.
        "ExecuteTool": auth.allow(*_CUSTOMER_CALLERS, service_needs_customer=False),
        "LookupOrderStatus": auth.allow(*_CUSTOMER_CALLERS),
        "EscalateToHuman": auth.allow(*_CUSTOMER_CALLERS),
        "GetTicket": auth.allow(auth.STAFF, *_CUSTOMER_CALLERS),
        "ListTickets": auth.allow(auth.STAFF, *_CUSTOMER_CALLERS),
        "ClaimTicket": auth.allow(auth.STAFF),
        "ResolveTicket": auth.allow(auth.STAFF),
        "AppendTicketMessage": auth.allow(auth.STAFF, *_CUSTOMER_CALLERS),
        # The ticket change feed is every customer's: only the agent (service) reads it.
        "WatchTicketEvents": auth.allow(auth.SERVICE, service_needs_customer=False),
        "ListWebhookDeliveries": auth.allow(auth.STAFF),
        "RedeliverWebhooks": auth.allow(auth.STAFF),
        # Conversation events of every customer, for the webhooks: only the agent (service) publishes them.
        "PublishConversationEvents": auth.allow(auth.SERVICE, service_needs_customer=False),
        # Write actions: run or dropped for the customer they belong to (the agent, or the backend's button);
        # staff read the audit trail only.
        "RunAction": auth.allow(*_CUSTOMER_CALLERS),
        "DropAction": auth.allow(*_CUSTOMER_CALLERS),
        "ListActions": auth.allow(auth.STAFF, *_CUSTOMER_CALLERS),
    },
)

_EVENT_TYPE = {
    "created": tools_pb2.TICKET_EVENT_TYPE_CREATED,
    "claimed": tools_pb2.TICKET_EVENT_TYPE_CLAIMED,
    "message_added": tools_pb2.TICKET_EVENT_TYPE_MESSAGE_ADDED,
    "resolved": tools_pb2.TICKET_EVENT_TYPE_RESOLVED,
}
_DELIVERY_STATUS = {
    "pending": tools_pb2.WEBHOOK_DELIVERY_STATUS_PENDING,
    "delivered": tools_pb2.WEBHOOK_DELIVERY_STATUS_DELIVERED,
    "dead": tools_pb2.WEBHOOK_DELIVERY_STATUS_DEAD,
}
MAX_LISTED_DELIVERIES = 1000


def ticket_event_to_proto(event: TicketEvent) -> tools_pb2.TicketEvent:
    return tools_pb2.TicketEvent(
        seq=event.seq,
        event_id=event.event_id,
        type=_EVENT_TYPE.get(event.type, tools_pb2.TICKET_EVENT_TYPE_UNSPECIFIED),
        ticket_id=event.ticket_id,
        conversation_id=event.conversation_id,
        customer_id=event.customer_id,
        create_time=_timestamp(event.create_time),
        assignee=event.assignee,
        author=MESSAGE_AUTHOR.to_proto(event.author)
        if event.author
        else tools_pb2.MESSAGE_AUTHOR_UNSPECIFIED,
        author_name=event.author_name,
        text=event.text,
        resolution_note=event.resolution_note,
        priority=PRIORITY.to_proto(event.priority) if event.priority else types_pb2.PRIORITY_UNSPECIFIED,
    )


class ToolsServicer(tools_pb2_grpc.ToolsServiceServicer):
    def __init__(
        self,
        runner: ToolRunner,
        orders: OrderService,
        tickets: TicketService,
        *,
        feed: TicketFeed | None = None,
        outbox: Outbox | None = None,
        desk: ActionDesk | None = None,
    ) -> None:
        self._runner = runner
        self._desk = desk
        self._orders = orders
        self._tickets = tickets
        self._feed = feed
        self._outbox = outbox

    async def ListTools(  # noqa: N802
        self, request: tools_pb2.ListToolsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> tools_pb2.ListToolsResponse:
        return tools_pb2.ListToolsResponse(
            tools=[
                tools_pb2.ToolDefinition(
                    name=spec.name,
                    description=spec.description,
                    openai_tool_json=json.dumps(spec.openai_tool()),
                    changes_state=spec.changes_state,
                )
                for spec in self._runner.specs.values()
            ]
        )

    async def ExecuteTool(  # noqa: N802
        self, request: tools_pb2.ExecuteToolRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> tools_pb2.ExecuteToolResponse:
        async with ERROR_GUARD(context):
            result = await self._runner.execute(
                tool_name=request.tool_name,
                arguments_json=request.arguments_json,
                conversation_id=request.conversation_id,
                idempotency_key=request.idempotency_key,
                customer_id=_customer(),
                deadline_remaining=_deadline(context),
                principal_role=_principal().role,
            )
            response = tools_pb2.ExecuteToolResponse(
                tool_name=result.tool_name, content_json=result.content_json
            )
            if result.error is not None:
                response.error.CopyFrom(tool_error_to_proto(result.error))
            if result.action is not None:
                response.pending_action.CopyFrom(action_to_proto(result.action))
            return response

    async def LookupOrderStatus(  # noqa: N802
        self, request: tools_pb2.LookupOrderStatusRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> tools_pb2.LookupOrderStatusResponse:
        async with ERROR_GUARD(context):
            customer_id = _customer()
            self._orders.validate_order_id(request.order_id)
            self._runner.lookup_limit(request.conversation_id, customer_id, request.order_id)
            order = await self._orders.lookup(customer_id, request.order_id, _deadline(context))
            return tools_pb2.LookupOrderStatusResponse(
                order_id=order.order_id,
                status=ORDER_STATUS.to_proto(order.status),
                tracking_number=order.tracking_number or "",
                carrier=order.carrier or "",
                eta=order.eta or "",
            )

    async def EscalateToHuman(  # noqa: N802
        self, request: tools_pb2.EscalateToHumanRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> tools_pb2.EscalateToHumanResponse:
        async with ERROR_GUARD(context):
            reason_code = ESCALATION_REASON.from_proto(request.reason_code)
            if not reason_code:
                raise InvalidArgumentError("reason_code", "reason_code is required.")
            escalation = validate_escalation(
                conversation_id=request.conversation_id,
                customer_id=_customer(),
                priority=PRIORITY.from_proto(request.priority),
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

    async def GetTicket(  # noqa: N802
        self, request: tools_pb2.GetTicketRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> tools_pb2.GetTicketResponse:
        async with ERROR_GUARD(context):
            ticket = await self._tickets.get(_caller(), request.ticket_id, _deadline(context))
            return tools_pb2.GetTicketResponse(ticket=ticket_to_proto(ticket))

    async def ListTickets(  # noqa: N802
        self, request: tools_pb2.ListTicketsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> tools_pb2.ListTicketsResponse:
        async with ERROR_GUARD(context):
            tickets = await self._tickets.list(
                _caller(), request.conversation_id, request.open_only, _deadline(context)
            )
            return tools_pb2.ListTicketsResponse(tickets=[ticket_to_proto(t) for t in tickets])

    async def ClaimTicket(  # noqa: N802
        self, request: tools_pb2.ClaimTicketRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> tools_pb2.ClaimTicketResponse:
        async with ERROR_GUARD(context):
            ticket = await self._tickets.claim(
                _caller(), request.ticket_id, request.assignee, _deadline(context)
            )
            logger.info("ticket %s claimed", ticket.ticket_id)
            return tools_pb2.ClaimTicketResponse(ticket=ticket_to_proto(ticket))

    async def ResolveTicket(  # noqa: N802
        self, request: tools_pb2.ResolveTicketRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> tools_pb2.ResolveTicketResponse:
        async with ERROR_GUARD(context):
            ticket = await self._tickets.resolve(
                _caller(), request.ticket_id, request.resolution_note, _deadline(context)
            )
            logger.info("ticket %s resolved", ticket.ticket_id)
            return tools_pb2.ResolveTicketResponse(ticket=ticket_to_proto(ticket))

    async def AppendTicketMessage(  # noqa: N802
        self, request: tools_pb2.AppendTicketMessageRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> tools_pb2.AppendTicketMessageResponse:
        async with ERROR_GUARD(context):
            ticket = await self._tickets.append(
                _caller(),
                request.ticket_id,
                MESSAGE_AUTHOR.from_proto(request.author),
                request.author_name,
                request.text,
                _deadline(context),
            )
            return tools_pb2.AppendTicketMessageResponse(ticket=ticket_to_proto(ticket))

    async def WatchTicketEvents(  # noqa: N802
        self, request: tools_pb2.WatchTicketEventsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[tools_pb2.WatchTicketEventsResponse]:
        async with ERROR_GUARD(context):
            if self._feed is None:
                raise FailedPreconditionError("this tools service keeps no ticket events")
            if request.after_seq < 0:
                raise InvalidArgumentError("after_seq", "after_seq must not be negative.")
            async for item in self._feed.watch(request.after_seq):
                if isinstance(item, int):
                    yield tools_pb2.WatchTicketEventsResponse(heartbeat_seq=item)
                else:
                    yield tools_pb2.WatchTicketEventsResponse(event=ticket_event_to_proto(item))

    async def ListWebhookDeliveries(  # noqa: N802
        self,
        request: tools_pb2.ListWebhookDeliveriesRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> tools_pb2.ListWebhookDeliveriesResponse:
        async with ERROR_GUARD(context):
            if self._outbox is None:
                return tools_pb2.ListWebhookDeliveriesResponse()
            statuses = tuple(name for name, code in _DELIVERY_STATUS.items() if code == request.status)
            limit = request.limit if 0 < request.limit <= MAX_LISTED_DELIVERIES else MAX_LISTED_DELIVERIES
            deliveries = await self._outbox.list(statuses or ("pending", "dead"), limit)
            return tools_pb2.ListWebhookDeliveriesResponse(
                deliveries=[
                    tools_pb2.WebhookDelivery(
                        delivery_id=delivery.delivery_id,
                        event_id=delivery.event.event_id,
                        event_type=delivery.event.webhook_type,
                        url=delivery.url,
                        status=_DELIVERY_STATUS[delivery.status],
                        attempts=delivery.attempts,
                        last_error=delivery.last_error,
                        next_attempt_time=_timestamp(delivery.next_attempt_at),
                        conversation_id=delivery.event.conversation_id,
                    )
                    for delivery in deliveries
                ]
            )

    async def RedeliverWebhooks(  # noqa: N802
        self, request: tools_pb2.RedeliverWebhooksRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> tools_pb2.RedeliverWebhooksResponse:
        async with ERROR_GUARD(context):
            if self._outbox is None:
                return tools_pb2.RedeliverWebhooksResponse()
            requeued = await self._outbox.requeue_dead(tuple(request.delivery_ids), time.time())
            logger.info("requeued %d dead-lettered webhook deliveries", requeued)
            return tools_pb2.RedeliverWebhooksResponse(requeued=requeued)

    async def PublishConversationEvents(  # noqa: N802
        self,
        request: tools_pb2.PublishConversationEventsRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> tools_pb2.PublishConversationEventsResponse:
        async with ERROR_GUARD(context):
            if self._outbox is None:
                return tools_pb2.PublishConversationEventsResponse(webhooks_configured=False)
            events = [
                validate_conversation_event(
                    event_id=event.event_id,
                    type=event.type,
                    conversation_id=event.conversation_id,
                    customer_id=event.customer_id,
                    create_time=event.create_time.ToNanoseconds() / 1e9,
                    data_json=event.data_json,
                )
                for event in request.events
            ]
            queued, duplicates = await self._tickets.publish_conversation_events(events, _deadline(context))
            return tools_pb2.PublishConversationEventsResponse(
                queued=queued, duplicates=duplicates, webhooks_configured=True
            )

    def _actions(self) -> ActionDesk:
        if self._desk is None:
            raise FailedPreconditionError("this tools service keeps no write actions")
        return self._desk

    async def RunAction(  # noqa: N802
        self, request: tools_pb2.RunActionRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> tools_pb2.RunActionResponse:
        async with ERROR_GUARD(context):
            principal = _principal()
            action, ran_now = await self._actions().run(
                action_id=request.action_id,
                conversation_id=request.conversation_id,
                customer_id=principal.customer_id,
                principal_role=principal.role,
                confirmation=request.confirmation,
                deadline_remaining=_deadline(context),
                execute=self._runner.run_write,
            )
            return tools_pb2.RunActionResponse(action=action_to_proto(action), ran_now=ran_now)

    async def DropAction(  # noqa: N802
        self, request: tools_pb2.DropActionRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> tools_pb2.DropActionResponse:
        async with ERROR_GUARD(context):
            principal = _principal()
            action = await self._actions().drop(
                action_id=request.action_id,
                conversation_id=request.conversation_id,
                customer_id=principal.customer_id,
                principal_role=principal.role,
                note=request.note,
                confirmation=request.confirmation,
            )
            return tools_pb2.DropActionResponse(action=action_to_proto(action))

    async def ListActions(  # noqa: N802
        self, request: tools_pb2.ListActionsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> tools_pb2.ListActionsResponse:
        async with ERROR_GUARD(context):
            principal = _principal()
            customer = None if principal.role == auth.STAFF else _caller().customer_id
            actions = await self._actions().list(request.conversation_id, customer)
            return tools_pb2.ListActionsResponse(actions=[action_to_proto(a) for a in actions])
