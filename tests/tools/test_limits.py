"""Per-conversation, per-customer-per-minute and identical-call limits."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from support.v1 import tools_pb2
from tools_service.errors import RateLimitedError
from tools_service.limits import CallLimiter, Limits

CUST_1 = (("x-customer-id", "cust-001"),)


async def lookup(tools: Any, order_id: str, conversation_id: str, metadata: Any = CUST_1) -> tuple[Any, Any]:
    request = tools_pb2.ExecuteToolRequest(
        tool_name="lookup_order_status",
        arguments_json=json.dumps({"order_id": order_id}),
        conversation_id=conversation_id,
    )
    response = await tools.stub.ExecuteTool(request, metadata=metadata, timeout=5)
    return json.loads(response.content_json), response


async def test_identical_calls_limit(tools):
    for _ in range(3):
        content, _ = await lookup(tools, "ORD-12345", "conv-same")
        assert content["status"] == "shipped"
    content, response = await lookup(tools, "ORD-12345", "conv-same")
    assert content["error"]["code"] == "rate_limited"
    assert response.error.code == tools_pb2.TOOL_ERROR_CODE_RATE_LIMITED
    assert content["error"]["retryable"] is False
    assert "earlier result" in content["error"]["message"]
    # Other arguments, or another conversation, are still fine.
    assert (await lookup(tools, "ORD-67890", "conv-same"))[0]["status"] == "processing"
    assert (await lookup(tools, "ORD-12345", "conv-other"))[0]["status"] == "shipped"


async def test_per_conversation_limit(start_tools):
    tools = await start_tools(limit_per_conversation=4)
    order_ids = ["ORD-12345", "ORD-67890", "ORD-11223", "ORD-33445"]
    for order_id in order_ids:
        assert "error" not in (await lookup(tools, order_id, "conv-many"))[0]
    content, _ = await lookup(tools, "ORD-99999", "conv-many")
    assert content["error"]["code"] == "rate_limited"
    assert "limit of 4 tool calls" in content["error"]["message"]
    # The typed RPC counts against, and is refused by, the same limit.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await tools.stub.LookupOrderStatus(
            tools_pb2.LookupOrderStatusRequest(order_id="ORD-12345", conversation_id="conv-many"),
            metadata=CUST_1,
            timeout=5,
        )
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "error" not in (await lookup(tools, "ORD-12345", "conv-fresh"))[0]


async def test_per_customer_per_minute_limit_says_when_to_retry(start_tools):
    tools = await start_tools(limit_per_customer_per_minute=3)
    for index in range(3):
        assert "error" not in (await lookup(tools, "ORD-12345", f"conv-{index}"))[0]
    content, response = await lookup(tools, "ORD-12345", "conv-9")
    assert content["error"]["code"] == "rate_limited"
    assert content["error"]["retryable"] is True
    assert 1 <= content["error"]["retry_after_seconds"] <= 60
    assert response.error.retry_after_seconds == content["error"]["retry_after_seconds"]
    # Another customer has their own budget.
    other = (("x-customer-id", "cust-002"),)
    assert (await lookup(tools, "ORD-24680", "conv-x", metadata=other))[0]["status"] == "shipped"
    # Typed RPC: RESOURCE_EXHAUSTED with RetryInfo and QuotaFailure details.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await tools.stub.LookupOrderStatus(
            tools_pb2.LookupOrderStatusRequest(order_id="ORD-12345", conversation_id="conv-10"),
            metadata=CUST_1,
            timeout=5,
        )
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(raised.value)
    retry, quota = error_details_pb2.RetryInfo(), error_details_pb2.QuotaFailure()
    unpacked = {d.type_url.rsplit(".", 1)[-1] for d in status.details}
    assert unpacked == {"RetryInfo", "QuotaFailure"}
    for detail in status.details:
        if detail.Is(retry.DESCRIPTOR):
            detail.Unpack(retry)
        else:
            detail.Unpack(quota)
    assert 1 <= retry.retry_delay.seconds <= 60
    assert quota.violations[0].subject == "per_customer_per_minute"


def test_sliding_window_frees_up_after_a_minute():
    now = [1000.0]
    limiter = CallLimiter(Limits(100, 2, 100), clock=lambda: now[0])
    limiter.acquire("c1", "cust", "t", "a")
    now[0] += 30
    limiter.acquire("c1", "cust", "t", "b")
    with pytest.raises(RateLimitedError) as raised:
        limiter.acquire("c1", "cust", "t", "c")
    assert raised.value.retry_after_seconds == 30
    now[0] += 30.5
    limiter.acquire("c1", "cust", "t", "c")  # the first call left the window
    with pytest.raises(RateLimitedError):
        limiter.acquire("c1", "cust", "t", "d")


def test_refused_calls_are_not_counted():
    limiter = CallLimiter(Limits(per_conversation=2, per_customer_per_minute=100, identical_calls=1))
    limiter.acquire("c1", "cust", "t", "a")
    for _ in range(5):
        with pytest.raises(RateLimitedError):
            limiter.acquire("c1", "cust", "t", "a")
    limiter.acquire("c1", "cust", "t", "b")  # the refused identical calls did not use the conversation budget


def test_idle_conversations_and_customers_are_forgotten():
    now = [0.0]
    limiter = CallLimiter(Limits(1, 1, 1), clock=lambda: now[0], idle_seconds=3600)
    limiter.acquire("c1", "cust-a", "t", "a")
    now[0] = 1800.0
    limiter.acquire("c2", "cust-b", "t", "a")
    assert limiter.tracked() == (2, 1)  # cust-a's window expired after 60 s
    now[0] = 3600.5
    limiter.acquire("c3", "cust-c", "t", "a")
    assert limiter.tracked() == (2, 1)  # c1 was idle for an hour
    limiter.acquire("c1", "cust-a", "t", "a")  # a fresh budget after the idle period
