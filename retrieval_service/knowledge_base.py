"""The knowledge base: validation, chunking, upsert/prune, search with a relevance threshold, stats.

No gRPC here. Blocking work (tokenising, embedding, Chroma calls) runs in worker threads so the server's
event loop keeps answering health checks and searches during a long ingest. Writes are serialised per
process; across replicas they are idempotent because chunk ids derive from content.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from retrieval_service import sentence_index
from retrieval_service.adapters.chroma_store import ChromaStore, Metadata
from retrieval_service.adapters.embedding import MiniLMEmbedding
from retrieval_service.chunking import (
    CONTENT_TYPES,
    Chunk,
    ChunkingOptions,
    chunk_document,
    content_hash,
    content_type_for,
    parse_document,
)
from retrieval_service.errors import InvalidArgumentError
from retrieval_service.kb_snapshot import SYNC_MAX_CHUNKS, Snapshot, SnapshotManager
from retrieval_service.lexical_index import reciprocal_rank_fusion
from retrieval_service.query_batcher import DEFAULT_MAX_BATCH, QueryBatcher
from retrieval_service.relevance import (
    FALLBACK_THRESHOLD,
    SOURCE_CONFIGURED,
    SOURCE_FALLBACK,
    SOURCE_REQUEST,
    Threshold,
    is_relevant,
)
from service_kit.abbreviations import abbreviation_candidates, spell_out, spelled_names, words_of
from service_kit.embedding import Vector

logger = logging.getLogger(__name__)

# Metadata keys the service writes itself; Document.metadata may not override them.
RESERVED_KEYS = frozenset(
    {
        "doc_id",
        "title",
        "category",
        "last_updated",
        "content_hash",
        "doc_hash",
        "chunk_index",
        "section",
        "content_type",
        "token_count",
        sentence_index.COUNT_KEY,
    }
)
# Keys Search accepts in `filter` unless the configuration adds more.
DEFAULT_FILTER_KEYS = ("category", "doc_id", "source", "title", "last_updated", "section", "content_type")
MAX_DOC_ID_CHARS = 512
MAX_METADATA_VALUE_CHARS = 1024
# Candidates each ranking contributes to the fusion (before the top_k cut).
CANDIDATES = 20
# Fused candidates fetched beyond top_k, and how far (cosine distance) behind the best candidate a chunk may be
# before it is ordered after the nearer ones (chosen on the tuning data, docs/retrieval.md).
POOL_EXTRA = 4
DISTANCE_GAP = 0.15
_METADATA_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


class Outcome(Enum):
    ADDED = "added"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Limits:
    max_doc_bytes: int = 1024 * 1024
    max_batch_documents: int = 256
    max_chunks_per_document: int = 2000
    max_top_k: int = 50
    max_query_chars: int = 2000
    default_top_k: int = 4
    # None: calibrated per knowledge base (retrieval_service.relevance); a number: RETRIEVAL_MAX_DISTANCE.
    default_max_distance: float | None = None
    filter_keys: tuple[str, ...] = DEFAULT_FILTER_KEYS


@dataclass(frozen=True)
class DocumentIn:
    doc_id: str
    content: str
    content_type: str = ""
    title: str = ""
    category: str = ""
    last_updated: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass
class DocumentReport:
    doc_id: str
    outcome: Outcome
    chunks_added: int = 0
    chunks_unchanged: int = 0
    chunks_deleted: int = 0
    error: str = ""


@dataclass
class IngestReport:
    results: list[DocumentReport]

    def count(self, outcome: Outcome) -> int:
        return sum(1 for item in self.results if item.outcome is outcome)

    @property
    def chunks_deleted(self) -> int:
        return sum(item.chunks_deleted for item in self.results)


@dataclass(frozen=True)
class Hit:
    doc_id: str
    chunk_id: str
    text: str
    distance: float
    title: str
    metadata: dict[str, str]
    # Reciprocal rank fusion score and the 1-based rank in each ranking (0: not in that ranking).
    fused_score: float = 0.0
    dense_rank: int = 0
    lexical_rank: int = 0


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    nothing_relevant: bool
    max_distance_applied: float
    dropped_count: int
    threshold_source: str = SOURCE_CONFIGURED


@dataclass(frozen=True)
class DeleteReport:
    documents_deleted: int
    chunks_deleted: int
    deleted_doc_ids: list[str]


@dataclass(frozen=True)
class Stats:
    documents: int
    chunks: int
    last_refresh_unix: float | None
    collection: str
    embedding_model: str
    # The threshold a search without max_distance applies, and where it comes from.
    default_max_distance: float
    threshold_source: str = SOURCE_CONFIGURED
    calibrated_max_distance: float | None = None
    lexical_indexed_chunks: int = 0
    sentences: int = 0


@dataclass
class _Planned:
    """A validated, chunked document and what must change in the store for it."""

    doc: DocumentIn
    chunks: list[Chunk]
    metadatas: list[Metadata]
    report: DocumentReport
    # The sentences of each chunk (retrieval_service.sentence_index) and the title they are embedded with.
    sentences: list[list[str]]
    title: str
    to_embed: list[int] = field(default_factory=list)
    to_relabel: list[int] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    stale_sentences: list[str] = field(default_factory=list)


def _reject_reason(doc: DocumentIn, limits: Limits) -> str | None:
    """Why a document cannot be ingested at all, naming it; None if it may be chunked."""
    if not doc.doc_id.strip():
        return "doc_id is required"
    if len(doc.doc_id) > MAX_DOC_ID_CHARS:
        return f"doc_id is longer than {MAX_DOC_ID_CHARS} characters"
    if doc.content_type and doc.content_type not in CONTENT_TYPES:
        return f"{doc.doc_id}: content_type {doc.content_type!r} is not one of {', '.join(CONTENT_TYPES)}"
    size = len(doc.content.encode("utf-8", "surrogatepass"))
    if size > limits.max_doc_bytes:
        return f"{doc.doc_id}: document is {size} bytes; the limit is {limits.max_doc_bytes} (RETRIEVAL_MAX_DOC_BYTES)"
    if not doc.content.strip():
        return f"{doc.doc_id}: empty document"
    if "\x00" in doc.content:
        return f"{doc.doc_id}: binary content (NUL bytes); only Markdown, plain text and HTML are accepted"
    controls = sum(1 for char in doc.content if ord(char) < 32 and char not in "\t\n\r\f\v")
    if controls > max(8, len(doc.content) // 100):
        return f"{doc.doc_id}: binary content ({controls} control characters)"
    if "\ufffd" in doc.content:
        return f"{doc.doc_id}: invalid UTF-8 (the text contains U+FFFD replacement characters)"
    reserved = sorted(RESERVED_KEYS & set(doc.metadata))
    if reserved:
        return f"{doc.doc_id}: metadata key {reserved[0]!r} is reserved"
    for key, value in sorted(doc.metadata.items()):
        if not _METADATA_KEY.fullmatch(key):
            return f"{doc.doc_id}: metadata key {key!r} must match {_METADATA_KEY.pattern}"
        if len(value) > MAX_METADATA_VALUE_CHARS:
            return f"{doc.doc_id}: metadata[{key}] is longer than {MAX_METADATA_VALUE_CHARS} characters"
    return None


class KnowledgeBase:
    def __init__(
        self,
        store: ChromaStore,
        embedding: MiniLMEmbedding,
        limits: Limits | None = None,
        chunking: ChunkingOptions | None = None,
        *,
        sync_index_max_chunks: int = SYNC_MAX_CHUNKS,
        query_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        """`sync_index_max_chunks`: up to this many chunks a search rebuilds a stale lexical index itself;
        above, it is rebuilt in the background (retrieval_service.kb_snapshot). `query_batch`: at most this
        many concurrent searches share one query-embedding pass (retrieval_service.query_batcher); 1: each
        search embeds its own query in its own worker thread."""
        self._store = store
        self._sentences = store.companion(sentence_index.COLLECTION_SUFFIX)
        self._embedding = embedding
        self.limits = limits or Limits()
        self._chunking = chunking or ChunkingOptions()
        self._write_lock = asyncio.Lock()
        self._queries = (
            QueryBatcher(embedding.embed_batch, max_batch=query_batch) if query_batch > 1 else None
        )
        # Rare in the language: the model's vocabulary has no single piece for the term
        # (retrieval_service.lexical_index, "Exact terms").
        self._uncommon = lambda term: not embedding.model.is_whole_word(term)
        self._is_whole_word = embedding.model.is_whole_word
        self._snapshots = SnapshotManager(
            store,
            self._sentences,
            embedding,
            self.limits.filter_keys,
            sync_max_chunks=sync_index_max_chunks,
        )

    # --- ingestion -----------------------------------------------------------------------------------

    async def ingest(self, documents: Sequence[DocumentIn], prune_changed_sections: bool) -> IngestReport:
        if len(documents) > self.limits.max_batch_documents:
            raise InvalidArgumentError(
                "documents",
                f"{len(documents)} documents in one request; the limit is {self.limits.max_batch_documents}",
            )
        async with self._write_lock:
            return await asyncio.to_thread(self._ingest_sync, list(documents), prune_changed_sections)

    def _plan_one(self, doc: DocumentIn, seen: set[str]) -> _Planned | DocumentReport:
        reason = _reject_reason(doc, self.limits)
        if reason is None and doc.doc_id in seen:
            reason = f"{doc.doc_id}: appears twice in one request"
        if reason is not None:
            return DocumentReport(doc.doc_id, Outcome.REJECTED, error=reason)
        seen.add(doc.doc_id)
        kind = content_type_for(doc.doc_id, doc.content_type)
        parsed = parse_document(doc.doc_id, doc.content, kind)
        if not parsed.body.strip():
            return DocumentReport(doc.doc_id, Outcome.REJECTED, error=f"{doc.doc_id}: no text after markup")
        title = doc.title or parsed.title
        chunks = chunk_document(
            doc.doc_id, parsed, self._embedding.count_tokens_batch, self._chunking, kind, title=title
        )
        if not chunks:
            return DocumentReport(doc.doc_id, Outcome.REJECTED, error=f"{doc.doc_id}: no text after markup")
        if len(chunks) > self.limits.max_chunks_per_document:
            return DocumentReport(
                doc.doc_id,
                Outcome.REJECTED,
                error=f"{doc.doc_id}: {len(chunks)} chunks; the limit is {self.limits.max_chunks_per_document}",
            )
        front = parsed.front_matter
        base: Metadata = {str(k): str(v) for k, v in doc.metadata.items()}
        base.update(
            {
                "source": doc.metadata.get("source") or doc.doc_id,
                "doc_id": doc.doc_id,
                "title": title,
                "category": doc.category or front.get("category", "") or "general",
                "last_updated": doc.last_updated or front.get("last_updated", ""),
                "doc_hash": content_hash(doc.content),
                "content_type": kind,
            }
        )
        metadatas: list[Metadata] = []
        sentences = [sentence_index.sentences_of(chunk.text) for chunk in chunks]
        for chunk, said in zip(chunks, sentences, strict=True):
            meta = dict(base)
            meta.update(
                {
                    "content_hash": chunk.content_hash,
                    "chunk_index": chunk.index,
                    "section": chunk.section,
                    "token_count": chunk.token_count,
                    sentence_index.COUNT_KEY: len(said),
                }
            )
            metadatas.append(meta)
        return _Planned(doc, chunks, metadatas, DocumentReport(doc.doc_id, Outcome.ADDED), sentences, title)

    def _ingest_sync(self, documents: list[DocumentIn], prune: bool) -> IngestReport:
        started = time.perf_counter()
        seen: set[str] = set()
        planned: list[_Planned] = []
        reports: list[DocumentReport] = []
        for doc in documents:
            item = self._plan_one(doc, seen)
            if isinstance(item, DocumentReport):
                logger.info("document rejected", extra={"doc_id": doc.doc_id, "reason": item.error})
                reports.append(item)
            else:
                planned.append(item)
                reports.append(item.report)
        existing = self._store.chunks_of([item.doc.doc_id for item in planned])
        for item in planned:
            self._diff(item, existing.get(item.doc.doc_id, {}), prune)

        ids: list[str] = []
        texts: list[str] = []
        metas: list[Metadata] = []
        sentence_ids: list[str] = []
        sentence_texts: list[str] = []
        sentence_metas: list[Metadata] = []
        relabel_ids: list[str] = []
        relabel_metas: list[Metadata] = []
        relabel_sentence_ids: list[str] = []
        relabel_sentence_metas: list[Metadata] = []
        stale: list[str] = []
        stale_sentences: list[str] = []
        for item in planned:
            for i in item.to_embed:
                chunk_id = item.chunks[i].chunk_id
                ids.append(chunk_id)
                texts.append(item.chunks[i].text)
                metas.append(item.metadatas[i])
                sentence_ids.extend(sentence_index.sentence_ids(chunk_id, len(item.sentences[i])))
                sentence_texts.extend(item.sentences[i])
                sentence_metas.extend([item.metadatas[i]] * len(item.sentences[i]))
            for i in item.to_relabel:
                chunk_id = item.chunks[i].chunk_id
                relabel_ids.append(chunk_id)
                relabel_metas.append(item.metadatas[i])
                relabel_sentence_ids.extend(sentence_index.sentence_ids(chunk_id, len(item.sentences[i])))
                relabel_sentence_metas.extend([item.metadatas[i]] * len(item.sentences[i]))
            stale.extend(item.stale)
            stale_sentences.extend(item.stale_sentences)
        # Embed everything new in one call (the model batches by length), then write: sentences before their
        # chunk, whose sentence count says they are there (a write cut short is redone by the next ingest).
        embed_texts = [item.chunks[i].embedded_text for item in planned for i in item.to_embed]
        embed_texts += [
            sentence_index.embedded_text(item.title, sentence)
            for item in planned
            for i in item.to_embed
            for sentence in item.sentences[i]
        ]
        vectors = self._embedding.embed(embed_texts)
        if sentence_ids:
            self._sentences.upsert(sentence_ids, vectors[len(ids) :], sentence_texts, sentence_metas)
        if ids:
            self._store.upsert(ids, vectors[: len(ids)], texts, metas)
        if relabel_ids:
            if relabel_sentence_ids:
                self._sentences.update_metadata(relabel_sentence_ids, relabel_sentence_metas)
            self._store.update_metadata(relabel_ids, relabel_metas)
        if stale:
            if stale_sentences:
                self._sentences.delete(stale_sentences)
            self._store.delete(stale)
        if ids or relabel_ids or stale:
            self._store.mark_refreshed()
            self._snapshots.invalidate()
        report = IngestReport(reports)
        logger.info(
            "ingested batch",
            extra={
                "documents": len(documents),
                "added": report.count(Outcome.ADDED),
                "updated": report.count(Outcome.UPDATED),
                "unchanged": report.count(Outcome.UNCHANGED),
                "rejected": report.count(Outcome.REJECTED),
                "chunks_embedded": len(ids),
                "sentences_embedded": len(sentence_ids),
                "chunks_deleted": len(stale),
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        return report

    @staticmethod
    def _diff(item: _Planned, existing: Mapping[str, Metadata], prune: bool) -> None:
        new_ids = {chunk.chunk_id for chunk in item.chunks}
        for index, chunk in enumerate(item.chunks):
            old = existing.get(chunk.chunk_id)
            if old is None or sentence_index.COUNT_KEY not in old:
                item.to_embed.append(index)  # new, or stored before it had sentence vectors
            elif old != item.metadatas[index]:
                item.to_relabel.append(index)
        if prune:
            item.stale = sorted(set(existing) - new_ids)
            item.stale_sentences = sentence_index.stored_sentence_ids(
                {chunk_id: existing[chunk_id] for chunk_id in item.stale}
            )
        report = item.report
        report.chunks_added = len(item.to_embed)
        report.chunks_unchanged = len(item.chunks) - len(item.to_embed)
        report.chunks_deleted = len(item.stale)
        if not existing:
            report.outcome = Outcome.ADDED
        elif item.to_embed or item.to_relabel or item.stale:
            report.outcome = Outcome.UPDATED
        else:
            report.outcome = Outcome.UNCHANGED

    # --- search --------------------------------------------------------------------------------------

    def _where(self, filters: Mapping[str, str]) -> dict[str, Any] | None:
        allowed = set(self.limits.filter_keys)
        for key in sorted(filters):
            if key not in allowed:
                raise InvalidArgumentError(
                    f"filter[{key}]", f"unknown filter key {key!r}; allowed: {', '.join(sorted(allowed))}"
                )
        clauses: list[dict[str, Any]] = [{key: value} for key, value in sorted(filters.items())]
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}

    async def search(
        self,
        query: str,
        top_k: int | None = None,
        filters: Mapping[str, str] | None = None,
        max_distance: float | None = None,
    ) -> SearchResult:
        text = query.strip()
        if not text:
            raise InvalidArgumentError("query", "must not be empty")
        if len(text) > self.limits.max_query_chars:
            raise InvalidArgumentError(
                "query", f"is {len(text)} characters; the limit is {self.limits.max_query_chars}"
            )
        if top_k is not None and not 1 <= top_k <= self.limits.max_top_k:
            raise InvalidArgumentError(
                "top_k",
                f"{top_k} is out of range; use 1..{self.limits.max_top_k} or leave it unset for the default",
            )
        if max_distance is not None and (math.isnan(max_distance) or not 0.0 <= max_distance <= 2.0):
            raise InvalidArgumentError("max_distance", f"{max_distance} is outside 0..2 (cosine distance)")
        where = self._where(filters or {})
        k = self.limits.default_top_k if top_k is None else top_k
        names: list[str] = []
        if abbreviation_candidates(words_of(text), (), self._is_whole_word):
            names = await asyncio.to_thread(self._spelled_names, text)
            text = spell_out(text, names)
        search = functools.partial(
            self._search_by_vector, text, k, dict(filters or {}), where, max_distance, names
        )
        if self._queries is not None:
            return await self._queries.run(text, search)
        return await asyncio.to_thread(lambda: search(self._embedding.embed_batch([text])[0]))

    def _spelled_names(self, text: str) -> list[str]:
        """The help center's names the abbreviations of `text` stand for (service_kit.abbreviations); none for
        a KB whose rows are not held (too large to scan for names)."""
        snapshot = self._snapshots.current()
        if snapshot is None or snapshot.rows is None:
            return []
        known = {word for word in words_of(text) if snapshot.lexical.knows(word)}
        return spelled_names(text, known, self._is_whole_word, snapshot.names)

    @property
    def query_batcher(self) -> QueryBatcher | None:
        """The batcher concurrent searches share their query embedding through (None: batching is off)."""
        return self._queries

    def _threshold(self, requested: float | None, calibrated: Threshold | None) -> Threshold:
        if requested is not None:
            return Threshold(requested, SOURCE_REQUEST)
        if self.limits.default_max_distance is not None:
            return Threshold(self.limits.default_max_distance, SOURCE_CONFIGURED)
        return calibrated or Threshold(FALLBACK_THRESHOLD, SOURCE_FALLBACK)

    def _search_by_vector(
        self,
        query: str,
        k: int,
        filters: dict[str, str],
        where: dict[str, Any] | None,
        requested: float | None,
        names: Sequence[str],
        vector: Vector,
    ) -> SearchResult:
        """The search proper, in a worker thread, once the query is embedded. `names`: what the query's
        abbreviations stand for; a chunk that contains one holds an exact term of the query."""
        snapshot = self._snapshots.current()
        threshold = self._threshold(requested, snapshot.threshold if snapshot else None)
        wanted = max(k, CANDIDATES)
        # Ids and distances only: the texts and metadata are fetched below for the pool alone (Chroma reads
        # them from SQLite per result, the larger part of a query's cost for 20 candidates).
        # A chunk is as near as the nearer of its own vector and its nearest sentence (sentence_index).
        distance = dict(self._store.query_many([vector], wanted, where)[0])
        # Chunks Chroma has just returned, or whose sentence it has: they exist, the snapshot's copy serves.
        confirmed = set(distance)
        held = snapshot.sentences if snapshot is not None else None
        rows = snapshot.rows if snapshot is not None else None
        if held is not None and rows is not None:  # a snapshot holds sentences only beside its rows
            sentences = held.nearest(
                vector,
                sentence_index.CANDIDATES,
                (lambda chunk_id: chunk_id in rows and _matches(rows[chunk_id][1], filters))
                if filters
                else None,
            )
        else:
            sentences = self._sentences.query_many([vector], sentence_index.CANDIDATES, where)[0]
            confirmed.update(sentence_index.chunk_of(sentence) for sentence, _ in sentences)
        for chunk_id, nearest in sentence_index.nearest_per_chunk(sentences).items():
            distance[chunk_id] = min(nearest, distance.get(chunk_id, nearest))
        dense = sorted(distance.items(), key=lambda row: row[1])[:wanted]
        distance = dict(dense)
        # A chunk cut from the dense list has no distance: if BM25 brings it back, it is read with its vector.
        confirmed &= distance.keys()
        lexical = snapshot.lexical.search(query, wanted, filters, self._uncommon) if snapshot else []
        dense_rank = {chunk_id: rank for rank, (chunk_id, _) in enumerate(dense, start=1)}
        lexical_rank = {hit.chunk_id: rank for rank, hit in enumerate(lexical, start=1)}
        exact = {hit.chunk_id: hit.exact_terms for hit in lexical}
        fused = reciprocal_rank_fusion(
            [[chunk_id for chunk_id, _ in dense], [hit.chunk_id for hit in lexical]]
        )
        # Fetch a few more than k: the final order may still move a far-off lexical candidate behind them.
        pool = fused[: k + POOL_EXTRA]
        stored = self._pool_rows([chunk_id for chunk_id, _ in pool], confirmed, distance, where, snapshot)
        candidates: list[Hit] = []
        for chunk_id, score in pool:
            if chunk_id not in stored:
                continue
            text, metadata, embedding = stored[chunk_id]
            if chunk_id not in distance:
                assert embedding is not None
                distance[chunk_id] = max(0.0, 1.0 - float(np.dot(vector, embedding)))
            named = tuple(name for name in names if name in text)
            if named:
                exact[chunk_id] = (*exact.get(chunk_id, ()), *named)
            candidates.append(
                Hit(
                    doc_id=str(metadata.get("doc_id", "")),
                    chunk_id=chunk_id,
                    text=text,
                    distance=distance[chunk_id],
                    title=str(metadata.get("title", "")),
                    metadata={key: str(value) for key, value in metadata.items()},
                    fused_score=score,
                    dense_rank=dense_rank.get(chunk_id, 0),
                    lexical_rank=lexical_rank.get(chunk_id, 0),
                )
            )
        best = min((hit.distance for hit in candidates), default=0.0)
        # Fused order, except that a chunk far behind the best one in meaning (more than DISTANCE_GAP) goes
        # after those near it unless it carries an exact term of the query; exact terms come first.
        candidates.sort(
            key=lambda hit: (
                not exact.get(hit.chunk_id),
                hit.distance > best + DISTANCE_GAP and not exact.get(hit.chunk_id),
                -hit.fused_score,
            )
        )
        hits: list[Hit] = []
        dropped = 0
        for hit in candidates[:k]:
            if is_relevant(hit.distance, threshold, exact_terms=exact.get(hit.chunk_id, ())):
                hits.append(hit)
            else:
                dropped += 1
        return SearchResult(
            hits=hits,
            nothing_relevant=not hits,
            max_distance_applied=threshold.max_distance,
            dropped_count=dropped,
            threshold_source=threshold.source,
        )

    def _pool_rows(
        self,
        pool_ids: list[str],
        confirmed: set[str],
        distance: Mapping[str, float],
        where: dict[str, Any] | None,
        snapshot: Snapshot | None,
    ) -> dict[str, tuple[str, Metadata, Vector | None]]:
        """Text and metadata of the pool. A `confirmed` chunk exists (Chroma just returned it or its sentence)
        and its content-hashed id fixes its text, so the snapshot's copy serves it; the rest (lexical-only
        candidates, which also need their vector for a distance when they have none, chunks found through the
        snapshot's sentences, and anything the snapshot lacks) come from one Chroma read, which also drops
        chunks that are gone."""
        held = snapshot.rows if snapshot is not None else None
        stored: dict[str, tuple[str, Metadata, Vector | None]] = {}
        missing: list[str] = []
        for chunk_id in pool_ids:
            row = held.get(chunk_id) if held is not None and chunk_id in confirmed else None
            if row is None:
                missing.append(chunk_id)
            else:
                stored[chunk_id] = (row[0], row[1], None)
        if missing:
            lexical_only = any(chunk_id not in distance for chunk_id in missing)
            fetched = self._store.get_chunks(missing, where, with_embeddings=lexical_only)
            if len(fetched) < len(missing):
                self._snapshots.invalidate()  # the lexical index named a chunk that is gone: refresh it
            stored.update(fetched)
        return stored

    # --- deletion and stats --------------------------------------------------------------------------

    async def delete(
        self,
        doc_ids: Sequence[str] = (),
        prefix: str = "",
        keep: Sequence[str] = (),
        all_documents: bool = False,
    ) -> DeleteReport:
        if doc_ids and (prefix or all_documents):
            raise InvalidArgumentError("doc_ids", "give doc_ids or doc_id_prefix/all_documents, not both")
        if not doc_ids and not prefix and not all_documents:
            raise InvalidArgumentError(
                "doc_id_prefix", "give doc_ids, a doc_id_prefix, or all_documents=true for the whole KB"
            )
        if any(not doc_id.strip() for doc_id in doc_ids):
            raise InvalidArgumentError("doc_ids", "must not contain empty ids")
        async with self._write_lock:
            return await asyncio.to_thread(self._delete_sync, list(doc_ids), prefix, set(keep))

    def _delete_sync(self, doc_ids: list[str], prefix: str, keep: set[str]) -> DeleteReport:
        by_doc: dict[str, dict[str, Metadata]] = {}
        if doc_ids:
            for doc_id, chunks in self._store.chunks_of(doc_ids).items():
                if chunks:
                    by_doc[doc_id] = chunks
        else:
            for chunk_id, meta in self._store.iter_metadata():
                doc_id = str(meta.get("doc_id", ""))
                if doc_id.startswith(prefix) and doc_id not in keep:
                    by_doc.setdefault(doc_id, {})[chunk_id] = meta
        chunk_ids = [chunk for chunks in by_doc.values() for chunk in chunks]
        if chunk_ids:
            sentences = sentence_index.stored_sentence_ids(
                {chunk: meta for chunks in by_doc.values() for chunk, meta in chunks.items()}
            )
            if sentences:
                self._sentences.delete(sentences)
            self._store.delete(chunk_ids)
            self._store.mark_refreshed()
            self._snapshots.invalidate()
        logger.info("deleted documents", extra={"documents": len(by_doc), "chunks": len(chunk_ids)})
        return DeleteReport(len(by_doc), len(chunk_ids), sorted(by_doc))

    async def close(self) -> None:
        """Releases the store (after any ingestion in flight); the knowledge base is unusable afterwards."""
        async with self._write_lock:
            await asyncio.to_thread(self._snapshots.close)
            await asyncio.to_thread(self._store.close)

    async def ping(self) -> None:
        """Raises StoreUnavailableError while the store cannot be read."""
        await asyncio.to_thread(self._store.count)

    async def stats(self) -> Stats:
        return await asyncio.to_thread(self._stats_sync)

    def prefetch(self) -> None:
        """Starts building the lexical index and calibrating the threshold in a background thread."""
        self._snapshots.prefetch()

    def warm(self) -> None:
        """Builds the lexical index and calibrates the threshold now (start-up, benchmarks), blocking."""
        self._snapshots.wait_until_fresh()

    def _stats_sync(self) -> Stats:
        snapshot = self._snapshots.current()
        threshold = self._threshold(None, snapshot.threshold if snapshot else None)
        documents: set[str] = set()
        chunks = 0
        for _chunk_id, meta in self._store.iter_metadata():
            chunks += 1
            documents.add(str(meta.get("doc_id", "")))
        return Stats(
            documents=len(documents),
            chunks=chunks,
            last_refresh_unix=self._store.last_refresh(),
            collection=self._store.name,
            embedding_model=self._embedding.model_name,
            default_max_distance=threshold.max_distance,
            threshold_source=threshold.source,
            calibrated_max_distance=snapshot.threshold.max_distance if snapshot else None,
            lexical_indexed_chunks=len(snapshot.lexical) if snapshot else 0,
            sentences=self._sentences.count(),
        )


def _matches(metadata: Metadata, filters: Mapping[str, str]) -> bool:
    """Whether a chunk's metadata passes Search's equality filters (as Chroma's `where` would)."""
    return all(metadata.get(key) == value for key, value in filters.items())
