"""Two agent replicas on one Redis: stateless replicas, one conversation, consistent history.

Both replicas are real `agent_service` servers in-process, sharing a real retrieval server, a real tools server
and a scripted OpenAI-compatible model; only Redis holds conversation state (each replica has its own DATA_DIR).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from agent_service.adapters.redis_store import RedisConversationStore
from support.v1 import agent_pb2
from testkit.scripted_openai import Reply, ScriptedOpenAIServer, last_user_message
from tests.scaling.conftest import CUSTOMER, Replica, StartAgent, StartRetrieval

pytestmark = pytest.mark.slow


class GatedModel:
    """Answers every request by echoing it; a message containing HOLD waits until `release` is set."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.user_messages_seen: list[list[str]] = []

    async def __call__(self, request: dict[str, Any]) -> Reply:
        self.user_messages_seen.append(
            [str(message.get("content")) for message in request["messages"] if message.get("role") == "user"]
        )
        message = last_user_message(request)
        if "HOLD" in message:
            self.entered.set()
            await self.release.wait()
        return Reply(content=f"Answer to: {message}")


@pytest.fixture
async def model() -> AsyncIterator[tuple[GatedModel, ScriptedOpenAIServer]]:
    gated = GatedModel()
    server = ScriptedOpenAIServer(gated)
    await server.start()
    yield gated, server
    gated.release.set()
    await server.stop()


@pytest.fixture
async def replicas(
    start_agent: StartAgent,
    start_retrieval: StartRetrieval,
    redis_url: str,
    key_prefix: str,
    model: tuple[GatedModel, ScriptedOpenAIServer],
) -> tuple[Replica, Replica]:
    retrieval = await start_retrieval("retrieval")
    common: dict[str, Any] = {
        "retrieval_addr": f"127.0.0.1:{retrieval.port}",
        "redis_url": redis_url,
        "redis_key_prefix": key_prefix,
        "openai_base_url": model[1].base_url,
        "openai_api_key": "test-key",
    }
    return await start_agent("agent-a", **common), await start_agent("agent-b", **common)


async def chat(replica: Replica, conversation_id: str, turn_id: str, message: str) -> agent_pb2.ChatResponse:
    request = agent_pb2.ChatRequest(conversation_id=conversation_id, turn_id=turn_id, message=message)
    response: agent_pb2.ChatResponse = await replica.stub.Chat(request, metadata=CUSTOMER, timeout=30)
    return response


async def history(replica: Replica, conversation_id: str) -> agent_pb2.GetConversationResponse:
    request = agent_pb2.GetConversationRequest(conversation_id=conversation_id)
    response: agent_pb2.GetConversationResponse = await replica.stub.GetConversation(
        request, metadata=CUSTOMER, timeout=10
    )
    return response


async def test_replicas_really_share_redis(replicas: tuple[Replica, Replica]) -> None:
    first, second = replicas
    assert isinstance(first.started.store, RedisConversationStore)
    assert isinstance(second.started.store, RedisConversationStore)
    assert first.started.port != second.started.port


async def test_alternating_turns_build_one_consistent_history(
    replicas: tuple[Replica, Replica], model: tuple[GatedModel, ScriptedOpenAIServer]
) -> None:
    gated, _ = model
    messages = [f"Question {index}: how long do refunds take?" for index in range(6)]
    for index, message in enumerate(messages):
        replica = replicas[index % 2]
        response = await chat(replica, "conv-alt", f"t{index}", message)
        assert response.reply == f"Answer to: {message}"
        assert not response.replayed
        # The replica that served this turn sent the model every earlier message, whichever replica took it.
        assert gated.user_messages_seen[-1][-(index + 1) :] == messages[: index + 1]
    views = [await history(replica, "conv-alt") for replica in replicas]
    for view in views:
        assert [turn.turn_id for turn in view.turns] == [f"t{index}" for index in range(6)]
        assert [turn.user_message for turn in view.turns] == messages
        assert [turn.reply for turn in view.turns] == [f"Answer to: {message}" for message in messages]
        create_times = [turn.create_time.ToNanoseconds() for turn in view.turns]
        assert create_times == sorted(create_times)
    assert views[0] == views[1]


