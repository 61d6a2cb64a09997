"""Sentence vectors beside the chunk vectors: a chunk is as near to a question as its nearest sentence.

A chunk's single vector averages everything it says. A question about one fact in a chunk that says five
things ("do I have to put my card in to try it?" against a free-trial article whose third sentence is "No
credit card is needed") lands far from that average, often beyond the relevance threshold, while its
distance to the one sentence is short. So every chunk's sentences are embedded too, each prefixed with the
article title ("Free trial: No credit card is needed."), and kept in a companion collection. A search asks
both collections; a chunk's distance is the smaller of its own and its nearest sentence's plus `MARGIN`,
and a chunk found only through a sentence joins the candidates. The relevance threshold is calibrated on
the same measure (retrieval_service.kb_snapshot), and the agent still reads whole chunks.

Measured on the tuning data and the development help center (docs/retrieval.md, "Sentence vectors"):
sentences beat windows of 32-96 word pieces and smaller chunks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# The sentence collection is `<chunk collection><SUFFIX>` on the same Chroma.
COLLECTION_SUFFIX = "_sentences"
# Chunk metadata: how many sentence vectors the chunk has (its sentence ids are <chunk id>~s0..n-1). A chunk
# stored before sentence vectors existed lacks it, and the next ingest of its document adds them.
COUNT_KEY = "sentence_count"
# Fewer words than this say too little to match on their own (headings, "Yes.", table rules); in a script
# written without spaces (Chinese, Japanese), fewer characters than MIN_UNSPACED_CHARS.
MIN_WORDS = 3
MIN_UNSPACED_CHARS = 8
# A sentence stands in for its chunk only this much nearer than the chunk: a short sentence that shares one
# thing with a question (a sentence naming France for "Book me a flight to Paris") is otherwise nearer than
# any chunk (chosen on the tuning data, docs/retrieval.md).
MARGIN = 0.05
# Sentence hits asked for per search (chosen on the tuning data with its latency, docs/retrieval.md).
CANDIDATES = 20
# A small KB's sentence vectors are held in memory (`SentenceMatrix`) while they take at most this much
# (about 20k sentences, 2k chunks): one matrix product instead of a second Chroma query, which costs ~1.3 ms
# whatever the collection's size.
MATRIX_MAX_BYTES = 32 * 1024 * 1024

_ID_SEPARATOR = "~s"
_LINE_MARKER = re.compile(r"^\s*(?:#{1,6}\s+|[-*+]\s+|\d+[.)]\s+|>\s*)")
# . ! ? then a space; the CJK full stop and marks end a sentence without one.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[\u3002\uff01\uff1f])")
_TABLE_RULE = re.compile(r"^[\s|:-]+$")


def sentences_of(text: str) -> list[str]:
    """The sentences of a chunk's text, list items and table rows included, in order, without repeats."""
    found: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        if _TABLE_RULE.match(line):
            continue
        line = _LINE_MARKER.sub("", line).replace("|", " ").strip()
        for piece in _SENTENCE_END.split(line):
            sentence = " ".join(piece.replace("**", "").split())
            if _long_enough(sentence) and sentence.casefold() not in seen:
                seen.add(sentence.casefold())
                found.append(sentence)
    return found


def _long_enough(sentence: str) -> bool:
    if len(sentence.split()) >= MIN_WORDS:
        return True
    return " " not in sentence and not sentence.isascii() and len(sentence) >= MIN_UNSPACED_CHARS


def embedded_text(title: str, sentence: str) -> str:
    """What is embedded for a sentence: the article title gives it its topic."""
    title = title.strip()
    return f"{title}: {sentence}" if title else sentence


def sentence_id(chunk_id: str, position: int) -> str:
    return f"{chunk_id}{_ID_SEPARATOR}{position}"


def sentence_ids(chunk_id: str, count: int) -> list[str]:
    return [sentence_id(chunk_id, position) for position in range(count)]


def stored_sentence_ids(chunks: Mapping[str, Mapping[str, object]]) -> list[str]:
    """The sentence ids of stored chunks (chunk id -> metadata), from the sentence count in their metadata."""
    return [
        sentence
        for chunk_id, meta in chunks.items()
        for sentence in sentence_ids(chunk_id, int(str(meta.get(COUNT_KEY, 0) or 0)))
    ]


def chunk_of(sentence: str) -> str:
    """The chunk id a sentence id belongs to."""
    return sentence.rsplit(_ID_SEPARATOR, 1)[0]


def nearest_per_chunk(hits: Iterable[tuple[str, float]]) -> dict[str, float]:
    """chunk id -> distance of its nearest sentence plus MARGIN, from (sentence id, distance) hits: what the
    sentence says about its chunk."""
    best: dict[str, float] = {}
    for sentence, distance in hits:
        chunk = chunk_of(sentence)
        if distance + MARGIN < best.get(chunk, 2.0 + MARGIN):
            best[chunk] = distance + MARGIN
    return best


@dataclass(frozen=True)
class SentenceMatrix:
    """Every sentence vector of a small KB, for an exact search in memory (retrieval_service.kb_snapshot)."""

    ids: Sequence[str]
    vectors: npt.NDArray[np.float32]

    def nearest(
        self, query: npt.NDArray[np.float32], k: int, allowed: Callable[[str], bool] | None = None
    ) -> list[tuple[str, float]]:
        """The `k` nearest sentences as (sentence id, cosine distance), those of chunks `allowed` rejects
        skipped."""
        if not self.ids:
            return []
        distances = 1.0 - self.vectors @ query
        found: list[tuple[str, float]] = []
        for row in np.argsort(distances):
            sentence = self.ids[int(row)]
            if allowed is None or allowed(chunk_of(sentence)):
                found.append((sentence, max(0.0, float(distances[row]))))
                if len(found) == k:
                    break
        return found
