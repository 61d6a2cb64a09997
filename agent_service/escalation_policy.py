"""Deterministic escalation triggers that back up the model's own judgement.

The agent asks :meth:`EscalationPolicy.evaluate` about every customer message. When a rule fires the agent
escalates even if the model did not call ``escalate_to_human``. Rules (phrases and regular expressions per
category, each with a reason code, a priority and a customer-facing message) live in
``escalation_rules.yaml`` beside this module, or in a file named by the caller (ESCALATION_RULES_PATH).
The format is documented in docs/policy.md. Nothing here does I/O except :meth:`PolicyRules.load`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, cast, get_args

import yaml

from agent_service.texts import DEFAULT_ESCALATION_MESSAGE
from service_kit.redact import redact

Priority = Literal["low", "medium", "high"]
ReasonCode = Literal[
    "customer_request",
    "negative_sentiment",
    "sensitive_topic",
    "low_confidence",
    "tool_failure",
    "loop_limit",
    "model_initiated",
    "conversation_limit",
]

PRIORITIES: Final[tuple[Priority, ...]] = get_args(Priority)
REASON_CODES: Final[tuple[ReasonCode, ...]] = get_args(ReasonCode)
DEFAULT_RULES_PATH: Final[Path] = Path(__file__).with_name("escalation_rules.yaml")

# Messages longer than this are only matched on their first MAX_EVALUATED_CHARS characters; the input
# guardrail rejects oversize messages long before that.
MAX_EVALUATED_CHARS: Final[int] = 10_000
_MAX_TRIGGER_TEXT: Final[int] = 60

_PRIORITY_RANK: Final[dict[str, int]] = {"low": 0, "medium": 1, "high": 2}
# When priorities tie: sensitive topics over sentiment over a plain request for a human.
_REASON_RANK: Final[dict[str, int]] = {
    "sensitive_topic": 3,
    "negative_sentiment": 2,
    "customer_request": 1,
}
_CLAUSE_BREAK: Final[re.Pattern[str]] = re.compile(r"[.,;:!?\n]|\bbut\b|\bso\b", re.IGNORECASE)
_POST_NEGATION: Final[re.Pattern[str]] = re.compile(
    r"^\W*(?:is|are|would\s+be|will\s+be|isn't|aren't)?\s*(?:not\s+|n't\s+)?"
    r"(?:(?:not\s+)?(?:necessary|needed|required)|unnecessary)\b",
    re.IGNORECASE,
)
_ZERO_WIDTH: Final[dict[int, None]] = dict.fromkeys(
    [0x00AD, 0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF, 0x180E], None
)
_QUOTES: Final[dict[int, str]] = {0x2018: "'", 0x2019: "'", 0x02BC: "'", 0x201C: '"', 0x201D: '"'}
_DEFAULT_NEGATION_CUES: Final[tuple[str, ...]] = (
    "don't",
    "dont",
    "do not",
    "doesn't",
    "does not",
    "no need",
    "without",
    "no longer",
    "won't",
    "will not",
    "never mind",
    "nevermind",
    "rather not",
)
_DEFAULT_OUTCOME_PRIORITY: Final[dict[str, Priority]] = {
    "customer_request": "medium",
    "negative_sentiment": "high",
    "sensitive_topic": "high",
    "low_confidence": "low",
    "tool_failure": "medium",
    "loop_limit": "medium",
    "model_initiated": "medium",
    "conversation_limit": "low",
}


class PolicyConfigError(ValueError):
    """The escalation rules file is missing, malformed or names an unknown reason code or priority."""


@dataclass(frozen=True)
class EscalationDecision:
    """Why and how urgently a conversation goes to a human, and what the customer is told."""

    reason_code: ReasonCode
    priority: Priority
    trigger: str  # which rule fired, e.g. "account_security: 'hacked'"
    customer_message: str  # what to tell the customer (polite, no internals)


@dataclass(frozen=True)
class TriggerCategory:
    """One configured category: its compiled matchers, reason code, priority and customer message."""

    name: str
    reason_code: ReasonCode
    priority: Priority
    customer_message: str
    matchers: tuple[re.Pattern[str], ...]
    negatable: bool = True


@dataclass(frozen=True)
class Outcome:
    """Priority and customer message for a decision the agent takes itself (loop limit, tool failures...)."""

    priority: Priority
    customer_message: str


@dataclass(frozen=True)
class PolicyRules:
    """Trigger lists per category, each with reason code and priority; loaded from YAML."""

    categories: tuple[TriggerCategory, ...]
    outcomes: Mapping[str, Outcome]
    negation_cues: tuple[str, ...] = _DEFAULT_NEGATION_CUES
    negation_window_words: int = 4

    @classmethod
    def load(cls, path: str | None = None) -> PolicyRules:
        """Reads and validates a rules file; ``None`` loads the packaged ``escalation_rules.yaml``."""
        file = DEFAULT_RULES_PATH if path is None else Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyConfigError(f"cannot read escalation rules file {file}: {exc.strerror}") from exc
        return cls.from_yaml(text, source=str(file))

    @classmethod
    def from_yaml(cls, text: str, source: str = "<string>") -> PolicyRules:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PolicyConfigError(f"{source}: not valid YAML: {exc}") from exc
        return cls.from_mapping(data, source=source)

    @classmethod
    def from_mapping(cls, data: Any, source: str = "<mapping>") -> PolicyRules:
        """Builds rules from already-parsed data (the YAML document's shape)."""
        if not isinstance(data, Mapping):
            raise PolicyConfigError(f"{source}: the top level must be a mapping")
        _check_keys(data, {"version", "negation", "categories", "outcomes"}, source)
        version = data.get("version", 1)
        if version != 1:
            raise PolicyConfigError(f"{source}: unsupported version {version!r} (expected 1)")
        raw_categories = data.get("categories")
        if not isinstance(raw_categories, list) or not raw_categories:
            raise PolicyConfigError(f"{source}: 'categories' must be a non-empty list")
        categories = tuple(
            _parse_category(raw, f"{source}: categories[{index}]") for index, raw in enumerate(raw_categories)
        )
        names = [category.name for category in categories]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise PolicyConfigError(f"{source}: duplicate category names {duplicates}")
        cues, window = _parse_negation(data.get("negation"), f"{source}: negation")
        outcomes = _parse_outcomes(data.get("outcomes"), f"{source}: outcomes")
        return cls(categories=categories, outcomes=outcomes, negation_cues=cues, negation_window_words=window)

    def outcome(self, reason_code: ReasonCode) -> Outcome:
        """The configured priority and message for a reason code (built-in defaults when not configured)."""
        configured = self.outcomes.get(reason_code)
        if configured is not None:
            return configured
        return Outcome(_DEFAULT_OUTCOME_PRIORITY[reason_code], DEFAULT_ESCALATION_MESSAGE)


class EscalationPolicy:
    """Applies :class:`PolicyRules` to customer messages. Pure and thread-safe once built."""

    def __init__(self, rules: PolicyRules) -> None:
        self._rules = rules
        cues = sorted(rules.negation_cues, key=len, reverse=True)
        self._negation: re.Pattern[str] | None = (
            re.compile(r"\b(?:" + "|".join(_phrase_regex(cue) for cue in cues) + r")\b", re.IGNORECASE)
            if cues
            else None
        )

    @property
    def rules(self) -> PolicyRules:
        return self._rules

    def evaluate(self, message: str) -> EscalationDecision | None:
        """The decision for the strongest trigger in ``message``, or None when nothing fires."""
        text = normalize_message(message[:MAX_EVALUATED_CHARS])
        best: tuple[tuple[int, int, int, int], TriggerCategory, str] | None = None
        for order, category in enumerate(self._rules.categories):
            found = self._first_match(category, text)
            if found is None:
                continue
            start, matched = found
            key = (
                _PRIORITY_RANK[category.priority],
                _REASON_RANK.get(category.reason_code, 0),
                -order,
                -start,
            )
            if best is None or key > best[0]:
                best = (key, category, matched)
        if best is None:
            return None
        _, category, matched = best
        return EscalationDecision(
            reason_code=category.reason_code,
            priority=category.priority,
            trigger=f"{category.name}: {_trigger_text(matched)!r}",
            customer_message=category.customer_message,
        )

    def decision_for(
        self, reason_code: ReasonCode, trigger: str, priority: Priority | None = None
    ) -> EscalationDecision:
        """A decision the agent takes itself (loop_limit, tool_failure, conversation_limit, ...)."""
        if reason_code not in REASON_CODES:
            raise ValueError(f"unknown reason code {reason_code!r}")
        if priority is not None and priority not in PRIORITIES:
            raise ValueError(f"unknown priority {priority!r}")
        outcome = self._rules.outcome(reason_code)
        return EscalationDecision(
            reason_code=reason_code,
            priority=priority or outcome.priority,
            trigger=trigger,
            customer_message=outcome.customer_message,
        )

    def _first_match(self, category: TriggerCategory, text: str) -> tuple[int, str] | None:
        earliest: tuple[int, str] | None = None
        for matcher in category.matchers:
            for match in matcher.finditer(text):
                if category.negatable and self._negated(text, match.start(), match.end()):
                    continue
                if earliest is None or match.start() < earliest[0]:
                    earliest = (match.start(), match.group(0))
                break
        return earliest

    def _negated(self, text: str, start: int, end: int) -> bool:
        before = text[max(0, start - 80) : start]
        breaks = list(_CLAUSE_BREAK.finditer(before))
        if breaks:
            before = before[breaks[-1].end() :]
        words = (
            before.split()[-self._rules.negation_window_words :] if self._rules.negation_window_words else []
        )
        if self._negation is not None and words and self._negation.search(" ".join(words)):
            return True
        after = text[end : end + 40]
        return _POST_NEGATION.search(after) is not None


def normalize_message(text: str) -> str:
    """NFKC, straight quotes, no zero-width characters, single spaces: what the triggers are matched on."""
    text = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH).translate(_QUOTES)
    return " ".join(text.split())


