"""`support-ingest`: send Markdown, text and HTML files to the running retrieval service over gRPC.

    support-ingest [--addr HOST:PORT] [--prune] [--if-empty] [--batch-size N] [--category C]
                   [--id-prefix P] [--quiet] PATH...

Document ids are paths relative to the given root (a folder, or a file's parent folder), optionally under
--id-prefix. Safe while the service is serving and safe to repeat (cron, Kubernetes CronJob): unchanged
documents are not re-embedded. --prune also deletes chunks of sections that changed and documents under the
id prefix whose files vanished. Exit status: 0 all ingested, 1 some documents rejected, 3 the service failed
or is unreachable.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from tqdm import tqdm

from retrieval_service.chunking import content_type_for, split_front_matter, supported_extension
from service_kit import auth
from service_kit.env import ConfigError
from support.v1 import retrieval_pb2, retrieval_pb2_grpc

DEFAULT_ADDR = "127.0.0.1:50052"
# Files above this are rejected locally; the service applies its own (smaller) RETRIEVAL_MAX_DOC_BYTES.
LOCAL_MAX_BYTES = 4 * 1024 * 1024
# Keep each request well under the 8 MiB gRPC message cap.
MAX_BATCH_BYTES = 4 * 1024 * 1024
RPC_TIMEOUT_SECONDS = 300.0
STATS_TIMEOUT_SECONDS = 10.0
ATTEMPTS = 3

T = TypeVar("T")

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_FAILED = 3
EXIT_USAGE = 2


class IngestFailedError(Exception):
    """The service could not be reached or failed a request; the message says which and why."""


@dataclass
class Totals:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    deleted: int = 0
    chunks_added: int = 0
    chunks_deleted: int = 0
    rejections: list[str] = field(default_factory=list)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        self.rejections.append(reason)


@dataclass(frozen=True)
class SourceFile:
    path: Path
    doc_id: str
    folder_category: str


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="support-ingest",
        description="Ingest Markdown, text and HTML files or folders into the running retrieval service.",
    )
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="files or folders (.md .markdown .txt .html .htm)"
    )
    parser.add_argument(
        "--addr",
        default=os.environ.get("RETRIEVAL_ADDR", "").strip() or DEFAULT_ADDR,
        help="retrieval service address (default: $RETRIEVAL_ADDR or %(default)s)",
    )
    parser.add_argument(
        "--prune",
        action="store_true",
        help="also delete changed sections, and documents under --id-prefix whose files vanished",
    )
    parser.add_argument(
        "--if-empty", action="store_true", help="do nothing if the knowledge base has documents"
    )
    parser.add_argument("--batch-size", type=int, default=16, metavar="N", help="documents per request (16)")
    parser.add_argument("--category", default="", help="category for files without front matter or folder")
    parser.add_argument("--id-prefix", default="", help="prepended to every document id; scopes --prune")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def discover(paths: Sequence[str], id_prefix: str, totals: Totals) -> list[SourceFile]:
    """Files to ingest, each with its document id; explicit files of an unsupported type are rejected."""
    found: dict[str, SourceFile] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                relative = file.relative_to(path)
                if any(part.startswith(".") for part in relative.parts):
                    continue
                if file.is_file() and supported_extension(file.name):
                    category = relative.parts[0] if len(relative.parts) > 1 else ""
                    doc_id = id_prefix + relative.as_posix()
                    found.setdefault(doc_id, SourceFile(file, doc_id, category))
        elif path.is_file():
            doc_id = id_prefix + path.name
            if not supported_extension(path.name):
                totals.reject(f"{doc_id}: unsupported file type (use .md, .markdown, .txt, .html or .htm)")
                continue
            found.setdefault(doc_id, SourceFile(path, doc_id, ""))
        else:
            totals.reject(f"{raw}: no such file or folder")
    return list(found.values())


def read_document(source: SourceFile, default_category: str) -> retrieval_pb2.Document:
    """The Document for one file; raises ValueError with a reason naming the file."""
    size = source.path.stat().st_size
    if size > LOCAL_MAX_BYTES:
        raise ValueError(f"{source.doc_id}: file is {size} bytes; the limit is {LOCAL_MAX_BYTES}")
    data = source.path.read_bytes()
    if not data.strip():
        raise ValueError(f"{source.doc_id}: empty file")
    if b"\x00" in data:
        raise ValueError(f"{source.doc_id}: binary file (NUL bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{source.doc_id}: invalid UTF-8 at byte {error.start}") from None
    kind = content_type_for(source.doc_id)
    front_matter = split_front_matter(text)[0] if kind == "markdown" else {}
    category = front_matter.get("category") or source.folder_category or default_category
    last_updated = front_matter.get("last_updated") or (
        dt.datetime.fromtimestamp(source.path.stat().st_mtime, tz=dt.UTC).date().isoformat()
    )
    return retrieval_pb2.Document(
        doc_id=source.doc_id,
        content=text,
        content_type=kind,
        category=category,
        last_updated=last_updated,
    )


def _batches(
    sources: Sequence[SourceFile], batch_size: int, default_category: str, totals: Totals
) -> Iterator[tuple[list[retrieval_pb2.Document], int]]:
    """(documents, files consumed) per request, bounded by count and bytes; unreadable files are rejected."""
    batch: list[retrieval_pb2.Document] = []
    size = 0
    consumed = 0
    for source in sources:
        consumed += 1
        try:
            document = read_document(source, default_category)
        except (ValueError, OSError) as error:
            totals.reject(str(error) if isinstance(error, ValueError) else f"{source.doc_id}: {error}")
            continue
        length = len(document.content.encode("utf-8"))
        if batch and (len(batch) >= batch_size or size + length > MAX_BATCH_BYTES):
            yield batch, consumed - 1
            batch, size, consumed = [], 0, 1
        batch.append(document)
        size += length
    if batch or consumed:
        yield batch, consumed


def _call(method: str, function: Callable[..., T], request: Any, timeout: float) -> T:
    """One RPC with retries on UNAVAILABLE (every call here is idempotent)."""
    delay = 0.5
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return function(request, timeout=timeout)
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.UNAVAILABLE and attempt < ATTEMPTS:
                time.sleep(delay)
                delay *= 2
                continue
            details = error.details()  # type: ignore[attr-defined]
            raise IngestFailedError(f"{method} failed: {code.name}: {details}") from None
    raise IngestFailedError(f"{method} failed")


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    totals = Totals()
    try:
        # kb_admin: AUTH_TOKEN, AUTH_TOKENS_KB_ADMIN or AUTH_CREDENTIALS_FILE (default data/credentials.json).
        auth_config = auth.AuthConfig.for_caller(auth.KB_ADMIN)
    except ConfigError as error:
        print(f"support-ingest: configuration error: {error}", file=sys.stderr)
        return EXIT_USAGE
    sources = discover(args.paths, args.id_prefix, totals)
    with grpc.insecure_channel(args.addr) as raw_channel:
        # Every call carries the kb_admin token.
        channel = auth.intercept_sync_channel(raw_channel, auth_config)
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            stats = _call("GetStats", stub.GetStats, retrieval_pb2.GetStatsRequest(), STATS_TIMEOUT_SECONDS)
        except IngestFailedError as error:
            print(
                f"support-ingest: cannot reach the retrieval service at {args.addr}: {error}", file=sys.stderr
            )
            return EXIT_FAILED
        assert isinstance(stats, retrieval_pb2.GetStatsResponse)
        if args.if_empty and stats.documents > 0:
            print(
                f"support-ingest: the knowledge base already has {stats.documents} documents; nothing to do",
            )
            return EXIT_OK
        show = not args.quiet and sys.stderr.isatty()
        with tqdm(total=len(sources), unit="doc", desc="ingesting", disable=not show, file=sys.stderr) as bar:
            for documents, consumed in _batches(sources, max(1, args.batch_size), args.category, totals):
                if documents:
                    request = retrieval_pb2.IngestDocumentsRequest(
                        documents=documents, prune_changed_sections=args.prune
                    )
                    try:
                        reply = _call("IngestDocuments", stub.IngestDocuments, request, RPC_TIMEOUT_SECONDS)
                    except IngestFailedError as error:
                        print(f"support-ingest: {error}", file=sys.stderr)
                        return EXIT_FAILED
                    assert isinstance(reply, retrieval_pb2.IngestDocumentsResponse)
                    totals.added += reply.added
                    totals.updated += reply.updated
                    totals.unchanged += reply.unchanged
                    totals.chunks_deleted += reply.chunks_deleted
                    for result in reply.results:
                        totals.chunks_added += result.chunks_added
                        if result.outcome == retrieval_pb2.DOCUMENT_OUTCOME_REJECTED:
                            totals.reject(result.error or f"{result.doc_id}: rejected")
                bar.update(consumed)
                bar.set_postfix(
                    added=totals.added,
                    updated=totals.updated,
                    unchanged=totals.unchanged,
                    rejected=totals.rejected,
                )
        if args.prune:
            delete = retrieval_pb2.DeleteDocumentsRequest(
                doc_id_prefix=args.id_prefix,
                keep_doc_ids=[source.doc_id for source in sources],
                all_documents=not args.id_prefix,
            )
            try:
                deleted = _call("DeleteDocuments", stub.DeleteDocuments, delete, RPC_TIMEOUT_SECONDS)
            except IngestFailedError as error:
                print(f"support-ingest: {error}", file=sys.stderr)
                return EXIT_FAILED
            assert isinstance(deleted, retrieval_pb2.DeleteDocumentsResponse)
            totals.deleted = deleted.documents_deleted
            totals.chunks_deleted += deleted.chunks_deleted
    for reason in totals.rejections:
        print(f"support-ingest: rejected {reason}", file=sys.stderr)
    print(
        f"support-ingest: {len(sources)} files: added {totals.added}, updated {totals.updated}, "
        f"unchanged {totals.unchanged}, deleted {totals.deleted}, rejected {totals.rejected} "
        f"({totals.chunks_added} chunks embedded, {totals.chunks_deleted} chunks deleted) "
        f"in {time.monotonic() - started:.1f}s",
    )
    return EXIT_REJECTED if totals.rejected else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.batch_size < 1:
        print("support-ingest: --batch-size must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
