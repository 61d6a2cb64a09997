"""Metrics interceptor, metrics endpoint and tracing, against real grpc.aio servers built by `new_server`."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import REGISTRY

from agent_service import metrics as agent_metrics
from retrieval_service import metrics as retrieval_metrics
from service_kit import observability
from service_kit.grpc_server import bind, new_server, set_status
from service_kit.observability import ObservabilityConfig, tracing

SERVICE = "test.v1.Probe"
HEALTH = "grpc.health.v1.Health"


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    with observability.genai_span("execute_tool", "echo"):
        return request


async def _fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise RuntimeError("boom")


async def _deny(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")
    raise AssertionError("unreachable")


async def _count(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for index in range(int(request.decode())):
        yield str(index).encode()


async def _count_then_abort(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"0"
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many")


async def _write(request: bytes, context: grpc.aio.ServicerContext) -> None:
    """A streaming handler in the context.write() style instead of a generator."""
    await context.write(b"a")
    await context.write(b"b")


async def _echo_stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request.upper()


async def _sum(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    return str(sum([len(request) async for request in requests])).encode()


def _probe_handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo),
            "Fail": grpc.unary_unary_rpc_method_handler(_fail),
            "Deny": grpc.unary_unary_rpc_method_handler(_deny),
            "Count": grpc.unary_stream_rpc_method_handler(_count),
            "CountThenAbort": grpc.unary_stream_rpc_method_handler(_count_then_abort),
            "Write": grpc.unary_stream_rpc_method_handler(_write),
            "EchoStream": grpc.stream_stream_rpc_method_handler(_echo_stream),
            "Sum": grpc.stream_unary_rpc_method_handler(_sum),
        },
    )


@dataclass
class Running:
    server: grpc.aio.Server
    channel: grpc.aio.Channel

    def unary(self, method: str) -> Any:
        return self.channel.unary_unary(f"/{SERVICE}/{method}")

    def stream(self, method: str) -> Any:
        return self.channel.unary_stream(f"/{SERVICE}/{method}")


async def _start(channel_interceptors: list[Any] | None = None) -> Running:
    server, health = new_server([SERVICE])
    server.add_generic_rpc_handlers((_probe_handler(),))
    port = bind(server, "127.0.0.1:0")
    await server.start()
    await set_status(health, [SERVICE], serving=True)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=channel_interceptors)
    return Running(server, channel)


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    started = await _start()
    yield started
    await started.channel.close()
    await started.server.stop(None)


def handled(service: str, method: str, code: str, rpc_type: str = "unary") -> float:
    labels = {"grpc_service": service, "grpc_method": method, "grpc_type": rpc_type, "grpc_code": code}
    return REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0


def latency_count(service: str, method: str, code: str, rpc_type: str = "unary") -> float:
    labels = {"grpc_service": service, "grpc_method": method, "grpc_type": rpc_type, "grpc_code": code}
    return REGISTRY.get_sample_value("grpc_server_handling_seconds_count", labels) or 0.0


async def eventually(predicate: Any, within: float = 5.0) -> None:
    """Polls until the server side has recorded (streams finish on the server after the client sees the end)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------------------------------------------------
# Request metrics.


async def test_unary_ok_and_not_found_are_counted_by_method_and_code(running: Running) -> None:
    stub = health_pb2_grpc.HealthStub(running.channel)
    ok_before = handled(HEALTH, "Check", "OK")
    missing_before = handled(HEALTH, "Check", "NOT_FOUND")
    latency_before = latency_count(HEALTH, "Check", "OK")

    for _ in range(3):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    # A call reaches the client before the server's interceptor has counted it.
    await eventually(
        lambda: (
            handled(HEALTH, "Check", "NOT_FOUND") - missing_before >= 1
            and handled(HEALTH, "Check", "OK") - ok_before >= 3
        )
    )
    assert handled(HEALTH, "Check", "OK") - ok_before == 3
    assert handled(HEALTH, "Check", "NOT_FOUND") - missing_before == 1
    assert latency_count(HEALTH, "Check", "OK") - latency_before == 3


