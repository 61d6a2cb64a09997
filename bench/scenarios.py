"""The benchmark scenarios. Each takes the run's context and returns its figures.

| scenario  | what it measures                                                                      |
|-----------|---------------------------------------------------------------------------------------|
| startup   | launch of all three services -> all SERVING (existing KB); idle RSS of the three       |
| overhead  | sequential Chat turns on a zero-latency model vs the in-process seed loop (interleaved) |
| streaming | model's first content token -> caller's first StreamChat text_delta                     |
| capacity  | N concurrent conversations, model latency L per call, two model calls per turn         |
| shedding  | MAX_CONCURRENT_TURNS small, a burst above it: RESOURCE_EXHAUSTED and how fast           |
| floors    | one gRPC round trip, one openai client call vs a raw POST, one embedding, one Chroma query |
| retrieval | `python -m bench.retrieval` (ingest throughput, Search latency at 100k chunks)          |
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.client import AgentClient, BackendClients, CallResult
from bench.report import Figure, Target
from bench.stack import ORDER_ID, REPO_ROOT, BenchStack, ModelServer, rss_bytes, spawn
from bench.stats import rounded, summary
from bench.stream_model import first_token_url

ORDER_MESSAGE = f"Where is my order {ORDER_ID}?"
STREAM_MESSAGE = "How long does express shipping take?"
SEARCH_QUERY = "How long does express shipping take?"


@dataclass(frozen=True)
class Settings:
    overhead_turns: int = 500
    overhead_warmup: int = 20
    breakdown_calls: int = 200
    # Conversations rotate after this many turns (keeps history short and under per-conversation tool limits).
    turns_per_conversation: int = 3
    capacity_conversations: int = 512
    capacity_seconds: float = 20.0
    capacity_warmup_seconds: float = 3.0
    capacity_latency: float = 0.5
    # MAX_CONCURRENT_TURNS for the capacity run: above the offered concurrency, so nothing is shed.
    capacity_turn_limit: int = 1024
    shed_limit: int = 8
    shed_requests: int = 64
    stream_turns: int = 100
    stream_first_token_delay: float = 0.05
    startup_repeats: int = 3
    # Arguments for the retrieval engineer's `python -m bench.retrieval` (its defaults: 100k chunks).
    retrieval_args: tuple[str, ...] = ()

    @classmethod
    def full(cls) -> Settings:
        return cls()

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            overhead_turns=150,
            breakdown_calls=100,
            capacity_seconds=8.0,
            capacity_warmup_seconds=2.0,
            stream_turns=40,
            startup_repeats=1,
            retrieval_args=("--chunks", "10000", "--ingest-chunks", "200", "--queries", "200"),
        )

    @classmethod
    def toy(cls) -> Settings:
        """For the smoke test: every scenario end to end in seconds; the numbers mean nothing."""
        return cls(
            overhead_turns=4,
            overhead_warmup=1,
            breakdown_calls=3,
            capacity_conversations=6,
            capacity_seconds=1.0,
            capacity_warmup_seconds=0.3,
            capacity_latency=0.05,
            capacity_turn_limit=64,
            shed_limit=2,
            shed_requests=8,
            stream_turns=3,
            stream_first_token_delay=0.01,
            startup_repeats=1,
            retrieval_args=(
                "--chunks",
                "60",
                "--ingest-chunks",
                "20",
                "--raw-sample",
                "10",
                "--queries",
                "10",
            ),
        )


@dataclass
class BenchContext:
    settings: Settings
    stack: BenchStack
    kb_dir: Path
    run_dir: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    _reference_ready: bool = False

    @property
    def reference_chroma(self) -> Path:
        return self.run_dir / "reference" / "chroma"

    @property
    def reference_orders(self) -> Path:
        return self.run_dir / "reference" / "orders.sqlite3"

    async def model(self, name: str) -> ModelServer:
        """`zero`: tool-then-answer, no latency; `slow`: the same at capacity latency; `stream`: timed stream."""
        if name == "zero":
            return await self.stack.start_model_server("zero", 0.0, args=["--script", "tool-then-answer"])
        if name == "slow":
            latency = self.settings.capacity_latency
            return await self.stack.start_model_server("slow", latency, args=["--script", "tool-then-answer"])
        if name == "stream":
            delay = self.settings.stream_first_token_delay
            return await self.stack.start_model_server("stream", delay, module="bench.stream_model")
        raise ValueError(f"unknown model server {name!r}")

    async def reference_store(self) -> None:
        """The reference's own Chroma collection of the same KB, built once in a subprocess."""
        if self._reference_ready:
            return
        self.reference_chroma.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "bench.reference",
            "ingest",
            "--chroma-dir",
            str(self.reference_chroma),
            "--orders-db",
            str(self.reference_orders),
            str(self.kb_dir),
        ]
        process = await asyncio.create_subprocess_exec(
            *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.stack.run_dir
        )
        _, err = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"reference ingest failed: {err.decode(errors='replace')[-2000:]}")
        self._reference_ready = True

    def conversation(self, scenario: str, worker: int, turn: int) -> str:
        return f"bench-{self.run_id}-{scenario}-{worker}-{turn // self.settings.turns_per_conversation}"


Scenario = Callable[[BenchContext], Awaitable[list[Figure]]]


def _ms(seconds: list[float]) -> list[float]:
    return [value * 1000 for value in seconds]


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}


