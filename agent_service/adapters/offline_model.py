"""The offline engine: a deterministic stand-in for the model behind the same port (docs/architecture.md).

It reads the turn's structured view (`ModelRequest.user_message`, `hits`, `escalation_hint`) and any tool
results already in `messages`, and decides like a careful, literal-minded assistant:

* an order id in the message → a `lookup_order_status` call, then a reply built from the tool result;
* an escalation trigger (from the escalation policy) → an `escalate_to_human` call with the priority, then a
  reply quoting the ticket id;
* otherwise the sentences of the best relevant chunks that overlap the question most, cited as [n];
* nothing relevant → it says it does not know and offers a human.

It is honest about being an automated assistant. It never touches the network: tools run in the loop.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from agent_service import metrics
from agent_service.domain import KbHit
from agent_service.escalation_policy import EscalationDecision
from agent_service.model_port import ModelEvent, ModelRequest, ModelResult, TextChunk, ToolCallRequest
from agent_service.texts import DONT_KNOW
from service_kit import observability

NAME = "offline-engine"
LOOKUP_TOOL = "lookup_order_status"
ESCALATE_TOOL = "escalate_to_human"

_ORDER_ID = re.compile(r"\b(ord)[-_ ]?(\d{3,10})\b", re.IGNORECASE)
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
MAX_ANSWER_SENTENCES = 2
MAX_SENTENCE_CHARS = 400


def _stem(word: str) -> str:
    for suffix in ("ing", "es", "s", "ed"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _terms(text: str) -> set[str]:
    return {_stem(word) for word in _WORD.findall(text.lower()) if word not in _STOPWORDS}


def find_order_id(text: str) -> str | None:
    match = _ORDER_ID.search(text)
    return f"{match.group(1).upper()}-{match.group(2)}" if match else None


def _sentences(text: str) -> list[tuple[str, str]]:
    """(sentence, heading above it) for the prose of a chunk. Wrapped lines are joined into paragraphs (a blank
    line, a heading or a list item starts a new one); rules, tables and fragments under four words are skipped."""
    sentences: list[tuple[str, str]] = []
    heading = ""
    paragraph: list[str] = []

    def flush() -> None:
        for raw in _SENTENCE_SPLIT.split(" ".join(paragraph)):
            sentence = _MARKDOWN_NOISE.sub("", raw).strip().strip("*_`").strip()
            if len(sentence.split()) >= 4:
                sentences.append((sentence[:MAX_SENTENCE_CHARS], heading))
        paragraph.clear()

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
            paragraph.append(stripped)
    flush()
    return sentences


def best_sentences(question: str, hits: Sequence[KbHit]) -> list[tuple[int, str]]:
    """The sentences (with the index of their hit) that share most terms with the question, in text order.

    A sentence scores its overlap with the question, plus half the overlap of its section heading (so the
    body of "## Full refund within 30 days" answers "refund?"), minus a penalty for cross-references
    ("See the refund policy...", used only when nothing else matches) and for lower-ranked hits.
    """
    wanted = _terms(question)
    scored: list[tuple[float, int, int, str]] = []
    references: list[tuple[float, int, int, str]] = []
    for hit_index, hit in enumerate(hits[:3]):
        for position, (sentence, heading) in enumerate(_sentences(hit.text)):
            overlap = len(wanted & _terms(sentence))
            if not overlap:
                continue
            score = overlap + 0.5 * len(wanted & _terms(heading)) - 0.25 * hit_index
            if _CROSS_REFERENCE.match(sentence):
                score -= 1.0
                references.append((score, hit_index, position, sentence))
            else:
                scored.append((score, hit_index, position, sentence))
    # Pointers elsewhere ("See the refund policy...") only when nothing says it directly.
    scored = scored or references
    if not scored:
        return []
    scored.sort(key=lambda item: (-item[0], item[1], item[2]))
    top = scored[0][0]
    chosen = [item for item in scored[:MAX_ANSWER_SENTENCES] if item[0] >= top / 2]
    chosen.sort(key=lambda item: (item[1], item[2]))
    return [(hit_index, sentence) for _, hit_index, _, sentence in chosen]


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
            return (
                f"I couldn't find an order {order_id or ''} on your account. Could you check the order number? "
                "It looks like ORD-12345."
            ).replace("  ", " ")
        message = str(error.get("message") or "the order system did not answer")
        return f"I couldn't look that order up right now ({message}). Please try again in a moment."
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

    @property
    def name(self) -> str:
        return NAME

    async def aclose(self) -> None:
        return None

    async def generate(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        started = time.perf_counter()
        with observability.genai_span("chat", NAME, provider="offline"):
            result = self.decide(request)
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
        calls: list[ToolCallRequest] = []
        if order_id and LOOKUP_TOOL in available:
            calls.append(ToolCallRequest("offline_lookup_1", LOOKUP_TOOL, json.dumps({"order_id": order_id})))
        hint = request.escalation_hint
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
        return " ".join(parts)

    def _answer_from_kb(self, request: ModelRequest) -> ModelResult:
        chosen = best_sentences(request.user_message, request.hits) if request.hits else []
        if not chosen:
            return ModelResult(content=DONT_KNOW, model=NAME, knew_answer=False)
        cited = sorted({hit_index for hit_index, _ in chosen})
        body = " ".join(sentence if sentence[-1] in ".!?" else sentence + "." for _, sentence in chosen)
        markers = "".join(f"[{index + 1}]" for index in cited)
        return ModelResult(content=f"According to our help center: {body} {markers}", model=NAME)
