"""`make run`: the three services as local processes on embedded defaults, in the foreground.

Starts retrieval and tools, waits until both report SERVING, ingests the sample knowledge base when the
collection is empty, starts the agent, prints where everything listens, then waits. Ctrl-C or SIGTERM stops
the agent first, then the others, each draining in-flight calls. If one service dies, the rest are stopped and
the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADDRS = {
    "RETRIEVAL_ADDR": "127.0.0.1:50052",
    "TOOLS_ADDR": "127.0.0.1:50053",
    "AGENT_ADDR": "127.0.0.1:50051",
}
START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 15.0


@dataclass
class Service:
    name: str
    module: str
    addr_var: str
    grpc_service: str
    process: subprocess.Popen[bytes] | None = None


SERVICES = (
    Service("retrieval", "retrieval_service", "RETRIEVAL_ADDR", "support.v1.RetrievalService"),
    Service("tools", "tools_service", "TOOLS_ADDR", "support.v1.ToolsService"),
    Service("agent", "agent_service", "AGENT_ADDR", "support.v1.AgentService"),
)


class StackError(RuntimeError):
    pass


def _say(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


def wait_serving(addr: str, service: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Polls grpc.health.v1 until `service` is SERVING; fails early if the process exits."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise StackError(f"{service} exited with status {process.returncode} during start-up")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise StackError(f"{service} at {addr} not SERVING after {timeout:.0f}s")


def stack_environment(base: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    for var, default in DEFAULT_ADDRS.items():
        env.setdefault(var, default)
    env.setdefault("DATA_DIR", str(REPO_ROOT / "data"))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _start(service: Service, env: Mapping[str, str]) -> None:
    service.process = subprocess.Popen([sys.executable, "-m", service.module], env=dict(env), cwd=REPO_ROOT)


def _ingest_if_empty(kb_dir: Path, env: Mapping[str, str]) -> None:
    ingest = Path(sys.executable).parent / "support-ingest"
    command = [str(ingest), "--if-empty", "--quiet", "--addr", env["RETRIEVAL_ADDR"], str(kb_dir)]
    result = subprocess.run(command, env=dict(env), cwd=REPO_ROOT, check=False)
    if result.returncode != 0:
        raise StackError(f"ingesting {kb_dir} failed (exit {result.returncode})")


def stop_all(services: Sequence[Service]) -> int:
    """SIGTERM in reverse start order (agent first), wait, SIGKILL stragglers. Returns the worst exit status."""
    worst = 0
    for service in reversed(services):
        process = service.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for service in reversed(services):
        process = service.process
        if process is None:
            continue
        try:
            code = process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            _say(f"{service.name} did not stop in {STOP_TIMEOUT_SECONDS:.0f}s; killing it")
            process.kill()
            code = process.wait()
        # -SIGINT/-SIGTERM only if the service died of the signal instead of handling it.
        worst = max(worst, abs(code))
    return worst


def run(kb_dir: Path, ingest: bool) -> int:
    env = stack_environment(os.environ)
    Path(env["DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    started: list[Service] = []
    try:
        for service in SERVICES[:2]:
            _start(service, env)
            started.append(service)
        for service in SERVICES[:2]:
            assert service.process is not None
            wait_serving(env[service.addr_var], service.grpc_service, service.process, START_TIMEOUT_SECONDS)
        if ingest:
            _ingest_if_empty(kb_dir, env)
        agent = SERVICES[2]
        _start(agent, env)
        started.append(agent)
        assert agent.process is not None
        wait_serving(env[agent.addr_var], agent.grpc_service, agent.process, START_TIMEOUT_SECONDS)
    except StackError as error:
        _say(f"start-up failed: {error}")
        stop_all(started)
        return 1
    for service in SERVICES:
        _say(f"{service.name:<9} {service.grpc_service:<28} listening on {env[service.addr_var]}")
    _say(f"data in {env['DATA_DIR']}; ready. Ctrl-C stops all three.")
    while not stopping:
        for service in started:
            assert service.process is not None
            if service.process.poll() is not None:
                _say(f"{service.name} exited unexpectedly with status {service.process.returncode}")
                stop_all(started)
                return 1
        time.sleep(0.2)
    _say("stopping")
    code = stop_all(started)
    _say("stopped" if code == 0 else f"stopped with status {code}")
    return code


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the three support-agent services locally.")
    parser.add_argument(
        "--kb", type=Path, default=REPO_ROOT / "kb", help="knowledge base folder to ingest when empty"
    )
    parser.add_argument("--no-ingest", action="store_true", help="do not ingest the knowledge base")
    args = parser.parse_args(argv)
    sys.exit(run(args.kb, ingest=not args.no_ingest))


if __name__ == "__main__":
    main()
