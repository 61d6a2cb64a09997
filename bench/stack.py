"""The processes a benchmark run needs, all on loopback: scripted model servers and the three services.

Every process writes its output to a log file in the run directory. Services are (re)started with the
environment a scenario asks for; the agent is restarted whenever its model server or concurrency limit changes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 15.0
CUSTOMER_ID = "cust-001"
ORDER_ID = "ORD-12345"
API_KEY = "bench-not-a-secret"
MODEL_NAME = "bench-scripted"
# Stripped from the inherited environment so a developer's real keys or stores never reach the services.
_FOREIGN_PREFIXES = (
    "OPENAI_",
    "CHROMA_",
    "REDIS_",
    "AGENT_",
    "RETRIEVAL_",
    "TOOLS_",
    "TOOL_",
    "MAX_CONCURRENT",
)


class BenchError(RuntimeError):
    """A process of the benchmark stack could not be started or did not become ready."""


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    addr_var: str
    grpc_service: str


SERVICES: dict[str, ServiceSpec] = {
    "retrieval": ServiceSpec(
        "retrieval", "retrieval_service", "RETRIEVAL_ADDR", "support.v1.RetrievalService"
    ),
    "tools": ServiceSpec("tools", "tools_service", "TOOLS_ADDR", "support.v1.ToolsService"),
    "agent": ServiceSpec("agent", "agent_service", "AGENT_ADDR", "support.v1.AgentService"),
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def spawn(
    command: Sequence[str],
    cwd: Path,
    stdin: int | None = None,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = subprocess.DEVNULL,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Starts a process (non-blocking: Popen returns once the child is forked)."""
    return subprocess.Popen(list(command), cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr, env=env)


def _terminate(
    process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_SECONDS, signum: int = signal.SIGTERM
) -> int:
    if process.poll() is None:
        process.send_signal(signum)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


async def check_serving(addr: str, service: str, rpc_seconds: float = 0.5) -> bool:
    # A fresh channel per probe: a reused channel would sit in reconnect back-off (1 s and up) while the
    # server is not yet listening, which would distort start-up timings.
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=rpc_seconds)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def wait_serving(
    addr: str,
    service: str,
    process: subprocess.Popen[bytes],
    within_seconds: float = START_TIMEOUT_SECONDS,
    poll_seconds: float = 0.01,
) -> float:
    """Polls grpc.health.v1 until `service` is SERVING; returns time.monotonic() at that moment."""
    deadline = time.monotonic() + within_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{service} exited with status {process.returncode} during start-up")
        if await check_serving(addr, service):
            return time.monotonic()
        await asyncio.sleep(poll_seconds)
    raise BenchError(f"{service} at {addr} not SERVING after {within_seconds:.0f}s")


@dataclass
class ModelServer:
    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    latency: float
    log: IO[bytes]


@dataclass
class RunningService:
    spec: ServiceSpec
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    log: IO[bytes]
    under_py_spy: bool = False


