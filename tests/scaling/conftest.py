"""Scaling fixtures: a real `redis-server` per session, both conversation stores behind one factory, and
in-process retrieval, tools and agent replicas on port 0.

Agent replicas are built by the real `start_server`; `redis_url=` selects the Redis store exactly as
`REDIS_URL` does in production.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from agent_service.adapters.redis_store import RedisConversationStore
from agent_service.adapters.sqlite_store import SqliteConversationStore
from agent_service.conversation_store import ConversationStore
from agent_service.server import StartedServer as AgentStarted
from agent_service.server import start_server as start_agent_server
from devstack import free_port
from devstack.credentials import caller_interceptors
from devstack.inprocess import agent_config, kb_documents, loopback, retrieval_config, tools_config
from devstack.inprocess import ingest as ingest_documents
from retrieval_service.adapters.embedding import MiniLMEmbedding
from retrieval_service.server import StartedServer as RetrievalStarted
from retrieval_service.server import start_server as start_retrieval_server
from support.v1 import agent_pb2_grpc
from tools_service.server import StartedServer as ToolsStarted
from tools_service.server import start_server as start_tools_server

CUSTOMER = (("x-customer-id", "cust-001"),)
# A few sample-KB documents: enough for relevant hits, small enough to ingest in well under a second.
KB_DOCS = ("order-tracking.md", "returns.md", "refund-policy.md", "shipping-delivery-times.md")

StoreFactory = Callable[[], ConversationStore]


def _redis_binary() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


@dataclasses.dataclass
class RedisServer:
    """A throwaway redis-server process on a free loopback port (no persistence)."""

    process: subprocess.Popen[bytes]
    url: str
    workdir: Path


def start_redis(workdir: Path, port: int | None = None) -> RedisServer:
    """Starts redis-server (skips the test when it is not installed) and waits until it answers PING."""
    binary = _redis_binary()
    if binary is None:
        pytest.skip("redis-server is not installed (make test installs Debian's redis-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = (workdir / "redis.log").open("w")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    command += ["--dir", str(workdir), "--protected-mode", "yes"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_redis(RedisServer(process, url, workdir))
                pytest.fail(f"redis-server did not start: {(workdir / 'redis.log').read_text()[-2000:]}")
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                time.sleep(0.05)
    finally:
        client.close()
    return RedisServer(process, url, workdir)


def stop_redis(server: RedisServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port (no persistence), for the whole session."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        stop_redis(server)


@pytest.fixture
def key_prefix() -> str:
    """A key prefix of its own per test, so tests never see each other's keys."""
    return f"test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture(params=["sqlite", "redis"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens stores over ONE shared backing (a SQLite file, or a Redis key prefix): each call is a "replica"."""
    opened: list[ConversationStore] = []
    if request.param == "sqlite":
        path = tmp_path / "agent.sqlite3"

        def open_store() -> ConversationStore:
            store = SqliteConversationStore(path)
            opened.append(store)
            return store

    else:
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("key_prefix")

        def open_store() -> ConversationStore:
            store = RedisConversationStore.from_url(url, key_prefix=prefix)
            opened.append(store)
            return store

    yield open_store
    for store in opened:
        await store.close()


@pytest.fixture
def chroma_port(tmp_path: Path) -> Iterator[int]:
    """A real `chroma run` server on a free loopback port (the shared vector store of retrieval replicas)."""
    binary = shutil.which("chroma", path=str(Path(sys.executable).parent)) or shutil.which("chroma")
    if binary is None:
        pytest.skip("the `chroma` CLI is not installed (it ships with the chromadb package)")
    port = free_port()
    log = (tmp_path / "chroma.log").open("w")
    command = [binary, "run", "--path", str(tmp_path / "chroma"), "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"chroma run did not start: {(tmp_path / 'chroma.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)  # a starting subprocess: nothing to wait on but its port
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


# --- in-process services ---------------------------------------------------------------------------------


StartRetrieval = Callable[..., Awaitable[RetrievalStarted]]


@pytest.fixture
async def start_retrieval(tmp_path: Path, embedding: MiniLMEmbedding) -> AsyncIterator[StartRetrieval]:
    """Starts a retrieval replica on its own DATA_DIR and (unless `ingest=False`) ingests the small KB over RPC.
    Other keyword arguments override Config fields (`chroma_host=`/`chroma_port=` for a Chroma server)."""
    running: list[RetrievalStarted] = []

    async def start(name: str, *, ingest: bool = True, **overrides: Any) -> RetrievalStarted:
        config = retrieval_config(tmp_path / name, **overrides)
        started = await start_retrieval_server(config, embedding=embedding)
        running.append(started)
        if ingest:
            await ingest_documents(loopback(started.port), kb_documents(KB_DOCS))
        return started

    yield start
    for started in running:
        await started.stop(None)


@pytest.fixture
async def tools(tmp_path: Path) -> AsyncIterator[ToolsStarted]:
    started = await start_tools_server(tools_config(tmp_path / "tools"))
    yield started
    await started.stop(None)


@dataclasses.dataclass
class Replica:
    started: AgentStarted
    stub: agent_pb2_grpc.AgentServiceStub
    name: str


StartAgent = Callable[..., Awaitable[Replica]]


@pytest.fixture
async def start_agent(tmp_path: Path, tools: ToolsStarted) -> AsyncIterator[StartAgent]:
    """Starts an agent replica through `start_server`. `retrieval_addr=` is required; `redis_url=` (and
    `redis_key_prefix=`) put its conversations on Redis; other keyword arguments override Config fields."""
    running: list[tuple[AgentStarted, grpc.aio.Channel]] = []

    async def start(name: str, *, retrieval_addr: str, **overrides: Any) -> Replica:
        # Each replica has its own data dir: with Redis, nothing on disk is shared.
        dials = {"retrieval_addr": retrieval_addr, "tools_addr": loopback(tools.port)}
        started = await start_agent_server(agent_config(tmp_path / name, **{**dials, **overrides}))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{started.port}", interceptors=caller_interceptors())
        running.append((started, channel))
        stub = agent_pb2_grpc.AgentServiceStub(channel)  # type: ignore[no-untyped-call]
        return Replica(started, stub, name)

    yield start
    for started, channel in running:
        await channel.close()
        await started.stop(None)


async def wait_for(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Polls `predicate` on the event loop until it holds; fails the test after `within` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.01)
