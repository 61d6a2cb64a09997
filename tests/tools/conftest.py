"""tools_service fixtures: a real in-process gRPC server on port 0 over SQLite in tmp_path."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from devstack.credentials import role_channel, shared_test_credentials
from support.v1 import tools_pb2_grpc
from tools_service.config import Config
from tools_service.orders import Order, OrderBackend
from tools_service.server import StartedServer, start_server


class HungOrderBackend:
    """Never answers; records that it was called and that it was cancelled."""

    def __init__(self) -> None:
        self.called = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def get_order(self, order_id: str) -> Order | None:
        self.called.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return None

    async def close(self) -> None:
        return None


@dataclasses.dataclass
class Tools:
    started: StartedServer
    channel: grpc.aio.Channel
    stub: tools_pb2_grpc.ToolsServiceStub
    config: Config

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.started.port}"


StartTools = Callable[..., Awaitable[Tools]]


@pytest.fixture
def base_config(tmp_path: Path) -> Config:
    return Config(
        addr="127.0.0.1:0", data_dir=tmp_path / "data", auth=shared_test_credentials().server_auth()
    )


@pytest.fixture
async def start_tools(base_config: Config) -> AsyncIterator[StartTools]:
    """Starts a tools server; keyword overrides go to Config, `backend=` plugs an order backend."""
    running: list[Tools] = []

    async def start(backend: OrderBackend | None = None, **overrides: Any) -> Tools:
        config = dataclasses.replace(base_config, **overrides)
        started = await start_server(config, order_backend=backend)
        channel = role_channel(f"127.0.0.1:{started.port}")
        tools = Tools(started, channel, tools_pb2_grpc.ToolsServiceStub(channel), config)  # type: ignore[no-untyped-call]
        running.append(tools)
        return tools

    yield start
    for tools in running:
        await tools.channel.close()
        await tools.started.stop(None)


@pytest.fixture
async def tools(start_tools: StartTools) -> Tools:
    return await start_tools()


@pytest.fixture
def hung_backend() -> HungOrderBackend:
    return HungOrderBackend()
