"""Typed failures of the agent's domain; the servicer maps each to one gRPC status."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every failure the servicer knows how to report."""


class InvalidInputError(AgentError):
    """A request field is missing or unacceptable. → INVALID_ARGUMENT naming the field."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


class ConversationBusyError(AgentError):
    """Another turn of the same conversation is in flight. → ABORTED (the client retries after it ends)."""


class OverloadedError(AgentError):
    """More turns in flight than MAX_CONCURRENT_TURNS, or a quota used up (the subclasses). → RESOURCE_EXHAUSTED."""


class RateLimitedError(OverloadedError):
    """The customer sent more turns than their per-customer rate allows. → RESOURCE_EXHAUSTED."""


class ConversationFullError(OverloadedError):
    """The conversation holds MAX_CONVERSATION_MESSAGES stored turns; it takes no more. → RESOURCE_EXHAUSTED
    (the caller starts a new conversation)."""


class TurnDeadlineError(AgentError):
    """The turn ran past TURN_DEADLINE_SECONDS and was stopped (nothing stored). → DEADLINE_EXCEEDED."""


class StoreUnavailableError(AgentError):
    """The conversation store (Redis, the SQLite file) could not be reached or timed out. → UNAVAILABLE."""


class ShuttingDownError(AgentError):
    """This replica is draining; the caller reconnects (to any replica) from its last offset. → UNAVAILABLE."""


class ConversationNotFoundError(AgentError):
    """No such conversation. → NOT_FOUND."""


class NotYourConversationError(AgentError):
    """The conversation belongs to another customer. → PERMISSION_DENIED."""


class ModelUnavailableError(AgentError):
    """The configured model failed after its retries (timeout, 429, 5xx, malformed reply)."""


class ModelRequestError(ModelUnavailableError):
    """The model's server refused the request's shape (400/422): the model is up, the request was wrong.
    Answered with the fallback like any failure, but never retried and never counted by the breaker."""


class ModelOutOfTimeError(ModelUnavailableError):
    """The turn had no time left for (another attempt of) the model call: the caller's deadline, not the
    model, ran out. Answered with the fallback; not counted by the breaker."""


class DuplicateTurnError(AgentError):
    """A turn with this turn_id is already stored (a concurrent retry won the race)."""
