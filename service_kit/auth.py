"""Principals: who is calling, and may they call this method. One interceptor per server enforces it.

Four roles, each with its own bearer tokens (`authorization: Bearer <token>`):

| role | who | identity headers |
|---|---|---|
| `backend` | a customer-facing backend acting for ONE customer | `x-customer-id` required |
| `staff` | a helpdesk human agent | `x-agent-name` required |
| `kb_admin` | the knowledge-base administrator | none |
| `service` | the agent calling tools/retrieval | `x-customer-id` of the customer it acts for, where the method needs one |

Tokens come from `AUTH_CREDENTIALS_FILE` (JSON: `{"backend": ["tok", ...], "staff": [...], ...}`) and/or
`AUTH_TOKENS_<ROLE>` (comma lists, for secrets injected by compose or Kubernetes). A service with no tokens at
all refuses to start (`ConfigError`), unless `AUTH_DISABLED=true`: a local-experiment mode, logged as a WARNING
at start, where the role comes from an `x-role` header instead of a token (identity headers are still
required, and a call naming no role is still UNAUTHENTICATED).

Each service declares its `PermissionTable` (method → roles allowed) next to its servicer; the service's
server passes `config.auth.for_service(TABLE)` to `grpc_server.new_server`, whose chain then holds one
`PrincipalInterceptor`. For every call it: answers UNAUTHENTICATED for a missing or unknown token, or a missing
identity header; PERMISSION_DENIED for a role the method does not allow (naming the roles it does); and sets
the call's `Principal(role, customer_id, agent_name)`, which the servicer reads with `current_principal()` to
scope what it returns. `grpc.health.v1` is open (probes carry no credentials); reflection needs any valid
token (grpcurl sends its `-H` headers on reflection calls too) unless `AUTH_ALLOW_REFLECTION=true`.

Callers (the agent towards tools/retrieval, the CLIs, support-eval, the Python client) build an `AuthConfig`
that carries their role's token: `AuthConfig.for_caller(role)` reads `AUTH_TOKEN`, else `AUTH_TOKENS_<ROLE>`,
else the role's first token in `AUTH_CREDENTIALS_FILE` (default `data/credentials.json`, which `make run`
writes). `client_interceptors(config)` / `intercept_sync_channel(channel, config)` add the token (and any
default identity headers) to every call.

Comparison is constant-time (`hmac.compare_digest` against every configured token, no early exit); tokens are
never logged, and a rejection log line names the method and the reason only. See docs/security.md.
"""

from __future__ import annotations

import hmac
import inspect
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

from service_kit.env import ConfigError, env_bool, env_opt
from service_kit.metadata import CUSTOMER_ID_KEY
from service_kit.rpc_handlers import behavior_of, iterate_responses, with_behavior

logger = logging.getLogger(__name__)

BACKEND = "backend"
STAFF = "staff"
KB_ADMIN = "kb_admin"
SERVICE = "service"
ROLES = (BACKEND, STAFF, KB_ADMIN, SERVICE)

AUTHORIZATION_KEY = "authorization"
AGENT_NAME_KEY = "x-agent-name"
ROLE_KEY = "x-role"
BEARER_PREFIX = "bearer "
MIN_TOKEN_CHARS = 16
MAX_CUSTOMER_ID_CHARS = 128
MAX_AGENT_NAME_CHARS = 100
DEFAULT_CREDENTIALS_FILE = "data/credentials.json"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")
UNAUTHENTICATED_DETAILS = "missing credentials: send authorization: Bearer <token>"
NO_CREDENTIALS_MESSAGE = (
    "no credentials configured: set AUTH_CREDENTIALS_FILE (JSON: role -> list of tokens) or "
    "AUTH_TOKENS_<ROLE> (BACKEND, STAFF, KB_ADMIN, SERVICE), or AUTH_DISABLED=true for a local experiment"
)
LEGACY_VARIABLES = ("SERVICE_AUTH_TOKEN", "SERVICE_AUTH_TOKENS")


