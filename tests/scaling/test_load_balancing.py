"""Client-side load balancing: the agent round-robins Search over several retrieval replicas and keeps
answering when one of them dies mid-run.

The replicas are real retrieval servers in-process, each on its own DATA_DIR ingested with the same KB (two
embedded Chroma clients must not share one directory; at scale they share a Chroma server instead). The agent
uses the offline engine, so every turn's answer depends on retrieval having worked: `knowledge_gap` is False
only when a replica answered the turn's Search.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent_service.adapters import channels
from agent_service.adapters.channels import channel_target
from devstack import free_port
from devstack.inprocess import tools_config
from retrieval_service.server import StartedServer as RetrievalStarted
from support.v1 import agent_pb2
from tests.scaling.conftest import CUSTOMER, Replica, StartAgent, StartRetrieval
from tools_service.server import StartedServer as ToolsStarted
from tools_service.server import start_server as start_tools_server

pytestmark = pytest.mark.slow

QUESTIONS = (
    "How long does a refund take to reach my card?",
    "How do I return an item I don't want?",
    "How long does standard shipping take?",
    "How can I track my order?",
)


class SearchTap:
    """Counts the Searches each replica completed; can make one replica's next Search hang until killed."""

    def __init__(self) -> None:
        self.completed: Counter[str] = Counter()
        self.hang: dict[str, asyncio.Event] = {}
        self.hanging = asyncio.Event()

    def install(self, name: str, started: RetrievalStarted, monkeypatch: pytest.MonkeyPatch) -> None:
        search: Callable[..., Awaitable[Any]] = started.kb.search

        async def tapped(*args: Any, **kwargs: Any) -> Any:
            gate = self.hang.pop(name, None)
            if gate is not None:
                self.hanging.set()
                await gate.wait()  # never set: the replica is killed with this Search in flight
            result = await search(*args, **kwargs)
            self.completed[name] += 1
            return result

        monkeypatch.setattr(started.kb, "search", tapped)


async def turn(agent: Replica, number: int) -> agent_pb2.ChatResponse:
    request = agent_pb2.ChatRequest(
        conversation_id=f"lb-{number}", turn_id=f"t-{number}", message=QUESTIONS[number % len(QUESTIONS)]
    )
    response: agent_pb2.ChatResponse = await agent.stub.Chat(request, metadata=CUSTOMER, timeout=30)
    return response


def assert_answered(responses: list[agent_pb2.ChatResponse]) -> None:
    for response in responses:
        assert not response.knowledge_gap, f"turn {response.turn_id} lost retrieval: {response.reply!r}"
        assert response.sources, f"turn {response.turn_id} has no sources"


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("127.0.0.1:50052", "127.0.0.1:50052"),
        ("10.0.0.1:50052,10.0.0.2:50052", "ipv4:10.0.0.1:50052,10.0.0.2:50052"),
        (" 10.0.0.1:1 , 10.0.0.2:2 ,", "ipv4:10.0.0.1:1,10.0.0.2:2"),
        (
            "dns:///retrieval.support.svc.cluster.local:50052",
            "dns:///retrieval.support.svc.cluster.local:50052",
        ),
        ("ipv4:10.0.0.1:1,10.0.0.2:2", "ipv4:10.0.0.1:1,10.0.0.2:2"),
    ],
)
def test_addresses_become_grpc_targets(address: str, target: str) -> None:
    assert channel_target(address) == target


async def two_replicas_and_an_agent(
    start_retrieval: StartRetrieval, start_agent: StartAgent, monkeypatch: pytest.MonkeyPatch
) -> tuple[RetrievalStarted, RetrievalStarted, Replica, SearchTap]:
    first, second = await start_retrieval("retrieval-1"), await start_retrieval("retrieval-2")
    tap = SearchTap()
    tap.install("retrieval-1", first, monkeypatch)
    tap.install("retrieval-2", second, monkeypatch)
    agent = await start_agent(
        "agent",
        retrieval_addr=f"127.0.0.1:{first.port},127.0.0.1:{second.port}",
        retrieval_timeout_seconds=10.0,
    )
    return first, second, agent, tap


