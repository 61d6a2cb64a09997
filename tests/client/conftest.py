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
from retrieval_service.adapters.embedding import MiniLMEmbedding
from retrieval_service.calibration import load_markdown
from retrieval_service.config import Config as RetrievalConfig
from retrieval_service.server import StartedServer as RetrievalStarted
from retrieval_service.server import start_server as start_retrieval_server
from tests.conftest import REPO_ROOT
from tools_service.config import Config as ToolsConfig
from tools_service.server import StartedServer as ToolsStarted
from tools_service.server import start_server as start_tools_server

CUSTOMER = "cust-001"


@dataclasses.dataclass
class Stack:
    retrieval: RetrievalStarted
    tools: ToolsStarted
    agent: AgentStarted
    agent_config: AgentConfig

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.agent.port}"


async def start_agent(stack_config: AgentConfig, data_dir: Path) -> AgentStarted:
    """Another agent wired to the same retrieval and tools services (its own conversation store)."""
    return await start_agent_server(dataclasses.replace(stack_config, data_dir=data_dir))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    root = tmp_path_factory.mktemp("client-stack")
    retrieval = await start_retrieval_server(
        RetrievalConfig(addr="127.0.0.1:0", data_dir=root / "retrieval", collection="client_kb"),
        embedding=MiniLMEmbedding.shared(),
    )
    await retrieval.kb.ingest(load_markdown(REPO_ROOT / "kb"), prune_changed_sections=False)
    tools = await start_tools_server(ToolsConfig(addr="127.0.0.1:0", data_dir=root / "tools"))
    config = AgentConfig(
        addr="127.0.0.1:0",
        retrieval_addr=f"127.0.0.1:{retrieval.port}",
        tools_addr=f"127.0.0.1:{tools.port}",
        data_dir=root / "agent",
    )
    agent = await start_agent_server(config)
    try:
        yield Stack(retrieval, tools, agent, config)
    finally:
        await agent.stop(None)
        await tools.stop(None)
        await retrieval.stop(None)
