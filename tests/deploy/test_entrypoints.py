"""The container contract without a container: each service started exactly as its image starts it
(`python -m <service>`, listening on 0.0.0.0, DATA_DIR, METRICS_PORT) becomes healthy for the image's
HEALTHCHECK command, serves /metrics when its main() sets observability up, and exits 0 on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack import REPO_ROOT, SERVICES, ProcessStack, free_port, isolated_environ

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

START_TIMEOUT_SECONDS = 90.0
ROLE_TOKENS = {
    f"AUTH_TOKENS_{role.upper()}": f"{role}-entrypoint-test-token-0123456789"
    for role in ("backend", "staff", "kb_admin", "service")
}


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
    stack = ProcessStack(
        base,
        environ=isolated_environ(),
        # Authentication is always on: role tokens the way compose/Kubernetes inject them (AUTH_TOKENS_<ROLE>).
        env={"LOG_LEVEL": "WARNING", "REDIS_URL": "", **ROLE_TOKENS},
        addrs={name: f"0.0.0.0:{port}" for name, port in ports.items()},
        log_dir=base,
    )
    # What the agent dials (compose and Kubernetes use dns:/// names; loopback here).
    dial = {SERVICES[name].addr_var: f"127.0.0.1:{ports[name]}" for name in ("retrieval", "tools")}
    running: dict[str, Running] = {}
    try:
        for name in SERVICES:
            metrics_port = free_port()
            service_env = {"DATA_DIR": str(base / name), "METRICS_PORT": str(metrics_port)}
            if name == "agent":
                service_env.update(dial)
            process = stack.launch(name, service_env).process
            log = stack.log_path(name)
            assert log is not None
            running[name] = Running(name, process, ports[name], metrics_port, log)
        yield running
    finally:
        for name in running:
            stack.kill(name)


def _wait_healthy(item: Running) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    service = SERVICES[item.name].grpc_service
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
        result = _healthcheck(item.port, SERVICES[item.name].grpc_service)
        assert result.returncode == 0
        assert "SERVING" in result.stdout
        # The wrong service name is not healthy: the check really asks for the service.
        assert _healthcheck(item.port, "support.v1.NoSuchService").returncode == 1


def test_agent_serves_metrics_on_metrics_port(services: dict[str, Running]) -> None:
    agent = services["agent"]
    _wait_healthy(agent)
    _healthcheck(agent.port, SERVICES["agent"].grpc_service)  # one more counted RPC
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
