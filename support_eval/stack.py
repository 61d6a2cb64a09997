"""A private stack for one eval run: the three services as subprocesses on free loopback ports.

Each run gets a fresh temporary DATA_DIR (so a fresh Chroma collection, conversation store, order and ticket
stores). The services inherit the caller's environment, so OPENAI_* and the agent's model settings pass
through; their logs go to files in the run folder and the tail is shown if one fails to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 15.0
LOG_TAIL_CHARS = 3000


class StackError(RuntimeError):
    """A service could not be started or did not become SERVING."""


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    addr_var: str
    grpc_service: str


RETRIEVAL = ServiceSpec("retrieval", "retrieval_service", "RETRIEVAL_ADDR", "support.v1.RetrievalService")
TOOLS = ServiceSpec("tools", "tools_service", "TOOLS_ADDR", "support.v1.ToolsService")
AGENT = ServiceSpec("agent", "agent_service", "AGENT_ADDR", "support.v1.AgentService")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class _Running:
    spec: ServiceSpec
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


@dataclass
class EvalStack:
    """`async with EvalStack() as stack:` starts retrieval and tools; `start_agent()` after ingesting."""

    extra_env: Mapping[str, str] = field(default_factory=dict)
    start_timeout: float = START_TIMEOUT_SECONDS
    keep_dir: bool = False
    workdir: Path = field(init=False)
    env: dict[str, str] = field(init=False)
    _running: list[_Running] = field(init=False, default_factory=list)

    @property
    def retrieval_addr(self) -> str:
        return self.env["RETRIEVAL_ADDR"]

    @property
    def tools_addr(self) -> str:
        return self.env["TOOLS_ADDR"]

    @property
    def agent_addr(self) -> str:
        return self.env["AGENT_ADDR"]

    async def __aenter__(self) -> EvalStack:
        self.workdir = Path(tempfile.mkdtemp(prefix="support-eval-"))
        env = dict(os.environ)
        env.update(self.extra_env)
        for spec in (RETRIEVAL, TOOLS, AGENT):
            env[spec.addr_var] = f"127.0.0.1:{free_port()}"
        env["DATA_DIR"] = str(self.workdir / "data")
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.env = env
        (self.workdir / "data").mkdir()
        try:
            for spec in (RETRIEVAL, TOOLS):
                self._launch(spec)
            await asyncio.gather(*(self._wait_serving(running) for running in self._running))
        except BaseException:
            await self.stop()
            raise
        return self

    async def start_agent(self) -> None:
        try:
            running = self._launch(AGENT)
            await self._wait_serving(running)
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def _launch(self, spec: ServiceSpec) -> _Running:
        log_path = self.workdir / f"{spec.name}.log"
        log_file = log_path.open("wb")
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", spec.module],
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        except OSError as error:
            log_file.close()
            raise StackError(f"cannot start {spec.name} service: {error}") from error
        running = _Running(spec, process, log_path, log_file)
        self._running.append(running)
        return running

    async def _wait_serving(self, running: _Running) -> None:
        addr = self.env[running.spec.addr_var]
        deadline = time.monotonic() + self.start_timeout
        async with grpc.aio.insecure_channel(addr) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if running.process.poll() is not None:
                    raise StackError(
                        f"{running.spec.name} service exited with status {running.process.returncode} "
                        f"during start-up; log tail:\n{self._tail(running)}"
                    )
                try:
                    reply = await stub.Check(
                        health_pb2.HealthCheckRequest(service=running.spec.grpc_service), timeout=1.0
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
        raise StackError(
            f"{running.spec.name} service at {addr} not SERVING after {self.start_timeout:.0f}s; "
            f"log tail:\n{self._tail(running)}"
        )

    def _tail(self, running: _Running) -> str:
        running.log_file.flush()
        try:
            text = running.log_path.read_text("utf-8", "replace")
        except OSError:
            return "(no log)"
        return text[-LOG_TAIL_CHARS:] or "(empty log)"

    async def stop(self) -> None:
        """SIGTERM in reverse start order (agent first), wait, SIGKILL stragglers, remove the run folder."""
        running = list(reversed(self._running))
        self._running.clear()
        for item in running:
            if item.process.poll() is None:
                item.process.send_signal(signal.SIGTERM)
        for item in running:
            try:
                await asyncio.to_thread(item.process.wait, STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                item.process.kill()
                await asyncio.to_thread(item.process.wait)
            with contextlib.suppress(OSError):
                item.log_file.close()
        if not self.keep_dir and hasattr(self, "workdir"):
            shutil.rmtree(self.workdir, ignore_errors=True)
