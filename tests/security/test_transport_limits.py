"""Bounded under abuse, transport side, against real gRPC servers and channels:

- every service's Config reads GRPC_MAX_MESSAGE_BYTES / GRPC_MAX_CONCURRENT_RPCS; a real tools server refuses a
  request above the size limit and RPCs above the in-flight limit with RESOURCE_EXHAUSTED;
- the agent's outbound channels (`open_channel`) bound what they send and what they accept;
- a flood of made-up method names, with and without credentials, adds no Prometheus series: the metric
  families' label sets stay the same however many names a caller invents.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY, generate_latest

from agent_service.adapters.channels import open_channel
from service_kit import auth
from service_kit.grpc_server import (
    DEFAULT_MAX_CONCURRENT_RPCS,
    MAX_MESSAGE_BYTES,
    ServerLimits,
    bind,
    new_server,
    set_status,
)
from support.v1 import tools_pb2, tools_pb2_grpc
from tools_service.config import Config as ToolsConfig
from tools_service.server import StartedServer as ToolsStarted
from tools_service.server import start_server as start_tools_server

SERVICE_TOKEN = "service-token-for-limit-tests-0123"
BACKEND_TOKEN = "backend-token-for-limit-tests-4567"
CREDENTIALS = {
    "AUTH_TOKENS_SERVICE": SERVICE_TOKEN,
    "AUTH_TOKENS_BACKEND": BACKEND_TOKEN,
    "AUTH_TOKENS_STAFF": "staff-token-for-limit-tests-89012",
    "AUTH_TOKENS_KB_ADMIN": "kbadmin-token-for-limit-tests-345",
}
AS_SERVICE = (("authorization", f"Bearer {SERVICE_TOKEN}"), ("x-customer-id", "cust-001"))
MADE_UP = "madeup"


def tools_config(tmp_path: Path, **environ: str) -> ToolsConfig:
    env = {"TOOLS_ADDR": "127.0.0.1:0", "DATA_DIR": str(tmp_path / "tools"), **CREDENTIALS, **environ}
    return ToolsConfig.from_env(env)


@pytest.fixture
async def small_tools(tmp_path: Path) -> AsyncIterator[ToolsStarted]:
    """The real tools service, configured like a deployment: 4 KiB messages, 2 RPCs in flight."""
    config = tools_config(tmp_path, GRPC_MAX_MESSAGE_BYTES="4096", GRPC_MAX_CONCURRENT_RPCS="2")
    started = await start_tools_server(config)
    yield started
    await started.stop(None)


@pytest.fixture
async def tools(tmp_path: Path) -> AsyncIterator[ToolsStarted]:
    started = await start_tools_server(tools_config(tmp_path))
    yield started
    await started.stop(None)


def test_every_service_config_reads_the_transport_limits(tmp_path: Path) -> None:
    from agent_service.config import Config as AgentConfig
    from retrieval_service.config import Config as RetrievalConfig

    environ = {**CREDENTIALS, "DATA_DIR": str(tmp_path)}
    limited = {**environ, "GRPC_MAX_MESSAGE_BYTES": "65536", "GRPC_MAX_CONCURRENT_RPCS": "7"}
    for config_type in (AgentConfig, RetrievalConfig, ToolsConfig):
        assert config_type.from_env(environ).grpc_limits == ServerLimits(
            MAX_MESSAGE_BYTES, DEFAULT_MAX_CONCURRENT_RPCS
        )
        assert config_type.from_env(limited).grpc_limits == ServerLimits(65536, 7)


async def test_a_request_above_the_size_limit_is_refused(small_tools: ToolsStarted) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{small_tools.port}") as channel:
        stub = tools_pb2_grpc.ToolsServiceStub(channel)  # type: ignore[no-untyped-call]
        request = tools_pb2.ExecuteToolRequest(
            conversation_id="c1", tool_name="lookup_order_status", arguments_json="x" * 8192
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ExecuteTool(request, timeout=5, metadata=AS_SERVICE)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The server still answers normal-sized calls.
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_rpcs_beyond_the_in_flight_limit_are_refused_at_once(small_tools: ToolsStarted) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{small_tools.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        # Two long-lived calls (health Watch streams) fill the server's two slots.
        watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(2)]
        for watch in watches:
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for watch in watches:
            watch.cancel()
        for _ in range(50):  # the server frees the slots once it sees the cancellations
            try:
                await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                break
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                await asyncio.sleep(0.05)
        else:
            pytest.fail("slots were not freed after the streams ended")


# ---------------------------------------------------------------------------------------------------------
# The agent's channels


async def _sized(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    """Answers with as many bytes as the request asks for (a decimal number)."""
    return b"r" * int(request.decode() or "0")


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"ok"


@pytest.fixture
async def sizer() -> AsyncIterator[str]:
    server, health = new_server(["test.v1.Sizer"])
    handler = grpc.method_handlers_generic_handler(
        "test.v1.Sizer",
        {
            "Sized": grpc.unary_unary_rpc_method_handler(_sized),
            "Echo": grpc.unary_unary_rpc_method_handler(_echo),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = bind(server, "127.0.0.1:0")
    await server.start()
    await set_status(health, ["test.v1.Sizer"], serving=True)
    yield f"127.0.0.1:{port}"
    await server.stop(None)


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_agent_channels_bound_what_they_send_and_accept(sizer: str) -> None:
    small = ServerLimits(max_message_bytes=2048)
    channel = open_channel(sizer, auth.AuthConfig(), limits=small)
    try:
        sized = channel.unary_unary("/test.v1.Sizer/Sized")
        echo = channel.unary_unary("/test.v1.Sizer/Echo")
        assert await _code(sized(b"1000", timeout=5)) == grpc.StatusCode.OK
        # A dependency that answers too much: refused by the agent's channel, not buffered.
        assert await _code(sized(b"100000", timeout=5)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Nor does the agent send more than its limit.
        assert await _code(echo(b"x" * 4096, timeout=5)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await channel.close()
    default = open_channel(sizer, auth.AuthConfig())
    try:
        sized = default.unary_unary("/test.v1.Sizer/Sized")
        assert await _code(sized(str(MAX_MESSAGE_BYTES // 2).encode(), timeout=10)) == grpc.StatusCode.OK
        too_big = str(MAX_MESSAGE_BYTES + 1024).encode()
        assert await _code(sized(too_big, timeout=10)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await default.close()


# ---------------------------------------------------------------------------------------------------------
# Metric label cardinality


def _label_sets() -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every (sample name, labels) the default registry exports."""
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in REGISTRY.collect()
        for sample in family.samples
    }


