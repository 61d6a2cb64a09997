"""Follow-ups that lean on the previous turn are searched in its context; standalone questions are not touched.

Pure functions of `agent_service.query_rewrite`, then the turn (`TurnRunner` against the in-memory port fakes
of test_turn_runner) to show which searches a turn makes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from agent_service.domain import KbHit, TurnResult
from agent_service.query_rewrite import (
    MAX_CONTEXT_MESSAGES,
    contextual_query,
    fuse,
    is_follow_up,
    previous_customer_messages,
)
from agent_service.texts import withheld_message
from agent_service.turn_contract import RetrievalResult
from tests.agent.test_turn_runner import Harness, ScriptedModel, _answer


@pytest.mark.parametrize(
    "message",
    [
        "and how long does that take?",
        "What about Canada?",
        "how much is it",
        "Does it come in blue?",
        "Can I pay for them with a voucher?",
        "Do you deliver there?",
        "Iceland?",
        "and if it's broken?",
        "how long does the link work?",
        # longer ones that open as a continuation or point back with a pronoun
        "how long till it shows up on my bank statement?",
        "she is heavier than that with her carrier, can she travel in the hold instead?",
        "and once the warehouse receives the parcel, how fast is the refund issued?",
    ],
)
def test_messages_that_point_back_are_follow_ups(message: str) -> None:
    assert is_follow_up(message)


@pytest.mark.parametrize(
    "message",
    [
        "How long does delivery to Iceland take?",
        "Is there a fee for paying by bank transfer?",
        "Can I return a bike I have already ridden?",
        "What does the warranty on electric motors cover?",
        "",
    ],
)
def test_questions_that_name_their_subject_are_not(message: str) -> None:
    assert not is_follow_up(message)


def test_a_message_longer_than_the_pronoun_bound_names_its_own_subject() -> None:
    assert not is_follow_up(
        "can it ship my new sofa, two armchairs and the oak dining table to my holiday flat in Spain"
    )


def test_the_context_is_the_previous_message_and_the_chain_of_follow_ups_before_it() -> None:
    assert contextual_query("what about Norway?", ["Do you ship to Iceland?"]) == (
        "Do you ship to Iceland? what about Norway?"
    )
    earlier = ["How do I clean the chain?", "Do you ship to Iceland?", "and Norway?", "and Finland?"]
    assert contextual_query("how long does that take?", earlier) == (
        "Do you ship to Iceland? and Norway? and Finland? how long does that take?"
    )
    assert len(earlier[-MAX_CONTEXT_MESSAGES:]) == MAX_CONTEXT_MESSAGES
    assert contextual_query("how long does that take?", []) is None
    assert contextual_query("How long does delivery to Iceland take?", ["Do you ship to Iceland?"]) is None


def test_blocked_messages_and_notes_are_not_context() -> None:
    turns = (
        TurnResult("c", "t1", user_message="Do you ship to Iceland?"),
        TurnResult("c", "t2", user_message=withheld_message("prompt_injection", "0" * 16)),
        TurnResult("c", "note", system_note="Handed back to the bot by jo"),
    )
    assert previous_customer_messages(turns) == ["Do you ship to Iceland?"]


def _hits(*chunk_ids: str) -> RetrievalResult:
    return RetrievalResult(
        hits=tuple(KbHit(chunk_id.split("#")[0], chunk_id, "t", chunk_id, 0.3) for chunk_id in chunk_ids),
        nothing_relevant=not chunk_ids,
    )


def test_fusion_keeps_what_either_search_ranks_high() -> None:
    literal = _hits("shipping#0", "gift#0", "returns#0")
    contextual = _hits("abroad#1", "shipping#0", "abroad#0")
    fused = [hit.chunk_id for hit in fuse(literal, contextual).hits]
    assert fused[0] == "shipping#0"  # ranked by both
    assert fused[1] == "abroad#1"  # the contextual search's first, ahead of the literal one's second
    assert len(fused) == 3 and "gift#0" in fused
    # One side found nothing (or failed): the other stands as it is.
    assert fuse(_hits(), contextual) == contextual
    assert fuse(literal, RetrievalResult((), nothing_relevant=True, failed=True)) == literal


# --- in the turn ---------------------------------------------------------------------------------------------


@dataclass
class RecordingRetrieval:
    """Answers every query with its own chunk and records the queries."""

    queries: list[str] = field(default_factory=list)

    async def search(self, query: str) -> RetrievalResult:
        self.queries.append(query)
        kind = "context" if "?" in query[:-1] else "literal"
        return _hits(f"{kind}#{len(self.queries)}a", f"{kind}#{len(self.queries)}b")


def test_a_standalone_question_is_searched_once_as_written() -> None:
    harness = Harness(ScriptedModel(_answer("We ship to Iceland [1].")))
    retrieval = RecordingRetrieval()
    harness.retrieval = retrieval  # type: ignore[assignment]
    harness.turn("Do you ship bikes to Iceland?")
    harness.turn("How long does delivery to Iceland take?")
    assert retrieval.queries == ["Do you ship bikes to Iceland?", "How long does delivery to Iceland take?"]


def test_a_follow_up_is_also_searched_with_the_previous_message_and_the_hits_fused() -> None:
    model = ScriptedModel(_answer("We ship to Iceland [1]."), _answer("6-9 working days [1]."))
    harness = Harness(model)
    retrieval = RecordingRetrieval()
    harness.retrieval = retrieval  # type: ignore[assignment]
    harness.turn("Do you ship bikes to Iceland?")
    _, result = harness.turn("and how long does that take?")
    assert retrieval.queries[1:] == [
        "and how long does that take?",
        "Do you ship bikes to Iceland? and how long does that take?",
    ]
    seen = [hit.chunk_id for hit in model.requests[-1].hits]
    assert seen == ["context#3a", "literal#2a"]  # interleaved, the contextual ranking first
    assert result.sources[0].chunk_id == "context#3a"
