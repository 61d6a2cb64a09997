"""A gRPC server as every service builds it: health, reflection, the shared interceptor chain, binding."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service_kit import auth, observability
from service_kit.request_context import RequestContextInterceptor

# Large enough for ingestion batches; anything bigger is refused with RESOURCE_EXHAUSTED by gRPC itself.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
)
_NO_AUTH = auth.AuthConfig()


def new_server(
    service_names: Sequence[str],
    auth_config: auth.AuthConfig = _NO_AUTH,
    *,
    interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
    options: Sequence[tuple[str, int]] = SERVER_OPTIONS,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """A grpc.aio server with health (one status per service, plus "") and reflection already added.

    Every service starts NOT_SERVING; `lifecycle.start_serving` reports SERVING once it listens.
    The interceptor chain, outermost first: observability (tracing when `setup_observability` turned it on,
    Prometheus request metrics), service authentication when `auth_config` has tokens (default: off), the
    request's log context (request id, conversation id), then `interceptors`.
    """
    chain = [
        *observability.server_interceptors(),
        *auth.server_interceptors(auth_config),
        RequestContextInterceptor(),
        *interceptors,
    ]
    server = grpc.aio.server(interceptors=chain, options=list(options))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    return server, health_servicer


async def set_status(
    health_servicer: health.aio.HealthServicer,
    service_names: Sequence[str],
    serving: bool,
) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *service_names):
        await health_servicer.set(name, status)


def bind(server: grpc.aio.Server, address: str) -> int:
    """Binds an insecure port; returns the port actually bound (useful with port 0)."""
    port: int = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    return port
