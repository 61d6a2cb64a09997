"""Service-to-service authentication: a shared bearer token in `authorization` metadata.

Off unless configured. When `SERVICE_AUTH_TOKEN` (one token) or `SERVICE_AUTH_TOKENS` (a comma list, for
rotation) is set, every RPC must carry `authorization: Bearer <token>` matching one of the accepted tokens,
else it ends with UNAUTHENTICATED before any handler runs. Exempt: `grpc.health.v1.Health` (probes carry no
credentials), and server reflection only when `SERVICE_AUTH_ALLOW_REFLECTION=true` (default: reflection needs the
token too; grpcurl sends `-H` headers on its reflection calls as well).

Callers send `SERVICE_AUTH_TOKEN` when it is set, else the first of `SERVICE_AUTH_TOKENS`. Rotation: give servers
`SERVICE_AUTH_TOKENS=new,old`, move every caller to `SERVICE_AUTH_TOKEN=new`, then drop `old`.

Nothing here reads the environment behind the caller's back: each service's `Config.from_env` (and each CLI)
reads it once with `AuthConfig.from_env` and passes the `AuthConfig` in.

Comparison is constant-time (`hmac.compare_digest` against every accepted token, no early exit); tokens are
never logged, and a rejection log line names the method and the reason only. See docs/security.md.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from service_kit.env import ConfigError, env_bool, env_opt
from service_kit.rpc_handlers import with_behavior

logger = logging.getLogger(__name__)

AUTHORIZATION_KEY = "authorization"
BEARER_PREFIX = "bearer "
MIN_TOKEN_CHARS = 16
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")
UNAUTHENTICATED_DETAILS = "missing or invalid service credentials"


def _check_token(token: str, variable: str) -> str:
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{variable}: every token must be at least {MIN_TOKEN_CHARS} characters")
    if not all(33 <= ord(char) <= 126 for char in token):
        raise ConfigError(f"{variable}: tokens must be printable ASCII without spaces or commas")
    return token


@dataclass(frozen=True)
class AuthConfig:
    """Accepted tokens (empty: authentication off) and the token this process sends to other services."""

    accepted_tokens: tuple[str, ...] = ()
    outbound_token: str | None = None
    allow_reflection: bool = False
    # Full method prefixes that never need a token.
    exempt_prefixes: tuple[str, ...] = field(default=(HEALTH_PREFIX,))

    @property
    def enabled(self) -> bool:
        return bool(self.accepted_tokens)

    def __repr__(self) -> str:  # never print the tokens
        return (
            f"AuthConfig(enabled={self.enabled}, accepted_tokens={len(self.accepted_tokens)}, "
            f"outbound_token={'set' if self.outbound_token else 'unset'}, allow_reflection={self.allow_reflection})"
        )

    __str__ = __repr__

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AuthConfig:
        single = env_opt("SERVICE_AUTH_TOKEN", environ)
        many_raw = env_opt("SERVICE_AUTH_TOKENS", environ) or ""
        many = [
            _check_token(part.strip(), "SERVICE_AUTH_TOKENS") for part in many_raw.split(",") if part.strip()
        ]
        if single is not None:
            _check_token(single, "SERVICE_AUTH_TOKEN")
        accepted = tuple(dict.fromkeys([*([single] if single else []), *many]))
        outbound = single or (many[0] if many else None)
        return cls(
            accepted_tokens=accepted,
            outbound_token=outbound,
            allow_reflection=env_bool("SERVICE_AUTH_ALLOW_REFLECTION", False, environ),
        )

    @classmethod
    def with_token(cls, token: str, *extra_accepted: str, allow_reflection: bool = False) -> AuthConfig:
        """Explicit configuration (tests, embedding): accept `token` and `extra_accepted`, send `token`."""
        tokens = tuple(dict.fromkeys(_check_token(t, "token") for t in (token, *extra_accepted)))
        return cls(accepted_tokens=tokens, outbound_token=token, allow_reflection=allow_reflection)


def _bearer(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of the first `authorization: Bearer ...` entry, or None."""
    for key, value in metadata or ():
        if key.lower() != AUTHORIZATION_KEY:
            continue
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        if text[: len(BEARER_PREFIX)].lower() == BEARER_PREFIX:
            return text[len(BEARER_PREFIX) :].strip()
        return None
    return None


