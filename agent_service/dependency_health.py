"""Keeps the agent's health status true: NOT_SERVING while a required dependency is down, SERVING after.

Only the agent's own service name changes (what readiness probes check), so load balancers route new turns to
replicas that can act, while "" stays SERVING for liveness: restarting the agent would not bring a dependency
back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

logger = logging.getLogger(__name__)


class DependencyWatcher:
    """Polls `grpc.health.v1` of each required dependency and mirrors the verdict on `service_name`."""

    def __init__(
        self,
        health_servicer: health.aio.HealthServicer,
        service_name: str,
        dependencies: Mapping[str, tuple[grpc.aio.Channel, str]],
        interval_seconds: float,
        timeout_seconds: float = 1.0,
    ) -> None:
        self._health = health_servicer
        self._service_name = service_name
        self._dependencies = dict(dependencies)
        self._interval = interval_seconds
        self._timeout = timeout_seconds
        self._down: frozenset[str] = frozenset()
        self._task: asyncio.Task[None] | None = None

    @property
    def down(self) -> frozenset[str]:
        return self._down

    def start(self) -> None:
        if self._dependencies and self._interval > 0:
            self._task = asyncio.create_task(self._run(), name="dependency-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def check_once(self) -> frozenset[str]:
        """Checks every dependency now; updates the health status if the verdict changed."""
        results = await asyncio.gather(
            *(self._is_serving(channel, service) for channel, service in self._dependencies.values())
        )
        down = frozenset(name for name, ok in zip(self._dependencies, results, strict=True) if not ok)
        if down != self._down:
            status = (
                health_pb2.HealthCheckResponse.NOT_SERVING if down else health_pb2.HealthCheckResponse.SERVING
            )
            await self._health.set(self._service_name, status)
            if down:
                logger.warning(
                    "required dependency down: NOT_SERVING", extra={"dependencies_down": sorted(down)}
                )
            else:
                logger.info("required dependencies back: SERVING")
            self._down = down
        return down

    async def _is_serving(self, channel: grpc.aio.Channel, service: str) -> bool:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=self._timeout
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def _run(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:  # the watcher must outlive any surprise; the next round retries
                logger.exception("dependency check failed")
            await asyncio.sleep(self._interval)
