"""AgentClient's own behaviour (metadata, retries, error mapping, deadlines, cancellation) against a scripted
AgentService served by a real in-process gRPC server on port 0."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from support_agent_client import (
    AgentClient,
    AgentError,
    ConversationBusy,
    ConversationNotFound,
    DeadlineExceeded,
    InvalidRequest,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

from devstack import free_port
from support.v1 import agent_pb2, agent_pb2_grpc

OK = "ok"
HANG = "hang"


@dataclasses.dataclass
class Seen:
    method: str
    request: Any
    metadata: dict[str, str]


class ScriptedAgent(agent_pb2_grpc.AgentServiceServicer):  # type: ignore[misc]
    """Each call pops the next action: OK, HANG, or a (StatusCode, message) to abort with."""

    def __init__(self) -> None:
        self.script: list[str | tuple[grpc.StatusCode, str]] = []
        self.seen: list[Seen] = []
        self.stream_events = 3
        self.hang_mid_stream = False
        self.fail_stream_after: tuple[grpc.StatusCode, str] | None = None
        self.cancelled = asyncio.Event()

    async def _act(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        metadata = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
        self.seen.append(Seen(method, request, metadata))
        action = self.script.pop(0) if self.script else OK
        if action == HANG:
            await asyncio.Event().wait()
        if isinstance(action, tuple):
            code, message = action
            await context.abort(code, message)

    async def Chat(  # noqa: N802 (generated servicer method name)
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ChatResponse:
        await self._act("Chat", request, context)
        return agent_pb2.ChatResponse(
            conversation_id=request.conversation_id, turn_id=request.turn_id, reply=f"echo: {request.message}"
        )

    async def StreamChat(  # noqa: N802 (generated servicer method name)
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        await self._act("StreamChat", request, context)
        try:
            for index in range(self.stream_events):
                yield agent_pb2.StreamChatResponse(text_delta=agent_pb2.TextDelta(text=f"part{index} "))
                if self.fail_stream_after is not None:
                    await context.abort(*self.fail_stream_after)
                if self.hang_mid_stream:
                    await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        yield agent_pb2.StreamChatResponse(
            final=agent_pb2.ChatResponse(turn_id=request.turn_id, reply="done")
        )

    async def GetConversation(  # noqa: N802 (generated servicer method name)
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> agent_pb2.GetConversationResponse:
        await self._act("GetConversation", request, context)
        return agent_pb2.GetConversationResponse(conversation_id=request.conversation_id)


@dataclasses.dataclass
class Fake:
    servicer: ScriptedAgent
    target: str


@pytest_asyncio.fixture
async def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Fake]:
    # The client finds no credentials here (it would otherwise read the session's test credentials file).
    monkeypatch.setenv("AUTH_CREDENTIALS_FILE", str(tmp_path / "no-credentials.json"))
    servicer = ScriptedAgent()
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Fake(servicer, f"127.0.0.1:{port}")
    finally:
        await server.stop(None)


async def test_metadata_carries_customer_token_and_request_id(fake: Fake) -> None:
    async with AgentClient(
        fake.target, customer_id="cust-001", auth_token="s3cret-token", timeout=5
    ) as client:
        await client.chat("c-1", "hi", request_id="req-9")
        await client.get_conversation("c-1", customer_id="cust-002")

    chat, get = fake.servicer.seen
    assert chat.metadata["x-customer-id"] == "cust-001"
    assert chat.metadata["authorization"] == "Bearer s3cret-token"
    assert chat.metadata["x-request-id"] == "req-9"
    assert get.metadata["x-customer-id"] == "cust-002"
    assert "x-request-id" not in get.metadata


async def test_no_customer_id_sends_no_header(fake: Fake) -> None:
    async with AgentClient(fake.target, timeout=5) as client:
        await client.chat("c-1", "hi")

    assert "x-customer-id" not in fake.servicer.seen[0].metadata
    assert "authorization" not in fake.servicer.seen[0].metadata


async def test_chat_retries_unavailable_once_with_the_same_turn_id(fake: Fake) -> None:
    fake.servicer.script = [(grpc.StatusCode.UNAVAILABLE, "restarting")]
    async with AgentClient(fake.target, timeout=5, retry_backoff=0.01) as client:
        response = await client.chat("c-1", "hi")

    first, second = fake.servicer.seen
    assert first.request.turn_id and first.request.turn_id == second.request.turn_id
    assert response.turn_id == first.request.turn_id
    assert response.reply == "echo: hi"


async def test_generated_turn_ids_differ_between_calls(fake: Fake) -> None:
    async with AgentClient(fake.target, timeout=5) as client:
        await client.chat("c-1", "one")
        await client.chat("c-1", "two", turn_id="mine")

    generated, given = (seen.request.turn_id for seen in fake.servicer.seen)
    assert generated and generated != "mine"
    assert given == "mine"


async def test_unavailable_twice_raises_unavailable_after_two_attempts(fake: Fake) -> None:
    fake.servicer.script = [
        (grpc.StatusCode.UNAVAILABLE, "down"),
        (grpc.StatusCode.UNAVAILABLE, "still down"),
    ]
    async with AgentClient(fake.target, timeout=5, retry_backoff=0.01) as client:
        with pytest.raises(Unavailable) as caught:
            await client.chat("c-1", "hi")

    assert len(fake.servicer.seen) == 2
    assert caught.value.details == "still down"
    assert caught.value.retryable


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.ABORTED, ConversationBusy),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, Overloaded),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.NOT_FOUND, ConversationNotFound),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequest),
        (grpc.StatusCode.INTERNAL, AgentError),
    ],
)
async def test_status_codes_map_to_the_exception_tree_without_retry(
    fake: Fake, code: grpc.StatusCode, kind: type[AgentError]
) -> None:
    fake.servicer.script = [(code, f"server says {code.name}")]
    async with AgentClient(fake.target, timeout=5, retry_backoff=0.01) as client:
        with pytest.raises(AgentError) as caught:
            await client.chat("c-1", "hi")

    assert type(caught.value) is kind
    assert caught.value.code == code
    assert caught.value.details == f"server says {code.name}"
    assert code.name in str(caught.value)
    assert len(fake.servicer.seen) == 1, "only UNAVAILABLE is retried"


async def test_invalid_request_without_rich_details_has_no_field_violations(fake: Fake) -> None:
    fake.servicer.script = [(grpc.StatusCode.INVALID_ARGUMENT, "message: is required")]
    async with AgentClient(fake.target, timeout=5) as client:
        with pytest.raises(InvalidRequest) as caught:
            await client.chat("c-1", "hi")

    assert caught.value.field_violations == ()
    assert caught.value.details == "message: is required"


async def test_timeout_raises_deadline_exceeded(fake: Fake) -> None:
    fake.servicer.script = [HANG]
    async with AgentClient(fake.target, timeout=5) as client:
        with pytest.raises(DeadlineExceeded):
            await client.chat("c-1", "hi", timeout=0.2)

    assert len(fake.servicer.seen) == 1


async def test_get_conversation_retries_unavailable(fake: Fake) -> None:
    fake.servicer.script = [(grpc.StatusCode.UNAVAILABLE, "blip")]
    async with AgentClient(fake.target, timeout=5, retry_backoff=0.01) as client:
        response = await client.get_conversation("c-7")

    assert response.conversation_id == "c-7"
    assert [seen.method for seen in fake.servicer.seen] == ["GetConversation", "GetConversation"]


async def test_stream_chat_yields_deltas_then_final(fake: Fake) -> None:
    async with AgentClient(fake.target, timeout=5) as client:
        kinds = [event.WhichOneof("event") async for event in client.stream_chat("c-1", "hi", turn_id="t-s")]

    assert kinds == ["text_delta", "text_delta", "text_delta", "final"]
    assert fake.servicer.seen[0].request.turn_id == "t-s"


async def test_stream_chat_retries_unavailable_before_the_first_event(fake: Fake) -> None:
    fake.servicer.script = [(grpc.StatusCode.UNAVAILABLE, "restarting")]
    async with AgentClient(fake.target, timeout=5, retry_backoff=0.01) as client:
        events = [event async for event in client.stream_chat("c-1", "hi")]

    first, second = fake.servicer.seen
    assert first.request.turn_id == second.request.turn_id
    assert events[-1].final.reply == "done"


async def test_stream_chat_does_not_retry_after_events_arrived(fake: Fake) -> None:
    fake.servicer.fail_stream_after = (grpc.StatusCode.UNAVAILABLE, "lost mid-stream")
    received: list[str] = []
    async with AgentClient(fake.target, timeout=5, retry_backoff=0.01) as client:
        with pytest.raises(Unavailable, match="lost mid-stream"):
            async for event in client.stream_chat("c-1", "hi"):
                received.append(event.text_delta.text)

    assert received == ["part0 "]
    assert len(fake.servicer.seen) == 1


async def test_leaving_a_stream_early_cancels_the_call(fake: Fake) -> None:
    fake.servicer.hang_mid_stream = True
    async with AgentClient(fake.target, timeout=5) as client:
        stream = client.stream_chat("c-1", "hi")
        async for _ in stream:
            break
        await stream.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(fake.servicer.cancelled.wait(), timeout=5)

    assert fake.servicer.cancelled.is_set()


async def test_unreachable_agent_raises_unavailable() -> None:
    async with AgentClient(f"127.0.0.1:{free_port()}", timeout=5, retry_backoff=0.01) as client:
        with pytest.raises(Unavailable):
            await client.chat("c-1", "hi")


async def test_a_channel_passed_in_stays_open(fake: Fake) -> None:
    async with grpc.aio.insecure_channel(fake.target) as channel:
        async with AgentClient("ignored", channel=channel, timeout=5) as client:
            await client.chat("c-1", "first")
        async with AgentClient("ignored", channel=channel, timeout=5) as client:
            response = await client.chat("c-1", "second")

    assert response.reply == "echo: second"


async def test_closed_client_refuses_calls(fake: Fake) -> None:
    client = AgentClient(fake.target, timeout=5)
    await client.chat("c-1", "hi")
    await client.close()
    with pytest.raises(RuntimeError, match="closed"):
        await client.chat("c-1", "again")


def test_constructor_validates_and_repr_hides_the_token() -> None:
    with pytest.raises(ValueError, match="timeout"):
        AgentClient("x:1", timeout=0)
    with pytest.raises(ValueError, match="auth_token"):
        AgentClient("x:1", auth_token="has space")
    client = AgentClient("x:1", auth_token="very-secret-token")
    assert "very-secret-token" not in repr(client)
    assert "auth_token='set'" not in repr(client) and "auth_token=set" in repr(client)
