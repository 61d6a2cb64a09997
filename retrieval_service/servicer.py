"""support.v1.RetrievalService: proto <-> domain mapping and error mapping, nothing else."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from retrieval_service.errors import (
    EmbeddingMismatchError,
    InvalidArgumentError,
    LimitExceededError,
    StoreUnavailableError,
)
from retrieval_service.knowledge_base import DocumentIn, KnowledgeBase, Outcome
from retrieval_service.metrics import observe_retrieval_distances
from service_kit import auth
from service_kit.codes import DOCUMENT_OUTCOME
from service_kit.error_guard import ErrorGuard, StatusRule, bad_request
from support.v1 import retrieval_pb2, retrieval_pb2_grpc

logger = logging.getLogger(__name__)

StoreDown = Callable[[], Awaitable[None]]


async def _nothing() -> None:
    return None


def error_guard(store_down: StoreDown) -> ErrorGuard:
    """Domain errors → status; a failing store is also reported to `store_down` (NOT_SERVING until it recovers)."""
    return ErrorGuard(
        [
            StatusRule(
                InvalidArgumentError,
                grpc.StatusCode.INVALID_ARGUMENT,
                details=lambda error: [bad_request(error.field, error.reason)],
            ),
            StatusRule(LimitExceededError, grpc.StatusCode.RESOURCE_EXHAUSTED),
            StatusRule(
                (StoreUnavailableError, EmbeddingMismatchError),
                grpc.StatusCode.UNAVAILABLE,
                message="the knowledge base store is unavailable",
                log="vector store unavailable",
                on_error=store_down,
            ),
        ],
        internal_message="internal error in the retrieval service",
        logger=logger,
    )


# Who may call what (enforced by service_kit.auth's interceptor before any handler runs).
PERMISSIONS = auth.PermissionTable(
    retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name,
    {
        "Search": auth.allow(
            auth.SERVICE, auth.BACKEND, auth.STAFF, auth.KB_ADMIN, service_needs_customer=False
        ),
        "GetStats": auth.allow(
            auth.SERVICE, auth.BACKEND, auth.STAFF, auth.KB_ADMIN, service_needs_customer=False
        ),
        "IngestDocuments": auth.allow(auth.KB_ADMIN),
        "DeleteDocuments": auth.allow(auth.KB_ADMIN),
    },
)


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServiceServicer):
    def __init__(self, kb: KnowledgeBase, store_down: StoreDown = _nothing) -> None:
        """`store_down` is awaited when the store fails (the server reports NOT_SERVING until it recovers)."""
        self._kb = kb
        self._guard = error_guard(store_down)

    async def Search(  # noqa: N802 - gRPC method name
        self, request: retrieval_pb2.SearchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.SearchResponse:
        async with self._guard(context):
            result = await self._kb.search(
                request.query,
                top_k=request.top_k if request.HasField("top_k") else None,
                filters=dict(request.filter),
                max_distance=request.max_distance if request.HasField("max_distance") else None,
            )
            observe_retrieval_distances(hit.distance for hit in result.hits)
            return retrieval_pb2.SearchResponse(
                hits=[
                    retrieval_pb2.SearchHit(
                        doc_id=hit.doc_id,
                        chunk_id=hit.chunk_id,
                        text=hit.text,
                        distance=hit.distance,
                        metadata=hit.metadata,
                        title=hit.title,
                        fused_score=hit.fused_score,
                        dense_rank=hit.dense_rank,
                        lexical_rank=hit.lexical_rank,
                    )
                    for hit in result.hits
                ],
                nothing_relevant=result.nothing_relevant,
                max_distance_applied=result.max_distance_applied,
                dropped_count=result.dropped_count,
                threshold_source=result.threshold_source,
            )

    async def IngestDocuments(  # noqa: N802 - gRPC method name
        self, request: retrieval_pb2.IngestDocumentsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.IngestDocumentsResponse:
        async with self._guard(context):
            documents = [
                DocumentIn(
                    doc_id=doc.doc_id,
                    content=doc.content,
                    content_type=doc.content_type,
                    title=doc.title,
                    category=doc.category,
                    last_updated=doc.last_updated,
                    metadata=dict(doc.metadata),
                )
                for doc in request.documents
            ]
            report = await self._kb.ingest(documents, request.prune_changed_sections)
            return retrieval_pb2.IngestDocumentsResponse(
                results=[
                    retrieval_pb2.DocumentResult(
                        doc_id=item.doc_id,
                        outcome=DOCUMENT_OUTCOME.to_proto(item.outcome.value),
                        chunks_added=item.chunks_added,
                        chunks_unchanged=item.chunks_unchanged,
                        chunks_deleted=item.chunks_deleted,
                        error=item.error,
                    )
                    for item in report.results
                ],
                added=report.count(Outcome.ADDED),
                updated=report.count(Outcome.UPDATED),
                unchanged=report.count(Outcome.UNCHANGED),
                rejected=report.count(Outcome.REJECTED),
                chunks_deleted=report.chunks_deleted,
            )

    async def DeleteDocuments(  # noqa: N802 - gRPC method name
        self, request: retrieval_pb2.DeleteDocumentsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.DeleteDocumentsResponse:
        async with self._guard(context):
            report = await self._kb.delete(
                doc_ids=list(request.doc_ids),
                prefix=request.doc_id_prefix,
                keep=list(request.keep_doc_ids),
                all_documents=request.all_documents,
            )
            return retrieval_pb2.DeleteDocumentsResponse(
                documents_deleted=report.documents_deleted,
                chunks_deleted=report.chunks_deleted,
                deleted_doc_ids=report.deleted_doc_ids,
            )

    async def GetStats(  # noqa: N802 - gRPC method name
        self, request: retrieval_pb2.GetStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.GetStatsResponse:
        async with self._guard(context):
            stats = await self._kb.stats()
            response = retrieval_pb2.GetStatsResponse(
                documents=stats.documents,
                chunks=stats.chunks,
                collection=stats.collection,
                embedding_model=stats.embedding_model,
                default_max_distance=stats.default_max_distance,
                threshold_source=stats.threshold_source,
                lexical_indexed_chunks=stats.lexical_indexed_chunks,
                sentences=stats.sentences,
            )
            if stats.calibrated_max_distance is not None:
                response.calibrated_max_distance = stats.calibrated_max_distance
            if stats.last_refresh_unix is not None:
                stamp = timestamp_pb2.Timestamp()
                stamp.FromNanoseconds(int(stats.last_refresh_unix * 1e9))
                response.last_refresh_time.CopyFrom(stamp)
            return response