async def test_abort_and_escaped_exception_are_counted_with_the_code_the_client_sees(
    running: Running,
) -> None:
    denied_before = handled(SERVICE, "Deny", "PERMISSION_DENIED")
    unknown_before = handled(SERVICE, "Fail", "UNKNOWN")
    ok_before = handled(SERVICE, "Echo", "OK")

    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await running.unary("Deny")(b"x", timeout=5)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await running.unary("Fail")(b"x", timeout=5)
    assert failed.value.code() == grpc.StatusCode.UNKNOWN
    assert await running.unary("Echo")(b"hello", timeout=5) == b"hello"

    # A call reaches the client before the server's interceptor has counted it.
    await eventually(
        lambda: (
            handled(SERVICE, "Deny", "PERMISSION_DENIED") - denied_before >= 1
            and handled(SERVICE, "Fail", "UNKNOWN") - unknown_before >= 1
            and handled(SERVICE, "Echo", "OK") - ok_before >= 1
        )
    )
    assert handled(SERVICE, "Deny", "PERMISSION_DENIED") - denied_before == 1
    assert handled(SERVICE, "Fail", "UNKNOWN") - unknown_before == 1
    assert handled(SERVICE, "Echo", "OK") - ok_before == 1
    # Nothing was counted under a wrong code for those methods.
    assert handled(SERVICE, "Deny", "OK") == 0
    assert handled(SERVICE, "Fail", "OK") == 0


async def test_server_streaming_counts_once_per_stream_with_its_final_code(running: Running) -> None:
    ok_before = handled(SERVICE, "Count", "OK", "server_stream")
    aborted_before = handled(SERVICE, "CountThenAbort", "RESOURCE_EXHAUSTED", "server_stream")

    responses = [item async for item in running.stream("Count")(b"4", timeout=5)]
    assert responses == [b"0", b"1", b"2", b"3"]
    call = running.stream("CountThenAbort")(b"", timeout=5)
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as aborted:
        async for item in call:
            received.append(item)
    assert received == [b"0"]
    assert aborted.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    await eventually(lambda: handled(SERVICE, "Count", "OK", "server_stream") - ok_before == 1)
    await eventually(
        lambda: (
            handled(SERVICE, "CountThenAbort", "RESOURCE_EXHAUSTED", "server_stream") - aborted_before == 1
        )
    )


async def test_write_style_bidi_and_client_streaming_handlers_are_counted(running: Running) -> None:
    write_before = handled(SERVICE, "Write", "OK", "server_stream")
    bidi_before = handled(SERVICE, "EchoStream", "OK", "bidi_stream")
    sum_before = handled(SERVICE, "Sum", "OK", "client_stream")

    assert [item async for item in running.stream("Write")(b"", timeout=5)] == [b"a", b"b"]

    async def requests() -> AsyncIterator[bytes]:
        for item in (b"x", b"yz"):
            yield item

    bidi = running.channel.stream_stream(f"/{SERVICE}/EchoStream")
    assert [item async for item in bidi(requests(), timeout=5)] == [b"X", b"YZ"]
    assert await running.channel.stream_unary(f"/{SERVICE}/Sum")(requests(), timeout=5) == b"3"

    await eventually(lambda: handled(SERVICE, "Write", "OK", "server_stream") - write_before == 1)
    await eventually(lambda: handled(SERVICE, "EchoStream", "OK", "bidi_stream") - bidi_before == 1)
    assert handled(SERVICE, "Sum", "OK", "client_stream") - sum_before == 1


async def test_a_stream_the_client_cancels_is_counted_as_cancelled(running: Running) -> None:
    """Health.Watch never ends by itself: the client reads the first status and hangs up."""
    before = handled(HEALTH, "Watch", "CANCELLED", "server_stream")
    stub = health_pb2_grpc.HealthStub(running.channel)
    call = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
    first = await call.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    call.cancel()
    await eventually(lambda: handled(HEALTH, "Watch", "CANCELLED", "server_stream") - before == 1)


