"""Identity comes only from x-customer-id; another customer's order is indistinguishable from a missing one."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from support.v1 import tools_pb2

CUST_1 = (("x-customer-id", "cust-001"),)
CUST_2 = (("x-customer-id", "cust-002"),)


async def execute(tools: Any, order_id: str, metadata: Any, conversation_id: str = "conv-own") -> Any:
    arguments = json.dumps({"order_id": order_id})
    request = tools_pb2.ExecuteToolRequest(
        tool_name="lookup_order_status", arguments_json=arguments, conversation_id=conversation_id
    )
    return await tools.stub.ExecuteTool(request, metadata=metadata, timeout=5)


async def test_other_customers_order_equals_missing_order_through_execute_tool(tools):
    foreign = await execute(tools, "ORD-12345", CUST_2)
    missing = await execute(tools, "ORD-99999", CUST_2, conversation_id="conv-own-2")
    assert foreign.content_json == missing.content_json
    assert foreign.error == missing.error
    content = json.loads(foreign.content_json)
    assert content["error"]["code"] == "not_found"
    assert "1Z999AA10123456784" not in foreign.content_json
    assert "cust-001" not in foreign.content_json
    # The owner still sees it, and cust-002 sees their own order.
    own = json.loads((await execute(tools, "ORD-12345", CUST_1)).content_json)
    assert own["tracking_number"] == "1Z999AA10123456784"
    theirs = json.loads((await execute(tools, "ORD-24680", CUST_2)).content_json)
    assert theirs["status"] == "shipped"


async def test_other_customers_order_equals_missing_order_through_typed_rpc(tools):
    errors = []
    for order_id in ("ORD-12345", "ORD-99999"):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await tools.stub.LookupOrderStatus(
                tools_pb2.LookupOrderStatusRequest(order_id=order_id), metadata=CUST_2, timeout=5
            )
        errors.append(raised.value)
    assert [e.code() for e in errors] == [grpc.StatusCode.NOT_FOUND] * 2
    assert errors[0].details() == errors[1].details()
    assert errors[0].trailing_metadata() == errors[1].trailing_metadata()


async def test_typed_lookup_for_the_owner(tools):
    reply = await tools.stub.LookupOrderStatus(
        tools_pb2.LookupOrderStatusRequest(order_id="ORD-12345", conversation_id="c"),
        metadata=CUST_1,
        timeout=5,
    )
    assert reply.status == tools_pb2.ORDER_STATUS_SHIPPED
    assert reply.tracking_number == "1Z999AA10123456784"
    assert reply.eta == "2026-02-18"


@pytest.mark.parametrize("metadata", [(), (("x-customer-id", ""),), (("x-customer-id", "   "),)])
async def test_no_identity_no_order_data(tools, metadata):
    response = await execute(tools, "ORD-12345", metadata)
    content = json.loads(response.content_json)
    assert content["error"]["code"] == "unauthenticated"
    assert response.error.code == tools_pb2.TOOL_ERROR_CODE_UNAUTHENTICATED
    assert "1Z999" not in response.content_json
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await tools.stub.LookupOrderStatus(
            tools_pb2.LookupOrderStatusRequest(order_id="ORD-12345"), metadata=metadata, timeout=5
        )
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_identity_in_arguments_is_rejected_not_trusted(tools):
    request = tools_pb2.ExecuteToolRequest(
        tool_name="lookup_order_status",
        arguments_json=json.dumps({"order_id": "ORD-12345", "customer_id": "cust-001"}),
        conversation_id="c",
    )
    response = await tools.stub.ExecuteTool(request, metadata=CUST_2, timeout=5)
    assert json.loads(response.content_json)["error"]["code"] == "invalid_arguments"


async def test_typed_lookup_invalid_order_id(tools):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await tools.stub.LookupOrderStatus(
            tools_pb2.LookupOrderStatusRequest(order_id="ORD-1"), metadata=CUST_1, timeout=5
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "order_id" in raised.value.details()


@pytest.mark.parametrize("customer_id", ["c" * 129, "c" * 5000])
async def test_malformed_identity_is_invalid_argument(tools, customer_id):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await tools.stub.LookupOrderStatus(
            tools_pb2.LookupOrderStatusRequest(order_id="ORD-12345"),
            metadata=(("x-customer-id", customer_id),),
            timeout=5,
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "x-customer-id" in raised.value.details()
