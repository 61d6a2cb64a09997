"""The offline engine answers the question: sentences ranked by meaning (the shared MiniLM model), not by
position, kept verbatim with their citation, and "I don't know" when no sentence is close enough.

The articles are written here (a bike shop, not the sample KB in kb/) so the tests say nothing about what the
engine was tuned on. The last tests run the real stack (three gRPC services, real ChromaDB) with the engine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_service.adapters.offline_model import (
    MAX_ANSWER_SENTENCES,
    OfflineModel,
    SentenceRanker,
    best_sentences,
)
from agent_service.domain import KbHit
from agent_service.model_port import ModelRequest
from agent_service.texts import DONT_KNOW
from devstack.inprocess import InProcessStack
from service_kit.embedding import MiniLMModel
from support.v1 import agent_pb2, retrieval_pb2

SHIPPING_ABROAD = """---
title: Shipping abroad
---
# Shipping abroad

We ship bikes to Norway, Switzerland and Iceland from our workshop in Denmark. Import duties and VAT for
these countries are paid by the recipient to the courier on delivery.

## Delivery time

Parcels to Norway, Switzerland and Iceland take 6-9 working days. A tracking link is sent by text message
when the bike leaves the workshop.

## Packaging

Every bike is shipped 90% assembled in a recyclable cardboard box. The pedals and the handlebar are packed
separately in the same box.
"""

SERVICING = """# Servicing your bike

Standard servicing takes three working days at any of our workshops. It costs 59 euros and includes new brake
pads.

## What we check

