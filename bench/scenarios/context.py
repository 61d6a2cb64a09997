"""What every scenario shares: the run's settings and context, the messages it sends, small helpers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.report import Figure
from bench.stack import ORDER_ID, BenchStack, ModelServer

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
            retrieval_args=(
                "--chunks",
                "10000",
                "--ingest-chunks",
                "200",
                "--queries",
                "200",
                "--concurrent-seconds",
                "5",
            ),
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
                "--concurrency",
                "4",
                "--concurrent-seconds",
                "0.5",
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


def to_ms(seconds: list[float]) -> list[float]:
    return [value * 1000 for value in seconds]


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}
