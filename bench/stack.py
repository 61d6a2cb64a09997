"""The processes a benchmark run needs, all on loopback: scripted model servers and the three services.

The services are devstack's ProcessStack with what the benchmarks add: scripted model servers, an optional
profiler around each service, and CPU and memory readings. Every process writes its output to a log file in the
run directory. Services are (re)started with the environment a scenario asks for; the agent is restarted
whenever its model server or concurrency limit changes.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

from devstack import (
    REPO_ROOT,
    STOP_TIMEOUT_SECONDS,
    ProcessStack,
    ServiceSpec,
    StackError,
    isolated_environ,
    stop_process,
)

__all__ = [
    "API_KEY",
    "CUSTOMER_ID",
    "MODEL_NAME",
    "ORDER_ID",
    "REPO_ROOT",
    "BenchStack",
    "ModelServer",
    "StackError",
    "cpu_seconds",
    "rss_bytes",
]

CUSTOMER_ID = "cust-001"
ORDER_ID = "ORD-12345"
API_KEY = "bench-not-a-secret"
MODEL_NAME = "bench-scripted"
MODEL_SERVER_START_SECONDS = 30.0
MODEL_SERVER_STOP_SECONDS = 5.0


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants."""
    try:
        process = psutil.Process(pid)
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return int(total)
    except psutil.NoSuchProcess:
        return 0


def cpu_seconds(pid: int, include_self: bool = True) -> float:
    """User + system CPU time of a process and its live descendants (without the process itself, e.g. for
    a profiler that runs the service as its child)."""
    try:
        process = psutil.Process(pid)
        times = process.cpu_times()
        total = times.user + times.system if include_self else 0.0
        for child in process.children(recursive=True):
            try:
                child_times = child.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += child_times.user + child_times.system
        return float(total)
    except psutil.NoSuchProcess:
        return 0.0


def _under_py_spy(command: Sequence[str]) -> bool:
    return Path(command[0]).name == "py-spy"


@dataclass
class ModelServer:
    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    latency: float
    log: IO[bytes]


