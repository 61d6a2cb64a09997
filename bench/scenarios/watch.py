"""watch: a human's reply -> the customer's WatchConversation event (p95), and the memory of idle watch streams.

One conversation is escalated and claimed; a customer watch is open on it. Each sample is one
`AppendTicketMessage` by the human (as `support-tickets reply` sends it), timed from the moment the call is
sent to the moment the matching `human_reply` event arrives on the watch: the tools service's write, its
ticket feed, the agent's follower, the agent's event log and the stream, all on loopback. Then `streams` idle
watches (live only) are opened on the agent and its RSS growth is divided by their number; one more reply
measures the fan-out to all of them.

Sizes follow the run's settings (full: 100 replies, 1,000 streams; quick: 40 / 1,000; toy: 3 / 20) without a
field of their own, so this file is the whole scenario.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

import grpc

from bench.client import CHANNEL_OPTIONS, AgentClient
from bench.report import Figure, Target
from bench.scenarios.context import BenchContext
from bench.stack import CUSTOMER_ID, REPO_ROOT
from bench.stats import rounded, summary
from devstack.credentials import caller_interceptors, role_channel
from support.v1 import agent_pb2, agent_pb2_grpc, tools_pb2, tools_pb2_grpc

STAFF = (("x-agent-name", "bench-agent"),)
CUSTOMER = (("x-customer-id", CUSTOMER_ID),)
STREAMS_PER_CHANNEL = 100
SETTLE_SECONDS = 3.0


def _sizes(ctx: BenchContext) -> tuple[int, int]:
    replies = max(3, ctx.settings.stream_turns)
    streams = 1000 if ctx.settings.capacity_conversations >= 100 else 20
    return replies, streams


async def _escalated_and_claimed(
    ctx: BenchContext, tools: tools_pb2_grpc.ToolsServiceStub
) -> tuple[str, str]:
    client = AgentClient(ctx.stack.addrs["agent"])
    conversation_id = f"watch-{ctx.run_id}"
    try:
        response = await client.chat(conversation_id, "I want to talk to a human")
    finally:
        await client.close()
    ticket_id = response.escalation.ticket_id or response.ticket_id
    if not ticket_id:
        raise RuntimeError("the conversation was not escalated")
    await tools.ClaimTicket(
        tools_pb2.ClaimTicketRequest(ticket_id=ticket_id, assignee="bench-agent"), metadata=STAFF, timeout=10
    )
    return conversation_id, ticket_id


async def _reply(tools: tools_pb2_grpc.ToolsServiceStub, ticket_id: str, text: str) -> None:
    await tools.AppendTicketMessage(
        tools_pb2.AppendTicketMessageRequest(
            ticket_id=ticket_id, text=text, author=tools_pb2.MESSAGE_AUTHOR_HUMAN_AGENT
        ),
        metadata=STAFF,
        timeout=10,
    )


async def run_watch(ctx: BenchContext) -> list[Figure]:
    stack = ctx.stack
    model = await ctx.model("zero")
    await stack.ensure_agent(ctx.kb_dir, model, None)
    replies, stream_count = _sizes(ctx)
    tools_channel = role_channel(stack.addrs["tools"])
    agent_channels = [
        grpc.aio.insecure_channel(
            stack.addrs["agent"], options=CHANNEL_OPTIONS, interceptors=caller_interceptors()
        )
        for _ in range(max(1, (stream_count + STREAMS_PER_CHANNEL - 1) // STREAMS_PER_CHANNEL))
    ]
    calls: list[
        grpc.aio.UnaryStreamCall[agent_pb2.WatchConversationRequest, agent_pb2.WatchConversationResponse]
    ] = []
    try:
        tools = tools_pb2_grpc.ToolsServiceStub(tools_channel)  # type: ignore[no-untyped-call]
        agent = agent_pb2_grpc.AgentServiceStub(agent_channels[0])  # type: ignore[no-untyped-call]
        conversation_id, ticket_id = await _escalated_and_claimed(ctx, tools)

        # --- latency: reply sent -> event on the customer's watch --------------------------------------------
        watch = agent.WatchConversation(
            agent_pb2.WatchConversationRequest(conversation_id=conversation_id, live_only=True),
            metadata=CUSTOMER,
        )
        arrivals: asyncio.Queue[tuple[float, str]] = asyncio.Queue()

        async def read() -> None:
            async for item in watch:
                if item.HasField("event") and item.event.HasField("human_reply"):
                    arrivals.put_nowait((time.perf_counter(), item.event.human_reply.text))

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.5)
        latencies_ms: list[float] = []
        lost = 0
        for index in range(replies + 2):  # two warm-up replies
            text = f"bench reply {index}"
            sent = time.perf_counter()
            await _reply(tools, ticket_id, text)
            try:
                while True:
                    arrived, seen = await asyncio.wait_for(arrivals.get(), timeout=5)
                    if seen == text:
                        break
            except TimeoutError:
                lost += 1
                continue
            if index >= 2:
                latencies_ms.append((arrived - sent) * 1000)
        watch.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        stats = summary(latencies_ms)

        # --- idle streams: agent RSS growth per stream, then one reply fanned out to all ----------------------
        end = (
            await agent.GetConversation(
                agent_pb2.GetConversationRequest(conversation_id=conversation_id),
                metadata=CUSTOMER,
                timeout=10,
            )
        ).end_offset
        before = stack.rss_mb(("agent",))["agent"]
        received: list[float] = []
        all_received = asyncio.Event()

        async def idle(channel: grpc.aio.Channel) -> None:
            stub = agent_pb2_grpc.AgentServiceStub(channel)  # type: ignore[no-untyped-call]
            # From the current end (not live_only): a stream still being set up when the reply is written gets it.
            call = stub.WatchConversation(
                agent_pb2.WatchConversationRequest(conversation_id=conversation_id, after_offset=end),
                metadata=CUSTOMER,
            )
            calls.append(call)
            try:
                async for item in call:
                    if item.HasField("event") and item.event.HasField("human_reply"):
                        received.append(time.perf_counter())
                        if len(received) == stream_count:
                            all_received.set()
            except grpc.aio.AioRpcError:
                return

        idlers = [
            asyncio.create_task(idle(agent_channels[index // STREAMS_PER_CHANNEL]))
            for index in range(stream_count)
        ]
        await asyncio.sleep(SETTLE_SECONDS)
        after = stack.rss_mb(("agent",))["agent"]
        sent = time.perf_counter()
        await _reply(tools, ticket_id, "fan-out")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_received.wait(), timeout=10)
        fan_out_ms = (max(received) - sent) * 1000 if received else None
        for call in calls:
            call.cancel()
        await asyncio.gather(*idlers, return_exceptions=True)
    finally:
        await tools_channel.close()
        for channel in agent_channels:
            await channel.close()

    per_stream_kb = (after - before) * 1024 / stream_count
    return [
        Figure(
            "watch",
            "human reply -> customer's watch event p95",
            "ms",
            round(stats["p95"], 2) if latencies_ms else None,
            target=Target("<=", 100.0),
            note=f"{len(latencies_ms)} replies over loopback; lost {lost}",
            details={"latency_ms": rounded(stats, 2), "lost": lost},
        ),
        Figure(
            "watch",
            f"agent memory of {stream_count} idle watch streams",
            "MB",
            round(after - before, 1),
            note=f"{per_stream_kb:.1f} KB per stream (agent RSS {before:.0f} -> {after:.0f} MB)",
            details={"streams": stream_count, "rss_before_mb": before, "rss_after_mb": after},
        ),
        Figure(
            "watch",
            f"one reply fanned out to {stream_count} watches (last arrival)",
            "ms",
            None if fan_out_ms is None else round(fan_out_ms, 1),
            note=f"{len(received)} of {stream_count} streams got it",
            details={"received": len(received)},
        ),
    ]


def main() -> None:
    """`python -m bench.scenarios.watch [--quick | --toy] [--out FILE]`: this scenario alone, through bench's CLI
    (it is also run by `make bench` once it is listed in bench.scenarios.SCENARIOS)."""
    from bench import cli
    from bench.scenarios import SCENARIOS

    SCENARIOS.setdefault("watch", run_watch)
    arguments = sys.argv[1:]
    if "--only" not in arguments:
        arguments += ["--only", "watch"]
    if "--out" not in arguments:
        arguments += ["--out", str(REPO_ROOT / "bench" / "watch_results.json")]
    cli.main(arguments)


if __name__ == "__main__":
    main()
