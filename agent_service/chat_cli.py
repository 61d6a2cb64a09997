"""`support-chat`: an interactive terminal client over AgentService.StreamChat.

The reply is printed as it streams; sources, tool calls, escalations and guardrail flags are printed as they
happen, on their own dimmed lines. Meanwhile the conversation is watched (WatchConversation): when a human
agent joins, replies or hands the conversation back, it is printed as it happens, even while you are waiting
at the prompt. When a reply proposes a write action (cancel an order, start a return, change an address), its
summary is shown and "y" / "n" confirm or decline it with the buttons' RPCs (ConfirmAction / DeclineAction);
typing "yes" or "no" confirms or declines it by message instead. Ctrl-D or /quit ends the session.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Sequence
from typing import TextIO

import grpc

from service_kit import auth
from service_kit.codes import ACTION_STATE, CONVERSATION_STATE, PRIORITY
from service_kit.env import ConfigError
from service_kit.metadata import CUSTOMER_ID_KEY
from support.v1 import agent_pb2, agent_pb2_grpc, types_pb2

DEFAULT_ADDR = "127.0.0.1:50051"
TURN_TIMEOUT_SECONDS = 120.0


def _dim(text: str, out: TextIO) -> str:
    return f"\033[2m{text}\033[0m" if out.isatty() else text


def render_event(event: agent_pb2.StreamChatResponse, out: TextIO) -> None:
    """Prints one StreamChat event."""
    kind = event.WhichOneof("event")
    if kind == "text_delta":
        out.write(event.text_delta.text)
    elif kind == "sources":
        if event.sources.knowledge_gap:
            out.write(_dim("  [kb] nothing relevant found\n", out))
        for source in event.sources.sources:
            out.write(_dim(f"  [kb] {source.title} ({source.doc_id}, distance {source.distance:.2f})\n", out))
    elif kind == "tool_call":
        call = event.tool_call.tool_call
        out.write(_dim(f"  [tool] {call.name} {call.arguments_json}\n", out))
    elif kind == "tool_result":
        call = event.tool_result.tool_call
        label = "error" if call.is_error else "result"
        out.write(_dim(f"  [tool {label}] {call.result_json[:300]}\n", out))
    elif kind == "escalation":
        escalation = event.escalation
        priority = PRIORITY.from_proto(escalation.priority, "unspecified")
        out.write(_dim(f"  [escalated] ticket {escalation.ticket_id}, priority {priority}\n", out))
    elif kind == "guardrail":
        out.write(_dim(f"  [guardrail] {event.guardrail.rule}: {event.guardrail.detail}\n", out))
    elif kind == "action":
        out.write(_dim(f"  [action] {action_line(event.action)}\n", out))
    elif kind == "final":
        final = event.final
        if final.replayed:
            out.write(final.reply)
        out.write("\n")
        for index, source in enumerate(final.sources, start=1):
            out.write(_dim(f"  [{index}] {source.title} — {source.doc_id}\n", out))
        state = CONVERSATION_STATE.from_proto(final.state, "unspecified")
        note = f"  ({state}; model {final.usage.model}{', fallback' if final.usage.fallback else ''})\n"
        out.write(_dim(note, out))
    out.flush()


def action_line(action: types_pb2.Action) -> str:
    state = ACTION_STATE.from_proto(action.state, "unspecified")
    note = f" ({action.note})" if action.note else ""
    return f"{state}: {action.summary}{note}"


def pending_action(response: agent_pb2.ChatResponse | None) -> types_pb2.Action | None:
    """The action a reply left waiting for the customer's answer, if any."""
    if response is None or not response.HasField("action"):
        return None
    return response.action if response.action.state == types_pb2.ACTION_STATE_PENDING else None


async def chat_once(
    stub: agent_pb2_grpc.AgentServiceStub,
    conversation_id: str,
    message: str,
    customer_id: str,
    out: TextIO,
) -> agent_pb2.ChatResponse | None:
    """Streams one turn to `out`; returns its final response."""
    metadata = ((CUSTOMER_ID_KEY, customer_id),) if customer_id else ()
    request = agent_pb2.StreamChatRequest(
        conversation_id=conversation_id, message=message, turn_id=uuid.uuid4().hex
    )
    final = None
    async for event in stub.StreamChat(request, metadata=metadata, timeout=TURN_TIMEOUT_SECONDS):
        render_event(event, out)
        if event.HasField("final"):
            final = event.final
    return final


async def press_button(
    stub: agent_pb2_grpc.AgentServiceStub,
    conversation_id: str,
    action: types_pb2.Action,
    confirm: bool,
    customer_id: str,
    out: TextIO,
) -> agent_pb2.ChatResponse:
    """ConfirmAction / DeclineAction for `action`, printed like a turn; returns its response."""
    metadata = ((CUSTOMER_ID_KEY, customer_id),) if customer_id else ()
    ids = {"conversation_id": conversation_id, "action_id": action.action_id, "turn_id": uuid.uuid4().hex}
    response: agent_pb2.ChatResponse
    if confirm:
        confirmed = await stub.ConfirmAction(
            agent_pb2.ConfirmActionRequest(**ids), metadata=metadata, timeout=TURN_TIMEOUT_SECONDS
        )
        response = confirmed.response
    else:
        declined = await stub.DeclineAction(
            agent_pb2.DeclineActionRequest(**ids), metadata=metadata, timeout=TURN_TIMEOUT_SECONDS
        )
        response = declined.response
    out.write(_dim(f"  [action] {action_line(response.action)}\n", out))
    out.write(f"{response.reply}\n")
    out.flush()
    return response


