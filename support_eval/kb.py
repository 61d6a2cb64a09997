"""Reading a knowledge-base folder, fingerprinting it, and ingesting it over RetrievalService."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from service_kit import auth
from support.v1 import retrieval_pb2, retrieval_pb2_grpc

logger = logging.getLogger(__name__)

KB_EXTENSIONS = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".html": "html", ".htm": "html"}
# Keep each IngestDocuments request well under the 8 MiB message cap.
BATCH_BYTES = 2 * 1024 * 1024
INGEST_TIMEOUT_SECONDS = 300.0

# Callers that send no token (a stack without authentication, e.g. a test double).
NO_CREDENTIALS = auth.AuthConfig()


class KnowledgeBaseError(RuntimeError):
    """The KB folder cannot be read, or the retrieval service refused it."""


@dataclass(frozen=True)
class KbFile:
    doc_id: str
    content: str
    content_type: str


@dataclass(frozen=True)
class IngestSummary:
    documents: int
    added: int
    updated: int
    unchanged: int
    rejected: tuple[str, ...]
    deleted: int = 0


def read_kb(kb_dir: Path) -> list[KbFile]:
    """Every .md/.markdown/.txt/.html/.htm file under kb_dir (sorted), doc_id = POSIX path relative to kb_dir."""
    if not kb_dir.is_dir():
        raise KnowledgeBaseError(f"knowledge base folder {kb_dir} does not exist")
    files = []
    for path in sorted(kb_dir.rglob("*")):
        content_type = KB_EXTENSIONS.get(path.suffix.lower())
        relative = path.relative_to(kb_dir)
        if content_type is None or not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        try:
            content = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise KnowledgeBaseError(f"cannot read {path}: {error}") from error
        files.append(KbFile(relative.as_posix(), content, content_type))
    if not files:
        raise KnowledgeBaseError(f"no .md, .txt or .html files under {kb_dir}")
    return files


def kb_version(files: Sequence[KbFile]) -> str:
    """sha256 over (doc_id, content) of every file: the same KB gives the same version on any machine."""
    digest = hashlib.sha256()
    for item in sorted(files, key=lambda kb_file: kb_file.doc_id):
        digest.update(item.doc_id.encode("utf-8") + b"\0")
        digest.update(hashlib.sha256(item.content.encode("utf-8")).digest())
    return digest.hexdigest()


def _batches(files: Sequence[KbFile]) -> list[list[KbFile]]:
    batches: list[list[KbFile]] = [[]]
    size = 0
    for item in files:
        item_size = len(item.content.encode("utf-8")) + len(item.doc_id) + 64
        if batches[-1] and size + item_size > BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += item_size
    return batches


async def ingest(
    retrieval_addr: str,
    files: Sequence[KbFile],
    prune_others: bool = False,
    call_timeout: float = INGEST_TIMEOUT_SECONDS,
    *,
    auth_config: auth.AuthConfig = NO_CREDENTIALS,
) -> IngestSummary:
    """Upserts `files`; with prune_others, deletes every other document of the collection afterwards.
    `auth_config`: the caller's credentials (the `kb_admin` role)."""
    added = updated = unchanged = deleted = 0
    rejected: list[str] = []
    async with grpc.aio.insecure_channel(
        retrieval_addr, interceptors=auth.client_interceptors(auth_config)
    ) as channel:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            for batch in _batches(files):
                request = retrieval_pb2.IngestDocumentsRequest(
                    documents=[
                        retrieval_pb2.Document(
                            doc_id=f.doc_id, content=f.content, content_type=f.content_type
                        )
                        for f in batch
                    ],
                    prune_changed_sections=True,
                )
                response = await stub.IngestDocuments(request, timeout=call_timeout)
                added += response.added
                updated += response.updated
                unchanged += response.unchanged
                rejected.extend(
                    f"{result.doc_id}: {result.error}"
                    for result in response.results
                    if result.outcome == retrieval_pb2.DOCUMENT_OUTCOME_REJECTED
                )
            if prune_others:
                delete = await stub.DeleteDocuments(
                    retrieval_pb2.DeleteDocumentsRequest(
                        doc_id_prefix="", all_documents=True, keep_doc_ids=[f.doc_id for f in files]
                    ),
                    timeout=call_timeout,
                )
                deleted = delete.documents_deleted
        except grpc.aio.AioRpcError as error:
            raise KnowledgeBaseError(
                f"ingesting into {retrieval_addr} failed: {error.code().name}: {error.details()}"
            ) from error
    logger.info("ingested %d documents (%d rejected)", len(files), len(rejected))
    return IngestSummary(len(files), added, updated, unchanged, tuple(rejected), deleted)
