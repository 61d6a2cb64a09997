"""How a bot turn ends once the model has had its rounds: a pure function of what happened in the turn.

The model's own judgement comes first (it answered, or it escalated). The deterministic backstops follow in
order: a policy trigger on the customer's message, tools that kept failing, rounds that ran out without an
answer; and when there was nothing to answer from, the honest don't-know reply.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TurnOutcome(enum.Enum):
    # The model's reply stands (it may already have escalated itself).
    ANSWER = "answer"
    # Nothing relevant was retrieved and no tool helped, or the reply was empty: say we do not know.
    DONT_KNOW = "dont_know"
    # The agent escalates itself and appends the hand-off message to the reply.
    ESCALATE_POLICY_TRIGGER = "escalate_policy_trigger"
    ESCALATE_TOOL_FAILURES = "escalate_tool_failures"
    # The agent escalates itself and the hand-off message replaces the (missing) reply.
    ESCALATE_LOOP_LIMIT = "escalate_loop_limit"


@dataclass(frozen=True)
class TurnFacts:
    answered: bool  # the model gave a final reply within the allowed rounds
    model_escalated: bool  # the model's escalate_to_human call opened a ticket
    policy_triggered: bool  # the escalation policy fired on the customer's message
    tools_kept_failing: bool  # see tool_results.tools_kept_failing
    knowledge_gap: bool  # nothing relevant (and not quarantined) was retrieved
    used_tools: bool
    reply_empty: bool


def decide_outcome(facts: TurnFacts) -> TurnOutcome:
    if not facts.answered:
        return TurnOutcome.ESCALATE_LOOP_LIMIT
    if facts.model_escalated:
        return TurnOutcome.ANSWER
    if facts.policy_triggered:
        return TurnOutcome.ESCALATE_POLICY_TRIGGER
    if facts.tools_kept_failing:
        return TurnOutcome.ESCALATE_TOOL_FAILURES
    if facts.reply_empty or (facts.knowledge_gap and not facts.used_tools):
        return TurnOutcome.DONT_KNOW
    return TurnOutcome.ANSWER
