"""`python -m service_kit.healthcheck`, the probe the images and docker-compose use, against a real server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpc_health.v1 import health

from service_kit import healthcheck
from service_kit.grpc_server import bind, new_server, set_status

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE = "support.v1.RetrievalService"


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, health.aio.HealthServicer]]:
    grpc_server, health_servicer = new_server([SERVICE])
    port = bind(grpc_server, "127.0.0.1:0")
    await grpc_server.start()
    yield port, health_servicer
    await grpc_server.stop(None)


def test_probe_target_maps_wildcards_to_loopback() -> None:
    assert healthcheck.probe_target("0.0.0.0:50052") == "127.0.0.1:50052"
    assert healthcheck.probe_target("[::]:50052") == "[::1]:50052"
    assert healthcheck.probe_target(":50052") == "127.0.0.1:50052"
    assert healthcheck.probe_target("retrieval:50052") == "retrieval:50052"
    assert healthcheck.probe_target("dns:///retrieval:50052") == "dns:///retrieval:50052"
    with pytest.raises(ValueError, match="no port"):
        healthcheck.probe_target("localhost")


async def test_check_follows_the_serving_status(server: tuple[int, health.aio.HealthServicer]) -> None:
    port, health_servicer = server
    addr = f"0.0.0.0:{port}"
    not_registered = await asyncio.to_thread(healthcheck.check, addr, SERVICE, 2.0)
    assert not_registered == (False, f"127.0.0.1:{port} {SERVICE}: NOT_FOUND")

    await set_status(health_servicer, [SERVICE], serving=False)
    serving, message = await asyncio.to_thread(healthcheck.check, addr, SERVICE, 2.0)
    assert (serving, message) == (False, f"127.0.0.1:{port} {SERVICE}: NOT_SERVING")

    await set_status(health_servicer, [SERVICE], serving=True)
    assert await asyncio.to_thread(healthcheck.check, addr, SERVICE, 2.0) == (
        True,
        f"127.0.0.1:{port} {SERVICE}: SERVING",
    )
    assert (await asyncio.to_thread(healthcheck.check, addr, "", 2.0))[0] is True
    missing = await asyncio.to_thread(healthcheck.check, addr, "no.such.Service", 2.0)
    assert missing == (False, f"127.0.0.1:{port} no.such.Service: NOT_FOUND")

    await health_servicer.enter_graceful_shutdown()
    assert (await asyncio.to_thread(healthcheck.check, addr, SERVICE, 2.0))[0] is False


def test_nothing_listening_fails_fast(unused_port: int) -> None:
    serving, message = healthcheck.check(f"127.0.0.1:{unused_port}", SERVICE, timeout=1.0)
    assert serving is False
    assert message.endswith("UNAVAILABLE") or message.endswith("DEADLINE_EXCEEDED")


async def test_module_exit_status(server: tuple[int, health.aio.HealthServicer]) -> None:
    port, health_servicer = server
    await set_status(health_servicer, [SERVICE], serving=True)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service_kit.healthcheck", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    ok = await asyncio.to_thread(run, f"127.0.0.1:{port}", SERVICE)
    assert ok.returncode == 0, ok.stderr
    assert "SERVING" in ok.stdout
    missing = await asyncio.to_thread(run, f"127.0.0.1:{port}", "no.such.Service", "--timeout", "2")
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr
    bad = await asyncio.to_thread(run, "no-port-here")
    assert bad.returncode == 2
