"""The request series every service exports (the default prometheus_client registry: one process = one
service). Domain series live with their service: agent_service.metrics, retrieval_service.metrics."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Histogram

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
