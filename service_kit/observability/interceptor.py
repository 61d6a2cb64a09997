"""The server interceptor that counts and times every RPC by gRPC service, method, type and status code.

Label values come from a closed set, never from the caller: a method is labelled by its own name only when the
server really has it (its service is one the server was built with, plus health and reflection, and the method
is in that service's descriptor); anything else a caller makes up is counted under `grpc_service="unknown",
grpc_method="unknown"`. So a flood of invented method names (which an authentication interceptor answers with
UNAUTHENTICATED, handing this interceptor a handler for them) adds no series and no cache entries.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from google.protobuf import descriptor_pool

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

UNKNOWN_LABEL: Final = "unknown"
# Served by every server `new_server` builds.
ALWAYS_SERVED: Final = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")
# Methods of declared services that are not in the protobuf descriptor pool (generic handlers, e.g. in tests)
# cannot be checked against a descriptor: at most this many of them get their own labels per interceptor.
MAX_UNVERIFIED_METHODS: Final = 64


class KnownMethods:
    """Decides which full method names may become label values; the answers it remembers are bounded."""

    def __init__(self, service_names: Iterable[str] = ()) -> None:
        declared = tuple(service_names)
        # No names given (an interceptor built outside new_server): every service in the descriptor pool.
        self._declared: frozenset[str] | None = frozenset((*declared, *ALWAYS_SERVED)) if declared else None
        self._known: set[str] = set()
        self._unverified = 0

    def __contains__(self, full_method: str) -> bool:
        if full_method in self._known:
            return True
        service, method = split_method(full_method)
        if full_method != f"/{service}/{method}":
            return False
        if self._declared is not None and service not in self._declared:
            return False
        try:
            descriptor = descriptor_pool.Default().FindServiceByName(service)
        except KeyError:
            # A declared service without a descriptor: accept a bounded number of its method names.
            if self._declared is None or self._unverified >= MAX_UNVERIFIED_METHODS:
                return False
            self._unverified += 1
        else:
            try:
                descriptor.FindMethodByName(method)
            except KeyError:
                return False
        self._known.add(full_method)
        return True


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

    `service_names`: the services the server was built with (see `KnownMethods`). The per-call cost is one clock
    read at each end, one dict lookup and two metric updates.
    """

    def __init__(self, service_names: Iterable[str] = ()) -> None:
        super().__init__()
        self._known = KnownMethods(service_names)
        # One entry per rpc type for every method nobody declared: shared, never per name.
        self._unknown: dict[str, _MethodMetrics] = {}

    def wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service, method = split_method(full_method)
        metrics = _MethodMetrics(service, method, rpc_type(handler))
        return self._timed(handler, metrics)

    @staticmethod
    def _timed(handler: grpc.RpcMethodHandler, metrics: _MethodMetrics) -> grpc.RpcMethodHandler:
        timed = _timed_stream if handler.response_streaming else _timed_unary
        return with_behavior(handler, timed(behavior_of(handler), metrics))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        full_method: str = handler_call_details.method
        if full_method in self._known:
            return await super().intercept_service(continuation, handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:  # gRPC answers UNIMPLEMENTED itself
            return handler
        kind = rpc_type(handler)
        metrics = self._unknown.get(kind)
        if metrics is None:
            metrics = self._unknown[kind] = _MethodMetrics(UNKNOWN_LABEL, UNKNOWN_LABEL, kind)
        return self._timed(handler, metrics)


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


def server_interceptors(service_names: Iterable[str] = ()) -> list[grpc.aio.ServerInterceptor]:
    """What `new_server` puts first in the chain: tracing (when on), then metrics for a server that serves
    `service_names` (besides health and reflection)."""
    return [*server_span_interceptors(), MetricsInterceptor(service_names)]
