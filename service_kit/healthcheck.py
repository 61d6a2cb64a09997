"""A gRPC health probe for container HEALTHCHECKs (grpc_health_probe is not on PyPI).

    python -m service_kit.healthcheck ADDR [SERVICE] [--timeout SECONDS]

Exit status 0 when `grpc.health.v1.Health/Check` answers SERVING for SERVICE (default "": the whole server),
1 otherwise (NOT_SERVING, unknown service, unreachable, timeout). A listen address such as `0.0.0.0:50052` or
`[::]:50052` is probed on loopback, so a container can pass its own listen address. With the caller-side TLS
settings (`TLS_CA_FILE`, and `TLS_CLIENT_CERT_FILE`/`TLS_CLIENT_KEY_FILE` under mTLS; see service_kit.tls) the
probe speaks TLS, so an image whose server listens with TLS still passes its own HEALTHCHECK.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service_kit.env import ConfigError
from service_kit.tls import TlsConfig, sync_channel

DEFAULT_TIMEOUT_SECONDS = 3.0
_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}


def probe_target(addr: str) -> str:
    """The address to dial for a listen address: wildcard hosts become loopback."""
    if addr.startswith(("dns:", "ipv4:", "ipv6:", "unix:")):
        return addr
    host, sep, port = addr.rpartition(":")
    if not sep:
        raise ValueError(f"address {addr!r} has no port")
    return f"{_WILDCARD_HOSTS.get(host, host)}:{port}"


def check(
    addr: str, service: str = "", timeout: float = DEFAULT_TIMEOUT_SECONDS, tls: TlsConfig | None = None
) -> tuple[bool, str]:
    """(serving, a one-line description)."""
    target = probe_target(addr)
    with sync_channel(target, tls or TlsConfig()) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            name = code.name if code is not None else "ERROR"
            return False, f"{target} {service or '(server)'}: {name}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return (
        reply.status == health_pb2.HealthCheckResponse.SERVING,
        f"{target} {service or '(server)'}: {status}",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service_kit.healthcheck", description=__doc__.split("\n")[0]
    )
    parser.add_argument("addr", help="host:port of the gRPC server (0.0.0.0 and [::] mean loopback)")
    parser.add_argument("service", nargs="?", default="", help='service name to check (default "": server)')
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, help="seconds (default 3)")
    args = parser.parse_args(argv)
    try:
        serving, message = check(args.addr, args.service, args.timeout, TlsConfig.from_env())
    except (ValueError, ConfigError) as error:
        print(f"healthcheck: {error}", file=sys.stderr)
        return 2
    print(message, file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