async def test_a_retried_turn_on_the_other_replica_is_replayed(
    replicas: tuple[Replica, Replica], model: tuple[GatedModel, ScriptedOpenAIServer]
) -> None:
    first, second = replicas
    _, server = model
    original = await chat(first, "conv-retry", "turn-1", "Where is my parcel?")
    calls = len(server.requests)
    retried = await chat(second, "conv-retry", "turn-1", "Where is my parcel?")
    assert retried.replayed and not original.replayed
    assert retried.reply == original.reply
    assert len(server.requests) == calls, "the replay must not call the model again"
    # Reusing the turn id for a different message is refused on either replica.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await chat(second, "conv-retry", "turn-1", "Something else entirely")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    view = await history(first, "conv-retry")
    assert [turn.turn_id for turn in view.turns] == ["turn-1"]


async def test_a_concurrent_message_on_the_other_replica_is_aborted(
    replicas: tuple[Replica, Replica], model: tuple[GatedModel, ScriptedOpenAIServer]
) -> None:
    first, second = replicas
    gated, _ = model
    in_flight = asyncio.create_task(chat(first, "conv-busy", "turn-1", "HOLD: where is my refund?"))
    await asyncio.wait_for(gated.entered.wait(), timeout=20)
    with pytest.raises(grpc.aio.AioRpcError) as busy:
        await chat(second, "conv-busy", "turn-2", "Hello? Anyone there?")
    assert busy.value.code() == grpc.StatusCode.ABORTED
    # Even a retry of the in-flight turn itself waits its turn rather than running twice.
    with pytest.raises(grpc.aio.AioRpcError) as duplicate:
        await chat(second, "conv-busy", "turn-1", "HOLD: where is my refund?")
    assert duplicate.value.code() == grpc.StatusCode.ABORTED
    gated.release.set()
    finished = await asyncio.wait_for(in_flight, timeout=20)
    assert finished.reply == "Answer to: HOLD: where is my refund?"
    # Once the first turn is stored and its lease released, the other replica takes the next turn.
    after = await chat(second, "conv-busy", "turn-2", "Hello? Anyone there?")
    assert not after.replayed
    view = await history(second, "conv-busy")
    assert [turn.turn_id for turn in view.turns] == ["turn-1", "turn-2"]


async def test_a_crashed_replicas_lease_expires(
    replicas: tuple[Replica, Replica], redis_url: str, key_prefix: str
) -> None:
    _, survivor = replicas
    crashed = RedisConversationStore.from_url(redis_url, key_prefix=key_prefix)
    try:
        # A replica took the conversation's lease and died without releasing it.
        assert await crashed.acquire_lock("conv-crash", "dead-replica", 1.0)
    finally:
        await crashed.close()
    with pytest.raises(grpc.aio.AioRpcError) as busy:
        await chat(survivor, "conv-crash", "turn-1", "How long do refunds take?")
    assert busy.value.code() == grpc.StatusCode.ABORTED
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        try:
            response = await chat(survivor, "conv-crash", "turn-1", "How long do refunds take?")
            break
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.ABORTED
            assert loop.time() < deadline, "the dead replica's lease never expired"
            await asyncio.sleep(0.1)
    assert response.reply == "Answer to: How long do refunds take?"


async def test_many_conversations_at_once_across_both_replicas(
    replicas: tuple[Replica, Replica], model: tuple[GatedModel, ScriptedOpenAIServer]
) -> None:
    """Ten conversations in parallel, each alternating replicas turn by turn: every history comes out whole."""
    turns_each = 4

    async def conversation(number: int) -> None:
        for index in range(turns_each):
            replica = replicas[(number + index) % 2]
            message = f"Conversation {number}, question {index}: how long does shipping take?"
            response = await chat(replica, f"conv-many-{number}", f"t{index}", message)
            assert response.reply == f"Answer to: {message}"

    await asyncio.gather(*(conversation(number) for number in range(10)))
    for number in range(10):
        for replica in replicas:
            view = await history(replica, f"conv-many-{number}")
            assert [turn.turn_id for turn in view.turns] == [f"t{index}" for index in range(turns_each)]
            assert all(f"Conversation {number}," in turn.user_message for turn in view.turns)
