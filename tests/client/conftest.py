"""support_agent_client fixtures: the real stack in-process (retrieval over ChromaDB with the sample KB, tools
over SQLite with the demo orders, the agent with the offline engine), started once per test module."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from agent_service.config import Config as AgentConfig
from agent_service.server import StartedServer as AgentStarted
from agent_service.server import start_server as start_agent_server
from devstack.inprocess import InProcessStack

CUSTOMER = "cust-001"


async def start_agent(stack_config: AgentConfig, data_dir: Path) -> AgentStarted:
    """Another agent wired to the same retrieval and tools services (its own conversation store)."""
    return await start_agent_server(dataclasses.replace(stack_config, data_dir=data_dir))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcessStack]:
    root = tmp_path_factory.mktemp("client-stack")
    async with InProcessStack(root, retrieval_overrides={"collection": "client_kb"}) as started:
        yield started
