"""Ports and grpc.health.v1 probes for starting services."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

START_TIMEOUT_SECONDS = 120.0
UNREACHABLE = -1


class StackError(RuntimeError):
    """A service could not be started, did not become SERVING, or died."""


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (for a process that needs its port up front)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def health_status(
    addr: str, service: str = "", metadata: Sequence[tuple[str, str]] = (), rpc_seconds: float = 2.0
) -> int:
    """The grpc.health.v1 status of `service` at `addr` (SERVING is 1); UNREACHABLE (-1) when the check fails.

    A fresh channel per probe: a reused one sits in reconnect back-off (1 s and up) while nothing listens yet.
    """
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=rpc_seconds, metadata=tuple(metadata)
            )
        except grpc.aio.AioRpcError:
            return UNREACHABLE
        return int(reply.status)


async def wait_serving(
    addr: str,
    service: str,
    process: subprocess.Popen[bytes] | None = None,
    within_seconds: float = START_TIMEOUT_SECONDS,
    poll_seconds: float = 0.05,
    label: str | None = None,
) -> float:
    """Polls until `service` at `addr` is SERVING; returns time.monotonic() at that moment. Fails at once
    when `process` exits first, else after `within_seconds`. `label` names the service in the error."""
    label = label or service
    deadline = time.monotonic() + within_seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise StackError(f"{label} exited with status {process.returncode} during start-up")
        if await health_status(addr, service, rpc_seconds=0.5) == health_pb2.HealthCheckResponse.SERVING:
            return time.monotonic()
        await asyncio.sleep(poll_seconds)
    raise StackError(f"{label} at {addr} not SERVING after {within_seconds:.0f}s")
