"""Faults: a dependency stopped or hung, the model failing in every way, the vector store's files destroyed.
Every turn must answer or escalate within its deadline (never an RPC error), and health must tell the truth.

Timeouts are set small so each fault costs about a second: tool calls 1 s, retrieval 1 s, model 1 s.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web

from devstack import REPO_ROOT, health_status, isolated_environ
from devstack.credentials import role_channel, shared_test_credentials
from devstack.inprocess import InProcessStack, kb_documents
from retrieval_service.adapters.embedding import MiniLMEmbedding
from support.v1 import agent_pb2, retrieval_pb2, retrieval_pb2_grpc
from testkit.scripted_openai import Reply, ScriptedOpenAIServer, ToolCallSpec

pytestmark = pytest.mark.slow

CUSTOMER = (("x-customer-id", "cust-001"),)
SERVING, NOT_SERVING = 1, 2
TURN_DEADLINE = 12.0  # what the caller allows a turn under faults; the settings below need far less
FAST = {
    "tool_call_timeout_seconds": 1.0,
    "retrieval_timeout_seconds": 1.0,
    "model_timeout_seconds": 1.0,
    "model_max_retries": 1,
    "breaker_failure_threshold": 2,
}
MESSAGES = {
    "kb": "How long does express shipping take?",
    "order": "Where is my order ORD-12345?",
    "angry": "This is ridiculous, I was promised next-day delivery!",
}


class HungServer:
    """A gRPC server that accepts every call of `service` and never answers (until stopped)."""

    def __init__(self, service: str, methods: list[str]) -> None:
        self._release = asyncio.Event()

        async def hang(_request: bytes, _context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            await self._release.wait()
            return b""

        handlers = {name: grpc.unary_unary_rpc_method_handler(hang) for name in methods}
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def start(self) -> str:
        await self.server.start()
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self._release.set()
        await self.server.stop(None)


TOOLS_METHODS = [
    "ListTools",
    "ExecuteTool",
    "LookupOrderStatus",
    "EscalateToHuman",
    "GetTicket",
    "ListTickets",
]
TOOLS_METHODS += ["ClaimTicket", "ResolveTicket", "AppendTicketMessage"]
RETRIEVAL_METHODS = ["Search", "IngestDocuments", "DeleteDocuments", "GetStats"]


SHIPPING_DOCS = ("shipping-delivery-times.md", "order-tracking.md", "refund-policy.md", "returns.md")


@dataclass
class Outcome:
    reply: agent_pb2.ChatResponse
    seconds: float


async def turn(
    stack: InProcessStack,
    conversation: str,
    message: str,
    stream: bool = False,
    deadline: float = TURN_DEADLINE,
) -> Outcome:
    """One turn; fails the test on any RPC error or a missed deadline; the reply must answer or escalate."""
    stub = stack.agent_stub()
    started = time.monotonic()
    if stream:
        final = None
        async for event in stub.StreamChat(
            agent_pb2.StreamChatRequest(conversation_id=conversation, message=message),
            metadata=CUSTOMER,
            timeout=deadline,
        ):
            if event.HasField("final"):
                final = event.final
        assert final is not None, "the stream ended without a final event"
        reply = final
    else:
        reply = await stub.Chat(
            agent_pb2.ChatRequest(conversation_id=conversation, message=message),
            metadata=CUSTOMER,
            timeout=deadline,
        )
    seconds = time.monotonic() - started
    assert reply.reply.strip() or reply.escalation.ticket_id, reply
    return Outcome(reply, seconds)


StartStack = Callable[..., Awaitable[InProcessStack]]


@pytest.fixture
async def start_stack(tmp_path: Path, embedding: MiniLMEmbedding) -> AsyncIterator[StartStack]:
    stacks: list[InProcessStack] = []

    async def start(**kwargs: Any) -> InProcessStack:
        overrides = {**FAST, **kwargs.pop("agent_overrides", {})}
        stack = await InProcessStack(
            tmp_path / f"stack{len(stacks)}",
            embedding,
            documents=kwargs.pop("documents", kb_documents(SHIPPING_DOCS)),
            agent_overrides=overrides,
            **kwargs,
        ).start()
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:
        await stack.stop()


async def _agent_health(stack: InProcessStack) -> int:
    return await health_status(stack.agent_addr, "support.v1.AgentService")


async def _wait_health(addr: str, service: str, wanted: int, within: float = 8.0) -> int:
    deadline = time.monotonic() + within
    status = await health_status(addr, service)
    while status != wanted and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        status = await health_status(addr, service)
    return status


# ---- tools service --------------------------------------------------------------------------------------------


async def test_tools_stopped(start_stack: StartStack) -> None:
    stack = await start_stack()
    await stack.tools.stop(0)
    order = await turn(stack, "f-tools-down", MESSAGES["order"])
    assert order.seconds < 5.0
    lookups = [call for call in order.reply.tool_calls if call.name == "lookup_order_status"]
    assert all(call.is_error for call in lookups)
    assert "1Z999AA10123456784" not in order.reply.reply
    await turn(stack, "f-tools-down-2", MESSAGES["angry"])  # the escalation cannot be filed: still an answer
    await turn(stack, "f-tools-down-3", MESSAGES["kb"], stream=True)


async def test_tools_hung(start_stack: StartStack) -> None:
    hung = HungServer("support.v1.ToolsService", TOOLS_METHODS)
    addr = await hung.start()
    try:
        stack = await start_stack(agent_overrides={"tools_addr": addr})
        for index, message in enumerate(MESSAGES.values()):
            outcome = await turn(stack, f"f-tools-hung-{index}", message, stream=index % 2 == 1)
            # ListTools, then one tool call or the escalation: each bounded by the 1 s tool deadline.
            assert outcome.seconds < 6.0, outcome.seconds
    finally:
        await hung.stop()


# ---- retrieval service ----------------------------------------------------------------------------------------


async def test_retrieval_stopped(start_stack: StartStack) -> None:
    stack = await start_stack()
    await stack.retrieval.stop(0)
    kb = await turn(stack, "f-ret-down", MESSAGES["kb"])
    assert kb.seconds < 5.0
    assert kb.reply.knowledge_gap and not kb.reply.sources
    order = await turn(stack, "f-ret-down-2", MESSAGES["order"], stream=True)
    assert "1Z999AA10123456784" in order.reply.reply  # tools still work without the knowledge base


async def test_retrieval_hung(start_stack: StartStack) -> None:
    hung = HungServer("support.v1.RetrievalService", RETRIEVAL_METHODS)
    addr = await hung.start()
    try:
        stack = await start_stack(agent_overrides={"retrieval_addr": addr})
        kb = await turn(stack, "f-ret-hung", MESSAGES["kb"])
        assert kb.seconds < 5.0 and kb.reply.knowledge_gap
        order = await turn(stack, "f-ret-hung-2", MESSAGES["order"], stream=True)
        assert order.seconds < 5.0 and "1Z999AA10123456784" in order.reply.reply
    finally:
        await hung.stop()


def _destroy_store(stack: InProcessStack) -> None:
    """Overwrites every file of the retrieval service's Chroma store with garbage (it keeps running)."""
    root = stack.agent_config.data_dir.parent / "retrieval"
    files = [path for path in root.rglob("*") if path.is_file()]
    assert files, "the store has files"
    for path in files:
        path.write_bytes(b"\x00garbage" * 64)