# --- startup --------------------------------------------------------------------------------------------


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
    process = spawn(command, ctx.stack.run_dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
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
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
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


# --- overhead -------------------------------------------------------------------------------------------


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
        stack_cpu = _cpu_delta(cpu_before, stack.cpu_snapshot())
        breakdown = await _breakdown(ctx, reference)
    finally:
        await client.close()
        await reference.close()
    stack_ms, ref_ms = summary(_ms(stack_s)), summary(_ms(ref_s))
    turns = len(stack_s)
    cpu_ms_per_turn = {
        name: round(seconds * 1000 / turns, 3)
        for name, seconds in stack_cpu.items()
        if name in {"agent", "retrieval", "tools"}
    }
    note = f"{turns} turns each" + (f"; problems: {problems}" if problems else "")
    figures = [
        Figure(
            "overhead",
            "turn p50, stack (gRPC Chat)",
            "ms",
            stack_ms["p50"],
            ref_ms["p50"],
            "in-process seed loop",
            Target("<=", 10.0),
            note=note,
            details={"stack_ms": rounded(stack_ms), "reference_ms": rounded(ref_ms), "problems": problems},
        ),
        Figure(
            "overhead",
            "turn p99, stack (gRPC Chat)",
            "ms",
            stack_ms["p99"],
            ref_ms["p99"],
            "in-process seed loop",
            Target("<=", 30.0),
        ),
        Figure(
            "overhead",
            "stack/reference p50 ratio",
            "x",
            stack_ms["p50"] / ref_ms["p50"],
            1.0,
            "reference",
            Target("<=", 1.3),
        ),
        Figure(
            "overhead", "stack/reference p99 ratio", "x", stack_ms["p99"] / ref_ms["p99"], 1.0, "reference"
        ),
    ]
    stack_cpu_total = sum(cpu_ms_per_turn.values())
    ref_cpu_ms = sum(ref_cpu) * 1000 / max(1, len(ref_cpu))
    figures.append(
        Figure(
            "overhead",
            "CPU per turn: agent + retrieval + tools",
            "ms",
            stack_cpu_total,
            ref_cpu_ms,
            "monolith process",
            note="user+sys CPU of the processes over the measured turns / turns (model server excluded)",
            details={"per_service_ms": cpu_ms_per_turn, "reference_ms": round(ref_cpu_ms, 3)},
        )
    )
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
    search, local_search = summary(_ms(search_s)), summary(_ms(local_search_s))
    tool, local_tool = summary(_ms(tool_s)), summary(_ms(local_tool_s))
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


# --- streaming ------------------------------------------------------------------------------------------


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


# --- capacity -------------------------------------------------------------------------------------------


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
    cpu = _cpu_delta(cpu_before, stack.cpu_snapshot())
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


# --- shedding -------------------------------------------------------------------------------------------


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
    shed_ms = summary(_ms(shed)) if shed else {}
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


# --- floors: what one hop or one library call costs here ------------------------------------------------


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


# --- retrieval at scale (bench/retrieval.py, owned by the retrieval service) ------------------------------

RETRIEVAL_TIMEOUT_SECONDS = 600.0


async def run_retrieval(ctx: BenchContext) -> list[Figure]:
    out = ctx.run_dir / "retrieval.json"
    command = [sys.executable, "-m", "bench.retrieval", *ctx.settings.retrieval_args, "--json", str(out)]
    log = ctx.stack.logs_dir / "bench-retrieval.log"
    with log.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(*command, cwd=REPO_ROOT, stdout=sink, stderr=sink)
        try:
            await asyncio.wait_for(process.wait(), RETRIEVAL_TIMEOUT_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RuntimeError(
                f"bench.retrieval did not finish in {RETRIEVAL_TIMEOUT_SECONDS:.0f} s"
            ) from None
    # It exits 1 when one of its own targets is missed; only a missing result is a failure.
    if not out.is_file():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:])
        raise RuntimeError(f"bench.retrieval exited {process.returncode} without results; see {log}:\n{tail}")
    result: dict[str, Any] = json.loads(out.read_text())
    chunks = int(result.get("collection_chunks", 0))
    raw = result.get("raw_embedding_chunks_per_s")
    size = f"{chunks} chunks in the collection"
    return [
        Figure(
            "retrieval",
            f"ingest via gRPC ({result.get('ingested_chunks', 0)} chunks)",
            "chunks/s",
            result.get("ingest_chunks_per_s"),
            raw,
            "raw embedding, model only",
            Target(">=", 0.9 * raw) if raw else None,
            note="target: >= 90% of raw embedding throughput",
            details=result,
        ),
        Figure(
            "retrieval",
            f"Search p50 at {chunks} chunks",
            "ms",
            result.get("search_p50_ms"),
            None,
            "",
            Target("<=", 8.0),
            note=size,
        ),
        Figure(
            "retrieval",
            f"Search p99 at {chunks} chunks",
            "ms",
            result.get("search_p99_ms"),
            None,
            "",
            Target("<=", 20.0),
            note=size,
        ),
    ]


SCENARIOS: dict[str, Scenario] = {
    "startup": run_startup,
    "overhead": run_overhead,
    "streaming": run_streaming,
    "capacity": run_capacity,
    "shedding": run_shedding,
    "floors": run_floors,
    "retrieval": run_retrieval,
}