# Events of the conversation the customer did not cause with their own turn (those StreamChat prints).
LIVE_KINDS = frozenset({"ticket_claimed", "human_reply", "hand_back"})
WATCH_RETRY_SECONDS = 0.5


def render_live_event(event: agent_pb2.ConversationEvent, out: TextIO) -> None:
    """Prints a human's claim, reply or hand-back on its own line (and the prompt again when interactive)."""
    kind = event.WhichOneof("event")
    if kind == "ticket_claimed":
        line = _dim(f"  [{event.ticket_claimed.text}]", out)
    elif kind == "human_reply":
        line = f"{event.human_reply.author_name or 'agent'}> {event.human_reply.text}"
    elif kind == "hand_back":
        line = _dim(f"  [{event.hand_back.text}]", out)
    else:
        return
    prompt = "you> " if out.isatty() else ""
    out.write(f"\r{line}\n{prompt}" if prompt else f"{line}\n")
    out.flush()


async def follow(
    stub: agent_pb2_grpc.AgentServiceStub, conversation_id: str, customer_id: str, out: TextIO
) -> None:
    """Watches the conversation for as long as the session lasts and prints the human side as it arrives.
    Until the conversation exists (before the first message) it waits; a dropped stream resumes from its
    last offset."""
    metadata = ((CUSTOMER_ID_KEY, customer_id),) if customer_id else ()
    position = -1  # unknown: start live
    while True:
        request = agent_pb2.WatchConversationRequest(
            conversation_id=conversation_id, after_offset=max(0, position), live_only=position < 0
        )
        try:
            async for item in stub.WatchConversation(request, metadata=metadata):
                if item.HasField("heartbeat"):
                    position = max(position, item.heartbeat.end_offset)
                    continue
                position = item.event.offset
                if item.event.WhichOneof("event") in LIVE_KINDS:
                    render_live_event(item.event, out)
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                return
            if error.code() == grpc.StatusCode.NOT_FOUND:
                position = 0  # a new conversation: everything from its first event
        await asyncio.sleep(WATCH_RETRY_SECONDS)


async def run(
    addr: str,
    conversation_id: str,
    customer_id: str,
    out: TextIO = sys.stdout,
    auth_config: auth.AuthConfig | None = None,
) -> int:
    """Chats as the `backend` role for `customer_id` (token: `auth_config`, default AuthConfig.for_caller)."""
    caller = auth_config if auth_config is not None else auth.AuthConfig.for_caller(auth.BACKEND)
    async with grpc.aio.insecure_channel(addr, interceptors=auth.client_interceptors(caller)) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)  # type: ignore[no-untyped-call]
        out.write(f"support-chat: conversation {conversation_id} on {addr}. Ctrl-D or /quit to leave.\n")
        watcher = asyncio.create_task(follow(stub, conversation_id, customer_id, out))
        try:
            return await _session(stub, conversation_id, customer_id, out)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)


async def _session(
    stub: agent_pb2_grpc.AgentServiceStub, conversation_id: str, customer_id: str, out: TextIO
) -> int:
    pending: types_pb2.Action | None = None
    while True:
        if pending is not None:
            out.write(_dim(f"  {pending.summary}: y = confirm, n = decline (or just type)\n", out))
        try:
            line = await asyncio.to_thread(input, "you> ")
        except EOFError:
            out.write("\n")
            return 0
        message = line.strip()
        if not message:
            continue
        if message in {"/quit", "/exit"}:
            return 0
        out.write("bot> ")
        out.flush()
        response: agent_pb2.ChatResponse | None
        try:
            if pending is not None and message.lower() in {"y", "n"}:
                response = await press_button(
                    stub, conversation_id, pending, message.lower() == "y", customer_id, out
                )
            else:
                response = await chat_once(stub, conversation_id, message, customer_id, out)
            pending = pending_action(response)
        except grpc.aio.AioRpcError as error:
            pending = None
            out.write(f"\n[error] {error.code().name}: {error.details()}\n")
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                return 1


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="support-chat", description="Chat with the support agent over StreamChat."
    )
    parser.add_argument(
        "--addr",
        default=os.environ.get("AGENT_ADDR", "").strip() or DEFAULT_ADDR,
        help="agent address (default: $AGENT_ADDR or %(default)s)",
    )
    parser.add_argument("--conversation-id", default="", help="continue a conversation (default: a new one)")
    parser.add_argument(
        "--customer-id",
        default=os.environ.get("SUPPORT_CUSTOMER_ID", "").strip() or "cust-001",
        help="the customer you chat as, sent as x-customer-id (default: $SUPPORT_CUSTOMER_ID or %(default)s)",
    )
    args = parser.parse_args(argv)
    conversation_id = args.conversation_id or f"cli-{uuid.uuid4().hex[:12]}"
    try:
        # The backend token from AUTH_TOKEN, AUTH_TOKENS_BACKEND or AUTH_CREDENTIALS_FILE (data/credentials.json).
        caller = auth.AuthConfig.for_caller(auth.BACKEND)
    except ConfigError as error:
        print(f"support-chat: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        code = asyncio.run(run(args.addr, conversation_id, args.customer_id, auth_config=caller))
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)
