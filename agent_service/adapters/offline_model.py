"""The offline engine: a deterministic stand-in for the model behind the same port (docs/architecture.md).

It reads the turn's structured view (`ModelRequest.user_message`, `hits`, `escalation_hint`) and any tool
results already in `messages`, and decides like a careful, literal-minded assistant:

* an order id in the message → a `lookup_order_status` call, then a reply built from the tool result;
* an escalation trigger (from the escalation policy) → an `escalate_to_human` call with the priority, then a
  reply quoting the ticket id;
* a request to cancel an order, return it or change its delivery address (:mod:`agent_service.write_intents`)
  → a `cancel_order` / `start_return` / `change_delivery_address` call with the order id of the message (or of
  the conversation's earlier messages) and the address it gives (:mod:`agent_service.postal_address`); the
  tools service only proposes it (the customer confirms), and after it ran the reply comes from its result.
  Without an order id or a readable address it asks for them; a negated request ("don't cancel it") calls
  nothing (:mod:`agent_service.adapters.offline_orders`);
* otherwise the sentences of the retrieved chunks that answer the question — ranked by meaning (sentence
  embeddings of the shared MiniLM model) and word overlap (abbreviations included:
  :mod:`service_kit.abbreviations`), not by position — verbatim, each chunk's sentences
  followed by its citation [n]; a follow-up is read in the context of the previous question (query_rewrite);
  the best sentence comes with the rest of its paragraph when that is short;
* nothing relevant, or no sentence close enough to the question → it says it does not know and offers a human.

It is honest about being an automated assistant. It never touches the network: tools run in the loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent_service import metrics
from agent_service.adapters.offline_orders import (
    find_order_id as find_order_id,
)
from agent_service.adapters.offline_orders import (
    not_found_reply,
    plan_write,
    write_reply,
)
from agent_service.domain import KbHit
from agent_service.escalation_policy import EscalationDecision
from agent_service.model_port import ModelEvent, ModelRequest, ModelResult, TextChunk, ToolCallRequest
from agent_service.query_rewrite import contextual_query
from agent_service.texts import DONT_KNOW
from agent_service.write_intents import RETURN_TOOL, WRITE_TOOLS
from service_kit import observability
from service_kit.abbreviations import (
    abbreviation_candidates,
    named_phrases,
    spell_out,
    spelled_by_word_starts,
    spelled_names,
)
from service_kit.semantic_match import Embedder, Vector, shared_cache

logger = logging.getLogger(__name__)

NAME = "offline-engine"
LOOKUP_TOOL = "lookup_order_status"
ESCALATE_TOOL = "escalate_to_human"

_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_CROSS_REFERENCE = re.compile(r"^(?:see|read|for more|learn more|visit)\b", re.IGNORECASE)
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_HEADING = re.compile(r"^\s*#{1,6}\s")
_MARKDOWN_NOISE = re.compile(r"^\s*(?:#{1,6}\s+|[-*+]\s+|\d+[.)]\s+|>\s*)")
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "have",
        "how",
        "i",
        "if",
        "in",
        "is",
        "it",
        "its",
        "me",
        "my",
        "of",
        "on",
        "or",
        "our",
        "so",
        "that",
        "the",
        "their",
        "there",
        "this",
        "to",
        "was",
        "we",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
        "i'm",
        "im",
    ]
)
MAX_SENTENCE_CHARS = 400
# Sentence selection (SentenceRanker, select_sentences), chosen on evals/sample_kb.yaml, kb/ and the unit
# questions of tests/agent/ (docs/agent.md, "The offline engine's answers", has the measurements).
# Sentences of the top MAX_ANSWER_HITS chunks are candidates: a third chunk never gave the answer on the tuning
# data and adds about ten sentences to embed.
MAX_ANSWER_HITS = 2
# The answer: the best sentence and those within ANSWER_MARGIN of it, at most MAX_ANSWER_SENTENCES, plus needed
# neighbours up to MAX_WITH_NEIGHBOURS sentences in all. On the shipped, development and airline suites (text
# expectations met, of 42 / 36 / 36; mean reply characters): 3 / 0.1: 42 / 33 / 27, 288-398; 4 / 0.15:
# 42 / 33 / 30, 328-463; 5 / 0.2: 42 / 33 / 31, 380-522. 4 / 0.15 takes most of the gain for half the length.
MAX_ANSWER_SENTENCES = 4
MAX_WITH_NEIGHBOURS = 6
ANSWER_MARGIN = 0.15
# The best sentence's paragraph comes whole when it has at most this many characters: help-center paragraphs
# state one rule with its condition or exception, and the best sentence is often the half that resembles the
# question ("Most maintenance causes no downtime.") while the other half answers it ("... on Sundays ...").
# Measured on the cited articles of both suites' 60 turns with a `contains`: 300 and 400 answered 55, 500 56
# (0: 53); the mean reply grew from 174 to 288 characters.
SHORT_PARAGRAPH_CHARS = 500
# Below this cosine similarity between the question and its best sentence the engine says it does not know.
# Tuning questions the KB answers: lowest best similarity 0.49; off-topic questions forced onto their nearest
# chunks (no retrieval threshold): 90th percentile 0.415, highest 0.48.
MIN_ANSWER_SIMILARITY = 0.4
# ... unless the sentence also contains one of the question's own terms: then this lower bar. On
# evals/sample_kb.yaml and evals/dev_saas.yaml, off-topic questions forced onto their nearest chunks reach at
# most 0.20 with a sentence sharing a term; on-topic questions turned away by the 0.4 bar had their answer
# at 0.31-0.38 with a shared term ("429s" -> "HTTP status 429 ...", docs/eval.md "Development suite").
MIN_SUPPORTED_SIMILARITY = 0.3
# Weight of the share of question terms a sentence contains (0 and 0.1: one unit answer fewer; 0.4: worse).
LEXICAL_WEIGHT = 0.2
HIT_RANK_PENALTY = 0.02
CROSS_REFERENCE_PENALTY = 0.15
# Added to a sentence holding the kind of fact the question asks for: a time or duration for "when / how long",
# an amount for "how much / how many / what limit", a place (web or email address, menu path) for "where /
# which page" (answer-type matching; chosen on evals/sample_kb.yaml and evals/dev_saas.yaml, docs/eval.md
# "Development suite").
ANSWER_TYPE_BONUS = 0.12
_POINTS_BACK = re.compile(r"^(?:it|its|this|that|these|those|they|their|such)\b", re.IGNORECASE)
# A sentence that continues the one before it about the same thing: "Download it from ...", "Store them ...".
_CONTINUES = re.compile(r"^\W*(?:\w+\s+){0,2}(?:it|them)\b", re.IGNORECASE)
_ASKS_TIME = re.compile(
    r"\b(?:when|how\s+(?:long|soon|quickly|fast|often)|what\s+(?:time|hours|days?)|till|until|by\s+when)\b",
    re.IGNORECASE,
)
_ASKS_AMOUNT = re.compile(
    r"\b(?:how\s+(?:much|many)|cost|costs|price|prices|fee|fees|limit|limits|max|maximum|minimum|percent)\b",
    re.IGNORECASE,
)
_TIME_FACT = re.compile(
    r"\b\d+(?:\s*[-\u2013]\s*\d+)?\s*(?:minutes?|hours?|(?:business\s+|working\s+)?days?|weeks?|months?|years?)\b"
    r"|\b(?:mon|tues|wednes|thurs|fri|satur|sun)days?\b|\b\d{1,2}(?::\d{2})?\s*(?:am|pm|utc)\b|\b\d{1,2}:\d{2}\b"
    r"|\b(?:immediately|right\s+away|same\s+day|next\s+(?:day|renewal|billing))\b",
    re.IGNORECASE,
)
_ASKS_PLACE = re.compile(
    r"\bwhere\b|\b(?:what|which)\s+(?:page|url|link|site|website|address|menu|screen|tab)\b", re.IGNORECASE
)
# A place to go: a web address ("account.example.com/returns"), an email address or a menu path ("Settings >
# Billing").
_PLACE_FACT = re.compile(r"\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}(?:/\S*)?\b|\w\s*>\s*\w", re.IGNORECASE)
_AMOUNT_FACT = re.compile(r"[$\u20ac\u00a3]\s?\d|\b\d[\d,.]*\s*%|\b\d[\d,]*\b")


def _stem(word: str) -> str:
    for suffix in ("ing", "es", "s", "ed"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _terms(text: str) -> set[str]:
    return {_stem(word) for word in _WORD.findall(text.lower()) if word not in _STOPWORDS}


@dataclass(frozen=True)
class Sentence:
    """A sentence of a retrieved chunk, verbatim (markdown markers removed), with where it stands."""

    text: str
    heading: str  # the section heading above it ("" before the first)
    hit_index: int  # which hit (0-based; cited as [hit_index + 1])
    position: int  # its place among the chunk's sentences
    paragraph: int  # sentences of one paragraph or list item share this number
    list_item: bool  # it begins a list item


def _sentences(text: str, hit_index: int = 0) -> list[Sentence]:
    """The prose sentences of a chunk. Wrapped lines are joined into paragraphs (a blank line, a heading or a
    list item starts a new one); rules, tables and fragments under four words are skipped."""
    sentences: list[Sentence] = []
    heading = ""
    paragraph: list[str] = []
    paragraphs = 0
    starts_item = False

    def flush() -> None:
        nonlocal paragraphs, starts_item
        first = True
        for raw in _SENTENCE_SPLIT.split(" ".join(paragraph)):
            sentence = _MARKDOWN_NOISE.sub("", raw).strip().strip("*_`").strip()
            if len(sentence.split()) >= 4:
                sentences.append(
                    Sentence(
                        sentence[:MAX_SENTENCE_CHARS],
                        heading,
                        hit_index,
                        len(sentences),
                        paragraphs,
                        starts_item and first,
                    )
                )
                first = False
        if paragraph:
            paragraphs += 1
        paragraph.clear()
        starts_item = False

    lines = text.splitlines()
    if lines and lines[0].strip() == "---" and "---" in (line.strip() for line in lines[1:]):
        lines = lines[[line.strip() for line in lines].index("---", 1) + 1 :]  # front matter
    for line in lines:
        stripped = line.strip()
        if _HEADING.match(line):
            flush()
            heading = _MARKDOWN_NOISE.sub("", line).strip()
        elif not stripped or stripped.startswith(("---", "|", "```")):
            flush()
        else:
            if _LIST_ITEM.match(line):
                flush()
                starts_item = True
            paragraph.append(stripped)
    flush()
    return sentences


def _lexical_overlap(wanted: set[str], sentence: Sentence, spelled_out: set[str] | None = None) -> float:
    """Share of the question's terms the sentence (or, at half weight, its heading) contains; `spelled_out` are
    terms the sentence writes out in full (:mod:`service_kit.abbreviations`)."""
    if not wanted:
        return 0.0
    own = wanted & (_terms(sentence.text) | (spelled_out or set()))
    from_heading = len((wanted & _terms(sentence.heading)) - own)
    return (len(own) + 0.5 * from_heading) / len(wanted)


def _content_words(text: str) -> list[str]:
    return [word for word in _WORD.findall(text.lower()) if word not in _STOPWORDS]


def _abbreviations(
    question: str, candidates: Sequence[Sentence], embedder: Embedder | None
) -> tuple[list[set[str]], list[str]]:
    """The question's abbreviations (service_kit.abbreviations) against the candidates: for each candidate,
    the question's terms it writes out in full ("pull requests" for "PRs"), and the candidates' names they
    stand for ("amex" -> "American Express", as the retrieval service found them); none without the embedding
    model's tokenizer, which tells an abbreviation from a word."""
    is_whole_word = getattr(embedder, "is_whole_word", None)
    if is_whole_word is None:
        return [set() for _ in candidates], []
    known = {word for s in candidates for word in _content_words(f"{s.heading} {s.text}")}
    names = spelled_names(question, known, is_whole_word, named_phrases(s.text for s in candidates))
    known |= {_stem(word) for word in known}
    abbreviations = abbreviation_candidates(_content_words(question), known, is_whole_word)
    if not abbreviations:
        return [set() for _ in candidates], names
    spelled = [
        {_stem(word) for word, short in abbreviations.items() if spelled_by_word_starts(short, words)}
        for words in (_content_words(s.text) for s in candidates)
    ]
    return spelled, names


