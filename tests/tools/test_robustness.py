"""Nothing escapes as UNKNOWN, arbitrary model output never breaks ExecuteTool, and logs stay clean."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.v1 import tools_pb2
from tools_service.adapters.sqlite_db import SqliteDatabase
from tools_service.adapters.sqlite_tickets import SqliteTicketStore
from tools_service.limits import CallLimiter, Limits
from tools_service.orders import Order, OrderService
from tools_service.tickets import TicketService
from tools_service.tools import ToolRunner

CUST_1 = (("x-customer-id", "cust-001"),)
PATTERN = r"^ORD-\d{5}$"


class CrashingBackend:
    async def get_order(self, order_id: str) -> Order | None:
        raise RuntimeError("database exploded with secret details")

    async def close(self) -> None:
        return None


class MemoryBackend:
    async def get_order(self, order_id: str) -> Order | None:
        if order_id == "ORD-12345":
            return Order("ORD-12345", "cust-001", "shipped", "1Z", "UPS", "2026-02-18")
        return None

    async def close(self) -> None:
        return None


async def test_unexpected_error_is_internal_never_unknown(start_tools):
    tools = await start_tools(backend=CrashingBackend())
    request = tools_pb2.ExecuteToolRequest(
        tool_name="lookup_order_status", arguments_json='{"order_id":"ORD-12345"}', conversation_id="c"
    )
    response = await tools.stub.ExecuteTool(request, metadata=CUST_1, timeout=5)
    content = json.loads(response.content_json)
    assert content == {
        "error": {"code": "internal", "message": "The tool failed unexpectedly.", "retryable": False}
    }
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await tools.stub.LookupOrderStatus(
            tools_pb2.LookupOrderStatusRequest(order_id="ORD-12345"), metadata=CUST_1, timeout=5
        )
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert raised.value.details() == "internal error"


async def test_tool_arguments_are_not_logged_at_info(tools, caplog):
    caplog.set_level(logging.INFO)
    secret = "my card is 4111 1111 1111 1111, email jane@example.com"
    request = tools_pb2.ExecuteToolRequest(
        tool_name="escalate_to_human",
        arguments_json=json.dumps({"reason": secret, "priority": "low"}),
        conversation_id="c-log",
        idempotency_key="k",
    )
    response = await tools.stub.ExecuteTool(request, metadata=CUST_1, timeout=5)
    assert not response.HasField("error")
    bad = tools_pb2.ExecuteToolRequest(
        tool_name="lookup_order_status",
        arguments_json=json.dumps({"order_id": secret}),
        conversation_id="c-log",
    )
    await tools.stub.ExecuteTool(bad, metadata=CUST_1, timeout=5)
    assert caplog.records, "expected some log lines"
    text = "\n".join(record.getMessage() + str(record.__dict__) for record in caplog.records)
    assert "4111" not in text and "jane@example.com" not in text


@pytest.fixture(scope="module")
def runner_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)
arguments_strategy = st.one_of(
    st.text(max_size=200),
    json_values.map(json.dumps),
    st.fixed_dictionaries({"order_id": st.text(max_size=20)}, optional={"extra": json_values}).map(
        json.dumps
    ),
    st.fixed_dictionaries(
        {"reason": st.text(max_size=60), "priority": st.sampled_from(["low", "medium", "high", "x"])},
        optional={"summary": st.text(max_size=60)},
    ).map(json.dumps),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tool_name=st.sampled_from(["lookup_order_status", "escalate_to_human", "nope"]),
    arguments_json=arguments_strategy,
    customer=st.sampled_from(["", "cust-001", "cust-002"]),
)
def test_any_model_output_gives_a_json_result(runner_env, tool_name, arguments_json, customer):
    async def run() -> None:
        db = SqliteDatabase(runner_env / "tools.sqlite3")
        try:
            runner = ToolRunner(
                OrderService(MemoryBackend(), PATTERN, 1.0),
                TicketService(SqliteTicketStore(db), 1.0),
                CallLimiter(Limits(10**9, 10**9, 10**9)),
                PATTERN,
            )
            result = await runner.execute(
                tool_name=tool_name,
                arguments_json=arguments_json,
                conversation_id="fuzz",
                idempotency_key="",
                customer_id=customer,
                deadline_remaining=None,
            )
        finally:
            await db.close()
        content = json.loads(result.content_json)
        assert isinstance(content, dict)
        if result.error is not None:
            assert content["error"]["code"] == result.error.code
            assert result.error.code != "internal"
        elif tool_name == "lookup_order_status":
            assert customer == "cust-001" and content["order_id"] == "ORD-12345"
        else:
            assert content["ticket_id"].startswith("TKT-")

    asyncio.run(run())
