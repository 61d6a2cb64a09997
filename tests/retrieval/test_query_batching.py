"""Concurrent Search calls share one query-embedding pass (retrieval_service.query_batcher), and each query
still gets its own hits: over real gRPC with the sample KB, and the batcher on its own."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from devstack.credentials import role_channel
from retrieval_service.adapters.embedding import MiniLMEmbedding
from retrieval_service.config import Config
from retrieval_service.query_batcher import QueryBatcher
from retrieval_service.server import start_server
from service_kit.embedding import Vector
from support.v1 import retrieval_pb2
from tests.retrieval.helpers import retrieval_stub

QUERIES = {
    "How long does express shipping take?": "shipping-delivery-times.md",
    "How do I reset my password?": "account-password-reset.md",
    "How do I track my order?": "order-tracking.md",
    "Do gift cards expire?": "gift-cards.md",
    "Which payment methods do you accept?": "payment-methods.md",
}


class GatedEmbedding(MiniLMEmbedding):
    """The shared model, but the first query embedding waits until the test opens the gate, so the searches
    sent meanwhile are known to queue behind it (no timing involved)."""

    def __init__(self, shared: MiniLMEmbedding) -> None:
        super().__init__(shared.model)
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.calls: list[list[str]] = []

    def embed_batch(self, texts: list[str]) -> list[Vector]:
        self.calls.append(list(texts))
        if len(self.calls) == 1:
            self.entered.set()
            self.gate.wait(timeout=60)
        return super().embed_batch(texts)


async def _wait_until(condition: Callable[[], bool], polls: int = 6000) -> None:
    """Polls `condition()` while the event loop runs (the gRPC calls must reach the server first); gives up
    after `polls` polls of 5 ms, so a slow machine only makes it wait longer, never fail."""
    for _ in range(polls):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


async def test_concurrent_searches_are_batched_and_each_gets_its_own_hits(
    config: Config, kb_template: Path, embedding: MiniLMEmbedding
) -> None:
    shutil.copytree(kb_template / "chroma", config.data_dir / "chroma")
    gated = GatedEmbedding(embedding)
    server = await start_server(replace(config, query_batch=16), embedding=gated)
    try:
        async with role_channel(f"127.0.0.1:{server.port}") as channel:
            stub = retrieval_stub(channel)
            batcher = server.kb.query_batcher
            assert batcher is not None
            queries = list(QUERIES)
            first = asyncio.ensure_future(
                stub.Search(retrieval_pb2.SearchRequest(query=queries[0]), timeout=60)
            )
            await asyncio.to_thread(gated.entered.wait, 60)
            rest = [
                asyncio.ensure_future(stub.Search(retrieval_pb2.SearchRequest(query=query), timeout=60))
                for query in queries[1:]
            ]
            await _wait_until(lambda: batcher.queued == len(rest))
            gated.gate.set()
            together = [await first, *await asyncio.gather(*rest)]
            # The first query went alone; the others shared one embedding pass.
            assert list(batcher.recent_batch_sizes)[:2] == [1, len(rest)]
            assert gated.calls[1] == queries[1:]
            # Each answer is the one its query gets when it is sent on its own.
            for query, reply in zip(queries, together, strict=True):
                alone = await stub.Search(retrieval_pb2.SearchRequest(query=query), timeout=60)
                assert [hit.chunk_id for hit in reply.hits] == [hit.chunk_id for hit in alone.hits], query
                assert [hit.distance for hit in reply.hits] == pytest.approx(
                    [hit.distance for hit in alone.hits], abs=1e-5
                )
                assert reply.hits and reply.hits[0].doc_id == QUERIES[query], query
    finally:
        gated.gate.set()
        await server.stop(None)


class GatedModel:
    """A stand-in embedding function whose first pass waits for the gate: the queries sent meanwhile queue.
    Its vectors are [len(text)] * 3; "broken model" in a batch makes the pass fail."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.passes: list[list[str]] = []

    def __call__(self, texts: list[str]) -> list[Vector]:
        self.passes.append(list(texts))
        if len(self.passes) == 1:
            self.entered.set()
            self.gate.wait(timeout=60)
        if "broken model" in texts:
            raise RuntimeError("the model failed")
        return [np.full(3, float(len(text)), dtype=np.float32) for text in texts]


async def _behind_a_held_pass(
    batcher: QueryBatcher, model: GatedModel, queued: Sequence[Awaitable[float]]
) -> tuple[float, list[float | BaseException]]:
    """Runs "first" (held by the model), queues `queued` behind it, then releases the model."""
    first = asyncio.ensure_future(batcher.run("first", _length))
    await asyncio.to_thread(model.entered.wait, 60)
    tasks = [asyncio.ensure_future(item) for item in queued]
    await _wait_until(lambda: batcher.queued == len(tasks))
    model.gate.set()
    results: list[float | BaseException] = await asyncio.gather(*tasks, return_exceptions=True)
    return await first, results


def _length(vector: Vector) -> float:
    if vector[0] == len("bad"):
        raise ValueError("bad query")
    return float(vector[0])


async def test_a_failing_query_fails_alone_and_batches_keep_arrival_order() -> None:
    model = GatedModel()
    batcher = QueryBatcher(model, max_batch=4)
    texts = ("a", "bad", "abcd", "xy", "abcdef")
    first, results = await _behind_a_held_pass(batcher, model, [batcher.run(text, _length) for text in texts])
    assert first == len("first")
    assert results[0] == 1.0 and results[2] == 4.0 and results[3] == 2.0 and results[4] == 6.0
    assert isinstance(results[1], ValueError)  # only the bad query failed
    # At most max_batch queries per pass, in arrival order.
    assert model.passes == [["first"], ["a", "bad", "abcd", "xy"], ["abcdef"]]
    assert list(batcher.recent_batch_sizes) == [1, 4, 1]
    assert (batcher.jobs_run, batcher.queries_run) == (3, 6)


async def test_a_failed_embedding_fails_its_batch_only() -> None:
    model = GatedModel()
    batcher = QueryBatcher(model)
    queued = [batcher.run("ok", _length), batcher.run("broken model", _length)]
    first, results = await _behind_a_held_pass(batcher, model, queued)
    assert first == len("first")
    assert all(isinstance(result, RuntimeError) for result in results)
    assert await batcher.run("after", _length) == len("after")


async def test_a_cancelled_search_is_dropped_from_the_queue() -> None:
    model = GatedModel()
    batcher = QueryBatcher(model)
    first = asyncio.ensure_future(batcher.run("first", _length))
    await asyncio.to_thread(model.entered.wait, 60)
    given_up = asyncio.ensure_future(batcher.run("given up", _length))
    kept = asyncio.ensure_future(batcher.run("kept", _length))
    await _wait_until(lambda: batcher.queued == 2)
    given_up.cancel()
    model.gate.set()
    assert await first == len("first")
    assert await kept == len("kept")
    assert given_up.cancelled()
    assert model.passes == [["first"], ["kept"]]
