"""Leases that hold, on the real stores (SQLite file, redis-server): a turn slower than its lease keeps the
conversation (the lease is renewed while it runs), so a second turn on another replica is refused; a Redis
outage is `StoreUnavailableError` (UNAVAILABLE), never a driver error, and leaves no stuck lease.

The turn runs through `TurnRunner` with the in-memory retrieval/tools/model fakes of the turn-runner tests (the
model is slow on purpose); the stores are real. `test_agent_replicas`-style gRPC tests follow below.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import grpc
import pytest

from agent_service import guardrails
from agent_service.adapters.redis_store import RedisConversationStore
from agent_service.conversation_store import ConversationStore
from agent_service.errors import ConversationBusyError, StoreUnavailableError
from agent_service.turn import TurnRunner
from agent_service.turn_contract import FinalEvent, TurnRequest, TurnSettings
from support.v1 import agent_pb2
from testkit.scripted_openai import Reply, ScriptedOpenAIServer
from tests.agent.test_turn_runner import POLICY, FakeRetrieval, FakeTools, ScriptedModel, _answer
from tests.scaling.conftest import CUSTOMER, StartAgent, StartRetrieval, StoreFactory, start_redis, stop_redis


def _runner(store: ConversationStore, settings: TurnSettings, delay: float = 0.0) -> TurnRunner:
    return TurnRunner(
        settings=settings,
        model=ScriptedModel(_answer("Thirty days [1]."), delay=delay),
        retrieval=FakeRetrieval(),
        tools=FakeTools(),
        store=store,
        policy=POLICY,
        guardrails=guardrails,
    )


async def _final(runner: TurnRunner, conversation_id: str, message: str = "Returns?") -> FinalEvent:
    events = [
        event async for event in runner.run(TurnRequest(conversation_id, message, customer_id="cust-1"))
    ]
    final = events[-1]
    assert isinstance(final, FinalEvent)
    return final


async def test_a_turn_slower_than_its_lease_keeps_the_conversation(make_store: StoreFactory) -> None:
    settings = TurnSettings(turn_lease_seconds=0.6, turn_deadline_seconds=10)
    slow = _runner(make_store(), settings, delay=1.8)  # three leases long
    other_replica = _runner(make_store(), settings)
    first = asyncio.create_task(_final(slow, "conv-slow"))
    for _ in range(3):  # well past the first lease's expiry, twice
        await asyncio.sleep(0.45)
        with pytest.raises(ConversationBusyError):
            await _final(other_replica, "conv-slow", "Me too?")
    assert (await first).result.reply == "Thirty days [1]."
    assert (await _final(other_replica, "conv-slow", "And now?")).result.reply == "Thirty days [1]."


async def test_a_redis_outage_is_store_unavailable_and_leaves_no_stuck_lease(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis")
    lease = 1.5
    settings = TurnSettings(turn_lease_seconds=lease, turn_deadline_seconds=5)

    def store() -> RedisConversationStore:
        return RedisConversationStore.from_url(server.url, socket_timeout_seconds=0.3, retries=0)

    first, second = store(), store()
    try:
        slow = _runner(first, settings, delay=0.8)
        turn = asyncio.create_task(_final(slow, "conv-outage"))
        await asyncio.sleep(0.3)  # the turn holds the lease and waits for the model
        os.kill(server.process.pid, signal.SIGSTOP)  # Redis hangs: every command times out
        try:
            with pytest.raises(StoreUnavailableError):
                await turn  # storing the turn fails; releasing the lease fails too (logged, not raised)
            with pytest.raises(StoreUnavailableError):
                await second.acquire_lock("conv-outage", "probe", 30)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        # The lease the failed turn could not release expires by itself: the conversation is usable again.
        deadline = time.monotonic() + lease + 3
        while not await second.acquire_lock("conv-outage", "after-outage", 30):
            assert time.monotonic() < deadline, "the lease stayed stuck after the outage"
            await asyncio.sleep(0.1)
        await second.release_lock("conv-outage", "after-outage")
        stop_redis(server)  # Redis gone for good: refused connections are StoreUnavailableError too
        with pytest.raises(StoreUnavailableError):
            await _final(_runner(second, settings), "conv-outage")
    finally:
        await first.close()
        await second.close()
        if server.process.poll() is None:
            stop_redis(server)


# --- through gRPC: real replicas on Redis, a slow scripted model --------------------------------------------


@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_a_second_turn_is_aborted_while_a_slow_first_turn_outlives_its_lease(
    store: str, start_retrieval: StartRetrieval, start_agent: StartAgent, request: pytest.FixtureRequest
) -> None:
    """SQLite: both turns reach one agent (its own file); Redis: two replicas share the conversation."""
    retrieval = await start_retrieval("retrieval")
    model = ScriptedOpenAIServer(lambda _: Reply(content="Returns take thirty days.", delay=3.0))
    await model.start()
    try:
        overrides: dict[str, object] = {
            "retrieval_addr": f"127.0.0.1:{retrieval.port}",
            "turn_lease_seconds": 1.0,
            "turn_deadline_seconds": 10.0,
            "openai_base_url": model.base_url,
            "openai_api_key": "test-key",
            "model_timeout_seconds": 10.0,
        }
        if store == "redis":
            overrides["redis_url"] = request.getfixturevalue("redis_url")
            overrides["redis_key_prefix"] = request.getfixturevalue("key_prefix")
        a = await start_agent("a", **overrides)
        b = await start_agent("b", **overrides) if store == "redis" else a
        chat = agent_pb2.ChatRequest(conversation_id="conv-lease", message="How do returns work?")
        first = asyncio.ensure_future(a.stub.Chat(chat, metadata=CUSTOMER, timeout=30))
        await asyncio.sleep(1.8)  # the first turn's lease (1 s) would have expired without renewal
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await b.stub.Chat(
                agent_pb2.ChatRequest(conversation_id="conv-lease", message="Hello?"),
                metadata=CUSTOMER,
                timeout=30,
            )
        assert refused.value.code() == grpc.StatusCode.ABORTED
        response = await first
        assert response.reply.startswith("Returns take thirty days.")
    finally:
        await model.stop()


async def test_a_model_slower_than_the_turn_deadline_is_answered_offline_and_the_next_turn_runs(
    start_retrieval: StartRetrieval, start_agent: StartAgent, tmp_path: Path
) -> None:
    # Issue 18: the model call is budgeted against the turn's deadline (TURN_DEADLINE_SECONDS, or the caller's
    # if sooner): a model slower than that is answered by the offline engine in time, not DEADLINE_EXCEEDED.
    # (A turn stopped at its deadline storing nothing is covered in tests/agent/test_turn_runner.py.)
    retrieval = await start_retrieval("retrieval")
    replies = iter([Reply(content="late", delay=10.0), Reply(content="On time.")])
    model = ScriptedOpenAIServer(lambda _: next(replies))
    await model.start()
    try:
        agent = await start_agent(
            "agent",
            retrieval_addr=f"127.0.0.1:{retrieval.port}",
            turn_deadline_seconds=3.0,
            openai_base_url=model.base_url,
            openai_api_key="test-key",
            model_timeout_seconds=10.0,
        )
        request = agent_pb2.ChatRequest(conversation_id="conv-deadline", message="How do returns work?")
        started = time.monotonic()
        first = await agent.stub.Chat(request, metadata=CUSTOMER, timeout=30)
        assert first.usage.fallback and time.monotonic() - started < 4
        assert len(model.requests) == 1
        response = await agent.stub.Chat(
            agent_pb2.ChatRequest(conversation_id="conv-deadline", message="And how long do refunds take?"),
            metadata=CUSTOMER,
            timeout=30,
        )  # the lock was released
        assert response.reply.startswith("On time.") and not response.replayed
    finally:
        await model.stop()


async def test_a_redis_outage_is_unavailable_not_internal(
    start_retrieval: StartRetrieval, start_agent: StartAgent, tmp_path: Path
) -> None:
    server = start_redis(tmp_path / "own-redis")
    retrieval = await start_retrieval("retrieval", ingest=False)
    try:
        agent = await start_agent("agent", retrieval_addr=f"127.0.0.1:{retrieval.port}", redis_url=server.url)
        request = agent_pb2.ChatRequest(conversation_id="conv-redis-down", message="Hello")
        await agent.stub.Chat(request, metadata=CUSTOMER, timeout=30)
    finally:
        stop_redis(server)
    with pytest.raises(grpc.aio.AioRpcError) as down:
        await agent.stub.Chat(
            agent_pb2.ChatRequest(conversation_id="conv-redis-down", message="Still there?"),
            metadata=CUSTOMER,
            timeout=30,
        )
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
