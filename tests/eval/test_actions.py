"""Write actions in the eval: the suite format's `pending_action` / `executed` / `declined` / `no_write`
expectations and `confirm` / `decline` / `button` turns, the "actions" rate, and the driver's confirmations
(the message "yes" / "no", or ConfirmAction / DeclineAction) against an in-process fake agent over real gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support_eval import driver, report, scorer
from support_eval.records import ActionRecord, ConversationRecord, TurnRecord
from support_eval.suite import CONFIRM_MESSAGE, DECLINE_MESSAGE, Expect, Suite, SuiteError, parse_suite
from tests.eval.fakes import FAKE_ACTION_ID, FakeStack, start_fake_stack

CANCEL = "cancel_order"


def _suite(conversations: list[dict[str, Any]]) -> Suite:
    data = {"name": "actions", "kb": "kb", "customer_id": "cust-001", "conversations": conversations}
    return parse_suite(data, base_dir=Path("."))


def _conversation(turns: list[Any], **extra: Any) -> dict[str, Any]:
    return {"id": "c", "turns": turns, **extra}


CANCEL_AND_CONFIRM = [
    {"message": "cancel ORD-67890", "expect": {"pending_action": CANCEL}},
    {"confirm": True, "expect": {"executed": CANCEL}},
]


# ---- the loader -----------------------------------------------------------------------------------------


def test_confirm_and_decline_turns_send_yes_and_no_unless_they_say_otherwise() -> None:
    turns = [
        {"message": "cancel ORD-67890"},
        {"confirm": True},
        {"decline": True},
        {"confirm": True, "message": "sí, adelante"},
        {"decline": True, "button": True},
    ]
    parsed = _suite([_conversation(turns)]).conversations[0].turns
    assert [(turn.message, turn.confirm, turn.decline, turn.button) for turn in parsed[1:]] == [
        (CONFIRM_MESSAGE, True, False, False),
        (DECLINE_MESSAGE, False, True, False),
        ("sí, adelante", True, False, False),
        (DECLINE_MESSAGE, False, True, True),
    ]


def test_action_expectations_are_read() -> None:
    turns = [
        {"message": "cancel it", "expect": {"pending_action": CANCEL}},
        {"confirm": True, "expect": {"executed": CANCEL}},
        {"message": "cancel it", "expect": {"pending_action": CANCEL}},
        {"decline": True, "expect": {"declined": CANCEL, "no_write": True}},
        {"message": "thanks", "expect": {"no_write": False}},
    ]
    expects = [turn.expect for turn in _suite([_conversation(turns)]).conversations[0].turns]
    assert expects == [
        Expect(pending_action=CANCEL),
        Expect(executed=CANCEL),
        Expect(pending_action=CANCEL),
        Expect(declined=CANCEL, no_write=True),
        Expect(),  # no_write: false checks nothing
    ]


def test_a_no_write_conversation_expects_no_write_of_every_turn() -> None:
    turns = [{"message": "don't cancel ORD-67890", "expect": {"contains": ["won't"]}}, {"message": "ok"}]
    parsed = _suite([_conversation(turns, no_write=True)]).conversations[0].turns
    assert [turn.expect.no_write for turn in parsed] == [True, True]
    assert parsed[0].expect.contains == ("won't",)


def test_only_conversations_that_confirm_change_orders() -> None:
    suite = _suite(
        [
            {"id": "confirms", "turns": CANCEL_AND_CONFIRM},
            {"id": "declines", "turns": [CANCEL_AND_CONFIRM[0], {"decline": True}]},
        ]
    )
    assert [conversation.changes_orders for conversation in suite.conversations] == [True, False]


@pytest.mark.parametrize(
    ("conversation", "error"),
    [
        (
            _conversation([{"confirm": True}]),
            "conversations[0].turns[0]: the first turn has no earlier action",
        ),
        (
            _conversation([{"message": "a"}, {"confirm": True, "decline": True}]),
            "conversations[0].turns[1]: confirm and decline are exclusive",
        ),
        (
            _conversation([{"message": "a"}, {"message": "b", "button": True}]),
            "conversations[0].turns[1].button: needs confirm: true or decline: true",
        ),
        (
            _conversation([{"message": "a"}, {"confirm": True, "button": True, "message": "yes"}]),
            "conversations[0].turns[1].message: a button press sends no message",
        ),
        (
            _conversation([{"message": "a", "expect": {"pending_action": CANCEL, "executed": CANCEL}}]),
            "conversations[0].turns[0].expect.executed: a turn carries one action; pending_action is also set",
        ),
        (
            _conversation([{"message": "a", "expect": {"executed": CANCEL, "no_write": True}}]),
            "conversations[0].turns[0].expect.no_write: set, but the turn also expects a write",
        ),
        (
            _conversation([{"message": "a", "expect": {"pending_action": CANCEL}}], no_write=True),
            "conversations[0].turns[0].expect: expects a write, but the conversation says no_write: true",
        ),
        (
            _conversation([{"message": "a", "expect": {"pending_action": ""}}]),
            "expect.pending_action: must not be",
        ),
        (
            _conversation([{"message": "a"}], no_write="yes"),
            "conversations[0].no_write: expected true or false",
        ),
        (_conversation([{"message": "a"}, {"confirm": "yes"}]), "turns[1].confirm: expected true or false"),
    ],
)
def test_a_malformed_action_case_names_the_place(conversation: dict[str, Any], error: str) -> None:
    with pytest.raises(SuiteError) as raised:
        _suite([conversation])
    assert error in str(raised.value)


# ---- the scorer -----------------------------------------------------------------------------------------


def _turn(message: str, tool: str = "", state: str = "") -> TurnRecord:
    action = ActionRecord(FAKE_ACTION_ID, tool, state, summary="Cancel order ORD-67890") if tool else None
    return TurnRecord(message, reply="ok", action=action)


def test_the_actions_rate_counts_turns_whose_action_expectations_held() -> None:
    suite = _suite(
        [
            {"id": "cancel", "turns": CANCEL_AND_CONFIRM},
            {
                "id": "decline",
                "turns": [CANCEL_AND_CONFIRM[0], {"decline": True, "expect": {"declined": CANCEL}}],
            },
            {"id": "refuse", "no_write": True, "turns": [{"message": "don't cancel ORD-67890"}]},
            {
                "id": "wrong",
                "turns": [{"message": "cancel ORD-67890", "expect": {"pending_action": "start_return"}}],
            },
            {"id": "unchecked", "turns": [{"message": "hello"}]},
        ]
    )
    records = [
        ConversationRecord(
            "cancel", "e-1", "cust-001", (_turn("a", CANCEL, "pending"), _turn("yes", CANCEL, "executed"))
        ),
        ConversationRecord(
            "decline", "e-2", "cust-001", (_turn("a", CANCEL, "pending"), _turn("no", CANCEL, "pending"))
        ),
        ConversationRecord("refuse", "e-3", "cust-001", (_turn("don't", CANCEL, "pending"),)),
        ConversationRecord("wrong", "e-4", "cust-001", (_turn("a", CANCEL, "pending"),)),
        ConversationRecord("unchecked", "e-5", "cust-001", (_turn("hello", CANCEL, "executed"),)),
    ]
    card = scorer.score(suite, records)
    actions = card.metrics["action_accuracy"]
    assert (actions.value, actions.numerator, actions.denominator) == (0.5, 3, 6)
    failed = {
        (o.conversation, o.turn_index): [(f.check, f.detail) for f in o.failures] for o in card.failed_turns
    }
    assert failed == {
        ("decline", 1): [("declined", "expected a declined cancel_order action; got cancel_order pending")],
        ("refuse", 0): [("no_write", "expected no write proposed or run; got cancel_order pending")],
        ("wrong", 0): [("pending", "expected a pending start_return action; got cancel_order pending")],
    }


@pytest.mark.parametrize(
    ("action", "held"),
    [
        (None, True),
        (("declined", CANCEL), True),
        (("expired", CANCEL), True),
        (("not_executed", CANCEL), True),
        (("pending", CANCEL), False),
        (("executed", CANCEL), False),
        (("unknown", CANCEL), False),  # it may have run
    ],
)
def test_no_write_holds_unless_an_action_was_proposed_or_may_have_run(
    action: tuple[str, str] | None, held: bool
) -> None:
    suite = _suite([{"id": "c", "no_write": True, "turns": [{"message": "a"}]}])
    turn = _turn("a") if action is None else _turn("a", action[1], action[0])
    card = scorer.score(suite, [ConversationRecord("c", "e", "cust-001", (turn,))])
    assert card.metrics["action_accuracy"].value == (1.0 if held else 0.0)


def test_the_scorecard_shows_the_actions_rate_and_the_action_in_the_transcript() -> None:
    suite = _suite([{"id": "wrong", "turns": [{"message": "cancel it", "expect": {"executed": CANCEL}}]}])
    records = [ConversationRecord("wrong", "e-1", "cust-001", (_turn("cancel it", CANCEL, "pending"),))]
    card = scorer.score(suite, records)
    info = report.RunInfo("run", "2026-12-03T00:00:00+00:00", "kb", 1, "test", 1.0)
    text = report.format_scorecard(suite, card, records, [], info)
    assert "  actions " in text
    assert "action cancel_order pending: Cancel order ORD-67890" in text
    data = report.build_result(suite, card, records, [], info)
    assert data["conversations"][0]["turns"][0]["action"]["state"] == "pending"


# ---- the driver -----------------------------------------------------------------------------------------


@pytest.fixture
async def fake_stack() -> AsyncIterator[FakeStack]:
    stack = await start_fake_stack()
    yield stack
    await stack.server.stop(None)


async def test_a_confirm_turn_sends_yes_and_records_the_executed_action(fake_stack: FakeStack) -> None:
    suite = _suite([{"id": "cancel", "turns": CANCEL_AND_CONFIRM}])
    [record] = await driver.run_suite(suite, fake_stack.addr, run_id="r1")
    assert [request.message for _, request in fake_stack.agent.requests] == ["cancel ORD-67890", "yes"]
    assert [(turn.action.tool, turn.action.state) for turn in record.turns if turn.action] == [
        (CANCEL, "pending"),
        (CANCEL, "executed"),
    ]
    assert scorer.score(suite, [record]).metrics["action_accuracy"].value == 1.0


async def test_a_button_calls_confirm_or_decline_action_with_the_latest_action(fake_stack: FakeStack) -> None:
    turns = [
        {"message": "cancel ORD-67890", "expect": {"pending_action": CANCEL}},
        {"confirm": True, "button": True, "expect": {"executed": CANCEL}},
    ]
    declined = [
        {"message": "cancel ORD-67890"},
        {"decline": True, "button": True, "expect": {"declined": CANCEL}},
    ]
    suite = _suite(
        [{"id": "press", "turns": turns}, {"id": "drop", "customer_id": "cust-002", "turns": declined}]
    )
    records = await driver.run_suite(suite, fake_stack.addr, run_id="r2")
    presses = [
        (customer, kind, request.conversation_id, request.action_id, request.turn_id)
        for customer, kind, request in fake_stack.agent.presses
    ]
    assert sorted(presses) == sorted(
        [
            ("cust-001", "confirm", "eval-r2-press", FAKE_ACTION_ID, "eval-r2-press-t1"),
            ("cust-002", "decline", "eval-r2-drop", FAKE_ACTION_ID, "eval-r2-drop-t1"),
        ]
    )
    assert [request.message for _, request in fake_stack.agent.requests] == ["cancel ORD-67890"] * 2
    assert [turn.message for turn in records[0].turns] == ["cancel ORD-67890", "[button: confirm]"]
    assert scorer.score(suite, records).metrics["action_accuracy"].value == 1.0


async def test_a_button_without_an_earlier_action_is_a_failed_turn(fake_stack: FakeStack) -> None:
    turns = [{"message": "hello"}, {"confirm": True, "button": True, "expect": {"executed": CANCEL}}]
    [record] = await driver.run_suite(_suite([{"id": "c", "turns": turns}]), fake_stack.addr, run_id="r3")
    assert record.turns[1].error == "no earlier turn carried an action to confirm or decline"
    assert fake_stack.agent.presses == []


async def test_conversations_that_confirm_run_after_the_others(fake_stack: FakeStack) -> None:
    suite = _suite(
        [
            {"id": "writes", "turns": CANCEL_AND_CONFIRM},
            {"id": "reads", "turns": [{"message": "Where is ORD-67890?"}]},
        ]
    )
    records = await driver.run_suite(suite, fake_stack.addr, run_id="r4", concurrency=4)
    assert [record.spec_id for record in records] == ["writes", "reads"]  # results in suite order
    sent = [request.conversation_id for _, request in fake_stack.agent.requests]
    assert sent == ["eval-r4-reads", "eval-r4-writes", "eval-r4-writes"]


def test_the_documented_write_action_example_is_valid() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "eval.md").read_text()
    section = doc.split("### Write actions")[1]
    example = section.split("```yaml\n")[1].split("```")[0]
    suite = _suite(yaml.safe_load("conversations:\n" + example)["conversations"])
    cancel, declined, negated = suite.conversations
    assert [turn.expect.pending_action or turn.expect.executed for turn in cancel.turns] == [CANCEL, CANCEL]
    assert (declined.turns[1].decline, declined.turns[1].button, declined.turns[1].expect.declined) == (
        True,
        True,
        CANCEL,
    )
    assert negated.turns[0].expect.no_write is True
