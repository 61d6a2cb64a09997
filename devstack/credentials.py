"""Credentials for the developer stack and the tests: one random bearer token per role (service_kit.auth).

`make run` (python -m devstack) writes them once to `<DATA_DIR>/credentials.json` (mode 0600) and reuses the
file afterwards; the services read it through AUTH_CREDENTIALS_FILE, and so do support-chat, support-tickets,
support-ingest, support-eval and the Python client (default path data/credentials.json).

Tests: `shared_test_credentials()` is one random set per test process; `server_auth()` is what a service accepts,
`metadata(role, ...)` the headers of one call as that role, and `caller_interceptors()` picks, for each call,
the role a test means when it sends no token of its own (see `role_for_call`), so that the suites written
before principals keep calling with `x-customer-id` alone.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from service_kit import auth
from service_kit.metadata import CUSTOMER_ID_KEY

CREDENTIALS_FILE_NAME = "credentials.json"
TEST_AGENT_NAME = "helpdesk-test"
_TOKEN_BYTES = 32
# Methods a test calling without x-customer-id means as helpdesk staff, and those only kb_admin may call.
_STAFF_METHODS = frozenset(
    {"GetTicket", "ListTickets", "ClaimTicket", "ResolveTicket", "AppendTicketMessage"}
)
_KB_ADMIN_METHODS = frozenset({"IngestDocuments", "DeleteDocuments"})


def new_tokens() -> dict[str, tuple[str, ...]]:
    """One fresh random token per role."""
    return {role: (f"{role.replace('_', '-')}-{secrets.token_urlsafe(_TOKEN_BYTES)}",) for role in auth.ROLES}


@dataclass(frozen=True)
class Credentials:
    """Tokens by role; `path` is the credentials file they were read from or written to (None in memory)."""

    tokens: Mapping[str, tuple[str, ...]]
    path: Path | None = None

    def __repr__(self) -> str:  # never print the tokens
        return f"Credentials(roles={sorted(self.tokens)}, path={self.path})"

    def token(self, role: str) -> str:
        return self.tokens[role][0]

    def metadata(
        self, role: str, *, customer_id: str | None = None, agent_name: str | None = None
    ) -> tuple[tuple[str, str], ...]:
        """The headers of one call as `role` (authorization, plus x-customer-id / x-agent-name when given)."""
        pairs = [(auth.AUTHORIZATION_KEY, f"Bearer {self.token(role)}")]
        if customer_id is not None:
            pairs.append((CUSTOMER_ID_KEY, customer_id))
        if agent_name is not None:
            pairs.append((auth.AGENT_NAME_KEY, agent_name))
        return tuple(pairs)

    def server_auth(self, *, outbound_role: str | None = None) -> auth.AuthConfig:
        """What a service accepts (every role's tokens); `outbound_role`: the role it calls others as."""
        return auth.AuthConfig.with_tokens(self.tokens, outbound_role=outbound_role)

    def caller(self, role: str, headers: Sequence[tuple[str, str]] = ()) -> auth.AuthConfig:
        """A client's configuration as `role`."""
        return auth.AuthConfig(outbound_token=self.token(role), outbound_headers=tuple(headers))

    def environ(self) -> dict[str, str]:
        """AUTH_CREDENTIALS_FILE for a process (the file must exist: see `write`)."""
        if self.path is None:
            raise ValueError("these credentials have no file; write() them first")
        return {"AUTH_CREDENTIALS_FILE": str(self.path)}

    def token_environ(self) -> dict[str, str]:
        """The tokens as AUTH_TOKENS_<ROLE> variables (what compose or Kubernetes would inject)."""
        return {f"AUTH_TOKENS_{role.upper()}": ",".join(tokens) for role, tokens in self.tokens.items()}

    def write(self, path: Path) -> Credentials:
        """Writes the tokens to `path` (0600, created exclusively: an existing file is never overwritten)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump({role: list(tokens) for role, tokens in self.tokens.items()}, file, indent=2)
            file.write("\n")
        return Credentials(self.tokens, path)


def ensure_credentials_file(
    path: Path, tokens: Mapping[str, tuple[str, ...]] | None = None
) -> tuple[Credentials, bool]:
    """The credentials in `path`, written (0600) from `tokens` (default: fresh random ones) when the file does
    not exist yet; (credentials, created). A file that exists is reused as it is, so tokens handed out earlier
    keep working."""
    try:
        return Credentials(tokens or new_tokens()).write(path), True
    except FileExistsError:
        return Credentials(auth.load_credentials_file(path), path), False


@functools.cache
def shared_test_credentials() -> Credentials:
    """One random set of tokens for every in-process service and caller of this test process."""
    return Credentials(new_tokens())


# ---- callers that pick their role per call (tests) ---------------------------------------------------------


def _value(metadata: Any, key: str) -> str:
    for item_key, value in metadata or ():
        if item_key.lower() == key:
            return str(value)
    return ""


def role_for_call(method: str, metadata: Any) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The role (and extra headers) a test means by a call without a token: ingest/delete → kb_admin; the agent
    → backend, except GetConversation without x-customer-id → staff; ticket methods without x-customer-id →
    staff (named TEST_AGENT_NAME unless the call names its agent); anything else → service."""
    name = method.rsplit("/", 1)[-1]
    has_customer = bool(_value(metadata, CUSTOMER_ID_KEY).strip())
    staff_headers: tuple[tuple[str, str], ...] = (
        () if _value(metadata, auth.AGENT_NAME_KEY) else ((auth.AGENT_NAME_KEY, TEST_AGENT_NAME),)
    )
    if name in _KB_ADMIN_METHODS:
        return auth.KB_ADMIN, ()
    if "/support.v1.AgentService/" in method:
        staff = name == "GetConversation" and not has_customer
        return (auth.STAFF, staff_headers) if staff else (auth.BACKEND, ())
    if name in _STAFF_METHODS and not has_customer:
        return auth.STAFF, staff_headers
    return auth.SERVICE, ()


def _per_call(credentials: Credentials) -> auth.MetadataRewrite:
    """Adds, to a call without its own `authorization`, the token and headers of the role `role_for_call` picks."""

    def rewrite(method: str, pairs: list[tuple[str, str]]) -> Sequence[tuple[str, str]]:
        if any(key.lower() == auth.AUTHORIZATION_KEY for key, _ in pairs):
            return pairs  # the test chose its own credentials
        role, headers = role_for_call(method, pairs)
        return [*pairs, *headers, (auth.AUTHORIZATION_KEY, f"Bearer {credentials.token(role)}")]

    return rewrite


def caller_interceptors(credentials: Credentials | None = None) -> list[grpc.aio.ClientInterceptor]:
    """grpc.aio client interceptors that add, to each call without its own `authorization`, the token of the
    role `role_for_call` picks (default credentials: `shared_test_credentials()`)."""
    return auth.metadata_interceptors(_per_call(credentials or shared_test_credentials()))


def role_channel(address: str, credentials: Credentials | None = None) -> grpc.aio.Channel:
    """An insecure grpc.aio channel whose calls carry the role `role_for_call` picks."""
    return grpc.aio.insecure_channel(address, interceptors=caller_interceptors(credentials))


def role_sync_channel(address: str, credentials: Credentials | None = None) -> grpc.Channel:
    """A blocking insecure channel whose calls carry the role `role_for_call` picks (closing it closes the
    underlying channel)."""
    return auth.intercept_sync_metadata(
        grpc.insecure_channel(address), _per_call(credentials or shared_test_credentials())
    )
