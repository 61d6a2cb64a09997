"""The suite format: a knowledge base, thresholds and labelled conversations (YAML or JSON).

`load_suite(path)` returns a validated, immutable `Suite` or raises `SuiteError` naming the file and the
exact place of the problem, e.g. ``evals/x.yaml: conversations[2].turns[0].expect.priority: expected one of
high, low, medium, got 'urgent'``.

A turn is a customer message, or the customer's answer to the pending action of an earlier turn
(`confirm: true` / `decline: true`): the message "yes" / "no" (or the turn's own `message`), or with
`button: true` the AgentService.ConfirmAction / DeclineAction call a backend's button makes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from service_kit.codes import ESCALATION_REASON_CODES, PRIORITY_CODES

PRIORITIES = PRIORITY_CODES
STATES = ("bot", "pending_human", "human")
# support.v1.EscalationReason names without the ESCALATION_REASON_ prefix, lower-case.
REASONS = ESCALATION_REASON_CODES
DEFAULT_K = 3
DEFAULT_ESCALATION_TOOL = "escalate_to_human"
# How a reply says "I don't know"; a suite may replace these with `abstain_patterns`.
DEFAULT_ABSTAIN_PATTERNS = (
    r"\b(?:i\s+)?(?:do not|don't|dont) know\b",
    r"\bnot sure\b",
    r"\b(?:couldn't|could not|can't|cannot|unable to) find\b",
    r"\bno (?:relevant )?information\b",
    r"\b(?:don't|do not) have (?:any )?(?:information|an answer|details)\b",
    r"\bnot (?:covered|something i can answer)\b",
)

# Metric name -> whether a threshold is a minimum (True) or a maximum (False).
METRICS: dict[str, bool] = {
    "hit_at_k": True,
    "mrr": True,
    "tool_precision": True,
    "tool_recall": True,
    "tool_arg_accuracy": True,
    "escalation_precision": True,
    "escalation_recall": True,
    "priority_accuracy": True,
    "reason_accuracy": True,
    "abstention_accuracy": True,
    "text_pass_rate": True,
    "state_accuracy": True,
    "turn_pass_rate": True,
    "expectation_pass_rate": True,
    "action_accuracy": True,
    "error_rate": False,
    "latency_p50_ms": False,
    "latency_p95_ms": False,
}

_SUITE_KEYS = {
    "name",
    "description",
    "kb",
    "customer_id",
    "k",
    "thresholds",
    "abstain_patterns",
    "escalation_tool",
    "conversations",
}
_CONVERSATION_KEYS = {"id", "customer_id", "description", "turns", "no_write"}
_TURN_KEYS = {"message", "expect", "confirm", "decline", "button"}
_EXPECT_KEYS = {
    "cite",
    "tool",
    "tool_args",
    "not_tool",
    "escalate",
    "priority",
    "reason",
    "contains",
    "not_contains",
    "abstain",
    "state",
    "pending_action",
    "executed",
    "declined",
    "no_write",
}
NO_TOOL = "none"
# What a `confirm` / `decline` turn sends as the customer's message when it gives none.
CONFIRM_MESSAGE = "yes"
DECLINE_MESSAGE = "no"


class SuiteError(ValueError):
    """A suite file that cannot be read or does not follow the format."""


@dataclass(frozen=True)
class Expect:
    """What one turn must do. None / empty means "not checked"."""

    cite: tuple[str, ...] = ()
    # A tool name, NO_TOOL ("none": no tool may be called), or None (not checked).
    tool: str | None = None
    tool_args: Mapping[str, Any] = field(default_factory=dict)
    not_tool: tuple[str, ...] = ()
    escalate: bool | None = None
    priority: str | None = None
    reason: str | None = None
    contains: tuple[str, ...] = ()
    not_contains: tuple[str, ...] = ()
    abstain: bool | None = None
    state: str | None = None
    # Write actions (ChatResponse.action): the tool whose action this turn proposed (pending), ran (executed)
    # or dropped (declined); `no_write`: the turn neither proposed nor ran one.
    pending_action: str | None = None
    executed: str | None = None
    declined: str | None = None
    no_write: bool | None = None


@dataclass(frozen=True)
class TurnSpec:
    message: str
    expect: Expect = field(default_factory=Expect)
    # The customer answers the pending action of an earlier turn: confirms or declines it, by message or,
    # with `button`, by AgentService.ConfirmAction / DeclineAction.
    confirm: bool = False
    decline: bool = False
    button: bool = False


@dataclass(frozen=True)
class ConversationSpec:
    id: str
    customer_id: str
    turns: tuple[TurnSpec, ...]
    description: str = ""

    @property
    def changes_orders(self) -> bool:
        """Whether a turn confirms an action: it may change the order store other conversations read."""
        return any(turn.confirm for turn in self.turns)


@dataclass(frozen=True)
class Suite:
    name: str
    kb_dir: Path
    conversations: tuple[ConversationSpec, ...]
    thresholds: Mapping[str, float] = field(default_factory=dict)
    k: int = DEFAULT_K
    abstain_patterns: tuple[str, ...] = DEFAULT_ABSTAIN_PATTERNS
    escalation_tool: str = DEFAULT_ESCALATION_TOOL
    description: str = ""
    path: Path | None = None
    # sha256 of the suite file's bytes ("" for suites built in code).
    suite_hash: str = ""

    @property
    def turn_count(self) -> int:
        return sum(len(conversation.turns) for conversation in self.conversations)


def load_suite(path: str | Path) -> Suite:
    """Reads and validates a suite file; `kb` is resolved relative to the file's folder."""
    suite_path = Path(path)
    try:
        raw_bytes = suite_path.read_bytes()
    except OSError as error:
        raise SuiteError(f"{suite_path}: cannot read suite: {error.strerror or error}") from error
    try:
        data = yaml.safe_load(raw_bytes)
    except yaml.YAMLError as error:
        raise SuiteError(f"{suite_path}: not valid YAML/JSON: {error}") from error
    try:
        suite = parse_suite(data, base_dir=suite_path.parent)
    except SuiteError as error:
        raise SuiteError(f"{suite_path}: {error}") from None
    if not suite.kb_dir.is_dir():
        raise SuiteError(f"{suite_path}: kb: folder {suite.kb_dir} does not exist")
    return Suite(
        name=suite.name,
        kb_dir=suite.kb_dir,
        conversations=suite.conversations,
        thresholds=suite.thresholds,
        k=suite.k,
        abstain_patterns=suite.abstain_patterns,
        escalation_tool=suite.escalation_tool,
        description=suite.description,
        path=suite_path,
        suite_hash=hashlib.sha256(raw_bytes).hexdigest(),
    )