# ---- the principal -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of the current RPC. `customer_id` is set for backend (always) and service
    (when it named one) callers; `agent_name` for staff."""

    role: str
    customer_id: str = ""
    agent_name: str = ""


_principal: ContextVar[Principal | None] = ContextVar("principal", default=None)


def current_principal() -> Principal | None:
    """The caller of the RPC being served (None outside an RPC, or on a server without a permission table)."""
    return _principal.get()


@dataclass(frozen=True)
class Access:
    """Who may call one method. `service_needs_customer`: a `service` caller must send x-customer-id (a
    `backend` caller always must)."""

    roles: frozenset[str]
    service_needs_customer: bool = True


def allow(*roles: str, service_needs_customer: bool = True) -> Access:
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}")
    return Access(frozenset(roles), service_needs_customer)


@dataclass(frozen=True)
class PermissionTable:
    """`methods` maps a method name of `service` (the proto full name) to its `Access`. A method of the service
    missing from the table is refused to every role (PERMISSION_DENIED)."""

    service: str
    methods: Mapping[str, Access]

    def access(self, full_method: str) -> Access | None:
        service, _, method = full_method.lstrip("/").rpartition("/")
        return self.methods.get(method) if service == self.service else None


# ---- configuration -----------------------------------------------------------------------------------------


def _check_token(token: str, source: str) -> str:
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{source}: every token must be at least {MIN_TOKEN_CHARS} characters")
    if not all(33 <= ord(char) <= 126 for char in token) or "," in token:
        raise ConfigError(f"{source}: tokens must be printable ASCII without spaces or commas")
    return token


def load_credentials_file(path: Path) -> dict[str, tuple[str, ...]]:
    """role -> tokens from a credentials file; ConfigError naming the file when it is unusable."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"AUTH_CREDENTIALS_FILE={path}: cannot read it ({error.strerror})") from None
    except ValueError:
        raise ConfigError(f"AUTH_CREDENTIALS_FILE={path}: not valid JSON") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"AUTH_CREDENTIALS_FILE={path}: must be a JSON object of role -> list of tokens")
    credentials: dict[str, tuple[str, ...]] = {}
    for role, tokens in raw.items():
        if role not in ROLES:
            raise ConfigError(f"AUTH_CREDENTIALS_FILE={path}: unknown role {role!r} (use {', '.join(ROLES)})")
        if isinstance(tokens, str):
            tokens = [tokens]
        if not isinstance(tokens, list) or not all(isinstance(token, str) for token in tokens):
            raise ConfigError(f"AUTH_CREDENTIALS_FILE={path}: {role} must be a list of token strings")
        credentials[role] = tuple(_check_token(token, f"AUTH_CREDENTIALS_FILE {role}") for token in tokens)
    return credentials


def _env_credentials(environ: Mapping[str, str] | None) -> dict[str, list[str]]:
    """role -> tokens of AUTH_CREDENTIALS_FILE (when set) and AUTH_TOKENS_<ROLE>, file first."""
    credentials: dict[str, list[str]] = {role: [] for role in ROLES}
    file = env_opt("AUTH_CREDENTIALS_FILE", environ)
    if file is not None:
        for role, tokens in load_credentials_file(Path(file)).items():
            credentials[role].extend(tokens)
    for role in ROLES:
        variable = f"AUTH_TOKENS_{role.upper()}"
        raw = env_opt(variable, environ) or ""
        credentials[role].extend(
            _check_token(part.strip(), variable) for part in raw.split(",") if part.strip()
        )
    return credentials


def _one_role_per_token(pairs: Sequence[tuple[str, str]]) -> None:
    roles: dict[str, str] = {}
    for role, token in pairs:
        if roles.setdefault(token, role) != role:
            raise ConfigError(
                f"one token is configured for both {roles[token]} and {role}: give each role its own"
            )


