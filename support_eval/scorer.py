"""Scores recorded conversations against a suite's expectations. Pure: no I/O, no clock, no gRPC.

Definitions (docs/eval.md has the long form):
- Retrieval, over turns with `cite`: the response's sources, in the order returned, reduced to distinct doc
  ids, give each document a rank. hit@k = share of turns where an expected document has rank <= k; MRR = mean
  of 1/rank of the best-ranked expected document (0 when none is cited).
- Tools, over turns with `tool`: predicted = the set of tool names called, expected = {tool} or {} for
  `none`; precision = TP/(TP+FP), recall = TP/(TP+FN), summed over turns. Calls of the escalation tool are
  left to the escalation metrics unless the turn names that tool in `tool` or `not_tool`.
  Argument accuracy, over turns with `tool_args`: share where some call of the expected tool has every
  expected argument value (equal, or equal as text).
- Escalation, over turns with `escalate`: predicted = the response carries an escalation; precision and
  recall as above. Priority (reason) accuracy, over turns with `priority` (`reason`): escalated with exactly
  that priority (reason code).
- Abstention accuracy, over turns with `abstain`: the reply matches an abstention pattern iff expected.
- Text pass rate, over turns with `contains`/`not_contains`: every listed text present / absent
  (case-insensitive). State accuracy, over turns with `state`.
- Action accuracy ("actions"), over turns with `pending_action`, `executed`, `declined` or `no_write`: the
  response's action (ChatResponse.action) is that tool's action in that state (pending / executed / declined);
  `no_write`: the response carries no action that was proposed or ran (pending, executed or unknown).
- Turn pass rate: turns whose every expectation held (an RPC error fails every expectation of its turn).
  Expectation pass rate: single checks that held. Error rate: turns whose RPC failed.
- Latency p50/p95 (ms, nearest-rank) over every turn.

Each expectation kind has one checker, registered in `_CHECKERS` under the `Expect` fields it reads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from support_eval.records import ConversationRecord, TurnRecord
from support_eval.suite import METRICS, NO_TOOL, Expect, Suite


@dataclass(frozen=True)
class Metric:
    name: str
    # None when no turn of the suite exercises the metric.
    value: float | None
    numerator: float = 0.0
    denominator: int = 0


@dataclass(frozen=True)
class Failure:
    check: str
    detail: str


@dataclass(frozen=True)
class TurnOutcome:
    conversation: str
    turn_index: int
    checks: int
    failures: tuple[Failure, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class ThresholdResult:
    metric: str
    threshold: float
    value: float | None
    # True: the value must be at least the threshold; False: at most.
    minimum: bool

    @property
    def met(self) -> bool:
        if self.value is None:
            return False
        return self.value >= self.threshold if self.minimum else self.value <= self.threshold


@dataclass(frozen=True)
class Scorecard:
    metrics: Mapping[str, Metric]
    outcomes: tuple[TurnOutcome, ...] = field(default_factory=tuple)

    def value(self, name: str) -> float | None:
        return self.metrics[name].value

    @property
    def failed_turns(self) -> tuple[TurnOutcome, ...]:
        return tuple(outcome for outcome in self.outcomes if not outcome.passed)


@dataclass
class _Counts:
    cite_turns: int = 0
    hits: int = 0
    reciprocal_ranks: float = 0.0
    tool_tp: int = 0
    tool_fp: int = 0
    tool_fn: int = 0
    arg_turns: int = 0
    arg_ok: int = 0
    esc_tp: int = 0
    esc_fp: int = 0
    esc_fn: int = 0
    priority_turns: int = 0
    priority_ok: int = 0
    reason_turns: int = 0
    reason_ok: int = 0
    abstain_turns: int = 0
    abstain_ok: int = 0
    text_turns: int = 0
    text_ok: int = 0
    state_turns: int = 0
    state_ok: int = 0
    action_turns: int = 0
    action_ok: int = 0
    checks: int = 0
    checks_ok: int = 0
    turns: int = 0
    turns_ok: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)


def score(suite: Suite, records: Sequence[ConversationRecord]) -> Scorecard:
    """Every turn of `records` against the expectations of the matching conversation in `suite`."""
    specs = {conversation.id: conversation for conversation in suite.conversations}
    patterns = [re.compile(pattern, re.IGNORECASE) for pattern in suite.abstain_patterns]
    context = _Context(suite, patterns)
    counts = _Counts()
    outcomes: list[TurnOutcome] = []
    for record in records:
        spec = specs.get(record.spec_id)
        if spec is None:
            raise KeyError(f"record for unknown conversation {record.spec_id!r}")
        for index, turn in enumerate(record.turns):
            expect = spec.turns[index].expect if index < len(spec.turns) else Expect()
            outcomes.append(_score_turn(record.spec_id, index, turn, expect, context, counts))
    return Scorecard(metrics=_metrics(counts), outcomes=tuple(outcomes))


def check_thresholds(scorecard: Scorecard, thresholds: Mapping[str, float]) -> list[ThresholdResult]:
    """One result per configured threshold; a metric no turn exercised misses its threshold."""
    results = []
    for name, threshold in thresholds.items():
        metric = scorecard.metrics.get(name)
        results.append(
            ThresholdResult(
                name, threshold, None if metric is None else metric.value, METRICS.get(name, True)
            )
        )
    return results


def ranked_doc_ids(turn: TurnRecord) -> list[str]:
    """Distinct doc ids of the response's sources, in the order returned."""
    ranked: list[str] = []
    for source in turn.sources:
        if source.doc_id not in ranked:
            ranked.append(source.doc_id)
    return ranked


