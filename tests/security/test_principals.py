"""Issue 13: principals, from outside through real gRPC. Every call names a principal (a role's bearer token plus
its identity header) or gets UNAUTHENTICATED; each role may call only its methods (PERMISSION_DENIED otherwise);
conversations, tickets and limits are scoped to the customer the backend names."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack import REPO_ROOT, isolated_environ
from devstack.credentials import Credentials, ensure_credentials_file, shared_test_credentials
from devstack.inprocess import InProcessStack, kb_documents, tools_config
from retrieval_service.adapters.embedding import MiniLMEmbedding
from service_kit import auth
from support.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
    tools_pb2,
    tools_pb2_grpc,
    types_pb2,
)
from tools_service.server import StartedServer as ToolsStarted
from tools_service.server import start_server as start_tools_server

MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")

CREDENTIALS: Credentials = shared_test_credentials()
SERVICES = {
    "agent": agent_pb2.DESCRIPTOR.services_by_name["AgentService"],
    "tools": tools_pb2.DESCRIPTOR.services_by_name["ToolsService"],
    "retrieval": retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"],
}


def as_role(role: str, customer_id: str | None = None, agent_name: str | None = None) -> Any:
    return CREDENTIALS.metadata(role, customer_id=customer_id, agent_name=agent_name)


BACKEND_1 = as_role("backend", customer_id="cust-001")
BACKEND_2 = as_role("backend", customer_id="cust-002")
SERVICE_1 = as_role("service", customer_id="cust-001")
SERVICE_2 = as_role("service", customer_id="cust-002")
STAFF = as_role("staff", agent_name="dana")
KB_ADMIN = as_role("kb_admin")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, embedding: MiniLMEmbedding
) -> AsyncIterator[InProcessStack]:
    documents = kb_documents(sorted(path.name for path in (REPO_ROOT / "kb").glob("*.md"))[:3])
    async with InProcessStack(
        tmp_path_factory.mktemp("principals"), embedding, documents=documents
    ) as started:
        yield started


def raw_channel(stack: InProcessStack, name: str) -> grpc.aio.Channel:
    """A channel that sends exactly the metadata each call names (no automatic credentials)."""
    channel = grpc.aio.insecure_channel(getattr(stack, f"{name}_addr"))
    stack.channels.append(channel)
    return channel


def agent(stack: InProcessStack) -> agent_pb2_grpc.AgentServiceStub:
    return agent_pb2_grpc.AgentServiceStub(raw_channel(stack, "agent"))  # type: ignore[no-untyped-call]


def tools(stack: InProcessStack) -> tools_pb2_grpc.ToolsServiceStub:
    return tools_pb2_grpc.ToolsServiceStub(raw_channel(stack, "tools"))  # type: ignore[no-untyped-call]


def retrieval(stack: InProcessStack) -> retrieval_pb2_grpc.RetrievalServiceStub:
    return retrieval_pb2_grpc.RetrievalServiceStub(raw_channel(stack, "retrieval"))  # type: ignore[no-untyped-call]


async def status_of(call: Any) -> grpc.StatusCode:
    """The status a unary call (or a server stream, read to its end) ends with."""
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def refused(call: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value


def escalation(conversation_id: str, **fields: Any) -> tools_pb2.EscalateToHumanRequest:
    defaults: dict[str, Any] = {
        "conversation_id": conversation_id,
        "priority": types_pb2.PRIORITY_MEDIUM,
        "reason_code": types_pb2.ESCALATION_REASON_CUSTOMER_REQUEST,
        "reason": "Customer asked for a human",
        "summary": "cust-001 secret summary: wants a refund for ORD-12345",
    }
    return tools_pb2.EscalateToHumanRequest(**{**defaults, **fields})


# --- no principal, wrong principal, missing identity --------------------------------------------------------


@MODULE_LOOP
async def test_no_credentials_is_unauthenticated_on_every_rpc_of_every_service(stack: InProcessStack) -> None:
    for name, service in SERVICES.items():
        channel = raw_channel(stack, name)
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            call = (
                channel.unary_stream(path)(b"", timeout=10)
                if method.server_streaming
                else channel.unary_unary(path)(b"", timeout=10)
            )
            error = await refused(call, grpc.StatusCode.UNAUTHENTICATED)
            assert "authorization: Bearer" in (error.details() or "")
            # A token that is not one of ours is no better than none.
            forged = (("authorization", "Bearer not-a-real-token-0123456789"), ("x-customer-id", "cust-001"))
            call = (
                channel.unary_stream(path)(b"", timeout=10, metadata=forged)
                if method.server_streaming
                else channel.unary_unary(path)(b"", timeout=10, metadata=forged)
            )
            await refused(call, grpc.StatusCode.UNAUTHENTICATED)
        # Health stays open to probes.
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service.full_name), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@MODULE_LOOP
async def test_wrong_role_is_permission_denied_naming_the_role_needed(stack: InProcessStack) -> None:
    chat = agent_pb2.ChatRequest(conversation_id="p-role", message="hi")
    error = await refused(
        agent(stack).Chat(chat, metadata=KB_ADMIN, timeout=10), grpc.StatusCode.PERMISSION_DENIED
    )
    assert "backend" in (error.details() or "")
    await refused(agent(stack).Chat(chat, metadata=STAFF, timeout=10), grpc.StatusCode.PERMISSION_DENIED)
    await refused(agent(stack).Chat(chat, metadata=SERVICE_1, timeout=10), grpc.StatusCode.PERMISSION_DENIED)
    await refused(
        tools(stack).ListTools(tools_pb2.ListToolsRequest(), metadata=STAFF, timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await refused(
        tools(stack).EscalateToHuman(escalation("p-role"), metadata=KB_ADMIN, timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await refused(
        retrieval(stack).Search(
            retrieval_pb2.SearchRequest(query="refund"), metadata=as_role("backend"), timeout=10
        ),
        grpc.StatusCode.UNAUTHENTICATED,  # a backend always names its customer
    )


@MODULE_LOOP
async def test_missing_identity_header_is_unauthenticated_never_more_access(stack: InProcessStack) -> None:
    backend_anonymous = as_role("backend")
    await refused(
        agent(stack).Chat(
            agent_pb2.ChatRequest(conversation_id="p-anon", message="hi"), metadata=backend_anonymous
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    await refused(
        agent(stack).GetConversation(
            agent_pb2.GetConversationRequest(conversation_id="p-anon"), metadata=backend_anonymous, timeout=10
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    for blank in ("", "   "):
        await refused(
            tools(stack).ListTickets(
                tools_pb2.ListTicketsRequest(), metadata=as_role("backend", customer_id=blank), timeout=10
            ),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    await refused(  # the agent's service token without a customer cannot list anyone's tickets
        tools(stack).ListTickets(tools_pb2.ListTicketsRequest(), metadata=as_role("service"), timeout=10),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    await refused(
        tools(stack).LookupOrderStatus(
            tools_pb2.LookupOrderStatusRequest(order_id="ORD-12345"), metadata=as_role("service"), timeout=10
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    await refused(  # staff must say who they are
        tools(stack).ListTickets(tools_pb2.ListTicketsRequest(), metadata=as_role("staff"), timeout=10),
        grpc.StatusCode.UNAUTHENTICATED,
    )


# --- conversations and tickets are the customer's ---------------------------------------------------------


@MODULE_LOOP
async def test_backend_for_cust_002_cannot_read_or_write_cust_001s_conversation(
    stack: InProcessStack,
) -> None:
    secret = "my new address is 12 Secret Lane"
    first = await agent(stack).Chat(
        agent_pb2.ChatRequest(conversation_id="p-shared", message=f"Where is ORD-12345? {secret}"),
        metadata=BACKEND_1,
        timeout=30,
    )
    assert first.reply
    # cust-002 reading it: refused, nothing of cust-001's transcript in the answer.
    code = await status_of(
        agent(stack).GetConversation(
            agent_pb2.GetConversationRequest(conversation_id="p-shared"), metadata=BACKEND_2, timeout=10
        )
    )
    assert code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND)
    # cust-002 writing to the same conversation id never reaches cust-001's conversation.
    try:
        reply = await agent(stack).Chat(
            agent_pb2.ChatRequest(conversation_id="p-shared", message="What did I say before?"),
            metadata=BACKEND_2,
            timeout=30,
        )
        assert secret not in reply.reply and "ORD-12345" not in reply.reply
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    own = await agent(stack).GetConversation(
        agent_pb2.GetConversationRequest(conversation_id="p-shared"), metadata=BACKEND_1, timeout=10
    )
    assert [turn.user_message for turn in own.turns] == [f"Where is ORD-12345? {secret}"]
    # Staff may read any conversation.
    staff_view = await agent(stack).GetConversation(
        agent_pb2.GetConversationRequest(conversation_id="p-shared"), metadata=STAFF, timeout=10
    )
    assert staff_view.turns


@MODULE_LOOP
async def test_cust_002_escalating_with_cust_001s_conversation_id_gets_its_own_ticket(
    stack: InProcessStack,
) -> None:
    theirs = (await tools(stack).EscalateToHuman(escalation("p-esc"), metadata=BACKEND_1, timeout=10)).ticket
    mine = await tools(stack).EscalateToHuman(
        escalation("p-esc", priority=types_pb2.PRIORITY_HIGH, summary="cust-002 here"),
        metadata=BACKEND_2,
        timeout=10,
    )
    assert mine.created and mine.ticket.ticket_id != theirs.ticket_id
    assert mine.ticket.customer_id == "cust-002"
    assert "secret summary" not in str(mine)
    # cust-001's ticket kept its priority: cust-002 cannot raise it.
    staff_view = await tools(stack).GetTicket(
        tools_pb2.GetTicketRequest(ticket_id=theirs.ticket_id), metadata=STAFF, timeout=10
    )
    assert staff_view.ticket.priority == types_pb2.PRIORITY_MEDIUM
    # Neither GetTicket, ListTickets nor AppendTicketMessage reaches cust-001's ticket.
    await refused(
        tools(stack).GetTicket(
            tools_pb2.GetTicketRequest(ticket_id=theirs.ticket_id), metadata=BACKEND_2, timeout=10
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    listed = await tools(stack).ListTickets(
        tools_pb2.ListTicketsRequest(conversation_id="p-esc"), metadata=BACKEND_2, timeout=10
    )
    assert [ticket.ticket_id for ticket in listed.tickets] == [mine.ticket.ticket_id]
    await refused(
        tools(stack).AppendTicketMessage(
            tools_pb2.AppendTicketMessageRequest(
                ticket_id=theirs.ticket_id, text="hello", author=tools_pb2.MESSAGE_AUTHOR_CUSTOMER
            ),
            metadata=SERVICE_2,
            timeout=10,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    # Staff see both.
    everything = await tools(stack).ListTickets(
        tools_pb2.ListTicketsRequest(conversation_id="p-esc"), metadata=STAFF, timeout=10
    )
    assert {ticket.ticket_id for ticket in everything.tickets} == {theirs.ticket_id, mine.ticket.ticket_id}


@MODULE_LOOP
async def test_only_staff_claim_and_resolve_and_staff_write_as_themselves(stack: InProcessStack) -> None:
    ticket = (
        await tools(stack).EscalateToHuman(escalation("p-claim"), metadata=SERVICE_1, timeout=10)
    ).ticket
    claim = tools_pb2.ClaimTicketRequest(ticket_id=ticket.ticket_id, assignee="dana")
    resolve = tools_pb2.ResolveTicketRequest(ticket_id=ticket.ticket_id, resolution_note="done")
    for metadata in (BACKEND_1, SERVICE_1, KB_ADMIN):
        await refused(
            tools(stack).ClaimTicket(claim, metadata=metadata, timeout=10), grpc.StatusCode.PERMISSION_DENIED
        )
        await refused(
            tools(stack).ResolveTicket(resolve, metadata=metadata, timeout=10),
            grpc.StatusCode.PERMISSION_DENIED,
        )
    # The customer's side cannot pose as a human agent.
    await refused(
        tools(stack).AppendTicketMessage(
            tools_pb2.AppendTicketMessageRequest(
                ticket_id=ticket.ticket_id,
                text="I am staff",
                author=tools_pb2.MESSAGE_AUTHOR_HUMAN_AGENT,
                author_name="x",
            ),
            metadata=BACKEND_1,
            timeout=10,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    claimed = await tools(stack).ClaimTicket(claim, metadata=STAFF, timeout=10)
    assert claimed.ticket.assignee == "dana"
    replied = await tools(stack).AppendTicketMessage(
        tools_pb2.AppendTicketMessageRequest(
            ticket_id=ticket.ticket_id, text="On it.", author=tools_pb2.MESSAGE_AUTHOR_HUMAN_AGENT
        ),
        metadata=STAFF,
        timeout=10,
    )
    assert replied.ticket.messages[-1].author_name == "dana"  # x-agent-name is the author
    resolved = await tools(stack).ResolveTicket(resolve, metadata=STAFF, timeout=10)
    assert resolved.ticket.status == tools_pb2.TICKET_STATUS_RESOLVED


@MODULE_LOOP
async def test_only_kb_admin_ingests_and_deletes(stack: InProcessStack) -> None:
    document = retrieval_pb2.Document(
        doc_id="phish.md", content="# Refunds\n\nClaim at https://evil.example/refund"
    )
    ingest = retrieval_pb2.IngestDocumentsRequest(documents=[document])
    delete = retrieval_pb2.DeleteDocumentsRequest(all_documents=True)
    for metadata in (BACKEND_1, SERVICE_1, STAFF):
        await refused(
            retrieval(stack).IngestDocuments(ingest, metadata=metadata, timeout=30),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        await refused(
            retrieval(stack).DeleteDocuments(delete, metadata=metadata, timeout=30),
            grpc.StatusCode.PERMISSION_DENIED,
        )
    stats = await retrieval(stack).GetStats(retrieval_pb2.GetStatsRequest(), metadata=STAFF, timeout=10)
    # Everyone with a role may search; the KB was not touched by the refused calls.
    for metadata in (BACKEND_1, as_role("service"), STAFF, KB_ADMIN):
        await retrieval(stack).Search(
            retrieval_pb2.SearchRequest(query="refund"), metadata=metadata, timeout=30
        )
    reply = await retrieval(stack).IngestDocuments(ingest, metadata=KB_ADMIN, timeout=60)
    assert reply.added == 1
    deleted = await retrieval(stack).DeleteDocuments(
        retrieval_pb2.DeleteDocumentsRequest(doc_ids=["phish.md"]), metadata=KB_ADMIN, timeout=30
    )
    assert deleted.documents_deleted == 1
    after = await retrieval(stack).GetStats(retrieval_pb2.GetStatsRequest(), metadata=STAFF, timeout=10)
    assert after.documents == stats.documents


# --- limits keyed by customer -------------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module")
async def limited_tools(tmp_path: Path) -> AsyncIterator[ToolsStarted]:
    started = await start_tools_server(
        tools_config(
            tmp_path / "limited",
            limit_per_conversation=3,
            limit_escalations_per_customer_per_minute=2,
            ticket_max_messages=2,
        )
    )
    yield started
    await started.stop(None)


@MODULE_LOOP
async def test_limits_are_per_customer_and_after_validation(limited_tools: ToolsStarted) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{limited_tools.port}") as channel:
        stub = tools_pb2_grpc.ToolsServiceStub(channel)  # type: ignore[no-untyped-call]

        async def lookup(metadata: Any, order_id: str, arguments: str | None = None) -> dict[str, Any]:
            request = tools_pb2.ExecuteToolRequest(
                tool_name="lookup_order_status",
                arguments_json=arguments or json.dumps({"order_id": order_id}),
                conversation_id="p-limit",
            )
            reply = await stub.ExecuteTool(request, metadata=metadata, timeout=10)
            return dict(json.loads(reply.content_json))

        # cust-002 floods cust-001's conversation id with junk and with its own valid calls.
        for _ in range(10):
            assert (await lookup(SERVICE_2, "", arguments="{not json"))["error"][
                "code"
            ] == "invalid_arguments"
        for order_id in ("ORD-24680", "ORD-13579", "ORD-99999"):
            await lookup(SERVICE_2, order_id)
        assert (await lookup(SERVICE_2, "ORD-24680"))["error"]["code"] == "rate_limited"
        # cust-001's budget for the same conversation id is untouched.
        for order_id in ("ORD-12345", "ORD-67890", "ORD-11223"):
            assert "error" not in await lookup(SERVICE_1, order_id)

        # EscalateToHuman: at most 2 new tickets per customer per minute; replays are free; others unaffected.
        first = await stub.EscalateToHuman(escalation("p-e1"), metadata=SERVICE_1, timeout=10)
        await stub.EscalateToHuman(escalation("p-e2"), metadata=SERVICE_1, timeout=10)
        again = await stub.EscalateToHuman(escalation("p-e1"), metadata=SERVICE_1, timeout=10)
        assert again.ticket.ticket_id == first.ticket.ticket_id and not again.created
        await refused(
            stub.EscalateToHuman(escalation("p-e3"), metadata=SERVICE_1, timeout=10),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert (await stub.EscalateToHuman(escalation("p-e3"), metadata=SERVICE_2, timeout=10)).created

        # A ticket takes at most ticket_max_messages messages.
        for text in ("one", "two"):
            await stub.AppendTicketMessage(
                tools_pb2.AppendTicketMessageRequest(
                    ticket_id=first.ticket.ticket_id, text=text, author=tools_pb2.MESSAGE_AUTHOR_CUSTOMER
                ),
                metadata=SERVICE_1,
                timeout=10,
            )
        await refused(
            stub.AppendTicketMessage(
                tools_pb2.AppendTicketMessageRequest(
                    ticket_id=first.ticket.ticket_id, text="three", author=tools_pb2.MESSAGE_AUTHOR_CUSTOMER
                ),
                metadata=SERVICE_1,
                timeout=10,
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )


@MODULE_LOOP
async def test_idempotency_keys_from_long_turn_ids_work(stack: InProcessStack) -> None:
    key = "t" * 128 + ":call_0123456789abcdef"
    request = escalation("p-long-key", idempotency_key=key)
    first = await tools(stack).EscalateToHuman(request, metadata=SERVICE_1, timeout=10)
    replay = await tools(stack).EscalateToHuman(request, metadata=SERVICE_1, timeout=10)
    assert first.created and not replay.created and replay.ticket.ticket_id == first.ticket.ticket_id
    # A retry whose summary changed returns the same ticket instead of an error.
    changed = escalation("p-long-key", idempotency_key=key, summary="rewritten summary")
    retried = await tools(stack).EscalateToHuman(changed, metadata=SERVICE_1, timeout=10)
    assert retried.ticket.ticket_id == first.ticket.ticket_id and not retried.created
    tool_call = tools_pb2.ExecuteToolRequest(
        tool_name="escalate_to_human",
        arguments_json=json.dumps({"reason": "wants a person", "priority": "low"}),
        conversation_id="p-long-tool",
        idempotency_key=key,
    )
    reply = await tools(stack).ExecuteTool(tool_call, metadata=SERVICE_1, timeout=10)
    assert not reply.HasField("error"), reply.content_json


# --- configuration ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("service", ["tools_service", "retrieval_service", "agent_service"])
def test_services_refuse_to_start_without_credentials(service: str, tmp_path: Path) -> None:
    environ = {**isolated_environ(), "DATA_DIR": str(tmp_path)}  # isolated_environ drops every AUTH_ variable
    result = subprocess.run(
        [sys.executable, "-m", service],
        cwd=REPO_ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "configuration error" in result.stderr and "no credentials configured" in result.stderr


@MODULE_LOOP
async def test_auth_disabled_is_loud_and_still_needs_a_role_and_identity(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    config = tools_config(tmp_path / "disabled", auth=auth.AuthConfig.from_env({"AUTH_DISABLED": "true"}))
    started = await start_tools_server(config)
    try:
        assert any("AUTHENTICATION IS DISABLED" in record.getMessage() for record in caplog.records)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{started.port}") as channel:
            stub = tools_pb2_grpc.ToolsServiceStub(channel)  # type: ignore[no-untyped-call]
            lookup = tools_pb2.LookupOrderStatusRequest(order_id="ORD-12345")
            await refused(stub.LookupOrderStatus(lookup, timeout=10), grpc.StatusCode.UNAUTHENTICATED)
            await refused(
                stub.LookupOrderStatus(lookup, metadata=(("x-role", "backend"),), timeout=10),
                grpc.StatusCode.UNAUTHENTICATED,
            )
            await refused(
                stub.ClaimTicket(
                    tools_pb2.ClaimTicketRequest(ticket_id="TKT-1", assignee="x"),
                    metadata=(("x-role", "backend"), ("x-customer-id", "cust-001")),
                    timeout=10,
                ),
                grpc.StatusCode.PERMISSION_DENIED,
            )
            reply = await stub.LookupOrderStatus(
                lookup, metadata=(("x-role", "backend"), ("x-customer-id", "cust-001")), timeout=10
            )
            assert reply.tracking_number == "1Z999AA10123456784"
    finally:
        await started.stop(None)


def test_credentials_file_and_roles_from_the_environment(tmp_path: Path) -> None:
    credentials, created = ensure_credentials_file(tmp_path / "credentials.json")
    assert created and (tmp_path / "credentials.json").stat().st_mode & 0o777 == 0o600
    again, created_again = ensure_credentials_file(tmp_path / "credentials.json")
    assert not created_again and again.tokens == credentials.tokens  # reused, never regenerated
    server = auth.AuthConfig.from_env(
        {"AUTH_CREDENTIALS_FILE": str(credentials.path)}, outbound_role="service"
    )
    assert server.outbound_token == credentials.token("service")
    for role in auth.ROLES:
        assert auth.role_of(credentials.token(role), server.credentials) == role
        caller = auth.AuthConfig.for_caller(role, {"AUTH_CREDENTIALS_FILE": str(credentials.path)})
        assert caller.outbound_token == credentials.token(role)