def _reject_legacy(environ: Mapping[str, str] | None) -> None:
    for variable in LEGACY_VARIABLES:
        if env_opt(variable, environ) is not None:
            raise ConfigError(
                f"{variable} is no longer read: give each role its tokens with AUTH_TOKENS_<ROLE> or "
                "AUTH_CREDENTIALS_FILE (the old shared token is the `service` role: AUTH_TOKENS_SERVICE)"
            )


@dataclass(frozen=True)
class AuthConfig:
    """A server's accepted tokens (`credentials`: (role, token) pairs) and permission table, and the token and
    default headers this process sends as a caller. `AuthConfig()` is a plain server without principals
    (no interceptor) and a caller that sends nothing."""

    credentials: tuple[tuple[str, str], ...] = ()
    outbound_token: str | None = None
    # Sent on every outbound call that does not already carry the key (x-role when auth is disabled,
    # x-agent-name for a staff tool).
    outbound_headers: tuple[tuple[str, str], ...] = ()
    disabled: bool = False
    allow_reflection: bool = False
    permissions: PermissionTable | None = None
    exempt_prefixes: tuple[str, ...] = field(default=(HEALTH_PREFIX,))

    @property
    def enabled(self) -> bool:
        """A server with this config checks principals (it has tokens, a permission table, or is disabled)."""
        return bool(self.credentials) or self.disabled or self.permissions is not None

    def tokens(self, role: str) -> tuple[str, ...]:
        return tuple(token for token_role, token in self.credentials if token_role == role)

    def __repr__(self) -> str:  # never print the tokens
        roles = {role: len(self.tokens(role)) for role in ROLES if self.tokens(role)}
        return (
            f"AuthConfig(tokens={roles}, disabled={self.disabled}, "
            f"outbound_token={'set' if self.outbound_token else 'unset'}, allow_reflection={self.allow_reflection}, "
            f"permissions={self.permissions.service if self.permissions else None})"
        )

    __str__ = __repr__

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, outbound_role: str | None = None
    ) -> AuthConfig:
        """A service's configuration: every role's tokens, or AUTH_DISABLED=true. With neither it raises
        ConfigError (the service refuses to start). `outbound_role`: the role this service calls others as
        (its first token is sent; the agent calls tools and retrieval as `service`)."""
        _reject_legacy(environ)
        disabled = env_bool("AUTH_DISABLED", False, environ)
        by_role = _env_credentials(environ)
        pairs = tuple(dict.fromkeys((role, token) for role in ROLES for token in by_role[role]))
        if not pairs and not disabled:
            raise ConfigError(NO_CREDENTIALS_MESSAGE)
        _one_role_per_token(pairs)
        outbound_token: str | None = None
        headers: tuple[tuple[str, str], ...] = ()
        if outbound_role is not None:
            if disabled:
                headers = ((ROLE_KEY, outbound_role),)
            elif by_role[outbound_role]:
                outbound_token = by_role[outbound_role][0]
            else:
                raise ConfigError(
                    f"no {outbound_role} token configured: this service calls others as {outbound_role} "
                    f"(AUTH_TOKENS_{outbound_role.upper()} or AUTH_CREDENTIALS_FILE)"
                )
        return cls(
            credentials=pairs,
            outbound_token=outbound_token,
            outbound_headers=headers,
            disabled=disabled,
            allow_reflection=env_bool("AUTH_ALLOW_REFLECTION", False, environ),
        )

    @classmethod
    def for_caller(
        cls,
        role: str,
        environ: Mapping[str, str] | None = None,
        *,
        headers: Sequence[tuple[str, str]] = (),
        required: bool = True,
    ) -> AuthConfig:
        """A client's configuration as `role`: `AUTH_TOKEN` (an explicit token), else the first of
        `AUTH_TOKENS_<ROLE>`, else the role's first token in `AUTH_CREDENTIALS_FILE` (default
        data/credentials.json, written by `make run`). With AUTH_DISABLED=true it sends `x-role: <role>`.
        `headers` are sent on every call that does not carry them already. ConfigError when no token is found
        and `required`."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        env = os.environ if environ is None else environ
        extra = tuple(headers)
        if env_bool("AUTH_DISABLED", False, env):
            return cls(outbound_headers=((ROLE_KEY, role), *extra), disabled=True)
        token = env_opt("AUTH_TOKEN", env)
        if token is None:
            listed = [t.strip() for t in (env_opt(f"AUTH_TOKENS_{role.upper()}", env) or "").split(",")]
            token = next((t for t in listed if t), None)
        if token is None:
            path = Path(env_opt("AUTH_CREDENTIALS_FILE", env) or DEFAULT_CREDENTIALS_FILE)
            if path.exists():
                token = next(iter(load_credentials_file(path).get(role, ())), None)
            if token is None and required:
                raise ConfigError(
                    f"no {role} token: set AUTH_TOKEN, AUTH_TOKENS_{role.upper()} or AUTH_CREDENTIALS_FILE "
                    f"(tried {path}; `make run` writes data/credentials.json on first start)"
                )
        return cls(outbound_token=token, outbound_headers=extra)

    @classmethod
    def with_tokens(
        cls, tokens: Mapping[str, Sequence[str]], *, outbound_role: str | None = None
    ) -> AuthConfig:
        """Explicit configuration (tests, embedding): role -> tokens accepted; sends `outbound_role`'s first."""
        pairs = tuple(
            (role, _check_token(token, f"{role} token"))
            for role, listed in tokens.items()
            for token in listed
        )
        unknown = {role for role, _ in pairs} - set(ROLES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}")
        _one_role_per_token(pairs)
        outbound = None if outbound_role is None else next(iter(tokens.get(outbound_role, ())), None)
        return cls(credentials=pairs, outbound_token=outbound)

    def for_service(self, table: PermissionTable) -> AuthConfig:
        """This configuration enforcing `table` (a service's server calls this once)."""
        return replace(self, permissions=table)


