"""The action desk: write actions are proposed, then run once the customer confirms (or dropped). No gRPC here.

States: pending → running → executed | not_executed | unknown; pending → declined (dropped, or superseded by a
newer proposal of the conversation) | expired (not confirmed within the TTL; applied when the action is next
touched). `running` is internal (the proto shows it as PENDING). A claim is one SQLite transaction, so however
many RunActions race, one runs the backend and the others wait for its outcome (or their deadline) and answer
it with ran_now=false. The run itself is shielded from the caller's cancellation: once started it is recorded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tools_service.adapters.sqlite_actions import SqliteActionStore, StoredAction
from tools_service.errors import InvalidArgumentError, UnauthenticatedError
from tools_service.text_checks import check_text

logger = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 600.0
DEFAULT_WRITES_PER_HOUR = 10
POLL_SECONDS = 0.05
# A RunAction without a deadline waits at most this long for a concurrent run's outcome.
MAX_WAIT_SECONDS = 30.0
MAX_NOTE_LENGTH = 300
MAX_ID_LENGTH = 128
_CONFIRMATION = re.compile(r"button|message:[A-Za-z0-9._:-]{1,128}")
DECIDED_STATES = ("executed", "not_executed", "unknown", "declined", "expired")
AWAITING_NOTE = "Nothing has changed yet. Tell the customer what will happen and ask them to confirm."


@dataclass(frozen=True)
class Outcome:
    """What running a write did: executed (result), not_executed or unknown (note)."""

    state: str
    result: dict[str, Any] | None = None
    note: str = ""


WriteExecutor = Callable[[StoredAction, float | None], Awaitable[Outcome]]


def check_confirmation(confirmation: str) -> str:
    if not _CONFIRMATION.fullmatch(confirmation):
        raise InvalidArgumentError("confirmation", 'confirmation must be "button" or "message:<turn_id>".')
    return confirmation


def _check_ids(action_id: str, conversation_id: str) -> None:
    check_text("action_id", action_id, MAX_ID_LENGTH, required=True, multiline=False)
    check_text("conversation_id", conversation_id, MAX_ID_LENGTH, required=True, multiline=False)


def _customer(customer_id: str) -> str:
    if not customer_id:
        raise UnauthenticatedError("a customer caller must send x-customer-id")
    return customer_id


class ActionDesk:
    def __init__(
        self,
        store: SqliteActionStore,
        *,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        writes_per_hour: int = DEFAULT_WRITES_PER_HOUR,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.ttl_seconds = ttl_seconds
        self._writes_per_hour = writes_per_hour
        self._clock = clock
        self._running: set[asyncio.Task[StoredAction]] = set()

    async def propose(
        self,
        *,
        customer_id: str,
        principal_role: str,
        conversation_id: str,
        tool_name: str,
        arguments: dict[str, Any],
        summary: str,
        idempotency_key: str,
    ) -> StoredAction:
        """A PENDING action (or the one recorded earlier under the same idempotency key)."""
        now = self._clock()
        action = StoredAction(
            action_id=f"act-{secrets.token_hex(8)}",
            conversation_id=conversation_id,
            customer_id=_customer(customer_id),
            principal_role=principal_role,
            tool_name=tool_name,
            arguments=arguments,
            summary=summary,
            state="pending",
            idempotency_key=idempotency_key or None,
            create_time=now,
            expire_time=now + self.ttl_seconds,
        )
        recorded, created = await self._store.propose(action, self._writes_per_hour, now)
        if created:
            logger.info("action proposed", extra={"action_id": recorded.action_id, "tool": tool_name})
        return recorded

    def pending_content(self, action: StoredAction) -> dict[str, Any]:
        """The tool message content the model gets for a proposal."""
        expires_in = max(0, int(action.expire_time - self._clock()))
        pending = action.state in ("pending", "running")
        return {
            "pending_action": {
                "action_id": action.action_id,
                "summary": action.summary,
                "expires_in_seconds": expires_in,
            },
            "status": "awaiting_confirmation" if pending else action.state,
            "note": AWAITING_NOTE
            if pending
            else f"This proposal is already {action.state.replace('_', ' ')}.",
        }

    async def run(
        self,
        *,
        action_id: str,
        conversation_id: str,
        customer_id: str,
        principal_role: str,
        confirmation: str,
        deadline_remaining: float | None,
        execute: WriteExecutor,
    ) -> tuple[StoredAction, bool]:
        """Runs the action once: (its state now, whether this call ran it)."""
        _check_ids(action_id, conversation_id)
        check_confirmation(confirmation)
        customer_id = _customer(customer_id)
        action, claimed = await self._store.claim(
            action_id, customer_id, conversation_id, confirmation, principal_role, self._clock()
        )
        if claimed:
            task = asyncio.ensure_future(self._execute(action, execute, deadline_remaining))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            return await asyncio.shield(task), True
        wait = MAX_WAIT_SECONDS if deadline_remaining is None else deadline_remaining - 2 * POLL_SECONDS
        give_up = time.monotonic() + wait
        while action.state == "running" and time.monotonic() < give_up:
            await asyncio.sleep(POLL_SECONDS)
            action = await self._store.get(action_id, customer_id, conversation_id)
        return action, False

    async def _execute(
        self, action: StoredAction, execute: WriteExecutor, deadline_remaining: float | None
    ) -> StoredAction:
        try:
            outcome = await execute(action, deadline_remaining)
        except Exception:
            logger.exception("action %s crashed while running", action.action_id)
            outcome = Outcome(
                "unknown", note="The change failed unexpectedly; check the order before trying again."
            )
        result_json = "" if outcome.result is None else json.dumps(outcome.result, ensure_ascii=False)
        finished = await self._store.finish(action, outcome.state, result_json, outcome.note, self._clock())
        # The audit line of an execution: who proposed and who confirmed, what, and how it ended.
        logger.info(
            "action ran",
            extra={
                "action_id": finished.action_id,
                "tool": finished.tool_name,
                "state": finished.state,
                "proposed_by": finished.principal_role,
                "confirmed_by": finished.decided_by,
                "confirmation": finished.confirmation,
            },
        )
        return finished

    async def drop(
        self,
        *,
        action_id: str,
        conversation_id: str,
        customer_id: str,
        principal_role: str,
        note: str,
        confirmation: str,
    ) -> StoredAction:
        _check_ids(action_id, conversation_id)
        note = check_text("note", note, MAX_NOTE_LENGTH, required=False, multiline=False) or "dropped"
        if confirmation:
            check_confirmation(confirmation)
        return await self._store.drop(
            action_id,
            _customer(customer_id),
            conversation_id,
            note,
            confirmation,
            principal_role,
            self._clock(),
        )

    async def list(self, conversation_id: str, customer_id: str | None) -> list[StoredAction]:
        """`customer_id` None: staff, every customer's actions of the conversation."""
        check_text("conversation_id", conversation_id, MAX_ID_LENGTH, required=True, multiline=False)
        if customer_id is not None:
            _customer(customer_id)
        return await self._store.list(conversation_id, customer_id, self._clock())

    async def recover_interrupted(self) -> int:
        return await self._store.recover_interrupted(self._clock())

    async def close(self) -> None:
        """Lets runs in flight record their outcome."""
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
