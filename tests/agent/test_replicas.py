"""Two agent replicas sharing one real Redis: the in-flight lock and turn replay hold across replicas."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator

import grpc
import pytest
import redis

from devstack import free_port
from support.v1 import agent_pb2
from testkit.scripted_openai import Reply
from tests.agent.conftest import CUSTOMER, StartAgent, StartModel
from tests.agent.test_conversations import wait_for

REDIS_SERVER = shutil.which("redis-server")


@pytest.fixture
def redis_url() -> Iterator[str]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, socket_timeout=1)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                process.poll()
                if process.returncode is not None:
                    pytest.fail("redis-server exited")
                time.sleep(0.02)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_replicas_share_the_lock_and_replay(
    start_model: StartModel, start_agent: StartAgent, redis_url: str
) -> None:
    release = asyncio.Event()

    async def responder(_: dict[str, object]) -> Reply:
        await release.wait()
        return Reply(content="Express shipping takes 1-2 business days [1].")

    model = await start_model(responder)
    first = await start_agent(model_server=model, redis_url=redis_url)
    second = await start_agent(model_server=model, redis_url=redis_url)
    request = agent_pb2.ChatRequest(
        conversation_id="rep-1", message="How long does express shipping take?", turn_id="t-1"
    )
    running = asyncio.ensure_future(first.stub.Chat(request, metadata=CUSTOMER))
    await wait_for(lambda: len(model.requests) == 1)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await second.stub.Chat(
            agent_pb2.ChatRequest(conversation_id="rep-1", message="hello?"), metadata=CUSTOMER
        )
    assert raised.value.code() == grpc.StatusCode.ABORTED
    release.set()
    original = await running
    replayed = await second.stub.Chat(request, metadata=CUSTOMER)
    assert replayed.replayed and replayed.reply == original.reply
    assert len(model.requests) == 1
    transcript = await second.stub.GetConversation(agent_pb2.GetConversationRequest(conversation_id="rep-1"))
    assert [turn.turn_id for turn in transcript.turns] == ["t-1"]
