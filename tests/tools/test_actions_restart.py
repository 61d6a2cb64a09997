"""The tools database across restarts: a data dir written before orders carried their items still starts, and a
write interrupted by a stop is UNKNOWN afterwards (never run again, never silently lost)."""

from __future__ import annotations

import json
import sqlite3

from support.v1 import tools_pb2, types_pb2
from tests.tools.conftest import StartTools
from tools_service.config import Config

CUST_1 = (("x-customer-id", "cust-001"),)
OLD_ORDERS = """
CREATE TABLE orders (
    order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, status TEXT NOT NULL,
    tracking_number TEXT, carrier TEXT, eta TEXT
);
INSERT INTO orders VALUES ('ORD-67890', 'cust-001', 'processing', NULL, NULL, '2026-02-20');
"""


def propose(order_id: str) -> tools_pb2.ExecuteToolRequest:
    return tools_pb2.ExecuteToolRequest(
        tool_name="cancel_order", arguments_json=json.dumps({"order_id": order_id}), conversation_id="conv-r"
    )


async def test_an_existing_data_dir_still_starts_and_can_cancel(
    base_config: Config, start_tools: StartTools
) -> None:
    base_config.data_dir.mkdir(parents=True)
    with sqlite3.connect(base_config.db_path) as conn:
        conn.executescript(OLD_ORDERS)
    tools = await start_tools()
    response = await tools.stub.ExecuteTool(propose("ORD-67890"), metadata=CUST_1, timeout=10)
    assert response.pending_action.summary == "Cancel order ORD-67890"  # no item details on record
    ran = await tools.stub.RunAction(
        tools_pb2.RunActionRequest(
            action_id=response.pending_action.action_id, conversation_id="conv-r", confirmation="button"
        ),
        metadata=CUST_1,
        timeout=10,
    )
    assert ran.action.state == types_pb2.ACTION_STATE_EXECUTED


async def test_a_write_interrupted_by_a_stop_is_unknown_after_the_restart(start_tools: StartTools) -> None:
    first = await start_tools()
    response = await first.stub.ExecuteTool(propose("ORD-67890"), metadata=CUST_1, timeout=10)
    action_id = response.pending_action.action_id
    await first.channel.close()
    await first.started.stop(None)
    # What a crash between the claim and the outcome leaves behind.
    with sqlite3.connect(first.config.db_path) as conn:
        conn.execute("UPDATE actions SET state = 'running' WHERE action_id = ?", (action_id,))

    second = await start_tools()
    listed = await second.stub.ListActions(
        tools_pb2.ListActionsRequest(conversation_id="conv-r"), metadata=CUST_1, timeout=10
    )
    (action,) = listed.actions
    assert action.state == types_pb2.ACTION_STATE_UNKNOWN
    assert "check the order" in action.note
    ran = await second.stub.RunAction(
        tools_pb2.RunActionRequest(action_id=action_id, conversation_id="conv-r", confirmation="button"),
        metadata=CUST_1,
        timeout=10,
    )
    assert not ran.ran_now and ran.action.state == types_pb2.ACTION_STATE_UNKNOWN
