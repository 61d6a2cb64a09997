"""The conversation store port: history, retry-safe turns and the per-conversation in-flight lock.

Implementations must make these guarantees (the SQLite adapter is the reference; a Redis or Postgres
adapter for replicated agents implements the same seven methods):

* `append_turn` is atomic: the whole `TurnResult` (user message, tool calls and results, reply, escalation,
  sources, guardrail flags) is stored in one step or not at all. A second turn with the same
  (conversation_id, turn_id) raises `errors.DuplicateTurnError`; system notes (hand-backs) are appended the same way.
* `get_turn` returns a stored turn by client turn id, so a retried request is answered from the store.
* `acquire_lock` / `release_lock` are a lease: at most one holder per conversation until it releases or the
  lease expires (a crashed replica cannot block a conversation forever). Must hold across processes.
  `renew_lock` extends a live lease for its holder only; the turn renews it while it runs, so a turn slower than
  one lease still keeps a second turn out.
* A store that cannot be reached (or times out) raises `errors.StoreUnavailableError`, never a driver error.
* `load` returns the conversation's turns oldest first and the customer it belongs to ("" for none yet);
  an unknown conversation is an empty `Conversation`, not an error.
"""

from __future__ import annotations

from typing import Protocol

from agent_service.domain import Conversation, TurnResult


class ConversationStore(Protocol):
    async def load(self, conversation_id: str) -> Conversation:
        """The conversation so far (empty when unknown)."""
        ...

    async def get_turn(self, conversation_id: str, turn_id: str) -> TurnResult | None:
        """A stored turn by its id, for replaying a retried request."""
        ...

    async def append_turn(self, turn: TurnResult, customer_id: str = "", release_holder: str = "") -> None:
        """Stores one turn atomically; binds the conversation to `customer_id` on its first turn. With
        `release_holder`, releases that holder's lock on the conversation in the same step (the end of a turn:
        one store operation instead of two); a duplicate turn releases nothing."""
        ...

    async def acquire_lock(self, conversation_id: str, holder: str, lease_seconds: float) -> bool:
        """Takes the conversation's in-flight lock; False while another holder's lease is live."""
        ...

    async def renew_lock(self, conversation_id: str, holder: str, lease_seconds: float) -> bool:
        """Extends `holder`'s live lease to `lease_seconds` from now; False if `holder` no longer has it."""
        ...

    async def release_lock(self, conversation_id: str, holder: str) -> None:
        """Releases the lock if `holder` still has it."""
        ...

    async def close(self) -> None: ...
