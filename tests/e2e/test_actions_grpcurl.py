"""Issue 16 end to end: `python -m devstack` (the offline engine, auth on) driven by the real grpcurl binary.

By message: Chat "cancel ORD-67890" proposes (nothing changes), Chat "yes" runs it once (LookupOrderStatus says
cancelled), GetConversation shows the action with its outcome and confirmation. By button: a proposed return
confirmed with ConfirmAction, a retry of the same press returns the first response, staff may not press.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e import test_stack_grpcurl as started_stack
from tests.e2e.test_stack_grpcurl import CUSTOMER, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# The module-scoped `python -m devstack` fixture (a stack of this module's own, fresh demo data).
stack = started_stack.stack


def call(
    stack: Stack, service: str, method: str, data: dict[str, Any], role: str = "backend"
) -> dict[str, Any]:
    headers = ["-H", stack.bearer(role)]
    if role != "staff":
        headers += ["-H", CUSTOMER]
    out = stack.grpcurl(*headers, stack.addrs[service], f"support.v1.{method}", data=data)
    return dict(json.loads(out))


def order_status(stack: Stack, order_id: str) -> str:
    reply = call(stack, "tools", "ToolsService/LookupOrderStatus", {"order_id": order_id}, role="service")
    return str(reply["status"])


def test_chat_proposes_yes_runs_it_once_and_the_conversation_shows_it(stack: Stack) -> None:
    proposed = stack.chat("e2e-act-msg", "Please cancel my order ORD-67890")
    action = proposed["action"]
    assert action["state"] == "ACTION_STATE_PENDING"
    assert action["summary"] == "Cancel order ORD-67890 (2 items, $84.00)"
    assert "Shall I go ahead?" in proposed["reply"]
    assert order_status(stack, "ORD-67890") == "ORDER_STATUS_PROCESSING"

    done = call(
        stack,
        "agent",
        "AgentService/Chat",
        {"conversation_id": "e2e-act-msg", "message": "yes", "turn_id": "yes-1"},
    )
    assert done["action"]["state"] == "ACTION_STATE_EXECUTED"
    assert done["action"]["confirmation"] == "message:yes-1"
    assert "cancelled" in done["reply"]
    assert order_status(stack, "ORD-67890") == "ORDER_STATUS_CANCELLED"
    again = call(
        stack,
        "agent",
        "AgentService/Chat",
        {"conversation_id": "e2e-act-msg", "message": "yes", "turn_id": "yes-1"},
    )
    assert again["replayed"] is True and again["action"] == done["action"]

    conversation = call(stack, "agent", "AgentService/GetConversation", {"conversation_id": "e2e-act-msg"})
    recorded = [turn["action"] for turn in conversation["turns"] if "action" in turn]
    assert [(item["state"], item.get("confirmation", "")) for item in recorded] == [
        ("ACTION_STATE_PENDING", ""),
        ("ACTION_STATE_EXECUTED", "message:yes-1"),
    ]
    assert json.loads(recorded[-1]["result_json"])["status"] == "cancelled"
    assert sum(1 for event in conversation["events"] if "action" in event) == 2


def test_the_button_confirms_once_a_retry_replays_and_staff_may_not_press(stack: Stack) -> None:
    proposed = stack.chat("e2e-act-button", "I'd like to return order ORD-24816")
    action = proposed["action"]
    assert action["state"] == "ACTION_STATE_PENDING" and action["tool_name"] == "start_return"
    press = {"conversation_id": "e2e-act-button", "action_id": action["action_id"], "turn_id": "press-1"}
    staff = stack.run_grpcurl(
        "-H",
        stack.bearer("staff"),
        "-H",
        "x-agent-name: dana",
        stack.addrs["agent"],
        "support.v1.AgentService/ConfirmAction",
        data=press,
    )
    assert staff.returncode != 0 and "PermissionDenied" in staff.stderr

    first = call(stack, "agent", "AgentService/ConfirmAction", press)["response"]
    assert first["action"]["state"] == "ACTION_STATE_EXECUTED"
    assert first["action"]["confirmation"] == "button"
    return_id = json.loads(first["action"]["result_json"])["return_id"]
    assert return_id in first["reply"]
    retried = call(stack, "agent", "AgentService/ConfirmAction", press)["response"]
    assert retried["replayed"] is True and retried["action"] == first["action"]

    listed = call(
        stack, "tools", "ToolsService/ListActions", {"conversation_id": "e2e-act-button"}, role="service"
    )
    assert [(item["state"], item["confirmation"]) for item in listed["actions"]] == [
        ("ACTION_STATE_EXECUTED", "button")
    ]