def _made_up_methods(count: int) -> list[str]:
    names = []
    for index in range(count):
        salt = secrets.token_hex(4)
        names.append(
            [
                f"/{MADE_UP}.v{index}.Service{salt}/Method{salt}",  # an invented service
                f"/support.v1.ToolsService/{MADE_UP}{salt}",  # an invented method of the real service
                f"/support.v1.AgentService/Chat{salt}",  # another service's name, made longer
                f"/grpc.health.v1.Health/{MADE_UP}{salt}",  # an invented method of an exempt service
                f"/{MADE_UP}{salt}",  # no service at all
            ][index % 5]
        )
    return names


async def _flood(
    addr: str, methods: list[str], metadata: tuple[tuple[str, str], ...]
) -> set[grpc.StatusCode]:
    codes: set[grpc.StatusCode] = set()
    async with grpc.aio.insecure_channel(addr) as channel:
        for start in range(0, len(methods), 50):
            calls = [
                _code(channel.unary_unary(method)(b"\x00", timeout=10, metadata=metadata))
                for method in methods[start : start + 50]
            ]
            codes.update(await asyncio.gather(*calls))
    return codes


async def test_a_flood_of_made_up_method_names_adds_no_series(tools: ToolsStarted) -> None:
    addr = f"127.0.0.1:{tools.port}"
    # Warm-up: the first made-up calls may add the one shared "unknown" series per status code.
    await _flood(addr, _made_up_methods(20), ())
    await _flood(addr, _made_up_methods(20), AS_SERVICE)
    before = _label_sets()

    codes = await _flood(addr, _made_up_methods(600), ())
    codes |= await _flood(addr, _made_up_methods(600), AS_SERVICE)
    assert grpc.StatusCode.OK not in codes

    assert _label_sets() == before
    exposition = generate_latest(REGISTRY).decode()
    assert MADE_UP not in exposition
    # Real methods keep their own labels: one real call shows up under its name.
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = tools_pb2_grpc.ToolsServiceStub(channel)  # type: ignore[no-untyped-call]
        await stub.ListTools(tools_pb2.ListToolsRequest(), timeout=5, metadata=AS_SERVICE)
    methods = {(labels["grpc_service"], labels["grpc_method"]) for labels in _grpc_labels()}
    assert ("support.v1.ToolsService", "ListTools") in methods
    assert all(MADE_UP not in service and MADE_UP not in method for service, method in methods)
    assert all(not method.startswith("Chat") or method == "Chat" for _service, method in methods)


def _grpc_labels() -> list[dict[str, str]]:
    return [
        sample.labels
        for family in REGISTRY.collect()
        if family.name == "grpc_server_handled"
        for sample in family.samples
    ]
