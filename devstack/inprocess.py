"""The three services in this process and event loop, each built by its own `start_server`, on port 0 (real
ChromaDB and SQLite under a data dir). Config builders carry the defaults every test stack shares; keyword
arguments override any Config field (`data_dir` too)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from agent_service.config import Config as AgentConfig
from agent_service.model_port import ModelPort
from agent_service.server import StartedServer as AgentStarted
from agent_service.server import start_server as start_agent_server
from devstack.credentials import Credentials, caller_interceptors, shared_test_credentials
from devstack.services import SAMPLE_KB
from retrieval_service.adapters.embedding import MiniLMEmbedding
from retrieval_service.config import Config as RetrievalConfig
from retrieval_service.server import StartedServer as RetrievalStarted
from retrieval_service.server import start_server as start_retrieval_server
from support.v1 import agent_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc, tools_pb2_grpc
from tools_service.config import Config as ToolsConfig
from tools_service.orders import OrderBackend
from tools_service.server import StartedServer as ToolsStarted
from tools_service.server import start_server as start_tools_server

ANY_LOOPBACK_PORT = "127.0.0.1:0"


def loopback(port: int) -> str:
    return f"127.0.0.1:{port}"


def kb_documents(
    names: Sequence[str] | None = None, kb_dir: Path = SAMPLE_KB
) -> list[retrieval_pb2.Document]:
    """Documents of `kb_dir` (default the sample KB) named by file name: `names` in that order, else every
    top-level Markdown file, sorted."""
    paths = [kb_dir / name for name in names] if names is not None else sorted(kb_dir.glob("*.md"))
    return [
        retrieval_pb2.Document(doc_id=path.name, content=path.read_text(encoding="utf-8")) for path in paths
    ]


def retrieval_config(data_dir: Path, /, **overrides: Any) -> RetrievalConfig:
    """Retrieval on port 0 accepting `shared_test_credentials()` (override `auth=` for others)."""
    config = RetrievalConfig(
        addr=ANY_LOOPBACK_PORT, data_dir=data_dir, auth=shared_test_credentials().server_auth()
    )
    return dataclasses.replace(config, **overrides)


def tools_config(data_dir: Path, /, **overrides: Any) -> ToolsConfig:
    """Tools on port 0 accepting `shared_test_credentials()` (override `auth=` for others)."""
    config = ToolsConfig(
        addr=ANY_LOOPBACK_PORT, data_dir=data_dir, auth=shared_test_credentials().server_auth()
    )
    return dataclasses.replace(config, **overrides)


def agent_config(
    data_dir: Path,
    /,
    *,
    retrieval_addr: str,
    tools_addr: str,
    model_base_url: str | None = None,
    **overrides: Any,
) -> AgentConfig:
    """An agent on port 0 that fails fast on its model (no retries, 5 s timeout); `model_base_url` points it at
    an OpenAI-compatible server (else the offline engine). It accepts `shared_test_credentials()` and calls tools and
    retrieval with their `service` token."""
    config = AgentConfig(
        auth=shared_test_credentials().server_auth(outbound_role="service"),
        addr=ANY_LOOPBACK_PORT,
        retrieval_addr=retrieval_addr,
        tools_addr=tools_addr,
        data_dir=data_dir,
        model_max_retries=0,
        model_retry_backoff_seconds=0.01,
        model_timeout_seconds=5.0,
    )
    if model_base_url is not None:
        config = dataclasses.replace(config, openai_base_url=model_base_url, openai_api_key="test-key")
    return dataclasses.replace(config, **overrides)


async def ingest(
    addr: str, documents: Sequence[retrieval_pb2.Document], credentials: Credentials | None = None
) -> None:
    """IngestDocuments over RPC as kb_admin (the path a real client takes)."""
    async with grpc.aio.insecure_channel(addr, interceptors=caller_interceptors(credentials)) as channel:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)  # type: ignore[no-untyped-call]
        await stub.IngestDocuments(retrieval_pb2.IngestDocumentsRequest(documents=documents), timeout=120)


@dataclass
class InProcessStack:
    """`async with InProcessStack(data_dir) as stack:` starts retrieval (with `documents`, default the sample
    KB, ingested over RPC), tools, then the agent; each service under `<data_dir>/<name>`.

    `*_overrides` replace Config fields of that service; `model` injects the agent's model port,
    `model_base_url` an OpenAI-compatible server, `order_backend` the tools service's orders.
    Every service accepts `credentials` (default `shared_test_credentials()`); `channel()` and the stubs send, per
    call, the token of the role the call means (`devstack.credentials.role_for_call`) unless it carries its
    own `authorization`.
    """

    data_dir: Path
    embedding: MiniLMEmbedding | None = None
    documents: Sequence[retrieval_pb2.Document] | None = None
    model_base_url: str | None = None
    model: ModelPort | None = None
    order_backend: OrderBackend | None = None
    retrieval_overrides: dict[str, Any] = field(default_factory=dict)
    tools_overrides: dict[str, Any] = field(default_factory=dict)
    agent_overrides: dict[str, Any] = field(default_factory=dict)
    credentials: Credentials = field(default_factory=shared_test_credentials)
    retrieval: RetrievalStarted = field(init=False)
    tools: ToolsStarted = field(init=False)
    agent: AgentStarted = field(init=False)
    agent_config: AgentConfig = field(init=False)
    channels: list[grpc.aio.Channel] = field(init=False, default_factory=list)

    async def __aenter__(self) -> InProcessStack:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> InProcessStack:
        """Starts the three services; stops whatever did start when one of them fails."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def _start(self) -> None:
        accepts = {"auth": self.credentials.server_auth()}
        self.retrieval = await start_retrieval_server(
            retrieval_config(self.data_dir / "retrieval", **{**accepts, **self.retrieval_overrides}),
            embedding=self.embedding or MiniLMEmbedding.shared(),
        )
        self.tools = await start_tools_server(
            tools_config(self.data_dir / "tools", **{**accepts, **self.tools_overrides}),
            order_backend=self.order_backend,
        )
        documents = kb_documents() if self.documents is None else self.documents
        if documents:
            await ingest(self.retrieval_addr, documents, self.credentials)
        # `agent_overrides` may point the agent elsewhere (a hung or stopped dependency).
        dials = {
            "retrieval_addr": self.retrieval_addr,
            "tools_addr": self.tools_addr,
            "auth": self.credentials.server_auth(outbound_role="service"),
        }
        self.agent_config = agent_config(
            self.data_dir / "agent", model_base_url=self.model_base_url, **{**dials, **self.agent_overrides}
        )
        self.agent = await start_agent_server(self.agent_config, model=self.model)

    async def stop(self) -> None:
        """Closes the channels it opened, then stops the agent, tools and retrieval (those that started)."""
        for channel in self.channels:
            await channel.close()
        self.channels.clear()
        for name in ("agent", "tools", "retrieval"):
            started: AgentStarted | ToolsStarted | RetrievalStarted | None = getattr(self, name, None)
            if started is not None:
                await started.stop(None)

    @property
    def retrieval_addr(self) -> str:
        return loopback(self.retrieval.port)

    @property
    def tools_addr(self) -> str:
        return loopback(self.tools.port)

    @property
    def agent_addr(self) -> str:
        return loopback(self.agent.port)

    def channel(self, addr: str, interceptors: Sequence[Any] = ()) -> grpc.aio.Channel:
        """A channel closed with the stack; each call without its own `authorization` carries the token of the
        role it means (after `interceptors`)."""
        chain = [*interceptors, *caller_interceptors(self.credentials)]
        channel = grpc.aio.insecure_channel(addr, interceptors=chain)
        self.channels.append(channel)
        return channel

    def agent_stub(self) -> agent_pb2_grpc.AgentServiceStub:
        return agent_pb2_grpc.AgentServiceStub(self.channel(self.agent_addr))  # type: ignore[no-untyped-call]

    def tools_stub(self) -> tools_pb2_grpc.ToolsServiceStub:
        return tools_pb2_grpc.ToolsServiceStub(self.channel(self.tools_addr))  # type: ignore[no-untyped-call]

    def retrieval_stub(self) -> retrieval_pb2_grpc.RetrievalServiceStub:
        return retrieval_pb2_grpc.RetrievalServiceStub(self.channel(self.retrieval_addr))  # type: ignore[no-untyped-call]
