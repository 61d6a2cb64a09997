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
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

MIN_LETTERS = 2
MAX_LETTERS = 5
MAX_PREFIX = 2


def spelled_by_word_starts(short: str, words: Sequence[str]) -> bool:
    """Whether `short` is the beginnings (1-MAX_PREFIX letters each) of two or more consecutive `words`."""

    def rest(text: str, start: int, used: int) -> bool:
        if not text:
            return used >= 2
        if start >= len(words):
            return False
        word = words[start]
        return any(
            word[:size] == text[:size] and rest(text[size:], start + 1, used + 1)
            for size in range(1, min(MAX_PREFIX, len(text), len(word)) + 1)
        )

    return any(rest(short, begin, 0) for begin in range(len(words)))


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