def token_matches(presented: str, accepted: Sequence[str]) -> bool:
    """Constant-time membership: compares against every accepted token without stopping at a match."""
    presented_bytes = presented.encode("utf-8", "replace")
    matched = False
    for token in accepted:
        matched |= hmac.compare_digest(presented_bytes, token.encode("ascii"))
    return matched


def _denying_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def deny(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAILS)

    return with_behavior(handler, deny)


class BearerAuthServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Rejects every non-exempt RPC without a valid bearer token with UNAUTHENTICATED."""

    def __init__(self, config: AuthConfig) -> None:
        if not config.enabled:
            raise ValueError("BearerAuthServerInterceptor needs at least one accepted token")
        self._tokens = config.accepted_tokens
        prefixes = list(config.exempt_prefixes)
        if config.allow_reflection:
            prefixes.extend(REFLECTION_PREFIXES)
        self._exempt = tuple(prefixes)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if method.startswith(self._exempt):
            return await continuation(handler_call_details)
        presented = _bearer(handler_call_details.invocation_metadata)
        if presented is not None and token_matches(presented, self._tokens):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: let gRPC answer UNIMPLEMENTED... only to authenticated callers
            handler = grpc.unary_unary_rpc_method_handler(_noop)
        logger.warning(
            "unauthenticated call rejected",
            extra={"grpc_method": method, "reason": "missing" if presented is None else "invalid"},
        )
        return _denying_handler(handler)


async def _noop(_request: Any, _context: grpc.aio.ServicerContext) -> None:
    return None


def server_interceptors(config: AuthConfig) -> list[grpc.aio.ServerInterceptor]:
    """The auth interceptor when `config` turns authentication on; none when it is off."""
    return [BearerAuthServerInterceptor(config)] if config.enabled else []


# ---- client side -------------------------------------------------------------------------------------------


def outbound_metadata(metadata: Iterable[tuple[str, str]], config: AuthConfig) -> tuple[tuple[str, str], ...]:
    """`metadata` plus `authorization: Bearer <token>` when `config` has an outbound token."""
    pairs = tuple((key, value) for key, value in metadata if key.lower() != AUTHORIZATION_KEY)
    if config.outbound_token:
        return (*pairs, (AUTHORIZATION_KEY, f"Bearer {config.outbound_token}"))
    return pairs


def _with_token(details: grpc.aio.ClientCallDetails, token: str) -> grpc.aio.ClientCallDetails:
    existing = [(key, value) for key, value in (details.metadata or ()) if key.lower() != AUTHORIZATION_KEY]
    metadata = grpc.aio.Metadata(*existing, (AUTHORIZATION_KEY, f"Bearer {token}"))
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _AsyncBearer:
    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return _with_token(details, self._token)


class _AsyncUnaryUnary(_AsyncBearer, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _AsyncUnaryStream(_AsyncBearer, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _AsyncStreamUnary(_AsyncBearer, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _AsyncStreamStream(_AsyncBearer, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def client_interceptors(config: AuthConfig) -> list[grpc.aio.ClientInterceptor]:
    """For `grpc.aio.insecure_channel(..., interceptors=client_interceptors(config))`: adds the token to every
    call. Empty when `config` has no outbound token, so it is safe to pass unconditionally.
    """
    token = config.outbound_token
    if not token:
        return []
    return [
        _AsyncUnaryUnary(token),
        _AsyncUnaryStream(token),
        _AsyncStreamUnary(token),
        _AsyncStreamStream(token),
    ]


class _SyncBearer(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, details: Any) -> Any:
        existing = [(k, v) for k, v in (details.metadata or ()) if k.lower() != AUTHORIZATION_KEY]
        return _SyncCallDetails(
            details.method,
            details.timeout,
            (*existing, (AUTHORIZATION_KEY, f"Bearer {self._token}")),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


@dataclass(frozen=True)
class _SyncCallDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


def intercept_sync_channel(channel: grpc.Channel, config: AuthConfig) -> grpc.Channel:
    """A synchronous channel (CLIs, probes) that sends `config`'s token; `channel` itself when it has none."""
    if not config.outbound_token:
        return channel
    return grpc.intercept_channel(channel, _SyncBearer(config.outbound_token))
