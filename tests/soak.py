"""Soak: the three services as processes on loopback with a scripted model, mixed conversations at a steady
rate for a bounded time; reports errors, latency and the resident memory of each process.

    python -m tests.soak --seconds 600 --rate 5        # `make soak` (SOAK_SECONDS overrides the duration)

Exit status 0 only when no call failed and no process grew its RSS by 10 % or more between the end of the
warm-up (the first 20 % of the run, at least 10 s) and the end. Loopback only; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from devstack import SAMPLE_KB, ProcessStack, StackError, isolated_environ
from devstack.credentials import role_channel
from devstack.loop_thread import LoopThread
from support.v1 import agent_pb2, agent_pb2_grpc
from testkit.scripted_openai import (
    Reply,
    ScriptedOpenAIServer,
    ToolCallSpec,
    has_tool_result,
    last_user_message,
)

MAX_RSS_GROWTH = 0.10
LANES = 20
TURN_TIMEOUT = 30.0
MESSAGES = [
    ("kb", "How long does express shipping take?"),
    ("kb", "What is your refund policy?"),
    ("kb", "How do I reset my password?"),
    ("kb", "Do you ship internationally?"),
    ("order", "Where is my order ORD-12345?"),
    ("order", "Any news on ORD-67890?"),
    ("gap", "Do you sell garden gnomes made of titanium?"),
    ("escalate", "I want to talk to a human about a billing dispute."),
    ("pii", "My email is soak.tester@example.com, where is ORD-12345?"),
]


def soak_model(request: dict[str, Any]) -> Reply:
    """A plausible model: looks orders up, escalates when asked, otherwise answers from the context."""
    message = last_user_message(request)
    if has_tool_result(request):
        return Reply(content="Thanks for waiting: I checked that for you. Anything else?", chunk_chars=16)
    if "ORD-" in message:
        order = message[message.index("ORD-") : message.index("ORD-") + 9]
        return Reply(tool_calls=[ToolCallSpec("lookup_order_status", json.dumps({"order_id": order}))])
    if "human" in message:
        args = json.dumps({"priority": "medium", "reason": "customer asked for a human"})
        return Reply(tool_calls=[ToolCallSpec("escalate_to_human", args)])
    return Reply(content="Express shipping takes 1-2 business days; refunds take 5-7 days.", chunk_chars=16)


@dataclass
class Stats:
    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)


async def _one_turn(
    stub: agent_pb2_grpc.AgentServiceStub, index: int, stats: Stats, rng: random.Random
) -> None:
    kind, message = rng.choice(MESSAGES)
    # LANES conversations take turns, so one conversation's turns are LANES intervals apart (they must not
    # overlap: a second message while a turn is in flight is ABORTED by design); six turns each, then new ones.
    lane = index % LANES
    conversation_number = (index // (LANES * 6)) * LANES + lane
    conversation = f"soak-{conversation_number}"
    customer = "cust-001" if conversation_number % 4 else f"cust-{100 + conversation_number % 50:03d}"
    metadata = (("x-customer-id", customer),)
    turn_id = f"{conversation}-{index}"
    started = time.monotonic()
    method = "StreamChat" if index % 3 == 0 else "Chat"
    try:
        if method == "StreamChat":
            final = None
            async for event in stub.StreamChat(
                agent_pb2.StreamChatRequest(conversation_id=conversation, message=message, turn_id=turn_id),
                metadata=metadata,
                timeout=TURN_TIMEOUT,
            ):
                if event.HasField("final"):
                    final = event.final
            if final is None:
                raise RuntimeError("stream ended without a final event")
        else:
            await stub.Chat(
                agent_pb2.ChatRequest(conversation_id=conversation, message=message, turn_id=turn_id),
                metadata=metadata,
                timeout=TURN_TIMEOUT,
            )
        if index % 10 == 0:
            await stub.GetConversation(
                agent_pb2.GetConversationRequest(conversation_id=conversation), metadata=metadata, timeout=10
            )
    except grpc.aio.AioRpcError as error:
        stats.errors[f"{method}:{error.code().name}:{kind}"] += 1
    except RuntimeError as error:
        stats.errors[f"{method}:{error}"] += 1
    else:
        stats.latencies.append(time.monotonic() - started)
    stats.calls[method] += 1


def rss_kib(stack: ProcessStack, name: str) -> int:
    """Resident set size of a service process (VmRSS, KiB)."""
    status = Path(f"/proc/{stack.pid(name)}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise StackError(f"no VmRSS for {name}")


async def drive(stack: ProcessStack, seconds: float, rate: float, stats: Stats) -> None:
    rng = random.Random(7)
    interval = 1.0 / rate
    async with role_channel(stack.addrs["agent"], stack.credentials) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)  # type: ignore[no-untyped-call]
        # The agent reports SERVING while its embedding model (injection detector, escalation backstop) still
        # loads in the background, and the first turns wait for it — seconds on a busy machine, longer than a
        # lane's interval. The soak measures the steady state, so one turn waits that out before the clock starts.
        await stub.Chat(
            agent_pb2.ChatRequest(conversation_id="soak-warm-up", message=MESSAGES[0][1]),
            metadata=(("x-customer-id", "cust-001"),),
            timeout=TURN_TIMEOUT,
        )
        start = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        index = 0
        next_sample = start
        while (now := time.monotonic()) - start < seconds:
            if now >= next_sample:
                for name in ("retrieval", "tools", "agent"):
                    stats.rss.setdefault(name, []).append((now - start, rss_kib(stack, name)))
                next_sample += 2.0
            task = asyncio.create_task(_one_turn(stub, index, stats, rng))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            index += 1
            await asyncio.sleep(max(0.0, start + index * interval - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=TURN_TIMEOUT + 5)
        for name in ("retrieval", "tools", "agent"):
            stats.rss[name].append((time.monotonic() - start, rss_kib(stack, name)))


def rss_growth(samples: list[tuple[float, int]], warmup: float) -> tuple[int, int, float]:
    """(baseline KiB after warm-up, final KiB, growth fraction); the baseline is the median of the samples in
    the few seconds right after warm-up, the final the median of the last three samples."""
    after = [kib for at, kib in samples if at >= warmup]
    baseline = int(statistics.median(after[:3])) if after else samples[0][1]
    final = int(statistics.median([kib for _, kib in samples[-3:]]))
    return baseline, final, (final - baseline) / baseline


def run(seconds: float, rate: float, data_dir: Path) -> tuple[int, dict[str, Any]]:
    warmup = max(10.0, seconds * 0.2)
    loop = LoopThread()
    model = ScriptedOpenAIServer(soak_model)
    base_url = loop.run(model.start())
    stack = ProcessStack(
        data_dir,
        environ=isolated_environ(),
        env={
            "OPENAI_BASE_URL": base_url,
            "OPENAI_API_KEY": "soak-key",
            "LOG_LEVEL": "WARNING",
            "MODEL_MAX_RETRIES": "0",
        },
        log_dir=data_dir / "logs",
    )
    stats = Stats()
    try:
        asyncio.run(stack.start_all(SAMPLE_KB))
        asyncio.run(drive(stack, seconds, rate, stats))
    finally:
        stopped = stack.stop_all()
        loop.run(model.stop())
        loop.close()
    growth = {name: rss_growth(samples, warmup) for name, samples in stats.rss.items()}
    latencies = sorted(stats.latencies)
    report: dict[str, Any] = {
        "seconds": seconds,
        "rate_per_second": rate,
        "turns": sum(stats.calls.values()),
        "calls": dict(stats.calls),
        "errors": dict(stats.errors),
        "latency_p50_ms": round(1000 * latencies[len(latencies) // 2], 1) if latencies else None,
        "latency_p95_ms": round(1000 * latencies[int(len(latencies) * 0.95)], 1) if latencies else None,
        "latency_max_ms": round(1000 * latencies[-1], 1) if latencies else None,
        "rss_kib": {
            name: {"after_warmup": base, "final": final, "growth_pct": round(100 * pct, 2)}
            for name, (base, final, pct) in growth.items()
        },
        "exit_codes": stopped,
    }
    failed = (
        bool(stats.errors)
        or any(pct >= MAX_RSS_GROWTH for _, _, pct in growth.values())
        or any(code != 0 for code in stopped.values())
        or not latencies
    )
    return (1 if failed else 0), report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Soak the local stack at a steady rate (loopback only).")
    parser.add_argument("--seconds", type=float, default=600.0, help="duration of the load (default 600)")
    parser.add_argument("--rate", type=float, default=5.0, help="turns per second (default 5)")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="where the services keep data (default: temp)"
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rate <= 0:
        parser.error("--seconds and --rate must be positive")
    if args.data_dir is not None:
        code, report = run(args.seconds, args.rate, args.data_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
            code, report = run(args.seconds, args.rate, Path(tmp))
    print(json.dumps(report, indent=2))
    print("soak: PASS" if code == 0 else "soak: FAIL", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
