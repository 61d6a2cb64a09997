"""grpc.aio clients the scenarios drive the stack with (customer identity in `x-customer-id` metadata)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from bench.stack import CUSTOMER_ID
from devstack.credentials import caller_interceptors, role_channel
from support.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
    tools_pb2,
    tools_pb2_grpc,
)

CUSTOMER_KEY = "x-customer-id"
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # The capacity scenario runs hundreds of concurrent calls over one connection.
    ("grpc.http2.max_pings_without_data", 0),
]


@dataclass(frozen=True)
class CallResult:
    seconds: float
    code: grpc.StatusCode
    # A turn that completed but not the way the scenario scripted it (no tool call, an error result, or the
    # offline fallback answered instead of the scripted model).
    valid: bool
    detail: str = ""


def check_turn(response: agent_pb2.ChatResponse, expect_tool: bool = True) -> str:
    """Empty when the response is the scripted turn; otherwise what is wrong with it."""
    if not response.reply:
        return "empty reply"
    if response.usage.fallback:
        return "offline fallback answered"
    if expect_tool:
        if len(response.tool_calls) != 1:
            return f"{len(response.tool_calls)} tool calls"
        if response.tool_calls[0].is_error:
            return "tool result was an error"
    if response.escalation.ticket_id:
        return "escalated"
    return ""


class AgentClient:
    def __init__(self, addr: str, customer_id: str = CUSTOMER_ID) -> None:
        # Each call carries the devstack credentials of the role it means (backend here).
        self.channel = grpc.aio.insecure_channel(
            addr, options=CHANNEL_OPTIONS, interceptors=caller_interceptors()
        )
        self.stub = agent_pb2_grpc.AgentServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.metadata = ((CUSTOMER_KEY, customer_id),)

    async def chat(
        self, conversation_id: str, message: str, rpc_seconds: float = 30.0
    ) -> agent_pb2.ChatResponse:
        request = agent_pb2.ChatRequest(conversation_id=conversation_id, message=message)
        response: agent_pb2.ChatResponse = await self.stub.Chat(
            request, metadata=self.metadata, timeout=rpc_seconds
        )
        return response

    async def timed_chat(
        self, conversation_id: str, message: str, rpc_seconds: float = 30.0, expect_tool: bool = True
    ) -> CallResult:
        started = time.perf_counter()
        try:
            response = await self.chat(conversation_id, message, rpc_seconds)
        except grpc.aio.AioRpcError as error:
            return CallResult(time.perf_counter() - started, error.code(), False, error.details() or "")
        elapsed = time.perf_counter() - started
        problem = check_turn(response, expect_tool)
        return CallResult(elapsed, grpc.StatusCode.OK, not problem, problem)

    def stream(
        self, conversation_id: str, message: str, rpc_seconds: float = 30.0
    ) -> AsyncIterator[agent_pb2.StreamChatResponse]:
        request = agent_pb2.StreamChatRequest(conversation_id=conversation_id, message=message)
        call: AsyncIterator[agent_pb2.StreamChatResponse] = self.stub.StreamChat(
            request, metadata=self.metadata, timeout=rpc_seconds
        )
        return call

    async def close(self) -> None:
        await self.channel.close()


class BackendClients:
    """Direct calls to retrieval and tools, for the per-hop breakdown."""

    def __init__(self, retrieval_addr: str, tools_addr: str, customer_id: str = CUSTOMER_ID) -> None:
        self.retrieval_channel = role_channel(retrieval_addr)
        self.tools_channel = role_channel(tools_addr)
        self.retrieval = retrieval_pb2_grpc.RetrievalServiceStub(self.retrieval_channel)  # type: ignore[no-untyped-call]
        self.tools = tools_pb2_grpc.ToolsServiceStub(self.tools_channel)  # type: ignore[no-untyped-call]
        self.metadata = ((CUSTOMER_KEY, customer_id),)

    async def search(self, query: str) -> int:
        response = await self.retrieval.Search(retrieval_pb2.SearchRequest(query=query), timeout=10.0)
        return len(response.hits)

    async def chunk_count(self) -> int:
        response = await self.retrieval.GetStats(retrieval_pb2.GetStatsRequest(), timeout=10.0)
        return int(response.chunks)

    async def execute_tool(self, conversation_id: str, name: str, arguments: str) -> str:
        request = tools_pb2.ExecuteToolRequest(
            tool_name=name, arguments_json=arguments, conversation_id=conversation_id
        )
        response = await self.tools.ExecuteTool(request, metadata=self.metadata, timeout=10.0)
        return str(response.content_json)

    async def close(self) -> None:
        await self.retrieval_channel.close()
        await self.tools_channel.close()
