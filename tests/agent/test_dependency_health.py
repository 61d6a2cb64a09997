"""The agent's readiness follows its required dependencies (DependencyWatcher), against real gRPC health."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2

from agent_service.dependency_health import DependencyWatcher
from service_kit.grpc_server import bind, new_server, set_status

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _status(servicer: health.aio.HealthServicer, service: str) -> int:
    reply = await servicer.Check(health_pb2.HealthCheckRequest(service=service), None)
    return int(reply.status)


async def test_not_serving_while_a_dependency_is_down_and_serving_after() -> None:
    dependency, dependency_health = new_server(["support.v1.ToolsService"])
    port = bind(dependency, "127.0.0.1:0")
    await dependency.start()
    await set_status(dependency_health, ["support.v1.ToolsService"], serving=True)
    agent_health = health.aio.HealthServicer()
    await agent_health.set("support.v1.AgentService", SERVING)
    await agent_health.set("", SERVING)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        watcher = DependencyWatcher(
            agent_health,
            "support.v1.AgentService",
            {"tools": (channel, "support.v1.ToolsService")},
            interval_seconds=0.05,
            timeout_seconds=0.5,
        )
        assert await watcher.check_once() == frozenset()
        assert await _status(agent_health, "support.v1.AgentService") == SERVING

        await set_status(dependency_health, ["support.v1.ToolsService"], serving=False)
        assert await watcher.check_once() == {"tools"}
        assert await _status(agent_health, "support.v1.AgentService") == NOT_SERVING
        assert await _status(agent_health, "") == SERVING  # liveness untouched

        await set_status(dependency_health, ["support.v1.ToolsService"], serving=True)
        assert await watcher.check_once() == frozenset()
        assert await _status(agent_health, "support.v1.AgentService") == SERVING

        await dependency.stop(0)
        assert await watcher.check_once() == {"tools"}
        assert await _status(agent_health, "support.v1.AgentService") == NOT_SERVING
