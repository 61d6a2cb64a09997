"""The container contract without a container: each service started exactly as its image starts it
(`python -m <service>`, listening on 0.0.0.0, DATA_DIR, METRICS_PORT) becomes healthy for the image's
HEALTHCHECK command, serves /metrics when its main() sets observability up, and exits 0 on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, free_port

# service → (listen variable, gRPC service name)
SERVICES = {
    "retrieval": ("RETRIEVAL_ADDR", "support.v1.RetrievalService"),
    "tools": ("TOOLS_ADDR", "support.v1.ToolsService"),
    "agent": ("AGENT_ADDR", "support.v1.AgentService"),
}
START_TIMEOUT_SECONDS = 90.0


@dataclass
class Running:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log: Path


def _healthcheck(port: int, service: str) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command."""
    return subprocess.run(
        [sys.executable, "-m", "service_kit.healthcheck", f"127.0.0.1:{port}", service, "--timeout", "2"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Running]]:
    base = tmp_path_factory.mktemp("entrypoints")
    ports = {name: free_port() for name in SERVICES}
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("OPENAI_", "CHROMA_", "OTEL_"))
    }
    env.update(LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1", REDIS_URL="")
    # What the agent dials (compose and Kubernetes use dns:/// names; loopback here).
    dial = {"RETRIEVAL_ADDR": f"127.0.0.1:{ports['retrieval']}", "TOOLS_ADDR": f"127.0.0.1:{ports['tools']}"}
    running: dict[str, Running] = {}
    try:
        for name, (variable, _service) in SERVICES.items():
            metrics_port = free_port()
            service_env = {**env, **(dial if name == "agent" else {})}
            service_env.update({variable: f"0.0.0.0:{ports[name]}", "DATA_DIR": str(base / name)})
            service_env["METRICS_PORT"] = str(metrics_port)
            log = base / f"{name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", f"{name}_service"],
                    cwd=REPO_ROOT,
                    env=service_env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            running[name] = Running(name, process, ports[name], metrics_port, log)
        yield running
    finally:
        for item in running.values():
            if item.process.poll() is None:
                item.process.kill()
                item.process.wait(timeout=10)


def _wait_healthy(item: Running) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    service = SERVICES[item.name][1]
    while True:
        if item.process.poll() is not None:
            pytest.fail(f"{item.name} exited with {item.process.returncode}: {item.log.read_text()[-2000:]}")
        if _healthcheck(item.port, service).returncode == 0:
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"{item.name} not healthy after {START_TIMEOUT_SECONDS:.0f}s: {item.log.read_text()[-2000:]}"
            )
        time.sleep(0.2)


def test_each_service_becomes_healthy_for_the_image_healthcheck(services: dict[str, Running]) -> None:
    for item in services.values():
        _wait_healthy(item)
        result = _healthcheck(item.port, SERVICES[item.name][1])
        assert result.returncode == 0
        assert "SERVING" in result.stdout
        # The wrong service name is not healthy: the check really asks for the service.
        assert _healthcheck(item.port, "support.v1.NoSuchService").returncode == 1


def test_agent_serves_metrics_on_metrics_port(services: dict[str, Running]) -> None:
    agent = services["agent"]
    _wait_healthy(agent)
    _healthcheck(agent.port, SERVICES["agent"][1])  # one more counted RPC
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=5) as response:
        body = response.read().decode()
    assert 'grpc_service="grpc.health.v1.Health"' in body
    assert "# TYPE support_model_call_seconds histogram" in body


def test_sigterm_stops_each_service_cleanly(services: dict[str, Running]) -> None:
    """docker stop / a pod deletion sends SIGTERM to the exec-form entrypoint: drain, exit 0."""
    for item in services.values():
        _wait_healthy(item)
    for name in ("agent", "tools", "retrieval"):  # callers first, like a compose shutdown
        services[name].process.send_signal(signal.SIGTERM)
        code = services[name].process.wait(timeout=30)
        assert code == 0, f"{name} exited {code}: {services[name].log.read_text()[-2000:]}"