def _trigger_text(matched: str) -> str:
    text = redact(" ".join(matched.lower().split()))
    return text if len(text) <= _MAX_TRIGGER_TEXT else text[: _MAX_TRIGGER_TEXT - 1] + "…"


def _phrase_regex(phrase: str) -> str:
    words = normalize_message(phrase).split(" ")
    body = r"\s+".join(re.escape(word) for word in words)
    # Word boundaries only where the phrase starts/ends with a word character ("sign-in!" still works).
    head = r"\b" if re.match(r"\w", words[0]) else ""
    # ...and not as the front of a hyphenated compound ("human-readable", "lawyer-approved").
    tail = r"\b(?!-\w)" if re.search(r"\w$", words[-1]) else ""
    return head + body + tail


def _check_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(str(key) for key in data if key not in allowed)
    if unknown:
        raise PolicyConfigError(f"{where}: unknown keys {unknown} (allowed: {sorted(allowed)})")


def _string(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise PolicyConfigError(f"{where}: '{key}' must be a non-empty string")
    return " ".join(value.split())


def _priority(value: Any, where: str) -> Priority:
    if value not in PRIORITIES:
        raise PolicyConfigError(f"{where}: priority must be one of {list(PRIORITIES)}, got {value!r}")
    return cast(Priority, value)


def _string_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise PolicyConfigError(f"{where}: must be a list of non-empty strings")
    return [str(item) for item in value]


def _parse_category(raw: Any, where: str) -> TriggerCategory:
    if not isinstance(raw, Mapping):
        raise PolicyConfigError(f"{where}: must be a mapping")
    _check_keys(
        raw,
        {"name", "reason_code", "priority", "customer_message", "phrases", "patterns", "negatable"},
        where,
    )
    name = _string(raw, "name", where)
    where = f"{where} ({name})"
    reason = raw.get("reason_code")
    if reason not in REASON_CODES:
        raise PolicyConfigError(f"{where}: reason_code must be one of {list(REASON_CODES)}, got {reason!r}")
    phrases = _string_list(raw.get("phrases"), f"{where}: phrases")
    patterns = _string_list(raw.get("patterns"), f"{where}: patterns")
    if not phrases and not patterns:
        raise PolicyConfigError(f"{where}: needs at least one phrase or pattern")
    negatable = raw.get("negatable", True)
    if not isinstance(negatable, bool):
        raise PolicyConfigError(f"{where}: negatable must be true or false")
    matchers: list[re.Pattern[str]] = []
    if phrases:
        ordered = sorted(phrases, key=len, reverse=True)
        matchers.append(re.compile("|".join(_phrase_regex(phrase) for phrase in ordered), re.IGNORECASE))
    for index, pattern in enumerate(patterns):
        try:
            compiled = re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise PolicyConfigError(f"{where}: patterns[{index}] is not a valid regex: {exc}") from exc
        if compiled.search("") is not None:
            raise PolicyConfigError(f"{where}: patterns[{index}] matches the empty string")
        matchers.append(compiled)
    return TriggerCategory(
        name=name,
        reason_code=cast(ReasonCode, reason),
        priority=_priority(raw.get("priority"), where),
        customer_message=_string(raw, "customer_message", where),
        matchers=tuple(matchers),
        negatable=negatable,
    )


def _parse_negation(raw: Any, where: str) -> tuple[tuple[str, ...], int]:
    if raw is None:
        return _DEFAULT_NEGATION_CUES, 4
    if not isinstance(raw, Mapping):
        raise PolicyConfigError(f"{where}: must be a mapping")
    _check_keys(raw, {"cues", "window_words"}, where)
    cues = tuple(_string_list(raw.get("cues"), f"{where}: cues")) if "cues" in raw else _DEFAULT_NEGATION_CUES
    window = raw.get("window_words", 4)
    if not isinstance(window, int) or isinstance(window, bool) or not 0 <= window <= 20:
        raise PolicyConfigError(f"{where}: window_words must be an integer from 0 to 20")
    return cues, window


def _parse_outcomes(raw: Any, where: str) -> dict[str, Outcome]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise PolicyConfigError(f"{where}: must be a mapping")
    outcomes: dict[str, Outcome] = {}
    for key, value in raw.items():
        if key not in REASON_CODES:
            raise PolicyConfigError(f"{where}: unknown reason code {key!r}")
        entry = f"{where}.{key}"
        if not isinstance(value, Mapping):
            raise PolicyConfigError(f"{entry}: must be a mapping")
        _check_keys(value, {"priority", "customer_message"}, entry)
        outcomes[key] = Outcome(
            _priority(value.get("priority"), entry), _string(value, "customer_message", entry)
        )
    return outcomes
