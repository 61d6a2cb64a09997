"""Bearer tokens (service_kit.auth) against real servers: a token required on every RPC except health; rotation
(several tokens per role); reflection gated; tokens never logged; the agent forwarding its `service` token to the
other services. Roles and scoping: tests/security/test_principals.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from devstack import SAMPLE_KB, ProcessStack, isolated_environ
from devstack.inprocess import InProcessStack
from retrieval_service.adapters.embedding import MiniLMEmbedding
from service_kit import auth
from service_kit.env import ConfigError
from support.v1 import agent_pb2, agent_pb2_grpc, tools_pb2, tools_pb2_grpc
from tools_service.config import Config as ToolsConfig
from tools_service.server import StartedServer as ToolsStarted
from tools_service.server import start_server as start_tools_server

CUSTOMER = (("x-customer-id", "cust-001"),)
TOKEN = "s3cret-token-0123456789abcdef"
OLD_TOKEN = "old-token-abcdefghijklmnopqrstu"
WRONG = "wrong-token-0123456789abcdefgh"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def tools_config(tmp_path: Path, **environ: str) -> ToolsConfig:
    """The way a deployment turns it on: environment variables, read once by the service's Config.from_env."""
    return ToolsConfig.from_env({"TOOLS_ADDR": "127.0.0.1:0", "DATA_DIR": str(tmp_path / "tools"), **environ})


@pytest.fixture
async def tools_with_auth(tmp_path: Path) -> AsyncIterator[ToolsStarted]:
    # Two `service` tokens (rotation); ListTools is open to a service caller without a customer id.
    started = await start_tools_server(tools_config(tmp_path, AUTH_TOKENS_SERVICE=f"{TOKEN},{OLD_TOKEN}"))
    yield started
    await started.stop(None)


