"""The offline engine's order requests that change something: which write tool to call with which arguments,
what to ask when the message lacks the order id or a readable address, and the reply from a write's result.

The tools service never runs a write when it is asked: it proposes it and the customer confirms (docs/tools.md).
So a call planned here is a proposal, and a result read here is either that proposal, a refusal ("the order
has shipped"), or — after the customer confirmed — what the backend did.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final

from agent_service.guardrails.normalise import fold
from agent_service.model_port import ToolCallRequest
from agent_service.postal_address import ADDRESS_EXAMPLE, ADDRESS_FORMAT, find_address
from agent_service.write_intents import ADDRESS_TOOL, CANCEL_TOOL, RETURN_TOOL, WriteIntent, detect

_ORDER_ID: Final[re.Pattern[str]] = re.compile(r"\b(ord)[-_ ]?(\d{3,10})\b", re.IGNORECASE)
# What each write does, in the engine's sentences: "I won't cancel ...", "Which order would you like to return?"
_VERB: Final[dict[str, str]] = {
    CANCEL_TOOL: "cancel",
    RETURN_TOOL: "return",
    ADDRESS_TOOL: "change the delivery address of",
}
# "Ship it to <address>" asks for a new delivery address when an address follows.
_DELIVER_TO: Final[re.Pattern[str]] = re.compile(
    r"\b(?:ship|deliver|send|enviar|envie|envoyer|envoyez|liefern|schicken|entregar)\b[^.?!]{0,30}?"
    r"\b(?:to|a|para|an|nach|chez)\b"
)
# The engine's own questions; the customer's next message is read as the answer when it follows one.
ASK_ORDER_ID: Final[str] = "Please send the order number; it looks like ORD-12345."
ASK_ADDRESS: Final[str] = f"please send the new address on one line in this format: {ADDRESS_FORMAT}"
# An answer to one of those questions: at most this many words besides the order id.
MAX_ANSWER_WORDS: Final[int] = 4
MAX_REASON_CHARS: Final[int] = 200
_THE_CUSTOMER: Final[re.Pattern[str]] = re.compile(r"\bthe customer\b", re.IGNORECASE)
_REASON: Final[re.Pattern[str]] = re.compile(
    r"\b(?:because|porque|parce que|weil)\b\s*(.{3,})", re.IGNORECASE | re.DOTALL
)


def find_order_id(text: str) -> str | None:
    match = _ORDER_ID.search(text)
    return f"{match.group(1).upper()}-{match.group(2)}" if match else None


def plan_write(
    user_message: str,
    messages: Sequence[Mapping[str, Any]],
    available: Collection[str],
    return_reason: bool = False,
) -> str | ToolCallRequest | None:
    """For a message that asks to change an order, with that write tool `available`: the call to make, or the
    reply to give instead (a question for what is missing, or the acknowledgement of a negated request).
    None when the message asks for no write (or for one not available). `return_reason`: start_return
    declares a `reason` argument (filled from "because ..." when the message gives one)."""
    previous = _previous(messages, "user")
    intent = detect(user_message)
    if intent is None and _DELIVER_TO.search(fold(user_message)) and find_address(user_message) is not None:
        intent = WriteIntent(ADDRESS_TOOL)  # "please ship ORD-67890 to 12 Rue de Rivoli, 75001 Paris, FR"
    continued = False
    if intent is None and previous is not None:
        intent = _answered_intent(user_message, previous, _previous(messages, "assistant") or "")
        continued = intent is not None
    if intent is None or intent.tool not in available:
        return None
    order_id = find_order_id(user_message) or _earlier_order_id(messages)
    verb = _VERB[intent.tool]
    if intent.negated:
        which = f"order {order_id}" if order_id else "your order"
        target = "anything" if intent.tool == CANCEL_TOOL and not order_id else which
        return f"Understood: I won't {verb} {target}. Nothing has been changed."
    if order_id is None:
        return f"Which order would you like me to {verb}? {ASK_ORDER_ID}"
    arguments: dict[str, Any] = {"order_id": order_id}
    if intent.tool == ADDRESS_TOOL:
        address = find_address(user_message, exclude=order_id)
        if address is None and continued and previous is not None:
            address = find_address(previous, exclude=order_id)
        if address is None:
            return (
                f"To change the delivery address of order {order_id}, {ASK_ADDRESS} - for example: "
                f"{ADDRESS_EXAMPLE}."
            )
        arguments["address"] = address.as_arguments()
    elif intent.tool == RETURN_TOOL and return_reason:
        reason = _reason(user_message)
        if reason:
            arguments["reason"] = reason
    return ToolCallRequest(f"offline_{intent.tool}_1", intent.tool, json.dumps(arguments))


def write_reply(tool: str, result: Mapping[str, Any], order_id: str | None) -> str:
    """The reply from a write tool's result: the proposal, the refusal, or what was done."""
    oid = str(result.get("order_id") or order_id or "")
    which = f"order {oid}" if oid else "your order"
    verb = _VERB.get(tool, "change")
    error = result.get("error")
    if isinstance(error, Mapping):
        code = str(error.get("code", "")).lower()
        message = str(error.get("message") or "").strip()
        if "not_found" in code:
            return not_found_reply(oid or None)
        if code == "not_allowed":
            # The tools service explains the rule to the model ("... the customer can return it once delivered").
            explanation = (
                _THE_CUSTOMER.sub("you", message).rstrip(".") if message else "the order does not allow it"
            )
            return f"Sorry, I can't {verb} {which}. {explanation[:1].upper()}{explanation[1:]}."
        if code == "invalid_arguments" and tool == ADDRESS_TOOL:
            return f"I couldn't use that address ({message}). Please {ASK_ADDRESS} - for example: {ADDRESS_EXAMPLE}."
        # Other tool errors are written for the model ("offer the customer a human"), not quoted to the customer.
        if code == "rate_limited":
            return "I can't make more changes right now. Please try again in a little while."
        return f"I couldn't {verb} {which} right now, and nothing has been changed. Please try again in a moment."
    pending = result.get("pending_action")
    if isinstance(pending, Mapping):
        summary = str(pending.get("summary") or f"{verb.capitalize()} {which}").rstrip(".")
        return f'{summary}. Shall I go ahead? Reply "yes" to confirm or "no" to keep things as they are.'
    if tool == CANCEL_TOOL:
        refund = result.get("refund")
        return f"Done: {which} is cancelled." + (f" Refund: {refund}." if refund else "")
    if tool == RETURN_TOOL:
        parts = [f"I've started a return for {which}."]
        if result.get("return_id"):
            parts.append(f"Your return number is {result['return_id']}.")
        if result.get("instructions"):
            parts.append(str(result["instructions"]))
        return " ".join(parts)
    if tool == ADDRESS_TOOL and result.get("address"):
        return f"Done: {which} will be delivered to {result['address']}."
    return f"Done: {which} has been updated."


