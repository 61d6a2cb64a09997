"""Metrics and traces for every service: Prometheus request series, an aio server interceptor, GenAI spans.

- `metrics`: the request series every service exports (domain series live with their service:
  agent_service.metrics, retrieval_service.metrics);
- `interceptor`: `MetricsInterceptor` and `server_interceptors(service_names)`, which `new_server` puts first in
  every chain, so each RPC is counted and timed by gRPC service, method and status code (label values only
  from the methods the server has: a caller's made-up names all count as "unknown"), and gets a server span
  when tracing is on;
- `tracing`: `genai_span(...)` around model and tool calls, the client interceptors that carry a trace into
  the other services, `enable_tracing`;
- `setup`: `setup_observability(name, ObservabilityConfig.from_env())`, once per process (the service runner
  does it): METRICS_PORT → /metrics, an OTLP endpoint → tracing; `.shutdown()` flushes pending spans.

Everything is cheap when nothing is configured: the interceptor costs a few microseconds per call, and spans
are no-ops until tracing is switched on.
"""

from service_kit.observability.interceptor import MetricsInterceptor, server_interceptors, split_method
from service_kit.observability.metrics import LATENCY_BUCKETS
from service_kit.observability.setup import (
    Observability,
    ObservabilityConfig,
    setup_observability,
    start_metrics_endpoint,
)
from service_kit.observability.tracing import (
    client_interceptors,
    disable_tracing,
    enable_tracing,
    genai_span,
    set_genai_usage,
    tracer,
)

__all__ = [
    "LATENCY_BUCKETS",
    "MetricsInterceptor",
    "Observability",
    "ObservabilityConfig",
    "client_interceptors",
    "disable_tracing",
    "enable_tracing",
    "genai_span",
    "server_interceptors",
    "set_genai_usage",
    "setup_observability",
    "split_method",
    "start_metrics_endpoint",
    "tracer",
]
