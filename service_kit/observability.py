"""Metrics and traces for every service: Prometheus series, an aio server interceptor, GenAI spans.

What a service does (once, in `main()`, before `new_server`):

    obs = setup_observability("agent", environ)   # METRICS_PORT → /metrics; OTLP endpoint → tracing
    ...
    obs.shutdown()                                  # after serve_until_signal: flushes pending spans

`new_server` adds `server_interceptors()` itself, so every RPC of every service is counted and timed by
grpc service, method and status code (unary and server-streaming alike), and gets a server span when tracing is
on. Domain code records what only it knows through the small helpers below (`record_model_call`,
`record_tool_call`, `record_escalation`, `observe_retrieval_distances`) and wraps model and tool calls in
`genai_span(...)`. Everything is cheap when nothing is configured: the interceptor costs a few microseconds per
call, and spans are no-ops until tracing is switched on.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from prometheus_client import Counter, Histogram
from prometheus_client.registry import CollectorRegistry

from service_kit.env import env_int, env_list, env_opt, env_str

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------
# Metric objects (the default prometheus_client registry; one process = one service).

# Seconds; from sub-millisecond health checks up to long model turns.
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)
# Cosine distance lies in [0, 2]; the interesting part is below ~1.
DISTANCE_BUCKETS: Final = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0)

GRPC_SERVER_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by gRPC service, method and status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
)
GRPC_SERVER_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the handler's start to its last response or error, by gRPC service, method and status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
    buckets=LATENCY_BUCKETS,
)
MODEL_CALL_SECONDS = Histogram(
    "support_model_call_seconds",
    "Latency of one call to the language model, by model and outcome.",
    ["model", "outcome"],
    buckets=LATENCY_BUCKETS,
)
MODEL_TOKENS = Counter(
    "support_model_tokens_total",
    "Tokens used by model calls, by model and kind (input or output).",
    ["model", "kind"],
)
TOOL_CALLS = Counter(
    "support_tool_calls_total",
    "Tool calls, by tool name and outcome (ok, invalid_arguments, unknown_tool, timeout, error, ...).",
    ["tool", "outcome"],
)
TOOL_CALL_SECONDS = Histogram(
    "support_tool_call_seconds",
    "Latency of one tool call, by tool name.",
    ["tool"],
    buckets=LATENCY_BUCKETS,
)
ESCALATIONS = Counter(
    "support_escalations_total",
    "Conversations handed to a human, by reason code.",
    ["reason"],
)
RETRIEVAL_DISTANCE = Histogram(
    "support_retrieval_distance",
    "Cosine distance of each chunk returned by a search (lower is more similar).",
    buckets=DISTANCE_BUCKETS,
)
RETRIEVAL_EMPTY = Counter(
    "support_retrieval_empty_total",
    "Searches that returned no chunk within the relevance threshold.",
)


def record_model_call(
    model: str,
    seconds: float,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    outcome: str = "ok",
) -> None:
    """One model call: latency by model/outcome, plus token usage. Call it for failures too (outcome="error",
    "timeout", "fallback", ...), with the tokens the provider reported (0 when unknown)."""
    MODEL_CALL_SECONDS.labels(model, outcome).observe(seconds)
    if prompt_tokens:
        MODEL_TOKENS.labels(model, "input").inc(prompt_tokens)
    if completion_tokens:
        MODEL_TOKENS.labels(model, "output").inc(completion_tokens)


def record_tool_call(tool: str, outcome: str, seconds: float | None = None) -> None:
    """One tool call by tool name and outcome; `seconds` adds it to the latency histogram when given."""
    TOOL_CALLS.labels(tool, outcome).inc()
    if seconds is not None:
        TOOL_CALL_SECONDS.labels(tool).observe(seconds)


def record_escalation(reason: str) -> None:
    """One hand-off to a human, by reason code (e.g. "customer_request", "billing_dispute", "rounds_exhausted")."""
    ESCALATIONS.labels(reason).inc()


def observe_retrieval_distances(distances: Iterable[float]) -> None:
    """The distances of the chunks one search returned (before or after the threshold, as the caller decides);
    an empty result counts in `support_retrieval_empty_total`."""
    seen = False
    for distance in distances:
        RETRIEVAL_DISTANCE.observe(distance)
        seen = True
    if not seen:
        RETRIEVAL_EMPTY.inc()


# ----------------------------------------------------------------------------------------------------------
# The server interceptor: counts and times every RPC by service, method, type and code.

_Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]


def split_method(full_method: str) -> tuple[str, str]:
    """ "/support.v1.AgentService/Chat" → ("support.v1.AgentService", "Chat")."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return (service or "unknown"), (method or "unknown")


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


