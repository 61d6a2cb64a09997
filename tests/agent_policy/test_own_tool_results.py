"""The tools service's own words must reach the model: the agent withholds a tool result that reads as
instructions (`scan_untrusted`), so a not-found answer, a rule's refusal or a proposal's note phrased as an
order to the model ("ask the customer to check ...") would turn every missing order into "try again later".
Each message the tools service writes itself is checked here against the real detector."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from agent_service.guardrails import scan_untrusted
from tools_service import http_tool, order_rules
from tools_service.actions import AWAITING_NOTE
from tools_service.errors import NotAllowedError
from tools_service.orders import NOT_FOUND_MESSAGE, ORDER_STATUSES, Order


def _refusals() -> list[str]:
    messages = []
    today = dt.date(2026, 12, 3)
    for status in ORDER_STATUSES:
        order = Order("ORD-67890", "cust-001", status, None, None, None, delivered_on="2026-01-28")
        for check in (order_rules.check_cancel, order_rules.check_address_change):
            try:
                check(order)
            except NotAllowedError as error:
                messages.append(error.message)
        try:
            order_rules.check_return(order, today)
        except NotAllowedError as error:
            messages.append(error.message)
    return messages


OWN_MESSAGES = [
    NOT_FOUND_MESSAGE,
    http_tool.NOT_FOUND_MESSAGE,
    AWAITING_NOTE,
    order_rules.RETURN_INSTRUCTIONS,
    *_refusals(),
]


@pytest.mark.parametrize("message", OWN_MESSAGES)
def test_the_tools_services_own_messages_are_not_withheld(message: str) -> None:
    content = json.dumps({"error": {"code": "not_found", "message": message, "retryable": False}})
    assert scan_untrusted("tool:cancel_order", content) == ()