def abstained(reply: str, patterns: Iterable[re.Pattern[str]]) -> bool:
    return any(pattern.search(reply) for pattern in patterns)


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least pct% of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


class _Check(NamedTuple):
    """One expectation of one turn: its name, whether it held, and what to print when it did not."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class _Context:
    """What a checker needs besides the turn and its expectations: the suite's settings."""

    suite: Suite
    patterns: Sequence[re.Pattern[str]]


# A checker adds its turn to the metric counters and returns the checks it made, in report order.
_Checker = Callable[[TurnRecord, Expect, _Context, _Counts], list[_Check]]


def _check_cite(turn: TurnRecord, expect: Expect, context: _Context, counts: _Counts) -> list[_Check]:
    k = context.suite.k
    counts.cite_turns += 1
    ranked = ranked_doc_ids(turn)
    rank = next((position + 1 for position, doc in enumerate(ranked) if doc in expect.cite), 0)
    hit = 0 < rank <= k
    counts.hits += hit
    counts.reciprocal_ranks += 1.0 / rank if rank else 0.0
    where = f"rank {rank}" if rank else "not cited"
    detail = f"expected one of {list(expect.cite)} in the top {k} sources; got {ranked} ({where})"
    return [_Check("cite", hit, detail)]


def _check_tool(turn: TurnRecord, expect: Expect, context: _Context, counts: _Counts) -> list[_Check]:
    names = [call.name for call in turn.tool_calls]
    named = {expect.tool, *expect.not_tool}
    escalation_tool = context.suite.escalation_tool
    predicted = {name for name in names if name != escalation_tool or name in named}
    expected = set() if expect.tool == NO_TOOL or expect.tool is None else {expect.tool}
    counts.tool_tp += len(predicted & expected)
    counts.tool_fp += len(predicted - expected)
    counts.tool_fn += len(expected - predicted)
    if expect.tool == NO_TOOL:
        return [_Check("tool", not predicted, f"expected no tool call; got {sorted(predicted)}")]
    return [_Check("tool", expect.tool in predicted, f"expected a call of {expect.tool}; got {names}")]


def _check_tool_args(turn: TurnRecord, expect: Expect, context: _Context, counts: _Counts) -> list[_Check]:
    if expect.tool is None:
        return []
    counts.arg_turns += 1
    calls = [call for call in turn.tool_calls if call.name == expect.tool]
    ok = any(_args_match(call.arguments, expect.tool_args) for call in calls)
    counts.arg_ok += ok
    arguments = [call.arguments_json for call in calls]
    detail = f"expected {expect.tool} with {dict(expect.tool_args)}; got {arguments}"
    return [_Check("tool_args", ok, detail)]


