"""startup: launch of all three services -> all SERVING (existing KB); idle RSS of the three."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from bench.client import AgentClient
from bench.report import Figure, Target
from bench.scenarios.context import (
    ORDER_MESSAGE,
    BenchContext,
)
from bench.stack import ModelServer, rss_bytes
from devstack import wait_or_kill


def _spawn_reference(command: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    """Starts the monolith reference (Popen returns once the child is forked); it reports on stdout."""
    return subprocess.Popen(
        command, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )


async def _reference_start(ctx: BenchContext, model: ModelServer) -> tuple[float, float]:
    """Seconds from launch to 'ready' of the monolith reference, and its RSS (MB) idle after one turn."""
    await ctx.reference_store()
    command = [
        sys.executable,
        "-m",
        "bench.reference",
        "serve",
        "--chroma-dir",
        str(ctx.reference_chroma),
        "--orders-db",
        str(ctx.reference_orders),
        "--base-url",
        model.base_url,
    ]
    started = time.monotonic()
    process = _spawn_reference(command, ctx.stack.run_dir)
    assert process.stdout is not None and process.stdin is not None
    try:
        ready = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout=120)
        ready_at = time.monotonic()
        warm = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout=60)
        if ready.strip() != b"ready" or warm.strip() != b"warm":
            raise RuntimeError("the reference process did not start")
        await asyncio.sleep(1.0)
        rss = rss_bytes(process.pid) / 2**20
    finally:
        process.stdin.close()  # end of input: the reference exits
        wait_or_kill(process, 10, "reference")
        process.stdout.close()
    return ready_at - started, rss


async def run_startup(ctx: BenchContext) -> list[Figure]:
    stack = ctx.stack
    model = await ctx.model("zero")
    await stack.ensure_backends(ctx.kb_dir)
    agent_env = stack.agent_env(model, None)
    times: list[float] = []
    for _ in range(ctx.settings.startup_repeats):
        stack.stop_services()
        launched = time.monotonic()
        for name in ("retrieval", "tools", "agent"):
            stack.launch(name, agent_env if name == "agent" else None)
        ready = await asyncio.gather(*(stack.wait_ready(name) for name in ("retrieval", "tools", "agent")))
        times.append(max(ready) - launched)
    stack.agent_config = (model.name, None)
    client = AgentClient(stack.addrs["agent"])
    try:
        warm = await client.timed_chat(ctx.conversation("startup", 0, 0), ORDER_MESSAGE)
    finally:
        await client.close()
    await asyncio.sleep(1.0)
    rss = stack.rss_mb()
    ref_start, ref_rss = await _reference_start(ctx, model)
    start_median = sorted(times)[len(times) // 2]
    return [
        Figure(
            "startup",
            "launch -> all three SERVING (existing KB)",
            "s",
            start_median,
            ref_start,
            "monolith ready",
            Target("<=", 5.0),
            note=f"median of {len(times)}",
            details={"runs_s": [round(value, 3) for value in times]},
        ),
        Figure(
            "startup",
            "idle RSS, three services",
            "MB",
            sum(rss.values()),
            ref_rss,
            "monolith",
            Target("<=", 700.0),
            note="after one turn, 1 s idle; each process with its children",
            details={
                "per_service_mb": {name: round(value, 1) for name, value in rss.items()},
                "warm_turn_ok": warm.valid,
            },
        ),
    ]
