"""What a search needs besides Chroma, derived from the collection and kept in step with it: the BM25 index
over every chunk, the KB's calibrated relevance threshold (retrieval_service.relevance) and, while they fit in
`ROWS_MAX_BYTES` (about 130k chunks of 300 characters), every chunk's text and metadata (`rows`), so a search
reads the texts of its dense hits from memory instead of a second Chroma read (which cost as much as the
vector query itself; BENCHMARKS.md). A dense hit exists (Chroma just returned it) and its id is a hash of its
text, so even a snapshot a background rebuild has not caught up with serves its text right; only a change of
metadata alone shows a few seconds late.

Chroma is the only source of truth; the snapshot is derived state, rebuilt from it, never written back:
- **Marker.** A snapshot records the collection's (chunk count, last-refresh time) read *before* its rows were
  read. Every write through any replica calls `mark_refreshed`, so a different marker means the snapshot may
  be stale (a write racing with a build leaves the old marker, so the next check rebuilds again).
- **When it is checked.** After a write through this replica (`invalidate`), on the next search at once; else
  at most every `check_seconds` (1 s), which is how writes through other replicas sharing a Chroma server are
  seen. Restarts need nothing: a new process builds its first snapshot from the collection.
- **How it is rebuilt.** Up to `sync_max_chunks` chunks the search that notices the change rebuilds in its
  own thread (tens of milliseconds), so a search after an ingest or delete sees exactly the new content. A
  larger KB is rebuilt in a background thread while searches keep using the previous snapshot (stale for a few
  seconds after a write; hits it names that no longer exist are dropped when their texts are fetched from
  Chroma, so a deleted chunk is never returned).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from retrieval_service.adapters.chroma_store import ChromaStore, Metadata
from retrieval_service.adapters.embedding import MiniLMEmbedding
from retrieval_service.chunking import with_title
from retrieval_service.lexical_index import LexicalIndex, build_index
from retrieval_service.relevance import OFF_TOPIC_PROBES, Threshold, calibrated_threshold
from retrieval_service.sentence_index import (
    MATRIX_MAX_BYTES,
    SentenceMatrix,
    nearest_per_chunk,
    stored_sentence_ids,
)
from service_kit.abbreviations import named_phrases

logger = logging.getLogger(__name__)

CHECK_SECONDS = 1.0
SYNC_MAX_CHUNKS = 5000
# Memory the held rows may take (estimated: text, metadata values and ~0.5 kB of Python objects per chunk).
ROWS_MAX_BYTES = 128 * 1024 * 1024
_ROW_OVERHEAD_BYTES = 512

_probe_lock = threading.Lock()
_probe_vectors: dict[int, list[np.ndarray]] = {}


@dataclass(frozen=True)
class Snapshot:
    lexical: LexicalIndex
    threshold: Threshold
    marker: tuple[int, float | None]
    built_seconds: float
    # chunk id -> (text, metadata) of every chunk; None for a KB too large to hold (its searches read Chroma).
    rows: Mapping[str, tuple[str, Metadata]] | None = None
    # Every sentence vector of a small KB rebuilt in step with the collection (at most `sync_max_chunks`
    # chunks, rows held, under MATRIX_MAX_BYTES); None otherwise (its searches query the sentence collection).
    sentences: SentenceMatrix | None = None

    @functools.cached_property
    def names(self) -> Counter[str]:
        """The help center's names ("American Express", "Priority Support") and how often each occurs, for
        spelling out a customer's abbreviations (service_kit.abbreviations). Counted on the first search that
        needs them (~0.1 s at SYNC_MAX_CHUNKS chunks); empty when the rows are not held or are more than that,
        so no search after a write of a large KB waits for a scan of all its text."""
        if self.rows is None or len(self.rows) > SYNC_MAX_CHUNKS:
            return Counter()
        return named_phrases(text for text, _ in self.rows.values())


def probe_vectors(embedding: MiniLMEmbedding) -> list[np.ndarray]:
    """The off-topic probes embedded once per model instance."""
    with _probe_lock:
        key = id(embedding.model)
        if key not in _probe_vectors:
            _probe_vectors[key] = list(embedding.embed(list(OFF_TOPIC_PROBES)))
        return _probe_vectors[key]


class SnapshotManager:
    def __init__(
        self,
        store: ChromaStore,
        sentences: ChromaStore,
        embedding: MiniLMEmbedding,
        filter_keys: Sequence[str],
        *,
        check_seconds: float = CHECK_SECONDS,
        sync_max_chunks: int = SYNC_MAX_CHUNKS,
    ) -> None:
        self._store = store
        self._sentences = sentences
        self._embedding = embedding
        self._filter_keys = tuple(filter_keys)
        self._check_seconds = check_seconds
        self._sync_max_chunks = sync_max_chunks
        self._lock = threading.Lock()  # guards the fields below
        self._build_lock = threading.Lock()  # one build at a time
        self._snapshot: Snapshot | None = None
        self._dirty = True
        self._checked_at = 0.0
        self._background: threading.Thread | None = None
        self._closed = False

    def invalidate(self) -> None:
        """A write went through this replica: check the marker on the next search."""
        with self._lock:
            self._dirty = True

    def current(self) -> Snapshot | None:
        """The freshest snapshot available now (None only while a large KB's first build runs)."""
        now = time.monotonic()
        with self._lock:
            snapshot = self._snapshot
            due = self._dirty or snapshot is None or now - self._checked_at >= self._check_seconds
            if not due:
                return snapshot
            self._dirty = False
            self._checked_at = now
        try:
            marker = self._store.marker()
        except Exception:
            self.invalidate()  # check again on the next search
            raise
        if snapshot is not None and snapshot.marker == marker:
            return snapshot
        if marker[0] <= self._sync_max_chunks:
            return self._build(marker)
        self._start_background()
        return snapshot

    def wait_until_fresh(self, timeout: float = 300.0) -> Snapshot | None:
        """Builds (or waits for) a snapshot of the collection as it is now; for start-up warming and benchmarks."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.invalidate()
            marker = self._store.marker()
            with self._build_lock:
                snapshot = self._snapshot
                if snapshot is not None and snapshot.marker == marker:
                    return snapshot
            if self._background is None or not self._background.is_alive():
                return self._build(marker)
            time.sleep(0.05)
        return self._snapshot

    def close(self, timeout: float = 30.0) -> None:
        """Waits for a background build to end (before the store it reads is closed)."""
        with self._lock:
            self._closed = True
            background = self._background
        if background is not None:
            background.join(timeout)

    def prefetch(self) -> None:
        """Builds the first snapshot in the background (start-up), so the first searches need not wait."""
        self._start_background()

    def _start_background(self) -> None:
        with self._lock:
            if self._closed or (self._background is not None and self._background.is_alive()):
                return
            self._background = threading.Thread(target=self._build_quietly, name="kb-snapshot", daemon=True)
            self._background.start()

    def _build_quietly(self) -> None:
        try:
            marker = self._store.marker()
            with self._lock:
                current = self._snapshot
            if current is None or current.marker != marker:
                self._build(marker)
        except Exception:  # the next check retries; searches keep the previous snapshot meanwhile
            if not self._closed:
                logger.warning(
                    "rebuilding the lexical index failed; retrying on a later search", exc_info=True
                )
            self.invalidate()

    def _build(self, marker: tuple[int, float | None]) -> Snapshot:
        with self._build_lock:
            existing = self._snapshot
            if existing is not None and existing.marker == marker:
                return existing
            started = time.perf_counter()
            threshold = self._calibrate(marker[0])
            if existing is None and marker[0] > self._sync_max_chunks:
                # A large KB's first build takes a while: serve the calibrated threshold (and dense-only search)
                # meanwhile. The marker never matches, so this placeholder is replaced as soon as the build ends.
                with self._lock:
                    self._snapshot = Snapshot(build_index([], self._filter_keys), threshold, (-1, None), 0.0)
            held: dict[str, tuple[str, Metadata]] = {}
            held_bytes = 0

            def rows() -> Iterator[tuple[str, str, Metadata]]:
                nonlocal held_bytes
                # Chunks are indexed with their document's title, as they were embedded (retrieval_service.chunking).
                for chunk_id, text, metadata in self._store.iter_rows():
                    if held_bytes <= ROWS_MAX_BYTES:
                        held[chunk_id] = (text, metadata)
                        held_bytes += (
                            len(text) + _ROW_OVERHEAD_BYTES + sum(len(str(v)) for v in metadata.values())
                        )
                    yield chunk_id, with_title(str(metadata.get("title", "")), text), metadata

            lexical = build_index(rows(), self._filter_keys, marker)
            rows_held = held if held_bytes <= ROWS_MAX_BYTES else None
            sentences = (
                self._sentence_matrix(rows_held, existing.sentences if existing is not None else None)
                if rows_held is not None and marker[0] <= self._sync_max_chunks
                else None
            )
            snapshot = Snapshot(
                lexical, threshold, marker, time.perf_counter() - started, rows_held, sentences
            )
            with self._lock:
                self._snapshot = snapshot
            logger.info(
                "knowledge base snapshot built",
                extra={
                    "chunks": len(lexical),
                    "calibrated_max_distance": threshold.max_distance,
                    "threshold_source": threshold.source,
                    "seconds": round(snapshot.built_seconds, 3),
                },
            )
            return snapshot

    def _sentence_matrix(
        self, rows: Mapping[str, tuple[str, Metadata]], previous: SentenceMatrix | None
    ) -> SentenceMatrix | None:
        """The sentence vectors of the chunks in `rows` (ids from their sentence counts). A sentence id is
        derived from its chunk's content, so its vector never changes: the previous matrix's vectors are
        reused and only new sentences are read from Chroma (reading 20k vectors takes ~1 s, and a small KB's
        snapshot is rebuilt by the first search after every write)."""
        wanted = stored_sentence_ids({chunk_id: metadata for chunk_id, (_, metadata) in rows.items()})
        if len(wanted) * self._embedding.dimension * 4 > MATRIX_MAX_BYTES:
            return None
        known = dict(zip(previous.ids, previous.vectors, strict=True)) if previous is not None else {}
        missing = [sentence for sentence in wanted if sentence not in known]
        for sentence, (_, _, vector) in self._sentences.get_chunks(
            missing, None, with_embeddings=True
        ).items():
            if vector is not None:
                known[sentence] = vector
        ids = [sentence for sentence in wanted if sentence in known]  # a sentence write cut short: left out
        matrix = (
            np.vstack([known[sentence] for sentence in ids])
            if ids
            else np.zeros((0, self._embedding.dimension))
        )
        return SentenceMatrix(ids, matrix.astype(np.float32, copy=False))

    def _calibrate(self, chunks: int) -> Threshold:
        if chunks == 0:
            return calibrated_threshold([], 0)
        # The probes are measured as searches measure a chunk: the nearer of it and its nearest sentence.
        probes = probe_vectors(self._embedding)
        by_chunk = self._store.query_many(probes, 1, None)
        by_sentence = self._sentences.query_many(probes, 1, None)
        best = [
            min([distance for _, distance in chunk_row[:1]] + list(nearest_per_chunk(sentence_row).values()))
            for chunk_row, sentence_row in zip(by_chunk, by_sentence, strict=True)
            if chunk_row or sentence_row
        ]
        return calibrated_threshold(best, chunks)
