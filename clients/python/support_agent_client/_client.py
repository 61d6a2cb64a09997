"""AgentClient: a thin typed async client for support.v1.AgentService over grpc.aio."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from support.v1 import agent_pb2, agent_pb2_grpc
from support_agent_client._errors import AgentError, DeadlineExceeded, from_rpc_error

logger = logging.getLogger(__name__)

CUSTOMER_ID_KEY = "x-customer-id"
AUTHORIZATION_KEY = "authorization"
REQUEST_ID_KEY = "x-request-id"
DEFAULT_CREDENTIALS_FILE = "data/credentials.json"
CALLER_ROLE = "backend"
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_RETRY_BACKOFF_SECONDS = 0.1
RECONNECT_BACKOFF_SECONDS = 0.1
DEFAULT_MAX_RECONNECT_BACKOFF_SECONDS = 2.0
# A watch that ends with one of these is reopened from its last offset.
RESUMABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)

Metadata = tuple[tuple[str, str], ...]


def new_turn_id() -> str:
    """A fresh client turn id. Keep it to retry a turn yourself: the agent returns the stored result."""
    return uuid.uuid4().hex


def configured_token(role: str = CALLER_ROLE) -> str | None:
    """The token a caller acting as `role` finds in its environment: AUTH_TOKEN, else the first of
    AUTH_TOKENS_<ROLE>, else the role's first token in AUTH_CREDENTIALS_FILE (default data/credentials.json,
    which the repository's `make run` writes). None when there is none."""
    token = os.environ.get("AUTH_TOKEN", "").strip()
    if token:
        return token
    listed = [item.strip() for item in os.environ.get(f"AUTH_TOKENS_{role.upper()}", "").split(",")]
    if any(listed):
        return next(item for item in listed if item)
    path = Path(os.environ.get("AUTH_CREDENTIALS_FILE", "").strip() or DEFAULT_CREDENTIALS_FILE)
    try:
        credentials = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    tokens = credentials.get(role) if isinstance(credentials, dict) else None
    if isinstance(tokens, str):
        return tokens or None
    if isinstance(tokens, list) and tokens and isinstance(tokens[0], str):
        return tokens[0] or None
    return None


def _check_timeout(timeout: float | None, name: str = "timeout") -> None:
    if timeout is not None and timeout <= 0:
        raise ValueError(f"{name} must be > 0 seconds or None, got {timeout!r}")


