"""The offline engine's write requests, through its public interface (`OfflineModel.decide`): a customer
message → the write tool call it plans, the question it asks for what is missing, or the reply it gives
instead; a write tool's result (the proposal, a refusal, the executed write) → the reply. No network: the
engine only plans calls, the turn loop runs them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from agent_service.adapters.offline_model import OfflineModel
from agent_service.adapters.offline_orders import ASK_ORDER_ID
from agent_service.escalation_policy import EscalationDecision
from agent_service.model_port import ModelRequest, ModelResult
from agent_service.postal_address import ADDRESS_EXAMPLE
from agent_service.texts import DONT_KNOW

ORDER_ARGUMENT = {"order_id": {"type": "string"}}
ADDRESS_ARGUMENT = {
    "type": "object",
    "properties": {name: {"type": "string"} for name in ("line1", "line2", "city", "postal_code", "country")},
}


def _tool(name: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": name,
            "parameters": {"type": "object", "properties": properties},
        },
    }


READ_TOOLS = [_tool("lookup_order_status", ORDER_ARGUMENT), _tool("escalate_to_human", {"reason": {}})]
WRITE_TOOLS = [
    _tool("cancel_order", ORDER_ARGUMENT),
    _tool("start_return", {**ORDER_ARGUMENT, "reason": {"type": "string"}}),
    _tool("change_delivery_address", {**ORDER_ARGUMENT, "address": ADDRESS_ARGUMENT}),
]
ALL_TOOLS = READ_TOOLS + WRITE_TOOLS
RIVOLI = {"line1": "12 Rue de Rivoli", "city": "Paris", "postal_code": "75001", "country": "FR"}


@pytest.fixture(scope="module")
def engine() -> OfflineModel:
    return OfflineModel()


def _decide(
    engine: OfflineModel,
    message: str,
    history: Sequence[tuple[str, str]] = (),
    tools: Sequence[Mapping[str, Any]] = ALL_TOOLS,
    hint: EscalationDecision | None = None,
) -> ModelResult:
    messages = [{"role": role, "content": content} for role, content in history]
    messages.append({"role": "user", "content": message})
    return engine.decide(
        ModelRequest(messages=messages, tools=tools, user_message=message, escalation_hint=hint)
    )


def _planned(result: ModelResult) -> list[tuple[str, dict[str, Any]]]:
    return [(call.name, json.loads(call.arguments)) for call in result.tool_calls]


def _reply_to(
    engine: OfflineModel, message: str, tool: str, arguments: Mapping[str, Any], result: Any
) -> str:
    """The engine's reply once the loop ran its call of `tool` and appended the result."""
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": tool, "arguments": json.dumps(arguments)},
    }
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": message},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": json.dumps(result)},
    ]
    decided = engine.decide(ModelRequest(messages=messages, tools=ALL_TOOLS, user_message=message))
    assert not decided.tool_calls
    return decided.content


@pytest.mark.parametrize(
    ("message", "tool", "arguments"),
    [
        ("Please cancel order ORD-67890", "cancel_order", {"order_id": "ORD-67890"}),
        ("Quiero cancelar mi pedido ORD-13579", "cancel_order", {"order_id": "ORD-13579"}),
        ("Je voudrais retourner ORD-24816", "start_return", {"order_id": "ORD-24816"}),
        (
            "I want to return ORD-24816 because it is too small.",
            "start_return",
            {"order_id": "ORD-24816", "reason": "it is too small"},
        ),
        (
            "Please change the delivery address of ORD-67890 to 12 Rue de Rivoli, 75001 Paris, FR",
            "change_delivery_address",
            {"order_id": "ORD-67890", "address": RIVOLI},
        ),
        (
            "Please ship ORD-67890 to 12 Rue de Rivoli, 75001 Paris, FR instead",
            "change_delivery_address",
            {"order_id": "ORD-67890", "address": RIVOLI},
        ),
    ],
)
def test_a_request_with_everything_it_needs_plans_that_write_call(
    engine: OfflineModel, message: str, tool: str, arguments: dict[str, Any]
) -> None:
    result = _decide(engine, message)
    assert _planned(result) == [(tool, arguments)]
    assert result.content == ""


