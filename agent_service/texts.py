"""Everything the agent itself says to the customer, in one place (the model's words are the model's).

Plain strings and small formatters of plain values: no imports from the rest of the agent, so any module
(the turn, the guardrails, the breaker, the offline engine, the policy) can use them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

# --- the turn ------------------------------------------------------------------------------------------------

DONT_KNOW: Final[str] = (
    "I'm an automated assistant, and I couldn't find an answer to that in our help center, so I'd rather not "
    "guess. If you like, I can pass your question to a member of our support team."
)
HELPDESK_UNREACHABLE: Final[str] = (
    "I'm an automated assistant and I wanted to hand this to a member of our support team, but the "
    "helpdesk is not reachable right now. Please try again in a few minutes."
)
TURN_CAP_HANDED_OVER: Final[str] = (
    "This conversation has reached the length limit for our automated assistant, so I'm handing it "
    "to a person who can help you further."
)
TURN_CAP_NO_HELPDESK: Final[str] = (
    "This conversation has reached the length limit for our automated assistant. Please start a "
    "new conversation, or ask there for a member of our support team."
)
# Appended to answers of the backup engine while the configured model is unavailable.
FALLBACK_NOTE: Final[str] = "\n\n(Our assistant is running in a limited backup mode right now.)"
# What an escalation outcome tells the customer when the rules file configures no message for it.
DEFAULT_ESCALATION_MESSAGE: Final[str] = (
    "I've passed this to a member of our support team, who will follow up with you here."
)


def ticket_sentence(ticket_id: str) -> str:
    return f" Your ticket number is {ticket_id}."


# What the transcript keeps instead of a message the input guardrail blocked (never stored verbatim, never shown
# to the model again), and the tail of a message too long to store whole. `digest` lets a retry be recognised.
WITHHELD_MESSAGE_PREFIX: Final[str] = "[message withheld by the input guardrail"


def withheld_message(rules: str, digest: str) -> str:
    return f"{WITHHELD_MESSAGE_PREFIX} ({rules}); sha256:{digest}]"


def truncated_message(head: str, total_chars: int, digest: str) -> str:
    return f"{head} [... message truncated, {total_chars} characters in all; sha256:{digest}]"


# --- a conversation a human owns -------------------------------------------------------------------------------


def passed_to_assignee(assignee: str, ticket_id: str) -> str:
    return (
        f"{assignee or 'A member of our support team'} is handling your conversation "
        f"(ticket {ticket_id}). I've passed your message on to them."
    )


def waiting_for_human(ticket_id: str, estimated_wait: str) -> str:
    wait = f" Expected wait: {estimated_wait}." if estimated_wait else ""
    return (
        f"Your conversation is waiting for a member of our support team (ticket {ticket_id}). "
        f"I've added your message to the ticket.{wait}"
    )


def message_not_passed_on(ticket_id: str) -> str:
    return (
        f"Your conversation is with our support team (ticket {ticket_id}), but I couldn't pass "
        "this message on just now. Please send it again in a moment."
    )


def handback_note(
    assignee: str, ticket_id: str, resolution_note: str, human_replies: Sequence[tuple[str, str]]
) -> str:
    """The system note recorded when a human resolves the ticket and the bot takes the conversation back."""
    who = assignee or "a human agent"
    note = f"Handed back to the bot by {who} (ticket {ticket_id})"
    note += f": {resolution_note}" if resolution_note else "."
    if human_replies:
        replies = " | ".join(f"{name or 'agent'}: {text}" for name, text in human_replies[-3:])
        note += f" Human replies to the customer: {replies}"
    return note[:2000]


# --- the guardrails' safe replies ------------------------------------------------------------------------------

SAFE_REPLY_INJECTION: Final[str] = (
    "I can help with questions about your orders, our products and our policies, but I can't follow "
    "instructions that change how I work. What can I help you with today?"
)
SAFE_REPLY_SYSTEM_PROMPT: Final[str] = (
    "I'm not able to share how I'm set up, but I'm happy to help with your orders, returns, shipping or "
    "account questions. What do you need?"
)
SAFE_REPLY_OVERSIZE: Final[str] = (
    "That message is longer than I can handle in one go (the limit is {max_chars} characters). Could you "
    "shorten it, or send the key details in a few smaller messages?"
)
SAFE_REPLY_LEAK: Final[str] = (
    "Sorry, I can't share that. I'm here to help with your orders, returns, shipping and account questions "
    "- what can I help you with?"
)


# --- write actions (cancel, return, address change): proposed, then run only once the customer confirms --------

ACTION_DECLINED: Final[str] = (
    "Okay, I've left everything as it is: nothing has changed. Is there anything else I can help with?"
)
ACTION_EXPIRED: Final[str] = (
    "That request expired before it was confirmed, so nothing has changed. If you still want it, just ask "
    "again and I'll set it up for you to confirm."
)
ACTION_NOT_RUN_UNAVAILABLE: Final[str] = (
    "I couldn't reach our order system just now, so I can't tell whether that went through. Please reply "
    '"yes" again in a moment: it will only ever be done once.'
)


def action_proposal(summary: str) -> str:
    """The reply of a turn that proposed a write action: what will happen, and how to confirm."""
    return f'{summary.rstrip(". ")}. Shall I go ahead? Reply "yes" to confirm or "no" to keep things as they are.'


def action_done(tool: str, summary: str, result: Mapping[str, object]) -> str:
    """What an executed action did, from its result (the three built-in write tools; else its summary)."""
    order = f"order {result['order_id']}" if result.get("order_id") else "your order"
    if tool == "cancel_order":
        refund = f" Refund: {result['refund']}." if result.get("refund") else ""
        return f"Done: {order} is cancelled.{refund}"
    if tool == "start_return":
        parts = [f"I've started a return for {order}."]
        if result.get("return_id"):
            parts.append(f"Your return number is {result['return_id']}.")
        if result.get("instructions"):
            parts.append(str(result["instructions"]))
        return " ".join(parts)
    if tool == "change_delivery_address" and result.get("address"):
        return f"Done: {order} will be delivered to {result['address']}."
    return f"Done: {summary.rstrip('. ') or 'your request'}."


def action_not_executed(note: str) -> str:
    reason = note.rstrip(". ") or "the order system refused it"
    return f"I couldn't do that after all: {reason}. Nothing has changed."


def action_unknown(note: str) -> str:
    reason = note.rstrip(". ") or "the order system did not answer in time"
    return (
        f"I'm not certain that went through: {reason}. I won't try it again on my own; a member of our team "
        "can check it for you."
    )


def action_no_longer_open(note: str) -> str:
    reason = f" ({note.rstrip('. ')})" if note else ""
    return f"That request is no longer open{reason}, so nothing has changed. Just ask if you'd like to set it up again."


# What the transcript records for a ConfirmAction / DeclineAction call (the backend's button).
def button_message(confirm: bool, action_id: str) -> str:
    return f"[{'confirmed' if confirm else 'declined'} with the button: {action_id}]"