_CODES_BY_VALUE: Final = {code.value[0]: code for code in grpc.StatusCode}


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


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Prometheus `grpc_server_handled_total` and `grpc_server_handling_seconds` for every RPC.

    Wrapped handlers are cached per method, so the per-call cost is one clock read at each end, one dict
    lookup and two metric updates.
    """

    def __init__(self) -> None:
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED itself
            return handler
        full_method: str = handler_call_details.method
        cached = self._cache.get(full_method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, full_method)
        self._cache[full_method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, full_method: str) -> grpc.RpcMethodHandler:
        service, method = split_method(full_method)
        metrics = _MethodMetrics(service, method, _rpc_type(handler))
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _timed_unary(handler.unary_unary, metrics),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _timed_unary(handler.stream_unary, metrics),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _timed_stream(handler.unary_stream, metrics),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _timed_stream(handler.stream_stream, metrics),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # pragma: no cover - a handler always has exactly one behaviour


def _timed_unary(behavior: _Behavior, metrics: _MethodMetrics) -> _Behavior:
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


def _timed_stream(behavior: _Behavior, metrics: _MethodMetrics) -> _Behavior:
    async def timed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            result = behavior(request, context)
            if inspect.isasyncgen(result):
                async for response in result:
                    yield response
            elif inspect.isawaitable(result):  # a coroutine that writes with context.write()
                await result
            elif result is not None:  # a plain generator
                for response in result:
                    yield response
        except BaseException as exc:
            # GeneratorExit: the client went away and gRPC closed the stream.
            error = asyncio.CancelledError() if isinstance(exc, GeneratorExit) else exc
            raise
        finally:
            metrics.record(_final_code(context, error), time.perf_counter() - start)

    return timed


# ----------------------------------------------------------------------------------------------------------
# Tracing.

_TRACER_NAME: Final = "support_agent"
DEFAULT_UNTRACED_SERVICES: Final = ("grpc.health.v1.Health",)


@dataclass
class _TracingState:
    tracer: trace.Tracer = field(default_factory=trace.NoOpTracer)
    server_interceptors: list[grpc.aio.ServerInterceptor] = field(default_factory=list)
    client_interceptors: list[Any] = field(default_factory=list)
    global_provider_set: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.server_interceptors)


_tracing = _TracingState()
_metrics_interceptor = MetricsInterceptor()


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """What `new_server` puts first in the chain: tracing (when on), then metrics."""
    return [*_tracing.server_interceptors, _metrics_interceptor]


def client_interceptors() -> list[Any]:
    """Interceptors for the agent's outbound `grpc.aio` channels (retrieval, tools), so a trace continues into
    the other services. Empty when tracing is off: `grpc.aio.insecure_channel(t, interceptors=...)`."""
    return list(_tracing.client_interceptors)


def tracer() -> trace.Tracer:
    """The tracer of the provider `enable_tracing` installed; a no-op tracer while tracing is off."""
    return _tracing.tracer


@contextmanager
def genai_span(
    operation: str,
    name: str = "",
    *,
    provider: str | None = None,
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> Iterator[Span]:
    """A span named per the OpenTelemetry GenAI conventions: "{operation} {name}".

    - model calls: `genai_span("chat", model)` → span "chat gpt-4o-mini", kind CLIENT, gen_ai.request.model;
    - tools: `genai_span("execute_tool", tool_name)` → "execute_tool lookup_order_status", gen_ai.tool.name;
    - the whole turn: `genai_span("invoke_agent", "support-agent")` → gen_ai.agent.name.
    Set usage with `set_genai_usage(span, input_tokens, output_tokens)`. An exception escaping the block marks
    the span as an error with `error.type` and re-raises. When tracing is off the span is a cheap no-op.
    """
    if not _tracing.enabled:  # the common case without a collector: skip building attributes
        yield trace.INVALID_SPAN
        return
    attrs: dict[str, str | int | float | bool] = {"gen_ai.operation.name": operation}
    if provider:
        attrs["gen_ai.provider.name"] = provider
    kind = SpanKind.INTERNAL
    if operation == "execute_tool":
        if name:
            attrs["gen_ai.tool.name"] = name
    elif operation in {"invoke_agent", "create_agent"}:
        if name:
            attrs["gen_ai.agent.name"] = name
    else:  # chat, text_completion, embeddings, generate_content
        kind = SpanKind.CLIENT
        if name:
            attrs["gen_ai.request.model"] = name
    if attributes:
        attrs.update(attributes)
    span_name = f"{operation} {name}" if name else operation
    with tracer().start_as_current_span(
        span_name, kind=kind, attributes=attrs, record_exception=True, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except BaseException as exc:
            if span.is_recording():
                span.set_attribute("error.type", type(exc).__qualname__)
                span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
            raise


def set_genai_usage(
    span: Span,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    *,
    response_model: str | None = None,
    finish_reasons: Iterable[str] = (),
) -> None:
    """gen_ai.usage.input_tokens / output_tokens (and the response model, finish reasons) on a model span."""
    if not span.is_recording():
        return
    if input_tokens is not None:
        span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    if output_tokens is not None:
        span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
    if response_model:
        span.set_attribute("gen_ai.response.model", response_model)
    reasons = list(finish_reasons)
    if reasons:
        span.set_attribute("gen_ai.response.finish_reasons", reasons)


def enable_tracing(
    service_name: str,
    span_exporter: Any = None,
    *,
    endpoint: str | None = None,
    simple: bool = False,
    excluded_services: Iterable[str] = DEFAULT_UNTRACED_SERVICES,
    set_global: bool = False,
) -> Any:
    """Installs a TracerProvider exporting to `span_exporter` (default: OTLP over gRPC to `endpoint`, other
    settings from the standard OTEL_EXPORTER_OTLP_* variables) and turns on the gRPC server/client span
    interceptors and `genai_span`.

    Returns the provider (call `.shutdown()` to flush). `simple=True` exports each span synchronously (tests).
    The resource also takes OTEL_RESOURCE_ATTRIBUTES; `service_name` names the service. RPCs of
    `excluded_services` (default: health checks, which probes call every few seconds) get no server span.
    `set_global=True` (what `setup_observability` does) also makes it OpenTelemetry's global provider, once
    per process, for any library that asks `trace.get_tracer`.
    """
    from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor, filters
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if span_exporter is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter(endpoint=endpoint)
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    processor = SimpleSpanProcessor(span_exporter) if simple else BatchSpanProcessor(span_exporter)
    provider.add_span_processor(processor)
    _tracing.tracer = provider.get_tracer(_TRACER_NAME)
    excluded = [filters.service_name(name) for name in excluded_services]
    untraced = filters.negate(filters.any_of(*excluded)) if excluded else None
    _tracing.server_interceptors = [aio_server_interceptor(tracer_provider=provider, filter_=untraced)]  # type: ignore[no-untyped-call]
    _tracing.client_interceptors = list(aio_client_interceptors(tracer_provider=provider))  # type: ignore[no-untyped-call]
    if (
        set_global and not _tracing.global_provider_set
    ):  # OpenTelemetry allows one global provider per process
        trace.set_tracer_provider(provider)
        _tracing.global_provider_set = True
    return provider


def disable_tracing() -> None:
    """Back to no-op spans and no tracing interceptors for servers created from now on."""
    _tracing.tracer = trace.NoOpTracer()
    _tracing.server_interceptors = []
    _tracing.client_interceptors = []


# ----------------------------------------------------------------------------------------------------------
# Process set-up.


@dataclass(frozen=True)
class ObservabilityConfig:
    metrics_port: int  # 0 → no metrics endpoint
    metrics_addr: str
    otlp_endpoint: str | None  # None → tracing off
    untraced_services: tuple[str, ...] = DEFAULT_UNTRACED_SERVICES

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ObservabilityConfig:
        return cls(
            metrics_port=env_int("METRICS_PORT", 0, environ, minimum=0),
            metrics_addr=env_str("METRICS_ADDR", "0.0.0.0", environ),
            otlp_endpoint=env_opt("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", environ)
            or env_opt("OTEL_EXPORTER_OTLP_ENDPOINT", environ),
            untraced_services=env_list(
                "OTEL_PYTHON_GRPC_EXCLUDED_SERVICES", DEFAULT_UNTRACED_SERVICES, environ
            ),
        )


@dataclass
class Observability:
    """What `setup_observability` turned on; `shutdown()` flushes spans and stops the metrics endpoint."""

    service_name: str
    metrics_port: int | None = None
    tracing: bool = False
    _provider: Any = None
    _http_server: Any = None

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()
            disable_tracing()
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()


def start_metrics_endpoint(
    port: int, addr: str = "0.0.0.0", registry: CollectorRegistry | None = None
) -> tuple[Any, int]:
    """Serves /metrics (Prometheus text format) from a daemon thread; returns (server, bound port)."""
    from prometheus_client import REGISTRY, start_http_server

    server, _thread = start_http_server(port, addr=addr, registry=registry or REGISTRY)
    return server, int(server.server_address[1])


def setup_observability(service_name: str, environ: Mapping[str, str] | None = None) -> Observability:
    """Called once from a service's `main()` before `new_server`: the metrics endpoint on METRICS_PORT (unset
    or 0 → off; METRICS_ADDR, default 0.0.0.0) and tracing when OTEL_EXPORTER_OTLP_ENDPOINT (or
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; OTEL_PYTHON_GRPC_EXCLUDED_SERVICES (comma-separated, default
    grpc.health.v1.Health) get no server spans."""
    config = ObservabilityConfig.from_env(environ)
    obs = Observability(service_name)
    if config.metrics_port:
        obs._http_server, obs.metrics_port = start_metrics_endpoint(config.metrics_port, config.metrics_addr)
        logger.info("metrics endpoint listening", extra={"metrics_port": obs.metrics_port})
    if config.otlp_endpoint:
        obs._provider = enable_tracing(
            service_name,
            endpoint=config.otlp_endpoint,
            excluded_services=config.untraced_services,
            set_global=True,
        )
        obs.tracing = True
        logger.info("tracing on (OTLP gRPC exporter)", extra={"otlp_endpoint": config.otlp_endpoint})
    return obs