def _check_not_tool(turn: TurnRecord, expect: Expect, context: _Context, counts: _Counts) -> list[_Check]:
    forbidden = [call.name for call in turn.tool_calls if call.name in expect.not_tool]
    detail = f"must not call {list(expect.not_tool)}; called {forbidden}"
    return [_Check("not_tool", not forbidden, detail)]


def _check_escalate(turn: TurnRecord, expect: Expect, context: _Context, counts: _Counts) -> list[_Check]:
    escalated = turn.escalation is not None
    counts.esc_tp += escalated and expect.escalate is True
    counts.esc_fp += escalated and expect.escalate is False
    counts.esc_fn += (not escalated) and expect.escalate is True
    detail = f"expected escalate={expect.escalate}; got {_describe_escalation(turn)}"
    return [_Check("escalate", escalated == expect.escalate, detail)]


def _check_priority(turn: TurnRecord, expect: Expect, context: _Context, counts: _Counts) -> list[_Check]:
    counts.priority_turns += 1
    ok = turn.escalation is not None and turn.escalation.priority == expect.priority
    counts.priority_ok += ok
    detail = f"expected priority {expect.priority}; got {_describe_escalation(turn)}"
    return [_Check("priority", ok, detail)]


def _check_reason(turn: TurnRecord, expect: Expect, context: _Context, counts: _Counts) -> list[_Check]:
    counts.reason_turns += 1
    ok = turn.escalation is not None and turn.escalation.reason == expect.reason
    counts.reason_ok += ok
    detail = f"expected reason {expect.reason}; got {_describe_escalation(turn)}"
    return [_Check("reason", ok, detail)]


def _check_abstain(turn: TurnRecord, expect: Expect, context: _Context, counts: _Counts) -> list[_Check]:
    counts.abstain_turns += 1
    did = abstained(turn.reply, context.patterns)
    counts.abstain_ok += did == expect.abstain
    wanted = "say it does not know" if expect.abstain else "answer (not abstain)"
    return [_Check("abstain", did == expect.abstain, f"expected the reply to {wanted}")]


def _check_text(turn: TurnRecord, expect: Expect, context: _Context, counts: _Counts) -> list[_Check]:
    counts.text_turns += 1
    reply = turn.reply.casefold()
    checks = [
        _Check("contains", needle.casefold() in reply, f"reply lacks {needle!r}")
        for needle in expect.contains
    ]
    checks += [
        _Check("not_contains", needle.casefold() not in reply, f"reply contains {needle!r}")
        for needle in expect.not_contains
    ]
    counts.text_ok += all(check.ok for check in checks)
    return checks


def _check_state(turn: TurnRecord, expect: Expect, context: _Context, counts: _Counts) -> list[_Check]:
    counts.state_turns += 1
    ok = turn.state == expect.state
    counts.state_ok += ok
    return [_Check("state", ok, f"expected state {expect.state}; got {turn.state}")]


# Action states of a response that mean a write was proposed or may have run.
WRITE_STATES = ("pending", "executed", "unknown")


def _check_action(turn: TurnRecord, expect: Expect, context: _Context, counts: _Counts) -> list[_Check]:
    counts.action_turns += 1
    action = turn.action
    got = "no action" if action is None else f"{action.tool} {action.state}"
    checks = [
        _Check(
            state,
            action is not None and action.tool == tool and action.state == state,
            f"expected a {state} {tool} action; got {got}",
        )
        for state, tool in (
            ("pending", expect.pending_action),
            ("executed", expect.executed),
            ("declined", expect.declined),
        )
        if tool is not None
    ]
    if expect.no_write:
        wrote = action is not None and action.state in WRITE_STATES
        checks.append(_Check("no_write", not wrote, f"expected no write proposed or run; got {got}"))
    counts.action_ok += all(check.ok for check in checks)
    return checks


