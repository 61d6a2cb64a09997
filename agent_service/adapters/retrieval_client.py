"""RetrievalService client: one Search per turn, with a deadline; an outage is a knowledge gap, not an error."""

from __future__ import annotations

import logging

import grpc

from agent_service.domain import KbHit
from agent_service.turn_contract import RetrievalResult
from support.v1 import retrieval_pb2, retrieval_pb2_grpc

logger = logging.getLogger(__name__)


class RetrievalClient:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        top_k: int = 4,
        max_distance: float | None = None,
        timeout_seconds: float = 5.0,
    ) -> None:
        self._stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)  # type: ignore[no-untyped-call]
        self._top_k = top_k
        self._max_distance = max_distance
        self._timeout = timeout_seconds

    async def search(self, query: str) -> RetrievalResult:
        request = retrieval_pb2.SearchRequest(query=query, top_k=self._top_k)
        if self._max_distance is not None:
            request.max_distance = self._max_distance
        try:
            response = await self._stub.Search(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            logger.warning(
                "retrieval failed; answering as a knowledge gap",
                extra={"grpc_code": error.code().name, "grpc_details": error.details()},
            )
            return RetrievalResult(hits=(), nothing_relevant=True, failed=True)
        hits = tuple(
            KbHit(
                doc_id=hit.doc_id,
                chunk_id=hit.chunk_id,
                title=hit.title or hit.metadata.get("title", "") or hit.doc_id,
                text=hit.text,
                distance=float(hit.distance),
            )
            for hit in response.hits
        )
        return RetrievalResult(hits=hits, nothing_relevant=response.nothing_relevant or not hits)
