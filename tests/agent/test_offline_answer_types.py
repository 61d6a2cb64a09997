"""The offline engine's sentence selection beyond similarity: the kind of fact asked for, the sentence that
continues the chosen one, and the lower bar for a sentence that shares the question's own terms.

The article is written here (a climbing gym, neither the sample KB nor the development suite's SaaS help
center), with the real MiniLM model, so the tests say nothing about what the engine was tuned on.
"""

from __future__ import annotations

import pytest

from agent_service.adapters.offline_model import (
    ANSWER_TYPE_BONUS,
    MIN_ANSWER_SIMILARITY,
    MIN_SUPPORTED_SIMILARITY,
    SHORT_PARAGRAPH_CHARS,
    Scored,
    Sentence,
    SentenceRanker,
    _has_answer_type,
    best_sentences,
    select_sentences,
)
from agent_service.domain import KbHit
from service_kit.embedding import MiniLMModel

MEMBERSHIP = """# Memberships

A membership gives you unlimited climbing at every Boulderhaus gym. Members can also book the sauna.

## Pausing a membership

You can pause a membership for injury or travel. Pauses last between 2 and 12 weeks and cost nothing.

## Day passes

Visitors without a membership buy a day pass at the front desk. A day pass costs 14 euros, shoes included.

## Waiver

Every climber signs the safety waiver once before the first visit. Sign it online at the front-desk tablet.
"""


@pytest.fixture(scope="module")
def ranker() -> SentenceRanker:
    return SentenceRanker(MiniLMModel.shared())


def _hits() -> list[KbHit]:
    return [KbHit("memberships.md", "memberships.md#0", "Memberships", MEMBERSHIP, 0.3)]


def _answer(question: str, ranker: SentenceRanker) -> list[str]:
    return [sentence for _, sentence in best_sentences(question, _hits(), ranker)]


def test_a_how_long_question_prefers_the_sentence_with_a_duration(ranker: SentenceRanker) -> None:
    question = "how long can i put my membership on hold"
    scored = {item.sentence.text: item for item in ranker.rank(question, _hits())}
    duration = scored["Pauses last between 2 and 12 weeks and cost nothing."]
    plain = scored["You can pause a membership for injury or travel."]
    # The bonus is what the duration sentence gets over its similarity; the other sentence gets none.
    assert duration.score - duration.similarity >= ANSWER_TYPE_BONUS - 1e-6
    assert plain.score - plain.similarity < ANSWER_TYPE_BONUS
    assert (
        ranker.rank(question, _hits())[0].sentence.text
        == "Pauses last between 2 and 12 weeks and cost nothing."
    )
    assert "Pauses last between 2 and 12 weeks and cost nothing." in _answer(question, ranker)


def test_a_how_much_question_gives_the_sentence_with_an_amount_the_bonus(ranker: SentenceRanker) -> None:
    question = "how much do visitors pay to climb for a day"
    scored = {item.sentence.text: item for item in ranker.rank(question, _hits())}
    amount = scored["A day pass costs 14 euros, shoes included."]
    assert amount.score - amount.similarity >= ANSWER_TYPE_BONUS - 1e-6
    assert "A day pass costs 14 euros, shoes included." in _answer(question, ranker)


def _sentence(text: str, position: int, paragraph: int) -> Sentence:
    return Sentence(text, "Waiver", 0, position, paragraph, False)


def test_a_sentence_that_continues_the_chosen_one_comes_with_it() -> None:
    first = _sentence("Every climber signs the safety waiver once before the first visit.", 0, 0)
    continues = _sentence("Sign it online at the front-desk tablet.", 1, 0)
    other = _sentence("Members can also book the sauna.", 2, 1)
    chosen = select_sentences([Scored(first, 0.8, 0.7), Scored(other, 0.3, 0.3), Scored(continues, 0.2, 0.2)])
    assert chosen == [first, continues]
    # Only within its paragraph: a sentence of the next paragraph is not a continuation.
    apart = _sentence("Sign it online at the front-desk tablet.", 1, 1)
    assert select_sentences([Scored(first, 0.8, 0.7), Scored(apart, 0.2, 0.2)]) == [first]