def parse_suite(data: object, base_dir: Path) -> Suite:
    """Validates already-parsed suite data (a mapping); raises SuiteError with the offending key path."""
    top = _mapping(data, "suite", _SUITE_KEYS)
    name = _string(top.get("name"), "name", required=True)
    kb = _string(top.get("kb"), "kb", required=True)
    default_customer = _string(top.get("customer_id"), "customer_id")
    k = _integer(top.get("k", DEFAULT_K), "k", minimum=1)
    thresholds = _thresholds(top.get("thresholds", {}))
    patterns: tuple[str, ...] = DEFAULT_ABSTAIN_PATTERNS
    if "abstain_patterns" in top:
        patterns = _strings(top["abstain_patterns"], "abstain_patterns", allow_single=False)
        if not patterns:
            raise SuiteError("abstain_patterns: must list at least one regular expression")
        for index, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as error:
                raise SuiteError(f"abstain_patterns[{index}]: invalid regular expression: {error}") from None
    escalation_tool = _string(top.get("escalation_tool", DEFAULT_ESCALATION_TOOL), "escalation_tool")
    raw_conversations = top.get("conversations")
    if not isinstance(raw_conversations, list) or not raw_conversations:
        raise SuiteError("conversations: must be a non-empty list")
    conversations: list[ConversationSpec] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_conversations):
        conversation = _conversation(raw, f"conversations[{index}]", default_customer)
        if conversation.id in seen:
            raise SuiteError(f"conversations[{index}].id: duplicate id {conversation.id!r}")
        seen.add(conversation.id)
        conversations.append(conversation)
    return Suite(
        name=name,
        kb_dir=(base_dir / kb).resolve(),
        conversations=tuple(conversations),
        thresholds=thresholds,
        k=k,
        abstain_patterns=patterns,
        escalation_tool=escalation_tool or DEFAULT_ESCALATION_TOOL,
        description=_string(top.get("description"), "description"),
    )