# ---- server side -------------------------------------------------------------------------------------------


def _metadata_value(metadata: Iterable[tuple[str, str | bytes]] | None, key: str) -> str | None:
    for item_key, value in metadata or ():
        if item_key.lower() == key:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return None


def _bearer(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of the first `authorization: Bearer ...` entry, or None."""
    value = _metadata_value(metadata, AUTHORIZATION_KEY)
    if value is None or value[: len(BEARER_PREFIX)].lower() != BEARER_PREFIX:
        return None
    return value[len(BEARER_PREFIX) :].strip()


def token_matches(presented: str, accepted: Sequence[str]) -> bool:
    """Constant-time membership: compares against every accepted token without stopping at a match."""
    return role_of(presented, [(SERVICE, token) for token in accepted]) is not None


def role_of(presented: str, credentials: Sequence[tuple[str, str]]) -> str | None:
    """The role of `presented`, comparing in constant time against every configured token (no early exit)."""
    presented_bytes = presented.encode("utf-8", "replace")
    found: str | None = None
    for role, token in credentials:
        if hmac.compare_digest(presented_bytes, token.encode("ascii")) and found is None:
            found = role
    return found


class _RejectedError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, reason: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.reason = reason


def _identity(value: str | None, key: str, limit: int) -> str:
    text = (value or "").strip()
    if len(text) > limit or not text.isprintable():
        raise _RejectedError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{key} must be at most {limit} printable characters.",
            "malformed",
        )
    return text


def _rejecting_handler(
    handler: grpc.RpcMethodHandler | None, rejection: _RejectedError
) -> grpc.RpcMethodHandler:
    async def reject(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(rejection.code, rejection.details)

    if handler is None:  # unknown method: UNIMPLEMENTED only for authenticated callers
        return grpc.unary_unary_rpc_method_handler(reject)
    return with_behavior(handler, reject)


def _with_principal(handler: grpc.RpcMethodHandler, principal: Principal) -> grpc.RpcMethodHandler:
    behavior = behavior_of(handler)
    if handler.response_streaming:

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            _principal.set(principal)
            async for response in iterate_responses(behavior(request, context)):
                yield response

        return with_behavior(handler, stream)

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        _principal.set(principal)
        result = behavior(request, context)
        return await result if inspect.isawaitable(result) else result

    return with_behavior(handler, unary)


class PrincipalInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates (token → role, or x-role when disabled), authorizes against the permission table and
    sets the call's `Principal`; every refusal happens before the handler runs."""

    def __init__(self, config: AuthConfig) -> None:
        if not config.credentials and not config.disabled:
            raise ConfigError(NO_CREDENTIALS_MESSAGE)
        self._config = config
        self._credentials = config.credentials
        self._exempt = tuple(config.exempt_prefixes) + (
            REFLECTION_PREFIXES if config.allow_reflection else ()
        )
        if config.disabled:
            logger.warning(
                "AUTHENTICATION IS DISABLED (AUTH_DISABLED=true): any caller that sends an x-role header gets "
                "that role. Use this for local experiments only, never on a reachable port."
            )

    def _role(self, metadata: Any) -> str:
        if self._config.disabled:
            named = (_metadata_value(metadata, ROLE_KEY) or "").strip()
            if named in ROLES:
                return named
            raise _RejectedError(
                grpc.StatusCode.UNAUTHENTICATED,
                f"authentication is disabled; name your role with {ROLE_KEY}: {' | '.join(ROLES)}",
                "missing",
            )
        presented = _bearer(metadata)
        role = None if presented is None else role_of(presented, self._credentials)
        if role is None:
            reason = "missing" if presented is None else "invalid"
            raise _RejectedError(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAILS, reason)
        return role

    def _authorize(self, method: str, role: str, metadata: Any) -> Principal:
        table = self._config.permissions
        access = table.access(method) if table is not None else allow(*ROLES, service_needs_customer=False)
        if access is None:
            raise _RejectedError(
                grpc.StatusCode.PERMISSION_DENIED, f"{method} is not open to any role", "no_rule"
            )
        if role not in access.roles:
            needed = " or ".join(sorted(access.roles))
            raise _RejectedError(
                grpc.StatusCode.PERMISSION_DENIED, f"{method} needs the {needed} role, not {role}", "role"
            )
        customer = _identity(
            _metadata_value(metadata, CUSTOMER_ID_KEY), CUSTOMER_ID_KEY, MAX_CUSTOMER_ID_CHARS
        )
        agent_name = _identity(
            _metadata_value(metadata, AGENT_NAME_KEY), AGENT_NAME_KEY, MAX_AGENT_NAME_CHARS
        )
        if not customer and (role == BACKEND or (role == SERVICE and access.service_needs_customer)):
            raise _RejectedError(
                grpc.StatusCode.UNAUTHENTICATED,
                f"a {role} caller must name the customer it acts for in {CUSTOMER_ID_KEY}",
                "no_customer",
            )
        if role == STAFF and not agent_name:
            raise _RejectedError(
                grpc.StatusCode.UNAUTHENTICATED, f"a staff caller must send {AGENT_NAME_KEY}", "no_agent_name"
            )
        return Principal(
            role=role,
            customer_id=customer if role in (BACKEND, SERVICE) else "",
            agent_name=agent_name if role == STAFF else "",
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if method.startswith(self._exempt):
            return await continuation(handler_call_details)
        metadata = handler_call_details.invocation_metadata
        handler = await continuation(handler_call_details)
        try:
            role = self._role(metadata)
            if method.startswith(REFLECTION_PREFIXES) or handler is None:
                return handler
            principal = self._authorize(method, role, metadata)
        except _RejectedError as rejection:
            unauthenticated = rejection.code == grpc.StatusCode.UNAUTHENTICATED
            logger.warning(
                "unauthenticated call rejected" if unauthenticated else "call refused",
                extra={
                    "grpc_method": method if handler is not None else "unknown",
                    "reason": rejection.reason,
                },
            )
            return _rejecting_handler(handler, rejection)
        return _with_principal(handler, principal)


def server_interceptors(config: AuthConfig) -> list[grpc.aio.ServerInterceptor]:
    """The principal interceptor when `config` is enabled (tokens, a permission table or AUTH_DISABLED); none
    for a plain `AuthConfig()`. A permission table with no tokens (and not disabled) is a ConfigError: the
    service refuses to start rather than serve without principals."""
    return [PrincipalInterceptor(config)] if config.enabled else []


# ---- client side -------------------------------------------------------------------------------------------


def outbound_metadata(metadata: Iterable[tuple[str, str]], config: AuthConfig) -> tuple[tuple[str, str], ...]:
    """`metadata` plus `config`'s token and default headers (those `metadata` does not already carry)."""
    pairs = tuple(metadata)
    present = {key.lower() for key, _ in pairs}
    added = [(key, value) for key, value in config.outbound_headers if key.lower() not in present]
    if config.outbound_token:
        pairs = tuple((key, value) for key, value in pairs if key.lower() != AUTHORIZATION_KEY)
        added.append((AUTHORIZATION_KEY, f"Bearer {config.outbound_token}"))
    return (*pairs, *added)


def _sends_anything(config: AuthConfig) -> bool:
    return bool(config.outbound_token or config.outbound_headers)


def _pairs(metadata: Any) -> list[tuple[str, str]]:
    return [(key, value) for key, value in (metadata or ())]


# Rewrites a call's outgoing metadata: (full method name, metadata pairs) -> the pairs to send.
MetadataRewrite = Callable[[str, list[tuple[str, str]]], Sequence[tuple[str, str]]]


def _method_name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


class _AsyncRewrite:
    def __init__(self, rewrite: MetadataRewrite) -> None:
        self._rewrite = rewrite

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*self._rewrite(_method_name(details.method), _pairs(details.metadata)))
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class _AsyncUnaryUnary(_AsyncRewrite, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _AsyncUnaryStream(_AsyncRewrite, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _AsyncStreamUnary(_AsyncRewrite, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _AsyncStreamStream(_AsyncRewrite, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def metadata_interceptors(rewrite: MetadataRewrite) -> list[grpc.aio.ClientInterceptor]:
    """grpc.aio client interceptors (all four call kinds) that send what `rewrite` makes of each call's metadata."""
    return [
        _AsyncUnaryUnary(rewrite),
        _AsyncUnaryStream(rewrite),
        _AsyncStreamUnary(rewrite),
        _AsyncStreamStream(rewrite),
    ]


def _rewrite_for(config: AuthConfig) -> MetadataRewrite:
    return lambda _method, pairs: outbound_metadata(pairs, config)


def client_interceptors(config: AuthConfig) -> list[grpc.aio.ClientInterceptor]:
    """For `grpc.aio.insecure_channel(..., interceptors=client_interceptors(config))`: adds the token (and the
    default headers) to every call. Empty when `config` sends nothing, so it is safe to pass unconditionally.
    """
    if not _sends_anything(config):
        return []
    return metadata_interceptors(_rewrite_for(config))


class _SyncRewrite(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    def __init__(self, rewrite: MetadataRewrite) -> None:
        self._rewrite = rewrite

    def _details(self, details: Any) -> Any:
        return _SyncCallDetails(
            details.method,
            details.timeout,
            tuple(self._rewrite(_method_name(details.method), _pairs(details.metadata))),
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


def intercept_sync_metadata(channel: grpc.Channel, rewrite: MetadataRewrite) -> grpc.Channel:
    """A synchronous channel whose calls send what `rewrite` makes of their metadata."""
    return grpc.intercept_channel(channel, _SyncRewrite(rewrite))


def intercept_sync_channel(channel: grpc.Channel, config: AuthConfig) -> grpc.Channel:
    """A synchronous channel (CLIs, probes) that sends `config`'s token; `channel` itself when it sends none."""
    if not _sends_anything(config):
        return channel
    return intercept_sync_metadata(channel, _rewrite_for(config))
