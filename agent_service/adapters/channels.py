"""gRPC channels to the other services, with client-side round-robin over every resolved address, bounded
message sizes, and TLS / mutual TLS when the agent's `TlsConfig` turns it on for callers (TLS_CA_FILE,
TLS_CLIENT_CERT_FILE / TLS_CLIENT_KEY_FILE)."""

from __future__ import annotations

import json

import grpc

from service_kit import auth, observability
from service_kit.grpc_server import DEFAULT_LIMITS, ServerLimits
from service_kit.tls import TlsConfig, secure_or_insecure_channel

_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        # Transparent retries of calls that never reached a server are on by default; this adds one
        # retry of UNAVAILABLE and CANCELLED for the read-only methods (the others carry idempotency keys or
        # are not retried). CANCELLED: a replica stopped mid-call may reset the stream instead of closing the
        # connection; gRPC never retries a caller's own cancel.
        "methodConfig": [
            {
                "name": [
                    {"service": "support.v1.RetrievalService", "method": "Search"},
                    {"service": "support.v1.ToolsService", "method": "ListTools"},
                    {"service": "support.v1.ToolsService", "method": "ListTickets"},
                ],
                "retryPolicy": {
                    "maxAttempts": 2,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
                },
            }
        ],
    }
)


def channel_target(address: str) -> str:
    """`host:port` as is; `a:p,b:p` → `ipv4:a:p,b:p`; anything with a scheme (`dns:///...`) as is."""
    address = address.strip()
    if "," in address and ":///" not in address and not address.startswith(("ipv4:", "ipv6:")):
        return "ipv4:" + ",".join(part.strip() for part in address.split(",") if part.strip())
    return address


def open_channel(
    address: str,
    auth_config: auth.AuthConfig,
    tls: TlsConfig | None = None,
    limits: ServerLimits = DEFAULT_LIMITS,
) -> grpc.aio.Channel:
    """A channel to another service that carries the trace (when tracing is on) and `auth_config`'s token, over
    TLS when `tls` says so (plaintext otherwise), refusing messages larger than `limits.max_message_bytes`."""
    return secure_or_insecure_channel(
        channel_target(address),
        tls or TlsConfig(),
        interceptors=[*observability.client_interceptors(), *auth.client_interceptors(auth_config)],
        options=[
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
            ("grpc.keepalive_time_ms", 30_000),
            # A restarted dependency is used again within a second, not after a long reconnect back-off.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1_000),
            *limits.channel_options(),
        ],
    )
