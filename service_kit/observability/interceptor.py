"""The server interceptor that counts and times every RPC by gRPC service, method, type and status code."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

import grpc

from service_kit.observability.metrics import GRPC_SERVER_HANDLED, GRPC_SERVER_HANDLING_SECONDS
from service_kit.observability.tracing import server_span_interceptors
from service_kit.rpc_handlers import (
    Behavior,
    HandlerWrappingInterceptor,
    behavior_of,
    iterate_responses,
    rpc_type,
    with_behavior,
)


def split_method(full_method: str) -> tuple[str, str]:
    """ "/support.v1.AgentService/Chat" → ("support.v1.AgentService", "Chat")."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return (service or "unknown"), (method or "unknown")


_CODES_BY_VALUE: Final = {code.value[0]: code for code in grpc.StatusCode}


def _final_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    """The status the client will see: what the handler set or aborted with; UNKNOWN for an escaped error."""
    try:
        code = context.code()
    except (AttributeError, NotImplementedError):  # pragma: no cover - every grpc.aio context has code()
        code = None
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return _CODES_BY_VALUE.get(code, grpc.StatusCode.UNKNOWN)
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


@dataclass
class _MethodMetrics:
    """Metric children for one method, resolved once per status code (labels() costs a lock and a lookup)."""

    service: str
    method: str
    rpc_type: str
    _children: dict[grpc.StatusCode, tuple[Any, Any]] = field(default_factory=dict)

    def record(self, code: grpc.StatusCode, seconds: float) -> None:
        children = self._children.get(code)
        if children is None:
            labels = (self.service, self.method, self.rpc_type, code.name)
            children = (GRPC_SERVER_HANDLED.labels(*labels), GRPC_SERVER_HANDLING_SECONDS.labels(*labels))
            self._children[code] = children
        children[0].inc()
        children[1].observe(seconds)


class MetricsInterceptor(HandlerWrappingInterceptor):
    """Prometheus `grpc_server_handled_total` and `grpc_server_handling_seconds` for every RPC.

    The per-call cost is one clock read at each end, one dict lookup and two metric updates.
    """

    def wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service, method = split_method(full_method)
        metrics = _MethodMetrics(service, method, rpc_type(handler))
        timed = _timed_stream if handler.response_streaming else _timed_unary
        return with_behavior(handler, timed(behavior_of(handler), metrics))


def _timed_unary(behavior: Behavior, metrics: _MethodMetrics) -> Behavior:
    async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            result = behavior(request, context)
            if inspect.isawaitable(result):  # async handlers; a plain function's value passes through
                result = await result
            return result
        except BaseException as exc:
            error = exc
            raise
        finally:
            metrics.record(_final_code(context, error), time.perf_counter() - start)

    return timed


def _timed_stream(behavior: Behavior, metrics: _MethodMetrics) -> Behavior:
    async def timed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            async for response in iterate_responses(behavior(request, context)):
                yield response
        except BaseException as exc:
            # GeneratorExit: the client went away and gRPC closed the stream.
            error = asyncio.CancelledError() if isinstance(exc, GeneratorExit) else exc
            raise
        finally:
            metrics.record(_final_code(context, error), time.perf_counter() - start)

    return timed


_metrics_interceptor = MetricsInterceptor()


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """What `new_server` puts first in the chain: tracing (when on), then metrics."""
    return [*server_span_interceptors(), _metrics_interceptor]
