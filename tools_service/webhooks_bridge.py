"""A small helpdesk bridge: the pattern docs/helpdesk.md describes, runnable and tested.

    python -m tools_service.webhooks_bridge --port 8085 --tools-addr 127.0.0.1:50053

It listens on two kinds of HTTP endpoints:

* `POST /support-events` — the webhooks of tools_service (WEBHOOK_URLS points here). Every request's
  `X-Support-Signature` is checked against WEBHOOK_SECRET with the timestamp's replay window before anything
  else (401 otherwise); events are de-duplicated by id (delivery is at least once). `ticket.created` opens a
  ticket in the helpdesk, `ticket.message_added` from the customer adds a note to it.
* `POST /helpdesk/reply` and `POST /helpdesk/solved` — what the helpdesk calls when its agent replies or marks
  the ticket solved (`{"ticket_id", "agent", "text"}` / `{"ticket_id", "agent", "note"}`, authenticated with
  `Authorization: Bearer <HELPDESK_WEBHOOK_TOKEN>`). They become `AppendTicketMessage` (the customer sees the
  reply live on WatchConversation) and `ResolveTicket` (the bot takes the conversation back) on tools_service,
  as the `staff` role with the helpdesk agent's name.

`Helpdesk` is the port to your vendor's API; `RecordingHelpdesk` keeps what it was asked (the tests use it, and
it is a starting point: replace it with a client of your helpdesk's ticket API).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from aiohttp import web

from service_kit import auth
from support.v1 import tools_pb2, tools_pb2_grpc
from tools_service.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature

logger = logging.getLogger(__name__)

MAX_SEEN_EVENT_IDS = 100_000


class Helpdesk(Protocol):
    async def open_ticket(self, support_ticket_id: str, conversation_id: str, priority: str) -> None: ...

    async def add_note(self, support_ticket_id: str, text: str) -> None: ...


@dataclass
class RecordingHelpdesk:
    """A helpdesk that records what it is asked: replace it with your vendor's API client."""

    opened: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)

    async def open_ticket(self, support_ticket_id: str, conversation_id: str, priority: str) -> None:
        self.opened.append((support_ticket_id, conversation_id, priority))

    async def add_note(self, support_ticket_id: str, text: str) -> None:
        self.notes.append((support_ticket_id, text))


class Bridge:
    def __init__(
        self,
        helpdesk: Helpdesk,
        tools: tools_pb2_grpc.ToolsServiceStub,
        *,
        webhook_secret: str,
        helpdesk_token: str,
    ) -> None:
        self._helpdesk = helpdesk
        self._tools = tools
        self._secret = webhook_secret
        self._helpdesk_token = helpdesk_token
        self._seen: dict[str, None] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post("/support-events", self.support_event)
        app.router.add_post("/helpdesk/reply", self.helpdesk_reply)
        app.router.add_post("/helpdesk/solved", self.helpdesk_solved)
        return app

    # --- tools_service → helpdesk -------------------------------------------------------------------------

    async def support_event(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify_signature(
            self._secret,
            body,
            request.headers.get(TIMESTAMP_HEADER, ""),
            request.headers.get(SIGNATURE_HEADER, ""),
        ):
            return web.Response(status=401, text="bad signature")
        event = json.loads(body)
        if event["id"] in self._seen:
            return web.Response(status=200, text="duplicate")  # at-least-once delivery: already handled
        data = event["data"]
        if event["type"] == "ticket.created":
            await self._helpdesk.open_ticket(
                data["ticket_id"], data["conversation_id"], data.get("priority", "")
            )
        elif event["type"] == "ticket.message_added" and data.get("author") == "customer":
            await self._helpdesk.add_note(data["ticket_id"], data["text"])
        self._seen[event["id"]] = None
        if len(self._seen) > MAX_SEEN_EVENT_IDS:
            self._seen.pop(next(iter(self._seen)))
        return web.Response(status=204)

    # --- helpdesk → tools_service -------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        presented = request.headers.get("Authorization", "")
        return hmac.compare_digest(presented.encode(), f"Bearer {self._helpdesk_token}".encode())

    async def _call(self, request: web.Request, action: str) -> web.Response:
        if not self._authorized(request):
            return web.Response(status=401)
        try:
            payload: dict[str, Any] = await request.json()
            ticket_id, agent = str(payload["ticket_id"]), str(payload["agent"])
        except (ValueError, KeyError, TypeError):
            return web.Response(status=400, text="expected JSON with ticket_id and agent")
        metadata = ((auth.AGENT_NAME_KEY, agent),)
        try:
            if action == "reply":
                await self._tools.AppendTicketMessage(
                    tools_pb2.AppendTicketMessageRequest(
                        ticket_id=ticket_id,
                        text=str(payload.get("text", "")),
                        author=tools_pb2.MESSAGE_AUTHOR_HUMAN_AGENT,
                        author_name=agent,
                    ),
                    metadata=metadata,
                    timeout=10,
                )
            else:
                ticket = (
                    await self._tools.GetTicket(
                        tools_pb2.GetTicketRequest(ticket_id=ticket_id), metadata=metadata, timeout=10
                    )
                ).ticket
                if ticket.status == tools_pb2.TICKET_STATUS_OPEN:
                    await self._tools.ClaimTicket(
                        tools_pb2.ClaimTicketRequest(ticket_id=ticket_id, assignee=agent),
                        metadata=metadata,
                        timeout=10,
                    )
                await self._tools.ResolveTicket(
                    tools_pb2.ResolveTicketRequest(
                        ticket_id=ticket_id, resolution_note=str(payload.get("note", ""))
                    ),
                    metadata=metadata,
                    timeout=10,
                )
        except grpc.aio.AioRpcError as error:
            status = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400}.get(
                error.code(), 502
            )
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                status = 409
            return web.Response(status=status, text=error.details() or error.code().name)
        return web.Response(status=204)

    async def helpdesk_reply(self, request: web.Request) -> web.Response:
        return await self._call(request, "reply")

    async def helpdesk_solved(self, request: web.Request) -> web.Response:
        return await self._call(request, "solved")


async def _serve(port: int, tools_addr: str) -> None:
    caller = auth.AuthConfig.for_caller(auth.STAFF)
    async with grpc.aio.insecure_channel(
        tools_addr, interceptors=auth.client_interceptors(caller)
    ) as channel:
        bridge = Bridge(
            RecordingHelpdesk(),
            tools_pb2_grpc.ToolsServiceStub(channel),  # type: ignore[no-untyped-call]
            webhook_secret=os.environ["WEBHOOK_SECRET"],
            helpdesk_token=os.environ["HELPDESK_WEBHOOK_TOKEN"],
        )
        runner = web.AppRunner(bridge.app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        logger.info("helpdesk bridge listening on %d", port)
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="Example bridge between support-agent and a helpdesk.")
    parser.add_argument("--port", type=int, default=8085)
    parser.add_argument("--tools-addr", default=os.environ.get("TOOLS_ADDR", "127.0.0.1:50053"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    asyncio.run(_serve(args.port, args.tools_addr))


if __name__ == "__main__":
    main()
