"""A hung order backend: the caller hears back within its deadline plus 100 ms."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest

from support.v1 import tools_pb2

CUST_1 = (("x-customer-id", "cust-001"),)
TOLERANCE_SECONDS = 0.1


def lookup_request(conversation_id: str = "conv-hung") -> tools_pb2.ExecuteToolRequest:
    return tools_pb2.ExecuteToolRequest(
        tool_name="lookup_order_status",
        arguments_json=json.dumps({"order_id": "ORD-12345"}),
        conversation_id=conversation_id,
    )


async def test_execute_tool_times_out_within_the_grpc_deadline(start_tools, hung_backend):
    tools = await start_tools(backend=hung_backend)
    deadline = 0.5
    started = time.monotonic()
    response = await tools.stub.ExecuteTool(lookup_request(), metadata=CUST_1, timeout=deadline)
    elapsed = time.monotonic() - started
    content = json.loads(response.content_json)
    assert content["error"]["code"] == "timeout"
    assert content["error"]["retryable"] is True
    assert response.error.code == tools_pb2.TOOL_ERROR_CODE_TIMEOUT
    assert elapsed <= deadline + TOLERANCE_SECONDS
    assert hung_backend.called.is_set()
    await asyncio.wait_for(hung_backend.cancelled.wait(), 1)


async def test_execute_tool_honours_its_own_timeout_without_a_client_deadline(start_tools, hung_backend):
    tools = await start_tools(backend=hung_backend, tool_timeout_seconds=0.3)
    started = time.monotonic()
    response = await tools.stub.ExecuteTool(lookup_request(), metadata=CUST_1)
    elapsed = time.monotonic() - started
    assert json.loads(response.content_json)["error"]["code"] == "timeout"
    assert 0.3 <= elapsed <= 0.3 + TOLERANCE_SECONDS


async def test_typed_lookup_is_deadline_exceeded(start_tools, hung_backend):
    tools = await start_tools(backend=hung_backend)
    deadline = 0.5
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await tools.stub.LookupOrderStatus(
            tools_pb2.LookupOrderStatusRequest(order_id="ORD-12345"), metadata=CUST_1, timeout=deadline
        )
    elapsed = time.monotonic() - started
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed <= deadline + TOLERANCE_SECONDS


async def test_typed_lookup_own_timeout_is_deadline_exceeded(start_tools, hung_backend):
    tools = await start_tools(backend=hung_backend, tool_timeout_seconds=0.2)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await tools.stub.LookupOrderStatus(
            tools_pb2.LookupOrderStatusRequest(order_id="ORD-12345"), metadata=CUST_1, timeout=5
        )
    elapsed = time.monotonic() - started
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "did not answer in time" in raised.value.details()
    assert elapsed <= 0.2 + TOLERANCE_SECONDS


async def test_server_stays_healthy_after_timeouts(start_tools, hung_backend):
    tools = await start_tools(backend=hung_backend, tool_timeout_seconds=0.1)
    results = await asyncio.gather(
        *(tools.stub.ExecuteTool(lookup_request(f"c{i}"), metadata=CUST_1, timeout=2) for i in range(10))
    )
    assert all(json.loads(r.content_json)["error"]["code"] == "timeout" for r in results)
    listed = await tools.stub.ListTools(tools_pb2.ListToolsRequest(), timeout=2)
    assert len(listed.tools) == 2
