"""The lexical side of hybrid search: an in-memory BM25 index over the chunks of the Chroma collection.

Pure (no Chroma, no threads): `build_index` turns (chunk id, text, metadata) rows into an immutable
`LexicalIndex`; `LexicalIndex.search` scores a query with Okapi BM25 (k1 = 1.2, b = 0.75). The postings
are numpy arrays in term-major (CSC) order, so a query costs one vectorised add per query term over that
term's documents, whatever the collection size: at 100k chunks a query is well under a millisecond.

Tokens: NFKC, lower case, runs of letters and digits; a run joined by `-`, `_`, `.` or `/` (an order code,
a SKU, a version, a URL path) is also indexed whole with its separators removed, so "AB-1234X", "ab1234x" and
"AB 1234X" meet. A small English stop list is dropped and plurals are folded ("refunds" → "refund", "429s" → "429").

Exact terms. A hit also names the query terms that pick it out on their own: code-like terms (letters and
digits mixed, `is_code`) and *rare* terms. A term is rare when it is rare in the knowledge base (its document
frequency is at most `RARE_SHARE` of the chunks, at least one: an IDF test) and rare in the language (the
caller's `uncommon` predicate; the knowledge base asks whether the embedding model's WordPiece vocabulary,
built from the frequent words of a large general corpus, lacks a single piece for it). Both are needed: in a
help center of 15 articles any everyday word ("instead", "weather") can occur in one chunk, while product
and brand names, acronyms, error numbers and jargon ("jira", "dpa", "429", "webhook") are exactly the words
a question names when it asks about the one article that has them, and the ones a sentence embedding reads
worst.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

K1 = 1.2
B = 0.75
# A term in at most this share of the chunks (and always when in only one) is rare in the knowledge base.
RARE_SHARE = 0.01

_RUN = re.compile(r"[^\W_]+(?:[-_./][^\W_]+)*")
_RUN_ASCII = re.compile(r"[a-z0-9]+(?:[-_./][a-z0-9]+)*")
_SEPARATORS = re.compile(r"[-_./]")
_STOP_TEXT = """a about above after again all am an and any are as at be because been before being below between both
    but by can could did do does doing down during each few for from further had has have having he her here
    hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now
    of off on once only or other our ours ourselves out over own same she should so some such than that the
    their theirs them themselves then there these they this those through to too under until up very was we
    were what when where which while who whom why will with would you your yours yourself yourselves
    hi hello please thanks thank cannot don doesn didn isn won get got want need"""
STOP_WORDS = frozenset(_STOP_TEXT.split())


def _fold(word: str) -> str:
    """A very light plural fold: policies → policy, refunds → refund, 429s → 429 (not 'address', 'status',
    'this', nor a code such as 'ab12s')."""
    if len(word) > 1 and word.endswith("s") and word[:-1].isdigit():
        return word[:-1]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if (
        len(word) > 3
        and word.endswith("s")
        and not word.endswith(("ss", "us", "is"))
        and not word[-2].isdigit()
    ):
        return word[:-1]
    return word


def is_code(token: str) -> bool:
    """An identifier-like token: letters and digits mixed (order numbers, SKUs, error codes)."""
    return len(token) >= 4 and any(c.isdigit() for c in token) and any(c.isalpha() for c in token)


@functools.lru_cache(maxsize=200_000)
def _run_terms(run: str) -> tuple[str, ...]:
    parts = _SEPARATORS.split(run)
    terms = ["".join(parts)] if len(parts) > 1 else []
    terms.extend(
        _fold(part) for part in parts if part not in STOP_WORDS and (len(part) > 1 or part.isdigit())
    )
    return tuple(terms)


def tokenize(text: str) -> list[str]:
    """Index/query terms of `text` (see the module docstring)."""
    if text.isascii():
        runs = _RUN_ASCII.findall(text.lower())
    else:
        runs = _RUN.findall(unicodedata.normalize("NFKC", text).lower())
    terms: list[str] = []
    for run in runs:
        terms.extend(_run_terms(run))
    return terms


def query_terms(text: str) -> list[str]:
    """Distinct terms of a query, in order."""
    return list(dict.fromkeys(tokenize(text)))


@dataclass(frozen=True)
class LexicalHit:
    chunk_id: str
    score: float
    # Exact terms of the query (code-like or rare, see the module docstring) that occur in this chunk.
    exact_terms: tuple[str, ...]


class LexicalIndex:
    """An immutable BM25 index over a snapshot of the collection; `marker` names the snapshot."""

    def __init__(
        self,
        ids: list[str],
        vocabulary: dict[str, int],
        indptr: npt.NDArray[np.int64],
        doc_indices: npt.NDArray[np.int32],
        weights: npt.NDArray[np.float32],
        filters: dict[str, dict[str, npt.NDArray[np.int32]]],
        marker: tuple[int, float | None],
    ) -> None:
        self.ids = ids
        self._vocabulary = vocabulary
        self._indptr = indptr
        self._docs = doc_indices
        self._weights = weights
        self._filters = filters
        self.marker = marker

    def __len__(self) -> int:
        return len(self.ids)

    def _allowed(self, filters: Mapping[str, str]) -> npt.NDArray[np.bool_] | None:
        if not filters:
            return None
        mask = np.ones(len(self.ids), dtype=bool)
        for key, value in filters.items():
            keep = np.zeros(len(self.ids), dtype=bool)
            keep[self._filters.get(key, {}).get(value, np.empty(0, dtype=np.int32))] = True
            mask &= keep
        return mask

    def knows(self, word: str) -> bool:
        """Whether every term of `word` occurs in the index."""
        terms = tokenize(word)
        return bool(terms) and all(term in self._vocabulary for term in terms)

    def is_rare(self, term: str) -> bool:
        """Whether `term` occurs in the index, in at most RARE_SHARE of the chunks (or in just one)."""
        column = self._vocabulary.get(term)
        if column is None:
            return False
        return int(self._indptr[column + 1] - self._indptr[column]) <= max(1.0, RARE_SHARE * len(self.ids))

    def search(
        self,
        query: str,
        top_n: int,
        filters: Mapping[str, str] | None = None,
        uncommon: Callable[[str], bool] | None = None,
    ) -> list[LexicalHit]:
        """The `top_n` best chunks by BM25 (score > 0 only), best first; equality filters on metadata.
        `uncommon(term)`: whether a term is rare in the language (None: only code-like terms are exact)."""
        columns = [(term, self._vocabulary[term]) for term in query_terms(query) if term in self._vocabulary]
        if not columns or not self.ids:
            return []
        # A term in more than half of the chunks carries almost no weight (idf < log 2) but costs a pass over
        # half the index: leave it out when the query has a more selective term.
        selective = [
            (t, c) for t, c in columns if self._indptr[c + 1] - self._indptr[c] <= len(self.ids) // 2
        ]
        columns = selective or columns
        scores = np.zeros(len(self.ids), dtype=np.float32)
        for _term, column in columns:
            start, end = self._indptr[column], self._indptr[column + 1]
            scores[self._docs[start:end]] += self._weights[start:end]
        allowed = self._allowed(filters or {})
        if allowed is not None:
            scores[~allowed] = 0.0
        candidates = np.flatnonzero(scores)
        if len(candidates) > top_n:
            candidates = candidates[np.argpartition(-scores[candidates], top_n - 1)[:top_n]]
        ordered = candidates[np.argsort(-scores[candidates], kind="stable")]
        exact = [
            (term, column)
            for term, column in columns
            if is_code(term) or (uncommon is not None and self.is_rare(term) and uncommon(term))
        ]
        hits = []
        for index in ordered:
            matched = tuple(
                term
                for term, column in exact
                if index in self._docs[self._indptr[column] : self._indptr[column + 1]]
            )
            hits.append(LexicalHit(self.ids[int(index)], float(scores[index]), matched))
        return hits


Row = tuple[str, str, Mapping[str, str | int | float | bool]]


def build_index(
    rows: Iterable[Row], filter_keys: Sequence[str], marker: tuple[int, float | None] = (0, None)
) -> LexicalIndex:
    """A BM25 index over (chunk id, text, metadata) rows; `filter_keys` are the metadata keys Search filters on."""
    ids: list[str] = []
    vocabulary: defaultdict[str, int] = defaultdict(itertools.count().__next__)
    term_ids: list[int] = []
    lengths: list[int] = []
    filters: dict[str, dict[str, list[int]]] = {key: {} for key in filter_keys}
    for doc, (chunk_id, text, metadata) in enumerate(rows):
        ids.append(chunk_id)
        terms = tokenize(text)
        lengths.append(len(terms))
        term_ids.extend(map(vocabulary.__getitem__, terms))
        for key, values in filters.items():
            value = metadata.get(key)
            if value is not None:
                values.setdefault(str(value), []).append(doc)
    n_docs = len(ids)
    doc_of_token = np.repeat(np.arange(n_docs, dtype=np.int64), np.asarray(lengths, dtype=np.int64))
    keys = np.asarray(term_ids, dtype=np.int64) * max(1, n_docs) + doc_of_token
    unique, tf = np.unique(keys, return_counts=True)  # sorted by term, then document: CSC order
    terms_col = unique // max(1, n_docs)
    docs = (unique % max(1, n_docs)).astype(np.int32)
    df = np.bincount(terms_col, minlength=len(vocabulary)).astype(np.float64)
    indptr = np.zeros(len(vocabulary) + 1, dtype=np.int64)
    np.cumsum(df.astype(np.int64), out=indptr[1:])
    doc_len = np.asarray(lengths, dtype=np.float64)
    avg_len = float(doc_len.mean()) if n_docs else 1.0
    idf = np.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))
    tf_f = tf.astype(np.float64)
    norm = K1 * (1.0 - B + B * doc_len[docs] / max(avg_len, 1e-9))
    weights = (idf[terms_col] * tf_f * (K1 + 1.0) / (tf_f + norm)).astype(np.float32)
    return LexicalIndex(
        ids,
        dict(vocabulary),
        indptr,
        docs,
        weights,
        {
            key: {value: np.asarray(v, dtype=np.int32) for value, v in values.items()}
            for key, values in filters.items()
        },
        marker,
    )


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[str]], weights: Sequence[float] | None = None, k: int = 60
) -> list[tuple[str, float]]:
    """Weighted reciprocal rank fusion (Cormack et al. 2009): score(d) = sum of weight / (k + rank), rank from 1."""
    scores: dict[str, float] = {}
    for position, ranking in enumerate(rankings):
        weight = 1.0 if weights is None else weights[position]
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])


__all__ = [
    "LexicalHit",
    "LexicalIndex",
    "build_index",
    "is_code",
    "query_terms",
    "reciprocal_rank_fusion",
    "tokenize",
]
