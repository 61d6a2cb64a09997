"""After a real conversation through the three services (in-process, offline engine), the metrics endpoint
serves the request series of every hop: the agent's Chat, the retrieval Search and the tools call it made."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from service_kit import observability

# Authentication is always on: each service gets the role tokens, the test calls as a backend.
ROLE_TOKENS = {
    f"AUTH_TOKENS_{role.upper()}": f"{role}-stack-metrics-token-0123456789"
    for role in ("backend", "staff", "kb_admin", "service")
}
CUSTOMER = (
    ("authorization", f"Bearer {ROLE_TOKENS['AUTH_TOKENS_BACKEND']}"),
    ("x-customer-id", "cust-001"),
)


@dataclass
class Stack:
    agent_port: int
    metrics_port: int


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    from agent_service.config import Config as AgentConfig
    from agent_service.server import start_server as start_agent
    from retrieval_service.adapters.embedding import MiniLMEmbedding
    from retrieval_service.config import Config as RetrievalConfig
    from retrieval_service.server import start_server as start_retrieval
    from tools_service.config import Config as ToolsConfig
    from tools_service.server import start_server as start_tools

    running: list[Any] = []
    http_server, metrics_port = observability.start_metrics_endpoint(0, "127.0.0.1")
    try:
        env = {"DATA_DIR": str(tmp_path), "LOG_LEVEL": "WARNING", **ROLE_TOKENS}
        retrieval = await start_retrieval(
            RetrievalConfig.from_env({**env, "RETRIEVAL_ADDR": "127.0.0.1:0"}),
            embedding=MiniLMEmbedding.shared(),
        )
        running.append(retrieval)
        tools = await start_tools(ToolsConfig.from_env({**env, "TOOLS_ADDR": "127.0.0.1:0"}))
        running.append(tools)
        agent = await start_agent(
            AgentConfig.from_env(
                {
                    **env,
                    "AGENT_ADDR": "127.0.0.1:0",
                    "RETRIEVAL_ADDR": f"127.0.0.1:{retrieval.port}",
                    "TOOLS_ADDR": f"127.0.0.1:{tools.port}",
                }
            )
        )
        running.append(agent)
        yield Stack(agent.port, metrics_port)
    finally:
        for started in reversed(running):
            await started.stop(None)
        http_server.shutdown()
        http_server.server_close()


def _value(body: str, name: str, **labels: str) -> float:
    """The sample of `name` whose labels include `labels` (0 when absent)."""
    total = 0.0
    for line in body.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if labels.items() <= found.items():
            total += float(match.group(2))
    return total


async def _scrape(port: int) -> str:
    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    return await asyncio.to_thread(fetch)


async def test_scrape_after_a_conversation_finds_every_hop(stack: Stack) -> None:
    from support.v1 import agent_pb2, agent_pb2_grpc

    before = await _scrape(stack.metrics_port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.agent_port}") as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)  # type: ignore[no-untyped-call]
        reply = await stub.Chat(
            agent_pb2.ChatRequest(conversation_id="metrics-1", message="Where is my order ORD-67890?"),
            metadata=CUSTOMER,
            timeout=30,
        )
    assert reply.reply
    after = await _scrape(stack.metrics_port)

    def delta(service: str, method: str, code: str = "OK") -> float:
        labels = {"grpc_service": service, "grpc_method": method, "grpc_code": code}
        return _value(after, "grpc_server_handled_total", **labels) - _value(
            before, "grpc_server_handled_total", **labels
        )

    assert delta("support.v1.AgentService", "Chat") == 1
    assert delta("support.v1.RetrievalService", "Search") >= 1
    tools_calls = sum(
        delta("support.v1.ToolsService", method)
        for method in ("ExecuteTool", "ListTools", "LookupOrderStatus")
    )
    assert tools_calls >= 1
    assert delta("support.v1.ToolsService", "ExecuteTool") == 1  # the offline engine looks the order up
    assert [call.name for call in reply.tool_calls] == ["lookup_order_status"]
    assert _value(after, "grpc_server_handling_seconds_count", grpc_method="Chat", grpc_code="OK") >= 1
    # The agent records its model call and its tool call through the helpers (any outcome label).
    assert (
        _value(after, "support_model_call_seconds_count") - _value(before, "support_model_call_seconds_count")
        >= 1
    )
    tool_calls = "support_tool_calls_total"
    assert (
        _value(after, tool_calls, tool="lookup_order_status")
        - _value(before, tool_calls, tool="lookup_order_status")
        == 1
    )
    # Every domain family is exposed.
    for family in ("support_model_call_seconds", "support_tool_calls_total", "support_retrieval_distance"):
        assert f"# TYPE {family}" in after