async def test_round_robin_survives_a_replica_kill(
    start_retrieval: StartRetrieval, start_agent: StartAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _, agent, tap = await two_replicas_and_an_agent(start_retrieval, start_agent, monkeypatch)
    numbers = itertools.count()

    # Both replicas take traffic.
    before = [await turn(agent, next(numbers)) for _ in range(8)]
    assert_answered(before)
    assert tap.completed["retrieval-1"] >= 2 and tap.completed["retrieval-2"] >= 2, tap.completed

    # Replica 1 dies between two turns of the run; the very next turns must not notice.
    await first.stop(0)
    served_before = tap.completed["retrieval-1"]
    after = [await turn(agent, next(numbers)) for _ in range(10)]
    assert_answered(after)
    assert tap.completed["retrieval-1"] == served_before
    assert tap.completed["retrieval-2"] >= 10


def search_retries(code: str) -> bool:
    """Whether the agent's channel service config retries Search on `code`."""
    config = json.loads(channels._SERVICE_CONFIG)
    search = {"service": "support.v1.RetrievalService", "method": "Search"}
    for method in config.get("methodConfig", []):
        if search in method.get("name", []):
            return code in method.get("retryPolicy", {}).get("retryableStatusCodes", [])
    return False


def test_read_only_search_is_retried_on_unavailable_and_cancelled() -> None:
    assert search_retries("UNAVAILABLE")
    assert search_retries("CANCELLED")


async def test_a_search_in_flight_on_a_killed_replica_is_retried(
    start_retrieval: StartRetrieval, start_agent: StartAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _, agent, tap = await two_replicas_and_an_agent(start_retrieval, start_agent, monkeypatch)
    numbers = itertools.count()
    assert_answered([await turn(agent, next(numbers)) for _ in range(4)])

    # Kill replica 1 while one of its Searches is in flight and other turns are running.
    tap.hang["retrieval-1"] = asyncio.Event()
    during = [asyncio.create_task(turn(agent, next(numbers))) for _ in range(6)]
    await asyncio.wait_for(tap.hanging.wait(), timeout=20)
    await first.stop(0)
    assert_answered(list(await asyncio.gather(*during)))
    assert_answered([await turn(agent, next(numbers)) for _ in range(4)])


async def test_replicas_sharing_a_chroma_server(
    start_retrieval: StartRetrieval,
    start_agent: StartAgent,
    chroma_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The production shape: replicas hold no vectors, a `chroma run` server does; ingest once, search anywhere."""
    server = {"chroma_host": "127.0.0.1", "chroma_port": chroma_port}
    first = await start_retrieval("retrieval-1", **server)  # ingests the KB into the server
    second = await start_retrieval("retrieval-2", ingest=False, **server)
    tap = SearchTap()
    tap.install("retrieval-1", first, monkeypatch)
    tap.install("retrieval-2", second, monkeypatch)
    agent = await start_agent("agent", retrieval_addr=f"127.0.0.1:{first.port},127.0.0.1:{second.port}")
    numbers = itertools.count()
    assert_answered([await turn(agent, next(numbers)) for _ in range(8)])
    # The replica that ingested nothing answers from the shared server.
    assert tap.completed["retrieval-2"] >= 2, tap.completed
    await first.stop(0)
    assert_answered([await turn(agent, next(numbers)) for _ in range(6)])
    assert tap.completed["retrieval-2"] >= 8


async def test_a_dns_target_resolves_and_serves(
    start_retrieval: StartRetrieval, start_agent: StartAgent
) -> None:
    retrieval = await start_retrieval("retrieval")
    agent = await start_agent("agent", retrieval_addr=f"dns:///localhost:{retrieval.port}")
    responses = [await turn(agent, number) for number in range(3)]
    assert_answered(responses)


async def test_a_replica_that_is_down_at_start_is_skipped(
    start_retrieval: StartRetrieval, start_agent: StartAgent
) -> None:
    retrieval = await start_retrieval("retrieval")
    # Nothing listens on the first address (a replica still starting, or gone).
    dead_port = free_port()
    agent = await start_agent("agent", retrieval_addr=f"127.0.0.1:{dead_port},127.0.0.1:{retrieval.port}")
    responses = [await turn(agent, number) for number in range(6)]
    assert_answered(responses)


async def test_the_tools_target_balances_too(
    tmp_path: Path, start_retrieval: StartRetrieval, start_agent: StartAgent, tools: ToolsStarted
) -> None:
    """TOOLS_ADDR takes the same lists: a second tools replica (its own demo stores), one address with nothing
    listening, and a replica stopped mid-run; every order lookup still reaches a tools server."""
    retrieval = await start_retrieval("retrieval")
    other = await start_tools_server(tools_config(tmp_path / "tools-2"))
    try:
        addresses = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{tools.port}", f"127.0.0.1:{other.port}"]
        agent = await start_agent(
            "agent", retrieval_addr=f"127.0.0.1:{retrieval.port}", tools_addr=",".join(addresses)
        )

        async def lookup(number: int) -> None:
            request = agent_pb2.ChatRequest(
                conversation_id=f"orders-{number}", turn_id="t", message="Where is my order ORD-12345?"
            )
            response = await agent.stub.Chat(request, metadata=CUSTOMER, timeout=30)
            [call] = response.tool_calls
            assert call.name == "lookup_order_status" and not call.is_error, call.result_json
            assert json.loads(call.result_json)["tracking_number"] == "1Z999AA10123456784"

        for number in range(4):
            await lookup(number)
        await other.stop(0)
        for number in range(4, 8):
            await lookup(number)
    finally:
        await other.stop(None)
