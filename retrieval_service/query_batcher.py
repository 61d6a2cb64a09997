"""Concurrent searches share one query-embedding pass.

A query that finds a worker free starts a job at once, so a lone query waits for nothing (one thread hop, as
without batching). Queries that arrive while the job runs queue up and go together in the next one: one ONNX
forward pass for the whole batch (at most `max_batch` queries), then each query's own continuation (its vector
and lexical search) in the same worker thread. Under load that cuts the embedding CPU per query — a batch of
8 short queries costs about 60 % per query of what 8 single passes cost — and the batch size follows the
load by itself, with no timer. A query's vector does not depend on its batch-mates (the tokenizer pads, the
attention mask excludes the padding).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from service_kit.embedding import Vector

T = TypeVar("T")

DEFAULT_MAX_BATCH = 16
# Jobs that may run at once. One: while it runs, every query that arrives joins the next batch. More keep a
# second core busy at low load but batch less under load (measured: docs/scaling.md, BENCHMARKS.md).
DEFAULT_MAX_JOBS = 1
RECENT_BATCHES = 64

EmbedBatch = Callable[[list[str]], list[Vector]]


@dataclass(frozen=True)
class _Query(Generic[T]):
    text: str
    then: Callable[[Vector], T]
    future: asyncio.Future[T]


class QueryBatcher:
    """`await batcher.run(text, then)`: `then(vector of text)` in a worker thread, the embedding shared with
    the queries in flight beside it. An exception in one query's `then` is that query's alone; a failed
    embedding fails every query of its batch."""

    def __init__(
        self, embed_batch: EmbedBatch, max_batch: int = DEFAULT_MAX_BATCH, max_jobs: int = DEFAULT_MAX_JOBS
    ) -> None:
        self._embed_batch = embed_batch
        self._max_batch = max(1, max_batch)
        self._max_jobs = max(1, max_jobs)
        self._queued: deque[_Query[Any]] = deque()
        self._jobs: set[asyncio.Task[None]] = set()
        # For tests and the benchmark: jobs and queries so far, and the sizes of the latest batches.
        self.jobs_run = 0
        self.queries_run = 0
        self.recent_batch_sizes: deque[int] = deque(maxlen=RECENT_BATCHES)

    @property
    def queued(self) -> int:
        """Queries waiting for the next job."""
        return len(self._queued)

    async def run(self, text: str, then: Callable[[Vector], T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queued.append(_Query(text, then, future))
        if len(self._jobs) < self._max_jobs:
            self._start_job()
        return await future

    def _start_job(self) -> None:
        batch: list[_Query[Any]] = []
        while self._queued and len(batch) < self._max_batch:
            query = self._queued.popleft()
            if not query.future.done():  # its caller gave up (cancelled) while it queued
                batch.append(query)
        if not batch:
            return
        job = asyncio.get_running_loop().create_task(self._job(batch))
        self._jobs.add(job)
        job.add_done_callback(self._job_done)

    def _job_done(self, job: asyncio.Task[None]) -> None:
        self._jobs.discard(job)
        if self._queued and len(self._jobs) < self._max_jobs:
            self._start_job()

    async def _job(self, batch: list[_Query[Any]]) -> None:
        self.jobs_run += 1
        self.queries_run += len(batch)
        self.recent_batch_sizes.append(len(batch))
        try:
            outcomes = await asyncio.to_thread(self._work, batch)
        except BaseException as error:  # the embedding failed (or the job was cancelled): the whole batch
            for query in batch:
                if query.future.done():
                    continue
                if isinstance(error, asyncio.CancelledError):
                    query.future.cancel()
                else:
                    query.future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for query, (value, failure) in zip(batch, outcomes, strict=True):
            if query.future.done():
                continue
            if failure is not None:
                query.future.set_exception(failure)
            else:
                query.future.set_result(value)

    def _work(self, batch: list[_Query[Any]]) -> list[tuple[Any, Exception | None]]:
        """In the worker thread: one embedding pass, then each query's continuation."""
        vectors = self._embed_batch([query.text for query in batch])
        outcomes: list[tuple[Any, Exception | None]] = []
        for query, vector in zip(batch, vectors, strict=True):
            try:
                outcomes.append((query.then(vector), None))
            except Exception as error:  # this query's own failure (e.g. the store), reported to its caller
                outcomes.append((None, error))
        return outcomes
