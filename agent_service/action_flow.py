"""What a turn does about write actions (cancel an order, start a return, change a delivery address).

A write tool the model (or the offline engine) calls is only *proposed* by the tools service: the turn ends
with `texts.action_proposal` and the pending action. It runs only when the customer confirms it:

* the conversation's next message (`answer`): a confirmation (`action_intent`) → RunAction with confirmation
  "message:<turn_id>", the reply from its outcome; a decline → DropAction("declined by the customer") and a
  short reply; anything else → DropAction("the customer moved on") and the turn goes on as a normal turn;
* or the backend's button (`press`, ConfirmAction / DeclineAction): confirmation "button".

Running is idempotent on the action id in the tools service (a replayed turn or a retried RunAction runs
nothing twice). A write call whose tool the customer's current message refuses ("don't cancel it") is
answered with a `not_requested` tool error without asking the tools service (`refusal`).

Which action is pending comes from the stored turns: the action of the latest turn that carries one, while its
state is "pending" (the tools service keeps at most one pending action per conversation).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from agent_service import texts, write_intents
from agent_service.action_intent import ActionIntent, classify
from agent_service.domain import ActionInfo, TurnResult
from agent_service.errors import AgentError
from agent_service.turn_contract import (
    ToolOutcome,
    Tools,
    ToolsUnavailableError,
    TurnRequest,
    tool_error_json,
)

logger = logging.getLogger(__name__)
audit = logging.getLogger("agent_service.audit")

DECLINED_NOTE = "declined by the customer"
MOVED_ON_NOTE = "the customer moved on"
BUTTON = "button"
NOT_REQUESTED_MESSAGE = (
    "The customer's message asks NOT to do this, so nothing was proposed or changed. Do not call this tool "
    "again in this turn; confirm to the customer that nothing will change."
)


class ActionNotFoundError(AgentError):
    """No such action in the customer's conversation (unknown, or another customer's). → NOT_FOUND."""


class ActionNotPendingError(AgentError):
    """The action was already run, declined, superseded or expired. → FAILED_PRECONDITION."""


@dataclass(frozen=True)
class Settled:
    """What became of the pending action; `reply` is None when the turn goes on as a normal turn."""

    action: ActionInfo
    reply: str | None


def latest_action(turns: Sequence[TurnResult], action_id: str = "") -> ActionInfo | None:
    """The newest recorded state of the conversation's latest action (or of `action_id`)."""
    for turn in reversed(turns):
        if turn.action is not None and (not action_id or turn.action.action_id == action_id):
            return turn.action
    return None


def pending_action(turns: Sequence[TurnResult]) -> ActionInfo | None:
    latest = latest_action(turns)
    return latest if latest is not None and latest.is_pending else None


def proposed_action(outcomes: Iterable[ToolOutcome]) -> ActionInfo | None:
    """The action a round of tool calls proposed (the last one: a newer proposal supersedes older ones)."""
    proposals = [outcome.pending_action for outcome in outcomes if outcome.pending_action is not None]
    return proposals[-1] if proposals else None


def refusal(message: str, tool: str) -> ToolOutcome | None:
    """The tool error for a write call the customer's message refuses ("don't cancel it"); None otherwise."""
    if tool not in write_intents.WRITE_TOOLS or not write_intents.negates(message, tool):
        return None
    return ToolOutcome(
        tool_error_json("not_requested", NOT_REQUESTED_MESSAGE, retryable=False), is_error=True
    )


def outcome_reply(action: ActionInfo) -> str:
    """What the customer is told once a confirmed action was run (or could not be)."""
    if action.state == "executed":
        try:
            result: Any = json.loads(action.result_json or "{}")
        except ValueError:
            result = {}
        return texts.action_done(
            action.tool_name, action.summary, result if isinstance(result, Mapping) else {}
        )
    if action.state == "not_executed":
        return texts.action_not_executed(action.note)
    if action.state == "unknown":
        return texts.action_unknown(action.note)
    if action.state == "expired":
        return texts.ACTION_EXPIRED
    return texts.action_no_longer_open(action.note)


