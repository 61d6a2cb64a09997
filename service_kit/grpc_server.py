"""A gRPC server as every service builds it: health, reflection, the shared interceptor chain, transport limits,
binding (plaintext, TLS or mutual TLS)."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service_kit import auth, observability
from service_kit.env import env_int
from service_kit.request_context import RequestContextInterceptor
from service_kit.tls import TlsConfig

# Large enough for ingestion batches; anything bigger is refused with RESOURCE_EXHAUSTED by gRPC itself.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# RPCs in flight per server beyond which gRPC answers RESOURCE_EXHAUSTED at once (health checks included).
# Above the agent's MAX_CONCURRENT_TURNS default (1024), so the agent's own, clearer load shedding acts first.
DEFAULT_MAX_CONCURRENT_RPCS = 2048


@dataclass(frozen=True)
class ServerLimits:
    """What one caller can make a server hold: message size both ways and RPCs in flight.

    `GRPC_MAX_MESSAGE_BYTES` (default 8 MiB) and `GRPC_MAX_CONCURRENT_RPCS` (default 2048), read once by each
    service's `Config.from_env`.
    """

    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerLimits:
        return cls(
            max_message_bytes=env_int("GRPC_MAX_MESSAGE_BYTES", MAX_MESSAGE_BYTES, environ, minimum=1024),
            max_concurrent_rpcs=env_int(
                "GRPC_MAX_CONCURRENT_RPCS", DEFAULT_MAX_CONCURRENT_RPCS, environ, minimum=1
            ),
        )

    def server_options(self) -> tuple[tuple[str, int], ...]:
        return (
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.so_reuseport", 0),
        )

    def channel_options(self) -> list[tuple[str, int]]:
        """The same size bounds for a channel (gRPC's client default sends without limit)."""
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
        ]


DEFAULT_LIMITS = ServerLimits()
SERVER_OPTIONS: tuple[tuple[str, int], ...] = DEFAULT_LIMITS.server_options()
_NO_AUTH = auth.AuthConfig()
_PLAINTEXT = TlsConfig()
# The TLS settings `new_server` was given, so `bind` (called later by lifecycle.start_serving) uses them.
_SERVER_TLS: weakref.WeakKeyDictionary[grpc.aio.Server, TlsConfig] = weakref.WeakKeyDictionary()


def new_server(
    service_names: Sequence[str],
    auth_config: auth.AuthConfig = _NO_AUTH,
    *,
    interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
    options: Sequence[tuple[str, int]] | None = None,
    tls: TlsConfig = _PLAINTEXT,
    limits: ServerLimits = DEFAULT_LIMITS,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """A grpc.aio server with health (one status per service, plus "") and reflection already added.

    Every service starts NOT_SERVING; `lifecycle.start_serving` reports SERVING once it listens.
    The interceptor chain, outermost first: observability (tracing when `setup_observability` turned it on,
    Prometheus request metrics labelled only with methods this server really has), authentication, the
    request's log context (request id, conversation id), then `interceptors`.
    `limits` bounds message sizes (unless `options` replaces them) and RPCs in flight; `tls` makes `bind` open
    a TLS (or mutual TLS) port instead of a plaintext one.
    """
    chain = [
        *observability.server_interceptors(service_names),
        *auth.server_interceptors(auth_config),
        RequestContextInterceptor(),
        *interceptors,
    ]
    server = grpc.aio.server(
        interceptors=chain,
        options=list(limits.server_options() if options is None else options),
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    if tls.server_enabled:
        _SERVER_TLS[server] = tls
    return server, health_servicer


async def set_status(
    health_servicer: health.aio.HealthServicer,
    service_names: Sequence[str],
    serving: bool,
) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *service_names):
        await health_servicer.set(name, status)


def bind(server: grpc.aio.Server, address: str, tls: TlsConfig | None = None) -> int:
    """Binds `address` with the TLS settings given here or to `new_server` (plaintext when neither turns TLS
    on); returns the port actually bound (useful with port 0)."""
    settings = tls if tls is not None else _SERVER_TLS.get(server, _PLAINTEXT)
    credentials = settings.server_credentials()
    if credentials is None:
        port: int = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not bind {address}")
    return port
