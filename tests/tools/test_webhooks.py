"""Helpdesk webhooks against a real HTTP receiver started by the test (aiohttp on loopback).

Signatures verify (and a tampered body or an old timestamp does not); a receiver that is down for 30 s — with
the tools service restarted meanwhile — gets every event afterwards exactly once by event id, in order; a
receiver that keeps failing dead-letters the delivery after the configured attempts, `support-tickets
webhooks` lists it and `--redeliver` sends it again.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from devstack import free_port
from devstack.credentials import shared_test_credentials
from support.v1 import tools_pb2, types_pb2
from tests.tools.conftest import StartTools, Tools
from tools_service import webhooks
from tools_service.webhooks_config import WebhookSettings

SECRET = "webhook-secret-for-tests-0123456789"
CUSTOMER = (("x-customer-id", "cust-001"),)


def staff() -> tuple[tuple[str, str], ...]:
    return (
        ("authorization", f"Bearer {shared_test_credentials().token('staff')}"),
        ("x-agent-name", "dana"),
    )


@dataclass
class Receiver:
    """A helpdesk endpoint: verifies each request's signature, records the events, can fail or be down."""

    port: int
    status: int = 200
    # Seconds to stall before answering (the sender times out first).
    stall: float = 0.0
    received: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0
    attempts: int = 0
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        if not webhooks.verify_signature(
            SECRET,
            body,
            request.headers.get(webhooks.TIMESTAMP_HEADER, ""),
            request.headers.get(webhooks.SIGNATURE_HEADER, ""),
        ):
            self.rejected += 1
            return web.Response(status=401)
        if self.stall:
            await asyncio.sleep(self.stall)
            return web.Response(status=204)  # too late: the sender gave up and will retry
        if self.status != 200:
            return web.Response(status=self.status)
        event = json.loads(body)
        assert request.headers[webhooks.EVENT_ID_HEADER] == event["id"]
        self.received.append(event)
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver(free_port())
    await receiver.start()
    yield receiver
    await receiver.stop()


def settings(receiver: Receiver, **overrides: Any) -> WebhookSettings:
    values: dict[str, Any] = {
        "urls": (receiver.url,),
        "secret": SECRET,
        "timeout_seconds": 1.0,
        "max_attempts": 50,
        "backoff_seconds": 0.05,
        "max_backoff_seconds": 1.0,
        "poll_seconds": 0.1,
    }
    values.update(overrides)
    return WebhookSettings(**values)


async def escalate(tools: Tools, conversation_id: str) -> str:
    response = await tools.stub.EscalateToHuman(
        tools_pb2.EscalateToHumanRequest(
            conversation_id=conversation_id,
            priority=types_pb2.PRIORITY_HIGH,
            reason_code=types_pb2.ESCALATION_REASON_CUSTOMER_REQUEST,
            reason="asked for a person",
            idempotency_key=f"{conversation_id}-1",
        ),
        metadata=CUSTOMER,
    )
    return str(response.ticket.ticket_id)


async def full_lifecycle(tools: Tools, conversation_id: str) -> str:
    ticket_id = await escalate(tools, conversation_id)
    await tools.stub.ClaimTicket(
        tools_pb2.ClaimTicketRequest(ticket_id=ticket_id, assignee="Dana"), metadata=staff()
    )
    await tools.stub.AppendTicketMessage(
        tools_pb2.AppendTicketMessageRequest(
            ticket_id=ticket_id, text="Refund is on its way", author=tools_pb2.MESSAGE_AUTHOR_HUMAN_AGENT
        ),
        metadata=staff(),
    )
    await tools.stub.ResolveTicket(
        tools_pb2.ResolveTicketRequest(ticket_id=ticket_id, resolution_note="refund issued"), metadata=staff()
    )
    return ticket_id


async def wait_until(predicate: Any, within: float) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def test_signatures_verify_and_tampering_does_not() -> None:
    body = b'{"id":"tev-1"}'
    now = 1_800_000_000
    signature = webhooks.sign(SECRET, now, body)
    assert webhooks.verify_signature(SECRET, body, str(now), signature, now=now + 10)
    assert not webhooks.verify_signature(SECRET, body + b" ", str(now), signature, now=now)
    assert not webhooks.verify_signature("another-secret-0123456789", body, str(now), signature, now=now)
    assert not webhooks.verify_signature(SECRET, body, str(now), signature, now=now + 301)  # replayed later
    assert not webhooks.verify_signature(SECRET, body, "soon", signature, now=now)


def test_backoff_doubles_is_capped_and_jittered() -> None:
    config = WebhookSettings(backoff_seconds=1.0, max_backoff_seconds=10.0)
    for attempts, base in ((1, 1.0), (2, 2.0), (3, 4.0), (6, 10.0), (30, 10.0)):
        delays = [webhooks.backoff_delay(config, attempts) for _ in range(50)]
        assert all(base * 0.5 <= delay <= base for delay in delays)
        assert len(set(delays)) > 1


