"""streaming: model's first content token -> caller's first StreamChat text_delta."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import grpc

from bench.client import AgentClient
from bench.report import Figure, Target
from bench.scenarios.context import (
    STREAM_MESSAGE,
    BenchContext,
)
from bench.stats import rounded, summary
from bench.stream_model import first_token_url


async def _model_stamp(http: aiohttp.ClientSession, base_url: str, nonce: str) -> int | None:
    async with http.get(first_token_url(base_url, nonce), timeout=aiohttp.ClientTimeout(total=5)) as response:
        if response.status != 200:
            return None
        data = await response.json()
        return int(data["first_token_ns"])


async def run_streaming(ctx: BenchContext) -> list[Figure]:
    from bench.reference import ReferenceAgent

    stack = ctx.stack
    model = await ctx.model("stream")
    await stack.ensure_agent(ctx.kb_dir, model, None)
    await ctx.reference_store()
    reference = ReferenceAgent(ctx.reference_chroma, ctx.reference_orders, model.base_url)
    client = AgentClient(stack.addrs["agent"])
    stack_ms: list[float] = []
    ref_ms: list[float] = []
    no_delta = 0
    failures: dict[str, int] = {}
    try:
        async with aiohttp.ClientSession() as http:
            for index in range(ctx.settings.stream_turns + 2):
                record = index >= 2  # two warm-up turns
                nonce = f"{ctx.run_id}s{index}"
                message = f"{STREAM_MESSAGE} [bench:{nonce}]"
                first: int | None = None
                try:
                    async for event in client.stream(ctx.conversation("stream", index, 0), message):
                        kind = event.WhichOneof("event")
                        if first is None and kind == "text_delta" and event.text_delta.text:
                            first = time.monotonic_ns()
                except grpc.aio.AioRpcError as error:
                    failures[error.code().name] = failures.get(error.code().name, 0) + 1
                    continue
                stamp = await _model_stamp(http, model.base_url, nonce)
                if first is None or stamp is None:
                    no_delta += first is None
                    continue
                if record:
                    stack_ms.append((first - stamp) / 1e6)
                ref_nonce = f"{ctx.run_id}r{index}"
                ref_first = await reference.first_token_ns(f"{STREAM_MESSAGE} [bench:{ref_nonce}]")
                ref_stamp = await _model_stamp(http, model.base_url, ref_nonce)
                if record and ref_first is not None and ref_stamp is not None:
                    ref_ms.append((ref_first - ref_stamp) / 1e6)
    finally:
        await client.close()
        await reference.close()
    details: dict[str, Any] = {"no_text_delta": no_delta, "rpc_failures": failures}
    if not stack_ms:
        return [
            Figure(
                "streaming",
                "model first token -> first text_delta p95",
                "ms",
                None,
                note=f"no text_delta events measured ({no_delta} streams without one, failures {failures})",
                details=details,
            )
        ]
    stack_summary, ref_summary = summary(stack_ms), summary(ref_ms) if ref_ms else {}
    details.update(stack_ms=rounded(stack_summary), reference_ms=rounded(ref_summary))
    return [
        Figure(
            "streaming",
            "model first token -> first text_delta p95",
            "ms",
            stack_summary["p95"],
            ref_summary.get("p95"),
            "in-process openai stream",
            Target("<=", 20.0),
            note=f"{len(stack_ms)} streams" + (f"; {no_delta} without text_delta" if no_delta else ""),
            details=details,
        ),
        Figure(
            "streaming",
            "model first token -> first text_delta p50",
            "ms",
            stack_summary["p50"],
            ref_summary.get("p50"),
            "in-process openai stream",
        ),
    ]