@dataclass
class BenchStack:
    """Owns every process it starts; `close()` stops them all (agent first)."""

    run_dir: Path
    log_level: str = "INFO"
    extra_env: Mapping[str, str] = field(default_factory=dict)
    profile_dir: Path | None = None
    addrs: dict[str, str] = field(default_factory=dict)
    services: dict[str, RunningService] = field(default_factory=dict)
    models: dict[str, ModelServer] = field(default_factory=dict)
    ingested: bool = False
    launches: int = 0
    # The model server name and MAX_CONCURRENT_TURNS the running agent was started with.
    agent_config: tuple[str, int | None] | None = None

    def __post_init__(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        for spec in SERVICES.values():
            self.addrs.setdefault(spec.name, f"127.0.0.1:{free_port()}")

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    def base_env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith(_FOREIGN_PREFIXES)}
        env.update(
            RETRIEVAL_ADDR=self.addrs["retrieval"],
            TOOLS_ADDR=self.addrs["tools"],
            AGENT_ADDR=self.addrs["agent"],
            DATA_DIR=str(self.data_dir),
            LOG_LEVEL=self.log_level,
            PYTHONUNBUFFERED="1",
            # One customer drives every turn; its per-minute tool budget must not cap a throughput run.
            TOOL_LIMIT_PER_CUSTOMER_PER_MINUTE="100000000",
        )
        env.update(self.extra_env)
        return env

    # --- model servers ---------------------------------------------------------------------------------

    async def start_model_server(
        self, name: str, latency: float, module: str = "testkit.scripted_openai", args: Sequence[str] = ()
    ) -> ModelServer:
        """Starts a scripted model server process; it prints its base URL on the first stdout line."""
        if name in self.models:
            return self.models[name]
        log = (self.logs_dir / f"model-{name}.log").open("ab")
        command = [sys.executable, "-m", module, "--port", "0", "--latency", str(latency), *args]
        process = spawn(command, REPO_ROOT, stdout=subprocess.PIPE, stderr=log, env=self.base_env())
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout=30.0)
        except TimeoutError:
            _terminate(process)
            log.close()
            raise BenchError(f"model server {name} printed no base URL in 30 s") from None
        base_url = line.decode().strip()
        if not base_url.startswith("http"):
            _terminate(process)
            log.close()
            raise BenchError(f"model server {name} did not start (see {log.name})")
        server = ModelServer(name, process, base_url, latency, log)
        self.models[name] = server
        return server

    # --- services ----------------------------------------------------------------------------------------

    def _command(self, spec: ServiceSpec) -> list[str]:
        if self.profile_dir is None:
            return [sys.executable, "-m", spec.module]
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

    def launch(self, name: str, env_overrides: Mapping[str, str] | None = None) -> RunningService:
        """Starts a service process without waiting for it."""
        if name in self.services:
            raise BenchError(f"{name} is already running")
        spec = SERVICES[name]
        env = self.base_env()
        env.update(env_overrides or {})
        log = (self.logs_dir / f"{name}.log").open("ab")
        command = self._command(spec)
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        running = RunningService(spec, process, env, log, under_py_spy=Path(command[0]).name == "py-spy")
        self.services[name] = running
        return running

    async def wait_ready(self, name: str, within_seconds: float = START_TIMEOUT_SECONDS) -> float:
        running = self.services[name]
        try:
            return await wait_serving(
                self.addrs[name], running.spec.grpc_service, running.process, within_seconds
            )
        except BenchError as error:
            raise BenchError(f"{error}; last log lines:\n{self.log_tail(name)}") from None

    def stop(self, name: str) -> int | None:
        running = self.services.pop(name, None)
        if running is None:
            return None
        # Under py-spy, SIGINT makes the profiler write its output (and end the service it runs).
        profiled = running.under_py_spy
        code = _terminate(running.process, signum=signal.SIGINT if profiled else signal.SIGTERM)
        running.log.close()
        if name == "agent":
            self.agent_config = None
        return code

    def stop_services(self) -> None:
        for name in ("agent", "tools", "retrieval"):
            self.stop(name)

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.logs_dir / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def agent_env(self, model: ModelServer, max_concurrent_turns: int | None) -> dict[str, str]:
        env = {"OPENAI_BASE_URL": model.base_url, "OPENAI_API_KEY": API_KEY, "OPENAI_MODEL": MODEL_NAME}
        if max_concurrent_turns is not None:
            env["MAX_CONCURRENT_TURNS"] = str(max_concurrent_turns)
        return env

    async def ensure_backends(self, kb_dir: Path) -> None:
        """Retrieval and tools SERVING, and the knowledge base ingested once."""
        for name in ("retrieval", "tools"):
            if name not in self.services:
                self.launch(name)
        for name in ("retrieval", "tools"):
            await self.wait_ready(name)
        if not self.ingested:
            await self.ingest(kb_dir)

    async def ingest(self, kb_dir: Path) -> float:
        """Ingests `kb_dir` with the support-ingest console script; returns the seconds it took."""
        ingest = Path(sys.executable).parent / "support-ingest"
        command = [str(ingest), "--addr", self.addrs["retrieval"], str(kb_dir)]
        started = time.monotonic()
        log = self.logs_dir / "ingest.log"
        with log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                *command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, env=self.base_env()
            )
            code = await process.wait()
        if code != 0:
            raise BenchError(f"support-ingest exited {code}; see {log}")
        self.ingested = True
        return time.monotonic() - started

    async def ensure_agent(self, kb_dir: Path, model: ModelServer, max_concurrent_turns: int | None) -> None:
        """The agent SERVING against `model` with the given concurrency limit (restarted if it differs)."""
        await self.ensure_backends(kb_dir)
        wanted = (model.name, max_concurrent_turns)
        if self.agent_config == wanted and "agent" in self.services:
            return
        self.stop("agent")
        self.launch("agent", self.agent_env(model, max_concurrent_turns))
        await self.wait_ready("agent")
        self.agent_config = wanted

    def rss_mb(self, names: Sequence[str] = ("retrieval", "tools", "agent")) -> dict[str, float]:
        return {
            name: rss_bytes(self.services[name].process.pid) / 2**20
            for name in names
            if name in self.services
        }

    def cpu_snapshot(self) -> dict[str, float]:
        """CPU seconds used so far by each service and model server process (model servers as model-<name>)."""
        snapshot = {
            name: cpu_seconds(running.process.pid, include_self=not running.under_py_spy)
            for name, running in self.services.items()
        }
        snapshot.update(
            {f"model-{name}": cpu_seconds(server.process.pid) for name, server in self.models.items()}
        )
        own = psutil.Process().cpu_times()
        snapshot["bench"] = float(own.user + own.system)
        return snapshot

    def check_alive(self) -> None:
        for name, running in self.services.items():
            if running.process.poll() is not None:
                raise BenchError(
                    f"{name} died with status {running.process.returncode}; last log lines:\n{self.log_tail(name)}"
                )

    async def close(self) -> None:
        self.stop_services()
        for server in self.models.values():
            _terminate(server.process, timeout=5.0)
            if server.process.stdout is not None:
                server.process.stdout.close()
            server.log.close()
        self.models.clear()


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