@dataclass
class BenchStack(ProcessStack):
    """The services of one run (`BenchStack.in_run_dir`), plus its model servers; `close()` stops them all
    (services first, the agent before the others)."""

    profile_dir: Path | None = None
    models: dict[str, ModelServer] = field(default_factory=dict)
    ingested: bool = False
    launches: int = 0
    # The model server name and MAX_CONCURRENT_TURNS the running agent was started with.
    agent_config: tuple[str, int | None] | None = None

    @classmethod
    def in_run_dir(
        cls, run_dir: Path, log_level: str = "INFO", profile_dir: Path | None = None
    ) -> BenchStack:
        """Data in `<run_dir>/data`, logs in `<run_dir>/logs`; none of the developer's keys or stores."""
        env = {
            "LOG_LEVEL": log_level,
            # One customer drives every turn; its per-minute tool budget must not cap a throughput run.
            "TOOL_LIMIT_PER_CUSTOMER_PER_MINUTE": "100000000",
            # ... nor its per-minute turn budget (0: no per-customer turn limit).
            "CUSTOMER_TURNS_PER_MINUTE": "0",
            "TOOL_LIMIT_ESCALATIONS_PER_CUSTOMER_PER_MINUTE": "100000000",
        }
        return cls(
            run_dir / "data",
            environ=isolated_environ(),
            env=env,
            log_dir=run_dir / "logs",
            profile_dir=profile_dir,
        )

    @property
    def run_dir(self) -> Path:
        return self.data_dir.parent

    @property
    def logs_dir(self) -> Path:
        assert self.log_dir is not None, "a BenchStack always has a log directory"
        return self.log_dir

    # --- model servers ---------------------------------------------------------------------------------

    async def start_model_server(
        self, name: str, latency: float, module: str = "testkit.scripted_openai", args: Sequence[str] = ()
    ) -> ModelServer:
        """Starts a scripted model server process; it prints its base URL on the first stdout line."""
        if name in self.models:
            return self.models[name]
        log = (self.logs_dir / f"model-{name}.log").open("ab")
        command = [sys.executable, "-m", module, "--port", "0", "--latency", str(latency), *args]
        process = self._spawn_model_server(command, log)
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(
                asyncio.to_thread(process.stdout.readline), timeout=MODEL_SERVER_START_SECONDS
            )
        except TimeoutError:
            self._discard(process, log)
            raise StackError(
                f"model server {name} printed no base URL in {MODEL_SERVER_START_SECONDS:.0f} s"
            ) from None
        base_url = line.decode().strip()
        if not base_url.startswith("http"):
            self._discard(process, log)
            raise StackError(f"model server {name} did not start (see {log.name})")
        server = ModelServer(name, process, base_url, latency, log)
        self.models[name] = server
        return server

    def _spawn_model_server(self, command: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        """Popen returns once the child is forked; the base URL comes on its stdout, its log on stderr."""
        return subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, env=self.environment()
        )

    @staticmethod
    def _discard(process: subprocess.Popen[bytes], log: IO[bytes]) -> None:
        stop_process(process)
        if process.stdout is not None:
            process.stdout.close()
        log.close()

    # --- services ----------------------------------------------------------------------------------------

    def command(self, spec: ServiceSpec) -> list[str]:
        """The service itself, or under py-spy (else pyinstrument) when profiling."""
        if self.profile_dir is None:
            return super().command(spec)
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        self.launches += 1
        stamp = f"{time.strftime('%H%M%S')}-{self.launches}"
        py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if py_spy is not None:
            # py-spy as the parent (attaching to a running pid is not permitted here); SIGINT makes it write.
            out = self.profile_dir / f"{spec.name}-{stamp}.txt"
            flags = [
                "record",
                "-o",
                str(out),
                "-f",
                "raw",
                "--threads",
                "--idle",
                "-r",
                "500",
                "--nonblocking",
            ]
            return [py_spy, *flags, "--", sys.executable, "-m", spec.module]
        out = self.profile_dir / f"{spec.name}-{stamp}.pyinstrument.txt"
        return [sys.executable, "-m", "pyinstrument", "-r", "text", "-o", str(out), "-m", spec.module]

    def stop_signal(self, command: Sequence[str]) -> int:
        # Under py-spy, SIGINT makes the profiler write its output (and end the service it runs).
        return signal.SIGINT if _under_py_spy(command) else signal.SIGTERM

    def stop(self, name: str, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        if name == "agent":
            self.agent_config = None
        return super().stop(name, timeout)

    def stop_services(self) -> None:
        """Stops the three services (callers first, draining together)."""
        self.agent_config = None
        self.stop_all()

    def agent_env(self, model: ModelServer, max_concurrent_turns: int | None) -> dict[str, str]:
        env = {"OPENAI_BASE_URL": model.base_url, "OPENAI_API_KEY": API_KEY, "OPENAI_MODEL": MODEL_NAME}
        if max_concurrent_turns is not None:
            env["MAX_CONCURRENT_TURNS"] = str(max_concurrent_turns)
        return env

    async def ensure_backends(self, kb_dir: Path) -> None:
        """Retrieval and tools SERVING, and the knowledge base ingested once."""
        for name in ("retrieval", "tools"):
            if name not in self.running:
                self.launch(name)
        for name in ("retrieval", "tools"):
            await self.wait_ready(name)
        if not self.ingested:
            await self.ingest(kb_dir)
            self.ingested = True

    async def ensure_agent(self, kb_dir: Path, model: ModelServer, max_concurrent_turns: int | None) -> None:
        """The agent SERVING against `model` with the given concurrency limit (restarted if it differs)."""
        await self.ensure_backends(kb_dir)
        wanted = (model.name, max_concurrent_turns)
        if self.agent_config == wanted and "agent" in self.running:
            return
        self.stop("agent")
        self.launch("agent", self.agent_env(model, max_concurrent_turns))
        await self.wait_ready("agent")
        self.agent_config = wanted

    # --- readings ----------------------------------------------------------------------------------------

    def rss_mb(self, names: Sequence[str] = ("retrieval", "tools", "agent")) -> dict[str, float]:
        return {
            name: rss_bytes(self.running[name].process.pid) / 2**20 for name in names if name in self.running
        }

    def cpu_snapshot(self) -> dict[str, float]:
        """CPU seconds used so far by each service and model server process (model servers as model-<name>)."""
        snapshot = {
            name: cpu_seconds(running.process.pid, include_self=not _under_py_spy(running.command))
            for name, running in self.running.items()
        }
        snapshot.update(
            {f"model-{name}": cpu_seconds(server.process.pid) for name, server in self.models.items()}
        )
        own = psutil.Process().cpu_times()
        snapshot["bench"] = float(own.user + own.system)
        return snapshot

    async def close(self) -> None:
        await asyncio.to_thread(self.stop_services)
        for server in self.models.values():
            stop_process(server.process, MODEL_SERVER_STOP_SECONDS, label=f"model server {server.name}")
            if server.process.stdout is not None:
                server.process.stdout.close()
            server.log.close()
        self.models.clear()