def _conversation(raw: object, where: str, default_customer: str) -> ConversationSpec:
    data = _mapping(raw, where, _CONVERSATION_KEYS)
    conversation_id = _string(data.get("id"), f"{where}.id", required=True)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", conversation_id):
        raise SuiteError(
            f"{where}.id: use letters, digits, '_', '.', ':' or '-' (at most 64), got {conversation_id!r}"
        )
    customer_id = _string(data.get("customer_id"), f"{where}.customer_id") or default_customer
    if not customer_id:
        raise SuiteError(f"{where}.customer_id: required here because the suite has no default customer_id")
    raw_turns = data.get("turns")
    if not isinstance(raw_turns, list) or not raw_turns:
        raise SuiteError(f"{where}.turns: must be a non-empty list")
    turns = tuple(_turn(turn, f"{where}.turns[{index}]") for index, turn in enumerate(raw_turns))
    if turns[0].confirm or turns[0].decline:
        raise SuiteError(f"{where}.turns[0]: the first turn has no earlier action to confirm or decline")
    if _boolean(data.get("no_write"), f"{where}.no_write"):
        turns = tuple(
            _without_writes(turn, f"{where}.turns[{index}].expect") for index, turn in enumerate(turns)
        )
    return ConversationSpec(
        id=conversation_id,
        customer_id=customer_id,
        turns=turns,
        description=_string(data.get("description"), f"{where}.description"),
    )


def _without_writes(turn: TurnSpec, where: str) -> TurnSpec:
    """The turn of a `no_write: true` conversation: it expects no write, whatever else it expects."""
    if turn.expect.pending_action is not None or turn.expect.executed is not None:
        raise SuiteError(f"{where}: expects a write, but the conversation says no_write: true")
    return replace(turn, expect=replace(turn.expect, no_write=True))


def _turn(raw: object, where: str) -> TurnSpec:
    data = _mapping(raw, where, _TURN_KEYS)
    confirm = bool(_boolean(data.get("confirm"), f"{where}.confirm"))
    decline = bool(_boolean(data.get("decline"), f"{where}.decline"))
    button = bool(_boolean(data.get("button"), f"{where}.button"))
    if confirm and decline:
        raise SuiteError(f"{where}: confirm and decline are exclusive")
    if button and not (confirm or decline):
        raise SuiteError(f"{where}.button: needs confirm: true or decline: true")
    if button and "message" in data:
        raise SuiteError(f"{where}.message: a button press sends no message")
    if confirm or decline:
        default = CONFIRM_MESSAGE if confirm else DECLINE_MESSAGE
        message = _string(data.get("message", default), f"{where}.message", required=True)
    else:
        message = _string(data.get("message"), f"{where}.message", required=True)
    expect = _expect(data.get("expect", {}), f"{where}.expect")
    return TurnSpec(message=message, expect=expect, confirm=confirm, decline=decline, button=button)


