"""The one way a started server stops: NOT_SERVING, drain, stop, then close its resources in reverse order,
once; and a start that fails part-way closes what it had opened."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service_kit.grpc_server import new_server
from service_kit.lifecycle import Close, StartedServer, close_all, closing_on_error, start_serving

SERVICE = "test.v1.Thing"


def recorder(log: list[str], name: str, fail: bool = False) -> Close:
    async def close() -> None:
        log.append(name)
        if fail:
            raise RuntimeError(f"{name} failed to close")

    return close


async def started(closers: list[Close]) -> StartedServer:
    server, health = new_server([SERVICE])
    port = await start_serving(server, health, [SERVICE], "127.0.0.1:0")
    return StartedServer(server=server, health=health, port=port, closers=closers)


async def status(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
        return int(reply.status)


async def test_stop_closes_resources_last_opened_first_and_only_once() -> None:
    log: list[str] = []
    running = await started([recorder(log, "store"), recorder(log, "channel"), recorder(log, "watcher")])
    assert await status(running.port) == health_pb2.HealthCheckResponse.SERVING
    await running.stop(0.1)
    await running.stop(0.1)  # a second stop (signal handler and test teardown, say) does nothing
    assert log == ["watcher", "channel", "store"]


async def test_a_failing_close_does_not_keep_the_others_open() -> None:
    log: list[str] = []
    await close_all([recorder(log, "first"), recorder(log, "second", fail=True), recorder(log, "third")])
    assert log == ["third", "second", "first"]


async def test_a_start_that_fails_part_way_closes_what_it_opened() -> None:
    log: list[str] = []
    with pytest.raises(OSError):
        async with closing_on_error([]) as closers:
            closers.append(recorder(log, "store"))
            closers.append(recorder(log, "backend"))
            raise OSError("could not bind")
    assert log == ["backend", "store"]


async def test_a_start_that_succeeds_closes_nothing() -> None:
    log: list[str] = []
    async with closing_on_error([]) as closers:
        closers.append(recorder(log, "store"))
    assert log == []
    assert len(closers) == 1
