"""retrieval_service process: the embedding model and Chroma → the gRPC server; `main` runs it until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from grpc_health.v1 import health

from retrieval_service.adapters.chroma_store import ChromaStore, open_client
from retrieval_service.adapters.embedding import MiniLMEmbedding
from retrieval_service.chunking import ChunkingOptions
from retrieval_service.config import Config
from retrieval_service.errors import EmbeddingMismatchError, StoreUnavailableError
from retrieval_service.kb_snapshot import SYNC_MAX_CHUNKS
from retrieval_service.knowledge_base import DEFAULT_FILTER_KEYS, KnowledgeBase, Limits
from retrieval_service.servicer import PERMISSIONS, RetrievalServicer
from service_kit import lifecycle
from service_kit.grpc_server import new_server, set_status
from service_kit.lifecycle import closing_on_error, start_serving
from service_kit.service_main import run_service
from support.v1 import retrieval_pb2, retrieval_pb2_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name


STORE_PROBE_SECONDS = 1.0


class StoreHealth:
    """NOT_SERVING while the vector store fails, with a probe that flips back to SERVING once it reads again."""

    def __init__(self, kb: KnowledgeBase, health_servicer: health.aio.HealthServicer) -> None:
        self._kb = kb
        self._health = health_servicer
        self._probe: asyncio.Task[None] | None = None
        self._closed = False

    async def store_down(self) -> None:
        if self._closed or (self._probe is not None and not self._probe.done()):
            return
        logger.warning("vector store unavailable; reporting NOT_SERVING until it recovers")
        await set_status(self._health, [SERVICE_NAME], serving=False)
        self._probe = asyncio.create_task(self._wait_for_store())

    async def _wait_for_store(self) -> None:
        while not self._closed:
            await asyncio.sleep(STORE_PROBE_SECONDS)
            try:
                await self._kb.ping()
            except Exception:  # still down: StoreUnavailableError or whatever else the store raises
                continue
            if not self._closed:
                logger.info("vector store readable again; SERVING")
                await set_status(self._health, [SERVICE_NAME], serving=True)
            return

    async def close(self) -> None:
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe


@dataclass(kw_only=True, eq=False)
class StartedServer(lifecycle.StartedServer):
    """The retrieval server, with its knowledge base (tests ingest into it directly)."""

    kb: KnowledgeBase


def build_knowledge_base(
    config: Config, embedding: MiniLMEmbedding | None = None, *, sync_index_max_chunks: int = SYNC_MAX_CHUNKS
) -> KnowledgeBase:
    """Opens the store and checks the collection; raises EmbeddingMismatchError/StoreUnavailableError."""
    model = embedding or (
        MiniLMEmbedding.shared()
        if config.embed_threads == 1
        else MiniLMEmbedding(intra_op_threads=config.embed_threads)
    )
    client = open_client(config.data_dir, config.chroma_host, config.chroma_port)
    store = ChromaStore(client, config.collection, model)
    limits = Limits(
        max_doc_bytes=config.max_doc_bytes,
        max_batch_documents=config.max_batch_documents,
        max_top_k=config.max_top_k,
        max_query_chars=config.max_query_chars,
        default_top_k=config.top_k,
        default_max_distance=config.max_distance,
        filter_keys=tuple(dict.fromkeys((*DEFAULT_FILTER_KEYS, *config.extra_filter_keys))),
    )
    chunking = ChunkingOptions(
        min_tokens=config.chunk_min_tokens,
        max_tokens=config.chunk_max_tokens,
        overlap_tokens=config.chunk_overlap_tokens,
    )
    return KnowledgeBase(
        store,
        model,
        limits,
        chunking,
        sync_index_max_chunks=sync_index_max_chunks,
        query_batch=config.query_batch,
    )


async def start_server(config: Config, embedding: MiniLMEmbedding | None = None) -> StartedServer:
    """Builds and starts the server; `embedding` lets tests share one loaded model. If starting fails part-way,
    what was opened is closed again."""
    async with closing_on_error([]) as closers:
        kb = await asyncio.to_thread(build_knowledge_base, config, embedding)
        closers.append(kb.close)
        kb.prefetch()  # builds the lexical index and calibrates the threshold in the background
        server, health_servicer = new_server(
            [SERVICE_NAME], config.auth.for_service(PERMISSIONS), tls=config.tls, limits=config.grpc_limits
        )
        store_health = StoreHealth(kb, health_servicer)
        closers.append(store_health.close)  # stops the probe before the store it reads is closed
        servicer = RetrievalServicer(kb, store_health.store_down)
        retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        port = await start_serving(server, health_servicer, [SERVICE_NAME], config.addr)
    logger.info(
        "retrieval_service listening",
        extra={
            "addr": config.addr,
            "port": port,
            "collection": config.collection,
            "store": f"chroma://{config.chroma_host}:{config.chroma_port}"
            if config.chroma_host
            else str(config.data_dir / "chroma"),
        },
    )
    return StartedServer(server=server, health=health_servicer, port=port, closers=closers, kb=kb)


def main() -> None:
    run_service(
        "retrieval_service",
        Config.from_env,
        start_server,
        startup_errors=(EmbeddingMismatchError, StoreUnavailableError),
    )
