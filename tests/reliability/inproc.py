"""The three services in-process on port 0 (real ChromaDB and SQLite under a temp dir), for reliability and
security tests. One embedding model is shared by every retrieval server of the session."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent_service.config import Config as AgentConfig
from agent_service.server import StartedServer as AgentStarted
from agent_service.server import start_server as start_agent_server
from retrieval_service.adapters.embedding import MiniLMEmbedding
from retrieval_service.config import Config as RetrievalConfig
from retrieval_service.server import StartedServer as RetrievalStarted
from retrieval_service.server import start_server as start_retrieval_server
from support.v1 import agent_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc, tools_pb2_grpc
from tools_service.config import Config as ToolsConfig
from tools_service.orders import OrderBackend
from tools_service.server import StartedServer as ToolsStarted
from tools_service.server import start_server as start_tools_server

REPO_ROOT = Path(__file__).resolve().parents[2]
KB_DIR = REPO_ROOT / "kb"
T = TypeVar("T")
CUSTOMER = (("x-customer-id", "cust-001"),)


def kb_documents(kb_dir: Path = KB_DIR) -> list[retrieval_pb2.Document]:
    return [
        retrieval_pb2.Document(doc_id=path.name, content=path.read_text(encoding="utf-8"))
        for path in sorted(kb_dir.glob("*.md"))
    ]


@dataclass
class InProcStack:
    retrieval: RetrievalStarted
    tools: ToolsStarted
    agent: AgentStarted
    agent_config: AgentConfig
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def retrieval_addr(self) -> str:
        return f"127.0.0.1:{self.retrieval.port}"

    @property
    def tools_addr(self) -> str:
        return f"127.0.0.1:{self.tools.port}"

    @property
    def agent_addr(self) -> str:
        return f"127.0.0.1:{self.agent.port}"

    def channel(self, addr: str, interceptors: Sequence[Any] = ()) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(addr, interceptors=list(interceptors) or None)
        self.channels.append(channel)
        return channel

    def agent_stub(self) -> agent_pb2_grpc.AgentServiceStub:
        return agent_pb2_grpc.AgentServiceStub(self.channel(self.agent_addr))  # type: ignore[no-untyped-call]

    def tools_stub(self) -> tools_pb2_grpc.ToolsServiceStub:
        return tools_pb2_grpc.ToolsServiceStub(self.channel(self.tools_addr))  # type: ignore[no-untyped-call]

    def retrieval_stub(self) -> retrieval_pb2_grpc.RetrievalServiceStub:
        return retrieval_pb2_grpc.RetrievalServiceStub(self.channel(self.retrieval_addr))  # type: ignore[no-untyped-call]

    async def stop(self) -> None:
        for channel in self.channels:
            await channel.close()
        await self.agent.stop(None)
        await self.tools.stop(None)
        await self.retrieval.stop(None)


async def start_inproc_stack(
    data_dir: Path,
    embedding: MiniLMEmbedding,
    *,
    model_base_url: str | None = None,
    documents: Sequence[retrieval_pb2.Document] | None = None,
    agent_overrides: dict[str, Any] | None = None,
    tools_overrides: dict[str, Any] | None = None,
    order_backend: OrderBackend | None = None,
) -> InProcStack:
    """Retrieval (with `documents`, default the sample KB, ingested over RPC), tools, then the agent."""
    retrieval = await start_retrieval_server(
        RetrievalConfig(addr="127.0.0.1:0", data_dir=data_dir / "retrieval", collection="support_kb"),
        embedding=embedding,
    )
    tools = await start_tools_server(
        dataclasses.replace(
            ToolsConfig(addr="127.0.0.1:0", data_dir=data_dir / "tools"), **(tools_overrides or {})
        ),
        order_backend=order_backend,
    )
    docs = kb_documents() if documents is None else list(documents)
    if docs:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{retrieval.port}") as channel:
            stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)  # type: ignore[no-untyped-call]
            await stub.IngestDocuments(retrieval_pb2.IngestDocumentsRequest(documents=docs), timeout=120)
    config = AgentConfig(
        addr="127.0.0.1:0",
        retrieval_addr=f"127.0.0.1:{retrieval.port}",
        tools_addr=f"127.0.0.1:{tools.port}",
        data_dir=data_dir / "agent",
        model_max_retries=0,
        model_retry_backoff_seconds=0.01,
        model_timeout_seconds=5.0,
    )
    if model_base_url is not None:
        config = dataclasses.replace(config, openai_base_url=model_base_url, openai_api_key="test-key")
    config = dataclasses.replace(config, **(agent_overrides or {}))
    agent = await start_agent_server(config)
    return InProcStack(retrieval=retrieval, tools=tools, agent=agent, agent_config=config)


async def health_status(addr: str, service: str = "", metadata: Sequence[tuple[str, str]] = ()) -> int:
    """The health status of `service` at `addr` (SERVING is 1); -1 when the check itself fails."""
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2, metadata=tuple(metadata)
            )
        except grpc.aio.AioRpcError:
            return -1
        return int(reply.status)


class LoopThread:
    """An asyncio loop in a daemon thread: servers live there while synchronous tests (Hypothesis, blocking
    gRPC clients) drive them from the main thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="server-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 180.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


def sync_health(addr: str, service: str = "") -> int:
    """Blocking health check; SERVING is 1, -1 when the check fails."""
    with grpc.insecure_channel(addr) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
        except grpc.RpcError:
            return -1
        return int(reply.status)
