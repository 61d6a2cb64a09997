"""`support-tickets`: a human agent's helpdesk CLI over support.v1.ToolsService.

    support-tickets [--addr HOST:PORT] [--agent-name NAME] list [--open] [--conversation ID]
    support-tickets show TICKET_ID
    support-tickets claim TICKET_ID --as NAME
    support-tickets reply TICKET_ID --as NAME TEXT
    support-tickets resolve TICKET_ID --note TEXT
    support-tickets webhooks [--dead | --pending | --delivered] [--redeliver [DELIVERY_ID ...]]

Calls are made as helpdesk `staff` (service_kit.auth): the staff token from AUTH_TOKEN, AUTH_TOKENS_STAFF or
AUTH_CREDENTIALS_FILE (default data/credentials.json, written by `make run`), and `x-agent-name`: --agent-name,
else SUPPORT_AGENT_NAME, else the --as name, else your login name. Exit status: 0 ok, 1 the call failed,
2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import grpc

from service_kit import auth
from service_kit.codes import ESCALATION_REASON, PRIORITY, TICKET_STATUS
from service_kit.env import ConfigError
from support.v1 import tools_pb2, tools_pb2_grpc
from tools_service.config import DEFAULT_ADDR

TIMEOUT_SECONDS = 10.0
UNSPECIFIED = "unspecified"


def _when(stamp: object) -> str:
    seconds = getattr(stamp, "seconds", 0)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if seconds else "-"


def _line(ticket: tools_pb2.Ticket) -> str:
    status = TICKET_STATUS.from_proto(ticket.status, UNSPECIFIED)
    priority = PRIORITY.from_proto(ticket.priority, UNSPECIFIED)
    assignee = ticket.assignee or "-"
    return (
        f"{ticket.ticket_id:<18} {status:<9} {priority:<7} {assignee:<12} "
        f"{ticket.conversation_id:<20} {_when(ticket.create_time)}  {ticket.reason[:60]}"
    )


def _details(ticket: tools_pb2.Ticket) -> str:
    reason_code = ESCALATION_REASON.from_proto(ticket.reason_code, UNSPECIFIED)
    lines = [
        f"ticket          {ticket.ticket_id}",
        f"status          {TICKET_STATUS.from_proto(ticket.status, UNSPECIFIED)}",
        f"priority        {PRIORITY.from_proto(ticket.priority, UNSPECIFIED)}",
        f"conversation    {ticket.conversation_id}",
        f"customer        {ticket.customer_id or '-'}",
        f"reason          {reason_code}: {ticket.reason}",
        f"summary         {ticket.summary or '-'}",
        f"tools tried     {', '.join(ticket.tools_tried) or '-'}",
        f"sources         {', '.join(f'{s.doc_id}#{s.chunk_id}' for s in ticket.sources) or '-'}",
        f"assignee        {ticket.assignee or '-'}",
        f"created         {_when(ticket.create_time)}",
        f"updated         {_when(ticket.update_time)}",
    ]
    if ticket.resolution_note:
        lines.append(f"resolution      {ticket.resolution_note}")
    lines.append(f"messages        {len(ticket.messages)}")
    for message in ticket.messages:
        author = "customer" if message.author == tools_pb2.MESSAGE_AUTHOR_CUSTOMER else message.author_name
        lines.append(f"  [{_when(message.create_time)}] {author}: {message.text}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="support-tickets", description="List, claim, reply on and resolve tickets."
    )
    parser.add_argument(
        "--addr",
        default=os.environ.get("TOOLS_ADDR", DEFAULT_ADDR),
        help="tools_service address (TOOLS_ADDR)",
    )
    parser.add_argument(
        "--agent-name",
        default=os.environ.get("SUPPORT_AGENT_NAME", ""),
        help="your name as a helpdesk agent, sent as x-agent-name (SUPPORT_AGENT_NAME; default: --as, else "
        "your login name)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list tickets, newest first")
    listing.add_argument("--open", action="store_true", help="only OPEN and ASSIGNED tickets")
    listing.add_argument("--conversation", default="", help="only this conversation's tickets")
    show = commands.add_parser("show", help="show one ticket with its messages")
    show.add_argument("ticket_id")
    claim = commands.add_parser("claim", help="take a ticket: the conversation becomes human-owned")
    claim.add_argument("ticket_id")
    claim.add_argument("--as", dest="name", required=True, help="your agent name")
    reply = commands.add_parser("reply", help="reply to the customer on a ticket")
    reply.add_argument("ticket_id")
    reply.add_argument("--as", dest="name", required=True, help="your agent name")
    reply.add_argument("text")
    resolve = commands.add_parser(
        "resolve", help="resolve a ticket and hand the conversation back to the bot"
    )
    resolve.add_argument("ticket_id")
    resolve.add_argument("--note", required=True, help="what was done; recorded in the conversation history")
    webhooks = commands.add_parser(
        "webhooks", help="list pending and dead-lettered webhook deliveries; requeue dead ones"
    )
    which = webhooks.add_mutually_exclusive_group()
    which.add_argument("--pending", action="store_const", const="pending", dest="status", help="only pending")
    which.add_argument("--dead", action="store_const", const="dead", dest="status", help="only dead-lettered")
    which.add_argument(
        "--delivered", action="store_const", const="delivered", dest="status", help="delivered ones"
    )
    webhooks.add_argument(
        "--redeliver",
        nargs="*",
        type=int,
        metavar="DELIVERY_ID",
        help="requeue these dead-lettered deliveries (none named: every dead one)",
    )
    return parser


_DELIVERY_STATUS = {
    "pending": tools_pb2.WEBHOOK_DELIVERY_STATUS_PENDING,
    "delivered": tools_pb2.WEBHOOK_DELIVERY_STATUS_DELIVERED,
    "dead": tools_pb2.WEBHOOK_DELIVERY_STATUS_DEAD,
}


def _webhooks(args: argparse.Namespace, stub: tools_pb2_grpc.ToolsServiceStub) -> str:
    if args.redeliver is not None:
        request = tools_pb2.RedeliverWebhooksRequest(delivery_ids=args.redeliver)
        requeued = stub.RedeliverWebhooks(request, timeout=TIMEOUT_SECONDS).requeued
        return f"requeued {requeued} dead-lettered deliver{'y' if requeued == 1 else 'ies'}"
    listing = tools_pb2.ListWebhookDeliveriesRequest(
        status=_DELIVERY_STATUS.get(args.status or "", tools_pb2.WEBHOOK_DELIVERY_STATUS_UNSPECIFIED)
    )
    deliveries = stub.ListWebhookDeliveries(listing, timeout=TIMEOUT_SECONDS).deliveries
    if not deliveries:
        return "no webhook deliveries"
    names = {code: name for name, code in _DELIVERY_STATUS.items()}
    header = f"{'ID':<7} {'STATUS':<10} {'TRIES':<5} {'EVENT':<10} {'TYPE':<22} {'NEXT ATTEMPT':<21} URL / LAST ERROR"
    lines = [header]
    for delivery in deliveries:
        lines.append(
            f"{delivery.delivery_id:<7} {names.get(delivery.status, '?'):<10} {delivery.attempts:<5} "
            f"{delivery.event_id:<10} {delivery.event_type:<22} {_when(delivery.next_attempt_time):<21} "
            f"{delivery.url}  {delivery.last_error}"
        )
    return "\n".join(lines)


def _run(args: argparse.Namespace, stub: tools_pb2_grpc.ToolsServiceStub) -> str:
    if args.command == "list":
        request = tools_pb2.ListTicketsRequest(conversation_id=args.conversation, open_only=args.open)
        tickets = stub.ListTickets(request, timeout=TIMEOUT_SECONDS).tickets
        if not tickets:
            return "no tickets"
        header = f"{'TICKET':<18} {'STATUS':<9} {'PRIO':<7} {'ASSIGNEE':<12} {'CONVERSATION':<20} {'CREATED':<21} REASON"
        return "\n".join([header, *(_line(t) for t in tickets)])
    if args.command == "webhooks":
        return _webhooks(args, stub)
    if args.command == "show":
        return _details(
            stub.GetTicket(
                tools_pb2.GetTicketRequest(ticket_id=args.ticket_id), timeout=TIMEOUT_SECONDS
            ).ticket
        )
    if args.command == "claim":
        claim = tools_pb2.ClaimTicketRequest(ticket_id=args.ticket_id, assignee=args.name)
        ticket = stub.ClaimTicket(claim, timeout=TIMEOUT_SECONDS).ticket
        return f"{ticket.ticket_id} claimed by {ticket.assignee}"
    if args.command == "reply":
        reply = tools_pb2.AppendTicketMessageRequest(
            ticket_id=args.ticket_id,
            text=args.text,
            author=tools_pb2.MESSAGE_AUTHOR_HUMAN_AGENT,
            author_name=args.name,
        )
        ticket = stub.AppendTicketMessage(reply, timeout=TIMEOUT_SECONDS).ticket
        return f"reply added to {ticket.ticket_id}; messages on the ticket: {len(ticket.messages)}"
    resolve = tools_pb2.ResolveTicketRequest(ticket_id=args.ticket_id, resolution_note=args.note)
    ticket = stub.ResolveTicket(resolve, timeout=TIMEOUT_SECONDS).ticket
    return f"{ticket.ticket_id} resolved; the conversation is back with the bot"


def _agent_name(args: argparse.Namespace) -> str:
    if args.agent_name:
        return str(args.agent_name)
    if getattr(args, "name", ""):
        return str(args.name)
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "helpdesk"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        caller = auth.AuthConfig.for_caller(auth.STAFF, headers=((auth.AGENT_NAME_KEY, _agent_name(args)),))
    except ConfigError as error:
        print(f"support-tickets: {error}", file=sys.stderr)
        return 2
    with grpc.insecure_channel(args.addr) as raw_channel:
        # Every call carries the staff token and x-agent-name.
        channel = auth.intercept_sync_channel(raw_channel, caller)
        stub = tools_pb2_grpc.ToolsServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            print(_run(args, stub))
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            name = code.name if code is not None else "ERROR"
            print(f"support-tickets: {name}: {details}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
