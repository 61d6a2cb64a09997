"""Write tools through the real gRPC tools service: propose → confirm (RunAction) or drop, over the SQLite store
and over a real local HTTP order API (tests/tools/fake_order_api.py): every test runs against both backends."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from devstack.credentials import shared_test_credentials
from support.v1 import tools_pb2, types_pb2
from tests.tools.conftest import StartTools, Tools
from tests.tools.fake_order_api import FakeOrderApi, running_order_api

CUST_1 = (("x-customer-id", "cust-001"),)
CUST_2 = (("x-customer-id", "cust-002"),)
ADDRESS = {"line1": "12 Rue de Rivoli", "city": "Paris", "postal_code": "75001", "country": "FR"}


@dataclass
class Desk:
    """A tools service over one order backend, and how to see that backend's orders."""

    tools: Tools
    api: FakeOrderApi | None

    async def status(self, order_id: str) -> str:
        if self.api is not None:
            return str(self.api.orders[order_id]["status"])
        with sqlite3.connect(self.tools.config.db_path) as conn:
            return str(
                conn.execute("SELECT status FROM orders WHERE order_id = ?", (order_id,)).fetchone()[0]
            )

    async def set_status(self, order_id: str, status: str) -> None:
        """The order changes behind the tools service's back (e.g. it ships while the customer thinks)."""
        if self.api is not None:
            self.api.orders[order_id]["status"] = status
            return
        with sqlite3.connect(self.tools.config.db_path) as conn:
            conn.execute("UPDATE orders SET status = ? WHERE order_id = ?", (status, order_id))

    async def propose(
        self,
        tool: str,
        arguments: dict[str, Any],
        conversation: str = "conv-w",
        metadata: Any = CUST_1,
        key: str = "",
    ) -> tuple[tools_pb2.ExecuteToolResponse, dict[str, Any]]:
        response = await self.tools.stub.ExecuteTool(
            tools_pb2.ExecuteToolRequest(
                tool_name=tool,
                arguments_json=json.dumps(arguments),
                conversation_id=conversation,
                idempotency_key=key,
            ),
            metadata=metadata,
            timeout=10,
        )
        return response, json.loads(response.content_json)

    async def run(
        self,
        action_id: str,
        conversation: str = "conv-w",
        metadata: Any = CUST_1,
        confirmation: str = "button",
    ) -> tools_pb2.RunActionResponse:
        response: tools_pb2.RunActionResponse = await self.tools.stub.RunAction(
            tools_pb2.RunActionRequest(
                action_id=action_id, conversation_id=conversation, confirmation=confirmation
            ),
            metadata=metadata,
            timeout=10,
        )
        return response

    async def listed(self, conversation: str = "conv-w", metadata: Any = CUST_1) -> list[types_pb2.Action]:
        response = await self.tools.stub.ListActions(
            tools_pb2.ListActionsRequest(conversation_id=conversation), metadata=metadata, timeout=10
        )
        return list(response.actions)


@pytest.fixture(params=["sqlite", "http"])
async def desk(request: pytest.FixtureRequest, start_tools: StartTools) -> AsyncIterator[Desk]:
    if request.param == "sqlite":
        yield Desk(await start_tools(), None)
        return
    async with running_order_api() as api:
        tools = await start_tools(
            order_backend="http", order_api_url=api.url, order_api_timeout_seconds=0.5, order_api_retries=0
        )
        yield Desk(tools, api)


async def test_propose_then_confirm_executes_once(desk: Desk) -> None:
    response, content = await desk.propose("cancel_order", {"order_id": "ORD-67890"}, key="call-1")
    action = response.pending_action
    assert action.state == types_pb2.ACTION_STATE_PENDING
    assert action.summary == "Cancel order ORD-67890 (2 items, $84.00)"
    assert action.tool_name == "cancel_order" and json.loads(action.arguments_json) == {
        "order_id": "ORD-67890"
    }
    assert content["status"] == "awaiting_confirmation"
    assert content["pending_action"]["action_id"] == action.action_id
    assert content["pending_action"]["summary"] == action.summary
    assert 0 < content["pending_action"]["expires_in_seconds"] <= 600
    assert content["note"].startswith("Nothing has changed yet.")
    assert await desk.status("ORD-67890") == "processing"  # proposing changed nothing

    ran = await desk.run(action.action_id, confirmation="message:turn-7")
    assert ran.ran_now and ran.action.state == types_pb2.ACTION_STATE_EXECUTED
    assert json.loads(ran.action.result_json) == {
        "order_id": "ORD-67890",
        "status": "cancelled",
        "refund": "$84.00 to the original payment method",
    }
    assert ran.action.confirmation == "message:turn-7"
    assert await desk.status("ORD-67890") == "cancelled"

    again = await desk.run(action.action_id)
    assert not again.ran_now
    assert again.action.state == types_pb2.ACTION_STATE_EXECUTED
    assert again.action.result_json == ran.action.result_json
    assert again.action.confirmation == "message:turn-7"  # the first confirmation stays the one on record
    if desk.api is not None:
        assert desk.api.applied("cancel", "ORD-67890") == 1
        assert desk.api.writes[0][2] == action.action_id  # Idempotency-Key

    # The audit trail: who, what, when, the confirmation.
    (listed,) = await desk.listed()
    assert listed.action_id == action.action_id
    assert listed.state == types_pb2.ACTION_STATE_EXECUTED
    assert listed.decide_time.seconds >= listed.create_time.seconds > 0


