"""Small helpers shared by the retrieval tests."""

from __future__ import annotations

from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from support.v1 import retrieval_pb2, retrieval_pb2_grpc


def retrieval_stub(channel: grpc.aio.Channel) -> retrieval_pb2_grpc.RetrievalServiceStub:
    return retrieval_pb2_grpc.RetrievalServiceStub(channel)  # type: ignore[no-untyped-call]


def kb_documents(root: Path) -> list[retrieval_pb2.Document]:
    return [
        retrieval_pb2.Document(doc_id=path.relative_to(root).as_posix(), content=path.read_text("utf-8"))
        for path in sorted(root.rglob("*.md"))
    ]


def field_violations(error: grpc.aio.AioRpcError) -> list[str]:
    """The BadRequest field names carried in a rich error status."""
    status = rpc_status.from_call(error)
    fields: list[str] = []
    if status is None:
        return fields
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(item.field for item in bad.field_violations)
    return fields