@dataclass(frozen=True)
class Scored:
    sentence: Sentence
    score: float  # what the sentences are ranked by
    similarity: float  # cosine similarity to the question (lexical share when no embedder)
    shares_terms: bool = False  # the sentence itself contains a term of the question

    @property
    def close_enough(self) -> bool:
        """Similar enough to the question to be (part of) its answer."""
        bar = MIN_SUPPORTED_SIMILARITY if self.shares_terms else MIN_ANSWER_SIMILARITY
        return self.similarity >= bar


class SentenceRanker:
    """Ranks the sentences of retrieved chunks by how well they answer a question.

    A sentence's score is its cosine similarity to the question (all-MiniLM-L6-v2, the model the retrieval
    service and the injection detector share) plus LEXICAL_WEIGHT times the share of the question's terms it
    contains (an abbreviation of the question it writes out counts, :mod:`service_kit.abbreviations`),
    minus HIT_RANK_PENALTY per rank of its chunk, plus ANSWER_TYPE_BONUS when it holds the kind of fact asked
    for; cross-references ("See the refund policy ...") lose CROSS_REFERENCE_PENALTY. A sentence is embedded
    under its section heading. For a follow-up (see
    :mod:`agent_service.query_rewrite`) the similarity is the mean of the similarities to the message and to
    the message with its context, and the terms are those of the message with its context.

    Sentence vectors are cached by text (KB chunks repeat from turn to turn); what is not cached is embedded,
    with the question, in one batched call per turn. Without the embedding model (package missing) it ranks
    by the lexical share alone.
    """

    def __init__(self, embedder: Embedder | None = None) -> None:
        self._embedder = embedder
        self._unavailable = False

    def _model(self) -> Embedder | None:
        if self._embedder is None and not self._unavailable:
            try:
                from service_kit.embedding import MiniLMModel

                self._embedder = MiniLMModel.shared()
            except Exception as exc:  # a missing model package must not take the engine down
                self._unavailable = True
                logger.error("offline engine: embedding model unavailable, ranking by word overlap: %s", exc)
        return self._embedder

    def _vectors(
        self, embedder: Embedder, queries: Sequence[str], texts: Sequence[str]
    ) -> tuple[Vector, Vector]:
        """(query vectors, text vectors) as matrices; one embed call for the queries and uncached texts."""
        cache = shared_cache(embedder)
        found = cache.get_many(texts)
        missing = list(dict.fromkeys(text for text in texts if text not in found))
        embedded = embedder.embed([*queries, *missing]) if queries or missing else []
        query_vectors = embedded[: len(queries)]
        fresh = dict(zip(missing, embedded[len(queries) :], strict=True))
        cache.put_many(fresh)
        found.update(fresh)
        dimension = len(query_vectors[0]) if query_vectors else 0
        text_matrix = (
            np.stack([found[text] for text in texts]) if texts else np.zeros((0, dimension), dtype=np.float32)
        )
        return np.stack(query_vectors), text_matrix

    def rank(
        self,
        question: str,
        hits: Sequence[KbHit],
        context_query: str | None = None,
    ) -> list[Scored]:
        """Every candidate sentence of `hits[:MAX_ANSWER_HITS]`, best first."""
        candidates: list[Sentence] = []
        seen: set[str] = set()
        for hit_index, hit in enumerate(hits[:MAX_ANSWER_HITS]):
            for sentence in _sentences(hit.text, hit_index):
                if sentence.text not in seen:  # overlapping chunks repeat sentences
                    seen.add(sentence.text)
                    candidates.append(sentence)
        if not candidates:
            return []
        embedder = self._model()
        spelled_out, names = _abbreviations(question, candidates, embedder)
        # The name an abbreviation stands for is the customer's own word, written out.
        named = [any(name in s.text for name in names) for s in candidates]
        wanted = _terms(question if context_query is None else context_query)
        lexical = [
            _lexical_overlap(wanted, sentence, spelled)
            for sentence, spelled in zip(candidates, spelled_out, strict=True)
        ]
        similarity: list[float]
        if embedder is None:
            similarity = lexical
        else:
            queries = [question] if context_query is None else [question, context_query]
            if names:
                # A sentence that contains the name is compared with the question as searched, spelled out
                # ("do you take amex (American Express)"); the others with the question as written, so that
                # part of a name ("Express shipping") earns nothing.
                queries = [*queries, *(spell_out(query, names) for query in queries)]
            query_matrix, sentence_matrix = self._vectors(embedder, queries, _embedding_texts(candidates))
            both = sentence_matrix @ query_matrix.T
            half = len(queries) // 2 if names else len(queries)
            similarity = [
                float(row[half:].mean() if has_name else row[:half].mean())
                for has_name, row in zip(named, both, strict=True)
            ]
        scored: list[Scored] = []
        for sentence, sim, overlap, has_name in zip(candidates, similarity, lexical, named, strict=True):
            score = sim - HIT_RANK_PENALTY * sentence.hit_index
            if embedder is not None:
                score += LEXICAL_WEIGHT * overlap
            if _CROSS_REFERENCE.match(sentence.text):
                score -= CROSS_REFERENCE_PENALTY
            if _has_answer_type(question, sentence.text):
                score += ANSWER_TYPE_BONUS
            scored.append(Scored(sentence, score, sim, bool(wanted & _terms(sentence.text)) or has_name))
        scored.sort(key=lambda item: (-item.score, item.sentence.hit_index, item.sentence.position))
        return scored


