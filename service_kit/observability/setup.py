"""Process set-up: the /metrics endpoint and tracing, switched on once from a service's main."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.registry import CollectorRegistry

from service_kit.env import env_int, env_list, env_opt, env_str
from service_kit.observability.tracing import DEFAULT_UNTRACED_SERVICES, disable_tracing, enable_tracing

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObservabilityConfig:
    metrics_port: int = 0  # 0 → no metrics endpoint
    metrics_addr: str = "0.0.0.0"
    otlp_endpoint: str | None = None  # None → tracing off
    untraced_services: tuple[str, ...] = DEFAULT_UNTRACED_SERVICES

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ObservabilityConfig:
        """METRICS_PORT (unset or 0 → off), METRICS_ADDR (default 0.0.0.0); tracing when
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT is set;
        OTEL_PYTHON_GRPC_EXCLUDED_SERVICES (comma-separated, default grpc.health.v1.Health) get no server spans."""
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


def setup_observability(service_name: str, config: ObservabilityConfig) -> Observability:
    """Called once from a service's main before the server is built: the metrics endpoint and tracing, as
    `config` says."""
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