async def test_chroma_files_destroyed(start_stack: StartStack) -> None:
    """The vector store's files are destroyed under a running retrieval service: turns still answer."""
    stack = await start_stack()
    _destroy_store(stack)
    kb = await turn(stack, "f-chroma", MESSAGES["kb"])
    assert kb.seconds < 5.0 and kb.reply.knowledge_gap
    order = await turn(stack, "f-chroma-2", MESSAGES["order"])
    assert "1Z999AA10123456784" in order.reply.reply
    shutil.rmtree(stack.agent_config.data_dir.parent / "retrieval", ignore_errors=True)
    await turn(stack, "f-chroma-3", MESSAGES["kb"], stream=True)
    assert await health_status(stack.retrieval_addr) in (SERVING, NOT_SERVING)  # the process survived


async def test_damaged_store_is_unavailable_and_not_serving(start_stack: StartStack) -> None:
    stack = await start_stack()
    _destroy_store(stack)
    async with role_channel(stack.retrieval_addr) as channel:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Search(retrieval_pb2.SearchRequest(query="express shipping"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value
    status = await _wait_health(stack.retrieval_addr, "support.v1.RetrievalService", NOT_SERVING)
    assert status == NOT_SERVING


# ---- the model ------------------------------------------------------------------------------------------------


class ModelScript:
    """The scripted model misbehaving in one way; `hang` holds requests until `release()` (so the HTTP server
    can stop at once instead of waiting out its shutdown timeout)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._release = asyncio.Event()

    def release(self) -> None:
        self._release.set()

    async def __call__(self, _request: dict[str, Any]) -> Reply:
        kind = self.kind
        if kind == "hang":
            await self._release.wait()
            return Reply(status=503)
        replies = {
            "500": Reply(status=500),
            "429": Reply(status=429),
            "slow": Reply(content="late", delay=2.0),
            "malformed": Reply(malformed=True),
            "bad-tool-args": Reply(tool_calls=[ToolCallSpec("lookup_order_status", '{"order_id": ')]),
        }
        return replies[kind]


@pytest.mark.parametrize("kind", ["500", "429", "hang", "slow", "malformed", "bad-tool-args"])
async def test_model_failures(start_stack: StartStack, kind: str) -> None:
    script = ModelScript(kind)
    model = ScriptedOpenAIServer(script)
    await model.start()
    try:
        stack = await start_stack(model_base_url=model.base_url)
        outcomes = []
        for index, message in enumerate(MESSAGES.values()):
            outcomes.append(await turn(stack, f"f-model-{kind}-{index}", message, stream=index % 2 == 1))
    finally:
        script.release()
        await model.stop()
    # Chat asked for a completion, StreamChat for a stream: both shapes of the failure were served.
    assert {bool(body.get("stream")) for body in model.requests} == {False, True}
    # Each turn: at most (retries + 1) model timeouts before the offline engine answers.
    assert max(outcome.seconds for outcome in outcomes) < 8.0, [o.seconds for o in outcomes]
    if kind != "bad-tool-args":
        assert all(outcome.reply.usage.fallback for outcome in outcomes), [o.reply.usage for o in outcomes]
        assert "1Z999AA10123456784" in outcomes[1].reply.reply  # the offline engine still looks the order up
        assert outcomes[2].reply.escalation.ticket_id


# ---- health reflects reality ------------------------------------------------------------------------------------


async def test_health_of_stopped_service_and_shutdown(start_stack: StartStack) -> None:
    stack = await start_stack()
    assert await health_status(stack.tools_addr, "support.v1.ToolsService") == SERVING
    await stack.tools.stop(0)
    assert await health_status(stack.tools_addr, "support.v1.ToolsService") == -1  # nothing listens
    assert await _agent_health(stack) in (SERVING, NOT_SERVING)


async def test_agent_health_follows_required_dependencies(start_stack: StartStack) -> None:
    stack = await start_stack()
    assert await _agent_health(stack) == SERVING
    tools_port = stack.tools.port
    await stack.tools.stop(0)
    assert await _wait_health(stack.agent_addr, "support.v1.AgentService", NOT_SERVING) == NOT_SERVING
    # The tools service comes back on the same address: the agent reports SERVING again.
    from dataclasses import replace

    from tools_service.config import Config as ToolsConfig
    from tools_service.server import start_server as start_tools_server

    config = replace(
        ToolsConfig(auth=stack.credentials.server_auth()),
        addr=f"127.0.0.1:{tools_port}",
        data_dir=stack.agent_config.data_dir.parent / "tools",
    )
    stack.tools = await start_tools_server(config)
    assert await _wait_health(stack.agent_addr, "support.v1.AgentService", SERVING) == SERVING


def test_unreadable_store_at_startup_fails_fast(tmp_path: Path) -> None:
    """A retrieval service whose Chroma files are garbage at start-up exits non-zero at once (a supervisor
    restarts or alerts) instead of serving wrong answers or hanging; the agent meanwhile answers knowledge gaps
    (test_retrieval_stopped)."""
    store = tmp_path / "chroma"
    store.mkdir()
    (store / "chroma.sqlite3").write_bytes(b"\x00garbage" * 100)
    env = {**isolated_environ(), **shared_test_credentials().token_environ()}
    env.update(RETRIEVAL_ADDR="127.0.0.1:0", DATA_DIR=str(tmp_path), LOG_LEVEL="WARNING")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "retrieval_service"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=90,
        check=False,
    )
    assert result.returncode != 0
    assert time.monotonic() - started < 60
    assert b"not a database" in result.stdout + result.stderr


class StallingStreamModel:
    """An OpenAI-compatible endpoint that starts a stream (or a JSON body), sends one piece, then stalls."""

    def __init__(self) -> None:
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.requests = 0

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}/v1"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests += 1
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream" if body.get("stream") else "application/json"}
        )
        await response.prepare(request)
        if body.get("stream"):
            chunk = {
                "id": "stall",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "stall",
                "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": "Let me"}, "finish_reason": None}
                ],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        else:
            await response.write(b'{"id": "stall", "choices": [')
        await self._release.wait()
        return response

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()


async def test_model_stalls_mid_response(start_stack: StartStack) -> None:
    """The model sends its first bytes, then nothing: the turn still ends within its deadline (the read
    timeout covers the whole response, not only the first byte)."""
    model = StallingStreamModel()
    base_url = await model.start()
    try:
        stack = await start_stack(model_base_url=base_url)
        chat = await turn(stack, "f-stall-1", MESSAGES["order"])
        streamed = await turn(stack, "f-stall-2", MESSAGES["kb"], stream=True)
    finally:
        await model.stop()
    assert model.requests >= 2
    assert chat.seconds < 8.0 and streamed.seconds < 8.0, (chat.seconds, streamed.seconds)
    assert "1Z999AA10123456784" in chat.reply.reply