def audit_action(log_ids: Mapping[str, str], action: ActionInfo) -> None:
    audit.info(
        "write action",
        extra={
            **log_ids,
            "event": "write_action",
            "action_id": action.action_id,
            "tool": action.tool_name,
            "state": action.state,
            "confirmation": action.confirmation,
        },
    )


class ActionFlow:
    """Confirms, declines or drops the conversation's pending action through the tools service."""

    def __init__(self, tools: Tools) -> None:
        self._tools = tools

    async def answer(self, pending: ActionInfo, request: TurnRequest, turn_id: str) -> Settled:
        """The customer's message while `pending` waits for an answer."""
        confirmation = f"message:{turn_id}"
        intent = classify(request.message, pending.tool_name, pending.arguments_json)
        if intent is ActionIntent.CONFIRM:
            return await self._run(pending, request, confirmation)
        if intent is ActionIntent.DECLINE:
            return await self._drop(pending, request, DECLINED_NOTE, confirmation, texts.ACTION_DECLINED)
        return await self._drop(pending, request, MOVED_ON_NOTE, confirmation, None)

    async def press(self, turns: Sequence[TurnResult], request: TurnRequest) -> Settled:
        """ConfirmAction / DeclineAction: the action must be the conversation's pending one."""
        decision = request.decision
        assert decision is not None, "press is for ConfirmAction / DeclineAction turns"
        pending = pending_action(turns)
        if pending is None or pending.action_id != decision.action_id:
            if latest_action(turns, decision.action_id) is None:
                raise ActionNotFoundError(f"no action {decision.action_id!r} in this conversation")
            raise ActionNotPendingError(
                f"action {decision.action_id!r} is no longer pending (it was run, declined or replaced)"
            )
        if decision.confirm:
            return await self._run(pending, request, BUTTON)
        return await self._drop(pending, request, DECLINED_NOTE, BUTTON, texts.ACTION_DECLINED)

    async def _run(self, pending: ActionInfo, request: TurnRequest, confirmation: str) -> Settled:
        try:
            run = await self._tools.run_action(
                pending.action_id,
                conversation_id=request.conversation_id,
                confirmation=confirmation,
                customer_id=request.customer_id,
            )
        except ToolsUnavailableError as error:
            if error.code != "NOT_FOUND":
                # Still pending as far as we know: a new "yes" retries, and RunAction never runs it twice.
                logger.warning(
                    "could not run the confirmed action",
                    extra={"action_id": pending.action_id, "grpc_code": error.code, "details": error.details},
                )
                return Settled(pending, texts.ACTION_NOT_RUN_UNAVAILABLE)
            gone = self._closed(pending, "the order system no longer knows this request", confirmation)
            return Settled(gone, outcome_reply(gone))
        return Settled(run.action, outcome_reply(run.action))

    async def _drop(
        self, pending: ActionInfo, request: TurnRequest, note: str, confirmation: str, reply: str | None
    ) -> Settled:
        try:
            action = await self._tools.drop_action(
                pending.action_id,
                conversation_id=request.conversation_id,
                note=note,
                confirmation=confirmation,
                customer_id=request.customer_id,
            )
        except ToolsUnavailableError as error:
            # Recorded as dropped here, so no later message can run it; the tools service lets it expire.
            logger.warning(
                "could not drop the pending action; it will expire",
                extra={"action_id": pending.action_id, "grpc_code": error.code},
            )
            action = self._closed(pending, note, confirmation)
        if action.state == "executed" and reply is not None:
            reply = outcome_reply(action)  # it ran before the decline arrived: never claim nothing changed
        return Settled(action, reply)

    @staticmethod
    def _closed(pending: ActionInfo, note: str, confirmation: str) -> ActionInfo:
        return replace(
            pending, state="declined", note=note, confirmation=confirmation, decide_time=time.time()
        )