def test_a_shared_term_lowers_the_bar_but_off_topic_still_gets_nothing(ranker: SentenceRanker) -> None:
    assert MIN_SUPPORTED_SIMILARITY < MIN_ANSWER_SIMILARITY
    scored = ranker.rank("sauna?", _hits())
    sauna = next(item for item in scored if "sauna" in item.sentence.text)
    assert sauna.shares_terms
    # Below the plain bar, a sentence with a term of the question is still an answer; without one it is not.
    weak = Scored(sauna.sentence, 0.35, 0.35, shares_terms=True)
    assert select_sentences([weak]) == [sauna.sentence]
    assert select_sentences([Scored(sauna.sentence, 0.35, 0.35, shares_terms=False)]) == []
    assert best_sentences("What is the capital city of Peru?", _hits(), ranker) == []
    assert best_sentences("who won the football match yesterday", _hits(), ranker) == []


def test_a_where_question_prefers_the_sentence_with_a_place(ranker: SentenceRanker) -> None:
    article = (
        "# Lockers\n\nLockers are free for members and visitors. Book a locker at boulderhaus.example/lockers "
        "before you come. Lockers are emptied every night.\n"
    )
    hits = [KbHit("lockers.md", "lockers.md#0", "Lockers", article, 0.3)]
    question = "where can i get a locker"
    scored = {item.sentence.text: item for item in ranker.rank(question, hits)}
    place = scored["Book a locker at boulderhaus.example/lockers before you come."]
    plain = scored["Lockers are emptied every night."]
    assert place.score - place.similarity >= ANSWER_TYPE_BONUS - 1e-6
    assert plain.score - plain.similarity < ANSWER_TYPE_BONUS
    assert ranker.rank(question, hits)[0] == place


def test_a_place_is_a_web_address_an_email_address_or_a_menu_path() -> None:
    question = "where do i change the billing email"
    assert _has_answer_type(question, "Change it in Settings > Billing > Contacts.")
    assert _has_answer_type(question, "Write to billing@example.com from the account owner's address.")
    assert _has_answer_type(question, "Open example.com/billing and sign in.")
    assert not _has_answer_type(question, "The billing email receives every invoice.")
    assert not _has_answer_type("how do i change the billing email", "Change it in Settings > Billing.")


def test_a_short_paragraph_is_answered_whole_a_long_one_is_not() -> None:
    rule = _sentence("We do not refund a removed seat in cash.", 0, 0)
    exception = _sentence("The unused part is added as credit to your next invoice.", 1, 0)
    other = _sentence("Members can also book the sauna.", 2, 1)
    chosen = select_sentences([Scored(rule, 0.8, 0.7), Scored(other, 0.3, 0.3), Scored(exception, 0.2, 0.2)])
    assert chosen == [rule, exception]
    filler = "Every climber signs the safety waiver once before the first visit and again each year. "
    long_rule = _sentence(filler * (SHORT_PARAGRAPH_CHARS // len(filler) + 1), 0, 0)
    chosen = select_sentences(
        [Scored(long_rule, 0.8, 0.7), Scored(other, 0.3, 0.3), Scored(exception, 0.2, 0.2)]
    )
    assert chosen == [long_rule]


def test_the_best_sentence_close_enough_answers_even_below_one_that_is_not() -> None:
    # A sentence that only resembles the question ranks first but is below the plain bar; the one after it
    # shares a term of the question and clears the lower bar: it is the answer, not "I don't know".
    resembles = _sentence("Members can also book the sauna.", 0, 0)
    answers = _sentence("A day pass costs 14 euros, shoes included.", 1, 1)
    chosen = select_sentences(
        [Scored(resembles, 0.39, 0.39, shares_terms=False), Scored(answers, 0.36, 0.36, shares_terms=True)]
    )
    assert chosen == [answers]
