"""shedding: MAX_CONCURRENT_TURNS small, a burst above it: RESOURCE_EXHAUSTED and how fast."""

from __future__ import annotations

import asyncio

import grpc

from bench.client import AgentClient
from bench.report import Figure, Target
from bench.scenarios.context import (
    ORDER_MESSAGE,
    BenchContext,
    to_ms,
)
from bench.stats import rounded, summary


async def run_shedding(ctx: BenchContext) -> list[Figure]:
    settings, stack = ctx.settings, ctx.stack
    model = await ctx.model("slow")
    await stack.ensure_agent(ctx.kb_dir, model, settings.shed_limit)
    client = AgentClient(stack.addrs["agent"])
    try:
        await client.timed_chat(ctx.conversation("shed-warm", 0, 0), ORDER_MESSAGE)
        results = await asyncio.gather(
            *(
                client.timed_chat(ctx.conversation("shed", index, 0), ORDER_MESSAGE, rpc_seconds=60)
                for index in range(settings.shed_requests)
            )
        )
        single = await _sequential_sheds(ctx, client)
    finally:
        await client.close()
    shed = [result.seconds for result in results if result.code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    served = sum(1 for result in results if result.code == grpc.StatusCode.OK)
    other: dict[str, int] = {}
    for result in results:
        if result.code not in (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED):
            other[result.code.name] = other.get(result.code.name, 0) + 1
    expected = settings.shed_requests - settings.shed_limit
    shed_ms = summary(to_ms(shed)) if shed else {}
    queued_ms = 2 * settings.capacity_latency * 1000
    burst = f"{settings.shed_requests} at once, MAX_CONCURRENT_TURNS={settings.shed_limit}"
    return [
        Figure(
            "shedding",
            "calls answered RESOURCE_EXHAUSTED",
            "count",
            float(len(shed)),
            float(expected),
            "over the limit",
            Target(">=", float(expected)),
            note=f"{burst}; served {served}",
            details={"served": served, "other_errors": other, "shed_ms": rounded(shed_ms) if shed_ms else {}},
        ),
        Figure(
            "shedding",
            "RESOURCE_EXHAUSTED latency p99",
            "ms",
            shed_ms.get("p99"),
            queued_ms,
            "a queued turn",
            Target("<=", 50.0),
            note="target proposed by the bench: 'quickly' = within 50 ms" if shed else "nothing was shed",
        ),
        Figure("shedding", "other errors", "count", float(sum(other.values())), 0.0, "", Target("==", 0.0)),
        Figure(
            "shedding",
            "one rejection at a time, p50",
            "ms",
            single.get("p50"),
            note="the limit held full by admitted turns; over-limit calls sent one after another (no queue)",
            details={"single_shed_ms": rounded(single)} if single else {},
        ),
    ]


async def _sequential_sheds(ctx: BenchContext, client: AgentClient, probes: int = 100) -> dict[str, float]:
    """The cost of one rejection without a queue: fill MAX_CONCURRENT_TURNS with turns, then send over-limit
    calls one at a time while they run. Probes count only once one has been shed (the slots are full)."""
    settings = ctx.settings
    holders = [
        asyncio.create_task(client.timed_chat(ctx.conversation("shed-hold", index, 0), ORDER_MESSAGE))
        for index in range(settings.shed_limit)
    ]
    samples: list[float] = []
    # Let the holders reach the agent and take the slots (they hold them for two model calls).
    await asyncio.sleep(min(0.1, settings.capacity_latency / 4))
    try:
        index = 0
        while len(samples) < probes and not all(task.done() for task in holders):
            result = await client.timed_chat(ctx.conversation("shed-probe", index, 0), ORDER_MESSAGE)
            index += 1
            if result.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                samples.append(result.seconds * 1000)
            elif samples:
                break  # a slot came free: the holders are finishing
    finally:
        await asyncio.gather(*holders)
    return summary(samples) if samples else {}
