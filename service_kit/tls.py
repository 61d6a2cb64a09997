"""TLS and mutual TLS for gRPC, from configuration: grpc's own `ssl_server_credentials` and
`ssl_channel_credentials`, nothing else.

Server side (every service):

- `TLS_CERT_FILE` + `TLS_KEY_FILE`: PEM certificate chain and private key; the port then accepts TLS only;
- `TLS_CLIENT_CA_FILE`: PEM CA bundle; with it the server requires a client certificate signed by that CA
  (mutual TLS) and refuses the handshake without one.

Caller side (the agent's channels to retrieval and tools; CLIs and clients that build a channel):

- `TLS_CA_FILE`: PEM CA bundle that signed the servers' certificates; setting it turns TLS on for outbound
  channels;
- `TLS_CLIENT_CERT_FILE` + `TLS_CLIENT_KEY_FILE`: the caller's own certificate and key, for servers that
  require mTLS (TLS is on with these too; without `TLS_CA_FILE` the system roots verify the server);
- `TLS_SERVER_NAME`: the name checked against the server certificate when it differs from the dialled host
  (e.g. dialling `dns:///retrieval:50052` with a certificate issued for `retrieval.internal`).

Unset: plaintext, as before. Each service's `Config.from_env` reads this once with `TlsConfig.from_env` and
passes it in; the files are checked to exist at that point (a typo fails at start, not at the first call) and
read when the credentials are built. See docs/deploy.md, "TLS and mTLS between hosts".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from service_kit.env import ConfigError, env_opt


def _path(name: str, environ: Mapping[str, str] | None) -> Path | None:
    raw = env_opt(name, environ)
    if raw is None:
        return None
    path = Path(raw)
    if not path.is_file():
        raise ConfigError(f"{name}={raw!r}: no such file")
    return path


def _read(path: Path | None) -> bytes | None:
    return None if path is None else path.read_bytes()


@dataclass(frozen=True)
class TlsConfig:
    """Paths only (never key material), so printing a Config shows no secret."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("TLS_CERT_FILE and TLS_KEY_FILE must be set together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ConfigError("TLS_CLIENT_CA_FILE (mutual TLS) needs TLS_CERT_FILE and TLS_KEY_FILE")
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ConfigError("TLS_CLIENT_CERT_FILE and TLS_CLIENT_KEY_FILE must be set together")

    @property
    def server_enabled(self) -> bool:
        """The server's port accepts TLS only."""
        return self.cert_file is not None

    @property
    def requires_client_certificate(self) -> bool:
        return self.client_ca_file is not None

    @property
    def client_enabled(self) -> bool:
        """Outbound channels use TLS."""
        return self.ca_file is not None or self.client_cert_file is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TlsConfig:
        return cls(
            cert_file=_path("TLS_CERT_FILE", environ),
            key_file=_path("TLS_KEY_FILE", environ),
            client_ca_file=_path("TLS_CLIENT_CA_FILE", environ),
            ca_file=_path("TLS_CA_FILE", environ),
            client_cert_file=_path("TLS_CLIENT_CERT_FILE", environ),
            client_key_file=_path("TLS_CLIENT_KEY_FILE", environ),
            server_name=env_opt("TLS_SERVER_NAME", environ),
        )

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """For `server.add_secure_port`; None when the server is plaintext."""
        if self.cert_file is None or self.key_file is None:
            return None
        pair = (self.key_file.read_bytes(), self.cert_file.read_bytes())
        return grpc.ssl_server_credentials(
            [pair],
            root_certificates=_read(self.client_ca_file),
            require_client_auth=self.requires_client_certificate,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """For `grpc.secure_channel` / `grpc.aio.secure_channel`; None when callers dial in plaintext."""
        if not self.client_enabled:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file),
            private_key=_read(self.client_key_file),
            certificate_chain=_read(self.client_cert_file),
        )

    def channel_options(self) -> list[tuple[str, str]]:
        """Extra channel options: the expected server name when `TLS_SERVER_NAME` overrides the dialled host."""
        if self.client_enabled and self.server_name:
            return [("grpc.ssl_target_name_override", self.server_name)]
        return []


def secure_or_insecure_channel(
    target: str,
    tls: TlsConfig,
    *,
    options: list[tuple[str, str | int]] | None = None,
    interceptors: list[grpc.aio.ClientInterceptor] | None = None,
) -> grpc.aio.Channel:
    """A `grpc.aio` channel to `target`: TLS when `tls` turns caller-side TLS on, plaintext otherwise."""
    all_options: list[tuple[str, str | int]] = [*(options or []), *tls.channel_options()]
    credentials = tls.channel_credentials()
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=all_options, interceptors=interceptors)
    return grpc.aio.secure_channel(target, credentials, options=all_options, interceptors=interceptors)


def sync_channel(
    target: str, tls: TlsConfig, *, options: list[tuple[str, str | int]] | None = None
) -> grpc.Channel:
    """The synchronous counterpart (CLIs, probes)."""
    all_options: list[tuple[str, str | int]] = [*(options or []), *tls.channel_options()]
    credentials = tls.channel_credentials()
    if credentials is None:
        return grpc.insecure_channel(target, options=all_options)
    return grpc.secure_channel(target, credentials, options=all_options)
