"""Tracing: OpenTelemetry GenAI spans around model and tool calls, and gRPC server/client span interceptors.

Off (no-op spans, no interceptors) until `enable_tracing` is called, which `setup_observability` does when an
OTLP endpoint is configured.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

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


def server_span_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The gRPC server span interceptor while tracing is on; empty while it is off."""
    return list(_tracing.server_interceptors)


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
