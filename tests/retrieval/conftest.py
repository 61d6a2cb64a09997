"""Fixtures for retrieval_service tests: real servers on port 0 (the session's embedding model comes from
tests/conftest.py)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from devstack.credentials import role_channel, shared_test_credentials
from retrieval_service.adapters.embedding import MiniLMEmbedding
from retrieval_service.calibration import load_markdown
from retrieval_service.config import Config
from retrieval_service.knowledge_base import Outcome
from retrieval_service.server import StartedServer, build_knowledge_base, start_server
from support.v1 import retrieval_pb2_grpc
from tests.retrieval.helpers import retrieval_stub

REPO_ROOT = Path(__file__).resolve().parents[2]
KB_DIR = REPO_ROOT / "kb"


@pytest.fixture(scope="session")
def kb_template(tmp_path_factory: pytest.TempPathFactory, embedding: MiniLMEmbedding) -> Path:
    """A data dir whose collection `test_kb` already holds the sample KB (ingested once per session)."""
    data_dir = tmp_path_factory.mktemp("kb-template")
    kb = build_knowledge_base(Config(data_dir=data_dir, collection="test_kb"), embedding)
    report = asyncio.run(kb.ingest(load_markdown(KB_DIR), prune_changed_sections=False))
    assert not report.count(Outcome.REJECTED)
    return data_dir


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(
        addr="127.0.0.1:0",
        data_dir=tmp_path / "data",
        collection="test_kb",
        auth=shared_test_credentials().server_auth(),
    )


@pytest.fixture
def kb_copy(tmp_path: Path) -> Iterator[Path]:
    """A writable copy of the sample knowledge base."""
    target = tmp_path / "kb"
    shutil.copytree(KB_DIR, target)
    yield target


ServerFactory = Callable[..., Any]


@pytest.fixture
async def make_server(config: Config, embedding: MiniLMEmbedding) -> AsyncIterator[ServerFactory]:
    """Starts retrieval servers (config overrides as keyword arguments); all stopped at teardown."""
    started: list[StartedServer] = []

    async def factory(**overrides: Any) -> StartedServer:
        server = await start_server(replace(config, **overrides), embedding=embedding)
        started.append(server)
        return server

    yield factory
    for server in started:
        await server.stop(None)


@pytest.fixture
async def server(make_server: ServerFactory) -> StartedServer:
    started: StartedServer = await make_server()
    return started


@pytest.fixture
async def populated_stub(
    config: Config, kb_template: Path, make_server: ServerFactory
) -> AsyncIterator[retrieval_pb2_grpc.RetrievalServiceStub]:
    """A server whose knowledge base starts as the sample KB (a copy of the session template)."""
    shutil.copytree(kb_template / "chroma", config.data_dir / "chroma")
    server: StartedServer = await make_server()
    async with role_channel(f"127.0.0.1:{server.port}") as channel:
        yield retrieval_stub(channel)


@pytest.fixture
async def stub(server: StartedServer) -> AsyncIterator[retrieval_pb2_grpc.RetrievalServiceStub]:
    async with role_channel(f"127.0.0.1:{server.port}") as channel:
        yield retrieval_stub(channel)