async def test_dropped_action_never_runs(desk: Desk) -> None:
    response, _ = await desk.propose("cancel_order", {"order_id": "ORD-67890"})
    action_id = response.pending_action.action_id
    dropped = await desk.tools.stub.DropAction(
        tools_pb2.DropActionRequest(
            action_id=action_id,
            conversation_id="conv-w",
            note="declined by the customer",
            confirmation="button",
        ),
        metadata=CUST_1,
        timeout=10,
    )
    assert dropped.action.state == types_pb2.ACTION_STATE_DECLINED
    assert dropped.action.note == "declined by the customer"
    ran = await desk.run(action_id)
    assert not ran.ran_now and ran.action.state == types_pb2.ACTION_STATE_DECLINED
    assert await desk.status("ORD-67890") == "processing"
    if desk.api is not None:
        assert desk.api.writes == []


async def test_expired_action_never_runs(start_tools: StartTools) -> None:
    tools = await start_tools(action_ttl_seconds=0.0)  # expired as soon as it is proposed
    desk = Desk(tools, None)
    response, _ = await desk.propose("cancel_order", {"order_id": "ORD-67890"})
    ran = await desk.run(response.pending_action.action_id)
    assert not ran.ran_now and ran.action.state == types_pb2.ACTION_STATE_EXPIRED
    assert await desk.status("ORD-67890") == "processing"
    (listed,) = await desk.listed()
    assert listed.state == types_pb2.ACTION_STATE_EXPIRED


async def test_proposals_are_idempotent_and_one_is_pending_per_conversation(desk: Desk) -> None:
    first, _ = await desk.propose("cancel_order", {"order_id": "ORD-67890"}, key="call-1")
    replay, _ = await desk.propose("cancel_order", {"order_id": "ORD-67890"}, key="call-1")
    assert replay.pending_action.action_id == first.pending_action.action_id
    _, content = await desk.propose("cancel_order", {"order_id": "ORD-67890", "x": 1}, key="call-1")
    assert content["error"]["code"] == "invalid_arguments"
    _, content = await desk.propose("start_return", {"order_id": "ORD-24816"}, key="call-1")
    assert content["error"]["code"] == "conflict"  # the key names another action
    newer, _ = await desk.propose(
        "change_delivery_address", {"order_id": "ORD-67890", "address": ADDRESS}, key="call-2"
    )
    assert newer.pending_action.action_id != first.pending_action.action_id
    older, latest = await desk.listed()
    assert older.action_id == first.pending_action.action_id
    assert older.state == types_pb2.ACTION_STATE_DECLINED and older.note == "superseded by a newer proposal"
    assert latest.state == types_pb2.ACTION_STATE_PENDING
    ran = await desk.run(first.pending_action.action_id)
    assert not ran.ran_now and ran.action.state == types_pb2.ACTION_STATE_DECLINED


async def test_concurrent_confirmations_run_once(desk: Desk) -> None:
    response, _ = await desk.propose("cancel_order", {"order_id": "ORD-67890"})
    action_id = response.pending_action.action_id
    results = await asyncio.gather(*(desk.run(action_id) for _ in range(8)))
    assert sum(result.ran_now for result in results) == 1
    assert all(result.action.state == types_pb2.ACTION_STATE_EXECUTED for result in results)
    assert await desk.status("ORD-67890") == "cancelled"
    if desk.api is not None:
        assert desk.api.applied("cancel", "ORD-67890") == 1