async def test_unknown_method_passes_through_as_unimplemented(running: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await running.channel.unary_unary(f"/{SERVICE}/Nope")(b"", timeout=5)
    assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_split_method() -> None:
    assert observability.split_method("/support.v1.AgentService/Chat") == ("support.v1.AgentService", "Chat")
    assert observability.split_method("garbage") == ("unknown", "garbage")


# ---------------------------------------------------------------------------------------------------------
# Domain helpers.


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_domain_helpers_update_their_series() -> None:
    model = "test-model-helpers"
    calls = _sample("support_model_call_seconds_count", {"model": model, "outcome": "ok"})
    errors = _sample("support_model_call_seconds_count", {"model": model, "outcome": "timeout"})
    inputs = _sample("support_model_tokens_total", {"model": model, "kind": "input"})
    outputs = _sample("support_model_tokens_total", {"model": model, "kind": "output"})
    agent_metrics.record_model_call(model, 0.42, prompt_tokens=120, completion_tokens=30, outcome="ok")
    agent_metrics.record_model_call(model, 10.0, outcome="timeout")
    assert _sample("support_model_call_seconds_count", {"model": model, "outcome": "ok"}) - calls == 1
    assert _sample("support_model_call_seconds_count", {"model": model, "outcome": "timeout"}) - errors == 1
    assert _sample("support_model_tokens_total", {"model": model, "kind": "input"}) - inputs == 120
    assert _sample("support_model_tokens_total", {"model": model, "kind": "output"}) - outputs == 30

    tool_ok = _sample("support_tool_calls_total", {"tool": "lookup_order_status", "outcome": "ok"})
    tool_seconds = _sample("support_tool_call_seconds_count", {"tool": "lookup_order_status"})
    agent_metrics.record_tool_call("lookup_order_status", "ok", seconds=0.01)
    agent_metrics.record_tool_call("lookup_order_status", "ok")
    assert (
        _sample("support_tool_calls_total", {"tool": "lookup_order_status", "outcome": "ok"}) - tool_ok == 2
    )
    assert _sample("support_tool_call_seconds_count", {"tool": "lookup_order_status"}) - tool_seconds == 1

    escalations = _sample("support_escalations_total", {"reason": "billing_dispute"})
    agent_metrics.record_escalation("billing_dispute")
    assert _sample("support_escalations_total", {"reason": "billing_dispute"}) - escalations == 1

    distances = _sample("support_retrieval_distance_count")
    near = _sample("support_retrieval_distance_bucket", {"le": "0.3"})
    empty = _sample("support_retrieval_empty_total")
    retrieval_metrics.observe_retrieval_distances([0.21, 0.55, 0.9])
    retrieval_metrics.observe_retrieval_distances([])
    assert _sample("support_retrieval_distance_count") - distances == 3
    assert _sample("support_retrieval_distance_bucket", {"le": "0.3"}) - near == 1
    assert _sample("support_retrieval_empty_total") - empty == 1


# ---------------------------------------------------------------------------------------------------------
# Metrics endpoint.


def test_metrics_port_unset_or_zero_means_no_endpoint() -> None:
    for environ in ({}, {"METRICS_PORT": "0"}):
        obs = observability.setup_observability("test", ObservabilityConfig.from_env(environ))
        assert obs.metrics_port is None
        assert not obs.tracing
        obs.shutdown()


async def test_metrics_endpoint_serves_the_request_series(running: Running, unused_port: int) -> None:
    obs = observability.setup_observability(
        "test", ObservabilityConfig.from_env({"METRICS_PORT": str(unused_port), "METRICS_ADDR": "127.0.0.1"})
    )
    try:
        assert obs.metrics_port == unused_port
        await running.unary("Echo")(b"scrape-me", timeout=5)

        def scrape() -> tuple[str, str]:
            with urllib.request.urlopen(f"http://127.0.0.1:{unused_port}/metrics", timeout=5) as response:
                return response.headers.get("Content-Type", ""), response.read().decode()

        content_type, body = await asyncio.to_thread(scrape)
    finally:
        obs.shutdown()
    assert content_type.startswith("text/plain")
    assert "# TYPE grpc_server_handled_total counter" in body
    assert (
        'grpc_server_handled_total{grpc_code="OK",grpc_method="Echo",grpc_service="test.v1.Probe",'
        'grpc_type="unary"}' in body
    )
    assert "grpc_server_handling_seconds_bucket{" in body
    for family in (
        "support_model_call_seconds",
        "support_model_tokens_total",
        "support_tool_calls_total",
        "support_escalations_total",
        "support_retrieval_distance",
    ):
        assert f"# HELP {family}" in body


# ---------------------------------------------------------------------------------------------------------
# Tracing.


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = observability.enable_tracing("probe-service", exporter, simple=True)
    yield exporter
    provider.shutdown()
    observability.disable_tracing()


async def test_server_and_client_spans_with_a_genai_child(spans: InMemorySpanExporter) -> None:
    started = await _start(channel_interceptors=observability.client_interceptors())
    try:
        assert await started.unary("Echo")(b"traced", timeout=5) == b"traced"
    finally:
        await started.channel.close()
        await started.server.stop(None)

    finished = spans.get_finished_spans()
    assert sorted(span.name for span in finished) == sorted(
        [f"/{SERVICE}/Echo", f"/{SERVICE}/Echo", "execute_tool echo"]
    )
    (server_span,) = [s for s in finished if s.kind == SpanKind.SERVER]
    (client_span,) = [s for s in finished if s.kind == SpanKind.CLIENT]
    (tool_span,) = [s for s in finished if s.name == "execute_tool echo"]
    assert server_span.attributes is not None
    assert server_span.attributes["rpc.system"] == "grpc"
    assert server_span.resource.attributes["service.name"] == "probe-service"
    # One trace: client → server → tool span.
    assert server_span.parent is not None and client_span.context is not None
    assert server_span.parent.span_id == client_span.context.span_id
    assert tool_span.parent is not None and server_span.context is not None
    assert tool_span.parent.span_id == server_span.context.span_id
    assert tool_span.attributes is not None
    assert tool_span.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool_span.attributes["gen_ai.tool.name"] == "echo"


def test_genai_chat_span_carries_model_and_usage(spans: InMemorySpanExporter) -> None:
    with (
        observability.genai_span("invoke_agent", "support-agent"),
        observability.genai_span("chat", "gpt-4o-mini", provider="openai") as span,
    ):
        observability.set_genai_usage(
            span, 120, 30, response_model="gpt-4o-mini-2024", finish_reasons=["stop"]
        )
    finished = {span.name: span for span in spans.get_finished_spans()}
    chat = finished["chat gpt-4o-mini"]
    agent = finished["invoke_agent support-agent"]
    assert chat.kind == SpanKind.CLIENT
    assert agent.kind == SpanKind.INTERNAL
    assert chat.parent is not None and agent.context is not None
    assert chat.parent.span_id == agent.context.span_id
    assert dict(chat.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 30,
        "gen_ai.response.model": "gpt-4o-mini-2024",
        "gen_ai.response.finish_reasons": ("stop",),
    }
    assert (agent.attributes or {})["gen_ai.agent.name"] == "support-agent"


def test_genai_span_marks_errors_and_reraises(spans: InMemorySpanExporter) -> None:
    with pytest.raises(TimeoutError), observability.genai_span("chat", "slow-model"):
        raise TimeoutError("model timed out")
    (span,) = spans.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "TimeoutError"
    assert any(event.name == "exception" for event in span.events)


def test_without_tracing_spans_are_no_ops() -> None:
    observability.disable_tracing()
    assert observability.client_interceptors() == []
    assert len(observability.server_interceptors()) == 1
    with observability.genai_span("chat", "m") as span:
        observability.set_genai_usage(span, 1, 2)
        assert not span.is_recording()
    with pytest.raises(KeyError), observability.genai_span("execute_tool", "t"):
        raise KeyError("passes through")


# ---------------------------------------------------------------------------------------------------------
# Cost.


class _FakeContext:
    def code(self) -> None:
        return None


async def test_interceptor_overhead_is_far_below_a_tenth_of_a_millisecond() -> None:
    """The wrapped handler against the bare one, called directly (no network), many times."""

    async def behavior(request: bytes, context: Any) -> bytes:
        return request

    handler = grpc.unary_unary_rpc_method_handler(behavior)
    interceptor = observability.MetricsInterceptor()

    async def continuation(details: Any) -> grpc.RpcMethodHandler:
        return handler

    @dataclass
    class Details:
        method: str = "/test.v1.Cost/Call"

    context = _FakeContext()
    rounds = 20_000

    async def run(fn: Any) -> float:
        start = time.perf_counter()
        for _ in range(rounds):
            await fn(b"x", context)
        return (time.perf_counter() - start) / rounds

    bare = await run(behavior)
    # Includes intercept_service itself (the per-call cache lookup), as the server does it.
    start = time.perf_counter()
    for _ in range(rounds):
        wrapped = await interceptor.intercept_service(continuation, Details())
        await wrapped.unary_unary(b"x", context)
    intercepted = (time.perf_counter() - start) / rounds
    overhead = intercepted - bare
    print(f"interceptor overhead: {overhead * 1e6:.2f} µs per call (bare {bare * 1e6:.2f} µs)")
    assert overhead < 100e-6


def test_otlp_endpoint_switches_tracing_on_and_shutdown_off(monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep OpenTelemetry's process-wide provider untouched for the rest of the test session.
    monkeypatch.setattr(tracing._tracing, "global_provider_set", True)
    obs = observability.setup_observability(
        "svc", ObservabilityConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
    )
    try:
        assert obs.tracing
        assert len(observability.server_interceptors()) == 2
        assert len(observability.client_interceptors()) == 4  # unary/stream x unary/stream
        assert observability.tracer().start_span("probe").is_recording()
    finally:
        start = time.monotonic()
        obs.shutdown()  # nothing queued: returns at once even though the endpoint is unreachable
        assert time.monotonic() - start < 5
    assert len(observability.server_interceptors()) == 1
    assert not observability.tracer().start_span("probe").is_recording()


async def test_health_checks_are_not_traced_by_default(spans: InMemorySpanExporter) -> None:
    started = await _start()
    try:
        await health_pb2_grpc.HealthStub(started.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        await started.unary("Echo")(b"x", timeout=5)
    finally:
        await started.channel.close()
        await started.server.stop(None)
    names = sorted(span.name for span in spans.get_finished_spans())
    assert names == [f"/{SERVICE}/Echo", "execute_tool echo"]


def test_label_values_come_only_from_methods_the_server_has() -> None:
    """`KnownMethods` (the metrics interceptor's gate): real methods of the declared services, health and
    reflection; a bounded number of methods of a declared service without a descriptor; nothing else."""
    from service_kit.observability.interceptor import MAX_UNVERIFIED_METHODS, KnownMethods

    known = KnownMethods(["support.v1.ToolsService", SERVICE])
    assert "/support.v1.ToolsService/ListTools" in known
    assert f"/{HEALTH}/Check" in known
    assert "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo" in known
    assert "/support.v1.ToolsService/NoSuchMethod" not in known
    assert "/support.v1.AgentService/Chat" not in known  # a real method, but not this server's
    assert "/made.up.Service/Method" not in known
    assert "/ToolsService" not in known and "" not in known
    accepted = [name for index in range(200) if (name := f"/{SERVICE}/M{index}") in known]
    assert len(accepted) == MAX_UNVERIFIED_METHODS  # a descriptor-less service cannot grow the set forever
    assert f"/{SERVICE}/M0" in known  # what was accepted stays accepted
    assert "/support.v1.ToolsService/GetTicket" in known  # and real methods are never crowded out
