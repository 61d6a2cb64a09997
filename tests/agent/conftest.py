"""agent_service fixtures: real retrieval (a subprocess with the sample KB, once per session), a real tools
service in-process per test, the agent in-process on port 0, and the scripted OpenAI-compatible model."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent_service.config import Config
from agent_service.model_port import ModelPort
from agent_service.server import StartedServer, start_server
from devstack import SAMPLE_KB, ProcessStack, isolated_environ
from devstack.credentials import role_channel
from devstack.inprocess import agent_config, tools_config
from support.v1 import agent_pb2_grpc, tools_pb2_grpc
from testkit.scripted_openai import Reply, Responder, ScriptedOpenAIServer
from tools_service.orders import Order, OrderBackend
from tools_service.server import StartedServer as ToolsStarted
from tools_service.server import start_server as start_tools_server

CUSTOMER = (("x-customer-id", "cust-001"),)


class HungOrderBackend:
    """An order backend that never answers (the tools service's own deadline or ours must cut it off)."""

    async def get_order(self, order_id: str) -> Order | None:
        await asyncio.Event().wait()
        return None

    async def close(self) -> None:
        return None


@pytest.fixture(scope="session")
def retrieval_addr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real retrieval_service process over ChromaDB in a temp dir, with the sample KB ingested."""
    data_dir = tmp_path_factory.mktemp("retrieval-data")
    stack = ProcessStack(
        data_dir, environ=isolated_environ(), env={"LOG_LEVEL": "WARNING"}, log_dir=data_dir / "logs"
    )
    try:
        stack.launch("retrieval")
        asyncio.run(stack.wait_ready("retrieval"))
        asyncio.run(stack.ingest(SAMPLE_KB))
        yield stack.addrs["retrieval"]
    finally:
        stack.stop_all()


@dataclasses.dataclass
class Tools:
    started: ToolsStarted
    stub: tools_pb2_grpc.ToolsServiceStub
    addr: str


@dataclasses.dataclass
class Agent:
    started: StartedServer
    stub: agent_pb2_grpc.AgentServiceStub
    config: Config


StartTools = Callable[..., Awaitable[Tools]]
StartAgent = Callable[..., Awaitable[Agent]]
StartModel = Callable[..., Awaitable[ScriptedOpenAIServer]]


@pytest.fixture
async def start_tools(tmp_path: Path) -> AsyncIterator[StartTools]:
    running: list[tuple[ToolsStarted, grpc.aio.Channel]] = []

    async def start(backend: OrderBackend | None = None, **overrides: Any) -> Tools:
        started = await start_tools_server(
            tools_config(tmp_path / "tools", **overrides), order_backend=backend
        )
        channel = role_channel(f"127.0.0.1:{started.port}")
        running.append((started, channel))
        stub = tools_pb2_grpc.ToolsServiceStub(channel)  # type: ignore[no-untyped-call]
        return Tools(started, stub, f"127.0.0.1:{started.port}")

    yield start
    for started, channel in running:
        await channel.close()
        await started.stop(None)


@pytest.fixture
async def tools(start_tools: StartTools) -> Tools:
    return await start_tools()


@pytest.fixture
async def start_model() -> AsyncIterator[StartModel]:
    servers: list[ScriptedOpenAIServer] = []

    async def start(script: Responder | Sequence[Reply], latency: float = 0.0) -> ScriptedOpenAIServer:
        server = ScriptedOpenAIServer(script, latency=latency)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def start_agent(tmp_path: Path, retrieval_addr: str, tools: Tools) -> AsyncIterator[StartAgent]:
    """Starts an agent wired to the session's retrieval service and this test's tools service.

    `model_server=` points it at a ScriptedOpenAIServer (else the offline engine); `model=` injects a port;
    other keyword arguments override Config fields.
    """
    running: list[tuple[StartedServer, grpc.aio.Channel]] = []

    async def start(
        model_server: ScriptedOpenAIServer | None = None, model: ModelPort | None = None, **overrides: Any
    ) -> Agent:
        dials = {"retrieval_addr": retrieval_addr, "tools_addr": tools.addr}
        config = agent_config(
            tmp_path / "agent",
            model_base_url=None if model_server is None else model_server.base_url,
            **{**dials, **overrides},
        )
        started = await start_server(config, model=model)
        channel = role_channel(f"127.0.0.1:{started.port}")
        running.append((started, channel))
        stub = agent_pb2_grpc.AgentServiceStub(channel)  # type: ignore[no-untyped-call]
        return Agent(started, stub, config)

    yield start
    for started, channel in running:
        await channel.close()
        await started.stop(None)