async def test_another_customers_order_and_action_are_not_found(desk: Desk) -> None:
    _, theirs = await desk.propose("cancel_order", {"order_id": "ORD-13579"})  # cust-002's order
    _, missing = await desk.propose("cancel_order", {"order_id": "ORD-99999"})
    assert theirs["error"]["code"] == "not_found"
    assert theirs == missing  # byte-identical: nothing tells "someone else's" from "missing"
    assert await desk.listed() == []
    assert await desk.status("ORD-13579") == "processing"

    mine, _ = await desk.propose("cancel_order", {"order_id": "ORD-67890"})
    action_id = mine.pending_action.action_id
    for metadata, conversation in ((CUST_2, "conv-w"), (CUST_1, "another-conversation")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await desk.run(action_id, conversation=conversation, metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await desk.tools.stub.DropAction(
                tools_pb2.DropActionRequest(action_id=action_id, conversation_id=conversation, note="x"),
                metadata=metadata,
                timeout=10,
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert await desk.listed(metadata=CUST_2) == []
    assert await desk.status("ORD-67890") == "processing"


async def test_cancelling_a_shipped_order_is_not_allowed_and_proposes_nothing(desk: Desk) -> None:
    response, content = await desk.propose("cancel_order", {"order_id": "ORD-12345"})
    assert response.error.code == tools_pb2.TOOL_ERROR_CODE_NOT_ALLOWED
    assert content["error"]["message"] == (
        "Order ORD-12345 has already shipped, so it can't be cancelled; the customer can return it once delivered."
    )
    assert not response.HasField("pending_action")
    assert await desk.listed() == []


async def test_order_that_ships_before_the_confirmation_is_not_executed(desk: Desk) -> None:
    response, _ = await desk.propose("cancel_order", {"order_id": "ORD-67890"})
    await desk.set_status("ORD-67890", "shipped")
    ran = await desk.run(response.pending_action.action_id)
    assert ran.ran_now and ran.action.state == types_pb2.ACTION_STATE_NOT_EXECUTED
    assert "shipped" in ran.action.note
    assert await desk.status("ORD-67890") == "shipped"


async def test_return_inside_and_outside_the_window(desk: Desk) -> None:
    response, _ = await desk.propose("start_return", {"order_id": "ORD-24816", "reason": "Too small"})
    assert response.pending_action.summary == "Start a return for order ORD-24816 (1 item, $39.00)"
    ran = await desk.run(response.pending_action.action_id)
    assert ran.action.state == types_pb2.ACTION_STATE_EXECUTED
    result = json.loads(ran.action.result_json)
    assert (
        result["order_id"] == "ORD-24816"
        and result["return_id"].startswith("RET-")
        and result["instructions"]
    )
    assert await desk.status("ORD-24816") == "delivered"  # a return is recorded; the status stays

    _, again = await desk.propose("start_return", {"order_id": "ORD-24816"})
    assert again["error"]["code"] == "not_allowed"
    assert f"a return is already open: {result['return_id']}" in again["error"]["message"]

    _, late = await desk.propose("start_return", {"order_id": "ORD-11223"})
    assert late["error"]["code"] == "not_allowed" and "return window" in late["error"]["message"]
    _, not_delivered = await desk.propose("start_return", {"order_id": "ORD-67890"})
    assert not_delivered["error"]["code"] == "not_allowed"


@pytest.mark.parametrize(
    ("address", "field"),
    [
        ({**ADDRESS, "country": "France"}, "address.country"),
        ({**ADDRESS, "country": "fr"}, "address.country"),
        ({k: v for k, v in ADDRESS.items() if k != "city"}, "address.city"),
        ({**ADDRESS, "line1": "   "}, "address.line1"),
        ({**ADDRESS, "line1": "12 Rue\x07 de Rivoli"}, "address.line1"),
        ({**ADDRESS, "postal_code": "9" * 40}, "address.postal_code"),
        ({**ADDRESS, "planet": "Mars"}, "address"),
    ],
)
async def test_address_is_validated_naming_the_field(desk: Desk, address: dict[str, str], field: str) -> None:
    response, content = await desk.propose(
        "change_delivery_address", {"order_id": "ORD-67890", "address": address}
    )
    assert response.error.code == tools_pb2.TOOL_ERROR_CODE_INVALID_ARGUMENTS
    assert field in content["error"]["message"]
    assert await desk.listed() == []


async def test_address_change_before_shipping_only(desk: Desk) -> None:
    arguments = {"order_id": "ORD-67890", "address": {**ADDRESS, "line2": "Apt 4"}}
    response, _ = await desk.propose("change_delivery_address", arguments)
    assert response.pending_action.summary == (
        "Change the delivery address of order ORD-67890 to 12 Rue de Rivoli, Apt 4, 75001 Paris, FR"
    )
    ran = await desk.run(response.pending_action.action_id)
    assert ran.action.state == types_pb2.ACTION_STATE_EXECUTED
    assert json.loads(ran.action.result_json) == {
        "order_id": "ORD-67890",
        "address": "12 Rue de Rivoli, Apt 4, 75001 Paris, FR",
    }
    if desk.api is not None:
        assert desk.api.orders["ORD-67890"]["address"]["line2"] == "Apt 4"
    _, shipped = await desk.propose("change_delivery_address", {"order_id": "ORD-12345", "address": ADDRESS})
    assert shipped["error"]["code"] == "not_allowed"


async def test_write_limit_per_customer(start_tools: StartTools) -> None:
    desk = Desk(await start_tools(write_actions_per_customer_per_hour=2), None)
    for conversation in ("c1", "c2"):
        response, _ = await desk.propose("cancel_order", {"order_id": "ORD-67890"}, conversation=conversation)
        assert response.HasField("pending_action")
    third, _ = await desk.propose("cancel_order", {"order_id": "ORD-67890"}, conversation="c3")
    assert third.error.code == tools_pb2.TOOL_ERROR_CODE_RATE_LIMITED
    assert third.error.retry_after_seconds > 0
    assert len(await desk.listed(conversation="c3")) == 0
    other, _ = await desk.propose("cancel_order", {"order_id": "ORD-13579"}, metadata=CUST_2)
    assert other.HasField("pending_action")  # another customer has their own budget


async def test_missing_identity_never_grants_more(desk: Desk) -> None:
    service_only = shared_test_credentials().metadata("service")
    response, content = await desk.propose("cancel_order", {"order_id": "ORD-67890"}, metadata=service_only)
    assert content["error"]["code"] == "unauthenticated"
    assert not response.HasField("pending_action")
    mine, _ = await desk.propose("cancel_order", {"order_id": "ORD-67890"})
    for call in (
        desk.run(mine.pending_action.action_id, metadata=service_only),
        desk.listed(metadata=service_only),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await desk.status("ORD-67890") == "processing"


async def test_backend_button_staff_audit_and_bad_confirmation(desk: Desk) -> None:
    credentials = shared_test_credentials()
    response, _ = await desk.propose("cancel_order", {"order_id": "ORD-67890"})
    action_id = response.pending_action.action_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await desk.run(action_id, confirmation="yes please")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    staff = credentials.metadata("staff", agent_name="dana")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await desk.run(action_id, metadata=staff)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    ran = await desk.run(action_id, metadata=credentials.metadata("backend", customer_id="cust-001"))
    assert ran.ran_now and ran.action.state == types_pb2.ACTION_STATE_EXECUTED
    (audited,) = await desk.listed(metadata=staff)
    assert audited.action_id == action_id and audited.confirmation == "button"


# ---- the HTTP order API has the last word ------------------------------------------------------------------


@pytest.fixture
async def http_desk(start_tools: StartTools) -> AsyncIterator[Desk]:
    async with running_order_api() as api:
        tools = await start_tools(
            order_backend="http", order_api_url=api.url, order_api_timeout_seconds=0.5, order_api_retries=0
        )
        yield Desk(tools, api)


async def test_timeout_during_the_write_is_unknown_with_a_reconciliation_note(http_desk: Desk) -> None:
    assert http_desk.api is not None
    response, _ = await http_desk.propose("cancel_order", {"order_id": "ORD-67890"})
    http_desk.api.script[("cancel", "ORD-67890")] = "slow"
    ran = await http_desk.run(response.pending_action.action_id)
    assert ran.ran_now and ran.action.state == types_pb2.ACTION_STATE_UNKNOWN
    assert "check order ORD-67890" in ran.action.note
    again = await http_desk.run(response.pending_action.action_id)
    assert not again.ran_now and again.action.state == types_pb2.ACTION_STATE_UNKNOWN  # never retried


@pytest.mark.parametrize(
    ("behaviour", "state"), [("drop", "UNKNOWN"), ("500", "UNKNOWN"), ("409", "NOT_EXECUTED")]
)
async def test_write_failures_leave_a_clear_state(http_desk: Desk, behaviour: str, state: str) -> None:
    assert http_desk.api is not None
    response, _ = await http_desk.propose("cancel_order", {"order_id": "ORD-67890"})
    http_desk.api.script[("cancel", "ORD-67890")] = behaviour
    ran = await http_desk.run(response.pending_action.action_id)
    assert ran.action.state == types_pb2.ActionState.Value(f"ACTION_STATE_{state}")
    if behaviour == "409":
        assert ran.action.note == "The warehouse already picked this order."
    assert http_desk.api.applied("cancel", "ORD-67890") == 0
