"""gRPC server lifecycle shared by every service: health, reflection, binding, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service_kit import auth, observability

logger = logging.getLogger(__name__)

# Large enough for ingestion batches; anything bigger is refused with RESOURCE_EXHAUSTED by gRPC itself.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
DEFAULT_GRACE_SECONDS = 10.0

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
)


def new_server(
    service_names: Sequence[str],
    interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
    options: Sequence[tuple[str, int]] = SERVER_OPTIONS,
    auth_config: auth.AuthConfig | None = None,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """A grpc.aio server with health (one status per service, plus "") and reflection already added.

    Every service starts NOT_SERVING; call `set_serving` once the servicers are registered and ready.
    Observability comes first in the interceptor chain: tracing (when `setup_observability` turned it on) and
    Prometheus request metrics; then service authentication when `auth_config` (default: read once from
    SERVICE_AUTH_TOKEN / SERVICE_AUTH_TOKENS, see service_kit.auth) has tokens; `interceptors` run inside them.
    """
    chain = [*observability.server_interceptors(), *auth.server_interceptors(auth_config), *interceptors]
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


async def serve_until_signal(
    server: grpc.aio.Server,
    health_servicer: health.aio.HealthServicer,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
) -> None:
    """Runs a started server until SIGTERM or SIGINT: then NOT_SERVING, drain in-flight calls, return."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # A second signal during the drain (Ctrl-C reaches the whole process group, then a supervisor's SIGTERM)
    # must not kill the process by the default action once the event loop has closed.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)
    logger.info("shutdown requested; draining", extra={"grace_seconds": grace_seconds})
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace_seconds)
    logger.info("stopped")