def _has_answer_type(question: str, sentence: str) -> bool:
    """Whether the sentence holds the kind of fact the question asks for (a time, an amount, a place)."""
    if _ASKS_TIME.search(question) and _TIME_FACT.search(sentence):
        return True
    if _ASKS_PLACE.search(question) and _PLACE_FACT.search(sentence):
        return True
    return _ASKS_AMOUNT.search(question) is not None and _AMOUNT_FACT.search(sentence) is not None


def _embedding_texts(candidates: Sequence[Sentence]) -> list[str]:
    """What is embedded for each sentence: the sentence under its section heading ("Start a return: Start
    every return online at ..."), so a sentence that does not repeat its subject is still found by it."""
    return [f"{s.heading}: {s.text}" if s.heading else s.text for s in candidates]


def _with_neighbours(chosen: list[Sentence], candidates: Sequence[Sentence]) -> list[Sentence]:
    """Adds what a chosen sentence cannot stand without (MAX_WITH_NEIGHBOURS sentences in all): first the
    sentence before one that opens by pointing back ("It", "This", "They" ...), then the items of a list one
    introduces (it ends with ':')."""
    by_place = {(sentence.hit_index, sentence.position): sentence for sentence in candidates}
    result = list(chosen)
    for sentence in chosen:
        before = by_place.get((sentence.hit_index, sentence.position - 1))
        if (
            _POINTS_BACK.match(sentence.text)
            and before is not None
            and before.paragraph == sentence.paragraph
            and before not in result
            and len(result) < MAX_WITH_NEIGHBOURS
        ):
            result.append(before)
    for sentence in chosen:
        after = by_place.get((sentence.hit_index, sentence.position + 1))
        if (
            after is not None
            and after.paragraph == sentence.paragraph
            and _CONTINUES.match(after.text)
            and after not in result
            and len(result) < MAX_WITH_NEIGHBOURS
        ):
            result.append(after)
    if chosen:
        # The best sentence's paragraph, when short, is answered whole: a short paragraph states one rule with
        # its condition or exception ("... we do not refund it in cash. The unused part is added as credit").
        best = chosen[0]
        paragraph = [s for s in candidates if s.hit_index == best.hit_index and s.paragraph == best.paragraph]
        if sum(len(s.text) + 1 for s in paragraph) <= SHORT_PARAGRAPH_CHARS:
            for sentence in sorted(paragraph, key=lambda s: s.position):
                if sentence not in result and len(result) < MAX_WITH_NEIGHBOURS:
                    result.append(sentence)
    for sentence in chosen:
        if not sentence.text.rstrip().endswith(":"):
            continue
        following = by_place.get((sentence.hit_index, sentence.position + 1))
        # The next sentence, and while they are list items the ones after it.
        while following is not None and len(result) < MAX_WITH_NEIGHBOURS:
            if following not in result:
                result.append(following)
            if not following.list_item:
                break
            following = by_place.get((sentence.hit_index, following.position + 1))
            if following is not None and not following.list_item:
                break
    return result


