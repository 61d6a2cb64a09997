"""`action_intent.classify`: whether a message confirms, declines or moves on from a pending write action
(EN/ES/FR/DE/PT); `action_flow.refusal` for a write the message refuses; a turn's action survives the stores'
serialisation. Pure functions, no stack."""

from __future__ import annotations

import json

import pytest

from agent_service import action_flow
from agent_service.action_intent import ActionIntent, classify
from agent_service.domain import ActionInfo, TurnResult

CANCEL_ARGS = json.dumps({"order_id": "ORD-67890"})


@pytest.mark.parametrize(
    "message",
    [
        "yes",
        "Yes!",
        "yes, cancel it",
        "yes please",
        "go ahead",
        "confirm",
        "ok thanks",
        "cancel it",
        "yes cancel ORD-67890",
        "sí",
        "Sí, cancélalo",
        "vale",
        "oui",
        "oui, vas-y",
        "d\u2019accord",
        "ja",
        "ja bitte",
        "sim",
        "pode ser",
    ],
)
def test_confirmations(message: str) -> None:
    assert classify(message, "cancel_order", CANCEL_ARGS) is ActionIntent.CONFIRM


@pytest.mark.parametrize(
    "message",
    [
        "no",
        "No.",
        "nope",
        "don't",
        "leave it",
        "never mind",
        "no, don't cancel it",
        "I don't want to cancel it anymore",
        "non",
        "non merci",
        "nein",
        "lass es",
        "não",
        "no gracias",
    ],
)
def test_declines(message: str) -> None:
    assert classify(message, "cancel_order", CANCEL_ARGS) is ActionIntent.DECLINE


@pytest.mark.parametrize(
    "message",
    [
        "How long does shipping take?",
        "yes, but will I get the refund today?",
        "can you tell me about your return policy",
        "yes cancel ORD-11111",  # another order than the one proposed
        "Actually I want to return ORD-24816",
        "yes and also change my address to 12 Rue de Rivoli, 75001 Paris",
        "no, cancel it",  # a no and a yes: never read as either
        "yes I was wondering whether you could also help me with a problem on my account login",
        "👍",
    ],
)
def test_anything_else_is_other(message: str) -> None:
    assert classify(message, "cancel_order", CANCEL_ARGS) is ActionIntent.OTHER


def test_asking_for_a_different_write_is_not_a_confirmation_of_the_pending_one() -> None:
    assert classify("cancel it", "start_return", CANCEL_ARGS) is ActionIntent.OTHER
    assert classify("return it", "start_return", CANCEL_ARGS) is ActionIntent.CONFIRM


def test_refusal_answers_a_negated_write_call_with_not_requested() -> None:
    refused = action_flow.refusal("Don't cancel ORD-67890", "cancel_order")
    assert refused is not None and refused.is_error
    assert json.loads(refused.content_json)["error"]["code"] == "not_requested"
    assert action_flow.refusal("Please cancel ORD-67890", "cancel_order") is None
    assert action_flow.refusal("Don't cancel ORD-67890", "lookup_order_status") is None


def test_a_turns_action_round_trips_through_the_stored_json() -> None:
    action = ActionInfo(
        action_id="act-1",
        conversation_id="c1",
        tool_name="cancel_order",
        arguments_json=CANCEL_ARGS,
        summary="Cancel order ORD-67890 (2 items, $84.00)",
        state="executed",
        create_time=1.5,
        expire_time=601.5,
        decide_time=9.0,
        confirmation="message:t2",
        result_json='{"status": "cancelled"}',
    )
    turn = TurnResult(conversation_id="c1", turn_id="t2", reply="Done", action=action)
    assert TurnResult.from_json(turn.to_json()) == turn
    assert TurnResult.from_json(TurnResult(conversation_id="c1", turn_id="t1").to_json()).action is None
