"""capacity: N concurrent conversations, model latency L per call, two model calls per turn; the stack, then the
in-process seed loop under the same load (same model server, embedding and KB)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from bench.client import AgentClient, CallResult
from bench.report import Figure, Target
from bench.scenarios.context import (
    ORDER_MESSAGE,
    BenchContext,
    cpu_delta,
)
from bench.stack import CUSTOMER_ID
from bench.stats import rounded, summary

if TYPE_CHECKING:
    from bench.reference import ReferenceAgent


@dataclass
class LoadRun:
    """One closed-loop run of `conversations` workers; `period` paces each conversation's turns (None: back to
    back). Turns are counted when they finish inside the window after the warm-up."""

    results: list[tuple[float, float, CallResult]]
    window_seconds: float
    window_start: float
    elapsed: float
    cpu: dict[str, float]
    # Seconds from the start until the window opened (every conversation had finished a turn).
    warmup: float = 0.0

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


TurnCall = Callable[[str], Awaitable[CallResult]]

# The targets: the stack's capacity against the in-process seed loop's under the same load, and its
# p99 against the model's own time (two calls) plus a margin.
THROUGHPUT_RATIO_TARGET = 0.8
P99_MARGIN_SECONDS = 0.150
# The window opens at the latest this long after the start, warm or not.
MAX_WARMUP_SECONDS = 60.0


async def _load_run(
    ctx: BenchContext, turn_call: TurnCall, label: str, period: float | None, cpu_names: tuple[str, ...]
) -> LoadRun:
    settings, stack = ctx.settings, ctx.stack
    conversations = settings.capacity_conversations
    results: list[tuple[float, float, CallResult]] = []
    started = time.monotonic()
    warm: set[int] = set()
    all_warm, stop = asyncio.Event(), asyncio.Event()
    rng = random.Random(7)

    async def worker(index: int) -> None:
        # Conversations join spread over the first second (or period), not in one burst.
        offset = rng.random() * (period or 1.0)
        await asyncio.sleep(offset)
        turn = 0
        while not stop.is_set():
            turn_started = time.monotonic()
            result = await turn_call(ctx.conversation(label, index, turn))
            results.append((turn_started, time.monotonic(), result))
            turn += 1
            warm.add(index)
            if len(warm) == conversations:
                all_warm.set()
            if period is not None:
                # The next turn is due one period after this one started; a late turn goes at once.
                due = started + offset + turn * period
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, due - time.monotonic()))

    async def window() -> float:
        """The window opens once every conversation has finished a turn (steady state, however long the
        turns take under this load), but not before the minimum warm-up; then it lasts capacity_seconds."""
        await asyncio.sleep(settings.capacity_warmup_seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_warm.wait(), MAX_WARMUP_SECONDS)
        opened = time.monotonic()
        await asyncio.sleep(settings.capacity_seconds)
        stop.set()
        return opened

    cpu_before = stack.cpu_snapshot()
    clock = asyncio.create_task(window())
    await asyncio.gather(*(worker(index) for index in range(conversations)))
    window_start = await clock
    cpu = cpu_delta(cpu_before, stack.cpu_snapshot())
    used = {name: seconds for name, seconds in cpu.items() if name in cpu_names}
    elapsed = time.monotonic() - started
    return LoadRun(results, settings.capacity_seconds, window_start, elapsed, used, window_start - started)


def _load_details(run: LoadRun) -> dict[str, Any]:
    services = ("agent", "retrieval", "tools")
    return {
        "turns_total": len(run.results),
        "window_opened_after_s": round(run.warmup, 2),
        "latency_s": rounded(run.latency()),
        "errors": run.errors(),
        "cpu_cores_used": {name: round(seconds / run.elapsed, 3) for name, seconds in run.cpu.items()},
        "cpu_ms_per_turn": {
            "services": round(run.cpu_ms_per_turn(services), 3),
            "all_processes": round(run.cpu_ms_per_turn(), 3),
            **{name: round(run.cpu_ms_per_turn((name,)), 3) for name in run.cpu},
        },
    }


def reference_turns(ctx: BenchContext, reference: ReferenceAgent) -> TurnCall:
    """One seed-loop turn per call, as a CallResult: valid when it made exactly one tool call and replied."""
    histories: dict[str, list[dict[str, Any]]] = {}

    async def turn(conversation: str) -> CallResult:
        started = time.perf_counter()
        try:
            result = await reference.run_turn(
                ORDER_MESSAGE, histories.setdefault(conversation, []), CUSTOMER_ID
            )
        except Exception as error:  # a failed turn is an error of the run, not of the bench
            return CallResult(
                time.perf_counter() - started, grpc.StatusCode.UNKNOWN, False, type(error).__name__
            )
        elapsed = time.perf_counter() - started
        problem = "" if result.reply and result.tool_calls == 1 else f"{result.tool_calls} tool calls"
        return CallResult(elapsed, grpc.StatusCode.OK, not problem, problem)

    return turn


async def run_capacity(ctx: BenchContext) -> list[Figure]:
    from bench.reference import ReferenceAgent  # loads the embedding model: only when this scenario runs

    settings, stack = ctx.settings, ctx.stack
    model = await ctx.model("slow")
    await stack.ensure_agent(ctx.kb_dir, model, settings.capacity_turn_limit)
    await ctx.reference_store()
    conversations = settings.capacity_conversations
    ideal_turn = 2 * settings.capacity_latency
    # The 200 turns/s for 512 conversations at 1 s per turn, scaled for other settings.
    rate_target = conversations / ideal_turn * 200 / 512
    client = AgentClient(stack.addrs["agent"])
    reference = ReferenceAgent(ctx.reference_chroma, ctx.reference_orders, model.base_url)
    stack_processes = ("agent", "retrieval", "tools", "model-slow", "bench")
    # The seed loop runs in this process; the services are idle meanwhile.
    reference_processes = ("model-slow", "bench")

    async def stack_turn(conversation: str) -> CallResult:
        return await client.timed_chat(conversation, ORDER_MESSAGE, rpc_seconds=60)

    reference_turn = reference_turns(ctx, reference)
    try:
        await stack_turn(ctx.conversation("capacity-warm", 0, 0))
        saturated = await _load_run(ctx, stack_turn, "capacity", None, stack_processes)
        paced = await _load_run(ctx, stack_turn, "paced", conversations / rate_target, stack_processes)
        await reference_turn(ctx.conversation("capacity-ref-warm", 0, 0))
        seed = await _load_run(ctx, reference_turn, "capacity-ref", None, reference_processes)
    finally:
        await client.close()
        await reference.close()
    cores = os.cpu_count() or 1
    cpu_per_turn = saturated.cpu_ms_per_turn()
    seed_cpu_per_turn = seed.cpu_ms_per_turn()
    label = f"{conversations} conversations, model {settings.capacity_latency:g} s x 2 calls"
    window = (
        f"{settings.capacity_seconds:g} s window, opened once every conversation had finished a turn "
        f"(at least {settings.capacity_warmup_seconds:g} s)"
    )
    sat_latency, paced_latency, seed_latency = saturated.latency(), paced.latency(), seed.latency()
    paced_note = f"each conversation sends a turn every {conversations / rate_target:.2f} s"
    same_load = "in-process seed loop, same load"
    p99_target = ideal_turn + P99_MARGIN_SECONDS
    return [
        Figure(
            "capacity",
            "throughput, back-to-back turns",
            "turns/s",
            saturated.throughput,
            seed.throughput,
            same_load,
            note=f"{label}; {window}; ideal {conversations / ideal_turn:.0f} turns/s",
            details={"stack": _load_details(saturated), "reference": _load_details(seed)},
        ),
        Figure(
            "capacity",
            "throughput ratio: stack / seed loop",
            "x",
            saturated.throughput / seed.throughput if seed.throughput else None,
            1.0,
            same_load,
            Target(">=", THROUGHPUT_RATIO_TARGET),
        ),
        Figure(
            "capacity",
            "errors",
            "count",
            float(sum(saturated.errors().values()) + sum(paced.errors().values())),
            float(sum(seed.errors().values())),
            "seed loop",
            Target("==", 0.0),
            note="both stack runs",
        ),
        Figure(
            "capacity",
            "turn p50, back-to-back",
            "s",
            sat_latency.get("p50"),
            seed_latency.get("p50"),
            same_load,
        ),
        Figure(
            "capacity",
            "turn p99, back-to-back",
            "s",
            sat_latency.get("p99"),
            seed_latency.get("p99"),
            same_load,
            Target("<=", p99_target),
            note=f"target: 2 x model latency + {P99_MARGIN_SECONDS * 1000:.0f} ms",
        ),
        Figure(
            "capacity",
            "CPU per turn under load, all processes",
            "ms",
            cpu_per_turn,
            seed_cpu_per_turn,
            same_load,
            note="services, model server and the bench client (stack); the bench process and model server (seed loop)",
        ),
        Figure(
            "capacity",
            f"throughput, offered {rate_target:.0f} turns/s",
            "turns/s",
            paced.throughput,
            rate_target,
            "offered",
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
        ),
        Figure(
            "capacity",
            "CPU-bound ceiling on this machine",
            "turns/s",
            cores * 1000 / cpu_per_turn if cpu_per_turn else None,
            cores * 1000 / seed_cpu_per_turn if seed_cpu_per_turn else None,
            "seed loop",
            note=f"{cores} cores / {cpu_per_turn:.1f} ms CPU per turn (services, model server, client)",
        ),
    ]