def test_the_return_reason_is_left_out_when_the_tool_does_not_declare_it(engine: OfflineModel) -> None:
    tools = [*READ_TOOLS, _tool("start_return", ORDER_ARGUMENT)]
    result = _decide(engine, "I want to return ORD-24816 because it is too small", tools=tools)
    assert _planned(result) == [("start_return", {"order_id": "ORD-24816"})]


def test_a_refused_write_calls_nothing_and_says_nothing_changed(engine: OfflineModel) -> None:
    result = _decide(engine, "Don't cancel ORD-67890")
    assert result.tool_calls == ()
    assert result.content == "Understood: I won't cancel order ORD-67890. Nothing has been changed."


@pytest.mark.parametrize(
    "message",
    ["How can I cancel something I ordered this morning?", "I don't know how to cancel", "It was cancelled"],
)
def test_a_mention_that_asks_for_nothing_plans_no_write(engine: OfflineModel, message: str) -> None:
    result = _decide(engine, message)
    assert result.tool_calls == ()
    assert result.content == DONT_KNOW  # no knowledge base hits in these requests


def test_a_question_about_an_order_looks_it_up_instead(engine: OfflineModel) -> None:
    assert _planned(_decide(engine, "Can I return ORD-24816?")) == [
        ("lookup_order_status", {"order_id": "ORD-24816"})
    ]


def test_without_the_write_tool_the_order_is_looked_up(engine: OfflineModel) -> None:
    result = _decide(engine, "Please cancel ORD-67890", tools=READ_TOOLS)
    assert _planned(result) == [("lookup_order_status", {"order_id": "ORD-67890"})]


def test_a_turn_handed_to_a_person_proposes_no_change(engine: OfflineModel) -> None:
    hint = EscalationDecision("sensitive_topic", "high", "legal: 'lawyer'", "I've passed this to a person.")
    result = _decide(engine, "Cancel ORD-67890 or my lawyer will call you", hint=hint)
    assert [name for name, _ in _planned(result)] == ["lookup_order_status", "escalate_to_human"]


def test_without_an_order_id_it_asks_for_one_then_reads_the_answer(engine: OfflineModel) -> None:
    asked = _decide(engine, "I want to cancel my order")
    assert asked.tool_calls == ()
    assert asked.content == f"Which order would you like me to cancel? {ASK_ORDER_ID}"
    history = [("user", "I want to cancel my order"), ("assistant", asked.content)]
    answered = _decide(engine, "it's ORD-67890", history=history)
    assert _planned(answered) == [("cancel_order", {"order_id": "ORD-67890"})]


def test_the_order_id_of_an_earlier_message_is_used(engine: OfflineModel) -> None:
    history = [
        ("user", "What's the status of ORD-67890?"),
        ("assistant", "Your order ORD-67890 is processing."),
    ]
    assert _planned(_decide(engine, "OK, cancel it please", history=history)) == [
        ("cancel_order", {"order_id": "ORD-67890"})
    ]


def test_the_example_order_id_in_the_engine_s_own_question_is_never_used(engine: OfflineModel) -> None:
    asked = _decide(engine, "cancel my order")
    history = [("user", "cancel my order"), ("assistant", asked.content)]
    again = _decide(engine, "cancel it please", history=history)
    assert again.tool_calls == ()
    assert "ORD-12345" in asked.content and "Which order" in again.content


def test_without_a_readable_address_it_asks_for_one_then_reads_the_answer(engine: OfflineModel) -> None:
    message = "I need to change the delivery address of ORD-67890"
    asked = _decide(engine, message)
    assert asked.tool_calls == ()
    assert "order ORD-67890" in asked.content and ADDRESS_EXAMPLE in asked.content
    history = [("user", message), ("assistant", asked.content)]
    answered = _decide(engine, "12 Rue de Rivoli, 75001 Paris, FR", history=history)
    assert _planned(answered) == [("change_delivery_address", {"order_id": "ORD-67890", "address": RIVOLI})]