async def test_ticket_events_arrive_signed_and_in_order(start_tools: StartTools, receiver: Receiver) -> None:
    tools = await start_tools(webhooks=settings(receiver))
    ticket_id = await full_lifecycle(tools, "wh-1")
    await wait_until(lambda: len(receiver.received) == 4, 10)
    assert [event["type"] for event in receiver.received] == [
        "ticket.created",
        "ticket.claimed",
        "ticket.message_added",
        "ticket.resolved",
    ]
    assert receiver.rejected == 0
    created, claimed, message, resolved = receiver.received
    assert created["data"] == {
        "ticket_id": ticket_id,
        "conversation_id": "wh-1",
        "customer_id": "cust-001",
        "priority": "high",
    }
    assert claimed["data"]["assignee"] == "Dana"
    assert message["data"]["text"] == "Refund is on its way" and message["data"]["author"] == "human_agent"
    assert resolved["data"]["resolution_note"] == "refund issued"
    assert created["time"].endswith("Z")
    assert len({event["id"] for event in receiver.received}) == 4


async def test_a_receiver_down_for_30_seconds_gets_everything_once_in_order(
    start_tools: StartTools, receiver: Receiver
) -> None:
    config = settings(receiver)
    tools = await start_tools(webhooks=config)
    await receiver.stop()  # down
    conversations = ["wh-a", "wh-b", "wh-c"]
    for conversation_id in conversations[:2]:
        await full_lifecycle(tools, conversation_id)
    # The tools service restarts while the receiver is down: the outbox is on disk.
    await tools.started.stop(None)
    tools = await start_tools(webhooks=config)
    await full_lifecycle(tools, conversations[2])
    await asyncio.sleep(30 - 2)
    assert receiver.received == []
    await receiver.start()  # back
    await wait_until(lambda: len(receiver.received) >= 12, 20)
    await asyncio.sleep(1.0)  # nothing more arrives
    ids = [event["id"] for event in receiver.received]
    assert len(ids) == len(set(ids)) == 12
    for conversation_id in conversations:
        types = [e["type"] for e in receiver.received if e["data"]["conversation_id"] == conversation_id]
        assert types == ["ticket.created", "ticket.claimed", "ticket.message_added", "ticket.resolved"]
    assert ids == sorted(ids, key=lambda event_id: int(event_id.split("-")[1]))
    listed = await tools.stub.ListWebhookDeliveries(
        tools_pb2.ListWebhookDeliveriesRequest(), metadata=staff()
    )
    assert list(listed.deliveries) == []


async def test_a_receiver_that_times_out_then_recovers_gets_every_event(
    start_tools: StartTools, receiver: Receiver
) -> None:
    receiver.stall = 1.0
    tools = await start_tools(webhooks=settings(receiver, timeout_seconds=0.3))
    await full_lifecycle(tools, "wh-slow")
    await wait_until(lambda: receiver.attempts >= 3, 10)
    assert receiver.received == []
    receiver.stall = 0.0
    await wait_until(lambda: len({event["id"] for event in receiver.received}) == 4, 20)
    unique = list(dict.fromkeys(event["type"] for event in receiver.received))
    assert unique == ["ticket.created", "ticket.claimed", "ticket.message_added", "ticket.resolved"]


async def test_dead_letter_after_the_configured_attempts_then_redeliver(
    start_tools: StartTools, receiver: Receiver
) -> None:
    receiver.status = 500
    tools = await start_tools(webhooks=settings(receiver, max_attempts=3))
    await escalate(tools, "wh-dead")
    await wait_until(lambda: receiver.attempts >= 3, 10)
    await asyncio.sleep(0.5)
    assert receiver.attempts == 3  # no fourth attempt
    dead = await tools.stub.ListWebhookDeliveries(
        tools_pb2.ListWebhookDeliveriesRequest(status=tools_pb2.WEBHOOK_DELIVERY_STATUS_DEAD),
        metadata=staff(),
    )
    (delivery,) = dead.deliveries
    assert delivery.attempts == 3 and delivery.last_error == "HTTP 500"
    assert delivery.event_type == "ticket.created" and delivery.conversation_id == "wh-dead"

    # The CLI a human runs: list, then redeliver, as staff.
    env = {**os.environ, "AUTH_TOKEN": shared_test_credentials().token("staff")}
    cli = [sys.executable, "-m", "tools_service.tickets_cli", "--addr", tools.addr, "--agent-name", "dana"]
    listing = await asyncio.to_thread(
        subprocess.run, [*cli, "webhooks", "--dead"], env=env, capture_output=True, text=True, timeout=60
    )
    assert listing.returncode == 0, listing.stderr
    assert "ticket.created" in listing.stdout and "HTTP 500" in listing.stdout and "dead" in listing.stdout

    receiver.status = 200
    redelivered = await asyncio.to_thread(
        subprocess.run, [*cli, "webhooks", "--redeliver"], env=env, capture_output=True, text=True, timeout=60
    )
    assert redelivered.returncode == 0, redelivered.stderr
    assert "requeued 1" in redelivered.stdout
    await wait_until(lambda: len(receiver.received) == 1, 10)
    assert receiver.received[0]["type"] == "ticket.created"
    empty = await tools.stub.ListWebhookDeliveries(tools_pb2.ListWebhookDeliveriesRequest(), metadata=staff())
    assert list(empty.deliveries) == []


