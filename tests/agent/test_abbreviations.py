"""Abbreviations the customer writes and the help center spells out ("PRs" → "pull requests"), counted in the
offline engine's word overlap (service_kit/abbreviations.py). The real MiniLM tokenizer decides what
reads as an abbreviation; the sentences are written here, not taken from any suite."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from agent_service.adapters.offline_model import LEXICAL_WEIGHT, SentenceRanker, best_sentences
from agent_service.domain import KbHit
from service_kit.abbreviations import (
    abbreviation_candidates,
    named_phrases,
    spell_out,
    spelled_by_word_starts,
    spelled_names,
)
from service_kit.embedding import MiniLMModel
from service_kit.semantic_match import Vector

PAYMENTS = """# Paying for a membership

We accept Visa, Mastercard and American Express at the front desk. Gift cards are sold online only.
"""


@pytest.fixture(scope="module")
def model() -> MiniLMModel:
    return MiniLMModel.shared()


def test_an_abbreviation_is_spelled_by_the_beginnings_of_consecutive_words() -> None:
    assert spelled_by_word_starts("pr", ["link", "pull", "requests", "task"])
    assert spelled_by_word_starts("amex", ["accept", "visa", "american", "express"])
    assert spelled_by_word_starts("dpa", ["sign", "data", "processing", "agreement"])
    assert not spelled_by_word_starts(
        "pu", ["pull", "requests"]
    )  # one word's beginning is not an abbreviation
    assert not spelled_by_word_starts("pr", ["pull"])  # the words run out
    assert not spelled_by_word_starts("amex", ["american", "card", "express"])  # not consecutive


def test_only_short_words_the_tokenizer_splits_and_no_sentence_contains_are_abbreviations(
    model: MiniLMModel,
) -> None:
    words = ["do", "u", "take", "amex", "prs", "set", "pay", "won", "membership", "visa"]
    found = abbreviation_candidates(words, {"visa", "accept"}, model.is_whole_word)
    assert found == {"amex": "amex", "prs": "pr"}  # the plural "s" is not spelled


class WithoutTokenizer:
    """The embedding model without its tokenizer: nothing reads as an abbreviation."""

    def __init__(self, model: MiniLMModel) -> None:
        self._model = model

    def embed(self, texts: Sequence[str]) -> list[Vector]:
        return self._model.embed(texts)


def _scores_with_and_without_tokenizer(
    model: MiniLMModel, article: str, question: str = "do you take amex"
) -> tuple[dict[str, float], dict[str, float]]:
    """Sentence -> score, ranked with the tokenizer (abbreviations read) and without it (not read)."""
    hits = [KbHit("payments.md", "payments.md#0", "Payments", article, 0.3)]
    spelled = {item.sentence.text: item.score for item in SentenceRanker(model).rank(question, hits)}
    plain = {
        item.sentence.text: item.score
        for item in SentenceRanker(WithoutTokenizer(model)).rank(question, hits)
    }
    return spelled, plain


def test_the_sentence_that_spells_out_the_abbreviation_ranks_higher(model: MiniLMModel) -> None:
    spelled, plain = _scores_with_and_without_tokenizer(model, PAYMENTS)
    card = "We accept Visa, Mastercard and American Express at the front desk."
    # A name ("American Express") is spelled out in the question itself, as the retrieval service searched it:
    # the sentence gains in meaning as well as in shared words.
    assert spelled[card] - plain[card] > LEXICAL_WEIGHT / 2
    assert max(spelled, key=lambda text: spelled[text]) == card


def test_lower_case_words_that_spell_the_abbreviation_count_as_shared_words_only(model: MiniLMModel) -> None:
    spelled, plain = _scores_with_and_without_tokenizer(model, PAYMENTS.lower())
    card = "we accept visa, mastercard and american express at the front desk."
    other = "gift cards are sold online only."
    # "amex" is one of the question's two terms ("take", "amex"): half the lexical weight.
    assert spelled[card] - plain[card] == pytest.approx(LEXICAL_WEIGHT / 2, abs=1e-4)
    assert spelled[other] == pytest.approx(plain[other], abs=1e-6)


def test_names_are_runs_of_capitalised_words_and_their_parts() -> None:
    names = named_phrases(
        ["Ask Customer Support. We accept American Express and Apple Pay.", "Apple Pay too"]
    )
    assert names["Apple Pay"] == 2 and names["American Express"] == 1
    assert names["Customer Support"] == 1 and names["Ask Customer Support"] == 1
    assert "We" not in names and "accept American" not in names


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("do you take amex", ["American Express"]),
        ("where do i sign the dpa", ["Data Processing Agreement"]),
        ("pls help", []),  # spells no name
        ("my css is broken", []),  # "cs" after the plural: two letters spell too many names' initials
        ("me cobran dos veces cada mes", []),  # Spanish "mes", read as "me"
        ("do you take visa", []),  # a whole word of the model's vocabulary is no abbreviation
    ],
)
def test_spelled_names_are_names_the_whole_abbreviation_spells(query: str, expected: list[str]) -> None:
    names = named_phrases(
        ["We accept American Express. Sign our Data Processing Agreement. Apple Pay works."]
    )
    model = MiniLMModel.shared()
    assert spelled_names(query, {"we", "accept"}, model.is_whole_word, names) == expected
    assert spell_out(query, expected) == (f"{query} ({expected[0]})" if expected else query)


def test_the_most_frequent_name_wins() -> None:
    names = named_phrases(["American Express.", "Ample Extras. Ample Extras."])
    assert spelled_names("amex?", set(), MiniLMModel.shared().is_whole_word, names) == ["Ample Extras"]


PAYING = """# Paying for your order

The shop accepts Visa, Mastercard, American Express and Discover credit and debit cards, PayPal, Apple Pay and
gift cards.
You can combine one gift card with one other payment method.
"""
EXPRESS = """# Express delivery

Express delivery costs $14.99 per order and is available for most items and most addresses.
Express orders placed before 2 pm are usually delivered the next business day.
"""


def test_part_of_a_name_in_another_article_earns_nothing(model: MiniLMModel) -> None:
    """'amex' is searched as 'amex (American Express)'; the delivery article's "Express" is no part of that
    answer: only a sentence with the whole name is compared with the spelled-out question."""
    hits = [
        KbHit("paying.md", "paying.md#0", "Paying for your order", PAYING, 0.5),
        KbHit("express.md", "express.md#0", "Express delivery", EXPRESS, 0.4),
    ]
    chosen = best_sentences("do u take amex", hits, SentenceRanker(model))
    assert chosen and "American Express" in chosen[0][1]
    assert all(hit_index == 0 for hit_index, _ in chosen), chosen
