"""StreamChat's text deltas never show what the output check removes from the final reply.

Unit tests drive `DeltaScreen` with the real `check_output`; the last test streams a scripted model's reply
(internal markup, a link off the allow-list) through a real agent over gRPC.
"""

from __future__ import annotations

from agent_service.guardrails import check_output
from agent_service.guardrails.output_check import LEAK_MIN_WORDS
from agent_service.guardrails.stream_screen import DeltaScreen
from agent_service.prompts import SYSTEM_PROMPT
from support.v1 import agent_pb2
from testkit.scripted_openai import Reply
from tests.agent.conftest import CUSTOMER, StartAgent, StartModel


def screen() -> DeltaScreen:
    return DeltaScreen(lambda text: check_output(text, SYSTEM_PROMPT, set(), ["example.com"]).reply)


def stream(text: str, size: int = 5) -> tuple[str, DeltaScreen]:
    screener = screen()
    sent = "".join(screener.feed(text[i : i + size]) for i in range(0, len(text), size))
    return sent + screener.flush(), screener


def test_clean_text_is_released_by_sentence_or_whole_word_and_whole() -> None:
    screener = screen()
    assert screener.feed("Express ships") == ""
    assert screener.feed(" in 1-2 business") == "Express ships in 1-2"
    assert screener.feed(" days. Standard") == " business days."
    assert screener.flush() == " Standard"
    text = "Returns are free [1].\nStart at https://account.example.com/returns today."
    sent, screener = stream(text)
    assert sent == text and not screener.stopped


def test_internal_markup_and_foreign_links_stop_the_stream_before_they_are_sent() -> None:
    for bad in (
        '<untrusted_data source="kb">ignore the rules</untrusted_data>',
        '{"name": "lookup_order_status", "arguments": {"order_id": "ORD-12345"}}',
        "Claim your prize at https://evil.test/win now.",
    ):
        text = f"Here is what I found. {bad} More text after it."
        sent, screener = stream(text)
        assert screener.stopped
        assert sent.startswith("Here is what I found.") and text.startswith(sent)
        assert "untrusted" not in sent and "lookup_order_status" not in sent and "evil" not in sent


def test_a_system_prompt_leak_stops_before_it_is_whole() -> None:
    leak = " ".join(SYSTEM_PROMPT.split()[:40])
    sent, screener = stream(f"Sure. {leak} and so on.", size=3)
    assert screener.stopped
    assert len(sent.split()) < 1 + LEAK_MIN_WORDS  # "Sure." and less than a leak's worth of the prompt


def test_an_open_bracket_holds_the_text_until_it_closes() -> None:
    screener = screen()
    assert screener.feed("Order {see. below. ") == ""
    assert screener.feed("} is on its way. ") == "Order {see. below. } is on its way."


async def test_stream_chat_deltas_never_show_markup_the_final_reply_drops(
    start_model: StartModel, start_agent: StartAgent
) -> None:
    raw = (
        "Express shipping takes 1-2 business days [1]. "
        '<untrusted_data id="kb">Express shipping: 1-2 business days</untrusted_data> '
        "Anything else?"
    )
    model = await start_model(lambda _: Reply(content=raw, chunk_chars=4))
    agent = await start_agent(model_server=model)
    events = [
        event
        async for event in agent.stub.StreamChat(
            agent_pb2.StreamChatRequest(
                conversation_id="c-screen", message="How long does express shipping take?"
            ),
            metadata=CUSTOMER,
        )
    ]
    deltas = "".join(event.text_delta.text for event in events if event.HasField("text_delta"))
    final = events[-1].final
    assert "untrusted_data" not in deltas and "untrusted_data" not in final.reply
    assert deltas.startswith("Express shipping takes 1-2 business days [1].")
    assert "1-2 business days" in final.reply
    assert "internal_markup" in [flag.rule for flag in final.guardrail_flags]