def select_sentences(scored: Sequence[Scored]) -> list[Sentence]:
    """The answer: the best sentence when it is similar enough to the question (else nothing: don't know),
    the next ones within ANSWER_MARGIN of it (MAX_ANSWER_SENTENCES in all), and their needed neighbours.
    Cross-references ("See the refund policy ...") only when nothing else answers."""
    direct = [item for item in scored if not _CROSS_REFERENCE.match(item.sentence.text)]
    if any(item.close_enough for item in direct):
        scored = direct
    # The best sentence that is close enough, even when one ranked above it is not (a sentence with a term of
    # the question at 0.35 answers better than one without at 0.39, which only resembles it).
    first = next((place for place, item in enumerate(scored) if item.close_enough), None)
    if first is None:
        return []
    best = scored[first]
    chosen = [best.sentence]
    for item in scored[first + 1 :]:
        if len(chosen) >= MAX_ANSWER_SENTENCES or item.score < best.score - ANSWER_MARGIN:
            break
        chosen.append(item.sentence)
    return _with_neighbours(chosen, [item.sentence for item in scored])


_default_ranker: SentenceRanker | None = None
_default_ranker_lock = threading.Lock()


def default_ranker() -> SentenceRanker:
    global _default_ranker
    with _default_ranker_lock:
        if _default_ranker is None:
            _default_ranker = SentenceRanker()
        return _default_ranker