A full service covers the following parts:
- the gears and the chain, which are cleaned and oiled;
- the brakes, which are adjusted or replaced;
- the wheels, which are trued and checked for broken spokes.
"""


@pytest.fixture(scope="module")
def ranker() -> SentenceRanker:
    return SentenceRanker(MiniLMModel.shared())


def _hit(text: str, doc_id: str = "shipping-abroad.md", index: int = 0) -> KbHit:
    return KbHit(doc_id, f"{doc_id}#{index}", doc_id, text, 0.3)


def test_the_answer_is_the_sentence_that_answers_not_the_first_one(ranker: SentenceRanker) -> None:
    chosen = best_sentences(
        "Do I have to pay customs charges when it arrives?", [_hit(SHIPPING_ABROAD)], ranker
    )
    assert chosen, "the article answers the question"
    best = ranker.rank("Do I have to pay customs charges when it arrives?", [_hit(SHIPPING_ABROAD)])[0]
    assert best.sentence.text.startswith(
        "Import duties and VAT for these countries are paid by the recipient"
    )
    # The answer opens with that sentence's short paragraph (the sentence it points back to comes with it).
    assert {hit_index for hit_index, _ in chosen} == {0}
    assert chosen[0][1].startswith("We ship bikes to Norway") and chosen[1][1] == best.sentence.text
    assert len(chosen) <= MAX_ANSWER_SENTENCES
    # Verbatim: every sentence is the article's own text (wrapped lines joined).
    flat = " ".join(SHIPPING_ABROAD.split())
    assert all(sentence in flat for _, sentence in chosen)


def test_sentences_are_ranked_by_meaning_across_chunks_and_cite_their_chunk(ranker: SentenceRanker) -> None:
    hits = [_hit(SERVICING, "servicing.md"), _hit(SHIPPING_ABROAD, "shipping-abroad.md", 1)]
    chosen = best_sentences("How long does delivery to Norway take?", hits, ranker)
    assert (1, "Parcels to Norway, Switzerland and Iceland take 6-9 working days.") in chosen
    assert all(hit_index == 1 for hit_index, _ in chosen)
    reply = OfflineModel(ranker).decide(
        ModelRequest(messages=(), tools=(), user_message="How long does delivery to Norway take?", hits=hits)
    )
    # The citation follows the sentences of its chunk, in the [n] format the turn reads.
    assert "take 6-9 working days." in reply.content
    assert reply.content.endswith(". [2]")
    assert reply.knew_answer


def test_a_sentence_that_points_back_brings_the_one_before_it(ranker: SentenceRanker) -> None:
    chosen = [sentence for _, sentence in best_sentences("How much is a service?", [_hit(SERVICING)], ranker)]
    assert "It costs 59 euros and includes new brake pads." in chosen
    assert "Standard servicing takes three working days at any of our workshops." in chosen


def test_a_list_introduction_brings_its_items(ranker: SentenceRanker) -> None:
    question = "Which parts are checked in a full service?"
    chosen = [sentence for _, sentence in best_sentences(question, [_hit(SERVICING)], ranker)]
    intro = "A full service covers the following parts:"
    assert intro in chosen
    assert any(sentence.startswith("the gears and the chain") for sentence in chosen)


def test_no_sentence_close_enough_is_an_honest_dont_know(ranker: SentenceRanker) -> None:
    hits = [_hit(SHIPPING_ABROAD), _hit(SERVICING, "servicing.md", 1)]
    assert best_sentences("What is the capital city of Peru?", hits, ranker) == []
    reply = OfflineModel(ranker).decide(
        ModelRequest(messages=(), tools=(), user_message="What is the capital city of Peru?", hits=hits)
    )
    assert reply.content == DONT_KNOW and not reply.knew_answer


def test_a_follow_up_is_answered_in_the_context_of_the_previous_question(ranker: SentenceRanker) -> None:
    messages = (
        {"role": "system", "content": "..."},
        {"role": "user", "content": "Do you ship bikes to Norway?"},
        {"role": "assistant", "content": "According to our help center: We ship bikes to Norway ... [1]"},
        {"role": "user", "content": "and how long does that take?"},
    )
    reply = OfflineModel(ranker).decide(
        ModelRequest(
            messages=messages,
            tools=(),
            user_message="and how long does that take?",
            hits=[_hit(SERVICING, "servicing.md"), _hit(SHIPPING_ABROAD, "shipping-abroad.md", 1)],
        )
    )
    assert "Parcels to Norway, Switzerland and Iceland take 6-9 working days." in reply.content
    assert reply.content.endswith(". [2]")
    assert "[1]" not in reply.content  # nothing from the servicing article


def test_sentence_vectors_are_cached_and_embedded_in_one_call_per_turn() -> None:
    class CountingEmbedder:
        def __init__(self) -> None:
            self.calls: list[int] = []

        def embed(self, texts: list[str]) -> list[object]:
            self.calls.append(len(texts))
            return list(MiniLMModel.shared().embed(texts))

    counting = CountingEmbedder()
    ranker = SentenceRanker(counting)  # type: ignore[arg-type]
    hits = [_hit(SHIPPING_ABROAD)]
    ranker.rank("Who pays the import duties?", hits)
    ranker.rank("How long does delivery to Iceland take?", hits)
    assert len(counting.calls) == 2
    assert counting.calls[0] > 1 and counting.calls[1] == 1  # the second turn embeds only its question


# --- through the real stack ---------------------------------------------------------------------------------

CUSTOMER = (("x-customer-id", "cust-001"),)


async def test_through_the_stack_the_reply_quotes_the_later_sentence_and_cites_it(tmp_path: Path) -> None:
    documents = [
        retrieval_pb2.Document(doc_id="shipping-abroad.md", content=SHIPPING_ABROAD),
        retrieval_pb2.Document(doc_id="servicing.md", content=SERVICING),
    ]
    async with InProcessStack(tmp_path, documents=documents) as stack:
        agent = stack.agent_stub()
        response = await agent.Chat(
            agent_pb2.ChatRequest(conversation_id="abroad-1", message="Who pays the import duties?"),
            metadata=CUSTOMER,
        )
        assert response.usage.model == "offline-engine"
        assert "paid by the recipient to the courier on delivery" in response.reply
        assert "[1]" in response.reply
        assert [source.doc_id for source in response.sources] == ["shipping-abroad.md"]

        # A follow-up that leans on the previous question is searched and answered in its context.
        await agent.Chat(
            agent_pb2.ChatRequest(conversation_id="abroad-2", message="Do you deliver to Iceland?"),
            metadata=CUSTOMER,
        )
        follow_up = await agent.Chat(
            agent_pb2.ChatRequest(conversation_id="abroad-2", message="and how long does that take?"),
            metadata=CUSTOMER,
        )
        assert "6-9 working days" in follow_up.reply
        assert "shipping-abroad.md" in [source.doc_id for source in follow_up.sources]
