"""Matches text against labelled example phrases: exactly after normalisation, or by meaning.

A :class:`SemanticMatcher` is built from label → example texts (usually a YAML file an operator edits)
and a sentence embedder. Both the examples and every text it is asked about go through
:func:`~service_kit.text_normalise.normalise_for_matching`, so disguises (look-alike letters, zero-width
characters, leetspeak, spelled-out words) do not change the result. Two paths:

- lexical (cheap, no model call): a normalised example occurs in the normalised text as whole words, or,
  for examples of at least :data:`MIN_SQUASHED_LETTERS` letters, in the text with every non-letter removed
  ("ignoreallpreviousinstructions"); scores 1.0;
- semantic: cosine similarity between the text's sentences (and the whole text) and every example,
  examples embedded once at construction, text segments cached per embedder (one cache shared by every
  matcher on the same embedder, so the injection detector and the escalation backstop embed a customer's
  message once per turn). With ``clause_words`` set, a longer text is also scored clause by clause (split
  at punctuation and coordinating conjunctions, :func:`_clauses`): one clause of a long message is nearer
  its example than the whole text; in :meth:`SemanticMatcher.classify` a clause only matches when the text
  around it is not itself a near miss of that label.

A label matches when its best score reaches its threshold; :meth:`SemanticMatcher.classify` also asks that
it beat a label of near misses by a margin. An optional ``lexicon`` (word -> English word, for an
English-centric model) is applied to examples and texts after normalisation. The YAML format::

    labels:
      some_label:
        threshold: 0.7        # optional, else the matcher's default
        examples: [first example, second example]
"""

from __future__ import annotations

import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
import yaml

from service_kit.linear_probe import LinearProbe
from service_kit.text_normalise import fold_characters, normalise_for_matching, squash, translate_words

DEFAULT_THRESHOLD: Final[float] = 0.7
MIN_SQUASHED_LETTERS: Final[int] = 14
MAX_SEGMENTS: Final[int] = 24
MIN_SEGMENT_WORDS: Final[int] = 3
_WINDOW_WORDS: Final[int] = 40
_CACHE_SIZE: Final[int] = 4096
_SENTENCE: Final[re.Pattern[str]] = re.compile(r"(?<=[.!?;:])\s+|\n+")
_PUNCTUATION: Final[re.Pattern[str]] = re.compile(r"[^\w\s]+")
_WORDS: Final[re.Pattern[str]] = re.compile(r"[^\W\d_]{5,}")
# Where one clause of a long message ends: sentence ends, commas, semicolons, colons, dashes, line breaks,
# and the coordinating conjunctions of English, Spanish, French, German and Portuguese (after
# normalisation: no accents, lower case). "and" joins two intents as often as it joins two nouns; a clause
# too short to carry an intent alone is dropped (MIN_SEGMENT_WORDS), so "terms and conditions" costs nothing.
_CLAUSE_BREAK: Final[re.Pattern[str]] = re.compile(
    r"[.!?;:,]+(?=\s|$)|\s[-\u2013\u2014]+\s|\n+"
    r"|\s(?:and|but|so|y|e|pero|sino|et|mais|und|aber|sondern|mas)\s"
)

Vector = npt.NDArray[np.float32]


class Embedder(Protocol):
    """Anything that turns texts into unit-length vectors (service_kit.embedding.MiniLMModel does)."""

    def embed(self, texts: Sequence[str]) -> list[Vector]: ...


class ExamplesFileError(ValueError):
    """The examples file is missing, not YAML, or not in the expected shape."""


@dataclass(frozen=True)
class Match:
    label: str
    score: float  # 1.0 for a lexical match, the probe's probability, else similarity to the nearest example
    nearest_example: str  # the example as written in the file
    lexical: bool = False
    probe: bool = False  # found by the linear probe (SemanticMatcher's probe_threshold), not by one example


