"""overhead: sequential Chat turns on a zero-latency model vs the in-process seed loop (interleaved), and one
hop at a time beside its in-process equivalent."""

from __future__ import annotations

import time
from typing import Any

import grpc

from bench.client import AgentClient, BackendClients
from bench.report import Figure, Target
from bench.scenarios.context import (
    ORDER_MESSAGE,
    SEARCH_QUERY,
    BenchContext,
    cpu_delta,
    to_ms,
)
from bench.stack import ORDER_ID
from bench.stats import rounded, summary

# The targets, as ratios to the in-process seed loop measured in the same run.
P50_RATIO_TARGET = 1.30
P99_RATIO_TARGET = 1.40
CPU_RATIO_TARGET = 1.30


async def run_overhead(ctx: BenchContext) -> list[Figure]:
    from bench.reference import ReferenceAgent  # loads the embedding model: only when this scenario runs

    settings, stack = ctx.settings, ctx.stack
    model = await ctx.model("zero")
    await stack.ensure_agent(ctx.kb_dir, model, None)
    await ctx.reference_store()
    reference = ReferenceAgent(ctx.reference_chroma, ctx.reference_orders, model.base_url)
    client = AgentClient(stack.addrs["agent"])
    stack_s: list[float] = []
    ref_s: list[float] = []
    problems: dict[str, int] = {}
    histories: dict[str, list[dict[str, Any]]] = {}
    ref_cpu: list[float] = []

    async def stack_turn(index: int, record: bool) -> None:
        result = await client.timed_chat(ctx.conversation("overhead", 0, index), ORDER_MESSAGE)
        if not record:
            return
        stack_s.append(result.seconds)
        if result.code != grpc.StatusCode.OK or not result.valid:
            key = result.code.name if result.code != grpc.StatusCode.OK else result.detail
            problems[key] = problems.get(key, 0) + 1

    async def reference_turn(index: int, record: bool) -> None:
        conversation = ctx.conversation("overhead-ref", 0, index)
        history = histories.setdefault(conversation, [])
        started, cpu_started = time.perf_counter(), time.process_time()
        await reference.run_turn(ORDER_MESSAGE, history, "cust-001")
        if record:
            ref_s.append(time.perf_counter() - started)
            ref_cpu.append(time.process_time() - cpu_started)

    try:
        for index in range(settings.overhead_warmup):
            await stack_turn(index, record=False)
            await reference_turn(index, record=False)
        # Interleaved, alternating which goes first, so background load hits both alike. The services are
        # idle during reference turns, so their CPU time over the loop is the stack turns' alone.
        cpu_before = stack.cpu_snapshot()
        for index in range(settings.overhead_warmup, settings.overhead_warmup + settings.overhead_turns):
            if index % 2:
                await stack_turn(index, record=True)
                await reference_turn(index, record=True)
            else:
                await reference_turn(index, record=True)
                await stack_turn(index, record=True)
        stack_cpu = cpu_delta(cpu_before, stack.cpu_snapshot())
        breakdown = await _breakdown(ctx, reference)
    finally:
        await client.close()
        await reference.close()
    stack_ms, ref_ms = summary(to_ms(stack_s)), summary(to_ms(ref_s))
    turns = len(stack_s)
    cpu_ms_per_turn = {
        name: round(seconds * 1000 / turns, 3)
        for name, seconds in stack_cpu.items()
        if name in {"agent", "retrieval", "tools"}
    }
    note = f"{turns} turns each" + (f"; problems: {problems}" if problems else "")
    stack_cpu_total = sum(cpu_ms_per_turn.values())
    ref_cpu_ms = sum(ref_cpu) * 1000 / max(1, len(ref_cpu))
    seed_loop = "in-process seed loop"
    figures = [
        Figure(
            "overhead",
            "turn p50, stack (gRPC Chat)",
            "ms",
            stack_ms["p50"],
            ref_ms["p50"],
            seed_loop,
            note=note,
            details={"stack_ms": rounded(stack_ms), "reference_ms": rounded(ref_ms), "problems": problems},
        ),
        Figure("overhead", "turn p99, stack (gRPC Chat)", "ms", stack_ms["p99"], ref_ms["p99"], seed_loop),
        Figure(
            "overhead",
            "stack/reference p50 ratio",
            "x",
            stack_ms["p50"] / ref_ms["p50"],
            1.0,
            seed_loop,
            Target("<=", P50_RATIO_TARGET),
        ),
        Figure(
            "overhead",
            "stack/reference p99 ratio",
            "x",
            stack_ms["p99"] / ref_ms["p99"],
            1.0,
            seed_loop,
            Target("<=", P99_RATIO_TARGET),
        ),
        Figure(
            "overhead",
            "CPU per turn: agent + retrieval + tools",
            "ms",
            stack_cpu_total,
            ref_cpu_ms,
            "monolith process",
            note="user+sys CPU of the processes over the measured turns / turns (model server excluded)",
            details={"per_service_ms": cpu_ms_per_turn, "reference_ms": round(ref_cpu_ms, 3)},
        ),
        Figure(
            "overhead",
            "CPU per turn ratio: three services / monolith",
            "x",
            stack_cpu_total / ref_cpu_ms if ref_cpu_ms else None,
            1.0,
            "monolith process",
            Target("<=", CPU_RATIO_TARGET),
        ),
    ]
    for name in ("agent", "retrieval", "tools"):
        if name in cpu_ms_per_turn:
            figures.append(Figure("overhead", f"CPU per turn: {name}", "ms", cpu_ms_per_turn[name]))
    figures.extend(breakdown)
    return figures


async def _breakdown(ctx: BenchContext, reference: Any) -> list[Figure]:
    """One hop at a time: Search and ExecuteTool over gRPC beside the in-process equivalents."""
    calls = ctx.settings.breakdown_calls
    backends = BackendClients(ctx.stack.addrs["retrieval"], ctx.stack.addrs["tools"])
    search_s: list[float] = []
    local_search_s: list[float] = []
    tool_s: list[float] = []
    local_tool_s: list[float] = []
    try:
        for index in range(calls):
            started = time.perf_counter()
            await backends.search(SEARCH_QUERY)
            search_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            reference.retrieve_context(SEARCH_QUERY)
            local_search_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            await backends.execute_tool(
                ctx.conversation("breakdown", index, 0),
                "lookup_order_status",
                f'{{"order_id": "{ORDER_ID}"}}',
            )
            tool_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            reference.lookup_order_status("cust-001", ORDER_ID)
            local_tool_s.append(time.perf_counter() - started)
        chunks = {"service": await backends.chunk_count(), "reference": int(reference.collection.count())}
    finally:
        await backends.close()
    search, local_search = summary(to_ms(search_s)), summary(to_ms(local_search_s))
    tool, local_tool = summary(to_ms(tool_s)), summary(to_ms(local_tool_s))
    return [
        Figure(
            "overhead",
            "hop p50: RetrievalService.Search",
            "ms",
            search["p50"],
            local_search["p50"],
            "in-process embedding + Chroma query",
            note=f"KB chunks: service {chunks['service']}, reference {chunks['reference']}",
            details={"grpc_ms": rounded(search), "in_process_ms": rounded(local_search), "kb_chunks": chunks},
        ),
        Figure(
            "overhead",
            "hop p50: ToolsService.ExecuteTool",
            "ms",
            tool["p50"],
            local_tool["p50"],
            "in-process SQLite lookup",
            details={"grpc_ms": rounded(tool), "in_process_ms": rounded(local_tool)},
        ),
    ]
