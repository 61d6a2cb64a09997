"""Ticket retention through a real tools server over real SQLite: resolved tickets past TICKET_RETENTION_SECONDS
are gone after a start; open ones stay however old."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
import pytest

from devstack.credentials import shared_test_credentials
from devstack.inprocess import loopback, tools_config
from service_kit.env import ConfigError
from support.v1 import tools_pb2, tools_pb2_grpc, types_pb2
from tools_service.config import Config
from tools_service.server import start_server

CREDENTIALS = shared_test_credentials()
CUSTOMER = CREDENTIALS.metadata("backend", customer_id="cust-001")
STAFF = CREDENTIALS.metadata("staff", agent_name="alice")
DAY = 86_400.0


def _escalation(conversation_id: str) -> tools_pb2.EscalateToHumanRequest:
    return tools_pb2.EscalateToHumanRequest(
        conversation_id=conversation_id,
        priority=types_pb2.PRIORITY_MEDIUM,
        reason_code=types_pb2.ESCALATION_REASON_CUSTOMER_REQUEST,
        reason="Customer asked for a human",
        summary="Wants a person",
    )


async def _open_and_resolve(data_dir: Path) -> tuple[str, str]:
    """Opens two tickets and resolves the first; returns (resolved id, open id)."""
    started = await start_server(tools_config(data_dir))
    try:
        async with grpc.aio.insecure_channel(loopback(started.port)) as channel:
            stub = tools_pb2_grpc.ToolsServiceStub(channel)  # type: ignore[no-untyped-call]
            resolved = (
                await stub.EscalateToHuman(_escalation("conv-a"), metadata=CUSTOMER, timeout=10)
            ).ticket
            still_open = (
                await stub.EscalateToHuman(_escalation("conv-b"), metadata=CUSTOMER, timeout=10)
            ).ticket
            await stub.ClaimTicket(
                tools_pb2.ClaimTicketRequest(ticket_id=resolved.ticket_id, assignee="alice"),
                metadata=STAFF,
                timeout=10,
            )
            await stub.ResolveTicket(
                tools_pb2.ResolveTicketRequest(ticket_id=resolved.ticket_id, resolution_note="Refunded."),
                metadata=STAFF,
                timeout=10,
            )
    finally:
        await started.stop(grace=None)
    return resolved.ticket_id, still_open.ticket_id


def _age_every_ticket(db_path: Path, seconds: float) -> None:
    """Time passing: every ticket was created and last updated `seconds` ago."""
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "UPDATE tickets SET create_time = create_time - ?, update_time = update_time - ?",
            (seconds, seconds),
        )


async def _ticket_code(data_dir: Path, ticket_id: str, retention: float | None) -> grpc.StatusCode:
    started = await start_server(tools_config(data_dir, ticket_retention_seconds=retention))
    try:
        async with grpc.aio.insecure_channel(loopback(started.port)) as channel:
            stub = tools_pb2_grpc.ToolsServiceStub(channel)  # type: ignore[no-untyped-call]
            try:
                await stub.GetTicket(
                    tools_pb2.GetTicketRequest(ticket_id=ticket_id), metadata=STAFF, timeout=10
                )
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK
    finally:
        await started.stop(grace=None)


async def test_resolved_tickets_past_retention_are_purged_and_open_ones_kept(tmp_path: Path) -> None:
    resolved, still_open = await _open_and_resolve(tmp_path)
    _age_every_ticket(Config(data_dir=tmp_path).db_path, 30 * DAY)
    # Without a retention setting nothing is deleted.
    assert await _ticket_code(tmp_path, resolved, retention=None) == grpc.StatusCode.OK
    # A retention longer than the tickets' age keeps them too.
    assert await _ticket_code(tmp_path, resolved, retention=60 * DAY) == grpc.StatusCode.OK
    assert await _ticket_code(tmp_path, resolved, retention=7 * DAY) == grpc.StatusCode.NOT_FOUND
    assert await _ticket_code(tmp_path, still_open, retention=7 * DAY) == grpc.StatusCode.OK
    with sqlite3.connect(Config(data_dir=tmp_path).db_path) as conn:
        orphans = conn.execute(
            "SELECT COUNT(*) FROM ticket_messages WHERE ticket_id NOT IN (SELECT ticket_id FROM tickets)"
        ).fetchone()[0]
    assert orphans == 0


def test_retention_setting_is_read_once_and_validated() -> None:
    assert (
        Config.from_env(
            {"TICKET_RETENTION_SECONDS": "604800", **CREDENTIALS.token_environ()}
        ).ticket_retention_seconds
        == 604800.0
    )
    assert Config.from_env(CREDENTIALS.token_environ()).ticket_retention_seconds is None
    with pytest.raises(ConfigError, match="TICKET_RETENTION_SECONDS"):
        Config.from_env({"TICKET_RETENTION_SECONDS": "0", **CREDENTIALS.token_environ()})
