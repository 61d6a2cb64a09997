"""Abbreviations in a customer's question that the help center writes out ("PRs" → "pull requests", "amex" →
"American Express", "dpa" → "data processing agreement").

Customers abbreviate; help centers spell things out, and neither the sentence embeddings nor word overlap see
that "PRs" and "pull requests" are the same thing. A question word is read as an abbreviation when it is short
(2-5 characters without a plural "s"), no candidate sentence contains it, and the embedding model's vocabulary
does not know it as a whole word (its tokenizer splits it: "amex" → "am ##ex", while "set", "pay" or "won"
stay whole — without this, "set" is "spelled" by "someone else tried"). A sentence then contains it when the
beginnings (one or two letters: "am" + "ex") of two or more of its consecutive content words spell it.

The offline engine (:mod:`agent_service.adapters.offline_model`) counts such a match in a sentence's word
overlap with the question, for ranking only: it never lowers the bar below which the engine says it does not
know, so a chance spelling cannot turn an off-topic question into an answer.

When the abbreviation spells a *name* of the help center — a phrase of capitalised words
(:func:`named_phrases`), the way help centers write brands, plans and products; the most frequent one wins —
the retrieval service (:mod:`retrieval_service.knowledge_base`) spells it out in the query before it searches
("do you take amex" → "do you take amex (American Express)"), so both the embedding and BM25 see the help
center's words, and a chunk that contains the name holds an exact term of the query (relevant at any
distance). The offline engine finds the same names in the retrieved chunks: a sentence that contains one is
compared with the spelled-out question and shares a term with it, the others with the question as written (so
"Express shipping" earns nothing from "American Express"). Lower-case words are never spelled out: two or three of
them spell almost any short word ("pls": "place labels on ...").
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

MIN_LETTERS = 2
MAX_LETTERS = 5
MAX_PREFIX = 2
# A name is spelled out for an abbreviation of at least this many letters: two letters spell the initials of
# too many names ("CSS", read as "cs", was "Contacting Skyhop"; Spanish "mes" was "Microsoft Entra").
MIN_NAME_LETTERS = 3


def spelled_by_word_starts(short: str, words: Sequence[str], whole: bool = False) -> bool:
    """Whether `short` is the beginnings (1-MAX_PREFIX letters each) of two or more consecutive `words`
    (`whole`: of all of them, from the first)."""

    def rest(text: str, start: int, used: int) -> bool:
        if not text:
            return used >= 2 and (not whole or start == len(words))
        if start >= len(words):
            return False
        word = words[start]
        return any(
            word[:size] == text[:size] and rest(text[size:], start + 1, used + 1)
            for size in range(1, min(MAX_PREFIX, len(text), len(word)) + 1)
        )

    return any(rest(short, begin, 0) for begin in (range(1) if whole else range(len(words))))


def abbreviation_candidates(
    question_words: Collection[str], known_words: Collection[str], is_whole_word: Callable[[str], bool]
) -> dict[str, str]:
    """{question word: what to spell} for the words of the question that read as abbreviations: short, in no
    candidate sentence (`known_words`), and more than one word piece for the embedding model's tokenizer."""
    found: dict[str, str] = {}
    for word in question_words:
        short = word[:-1] if word.endswith("s") and len(word) > MIN_LETTERS else word
        if not (MIN_LETTERS <= len(short) <= MAX_LETTERS and short.isalpha()) or word in known_words:
            continue
        if not is_whole_word(word):
            found[word] = short
    return found


def words_of(text: str) -> list[str]:
    """The lower-cased words of `text` (letters and digits), as abbreviations are looked for in it."""
    return re.findall(r"[^\W_]+", text.lower())


# A name: two to four capitalised words ("American Express", "Priority Support", "Data Processing Agreement").
_NAME = re.compile(r"\b[A-Z][a-z]+(?:[ -][A-Z][a-z]+){1,3}\b")


def named_phrases(texts: Iterable[str]) -> Counter[str]:
    """How often each name (capitalised phrase of 2-4 words, and each run of 2+ of its words: "Ask Customer
    Support" at the start of a sentence also names "Customer Support") occurs in `texts`."""
    found: Counter[str] = Counter()
    for text in texts:
        for name in _NAME.findall(text):
            words = name.split(" ")
            found.update(
                " ".join(words[start:end])
                for start in range(len(words))
                for end in range(start + 2, len(words) + 1)
            )
    return found


def spelled_names(
    query: str,
    known_words: Collection[str],
    is_whole_word: Callable[[str], bool],
    names: Mapping[str, int],
) -> list[str]:
    """The names the abbreviations of `query` stand for, one per abbreviation that has one (the most frequent
    name it spells). `known_words`: words the help center itself uses (never abbreviations); `names`: name ->
    count (:func:`named_phrases`)."""
    found: list[str] = []
    for short in dict.fromkeys(abbreviation_candidates(words_of(query), known_words, is_whole_word).values()):
        if len(short) < MIN_NAME_LETTERS:
            continue
        matching = [
            name
            for name in names
            if spelled_by_word_starts(short, re.split(r"[ -]", name.lower()), whole=True)
        ]
        if matching:
            found.append(max(matching, key=lambda name: (names[name], name)))
    return found


def spell_out(query: str, spelled: Sequence[str]) -> str:
    """`query` followed by the names its abbreviations stand for, in parentheses ("do you take amex (American
    Express)"); unchanged when there are none."""
    return f"{query} ({'; '.join(spelled)})" if spelled else query
