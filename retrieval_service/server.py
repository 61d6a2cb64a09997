"""retrieval_service process: config → logging → embedding model + Chroma → gRPC server → serve until signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health

from retrieval_service.adapters.chroma_store import ChromaStore, open_client
from retrieval_service.adapters.embedding import MiniLMEmbedding
from retrieval_service.chunking import ChunkingOptions
from retrieval_service.config import Config
from retrieval_service.errors import EmbeddingMismatchError, StoreUnavailableError
from retrieval_service.knowledge_base import DEFAULT_FILTER_KEYS, KnowledgeBase, Limits
from retrieval_service.servicer import RetrievalServicer
from service_kit.env import ConfigError
from service_kit.grpc_server import bind, new_server, serve_until_signal, set_status
from service_kit.jsonlog import configure_logging
from service_kit.observability import setup_observability
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


@dataclass
class StartedServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    kb: KnowledgeBase
    store_health: StoreHealth

    async def stop(self, grace: float | None = None) -> None:
        await self.store_health.close()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def build_knowledge_base(config: Config, embedding: MiniLMEmbedding | None = None) -> KnowledgeBase:
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
    return KnowledgeBase(store, model, limits, chunking)


async def start_server(config: Config, embedding: MiniLMEmbedding | None = None) -> StartedServer:
    """Builds and starts the server; `embedding` lets tests share one loaded model."""
    kb = await asyncio.to_thread(build_knowledge_base, config, embedding)
    server, health_servicer = new_server([SERVICE_NAME])
    store_health = StoreHealth(kb, health_servicer)
    servicer = RetrievalServicer(kb, store_health.store_down)
    retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = bind(server, config.addr)
    await server.start()
    await set_status(health_servicer, [SERVICE_NAME], serving=True)
    return StartedServer(server=server, health=health_servicer, port=port, kb=kb, store_health=store_health)


async def _serve(config: Config) -> None:
    started = await start_server(config)
    logger.info(
        "retrieval_service listening",
        extra={
            "addr": config.addr,
            "port": started.port,
            "collection": config.collection,
            "store": f"chroma://{config.chroma_host}:{config.chroma_port}"
            if config.chroma_host
            else str(config.data_dir / "chroma"),
        },
    )
    try:
        await serve_until_signal(started.server, started.health)
    finally:
        await started.store_health.close()


def main() -> None:
    try:
        config = Config.from_env()
    except ConfigError as error:
        print(f"retrieval_service: configuration error: {error}", file=sys.stderr)
        sys.exit(2)
    configure_logging("retrieval_service", config.log_level)
    try:
        observability = setup_observability("retrieval_service")
    except ConfigError as error:
        print(f"retrieval_service: configuration error: {error}", file=sys.stderr)
        sys.exit(2)
    try:
        asyncio.run(_serve(config))
    except (EmbeddingMismatchError, StoreUnavailableError) as error:
        logger.error("cannot start: %s", error)
        print(f"retrieval_service: {error}", file=sys.stderr)
        sys.exit(1)
    except ConfigError as error:  # e.g. SERVICE_AUTH_TOKEN too short, read when the server is built
        print(f"retrieval_service: configuration error: {error}", file=sys.stderr)
        sys.exit(2)
    finally:
        observability.shutdown()
