"""Pure parts of the agent: the offline engine, the prompt budget, channels, config, the store's lease."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent_service.adapters.channels import channel_target
from agent_service.adapters.offline_model import (
    OfflineModel,
    best_sentences,
    find_order_id,
)
from agent_service.adapters.sqlite_store import SqliteConversationStore
from agent_service.breaker import CircuitBreaker
from agent_service.config import Config
from agent_service.domain import KbHit, ToolCallRecord, TurnResult
from agent_service.errors import DuplicateTurnError
from agent_service.escalation_policy import EscalationDecision
from agent_service.guardrails import untrusted_block
from agent_service.model_port import ModelRequest
from agent_service.prompts import estimate_tokens, history, history_messages
from agent_service.texts import DONT_KNOW
from devstack.credentials import shared_test_credentials
from service_kit.env import ConfigError

# Every service needs credentials to start (service_kit.auth).
TOKENS = shared_test_credentials().token_environ()

TOOLS = [
    {
        "type": "function",
        "function": {"name": "lookup_order_status", "parameters": {"properties": {"order_id": {}}}},
    },
    {
        "type": "function",
        "function": {
            "name": "escalate_to_human",
            "parameters": {"properties": {"reason": {}, "priority": {}, "summary": {}}},
        },
    },
]
SHIPPING = KbHit(
    "shipping.md",
    "shipping.md#1",
    "Shipping",
    "## Express shipping\nStandard shipping takes 3-5 business days. Express shipping takes 1-2 business days.\n"
    "Orders ship from our warehouse in Ohio.",
    0.3,
)


def test_offline_answers_from_the_best_sentence_and_cites_it() -> None:
    result = OfflineModel().decide(
        ModelRequest(
            messages=(),
            tools=TOOLS,
            user_message="How long does express shipping take?",
            hits=[SHIPPING],
        )
    )
    assert "Express shipping takes 1-2 business days." in result.content
    assert "## " not in result.content and result.content.endswith("[1]")
    assert not result.tool_calls


def test_offline_without_hits_says_it_does_not_know() -> None:
    result = OfflineModel().decide(ModelRequest(messages=(), tools=TOOLS, user_message="Tell me a joke"))
    assert result.content == DONT_KNOW
    assert "automated assistant" in DONT_KNOW


def test_offline_looks_orders_up_then_replies_from_the_result() -> None:
    engine = OfflineModel()
    first = engine.decide(ModelRequest(messages=(), tools=TOOLS, user_message="where is ord-12345 please"))
    [call] = first.tool_calls
    assert call.name == "lookup_order_status" and json.loads(call.arguments) == {"order_id": "ORD-12345"}
    result = {
        "order_id": "ORD-12345",
        "status": "shipped",
        "tracking_number": "1Z9",
        "carrier": "UPS",
        "eta": "2026-02-18",
    }
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "where is ord-12345 please"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call.id, "function": {"name": call.name}}],
        },
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)},
    ]
    second = engine.decide(
        ModelRequest(messages=messages, tools=TOOLS, user_message="where is ord-12345 please")
    )
    assert "shipped" in second.content and "1Z9" in second.content and "2026-02-18" in second.content
    messages[-1]["content"] = json.dumps({"error": {"code": "not_found", "message": "no such order"}})
    missing = engine.decide(
        ModelRequest(messages=messages, tools=TOOLS, user_message="where is ord-12345 please")
    )
    assert "couldn't find" in missing.content


def test_offline_escalates_with_schema_arguments_and_quotes_the_ticket() -> None:
    hint = EscalationDecision("negative_sentiment", "high", "anger: 'ridiculous'", "I'm sorry.")
    engine = OfflineModel()
    request = ModelRequest(
        messages=(),
        tools=TOOLS,
        user_message="This is ridiculous",
        escalation_hint=hint,
    )
    [call] = engine.decide(request).tool_calls
    arguments = json.loads(call.arguments)
    assert arguments["priority"] == "high" and set(arguments) <= {
        "reason",
        "priority",
        "summary",
    }
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "This is ridiculous"},
        {
            "role": "assistant",
            "tool_calls": [{"id": call.id, "function": {"name": call.name}}],
        },
        {
            "role": "tool",
            "tool_call_id": call.id,
            "content": json.dumps({"ticket_id": "TKT-1", "priority": "high"}),
        },
    ]
    reply = engine.decide(
        ModelRequest(
            messages=messages,
            tools=TOOLS,
            user_message="This is ridiculous",
            escalation_hint=hint,
        )
    )
    assert reply.content.startswith("I'm sorry.") and "TKT-1" in reply.content


def test_order_ids_and_sentences() -> None:
    assert find_order_id("my order ORD-12345 is late") == "ORD-12345"
    assert find_order_id("no order here") is None
    assert best_sentences("completely unrelated words", [SHIPPING]) == []


def _turn(index: int, size: int = 400) -> TurnResult:
    return TurnResult(
        conversation_id="c",
        turn_id=f"t{index}",
        user_message=f"question {index} " + "x" * size,
        reply="answer " + "y" * size,
        tool_calls=(ToolCallRecord("id", "lookup_order_status", "{}"),) if index == 0 else (),
    )


def test_history_keeps_the_newest_turns_within_the_budget_and_summarises_the_rest() -> None:
    turns = [_turn(index) for index in range(10)]
    window = history(turns, 1000, untrusted_block)
    messages = list(window.messages)
    total = sum(estimate_tokens(str(message["content"])) + 4 for message in messages)
    assert total <= 1000
    assert (
        window.notes and "earlier turns" in window.notes[0] and window.notes[0].startswith("<untrusted_data")
    )
    assert messages[-2]["content"].startswith("question 9") and messages[-1]["role"] == "assistant"
    everything = history_messages(turns[:2], 100_000, untrusted_block)
    assert [m["role"] for m in everything] == ["user", "assistant", "user", "assistant"]
    assert "tools used in this turn: lookup_order_status" in everything[1]["content"]


def test_history_includes_hand_back_notes() -> None:
    note = TurnResult(
        conversation_id="c",
        turn_id="handback-T1",
        system_note="Handed back by jo: refund issued",
    )
    window = history([note], 1000, untrusted_block)
    assert window.messages == () and "refund issued" in window.notes[0]  # data in the one system message


def test_channel_targets() -> None:
    assert channel_target("127.0.0.1:50052") == "127.0.0.1:50052"
    assert channel_target("10.0.0.1:1, 10.0.0.2:1") == "ipv4:10.0.0.1:1,10.0.0.2:1"
    assert channel_target("dns:///retrieval:50052") == "dns:///retrieval:50052"


def test_config_from_env() -> None:
    config = Config.from_env(
        {
            **TOKENS,
            "AGENT_ADDR": "0.0.0.0:1",
            "OPENAI_BASE_URL": "http://llm:8000/v1",
            "MAX_TOOL_ROUNDS": "3",
            "LINK_ALLOWLIST": "example.com, help.example.com",
            "DATA_DIR": "/tmp/x",
        }
    )
    assert config.addr == "0.0.0.0:1" and config.uses_remote_model and config.max_tool_rounds == 3
    assert config.link_allowlist == ("example.com", "help.example.com")
    assert config.db_path == Path("/tmp/x/agent.sqlite3")
    assert not Config.from_env(TOKENS).uses_remote_model
    with pytest.raises(ConfigError, match="MAX_TOOL_ROUNDS"):
        Config.from_env({**TOKENS, "MAX_TOOL_ROUNDS": "0"})
    with pytest.raises(ConfigError, match="RETRIEVAL_MAX_DISTANCE"):
        Config.from_env({**TOKENS, "RETRIEVAL_MAX_DISTANCE": "3"})


async def test_store_turns_are_unique_and_the_lock_is_a_lease(tmp_path: Path) -> None:
    now = [1000.0]
    store = SqliteConversationStore(tmp_path / "a.sqlite3", clock=lambda: now[0])
    other_process = SqliteConversationStore(tmp_path / "a.sqlite3", clock=lambda: now[0])
    try:
        turn = TurnResult(conversation_id="c", turn_id="t1", user_message="hi", reply="hello")
        await store.append_turn(turn, customer_id="cust-1")
        with pytest.raises(DuplicateTurnError):
            await other_process.append_turn(turn)
        loaded = await other_process.load("c")
        assert loaded.customer_id == "cust-1" and loaded.turns == (turn,)
        assert await other_process.get_turn("c", "t1") == turn
        assert (await store.load("unknown")).turns == ()

        assert await store.acquire_lock("c", "a", lease_seconds=10)
        assert not await other_process.acquire_lock("c", "b", lease_seconds=10)
        await other_process.release_lock("c", "b")  # not the holder: no effect
        assert not await other_process.acquire_lock("c", "b", lease_seconds=10)
        now[0] += 11  # the holder died: its lease expires
        assert await other_process.acquire_lock("c", "b", lease_seconds=10)
        await other_process.release_lock("c", "b")
        assert await store.acquire_lock("c", "a", lease_seconds=10)
    finally:
        await store.close()
        await other_process.close()


def test_breaker_half_open_allows_one_trial() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, cooldown_seconds=5, clock=lambda: now[0])
    breaker.record_failure()
    assert not breaker.allow()
    now[0] = 6
    assert breaker.allow() and not breaker.allow()  # one trial at a time
    breaker.record_failure()  # the trial failed: open again for a full cooldown
    assert not breaker.allow()
    now[0] = 12
    assert breaker.allow()
    breaker.record_success()
    assert breaker.allow() and breaker.allow()


async def test_redis_url_selects_the_redis_store(tmp_path: Path) -> None:
    from agent_service.adapters.redis_store import RedisConversationStore
    from agent_service.server import build_store

    config = Config.from_env(
        {
            **TOKENS,
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "CONVERSATION_RETENTION_SECONDS": "3600",
            "DATA_DIR": str(tmp_path),
        }
    )
    assert config.redis_url == "redis://127.0.0.1:1/0" and config.conversation_retention_seconds == 3600
    store = build_store(config)
    try:
        assert isinstance(store, RedisConversationStore)  # built lazily: no connection yet
    finally:
        await store.close()
    sqlite = build_store(Config.from_env({**TOKENS, "DATA_DIR": str(tmp_path)}))
    try:
        assert isinstance(sqlite, SqliteConversationStore)
    finally:
        await sqlite.close()


@pytest.mark.slow
def test_bad_configuration_exits_with_a_clear_message(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    env = {**os.environ, "MAX_TOOL_ROUNDS": "zero", "DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "agent_service"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "MAX_TOOL_ROUNDS" in result.stderr and "Traceback" not in result.stderr
    env = {
        **os.environ,
        "ESCALATION_RULES_PATH": str(tmp_path / "missing.yaml"),
        "DATA_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "agent_service"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "missing.yaml" in result.stderr


def test_sentence_choice_joins_wrapped_lines_uses_headings_and_skips_cross_references() -> None:
    returns = KbHit(
        "returns.md",
        "r#1",
        "Returns",
        "See the refund policy for when you get your money back.",
        0.3,
    )
    refunds = KbHit(
        "refund-policy.md",
        "p#1",
        "Refund policy",
        "---\ntitle: Refund policy\n---\n## Full refund within 30 days\n\nYou get a full refund to your original\n"
        "payment method for any item returned within 30 days of delivery.\n\n- Store credit never expires at all.",
        0.35,
    )
    chosen = best_sentences("What is your refund policy?", [returns, refunds])
    assert chosen[0] == (
        1,
        "You get a full refund to your original payment method for any item returned within 30 days of delivery.",
    )
    assert all("See the refund policy" not in sentence for _, sentence in chosen)
    assert all("title:" not in sentence for _, sentence in chosen)
