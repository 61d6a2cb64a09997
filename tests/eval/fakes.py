"""In-process stand-ins for AgentService and RetrievalService (real gRPC on port 0) for the runner's tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from service_kit.grpc_server import bind, new_server, set_status
from service_kit.metadata import CUSTOMER_ID_KEY, metadata_value
from support.v1 import agent_pb2, agent_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc, types_pb2

Script = Callable[[str, str], agent_pb2.ChatResponse]


FAKE_ACTION_ID = "act-1"


def action_response(reply: str, state: types_pb2.ActionState) -> agent_pb2.ChatResponse:
    """A reply carrying the fake's one cancel_order action in `state`."""
    return agent_pb2.ChatResponse(
        reply=reply,
        action=types_pb2.Action(
            action_id=FAKE_ACTION_ID,
            tool_name="cancel_order",
            summary="Cancel order ORD-67890 (2 items, $84.00)",
            state=state,
        ),
        state=agent_pb2.CONVERSATION_STATE_BOT,
        usage=agent_pb2.Usage(model="fake-model"),
    )


def scripted_reply(message: str, customer_id: str) -> agent_pb2.ChatResponse:
    """A tiny deterministic agent: refunds cite refunds.md, 'cancel ORD-...' proposes a cancellation that "yes"
    runs and "no" drops, ORD-... looks the order up, 'human' escalates."""
    text = message.lower()
    if text.startswith("cancel ord-"):
        return action_response(
            "Cancel order ORD-67890 (2 items, $84.00). Shall I go ahead?", types_pb2.ACTION_STATE_PENDING
        )
    if text == "yes":
        return action_response("Done: order ORD-67890 is cancelled.", types_pb2.ACTION_STATE_EXECUTED)
    if text == "no":
        return action_response("OK, nothing changed.", types_pb2.ACTION_STATE_DECLINED)
    if "refund" in text:
        return agent_pb2.ChatResponse(
            reply="You can get a refund within 30 days.",
            sources=[
                types_pb2.SourceRef(doc_id="refunds.md", chunk_id="r1", distance=0.2),
                types_pb2.SourceRef(doc_id="shipping.md", chunk_id="s1", distance=0.5),
            ],
            state=agent_pb2.CONVERSATION_STATE_BOT,
            usage=agent_pb2.Usage(model="fake-model"),
        )
    if "ord-" in text:
        order_id = message[text.index("ord-") :][:9]
        return agent_pb2.ChatResponse(
            reply=f"Order {order_id} has shipped.",
            tool_calls=[
                agent_pb2.ToolCall(
                    id="call_1",
                    name="lookup_order_status",
                    arguments_json=f'{{"order_id": "{order_id}"}}',
                    result_json=f'{{"status": "shipped", "customer": "{customer_id}"}}',
                )
            ],
            state=agent_pb2.CONVERSATION_STATE_BOT,
            usage=agent_pb2.Usage(model="fake-model"),
        )
    if "human" in text:
        return agent_pb2.ChatResponse(
            reply="I've asked a colleague to take over.",
            escalation=agent_pb2.Escalation(
                ticket_id="TCK-1",
                priority=types_pb2.PRIORITY_MEDIUM,
                reason=types_pb2.ESCALATION_REASON_CUSTOMER_REQUEST,
            ),
            state=agent_pb2.CONVERSATION_STATE_PENDING_HUMAN,
            usage=agent_pb2.Usage(model="fake-model"),
        )
    return agent_pb2.ChatResponse(
        reply="I don't know the answer to that.",
        knowledge_gap=True,
        state=agent_pb2.CONVERSATION_STATE_BOT,
        usage=agent_pb2.Usage(model="fake-model"),
    )


@dataclass
class FakeAgent(agent_pb2_grpc.AgentServiceServicer):
    script: Script = scripted_reply
    requests: list[tuple[str, agent_pb2.ChatRequest]] = field(default_factory=list)
    # (customer id, "confirm" | "decline", request) of every button press.
    presses: list[tuple[str, str, agent_pb2.ConfirmActionRequest | agent_pb2.DeclineActionRequest]] = field(
        default_factory=list
    )

    async def ConfirmAction(  # noqa: N802 - gRPC method name
        self, request: agent_pb2.ConfirmActionRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ConfirmActionResponse:
        self.presses.append((metadata_value(context, CUSTOMER_ID_KEY), "confirm", request))
        response = action_response("Done: order ORD-67890 is cancelled.", types_pb2.ACTION_STATE_EXECUTED)
        return agent_pb2.ConfirmActionResponse(response=response)

    async def DeclineAction(  # noqa: N802 - gRPC method name
        self, request: agent_pb2.DeclineActionRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.DeclineActionResponse:
        self.presses.append((metadata_value(context, CUSTOMER_ID_KEY), "decline", request))
        response = action_response("OK, nothing changed.", types_pb2.ACTION_STATE_DECLINED)
        return agent_pb2.DeclineActionResponse(response=response)

    async def Chat(  # noqa: N802 - gRPC method name
        self, request: agent_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ChatResponse:
        customer_id = metadata_value(context, CUSTOMER_ID_KEY)
        self.requests.append((customer_id, request))
        if request.message == "boom":
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        response = self.script(request.message, customer_id)
        response.conversation_id = request.conversation_id
        response.turn_id = request.turn_id
        return response


@dataclass
class FakeRetrieval(retrieval_pb2_grpc.RetrievalServiceServicer):
    documents: list[retrieval_pb2.Document] = field(default_factory=list)

    async def IngestDocuments(  # noqa: N802 - gRPC method name
        self, request: retrieval_pb2.IngestDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.IngestDocumentsResponse:
        self.documents.extend(request.documents)
        return retrieval_pb2.IngestDocumentsResponse(
            added=len(request.documents),
            results=[
                retrieval_pb2.DocumentResult(doc_id=d.doc_id, outcome=retrieval_pb2.DOCUMENT_OUTCOME_ADDED)
                for d in request.documents
            ],
        )


@dataclass
class FakeStack:
    server: grpc.aio.Server
    agent: FakeAgent
    retrieval: FakeRetrieval
    addr: str


async def start_fake_stack() -> FakeStack:
    names = ["support.v1.AgentService", "support.v1.RetrievalService"]
    server, health = new_server(names)
    agent = FakeAgent()
    retrieval = FakeRetrieval()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(agent, server)  # type: ignore[no-untyped-call]
    retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(retrieval, server)  # type: ignore[no-untyped-call]
    port = bind(server, "127.0.0.1:0")
    await server.start()
    await set_status(health, names, serving=True)
    return FakeStack(server, agent, retrieval, f"127.0.0.1:{port}")
