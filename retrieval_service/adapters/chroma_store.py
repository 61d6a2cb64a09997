"""The Chroma collection that holds the knowledge base: embedded PersistentClient or a Chroma server.

Blocking calls; the domain runs them in worker threads. The collection is always opened with our
embedding function and cosine space, and checked at start-up so a collection built with another embedding
function or dimension fails fast with a message naming the fix instead of failing inside a query.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chromadb
import chromadb.errors
import httpx
import numpy as np
import numpy.typing as npt
from chromadb.config import Settings

from retrieval_service.adapters.embedding import MiniLMEmbedding
from retrieval_service.errors import EmbeddingMismatchError, StoreUnavailableError

logger = logging.getLogger(__name__)

Metadata = dict[str, str | int | float | bool]
LAST_REFRESH_KEY = "last_refresh_unix"
_PAGE = 5000


@dataclass(frozen=True)
class StoredHit:
    chunk_id: str
    text: str
    metadata: Metadata
    distance: float


def open_client(data_dir: Path, chroma_host: str | None, chroma_port: int) -> Any:
    """chromadb.HttpClient when a Chroma server is configured, else a PersistentClient under data_dir/chroma."""
    settings = Settings(anonymized_telemetry=False)
    if chroma_host:
        try:
            return chromadb.HttpClient(host=chroma_host, port=chroma_port, settings=settings)
        except Exception as exc:  # chromadb raises plain ValueError/ConnectError subclasses here
            raise StoreUnavailableError(
                f"cannot reach the Chroma server at {chroma_host}:{chroma_port} (CHROMA_HOST/CHROMA_PORT): {exc}"
            ) from exc
    path = data_dir / "chroma"
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=settings)


@contextmanager
def _reachable(operation: str) -> Iterator[None]:
    """A lost Chroma server or an unreadable store → StoreUnavailableError (UNAVAILABLE, retryable)."""
    try:
        yield
    except (httpx.TransportError, ConnectionError, chromadb.errors.InternalError) as exc:
        # InternalError: the embedded store cannot read its files (e.g. "file is not a database").
        raise StoreUnavailableError(f"Chroma {operation} failed: {exc.__class__.__name__}: {exc}") from exc


def _mismatch(name: str, found: str) -> EmbeddingMismatchError:
    return EmbeddingMismatchError(
        f"collection {name!r} was built with {found}, but this service embeds with "
        f"{MiniLMEmbedding.name()} (384-dim, cosine). "
        f"Fix: set KB_COLLECTION to a new collection name and re-ingest (support-ingest kb), "
        f"or delete collection {name!r} (DeleteDocuments with all_documents is not enough: drop the "
        f"collection, e.g. remove $DATA_DIR/chroma) and re-ingest."
    )


class ChromaStore:
    """One Chroma collection in cosine space with MiniLMEmbedding attached."""

    def __init__(
        self, client: Any, collection_name: str, embedding: MiniLMEmbedding, *, owns_client: bool = True
    ) -> None:
        self._client = client
        self._name = collection_name
        self._embedding = embedding
        self._owns_client = owns_client
        self._collection = self._open()

    def companion(self, suffix: str) -> ChromaStore:
        """Another collection on the same client (`<name><suffix>`), e.g. the sentence vectors of this one's
        chunks; closing it leaves the client to this store."""
        return ChromaStore(self._client, f"{self._name}{suffix}", self._embedding, owns_client=False)

    @property
    def name(self) -> str:
        return self._name

    def _open(self) -> Any:
        try:
            existing = {c if isinstance(c, str) else c.name for c in self._client.list_collections()}
        except Exception as exc:
            raise StoreUnavailableError(f"cannot list Chroma collections: {exc}") from exc
        if self._name in existing:
            try:
                collection = self._client.get_collection(self._name, embedding_function=self._embedding)
            except ValueError as exc:
                if "conflict" in str(exc).lower():
                    persisted = str(exc).rsplit("persisted:", 1)[-1].strip() or "another embedding function"
                    raise _mismatch(self._name, f"embedding function {persisted!r}") from exc
                raise
            self._verify(collection)
            return collection
        logger.info("creating collection %s", self._name)
        return self._client.get_or_create_collection(
            self._name,
            embedding_function=self._embedding,
            configuration={"hnsw": {"space": "cosine"}},
        )

    def _verify(self, collection: Any) -> None:
        config: Mapping[str, Any] = collection.configuration_json or {}
        ef = config.get("embedding_function") or {}
        ef_name = ef.get("name") if isinstance(ef, Mapping) else None
        if ef_name and ef_name != MiniLMEmbedding.name():
            raise _mismatch(self._name, f"embedding function {ef_name!r}")
        hnsw = config.get("hnsw") or {}
        space = hnsw.get("space") if isinstance(hnsw, Mapping) else None
        if space and space != "cosine":
            raise _mismatch(self._name, f"distance space {space!r}")
        sample = collection.get(limit=1, include=["embeddings"])
        embeddings = sample.get("embeddings")
        if embeddings is not None and len(embeddings) > 0:
            dimension = len(embeddings[0])
            if dimension != self._embedding.dimension:
                raise _mismatch(self._name, f"{dimension}-dimensional embeddings")
        if not ef_name and embeddings is not None and len(embeddings) > 0:
            raise _mismatch(self._name, "no recorded embedding function (a legacy or foreign collection)")

    def close(self) -> None:
        """Releases the client (an embedded store's files are closed once no other client uses them)."""
        if self._owns_client:
            self._client.close()

    # --- reads ---------------------------------------------------------------------------------------

    def count(self) -> int:
        with _reachable("count"):
            return int(self._collection.count())

    def chunks_of(self, doc_ids: Sequence[str]) -> dict[str, dict[str, Metadata]]:
        """doc_id -> {chunk_id: metadata} for the given documents."""
        with _reachable("chunks_of"):
            found: dict[str, dict[str, Metadata]] = {doc_id: {} for doc_id in doc_ids}
            if not doc_ids:
                return found
            where: dict[str, Any] = (
                {"doc_id": doc_ids[0]} if len(doc_ids) == 1 else {"doc_id": {"$in": list(doc_ids)}}
            )
            result = self._collection.get(where=where, include=["metadatas"])
            for chunk_id, metadata in zip(result["ids"], result["metadatas"] or [], strict=False):
                meta = dict(metadata or {})
                found.setdefault(str(meta.get("doc_id", "")), {})[chunk_id] = meta
            return found

    def iter_metadata(self) -> Iterator[tuple[str, Metadata]]:
        with _reachable("iter_metadata"):
            offset = 0
            while True:
                page = self._collection.get(limit=_PAGE, offset=offset, include=["metadatas"])
                ids = page["ids"]
                for chunk_id, metadata in zip(ids, page["metadatas"] or [], strict=False):
                    yield chunk_id, dict(metadata or {})
                if len(ids) < _PAGE:
                    return
                offset += _PAGE

    def query(
        self, embedding: npt.NDArray[np.float32], n_results: int, where: Mapping[str, Any] | None
    ) -> list[StoredHit]:
        with _reachable("query"):
            result = self._collection.query(
                query_embeddings=[embedding],
                n_results=n_results,
                where=dict(where) if where else None,
                include=["documents", "metadatas", "distances"],
            )
            ids = result["ids"][0] if result["ids"] else []
            documents = (result.get("documents") or [[]])[0] or []
            metadatas = (result.get("metadatas") or [[]])[0] or []
            distances = (result.get("distances") or [[]])[0] or []
            return [
                StoredHit(chunk_id, text or "", dict(meta or {}), float(distance))
                for chunk_id, text, meta, distance in zip(ids, documents, metadatas, distances, strict=False)
            ]

    def query_many(
        self, embeddings: Sequence[npt.NDArray[np.float32]], n_results: int, where: Mapping[str, Any] | None
    ) -> list[list[tuple[str, float]]]:
        """(chunk id, distance) of the nearest chunks for each query vector, without texts or metadata."""
        with _reachable("query"):
            result = self._collection.query(
                query_embeddings=list(embeddings),
                n_results=n_results,
                where=dict(where) if where else None,
                include=["distances"],
            )
            rows: list[list[tuple[str, float]]] = []
            for ids, distances in zip(result["ids"] or [], result.get("distances") or [], strict=False):
                rows.append(
                    [(chunk_id, float(distance)) for chunk_id, distance in zip(ids, distances, strict=False)]
                )
            return rows

    def get_chunks(
        self, ids: Sequence[str], where: Mapping[str, Any] | None, with_embeddings: bool
    ) -> dict[str, tuple[str, Metadata, npt.NDArray[np.float32] | None]]:
        """chunk id -> (text, metadata, embedding or None) for those of `ids` that exist and match `where`."""
        if not ids:
            return {}
        include = ["documents", "metadatas", *(["embeddings"] if with_embeddings else [])]
        with _reachable("get"):
            result = self._collection.get(
                ids=list(ids), where=dict(where) if where else None, include=include
            )
        documents = result.get("documents") or []
        metadatas = result.get("metadatas") or []
        embeddings = result.get("embeddings")
        found: dict[str, tuple[str, Metadata, npt.NDArray[np.float32] | None]] = {}
        for position, chunk_id in enumerate(result["ids"]):
            vector = (
                np.asarray(embeddings[position], dtype=np.float32)
                if with_embeddings and embeddings is not None
                else None
            )
            found[chunk_id] = (documents[position] or "", dict(metadatas[position] or {}), vector)
        return found

    def iter_rows(self) -> Iterator[tuple[str, str, Metadata]]:
        """Every chunk as (id, text, metadata), a page at a time."""
        with _reachable("iter_rows"):
            offset = 0
            while True:
                page = self._collection.get(limit=_PAGE, offset=offset, include=["documents", "metadatas"])
                ids = page["ids"]
                documents = page.get("documents") or []
                metadatas = page.get("metadatas") or []
                for chunk_id, text, metadata in zip(ids, documents, metadatas, strict=False):
                    yield chunk_id, text or "", dict(metadata or {})
                if len(ids) < _PAGE:
                    return
                offset += _PAGE

    def marker(self) -> tuple[int, float | None]:
        """(chunk count, last refresh time): changes whenever any replica writes (or the collection is refilled)."""
        return self.count(), self.last_refresh()

    def last_refresh(self) -> float | None:
        with _reachable("last_refresh"):
            # Re-read: another replica may have written since this one opened the collection.
            fresh = self._client.get_collection(self._name, embedding_function=self._embedding)
            metadata = fresh.metadata or {}
            value = metadata.get(LAST_REFRESH_KEY)
            return float(value) if isinstance(value, int | float) else None

    # --- writes --------------------------------------------------------------------------------------

    def _batches(self, size: int) -> Iterator[slice]:
        limit = max(1, int(self._client.get_max_batch_size()))
        for start in range(0, size, limit):
            yield slice(start, min(size, start + limit))

    def upsert(
        self,
        ids: Sequence[str],
        embeddings: Sequence[npt.NDArray[np.float32]],
        documents: Sequence[str],
        metadatas: Sequence[Metadata],
    ) -> None:
        with _reachable("upsert"):
            for part in self._batches(len(ids)):
                self._collection.upsert(
                    ids=list(ids[part]),
                    embeddings=list(embeddings[part]),
                    documents=list(documents[part]),
                    metadatas=list(metadatas[part]),
                )

    def update_metadata(self, ids: Sequence[str], metadatas: Sequence[Metadata]) -> None:
        with _reachable("update_metadata"):
            for part in self._batches(len(ids)):
                self._collection.update(ids=list(ids[part]), metadatas=list(metadatas[part]))

    def delete(self, ids: Sequence[str]) -> None:
        with _reachable("delete"):
            for part in self._batches(len(ids)):
                self._collection.delete(ids=list(ids[part]))

    def mark_refreshed(self) -> None:
        with _reachable("mark_refreshed"):
            metadata = dict(self._collection.metadata or {})
            metadata[LAST_REFRESH_KEY] = time.time()
            self._collection.modify(metadata=metadata)
