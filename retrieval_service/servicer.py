"""support.v1.RetrievalService: proto <-> domain mapping and error mapping, nothing else."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from retrieval_service.errors import (
    EmbeddingMismatchError,
    InvalidArgumentError,
    LimitExceededError,
    StoreUnavailableError,
)
from retrieval_service.knowledge_base import DocumentIn, KnowledgeBase, Outcome
from service_kit.observability import observe_retrieval_distances
from support.v1 import retrieval_pb2, retrieval_pb2_grpc

logger = logging.getLogger(__name__)

T = TypeVar("T")

_OUTCOMES = {
    Outcome.ADDED: retrieval_pb2.DOCUMENT_OUTCOME_ADDED,
    Outcome.UPDATED: retrieval_pb2.DOCUMENT_OUTCOME_UPDATED,
    Outcome.UNCHANGED: retrieval_pb2.DOCUMENT_OUTCOME_UNCHANGED,
    Outcome.REJECTED: retrieval_pb2.DOCUMENT_OUTCOME_REJECTED,
}


async def _abort_invalid(
    context: grpc.aio.ServicerContext[Any, Any], error: InvalidArgumentError
) -> NoReturn:
    detail = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.reason)
        ]
    )
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(error))
    status.details.add().Pack(detail)
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")


StoreDown = Callable[[], Awaitable[None]]


async def _nothing() -> None:
    return None


async def _guard(
    context: grpc.aio.ServicerContext[Any, Any],
    method: str,
    call: Callable[[], Awaitable[T]],
    store_down: StoreDown = _nothing,
) -> T:
    """Runs a handler body, mapping domain errors to gRPC status codes; never lets UNKNOWN escape."""
    try:
        return await call()
    except InvalidArgumentError as error:
        await _abort_invalid(context, error)
    except LimitExceededError as error:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
    except (StoreUnavailableError, EmbeddingMismatchError) as error:
        logger.error("%s: vector store unavailable: %s", method, error)
        await store_down()
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the knowledge base store is unavailable")
    except Exception:
        # abort() raises an internal exception that must propagate untouched.
        if context.code() is not None:
            raise
        logger.exception("%s failed", method)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error in the retrieval service")
    raise AssertionError("context.abort returned")


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServiceServicer):
    def __init__(self, kb: KnowledgeBase, store_down: StoreDown = _nothing) -> None:
        """`store_down` is awaited when the store fails (the server reports NOT_SERVING until it recovers)."""
        self._kb = kb
        self._store_down = store_down

    async def Search(  # noqa: N802 - gRPC method name
        self, request: retrieval_pb2.SearchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.SearchResponse:
        async def body() -> retrieval_pb2.SearchResponse:
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
                    )
                    for hit in result.hits
                ],
                nothing_relevant=result.nothing_relevant,
                max_distance_applied=result.max_distance_applied,
                dropped_count=result.dropped_count,
            )

        return await _guard(context, "Search", body, self._store_down)

    async def IngestDocuments(  # noqa: N802 - gRPC method name
        self, request: retrieval_pb2.IngestDocumentsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.IngestDocumentsResponse:
        async def body() -> retrieval_pb2.IngestDocumentsResponse:
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
                        outcome=_OUTCOMES[item.outcome],
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

        return await _guard(context, "IngestDocuments", body, self._store_down)

    async def DeleteDocuments(  # noqa: N802 - gRPC method name
        self, request: retrieval_pb2.DeleteDocumentsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.DeleteDocumentsResponse:
        async def body() -> retrieval_pb2.DeleteDocumentsResponse:
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

        return await _guard(context, "DeleteDocuments", body, self._store_down)

    async def GetStats(  # noqa: N802 - gRPC method name
        self, request: retrieval_pb2.GetStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.GetStatsResponse:
        async def body() -> retrieval_pb2.GetStatsResponse:
            stats = await self._kb.stats()
            response = retrieval_pb2.GetStatsResponse(
                documents=stats.documents,
                chunks=stats.chunks,
                collection=stats.collection,
                embedding_model=stats.embedding_model,
                default_max_distance=stats.default_max_distance,
            )
            if stats.last_refresh_unix is not None:
                stamp = timestamp_pb2.Timestamp()
                stamp.FromNanoseconds(int(stats.last_refresh_unix * 1e9))
                response.last_refresh_time.CopyFrom(stamp)
            return response

        return await _guard(context, "GetStats", body, self._store_down)
