"""support-chat renders a streamed turn: tool calls and escalations as they happen, then the reply."""

from __future__ import annotations

import io

import pytest

from agent_service.chat_cli import chat_once, main
from tests.agent.conftest import StartAgent


async def test_chat_once_prints_tool_calls_reply_and_escalation(start_agent: StartAgent) -> None:
    agent = await start_agent()
    out = io.StringIO()
    await chat_once(agent.stub, "cli-1", "Where is my order ORD-12345?", "cust-001", out)
    text = out.getvalue()
    assert "[tool] lookup_order_status" in text
    assert text.index("[tool]") < text.index("1Z999AA10123456784")
    assert "(bot; model offline-engine)" in text

    out = io.StringIO()
    await chat_once(
        agent.stub, "cli-2", "This is ridiculous, I was promised next-day delivery!", "cust-001", out
    )
    text = out.getvalue()
    assert "[escalated] ticket TKT-" in text and "priority high" in text
    assert "(pending_human;" in text


def test_main_help_names_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["--help"])
    assert raised.value.code == 0
    output = capsys.readouterr().out
    for flag in ("--addr", "--conversation-id", "--customer-id"):
        assert flag in output
