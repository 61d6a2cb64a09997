"""Rewrapping a `grpc.RpcMethodHandler`: what every server interceptor that wraps or replaces the handler's
behaviour (metrics, request context, authentication) needs, written once."""

from __future__ import annotations

import abc
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

# A handler's behaviour: `(request, context)` → response, awaitable response or (async) iterator of responses.
Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]


def rpc_type(handler: grpc.RpcMethodHandler) -> str:
    """ "unary", "server_stream", "client_stream" or "bidi_stream"."""
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def behavior_of(handler: grpc.RpcMethodHandler) -> Behavior:
    """The one behaviour a handler has (exactly one of its four slots is set)."""
    behavior: Behavior = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    return behavior


def with_behavior(handler: grpc.RpcMethodHandler, behavior: Behavior) -> grpc.RpcMethodHandler:
    """A handler of the same kind and serializers as `handler` that runs `behavior` instead."""
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behavior, **serializers)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behavior, **serializers)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behavior, **serializers)
    return grpc.unary_unary_rpc_method_handler(behavior, **serializers)


async def iterate_responses(result: Any) -> AsyncIterator[Any]:
    """The responses of a server-streaming behaviour's result, whatever form the handler chose: an async
    generator, a coroutine that writes with context.write() (no responses here), or a plain iterator."""
    if inspect.isasyncgen(result):
        async for response in result:
            yield response
    elif inspect.isawaitable(result):
        await result
    elif result is not None:
        for response in result:
            yield response


class HandlerWrappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A server interceptor that replaces each method's handler with `wrap(full_method, handler)`, built once
    per method and cached, so the per-call cost is one dict lookup. Unknown methods pass through untouched
    (gRPC answers UNIMPLEMENTED itself), so a flood of made-up method names grows nothing."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    @abc.abstractmethod
    def wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler to serve `full_method` with instead of `handler` (called once per method)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        full_method: str = handler_call_details.method
        cached = self._cache.get(full_method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self.wrap(full_method, handler)
        self._cache[full_method] = (handler, wrapped)
        return wrapped
