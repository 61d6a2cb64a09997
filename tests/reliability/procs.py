"""The three services as real processes (`python -m <service>`) on loopback ports, each process's stdout (JSON
logs) and stderr in its own file: for crash recovery (kill -9), PII scans of real logs, and the soak."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service_kit import auth
from support.v1 import retrieval_pb2, retrieval_pb2_grpc
from tests.conftest import free_port
from tests.reliability.inproc import REPO_ROOT, kb_documents

SERVICES = {
    "retrieval": ("retrieval_service", "RETRIEVAL_ADDR", "support.v1.RetrievalService"),
    "tools": ("tools_service", "TOOLS_ADDR", "support.v1.ToolsService"),
    "agent": ("agent_service", "AGENT_ADDR", "support.v1.AgentService"),
}


class StackProcessError(RuntimeError):
    pass


@dataclass
class ProcStack:
    data_dir: Path
    extra_env: Mapping[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    addrs: dict[str, str] = field(default_factory=dict)
    starts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        for name in SERVICES:
            self.addrs[name] = f"127.0.0.1:{free_port()}"

    @property
    def env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("OPENAI_", "CHROMA_", "SERVICE_AUTH_", "OTEL_"))
        }
        env.update(
            RETRIEVAL_ADDR=self.addrs["retrieval"],
            TOOLS_ADDR=self.addrs["tools"],
            AGENT_ADDR=self.addrs["agent"],
            DATA_DIR=str(self.data_dir),
            PYTHONUNBUFFERED="1",
            LOG_LEVEL="INFO",
        )
        env.update(self.extra_env)
        return env

    def log_paths(self, name: str | None = None) -> list[Path]:
        pattern = f"{name}-*" if name else "*"
        return sorted((self.data_dir / "logs").glob(pattern))

    def start(self, name: str, wait: bool = True, timeout: float = 120.0) -> None:
        module, _, _ = SERVICES[name]
        run = self.starts.get(name, 0) + 1
        self.starts[name] = run
        logs = self.data_dir / "logs"
        stdout = (logs / f"{name}-{run}.stdout.jsonl").open("wb")
        stderr = (logs / f"{name}-{run}.stderr.log").open("wb")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", module], cwd=REPO_ROOT, env=self.env, stdout=stdout, stderr=stderr
        )
        stdout.close()
        stderr.close()
        if wait:
            self.wait_serving(name, timeout)

    def wait_serving(self, name: str, timeout: float = 120.0) -> None:
        _, _, service = SERVICES[name]
        process = self.processes[name]
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.addrs[name]) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise StackProcessError(
                        f"{name} exited with {process.returncode}: {self.stderr_tail(name)}"
                    )
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        raise StackProcessError(f"{name} not SERVING after {timeout}s: {self.stderr_tail(name)}")

    def stderr_tail(self, name: str) -> str:
        run = self.starts.get(name, 0)
        path = self.data_dir / "logs" / f"{name}-{run}.stderr.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def start_all(self, ingest: bool = True) -> None:
        self.start("retrieval", wait=False)
        self.start("tools", wait=False)
        self.wait_serving("retrieval")
        self.wait_serving("tools")
        if ingest:
            self.ingest_kb()
        self.start("agent")

    def ingest_kb(self) -> None:
        with grpc.insecure_channel(self.addrs["retrieval"]) as raw:
            channel = auth.intercept_sync_channel(raw, auth.AuthConfig.from_env(self.env))
            stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)  # type: ignore[no-untyped-call]
            stub.IngestDocuments(retrieval_pb2.IngestDocumentsRequest(documents=kb_documents()), timeout=300)

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def kill(self, name: str) -> None:
        """kill -9: no handler runs, nothing is flushed or drained."""
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self, name: str, timeout: float = 20.0) -> int:
        process = self.processes.get(name)
        if process is None or process.poll() is not None:
            return 0 if process is None else process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return -9

    def stop_all(self) -> dict[str, int]:
        return {name: self.stop(name) for name in ("agent", "tools", "retrieval") if name in self.processes}

    def rss_kib(self, name: str) -> int:
        """Resident set size of the service process (VmRSS, KiB)."""
        status = Path(f"/proc/{self.pid(name)}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise StackProcessError(f"no VmRSS for {name}")