def best_sentences(
    question: str,
    hits: Sequence[KbHit],
    ranker: SentenceRanker | None = None,
    context_query: str | None = None,
) -> list[tuple[int, str]]:
    """(hit index, sentence) of the answer, grouped by hit (the hit of the best sentence first) and in text
    order within a hit; [] when no sentence answers the question."""
    scored = (ranker or default_ranker()).rank(question, hits, context_query)
    chosen = select_sentences(scored)
    if not chosen:
        return []
    hit_order = list(dict.fromkeys(sentence.hit_index for sentence in chosen))
    chosen.sort(key=lambda sentence: (hit_order.index(sentence.hit_index), sentence.position))
    return [(sentence.hit_index, sentence.text) for sentence in chosen]


def _tool_names(tools: Sequence[Mapping[str, Any]]) -> set[str]:
    names = set()
    for tool in tools:
        function = tool.get("function")
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return names


def _tool_properties(tools: Sequence[Mapping[str, Any]], name: str) -> set[str] | None:
    """The argument names the tool's JSON Schema declares (None when it does not say)."""
    for tool in tools:
        function = tool.get("function")
        if isinstance(function, Mapping) and function.get("name") == name:
            parameters = function.get("parameters")
            if isinstance(parameters, Mapping) and isinstance(parameters.get("properties"), Mapping):
                return set(parameters["properties"])
    return None


