"""A hung order backend: the tools service gives up on it in time to answer the caller itself.

Each call is timed from both sides. The lower bound proves the service waited for the backend until its budget
ran out (it did not give up early); a timeout result or status from the service, rather than the transport's
DEADLINE_EXCEEDED, proves it answered before the caller's deadline. The upper bounds are generous: a loaded
machine may delay any step, and what they prove is that nobody waits for the hung backend forever.
"""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest

from support.v1 import tools_pb2
from tools_service.deadlines import DEADLINE_MARGIN_SECONDS

CUST_1 = (("x-customer-id", "cust-001"),)
# Scheduling headroom on a loaded machine, far below the 10 s default tool timeout the hung backend would hit.
SLACK_SECONDS = 2.0
# The service answers this much before the caller's deadline, plus rounding of the deadline on the wire.
EARLY_SECONDS = 2 * DEADLINE_MARGIN_SECONDS


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
    assert deadline - EARLY_SECONDS <= elapsed <= deadline + SLACK_SECONDS
    assert hung_backend.called.is_set()
    # The backend call was cancelled before the timeout result was built, not left running behind it.
    assert hung_backend.cancelled.is_set()


async def test_execute_tool_honours_its_own_timeout_without_a_client_deadline(start_tools, hung_backend):
    tools = await start_tools(backend=hung_backend, tool_timeout_seconds=0.3)
    started = time.monotonic()
    response = await tools.stub.ExecuteTool(lookup_request(), metadata=CUST_1)
    elapsed = time.monotonic() - started
    assert json.loads(response.content_json)["error"]["code"] == "timeout"
    assert 0.3 <= elapsed <= 0.3 + SLACK_SECONDS
    assert hung_backend.cancelled.is_set()


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
    assert deadline - EARLY_SECONDS <= elapsed <= deadline + SLACK_SECONDS


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
    assert 0.2 <= elapsed <= 0.2 + SLACK_SECONDS
    assert hung_backend.cancelled.is_set()


async def test_server_stays_healthy_after_timeouts(start_tools, hung_backend):
    tools = await start_tools(backend=hung_backend, tool_timeout_seconds=0.1)
    results = await asyncio.gather(
        *(tools.stub.ExecuteTool(lookup_request(f"c{i}"), metadata=CUST_1, timeout=2) for i in range(10))
    )
    assert all(json.loads(r.content_json)["error"]["code"] == "timeout" for r in results)
    listed = await tools.stub.ListTools(tools_pb2.ListToolsRequest(), timeout=2)
    assert len(listed.tools) == 5
