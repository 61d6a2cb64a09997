"""The request-context interceptor every server has: each call's log lines carry the caller's x-request-id (or
a fresh one), set before the handler runs, unary and streaming alike, without leaking into other calls."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from service_kit.grpc_server import new_server
from service_kit.jsonlog import request_id_var

SERVICE = "test.v1.Echo"


def _identity(data: bytes) -> bytes:
    return data


async def unary(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
    return request_id_var.get().encode()


async def stream(_request: bytes, _context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for _ in range(2):
        yield request_id_var.get().encode()


async def start() -> tuple[grpc.aio.Server, int]:
    server, _health = new_server([SERVICE])
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, _identity, _identity),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, _identity, _identity),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def call(channel: grpc.aio.Channel, method: str, streaming: bool = False) -> Callable[..., Any]:
    factory = channel.unary_stream if streaming else channel.unary_unary
    multicallable: Callable[..., Any] = factory(
        f"/{SERVICE}/{method}", request_serializer=_identity, response_deserializer=_identity
    )
    return multicallable


async def test_handlers_see_the_callers_request_id_or_a_fresh_one() -> None:
    server, port = await start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = call(channel, "Unary")
            assert await echo(b"", metadata=(("x-request-id", "req-42"),), timeout=5) == b"req-42"
            first = await echo(b"", timeout=5)
            second = await echo(b"", timeout=5)
            assert first and second and first != second  # generated per call, not left over from another
            assert b"req-42" not in (first, second)
            replies = [
                reply
                async for reply in call(channel, "Stream", streaming=True)(
                    b"", metadata=(("x-request-id", "req-7"),), timeout=5
                )
            ]
            assert replies == [b"req-7", b"req-7"]
    finally:
        await server.stop(None)