def escalation_arguments(
    tools: Sequence[Mapping[str, Any]], hint: EscalationDecision, user_message: str
) -> dict[str, Any]:
    """Arguments for escalate_to_human, restricted to what its schema declares."""
    summary = "Customer message triggered the escalation policy; see the conversation transcript."
    candidates: dict[str, Any] = {
        "reason": hint.trigger[:400] or hint.reason_code,
        "priority": hint.priority,
        "reason_code": hint.reason_code,
        "summary": summary,
    }
    declared = _tool_properties(tools, ESCALATE_TOOL)
    if declared is None:
        return candidates
    return {key: value for key, value in candidates.items() if key in declared}


def _current_tool_results(messages: Sequence[Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(tool name, parsed result) for every tool message since the last user message."""
    names: dict[str, str] = {}
    results: list[tuple[str, dict[str, Any]]] = []
    for message in messages:
        role = message.get("role")
        if role == "user":
            names.clear()
            results.clear()
        elif role == "assistant":
            for call in message.get("tool_calls") or ():
                names[str(call.get("id"))] = str(call.get("function", {}).get("name", ""))
        elif role == "tool":
            try:
                parsed = json.loads(str(message.get("content") or "{}"))
            except ValueError:
                parsed = {}
            if not isinstance(parsed, dict):
                parsed = {"result": parsed}
            results.append((names.get(str(message.get("tool_call_id")), ""), parsed))
    return results


def _status_word(raw: Any) -> str:
    text = str(raw or "unknown").lower()
    return text.removeprefix("order_status_").replace("_", " ")


def _order_reply(result: Mapping[str, Any], order_id: str | None) -> str:
    error = result.get("error")
    if isinstance(error, Mapping):
        code = str(error.get("code", "")).lower()
        if "not_found" in code or code == "not found":
            return not_found_reply(order_id)
        # The error's message is written for the model ("offer the customer a human"), not for the customer.
        return "I couldn't look that order up right now. Please try again in a moment."
    order = result.get("order") if isinstance(result.get("order"), Mapping) else result
    assert isinstance(order, Mapping)
    oid = order.get("order_id") or order_id or "your order"
    status = _status_word(order.get("status"))
    parts = [f"Your order {oid} is {status}."]
    tracking = order.get("tracking_number")
    if tracking:
        carrier = order.get("carrier")
        parts.append(f"The tracking number is {tracking}" + (f" ({carrier})." if carrier else "."))
    eta = order.get("eta")
    if eta:
        parts.append(f"Estimated delivery: {eta}.")
    return " ".join(parts)


def _ticket_id(result: Mapping[str, Any]) -> str:
    ticket = result.get("ticket")
    if isinstance(ticket, Mapping) and ticket.get("ticket_id"):
        return str(ticket["ticket_id"])
    return str(result.get("ticket_id") or "")


def _escalation_reply(result: Mapping[str, Any], hint: EscalationDecision | None) -> str:
    ticket_id = _ticket_id(result)
    if isinstance(result.get("error"), Mapping) or not ticket_id:
        return (
            "I'm an automated assistant and I tried to hand this to a person, but the helpdesk did not answer. "
            "Please try again in a moment."
        )
    lead = hint.customer_message if hint else "I've passed this to a member of our support team."
    wait = result.get("estimated_wait")
    if not wait and isinstance(result.get("ticket"), Mapping):
        wait = result["ticket"].get("estimated_wait")
    tail = f" Your ticket number is {ticket_id}" + (f"; expected wait: {wait}." if wait else ".")
    return lead + tail


class OfflineModel:
    """`ModelPort` implementation without any model: deterministic rules over the turn's structured view."""

    def __init__(self, ranker: SentenceRanker | None = None) -> None:
        self._ranker = ranker or default_ranker()

    @property
    def name(self) -> str:
        return NAME

    async def aclose(self) -> None:
        return None

    async def generate(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        started = time.perf_counter()
        with observability.genai_span("chat", NAME, provider="offline"):
            # Off the event loop: ranking sentences embeds those not cached yet (tens of ms per sentence
            # on a busy CPU), which must not stall the other turns in flight.
            result = await asyncio.to_thread(self.decide, request)
        metrics.record_model_call(NAME, time.perf_counter() - started, outcome="ok")
        if result.content:
            yield TextChunk(result.content)
        yield result

    def decide(self, request: ModelRequest) -> ModelResult:
        available = _tool_names(request.tools)
        order_id = find_order_id(request.user_message)
        results = _current_tool_results(request.messages)
        if results:
            reply = self._reply_from_tools(results, request, order_id)
            return ModelResult(content=reply, model=NAME) if reply else self._answer_from_kb(request)
        hint = request.escalation_hint
        if hint is None:  # a turn handed to a person proposes no change: the person takes it from there
            write = plan_write(
                request.user_message,
                request.messages,
                available,
                return_reason="reason" in (_tool_properties(request.tools, RETURN_TOOL) or ()),
            )
            if isinstance(write, ToolCallRequest):
                return ModelResult(content="", tool_calls=(write,), model=NAME)
            if write is not None:
                return ModelResult(content=write, model=NAME)
        calls: list[ToolCallRequest] = []
        if order_id and LOOKUP_TOOL in available:
            calls.append(ToolCallRequest("offline_lookup_1", LOOKUP_TOOL, json.dumps({"order_id": order_id})))
        if hint is not None and ESCALATE_TOOL in available:
            arguments = escalation_arguments(request.tools, hint, request.user_message)
            calls.append(ToolCallRequest("offline_escalate_1", ESCALATE_TOOL, json.dumps(arguments)))
        if calls:
            return ModelResult(content="", tool_calls=tuple(calls), model=NAME)
        return self._answer_from_kb(request)

    def _reply_from_tools(
        self, results: list[tuple[str, dict[str, Any]]], request: ModelRequest, order_id: str | None
    ) -> str:
        parts = []
        for name, result in results:
            if name == LOOKUP_TOOL:
                parts.append(_order_reply(result, order_id))
            elif name == ESCALATE_TOOL:
                parts.append(_escalation_reply(result, request.escalation_hint))
            elif name in WRITE_TOOLS:
                parts.append(write_reply(name, result, order_id))
        return " ".join(parts)

    def _answer_from_kb(self, request: ModelRequest) -> ModelResult:
        chosen: list[tuple[int, str]] = []
        if request.hits:
            # The same context the turn searched with (query_rewrite), from the history the turn sends.
            context = contextual_query(request.user_message, _earlier_user_messages(request.messages))
            chosen = best_sentences(request.user_message, request.hits, self._ranker, context_query=context)
        if not chosen:
            return ModelResult(content=DONT_KNOW, model=NAME, knew_answer=False)
        groups: list[str] = []
        for hit_index in dict.fromkeys(index for index, _ in chosen):
            body = " ".join(
                sentence if sentence[-1] in ".!?" else sentence + "."
                for index, sentence in chosen
                if index == hit_index
            )
            groups.append(f"{body} [{hit_index + 1}]")
        return ModelResult(content="According to our help center: " + " ".join(groups), model=NAME)


def _earlier_user_messages(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """The customer's messages before the turn's own (its last user message), oldest first."""
    users = [
        str(message.get("content"))
        for message in messages
        if message.get("role") == "user" and isinstance(message.get("content"), str)
    ]
    return users[:-1]
