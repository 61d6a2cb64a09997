"""support-tickets against a real in-process tools server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

from support.v1 import tools_pb2, types_pb2
from tools_service.tickets_cli import main

CUST_1 = (("x-customer-id", "cust-001"),)


async def cli(tools: Any, capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, ["--addr", tools.addr, *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_list_show_claim_reply_resolve(tools, capsys):
    code, out, _ = await cli(tools, capsys, "list")
    assert (code, out.strip()) == (0, "no tickets")

    request = tools_pb2.EscalateToHumanRequest(
        conversation_id="conv-cli",
        priority=types_pb2.PRIORITY_HIGH,
        reason_code=types_pb2.ESCALATION_REASON_NEGATIVE_SENTIMENT,
        reason="Customer is angry about next-day delivery",
        summary="Promised next-day, not delivered",
    )
    ticket_id = (await tools.stub.EscalateToHuman(request, metadata=CUST_1, timeout=5)).ticket.ticket_id

    code, out, _ = await cli(tools, capsys, "list", "--open")
    assert code == 0
    assert ticket_id in out and "open" in out and "high" in out

    code, out, _ = await cli(tools, capsys, "claim", ticket_id, "--as", "alice")
    assert (code, out.strip()) == (0, f"{ticket_id} claimed by alice")

    code, out, _ = await cli(
        tools, capsys, "reply", ticket_id, "--as", "alice", "Sorry! Reshipping with express."
    )
    assert code == 0 and "messages on the ticket: 1" in out

    code, out, _ = await cli(tools, capsys, "show", ticket_id)
    assert code == 0
    assert "assigned" in out and "alice: Sorry! Reshipping with express." in out
    assert "negative_sentiment: Customer is angry" in out

    code, out, _ = await cli(tools, capsys, "resolve", ticket_id, "--note", "Reshipped with express")
    assert code == 0 and "resolved" in out
    ticket = (await tools.stub.GetTicket(tools_pb2.GetTicketRequest(ticket_id=ticket_id), timeout=5)).ticket
    assert ticket.status == tools_pb2.TICKET_STATUS_RESOLVED
    assert ticket.resolution_note == "Reshipped with express"

    code, out, _ = await cli(tools, capsys, "list", "--open")
    assert (code, out.strip()) == (0, "no tickets")


async def test_errors_exit_1_with_the_status(tools, capsys):
    code, out, err = await cli(tools, capsys, "show", "TKT-MISSING")
    assert code == 1
    assert out == ""
    assert "NOT_FOUND" in err and "TKT-MISSING" in err


def test_usage_error_exits_2():
    result = subprocess.run(
        [sys.executable, "-m", "tools_service.tickets_cli", "claim", "TKT-1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--as" in result.stderr