async def test_only_staff_see_the_outbox_and_only_the_agent_reads_the_feed(
    start_tools: StartTools, receiver: Receiver
) -> None:
    import grpc

    tools = await start_tools(webhooks=settings(receiver))
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await tools.stub.ListWebhookDeliveries(tools_pb2.ListWebhookDeliveriesRequest(), metadata=CUSTOMER)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    backend = (("authorization", f"Bearer {shared_test_credentials().token('backend')}"), *CUSTOMER)
    with pytest.raises(grpc.aio.AioRpcError) as feed_denied:
        async for _ in tools.stub.WatchTicketEvents(tools_pb2.WatchTicketEventsRequest(), metadata=backend):
            pass
    assert feed_denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_the_helpdesk_bridge_example_round_trip(start_tools: StartTools) -> None:
    """docs/helpdesk.md's bridge: signed webhooks in (a forged one refused), helpdesk replies and "solved" out."""
    import aiohttp

    from devstack.credentials import role_channel
    from support.v1 import tools_pb2_grpc
    from tools_service.webhooks_bridge import Bridge, RecordingHelpdesk

    helpdesk = RecordingHelpdesk()
    port = free_port()
    bridge_url = f"http://127.0.0.1:{port}"
    tools = await start_tools(
        webhooks=WebhookSettings(
            urls=(f"{bridge_url}/support-events",),
            secret=SECRET,
            backoff_seconds=0.05,
            max_backoff_seconds=0.5,
            poll_seconds=0.1,
        )
    )
    # The bridge calls tools_service as staff (role_channel picks the staff token for ticket calls).
    staff_channel = role_channel(tools.addr)
    bridge = Bridge(
        helpdesk,
        tools_pb2_grpc.ToolsServiceStub(staff_channel),  # type: ignore[no-untyped-call]
        webhook_secret=SECRET,
        helpdesk_token="helpdesk-token-0123456789",
    )
    runner = web.AppRunner(bridge.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        ticket_id = await escalate(tools, "br-1")
        await wait_until(lambda: len(helpdesk.opened) == 1, 10)
        assert helpdesk.opened == [(ticket_id, "br-1", "high")]

        async with aiohttp.ClientSession() as http:
            forged = await http.post(
                f"{bridge_url}/support-events",
                data=b'{"id":"tev-999","type":"ticket.created","data":{}}',
                headers={
                    webhooks.TIMESTAMP_HEADER: str(int(time.time())),
                    webhooks.SIGNATURE_HEADER: "v1=00",
                },
            )
            assert forged.status == 401
            unauthorized = await http.post(f"{bridge_url}/helpdesk/reply", json={"ticket_id": ticket_id})
            assert unauthorized.status == 401
            token = {"Authorization": "Bearer helpdesk-token-0123456789"}
            reply = await http.post(
                f"{bridge_url}/helpdesk/reply",
                json={"ticket_id": ticket_id, "agent": "Sam", "text": "Hello from the helpdesk"},
                headers=token,
            )
            assert reply.status == 204, await reply.text()
            solved = await http.post(
                f"{bridge_url}/helpdesk/solved",
                json={"ticket_id": ticket_id, "agent": "Sam", "note": "solved in the helpdesk"},
                headers=token,
            )
            assert solved.status == 204, await solved.text()
        ticket = (
            await tools.stub.GetTicket(tools_pb2.GetTicketRequest(ticket_id=ticket_id), metadata=staff())
        ).ticket
        assert ticket.status == tools_pb2.TICKET_STATUS_RESOLVED and ticket.assignee == "Sam"
        assert [(m.author_name, m.text) for m in ticket.messages] == [("Sam", "Hello from the helpdesk")]
        assert ticket.resolution_note == "solved in the helpdesk"
    finally:
        await runner.cleanup()
        await staff_channel.close()


def test_webhook_settings_refuse_a_missing_secret_and_bad_urls() -> None:
    from service_kit.env import ConfigError

    assert WebhookSettings.from_env({}).urls == ()
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET"):
        WebhookSettings.from_env({"WEBHOOK_URLS": "https://helpdesk.example/hooks"})
    with pytest.raises(ConfigError, match="WEBHOOK_URLS"):
        WebhookSettings.from_env({"WEBHOOK_URLS": "ftp://x", "WEBHOOK_SECRET": SECRET})
    configured = WebhookSettings.from_env(
        {
            "WEBHOOK_URLS": "https://a.example/h, https://b.example/h",
            "WEBHOOK_SECRET": SECRET,
            "WEBHOOK_MAX_ATTEMPTS": "3",
        }
    )
    assert configured.urls == ("https://a.example/h", "https://b.example/h") and configured.max_attempts == 3
