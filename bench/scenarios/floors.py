"""floors: what one hop or one library call costs here: one gRPC round trip, one openai client call vs a raw
POST, one embedding, one Chroma query."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.report import Figure
from bench.scenarios.context import (
    ORDER_MESSAGE,
    SEARCH_QUERY,
    BenchContext,
)
from bench.stats import rounded, summary


async def _timed_loop(calls: int, body: Callable[[], Awaitable[object]]) -> tuple[dict[str, float], float]:
    """Latency summary (ms) and this process's CPU ms per call over `calls` sequential awaits of `body`."""
    for _ in range(min(10, calls)):
        await body()
    samples: list[float] = []
    cpu_started = time.process_time()
    for _ in range(calls):
        started = time.perf_counter()
        await body()
        samples.append((time.perf_counter() - started) * 1000)
    return summary(samples), (time.process_time() - cpu_started) * 1000 / calls


async def run_floors(ctx: BenchContext) -> list[Figure]:
    from bench.reference import SYSTEM_PROMPT, TOOLS, ReferenceAgent

    stack = ctx.stack
    model = await ctx.model("zero")
    await stack.ensure_backends(ctx.kb_dir)
    await ctx.reference_store()
    reference = ReferenceAgent(ctx.reference_chroma, ctx.reference_orders, model.base_url)
    calls = ctx.settings.breakdown_calls
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "system", "content": "Knowledge base context:\n" + reference.retrieve_context(SEARCH_QUERY)},
        {"role": "user", "content": ORDER_MESSAGE},
    ]
    body = {"model": "bench-scripted", "messages": messages, "tools": TOOLS, "tool_choice": "auto"}
    figures: list[Figure] = []
    try:
        async with grpc.aio.insecure_channel(stack.addrs["tools"]) as channel:
            health = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
            check = health_pb2.HealthCheckRequest(service="")
            grpc_ms, grpc_cpu = await _timed_loop(calls, lambda: health.Check(check, timeout=5))

        async def openai_call() -> object:
            return await reference.model_client.chat.completions.create(
                model="bench-scripted",
                messages=cast(Any, messages),
                tools=cast(Any, TOOLS),
                tool_choice="auto",
            )

        openai_ms, openai_cpu = await _timed_loop(calls, openai_call)
        async with aiohttp.ClientSession() as http:
            url = f"{model.base_url}/chat/completions"

            async def raw_call() -> object:
                async with http.post(url, json=body) as response:
                    return await response.json()

            raw_ms, raw_cpu = await _timed_loop(calls, raw_call)
        vector = reference.embedding([SEARCH_QUERY])

        async def embed() -> object:
            return reference.embedding([SEARCH_QUERY])

        async def chroma_query() -> object:
            return reference.collection.query(query_embeddings=vector, n_results=4)

        embed_ms, _ = await _timed_loop(calls, embed)
        chroma_ms, _ = await _timed_loop(calls, chroma_query)
    finally:
        await reference.close()
    figures += [
        Figure(
            "floors",
            "gRPC unary round trip (Health.Check), p50",
            "ms",
            grpc_ms["p50"],
            note=f"client CPU {grpc_cpu:.2f} ms/call",
            details={"latency_ms": rounded(grpc_ms), "client_cpu_ms": round(grpc_cpu, 3)},
        ),
        Figure(
            "floors",
            "openai client chat call, zero-latency model, p50",
            "ms",
            openai_ms["p50"],
            raw_ms["p50"],
            "raw aiohttp POST, same body",
            note=f"client CPU {openai_cpu:.2f} ms/call vs {raw_cpu:.2f} raw",
            details={
                "openai_ms": rounded(openai_ms),
                "raw_ms": rounded(raw_ms),
                "openai_client_cpu_ms": round(openai_cpu, 3),
                "raw_client_cpu_ms": round(raw_cpu, 3),
            },
        ),
        Figure("floors", "embed one query (MiniLM int8, 1 thread), p50", "ms", embed_ms["p50"]),
        Figure("floors", "Chroma query by vector (k=4), p50", "ms", chroma_ms["p50"]),
    ]
    return figures