async def _list_tools(port: int, metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = tools_pb2_grpc.ToolsServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            await stub.ListTools(tools_pb2.ListToolsRequest(), timeout=5, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        (bearer(WRONG), grpc.StatusCode.UNAUTHENTICATED),
        (bearer(""), grpc.StatusCode.UNAUTHENTICATED),
        (bearer(TOKEN[:-1]), grpc.StatusCode.UNAUTHENTICATED),
        (bearer(TOKEN + "x"), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", TOKEN),), grpc.StatusCode.UNAUTHENTICATED),  # no "Bearer " scheme
        ((("authorization", f"Basic {TOKEN}"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("x-api-key", TOKEN),), grpc.StatusCode.UNAUTHENTICATED),
        (bearer(TOKEN), grpc.StatusCode.OK),
        ((("authorization", f"bearer {TOKEN}"),), grpc.StatusCode.OK),  # scheme is case-insensitive
        (bearer(OLD_TOKEN), grpc.StatusCode.OK),  # rotation: both tokens accepted
    ],
)
async def test_bearer_token_required(
    tools_with_auth: ToolsStarted, metadata: tuple[tuple[str, str], ...], expected: grpc.StatusCode
) -> None:
    assert await _list_tools(tools_with_auth.port, metadata) == expected


async def test_every_method_guarded_and_unknown_methods_hidden(tools_with_auth: ToolsStarted) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tools_with_auth.port}") as channel:
        stub = tools_pb2_grpc.ToolsServiceStub(channel)  # type: ignore[no-untyped-call]
        calls = [
            stub.ExecuteTool(
                tools_pb2.ExecuteToolRequest(tool_name="lookup_order_status", arguments_json="{}"),
                metadata=CUSTOMER,
                timeout=5,
            ),
            stub.LookupOrderStatus(
                tools_pb2.LookupOrderStatusRequest(order_id="ORD-12345"), metadata=CUSTOMER, timeout=5
            ),
            stub.ListTickets(tools_pb2.ListTicketsRequest(), timeout=5),
            stub.GetTicket(tools_pb2.GetTicketRequest(ticket_id="TKT-1"), timeout=5),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert TOKEN not in (caught.value.details() or "")
        # A method that does not exist: UNAUTHENTICATED for strangers (no probing of the API surface) ...
        unknown = channel.unary_unary("/support.v1.ToolsService/NoSuchMethod")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unknown(b"", timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # ... and UNIMPLEMENTED to an authenticated caller.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unknown(b"", timeout=5, metadata=bearer(TOKEN))
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_health_open_to_probes_reflection_needs_token(tools_with_auth: ToolsStarted) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tools_with_auth.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "support.v1.ToolsService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in reflection.ServerReflectionInfo(iter([request]), timeout=5):
                pass
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        names = [
            service.name
            async for reply in reflection.ServerReflectionInfo(
                iter([request]), timeout=5, metadata=bearer(TOKEN)
            )
            for service in reply.list_services_response.service
        ]
        assert "support.v1.ToolsService" in names


async def test_reflection_can_be_opened(tmp_path: Path) -> None:
    started = await start_tools_server(
        tools_config(tmp_path, AUTH_TOKENS_SERVICE=TOKEN, AUTH_ALLOW_REFLECTION="true")
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{started.port}") as channel:
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            replies = [reply async for reply in reflection.ServerReflectionInfo(iter([request]), timeout=5)]
            assert replies and replies[0].list_services_response.service
        assert await _list_tools(started.port, ()) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await started.stop(None)


async def test_tokens_never_logged(tools_with_auth: ToolsStarted, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for token in (TOKEN, WRONG, OLD_TOKEN):
        await _list_tools(tools_with_auth.port, bearer(token))
    rejected = [record for record in caplog.records if record.getMessage() == "unauthenticated call rejected"]
    assert rejected, "a rejected call is logged (method and reason only)"
    for record in caplog.records:
        text = f"{record.getMessage()} {record.__dict__}"
        for token in (TOKEN, WRONG, OLD_TOKEN):
            assert token not in text
    assert TOKEN not in repr(auth.AuthConfig.with_tokens({"service": [TOKEN]}, outbound_role="service"))


async def test_no_credentials_no_service(tmp_path: Path) -> None:
    """Issue 13: authentication is never off by default; without credentials the service does not start."""
    with pytest.raises(ConfigError, match="no credentials configured"):
        tools_config(tmp_path)
    with pytest.raises(ConfigError):  # the old shared-token variable is refused, not silently ignored
        tools_config(tmp_path, SERVICE_AUTH_TOKEN=TOKEN)


def test_config_from_env(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        auth.AuthConfig.from_env({})
    config = auth.AuthConfig.from_env(
        {"AUTH_TOKENS_SERVICE": f" {TOKEN} , {OLD_TOKEN} "}, outbound_role="service"
    )
    assert config.tokens("service") == (TOKEN, OLD_TOKEN) and config.outbound_token == TOKEN
    file = tmp_path / "credentials.json"
    file.write_text(f'{{"service": ["{OLD_TOKEN}"], "staff": ["{WRONG}"]}}')
    config = auth.AuthConfig.from_env(
        {"AUTH_CREDENTIALS_FILE": str(file), "AUTH_TOKENS_SERVICE": TOKEN}, outbound_role="service"
    )
    assert config.tokens("service") == (OLD_TOKEN, TOKEN) and config.tokens("staff") == (WRONG,)
    assert config.outbound_token == OLD_TOKEN
    for bad in ("short", "has space in the token xx", "tab\ttoken-0123456789abc"):
        with pytest.raises(ConfigError):
            auth.AuthConfig.from_env({"AUTH_TOKENS_SERVICE": bad})
    with pytest.raises(ConfigError):  # the agent must have a service token to call the others with
        auth.AuthConfig.from_env({"AUTH_TOKENS_BACKEND": TOKEN}, outbound_role="service")
    assert auth.outbound_metadata([("x-customer-id", "c")], auth.AuthConfig()) == (("x-customer-id", "c"),)
    assert auth.outbound_metadata(
        [("authorization", "Bearer forged")], auth.AuthConfig(outbound_token=TOKEN)
    ) == (("authorization", f"Bearer {TOKEN}"),)
    assert auth.token_matches(TOKEN, (OLD_TOKEN, TOKEN)) and not auth.token_matches(WRONG, (OLD_TOKEN, TOKEN))
    assert not auth.token_matches("ünïcode", (TOKEN,))


async def test_client_interceptors_and_sync_channel(tools_with_auth: ToolsStarted) -> None:
    config = auth.AuthConfig(outbound_token=TOKEN)
    addr = f"127.0.0.1:{tools_with_auth.port}"
    async with grpc.aio.insecure_channel(addr, interceptors=auth.client_interceptors(config)) as channel:
        stub = tools_pb2_grpc.ToolsServiceStub(channel)  # type: ignore[no-untyped-call]
        reply = await stub.ListTools(tools_pb2.ListToolsRequest(), timeout=5, metadata=CUSTOMER)
        assert reply.tools

    def sync_call() -> int:  # the blocking client runs in a thread; the server lives on this loop
        with grpc.insecure_channel(addr) as raw:
            assert auth.intercept_sync_channel(raw, auth.AuthConfig()) is raw
            channel = auth.intercept_sync_channel(raw, config)
            sync_stub = tools_pb2_grpc.ToolsServiceStub(channel)  # type: ignore[no-untyped-call]
            return len(sync_stub.ListTools(tools_pb2.ListToolsRequest(), timeout=5).tools)

    assert await asyncio.to_thread(sync_call) > 0
    assert auth.client_interceptors(auth.AuthConfig()) == []


@pytest.fixture
async def stack_with_auth(tmp_path: Path, embedding: MiniLMEmbedding) -> AsyncIterator[InProcessStack]:
    # TOKEN is the backend's token; the agent calls the others with its service token OLD_TOKEN.
    tokens = {"backend": [TOKEN], "service": [OLD_TOKEN], "kb_admin": [WRONG]}
    with_token = {"auth": auth.AuthConfig.with_tokens(tokens, outbound_role="service")}
    stack = InProcessStack(
        tmp_path,
        embedding,
        documents=[],
        agent_overrides=with_token,
        tools_overrides=with_token,
        retrieval_overrides={"auth": auth.AuthConfig.with_tokens(tokens)},
    )
    async with stack:
        yield stack


async def test_agent_requires_token(stack_with_auth: InProcessStack) -> None:
    channel = grpc.aio.insecure_channel(stack_with_auth.agent_addr)  # sends no token of its own
    stack_with_auth.channels.append(channel)
    stub = agent_pb2_grpc.AgentServiceStub(channel)  # type: ignore[no-untyped-call]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Chat(
            agent_pb2.ChatRequest(conversation_id="c-auth", message="hi"), metadata=CUSTOMER, timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_agent_forwards_its_token_to_tools(stack_with_auth: InProcessStack) -> None:
    """With auth on everywhere, the agent's own calls to tools must authenticate: the order lookup succeeds."""
    channel = grpc.aio.insecure_channel(stack_with_auth.agent_addr)
    stack_with_auth.channels.append(channel)
    stub = agent_pb2_grpc.AgentServiceStub(channel)  # type: ignore[no-untyped-call]
    reply = await stub.Chat(
        agent_pb2.ChatRequest(conversation_id="c-auth-2", message="Where is my order ORD-12345?"),
        metadata=(*CUSTOMER, *bearer(TOKEN)),
        timeout=20,
    )
    lookups = [call for call in reply.tool_calls if call.name == "lookup_order_status"]
    assert lookups and not lookups[0].is_error, reply
    assert "1Z999AA10123456784" in reply.reply


@pytest.mark.slow
def test_processes_configured_from_the_environment(tmp_path: Path) -> None:
    """The three services as processes with AUTH_TOKENS_<ROLE> set (as compose or Kubernetes inject secrets, no
    credentials file): start-up health checks and the KB ingest (kb_admin) work, strangers are refused on every
    port, the agent answers a backend caller with the token."""
    tokens = {
        "AUTH_CREDENTIALS_FILE": "",
        "AUTH_TOKENS_BACKEND": TOKEN,
        "AUTH_TOKENS_SERVICE": OLD_TOKEN,
        "AUTH_TOKENS_KB_ADMIN": WRONG,
    }
    stack = ProcessStack(
        tmp_path / "stack",
        environ=isolated_environ(),
        env={"LOG_LEVEL": "INFO", **tokens},
        log_dir=tmp_path / "logs",
    )
    try:
        asyncio.run(stack.start_all(SAMPLE_KB))  # waits on health (exempt) and ingests as kb_admin
        for name, service in (
            ("agent", "support.v1.AgentService"),
            ("tools", "support.v1.ToolsService"),
            ("retrieval", "support.v1.RetrievalService"),
        ):
            with grpc.insecure_channel(stack.addrs[name]) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=5
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                with pytest.raises(grpc.RpcError) as caught:
                    channel.unary_unary(f"/{service}/Anything")(b"", timeout=5)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        with grpc.insecure_channel(stack.addrs["agent"]) as channel:
            agent = agent_pb2_grpc.AgentServiceStub(channel)  # type: ignore[no-untyped-call]
            request = agent_pb2.ChatRequest(
                conversation_id="auth-proc", message="How long does express shipping take?"
            )
            with pytest.raises(grpc.RpcError) as caught:
                agent.Chat(request, metadata=CUSTOMER, timeout=20)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
            reply = agent.Chat(request, metadata=(*CUSTOMER, *bearer(TOKEN)), timeout=20)
            assert reply.reply.strip()
        logs = "\n".join(path.read_text(errors="replace") for path in stack.log_paths())
        assert TOKEN not in logs and OLD_TOKEN not in logs and WRONG not in logs
    finally:
        stack.stop_all()