@dataclass(frozen=True)
class Scored:
    """What :meth:`SemanticMatcher.segment_scores` found for one text."""

    normalised: str
    lexical: list[Match]
    segments: list[str]  # normalised segments that were embedded (empty when skipped)
    similarity: npt.NDArray[np.float32]  # segments x examples cosine similarities
    first_clause: int = -1  # segments[first_clause:] are clauses of the others (-1: none)


@dataclass(frozen=True)
class _Example:
    label: str
    text: str  # as written
    normalised: str
    phrase: str
    squashed: str


def load_examples(path: Path) -> tuple[dict[str, list[str]], dict[str, float], dict[str, Any]]:
    """(label → examples, label → threshold, the file's other top-level settings) from a YAML file."""
    try:
        data = yaml.safe_load(path.read_text("utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ExamplesFileError(f"cannot read examples file {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("labels"), dict):
        raise ExamplesFileError(f"{path}: expected a mapping with a 'labels' mapping")
    examples: dict[str, list[str]] = {}
    thresholds: dict[str, float] = {}
    for label, spec in data["labels"].items():
        if not isinstance(spec, dict) or not isinstance(spec.get("examples"), list):
            raise ExamplesFileError(f"{path}: label {label!r} needs an 'examples' list")
        texts = [str(item) for item in spec["examples"] if str(item).strip()]
        if not texts:
            raise ExamplesFileError(f"{path}: label {label!r} has no examples")
        examples[str(label)] = texts
        if "threshold" in spec:
            thresholds[str(label)] = float(spec["threshold"])
    settings = {key: value for key, value in data.items() if key != "labels"}
    return examples, thresholds, settings


class _VectorCache:
    """Per-text LRU of segment vectors. One per embedder, shared by every matcher built on it."""

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self._size = size
        self._vectors: OrderedDict[str, Vector] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, texts: Sequence[str]) -> dict[str, Vector]:
        with self._lock:
            found = {text: self._vectors[text] for text in texts if text in self._vectors}
            for text in found:
                self._vectors.move_to_end(text)
        return found

    def put_many(self, vectors: Mapping[str, Vector]) -> None:
        with self._lock:
            self._vectors.update(vectors)
            while len(self._vectors) > self._size:
                self._vectors.popitem(last=False)


_caches_lock = threading.Lock()
_shared_caches: weakref.WeakKeyDictionary[Any, _VectorCache] = weakref.WeakKeyDictionary()


def shared_cache(embedder: Embedder) -> _VectorCache:
    """The vector cache of `embedder`, shared by all matchers on it (a private one if it cannot be
    weakly referenced)."""
    with _caches_lock:
        try:
            cache = _shared_caches.get(embedder)
            if cache is None:
                cache = _shared_caches[embedder] = _VectorCache()
            return cache
        except TypeError:
            return _VectorCache()


class SemanticMatcher:
    """Best match per label for a text, lexical first, then by embedding similarity. Thread-safe."""

    def __init__(
        self,
        examples: Mapping[str, Sequence[str]],
        embedder: Embedder,
        thresholds: Mapping[str, float] | None = None,
        default_threshold: float = DEFAULT_THRESHOLD,
        lexicon: Mapping[str, str] | None = None,
        join_keywords: bool = True,
        clause_words: int = 0,
        probe_threshold: float | None = None,
    ) -> None:
        """``join_keywords``: rejoin a word split by a space into one of the examples' words even when both
        halves are words ("ign ore"); off, only the dictionary rule applies, so ordinary text ("log in")
        normalises exactly as for any other matcher without keywords and its vectors are shared with it.
        ``clause_words``: a text of more words than this is also scored clause by clause (0: never).
        ``probe_threshold``: also train a linear probe (:mod:`service_kit.linear_probe`) on the examples;
        :meth:`classify` then matches a whole text the probe gives a label with at least this probability
        when no example is near enough (None: no probe)."""
        self._embedder = embedder
        self.clause_words = clause_words
        self.probe_threshold = probe_threshold
        self.lexicon: dict[str, str] = {
            " ".join(fold_characters(key).split()): " ".join(fold_characters(value).split())
            for key, value in (lexicon or {}).items()
        }
        self.labels: tuple[str, ...] = tuple(examples)
        self.thresholds: dict[str, float] = {
            label: (thresholds or {}).get(label, default_threshold) for label in self.labels
        }
        # Words of the examples, so a customer's "ign ore" is rejoined to an example's "ignore"; and the
        # lexicon's words (always: "c o b r a r a m" is "cobraram", not "cobra rama", and then "charged"),
        # which only change a text that has one of them split or spelled out.
        self.keywords: frozenset[str] = frozenset(
            word
            for texts in examples.values()
            for text in texts
            for word in _WORDS.findall(fold_characters(text))
            if join_keywords
        ) | frozenset(key for key in self.lexicon if " " not in key and _WORDS.fullmatch(key))
        self._examples: list[_Example] = []
        for label, texts in examples.items():
            for text in texts:
                normalised = self.normalise(text)
                self._examples.append(
                    _Example(label, text, normalised, _phrase(normalised), squash(normalised))
                )
        vectors = embedder.embed([example.normalised for example in self._examples])
        self._matrix: npt.NDArray[np.float32] = np.vstack(vectors).astype(np.float32)
        self._label_of = np.array([self.labels.index(example.label) for example in self._examples])
        self._members: list[npt.NDArray[np.intp]] = [
            np.flatnonzero(self._label_of == index) for index in range(len(self.labels))
        ]
        self._cache = shared_cache(embedder)
        self._probe = (
            LinearProbe.train(self._matrix, [example.label for example in self._examples])
            if probe_threshold is not None
            else None
        )

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    @classmethod
    def from_yaml(
        cls, path: Path, embedder: Embedder, default_threshold: float = DEFAULT_THRESHOLD
    ) -> SemanticMatcher:
        examples, thresholds, _ = load_examples(path)
        return cls(examples, embedder, thresholds, default_threshold)

    def normalise(self, text: str) -> str:
        normalised = normalise_for_matching(text, self.keywords)
        return translate_words(normalised, self.lexicon) if self.lexicon else normalised

    def lexical(self, text: str) -> list[Match]:
        """Labels with an example contained in the normalised text (no model call), best first."""
        normalised = self.normalise(text)
        return self._lexical(normalised, squash(normalised))

    def _lexical(self, normalised: str, squashed: str) -> list[Match]:
        padded = _phrase(normalised)
        found: dict[str, Match] = {}
        for example in self._examples:
            if example.label in found:
                continue
            if example.phrase in padded or (
                len(example.squashed) >= MIN_SQUASHED_LETTERS and example.squashed in squashed
            ):
                found[example.label] = Match(example.label, 1.0, example.text, lexical=True)
        return list(found.values())

    def scores(self, text: str) -> list[Match]:
        """The best match of every label (lexical or semantic), best first."""
        scored = self.segment_scores(text)
        best = {match.label: match for match in scored.lexical}
        if scored.segments:
            per_example = scored.similarity.max(axis=0)
            for index, label in enumerate(self.labels):
                if label in best:
                    continue
                candidates = np.flatnonzero(self._label_of == index)
                top = int(candidates[np.argmax(per_example[candidates])])
                best[label] = Match(label, float(per_example[top]), self._examples[top].text)
        return sorted(best.values(), key=lambda match: match.score, reverse=True)

    def segment_scores(
        self, text: str, decisive_labels: Collection[str] = (), clauses: bool | None = None
    ) -> Scored:
        """Lexical matches plus, per segment (the whole short text, each sentence, windows over long
        ones), the cosine similarity to every example. A lexical match of one of ``decisive_labels``
        answers alone: no model call, no segments. ``clauses``: also score each clause (None: when the
        text has more than ``clause_words`` words)."""
        normalised = self.normalise(text)
        lexical = self._lexical(normalised, squash(normalised))
        if any(match.label in decisive_labels for match in lexical):
            return Scored(normalised, lexical, [], np.zeros((0, len(self._examples)), np.float32))
        segments = _segments(normalised)
        first_clause = -1
        if clauses is None:
            clauses = bool(self.clause_words) and len(normalised.split()) > self.clause_words
        if segments and clauses:
            first_clause = len(segments)
            segments += [clause for clause in _clauses(normalised) if clause not in segments]
        if not segments:
            return Scored(normalised, lexical, [], np.zeros((0, len(self._examples)), np.float32))
        similarity = np.vstack(self._vectors(segments)) @ self._matrix.T  # segments x examples
        return Scored(normalised, lexical, segments, similarity, first_clause)

    def best_per_label(self, row: npt.NDArray[np.float32]) -> dict[str, tuple[float, str]]:
        """For one row of :attr:`Scored.similarity`: label -> (best score, nearest example as written)."""
        out: dict[str, tuple[float, str]] = {}
        for label, candidates in zip(self.labels, self._members, strict=True):
            top = int(candidates[np.argmax(row[candidates])])
            out[label] = (float(row[top]), self._examples[top].text)
        return out

    def match(self, text: str) -> list[Match]:
        """Labels whose best score reaches their threshold, best first."""
        return [match for match in self.scores(text) if match.score >= self.thresholds[match.label]]

    def classify(
        self,
        text: str,
        negative_label: str,
        margin: float,
        excluded: Callable[[str, str], bool] | None = None,
    ) -> Match | None:
        """The strongest label other than ``negative_label`` that matches `text`, or None.

        A label matches lexically (one of its examples occurs in the normalised text and no negative
        example does), or in some segment with a score that reaches the label's threshold *and* beats that
        segment's best negative example by at least ``margin`` (so a near miss, closer to a negative
        example, does not match, and a benign sentence cannot shield another sentence).

        ``excluded`` ((label, normalised segment) -> whether the segment may not match the label, e.g. it
        declines something: "I don't want to dispute the charge"): such a segment does not match that
        label, and when the whole text is excluded it is also scored clause by clause whatever its length,
        so a clause without the negation still matches ("I don't want excuses, someone is using my
        card")."""
        positives = [label for label in self.labels if label != negative_label]
        whole = self.normalise(text)
        shut = {label for label in positives if excluded is not None and excluded(label, whole)}
        scored = self.segment_scores(text, decisive_labels=(), clauses=True if shut else None)
        # an excluded label's example in the text is left to the segments, which know where it stands
        lexical = [
            match for match in scored.lexical if match.label != negative_label and match.label not in shut
        ]
        if lexical and not any(match.label == negative_label for match in scored.lexical):
            return lexical[0]
        negatives = (
            scored.similarity[:, self._members[self.labels.index(negative_label)]].max(axis=1)
            if negative_label in self.labels
            else np.full(len(scored.segments), -1.0, np.float32)
        )
        best: Match | None = None
        for index, row in enumerate(scored.similarity):
            per_label = self.best_per_label(row)
            negative = float(negatives[index])
            clause = 0 <= scored.first_clause <= index
            for label in positives:
                score, example = per_label[label]
                if score < self.thresholds[label] or score < negative + margin:
                    continue
                if excluded is not None and excluded(label, scored.segments[index]):
                    continue
                if clause and self._near_miss_in_context(scored, index, negatives, label):
                    continue
                if best is None or score > best.score:
                    best = Match(label, score, example)
        if best is None and scored.segments:
            best = self._probe_match(whole, positives, excluded)
        return best

    def probabilities(self, text: str) -> dict[str, float] | None:
        """The probe's label probabilities for the whole (normalised) text; None without a probe."""
        if self._probe is None:
            return None
        return self._probe.probabilities(self._vector(self.normalise(text)))

    def _vector(self, normalised: str) -> npt.NDArray[np.float32]:
        return np.asarray(self._vectors([normalised])[0], dtype=np.float32)

    def _probe_match(
        self, whole: str, positives: Sequence[str], excluded: Callable[[str, str], bool] | None
    ) -> Match | None:
        """The probe's label for the whole text when it is a positive label with at least probe_threshold
        (and the text is not excluded for it); the label's example nearest the text is named."""
        if self._probe is None or self.probe_threshold is None or not whole:
            return None
        vector = self._vector(whole)
        probabilities = self._probe.probabilities(vector)
        label = max(probabilities, key=lambda name: probabilities[name])
        if label not in positives or probabilities[label] < self.probe_threshold:
            return None
        if excluded is not None and excluded(label, whole):
            return None
        members = self._members[self.labels.index(label)]
        nearest = int(members[np.argmax(self._matrix[members] @ vector)])
        return Match(label, probabilities[label], self._examples[nearest].text, probe=True)

    def _near_miss_in_context(
        self, scored: Scored, index: int, negatives: npt.NDArray[np.float32], label: str
    ) -> bool:
        """Whether a segment that contains clause ``index`` (the whole text, its sentence) is nearer a
        negative example than an example of ``label``: a near miss as a whole stays one, whatever a clause
        alone reads like ("I logged in on a shared computer and forgot to log out, how do I ...": its first
        clause alone reads like a takeover; "... and I am very happy with the service": the model barely
        tells happy from unhappy without the rest of the message)."""
        columns = self._members[self.labels.index(label)]
        clause = scored.segments[index]
        return any(
            float(negatives[outer]) > float(scored.similarity[outer, columns].max())
            for outer in range(scored.first_clause)
            if clause in scored.segments[outer]
        )

    def _vectors(self, segments: list[str]) -> list[Vector]:
        found = self._cache.get_many(segments)
        missing = [segment for segment in segments if segment not in found]
        if missing:
            fresh = dict(zip(missing, self._embedder.embed(missing), strict=True))
            found.update(fresh)
            self._cache.put_many(fresh)
        return [found[segment] for segment in segments]


def _phrase(normalised: str) -> str:
    """Words only, single-spaced, with a space at both ends (for whole-word containment)."""
    return " " + " ".join(_PUNCTUATION.sub(" ", normalised).split()) + " "


def _segments(normalised: str) -> list[str]:
    """The whole text (if short), its sentences of at least MIN_SEGMENT_WORDS words, and windows over long
    sentences. A text with more than
    MAX_SEGMENTS of those is covered by at most MAX_SEGMENTS overlapping windows over all of it instead, so
    the end of a long text is never left unchecked."""
    words = normalised.split()
    if not words:
        return []
    segments: dict[str, None] = {}
    if len(words) <= _WINDOW_WORDS:
        segments[" ".join(words)] = None
    step = _WINDOW_WORDS // 2
    for sentence in _SENTENCE.split(normalised):
        sentence_words = sentence.split()
        # Numbers and order ids carry no intent: "conversation 5, question 0" is two words, not four.
        if sum(1 for word in sentence_words if any(char.isalpha() for char in word)) < MIN_SEGMENT_WORDS:
            continue  # "system:", "is it ai?": too short to carry an intent alone (the whole text has them)
        for start in range(0, max(1, len(sentence_words) - step), step):
            window = " ".join(sentence_words[start : start + _WINDOW_WORDS])
            if window:
                segments[window] = None
    if len(segments) <= MAX_SEGMENTS:
        return list(segments)
    size = max(_WINDOW_WORDS, 2 * -(-len(words) // MAX_SEGMENTS))
    step = size // 2
    return [" ".join(words[start : start + size]) for start in range(0, max(1, len(words) - step), step)]


def _clauses(normalised: str) -> list[str]:
    """The clauses of a text (:data:`_CLAUSE_BREAK`) with at least MIN_SEGMENT_WORDS words with letters, at
    most MAX_SEGMENTS of them: "somebody got into my account, deleted my files and changed my email" is
    three intents, and one of them alone is nearer its example than the whole text is."""
    clauses: dict[str, None] = {}
    for part in _CLAUSE_BREAK.split(normalised):
        words = part.split()
        if sum(1 for word in words if any(char.isalpha() for char in word)) >= MIN_SEGMENT_WORDS:
            clauses[" ".join(words)] = None
    return list(clauses)[:MAX_SEGMENTS]