# Expectation fields -> the checker that scores them, run when any of the fields is given; the order is
# the order checks are counted and failures reported.
_CHECKERS: tuple[tuple[tuple[str, ...], _Checker], ...] = (
    (("cite",), _check_cite),
    (("tool",), _check_tool),
    (("tool_args",), _check_tool_args),
    (("not_tool",), _check_not_tool),
    (("escalate",), _check_escalate),
    (("priority",), _check_priority),
    (("reason",), _check_reason),
    (("abstain",), _check_abstain),
    (("contains", "not_contains"), _check_text),
    (("state",), _check_state),
    (("pending_action", "executed", "declined", "no_write"), _check_action),
)


def _given(value: object) -> bool:
    """Whether an expectation field is checked: None and empty collections mean "not checked"."""
    if isinstance(value, Collection) and not isinstance(value, str):
        return bool(value)
    return value is not None


def _score_turn(
    conversation: str, index: int, turn: TurnRecord, expect: Expect, context: _Context, counts: _Counts
) -> TurnOutcome:
    checks = [
        check
        for fields, checker in _CHECKERS
        if any(_given(getattr(expect, name)) for name in fields)
        for check in checker(turn, expect, context, counts)
    ]
    failures: list[Failure] = []
    if turn.error is not None:
        counts.errors += 1
        failures.append(Failure("rpc", f"Chat failed: {turn.error}"))
        failures.extend(Failure(check.name, "not met (the RPC failed)") for check in checks)
        checks_ok = 0
    else:
        failures.extend(Failure(check.name, check.detail) for check in checks if not check.ok)
        checks_ok = sum(check.ok for check in checks)
    counts.checks += len(checks)
    counts.checks_ok += checks_ok
    counts.turns += 1
    counts.turns_ok += not failures
    counts.latencies.append(turn.latency_ms)
    return TurnOutcome(conversation, index, len(checks), tuple(failures))


def _args_match(actual: Mapping[str, Any] | None, expected: Mapping[str, Any]) -> bool:
    if actual is None:
        return False
    for key, want in expected.items():
        if key not in actual:
            return False
        got = actual[key]
        if got != want and str(got) != str(want):
            return False
    return True


def _describe_escalation(turn: TurnRecord) -> str:
    if turn.escalation is None:
        return "no escalation"
    return f"escalation priority={turn.escalation.priority} reason={turn.escalation.reason}"


def _ratio(numerator: float, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _metrics(c: _Counts) -> dict[str, Metric]:
    def rate(name: str, numerator: float, denominator: int) -> Metric:
        return Metric(name, _ratio(numerator, denominator), numerator, denominator)

    metrics = [
        rate("hit_at_k", c.hits, c.cite_turns),
        rate("mrr", c.reciprocal_ranks, c.cite_turns),
        rate("tool_precision", c.tool_tp, c.tool_tp + c.tool_fp),
        rate("tool_recall", c.tool_tp, c.tool_tp + c.tool_fn),
        rate("tool_arg_accuracy", c.arg_ok, c.arg_turns),
        rate("escalation_precision", c.esc_tp, c.esc_tp + c.esc_fp),
        rate("escalation_recall", c.esc_tp, c.esc_tp + c.esc_fn),
        rate("priority_accuracy", c.priority_ok, c.priority_turns),
        rate("reason_accuracy", c.reason_ok, c.reason_turns),
        rate("abstention_accuracy", c.abstain_ok, c.abstain_turns),
        rate("text_pass_rate", c.text_ok, c.text_turns),
        rate("state_accuracy", c.state_ok, c.state_turns),
        rate("action_accuracy", c.action_ok, c.action_turns),
        rate("turn_pass_rate", c.turns_ok, c.turns),
        rate("expectation_pass_rate", c.checks_ok, c.checks),
        rate("error_rate", c.errors, c.turns),
        Metric("latency_p50_ms", percentile(c.latencies, 50), 0.0, len(c.latencies)),
        Metric("latency_p95_ms", percentile(c.latencies, 95), 0.0, len(c.latencies)),
    ]
    return {metric.name: metric for metric in metrics}
