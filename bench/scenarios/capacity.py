"""capacity: N concurrent conversations, model latency L per call, two model calls per turn."""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import grpc

from bench.client import AgentClient, CallResult
from bench.report import Figure, Target
from bench.scenarios.context import (
    ORDER_MESSAGE,
    BenchContext,
    cpu_delta,
)
from bench.stats import rounded, summary


@dataclass
class LoadRun:
    """One closed-loop run of `conversations` workers; `period` paces each conversation's turns (None: back to
    back). Turns are counted when they finish inside the window after the warm-up."""

    results: list[tuple[float, float, CallResult]]
    window_seconds: float
    window_start: float
    elapsed: float
    cpu: dict[str, float]

    @property
    def in_window(self) -> list[CallResult]:
        return [result for started, _, result in self.results if started >= self.window_start]

    @property
    def throughput(self) -> float:
        end = self.window_start + self.window_seconds
        return sum(1 for _, done, _ in self.results if self.window_start <= done < end) / self.window_seconds

    def errors(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, _, result in self.results:
            key = result.code.name if result.code != grpc.StatusCode.OK else result.detail
            if result.code != grpc.StatusCode.OK or not result.valid:
                counts[key] = counts.get(key, 0) + 1
        return counts

    def latency(self) -> dict[str, float]:
        ok = [result.seconds for result in self.in_window if result.code == grpc.StatusCode.OK]
        return summary(ok) if ok else {}

    def cpu_ms_per_turn(self, names: tuple[str, ...] | None = None) -> float:
        used = sum(seconds for name, seconds in self.cpu.items() if names is None or name in names)
        return used * 1000 / max(1, len(self.results))


async def _load_run(ctx: BenchContext, client: AgentClient, label: str, period: float | None) -> LoadRun:
    settings, stack = ctx.settings, ctx.stack
    results: list[tuple[float, float, CallResult]] = []
    started = time.monotonic()
    window_start = started + settings.capacity_warmup_seconds
    stop_at = window_start + settings.capacity_seconds
    rng = random.Random(7)

    async def worker(index: int) -> None:
        # Conversations join spread over the first second (or period), not in one burst.
        offset = rng.random() * (period or 1.0)
        await asyncio.sleep(offset)
        turn = 0
        while time.monotonic() < stop_at:
            turn_started = time.monotonic()
            conversation = ctx.conversation(label, index, turn)
            result = await client.timed_chat(conversation, ORDER_MESSAGE, rpc_seconds=60)
            results.append((turn_started, time.monotonic(), result))
            turn += 1
            if period is not None:
                # The next turn is due one period after this one started; a late turn goes at once.
                due = started + offset + turn * period
                await asyncio.sleep(max(0.0, due - time.monotonic()))

    cpu_before = stack.cpu_snapshot()
    await asyncio.gather(*(worker(index) for index in range(settings.capacity_conversations)))
    cpu = cpu_delta(cpu_before, stack.cpu_snapshot())
    return LoadRun(results, settings.capacity_seconds, window_start, time.monotonic() - started, cpu)


def _load_details(run: LoadRun) -> dict[str, Any]:
    services = ("agent", "retrieval", "tools")
    return {
        "turns_total": len(run.results),
        "latency_s": rounded(run.latency()),
        "errors": run.errors(),
        "cpu_cores_used": {name: round(seconds / run.elapsed, 3) for name, seconds in run.cpu.items()},
        "cpu_ms_per_turn": {
            "services": round(run.cpu_ms_per_turn(services), 3),
            "all_processes": round(run.cpu_ms_per_turn(), 3),
            **{name: round(run.cpu_ms_per_turn((name,)), 3) for name in run.cpu},
        },
    }


async def run_capacity(ctx: BenchContext) -> list[Figure]:
    settings, stack = ctx.settings, ctx.stack
    model = await ctx.model("slow")
    await stack.ensure_agent(ctx.kb_dir, model, settings.capacity_turn_limit)
    conversations = settings.capacity_conversations
    ideal_turn = 2 * settings.capacity_latency
    # The 200 turns/s for 512 conversations at 1 s per turn, scaled for other settings.
    rate_target = conversations / ideal_turn * 200 / 512
    client = AgentClient(stack.addrs["agent"])
    try:
        await client.timed_chat(ctx.conversation("capacity-warm", 0, 0), ORDER_MESSAGE)
        saturated = await _load_run(ctx, client, "capacity", None)
        paced = await _load_run(ctx, client, "paced", conversations / rate_target)
    finally:
        await client.close()
    cores = os.cpu_count() or 1
    cpu_per_turn = saturated.cpu_ms_per_turn()
    label = f"{conversations} conversations, model {settings.capacity_latency:g} s x 2 calls"
    window = f"{settings.capacity_seconds:g} s window after {settings.capacity_warmup_seconds:g} s warm-up"
    sat_latency, paced_latency = saturated.latency(), paced.latency()
    paced_note = f"each conversation sends a turn every {conversations / rate_target:.2f} s"
    return [
        Figure(
            "capacity",
            "throughput, back-to-back turns",
            "turns/s",
            saturated.throughput,
            conversations / ideal_turn,
            "ideal: conversations / (2 x latency)",
            Target(">=", rate_target),
            note=f"{label}; {window}",
            details=_load_details(saturated),
        ),
        Figure(
            "capacity",
            "errors",
            "count",
            float(sum(saturated.errors().values()) + sum(paced.errors().values())),
            0.0,
            "",
            Target("==", 0.0),
            note="both runs",
        ),
        Figure(
            "capacity", "turn p50, back-to-back", "s", sat_latency.get("p50"), ideal_turn, "2 x model latency"
        ),
        Figure(
            "capacity",
            "turn p99, back-to-back",
            "s",
            sat_latency.get("p99"),
            ideal_turn,
            "2 x model latency",
            Target("<=", ideal_turn * 1.15),
        ),
        Figure(
            "capacity",
            f"throughput, offered {rate_target:.0f} turns/s",
            "turns/s",
            paced.throughput,
            rate_target,
            "offered",
            Target(">=", rate_target * 0.98),
            note=paced_note,
            details=_load_details(paced),
        ),
        Figure(
            "capacity",
            f"turn p99, offered {rate_target:.0f} turns/s",
            "s",
            paced_latency.get("p99"),
            ideal_turn,
            "2 x model latency",
            Target("<=", ideal_turn * 1.15),
        ),
        Figure(
            "capacity",
            "CPU-bound ceiling on this machine",
            "turns/s",
            cores * 1000 / cpu_per_turn if cpu_per_turn else None,
            note=f"{cores} cores / {cpu_per_turn:.1f} ms CPU per turn (services, model server, client)",
        ),
    ]