def test_a_proposal_is_read_back_with_the_question_to_confirm(engine: OfflineModel) -> None:
    result = {
        "pending_action": {"action_id": "act-1", "summary": "Cancel order ORD-67890 (2 items, $84.00)"},
        "status": "awaiting_confirmation",
    }
    reply = _reply_to(engine, "cancel ORD-67890", "cancel_order", {"order_id": "ORD-67890"}, result)
    assert reply == (
        'Cancel order ORD-67890 (2 items, $84.00). Shall I go ahead? Reply "yes" to confirm or "no" to keep '
        "things as they are."
    )


def test_a_refusal_by_the_order_s_rules_is_explained_to_the_customer(engine: OfflineModel) -> None:
    message = "Order ORD-12345 has already shipped, so it can't be cancelled; the customer can return it once delivered."
    result = {"error": {"code": "not_allowed", "message": message}}
    reply = _reply_to(engine, "cancel ORD-12345", "cancel_order", {"order_id": "ORD-12345"}, result)
    assert reply == (
        "Sorry, I can't cancel order ORD-12345. Order ORD-12345 has already shipped, so it can't be cancelled; "
        "you can return it once delivered."
    )


def test_another_customer_s_order_reads_like_a_missing_one(engine: OfflineModel) -> None:
    result = {"error": {"code": "not_found", "message": "No order ORD-24680 on this account."}}
    reply = _reply_to(engine, "cancel ORD-24680", "cancel_order", {"order_id": "ORD-24680"}, result)
    assert reply.startswith("I couldn't find an order ORD-24680 on your account.")


@pytest.mark.parametrize(
    ("tool", "result", "expected"),
    [
        (
            "cancel_order",
            {
                "order_id": "ORD-67890",
                "status": "cancelled",
                "refund": "$84.00 to the original payment method",
            },
            "Done: order ORD-67890 is cancelled. Refund: $84.00 to the original payment method.",
        ),
        (
            "start_return",
            {"order_id": "ORD-24816", "return_id": "RET-123456", "instructions": "Print the label."},
            "I've started a return for order ORD-24816. Your return number is RET-123456. Print the label.",
        ),
        (
            "change_delivery_address",
            {"order_id": "ORD-67890", "address": "12 Rue de Rivoli, 75001 Paris, FR"},
            "Done: order ORD-67890 will be delivered to 12 Rue de Rivoli, 75001 Paris, FR.",
        ),
    ],
)
def test_an_executed_write_is_reported_from_its_result(
    engine: OfflineModel, tool: str, result: dict[str, Any], expected: str
) -> None:
    assert _reply_to(engine, "yes", tool, {"order_id": result["order_id"]}, result) == expected


def test_an_address_the_tools_service_rejects_is_asked_for_again(engine: OfflineModel) -> None:
    result = {"error": {"code": "invalid_arguments", "message": "address.country must be two letters"}}
    reply = _reply_to(engine, "change it", "change_delivery_address", {"order_id": "ORD-67890"}, result)
    assert "address.country must be two letters" in reply and ADDRESS_EXAMPLE in reply


def test_the_write_limit_is_explained(engine: OfflineModel) -> None:
    result = {"error": {"code": "rate_limited", "message": "too many changes this hour"}}
    reply = _reply_to(engine, "cancel ORD-67890", "cancel_order", {"order_id": "ORD-67890"}, result)
    assert reply == "I can't make more changes right now. Please try again in a little while."


def test_an_error_written_for_the_model_is_not_quoted_to_the_customer(engine: OfflineModel) -> None:
    withheld = "The tool result contained instruction-like text and was withheld; offer the customer a human."
    result = {"error": {"code": "untrusted_content", "message": withheld}}
    reply = _reply_to(engine, "cancel ORD-67890", "cancel_order", {"order_id": "ORD-67890"}, result)
    assert reply == (
        "I couldn't cancel order ORD-67890 right now, and nothing has been changed. Please try again in a moment."
    )
    lookup = _reply_to(
        engine, "where is ORD-67890?", "lookup_order_status", {"order_id": "ORD-67890"}, result
    )
    assert lookup == "I couldn't look that order up right now. Please try again in a moment."
