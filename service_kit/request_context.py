"""Per-request log context for every RPC, set once here instead of in each handler: the caller's
`x-request-id` (or a new one) and, when the request names one, the conversation id. Every log line the call
writes carries both (service_kit.jsonlog)."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc

from service_kit.jsonlog import conversation_id_var, request_id_var
from service_kit.metadata import REQUEST_ID_KEY, metadata_value
from service_kit.rpc_handlers import (
    Behavior,
    HandlerWrappingInterceptor,
    behavior_of,
    iterate_responses,
    with_behavior,
)

MAX_ID_CHARS = 128


def bind_request_context(request: Any, context: grpc.aio.ServicerContext) -> None:
    """Sets the log context of the current call (its own task, so nothing leaks into other calls)."""
    request_id_var.set(metadata_value(context, REQUEST_ID_KEY)[:MAX_ID_CHARS] or uuid.uuid4().hex[:16])
    conversation_id = getattr(request, "conversation_id", "")  # "" for a request stream
    if isinstance(conversation_id, str) and conversation_id:
        conversation_id_var.set(conversation_id[:MAX_ID_CHARS])


def _unary(behavior: Behavior) -> Behavior:
    async def with_context(request: Any, context: grpc.aio.ServicerContext) -> Any:
        bind_request_context(request, context)
        result = behavior(request, context)
        return await result if inspect.isawaitable(result) else result

    return with_context


def _stream(behavior: Behavior) -> Behavior:
    async def with_context(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        bind_request_context(request, context)
        async for response in iterate_responses(behavior(request, context)):
            yield response

    return with_context


class RequestContextInterceptor(HandlerWrappingInterceptor):
    """Binds the request context before the handler runs."""

    def wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        wrap = _stream if handler.response_streaming else _unary
        return with_behavior(handler, wrap(behavior_of(handler)))