def _expect(raw: object, where: str) -> Expect:
    data = _mapping({} if raw is None else raw, where, _EXPECT_KEYS)
    tool: str | None = None
    if "tool" in data:
        value = data["tool"]
        tool = NO_TOOL if value is None or value is False else _string(value, f"{where}.tool", required=True)
    tool_args: dict[str, Any] = {}
    if "tool_args" in data:
        raw_args = data["tool_args"]
        if not isinstance(raw_args, dict) or not raw_args:
            raise SuiteError(f"{where}.tool_args: must be a non-empty mapping of argument name to value")
        for key, value in raw_args.items():
            if not isinstance(key, str):
                raise SuiteError(f"{where}.tool_args: argument names must be strings, got {key!r}")
            if isinstance(value, dict | list):
                raise SuiteError(f"{where}.tool_args.{key}: only scalar values can be compared")
            tool_args[key] = value
        if tool is None or tool == NO_TOOL:
            raise SuiteError(f"{where}.tool_args: needs `tool: <name>` in the same expect")
    not_tool = _strings(data.get("not_tool", []), f"{where}.not_tool")
    if tool is not None and tool in not_tool:
        raise SuiteError(f"{where}.not_tool: {tool!r} is also the expected tool")
    escalate = _boolean(data.get("escalate"), f"{where}.escalate")
    priority = None
    if "priority" in data:
        priority = _choice(data["priority"], f"{where}.priority", PRIORITIES)
        if escalate is False:
            raise SuiteError(f"{where}.priority: set, but escalate is false")
        escalate = True
    reason = None
    if "reason" in data:
        reason = _choice(data["reason"], f"{where}.reason", REASONS)
        if escalate is False:
            raise SuiteError(f"{where}.reason: set, but escalate is false")
        escalate = True
    state = _choice(data["state"], f"{where}.state", STATES) if "state" in data else None
    writes = {
        key: _string(data[key], f"{where}.{key}", required=True) if key in data else None
        for key in ("pending_action", "executed", "declined")
    }
    named = [key for key, tool in writes.items() if tool is not None]
    if len(named) > 1:
        raise SuiteError(f"{where}.{named[1]}: a turn carries one action; {named[0]} is also set")
    # `no_write: false` checks nothing (like leaving it out).
    no_write = True if _boolean(data.get("no_write"), f"{where}.no_write") else None
    if no_write and (writes["pending_action"] or writes["executed"]):
        raise SuiteError(f"{where}.no_write: set, but the turn also expects a write")
    return Expect(
        cite=_strings(data.get("cite", []), f"{where}.cite"),
        tool=tool,
        tool_args=tool_args,
        not_tool=not_tool,
        escalate=escalate,
        priority=priority,
        reason=reason,
        contains=_strings(data.get("contains", []), f"{where}.contains"),
        not_contains=_strings(data.get("not_contains", []), f"{where}.not_contains"),
        abstain=_boolean(data.get("abstain"), f"{where}.abstain"),
        state=state,
        pending_action=writes["pending_action"],
        executed=writes["executed"],
        declined=writes["declined"],
        no_write=no_write,
    )


def _thresholds(raw: object) -> dict[str, float]:
    data = _mapping({} if raw is None else raw, "thresholds", set(METRICS))
    thresholds: dict[str, float] = {}
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SuiteError(f"thresholds.{name}: must be a number, got {value!r}")
        if METRICS[name] and not 0.0 <= float(value) <= 1.0:
            raise SuiteError(f"thresholds.{name}: a rate between 0 and 1, got {value!r}")
        if float(value) < 0:
            raise SuiteError(f"thresholds.{name}: must not be negative, got {value!r}")
        thresholds[name] = float(value)
    return thresholds


def _mapping(raw: object, where: str, known: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: expected a mapping, got {_kind(raw)}")
    unknown = sorted(str(key) for key in raw if key not in known)
    if unknown:
        raise SuiteError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return {str(key): value for key, value in raw.items()}


def _string(raw: object, where: str, required: bool = False) -> str:
    if raw is None:
        if required:
            raise SuiteError(f"{where}: required")
        return ""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise SuiteError(f"{where}: expected a string, got {_kind(raw)}")
    text = str(raw)
    if required and not text.strip():
        raise SuiteError(f"{where}: must not be empty")
    return text


def _strings(raw: object, where: str, allow_single: bool = True) -> tuple[str, ...]:
    if allow_single and isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise SuiteError(f"{where}: expected a list of strings, got {_kind(raw)}")
    return tuple(_string(item, f"{where}[{index}]", required=True) for index, item in enumerate(raw))


def _boolean(raw: object, where: str) -> bool | None:
    if raw is None:
        return None
    if not isinstance(raw, bool):
        raise SuiteError(f"{where}: expected true or false, got {raw!r}")
    return raw


def _integer(raw: object, where: str, minimum: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < minimum:
        raise SuiteError(f"{where}: expected an integer >= {minimum}, got {raw!r}")
    return raw


def _choice(raw: object, where: str, choices: Sequence[str]) -> str:
    if not isinstance(raw, str) or raw.lower() not in choices:
        raise SuiteError(f"{where}: expected one of {', '.join(sorted(choices))}, got {raw!r}")
    return raw.lower()


def _kind(raw: object) -> str:
    if raw is None:
        return "nothing"
    if isinstance(raw, dict):
        return "a mapping"
    if isinstance(raw, list):
        return "a list"
    return f"{type(raw).__name__} {raw!r}"