class AgentClient:
    """Async client for `support.v1.AgentService`.

        async with AgentClient("127.0.0.1:50051", customer_id="cust-001") as client:
            response = await client.chat("conv-1", "Where is my order ORD-12345?")

    `target` is any gRPC target (`host:port`, `dns:///name:port`). The channel is insecure unless
    `credentials` is given; pass `channel=` to use (and keep owning) a channel you built yourself.
    `customer_id` and `auth_token` are sent as `x-customer-id` and `authorization: Bearer <token>` metadata on
    every call (a per-call `customer_id=` overrides the default). The agent serves a customer-facing backend
    acting for one customer: both are required. Without `auth_token`, the client uses `configured_token()`:
    AUTH_TOKEN, AUTH_TOKENS_BACKEND or the `backend` token of AUTH_CREDENTIALS_FILE (default
    data/credentials.json, written by `make run`); pass `auth_token=""` to send none. `timeout` (seconds, None for none) bounds each
    call including its one retry. Calls fail with an `AgentError` subclass, never a raw grpc error.
    """

    def __init__(
        self,
        target: str,
        *,
        customer_id: str | None = None,
        auth_token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
        channel: grpc.aio.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        wait_for_ready: bool = False,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF_SECONDS,
    ) -> None:
        _check_timeout(timeout)
        if retry_backoff < 0:
            raise ValueError(f"retry_backoff must be >= 0, got {retry_backoff!r}")
        if auth_token and any(char.isspace() for char in auth_token):
            raise ValueError("auth_token must be a non-empty token without whitespace")
        if auth_token is None:
            auth_token = configured_token()
        if channel is not None and credentials is not None:
            raise ValueError("pass either channel= or credentials=, not both")
        self.target = target
        self.customer_id = customer_id
        self.timeout = timeout
        self._auth_token = auth_token
        self._credentials = credentials
        self._options = tuple(options)
        self._wait_for_ready = wait_for_ready
        self._retry_backoff = retry_backoff
        self._channel = channel
        self._owns_channel = channel is None
        self._stub: Any = None
        self._closed = False

    def __repr__(self) -> str:  # never prints the token
        return (
            f"AgentClient(target={self.target!r}, customer_id={self.customer_id!r}, "
            f"auth_token={'set' if self._auth_token else 'unset'}, timeout={self.timeout!r})"
        )

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def __aenter__(self) -> AgentClient:
        self._agent_stub()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        """Closes the channel if this client created it (a channel passed in stays open)."""
        self._closed = True
        if self._owns_channel and self._channel is not None:
            await self._channel.close(grace)
        self._channel = None
        self._stub = None

    def _agent_stub(self) -> Any:
        if self._closed:
            raise RuntimeError("AgentClient is closed")
        if self._stub is None:
            if self._channel is None:
                if self._credentials is not None:
                    self._channel = grpc.aio.secure_channel(self.target, self._credentials, self._options)
                else:
                    self._channel = grpc.aio.insecure_channel(self.target, self._options)
            self._stub = agent_pb2_grpc.AgentServiceStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub

    # --- calls -----------------------------------------------------------------------------------------------

    async def chat(
        self,
        conversation_id: str,
        message: str,
        *,
        turn_id: str | None = None,
        customer_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline, not an asyncio timeout)
        request_id: str | None = None,
    ) -> agent_pb2.ChatResponse:
        """Runs one turn and returns the agent's reply.

        A turn id is generated when `turn_id` is None, so the one automatic retry on UNAVAILABLE cannot
        duplicate the turn (the agent replays the stored result; `response.replayed` tells).
        """
        request = agent_pb2.ChatRequest(
            conversation_id=conversation_id, message=message, turn_id=turn_id or new_turn_id()
        )
        response: agent_pb2.ChatResponse = await self._unary(
            self._agent_stub().Chat, request, self._metadata(customer_id, request_id), timeout
        )
        return response

    async def stream_chat(
        self,
        conversation_id: str,
        message: str,
        *,
        turn_id: str | None = None,
        customer_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline, not an asyncio timeout)
        request_id: str | None = None,
    ) -> AsyncIterator[agent_pb2.StreamChatResponse]:
        """Runs one turn as a stream of events; the last one has `final` set (the same content as chat()).

        UNAVAILABLE before the first event is retried once with the same turn id; after that it is raised.
        Leaving the loop early cancels the call (use `contextlib.aclosing` to make that immediate).
        """
        request = agent_pb2.StreamChatRequest(
            conversation_id=conversation_id, message=message, turn_id=turn_id or new_turn_id()
        )
        metadata = self._metadata(customer_id, request_id)
        deadline = self._deadline(timeout)
        for attempt in range(2):
            call = self._agent_stub().StreamChat(
                request,
                metadata=metadata,
                timeout=self._remaining(deadline),
                wait_for_ready=self._wait_for_ready,
            )
            received = False
            try:
                async for event in call:
                    received = True
                    yield event
                return
            except grpc.aio.AioRpcError as error:
                if attempt == 0 and not received and await self._may_retry(error, deadline):
                    continue
                raise from_rpc_error(error) from error
            finally:
                call.cancel()

    async def get_conversation(
        self,
        conversation_id: str,
        *,
        customer_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline, not an asyncio timeout)
        request_id: str | None = None,
    ) -> agent_pb2.GetConversationResponse:
        """The transcript and state of a conversation (a read: retried once on UNAVAILABLE)."""
        request = agent_pb2.GetConversationRequest(conversation_id=conversation_id)
        response: agent_pb2.GetConversationResponse = await self._unary(
            self._agent_stub().GetConversation, request, self._metadata(customer_id, request_id), timeout
        )
        return response

    async def confirm_action(
        self,
        conversation_id: str,
        action_id: str,
        *,
        turn_id: str | None = None,
        customer_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline, not an asyncio timeout)
        request_id: str | None = None,
    ) -> agent_pb2.ChatResponse:
        """The customer confirmed the pending action (e.g. a button): it runs once; the reply says what
        happened and `response.action` holds the outcome. Retried once on UNAVAILABLE with the same turn id
        (the agent then returns the first response; it never runs twice). `ActionNotPending` when it was
        already decided."""
        request = agent_pb2.ConfirmActionRequest(
            conversation_id=conversation_id, action_id=action_id, turn_id=turn_id or new_turn_id()
        )
        response: agent_pb2.ConfirmActionResponse = await self._unary(
            self._agent_stub().ConfirmAction, request, self._metadata(customer_id, request_id), timeout
        )
        return response.response

    async def decline_action(
        self,
        conversation_id: str,
        action_id: str,
        *,
        turn_id: str | None = None,
        customer_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline, not an asyncio timeout)
        request_id: str | None = None,
    ) -> agent_pb2.ChatResponse:
        """The customer declined the pending action: it is dropped and nothing runs."""
        request = agent_pb2.DeclineActionRequest(
            conversation_id=conversation_id, action_id=action_id, turn_id=turn_id or new_turn_id()
        )
        response: agent_pb2.DeclineActionResponse = await self._unary(
            self._agent_stub().DeclineAction, request, self._metadata(customer_id, request_id), timeout
        )
        return response.response

    async def watch(
        self,
        conversation_id: str,
        *,
        after_offset: int = 0,
        live_only: bool = False,
        customer_id: str | None = None,
        heartbeats: bool = False,
        heartbeat_seconds: int = 0,
        max_reconnect_backoff: float = DEFAULT_MAX_RECONNECT_BACKOFF_SECONDS,
    ) -> AsyncIterator[agent_pb2.ConversationEvent | agent_pb2.WatchHeartbeat]:
        """Every event of a conversation in order (customer messages, bot replies, escalation, the human's
        claim and replies, the hand-back): those after `after_offset` (0: all; `live_only`: none), then live
        ones, for as long as you iterate.

        A dropped stream (the agent restarted or moved, a proxy cut it, the agent cut off a slow reader) is
        reopened transparently from the last offset received, with a back-off of 0.1 s doubling up to
        `max_reconnect_backoff`: no event is lost or repeated. Errors that retrying cannot fix (unknown
        conversation, not yours, an offset beyond the end) are raised as `AgentError`s. `heartbeats=True` also
        yields the `WatchHeartbeat`s the agent sends while the conversation is idle. Leave the loop (or cancel
        the task) to stop watching.
        """
        position = max(0, after_offset)
        live = live_only
        backoff = RECONNECT_BACKOFF_SECONDS
        metadata = self._metadata(customer_id, None)
        while True:
            request = agent_pb2.WatchConversationRequest(
                conversation_id=conversation_id,
                after_offset=position,
                live_only=live,
                heartbeat_seconds=heartbeat_seconds,
            )
            call = self._agent_stub().WatchConversation(request, metadata=metadata, wait_for_ready=True)
            try:
                async for item in call:
                    backoff = RECONNECT_BACKOFF_SECONDS
                    if item.HasField("event"):
                        if item.event.offset <= position:
                            continue  # never repeated, whatever the server sends
                        position = item.event.offset
                        live = False
                        yield item.event
                    elif heartbeats:
                        yield item.heartbeat
                    if live and item.HasField("heartbeat"):
                        # The stream's start is now known: a reconnect resumes from it, not from "now".
                        position, live = item.heartbeat.end_offset, False
            except grpc.aio.AioRpcError as error:
                if error.code() not in RESUMABLE_CODES:
                    raise from_rpc_error(error) from error
                logger.debug(
                    "watch stream dropped; resuming",
                    extra={"target": self.target, "code": error.code().name, "after_offset": position},
                )
            finally:
                call.cancel()
            await asyncio.sleep(backoff)
            backoff = min(max_reconnect_backoff, backoff * 2)

    # --- plumbing --------------------------------------------------------------------------------------------

    def _metadata(self, customer_id: str | None, request_id: str | None) -> Metadata:
        pairs: list[tuple[str, str]] = []
        customer = customer_id if customer_id is not None else self.customer_id
        if customer:
            pairs.append((CUSTOMER_ID_KEY, customer))
        if self._auth_token:
            pairs.append((AUTHORIZATION_KEY, f"Bearer {self._auth_token}"))
        if request_id:
            pairs.append((REQUEST_ID_KEY, request_id))
        return tuple(pairs)

    def _deadline(self, timeout: float | None) -> float | None:
        _check_timeout(timeout)
        seconds = timeout if timeout is not None else self.timeout
        return None if seconds is None else asyncio.get_running_loop().time() + seconds

    @staticmethod
    def _remaining(deadline: float | None) -> float | None:
        if deadline is None:
            return None
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise DeadlineExceeded(
                "the call's timeout passed before it could be retried", grpc.StatusCode.DEADLINE_EXCEEDED
            )
        return remaining

    async def _may_retry(self, error: grpc.aio.AioRpcError, deadline: float | None) -> bool:
        """True (after a short backoff) when `error` is UNAVAILABLE and time is left for another attempt."""
        if error.code() != grpc.StatusCode.UNAVAILABLE:
            return False
        backoff = self._retry_backoff
        if deadline is not None:
            left = deadline - asyncio.get_running_loop().time()
            if left <= backoff:
                return False
        logger.debug("agent unavailable, retrying once", extra={"target": self.target})
        if backoff:
            await asyncio.sleep(backoff)
        return True

    async def _unary(self, method: Any, request: Any, metadata: Metadata, seconds: float | None) -> Any:
        deadline = self._deadline(seconds)
        for attempt in range(2):
            try:
                return await method(
                    request,
                    metadata=metadata,
                    timeout=self._remaining(deadline),
                    wait_for_ready=self._wait_for_ready,
                )
            except grpc.aio.AioRpcError as error:
                if attempt == 0 and await self._may_retry(error, deadline):
                    continue
                raise from_rpc_error(error) from error
        raise AgentError("unreachable: the retry loop always returns or raises")  # pragma: no cover
