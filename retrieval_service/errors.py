"""Typed errors of the retrieval domain; the servicer maps each to one gRPC status."""

from __future__ import annotations


class RetrievalError(Exception):
    """Base class of everything the retrieval domain raises on purpose."""


class InvalidArgumentError(RetrievalError):
    """A request field is malformed or out of range. `field` names it (proto field path)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class LimitExceededError(RetrievalError):
    """A request is over a configured limit that is not a property of one field."""


class EmbeddingMismatchError(RetrievalError):
    """The collection on disk / on the Chroma server was built with another embedding function or dimension."""


class StoreUnavailableError(RetrievalError):
    """The vector store (Chroma server) cannot be reached."""