def not_found_reply(order_id: str | None) -> str:
    return (
        f"I couldn't find an order {order_id or ''} on your account. Could you check the order number? "
        "It looks like ORD-12345."
    ).replace("  ", " ")


def _answered_intent(message: str, previous: str, asked: str) -> WriteIntent | None:
    """The intent of the previous message when this one answers the engine's question about it: the order
    number ("ORD-67890", "it's ORD-67890") or the address the engine asked for."""
    intent = detect(previous)
    if intent is None or intent.negated:
        return None
    order_id = find_order_id(message)
    if ASK_ORDER_ID in asked and order_id is not None:
        rest = _ORDER_ID.sub(" ", message).split()
        return intent if len(rest) <= MAX_ANSWER_WORDS else None
    if ASK_ADDRESS in asked and intent.tool == ADDRESS_TOOL and find_address(message) is not None:
        return intent
    return None


def _previous(messages: Sequence[Mapping[str, Any]], role: str) -> str | None:
    """The latest earlier message of that role (the customer's current message, the last one, excluded)."""
    earlier = list(messages)
    if earlier and earlier[-1].get("role") == "user":
        earlier.pop()
    for message in reversed(earlier):
        if message.get("role") == role and isinstance(message.get("content"), str):
            return str(message["content"])
    return None


def _earlier_order_id(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The order id the customer mentioned most recently in their earlier messages (not the assistant's: its
    replies quote the example id ORD-12345)."""
    earlier = list(messages)
    if earlier and earlier[-1].get("role") == "user":
        earlier.pop()
    for message in reversed(earlier):
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, str):
            found = find_order_id(content)
            if found is not None:
                return found
    return None


def _reason(message: str) -> str:
    match = _REASON.search(message)
    if match is None:
        return ""
    reason = " ".join(_ORDER_ID.sub("", match.group(1)).split()).strip(" .!")
    return reason[:MAX_REASON_CHARS]
