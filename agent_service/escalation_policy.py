"""Deterministic escalation triggers that back up the model's own judgement.

The agent asks :meth:`EscalationPolicy.evaluate` about every customer message. When a rule fires the agent
escalates even if the model did not call ``escalate_to_human``. Rules (phrases and regular expressions per
category, each with a reason code, a priority and a customer-facing message) live in
``escalation_rules.yaml`` beside this module, or in a file named by the caller (ESCALATION_RULES_PATH).
The format is documented in docs/policy.md.

Two layers, both on the message with its disguise undone (look-alike letters, zero-width characters,
leetspeak, split words: :func:`service_kit.text_normalise.normalise_for_matching`):

1. the rules: explicit requests, negations, near misses ("ridiculously good prices");
2. a semantic layer for paraphrases and other languages: labelled example messages per category, with
   near misses as negative examples, in the file the rules name under ``examples:``
   (``escalation_examples.yaml``), scored with the offline MiniLM by
   :class:`service_kit.semantic_match.SemanticMatcher` (the same matcher, model and vector cache as the
   injection detector, so a message is embedded once per turn); long messages also clause by clause.

Neither layer hands off a clause that declines what it names ("I don't want to dispute the charge",
:data:`_NEGATED_INTENT`) or a hypothetical in a question ("if someone hacked my account, what should I do",
:func:`_hypothetical_spans`): the words of the category are there, the request is not (docs/policy.md).

The rules and the examples file are read and validated once (:meth:`PolicyRules.load`); the embedding model
is loaded on first use, in a background thread started when the policy is built.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, cast, get_args

import yaml

from agent_service.texts import DEFAULT_ESCALATION_MESSAGE
from service_kit.redact import redact
from service_kit.text_normalise import normalise_for_matching

if TYPE_CHECKING:
    from service_kit.semantic_match import Embedder, SemanticMatcher

_log = logging.getLogger(__name__)

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
_ANY_POST_NEGATION: Final[re.Pattern[str]] = re.compile(
    r"\b(?:is|are|would\s+be|will\s+be)\s+(?:not|n't)\s+(?:necessary|needed|required)\b"
    r"|\b(?:isn't|aren't)\s+(?:necessary|needed|required)\b|\bunnecessary\b"
    # "I need no human", and what the lexicon makes of "ich brauche keinen Menschen" / "je n'ai pas besoin"
    r"|\bneed\s+(?:no|nobody|no\s+one)\b|\bnot\s+need\b",
    re.IGNORECASE,
)
# A clause that declines something ("I don't want to dispute the charge", "I'm not going to sue", "no
# quiero reclamar" -> "no i want ...", "je ne veux pas" -> "i ne want not", "ich will keine Beschwerde" -> "i
# will no complaint"): the customer's wish, plan or need, negated; matched on the normalised text after the
# lexicon. Never a negated fact or a refusal, which are complaints: "I don't recognise this charge", "I never
# got my refund", "nobody will help me", "I won't pay this", "I will not stop until you refund me".
_NEGATED_INTENT: Final[re.Pattern[str]] = re.compile(
    r"\b(?:don't|dont|do\s+not|doesn't|does\s+not|no|not|ne)\s+(?:(?:i|really|even|actually|longer)\s+)?"
    r"(?:want|wish|intend|plan|need|mean)\b"
    r"|\b(?:i'm|im|i\s+am|we're|we\s+are)\s+not\s+(?:going|planning|trying)\s+to\b"
    r"|\b(?:want|would\s+like|need)\s+(?:no|not|pas|nicht|kein|keine|keinen)\b|\bwill\s+(?:no|kein|keine|keinen)\b"
    r"|\bno\s+(?:intention|plan|plans|wish|desire)\b|\brather\s+not\b"
    # a belief taken back in the same clause ("I thought I'd been charged twice, but it was my mistake")
    r"|\b(?:i|we)\s+(?:thought|assumed|believed)\b",
    re.IGNORECASE,
)
# A clause that asks how to do something oneself ("do I need to set up a new account or can I take over
# theirs", "how do I add a second card", "¿cómo puedo...", "wie kann ich ..."), matched at the start of a
# clause after the lexicon: a self-service question about a topic, not a report of an incident, so the
# semantic layer does not match a sensitive topic there (a request for a person, "can I talk to someone",
# and sentiment, "why is your service so bad", still can; the rules still apply).
_HOW_TO_QUESTION: Final[re.Pattern[str]] = re.compile(
    r"^[\W_]*(?:(?:hi|hello|hey|hiya|ok|so|and|also|quick\s+q(?:uestion)?)\b[\W_]*)*"
    r"(?:(?:how|where|when|what|can|could|do|should|may|would)\s+(?:(?:do|can|should|could|would)\s+)?(?:i|we)\b"
    r"|is\s+(?:it|there)\s+(?:possible|a\s+way)\b"
    r"|c[oó]mo\s+(?:puedo|hago|fa[cç]o|posso)\b|(?:puedo|posso)\b|comment\s+(?:je|i|puis|faire)\b"
    r"|(?:wie|wo|wann)\s+kann\s+(?:ich|i)\b|kann\s+(?:ich|i)\b)",
    re.IGNORECASE,
)
# A hypothetical in a question ("if someone hacked my account, what should I do", "what happens if my card
# is stolen?", "Was passiert, wenn jemand ...?") asks how things work: from the conditional to the end of its
# clause, nothing escalates, by rule or by meaning. Outside a question a conditional is a threat or a demand
# ("If I don't get a refund I'm filing a claim in court") and is matched as usual. The Portuguese "se" is
# left out: it is also the Spanish reflexive ("se me cobró dos veces").
_CONDITIONAL: Final[re.Pattern[str]] = re.compile(
    r"\b(?:if|in\s+case|suppose|supposing|wenn|falls|si|caso)\b", re.IGNORECASE
)
_CONDITIONAL_END: Final[re.Pattern[str]] = re.compile(r"[.,;:!?\n]|\bthen\b", re.IGNORECASE)
_QUESTION: Final[re.Pattern[str]] = re.compile(
    r"\?|(?:^|[.,;:!\n]\s*|\b(?:and|but|so)\s+)[¿\s]*(?:what|how|who|where|when|which|can|could|do|does|is|are"
    r"|will|would|should|que|qu[eé]|c[oó]mo|cu[aá]l|comment|quand|est-ce|wie|was|wer|kann|o\s+que|quanto"
    r"|quando|qual)\b",
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
NEGATIVE_LABEL: Final[str] = "negative"
DEFAULT_MARGIN: Final[float] = 0.04
DEFAULT_SEMANTIC_THRESHOLD: Final[float] = 0.6
CLAUSE_WORDS: Final[int] = 10
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
class SemanticExamples:
    """The semantic layer's labelled examples (an ``escalation_examples.yaml``), validated."""

    source: str  # the file, for messages
    labels: tuple[tuple[str, float, tuple[str, ...]], ...]  # (rules category, threshold, examples)
    negatives: tuple[str, ...]
    margin: float = DEFAULT_MARGIN
    lexicon: tuple[tuple[str, str], ...] = ()
    probe_threshold: float | None = None  # the linear probe's probability bar; None: no probe

    @classmethod
    def load(cls, path: Path, categories: tuple[str, ...]) -> SemanticExamples:
        """Reads and validates an examples file whose labels must be among `categories`; any problem is a
        :class:`PolicyConfigError` naming the file and the place."""
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise PolicyConfigError(f"cannot read escalation examples file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise PolicyConfigError(f"{path}: not valid YAML: {exc}") from exc
        return cls.from_mapping(data, categories, source=str(path))

    @classmethod
    def from_mapping(cls, data: Any, categories: tuple[str, ...], source: str) -> SemanticExamples:
        if not isinstance(data, Mapping):
            raise PolicyConfigError(f"{source}: the top level must be a mapping")
        _check_keys(data, {"version", "margin", "probe_threshold", "labels", "negative", "lexicon"}, source)
        if data.get("version", 1) != 1:
            raise PolicyConfigError(f"{source}: unsupported version {data.get('version')!r} (expected 1)")
        margin = _unit_float(data.get("margin", DEFAULT_MARGIN), f"{source}: margin")
        raw_probe = data.get("probe_threshold")
        probe_threshold = None if raw_probe is None else _unit_float(raw_probe, f"{source}: probe_threshold")
        raw_labels = data.get("labels")
        if not isinstance(raw_labels, Mapping) or not raw_labels:
            raise PolicyConfigError(f"{source}: 'labels' must be a non-empty mapping of category -> examples")
        labels: list[tuple[str, float, tuple[str, ...]]] = []
        for name, spec in raw_labels.items():
            where = f"{source}: labels.{name}"
            if name not in categories:
                raise PolicyConfigError(
                    f"{where}: not a category of the rules file (categories: {list(categories)})"
                )
            if not isinstance(spec, Mapping):
                raise PolicyConfigError(f"{where}: must be a mapping with 'examples' (and 'threshold')")
            _check_keys(spec, {"threshold", "examples"}, where)
            threshold = _unit_float(spec.get("threshold", DEFAULT_SEMANTIC_THRESHOLD), f"{where}.threshold")
            labels.append((str(name), threshold, _examples(spec.get("examples"), f"{where}.examples")))
        negative = data.get("negative")
        if not isinstance(negative, Mapping):
            raise PolicyConfigError(f"{source}: 'negative' must be a mapping with 'examples' (near misses)")
        _check_keys(negative, {"examples"}, f"{source}: negative")
        negatives = _examples(negative.get("examples"), f"{source}: negative.examples")
        raw_lexicon = data.get("lexicon") or {}
        if not isinstance(raw_lexicon, Mapping):
            raise PolicyConfigError(f"{source}: 'lexicon' must be a mapping of word -> English word")
        lexicon: list[tuple[str, str]] = []
        for key, value in raw_lexicon.items():
            if not isinstance(key, str) or not isinstance(value, str) or not key.strip() or not value.strip():
                raise PolicyConfigError(f"{source}: lexicon.{key}: must map a word to a non-empty string")
            if len(key.split()) > 3:
                raise PolicyConfigError(
                    f"{source}: lexicon.{key}: at most three words (vocabulary, not phrases)"
                )
            lexicon.append((key, value))
        return cls(source, tuple(labels), negatives, margin, tuple(lexicon), probe_threshold)

    def build_matcher(self, embedder: Embedder) -> SemanticMatcher:
        from service_kit.semantic_match import SemanticMatcher

        examples: dict[str, list[str]] = {name: list(texts) for name, _, texts in self.labels}
        examples[NEGATIVE_LABEL] = list(self.negatives)
        thresholds = {name: threshold for name, threshold, _ in self.labels}
        thresholds[NEGATIVE_LABEL] = 2.0  # never matches as a label of its own
        # No keyword joining: a message normalises as for the rules, and (English) as for the injection
        # detector, whose vectors of the same message are then reused from the shared cache.
        return SemanticMatcher(
            examples,
            embedder,
            thresholds,
            lexicon=dict(self.lexicon),
            join_keywords=False,
            clause_words=CLAUSE_WORDS,
            probe_threshold=self.probe_threshold,
        )


@dataclass(frozen=True)
class PolicyRules:
    """Trigger lists per category, each with reason code and priority; loaded from YAML."""

    categories: tuple[TriggerCategory, ...]
    outcomes: Mapping[str, Outcome]
    negation_cues: tuple[str, ...] = _DEFAULT_NEGATION_CUES
    negation_window_words: int = 4
    semantic: SemanticExamples | None = None  # the file named by `examples:`; None: rules only

    @classmethod
    def load(cls, path: str | None = None) -> PolicyRules:
        """Reads and validates a rules file (and the examples file it names); ``None`` loads the packaged
        ``escalation_rules.yaml``."""
        file = DEFAULT_RULES_PATH if path is None else Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyConfigError(f"cannot read escalation rules file {file}: {exc.strerror}") from exc
        return cls.from_yaml(text, source=str(file), base=file.parent)

    @classmethod
    def from_yaml(cls, text: str, source: str = "<string>", base: Path | None = None) -> PolicyRules:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PolicyConfigError(f"{source}: not valid YAML: {exc}") from exc
        return cls.from_mapping(data, source=source, base=base)

    @classmethod
    def from_mapping(cls, data: Any, source: str = "<mapping>", base: Path | None = None) -> PolicyRules:
        """Builds rules from already-parsed data (the YAML document's shape). ``base``: the folder a
        relative ``examples:`` path is read from (default: the current directory)."""
        if not isinstance(data, Mapping):
            raise PolicyConfigError(f"{source}: the top level must be a mapping")
        _check_keys(data, {"version", "negation", "categories", "outcomes", "examples"}, source)
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
        semantic: SemanticExamples | None = None
        examples = data.get("examples")
        if examples is not None:
            if not isinstance(examples, str) or not examples.strip():
                raise PolicyConfigError(f"{source}: 'examples' must be the path of an examples file")
            path = Path(examples)
            if not path.is_absolute():
                path = (base or Path.cwd()) / path
            semantic = SemanticExamples.load(path, tuple(names))
        return cls(
            categories=categories,
            outcomes=outcomes,
            negation_cues=cues,
            negation_window_words=window,
            semantic=semantic,
        )

    def outcome(self, reason_code: ReasonCode) -> Outcome:
        """The configured priority and message for a reason code (built-in defaults when not configured)."""
        configured = self.outcomes.get(reason_code)
        if configured is not None:
            return configured
        return Outcome(_DEFAULT_OUTCOME_PRIORITY[reason_code], DEFAULT_ESCALATION_MESSAGE)


_Candidate = tuple[tuple[int, int, int, int, int], TriggerCategory, str]


class EscalationPolicy:
    """Applies :class:`PolicyRules` to customer messages. Thread-safe once built.

    ``embedder``: the sentence model of the semantic layer (default: the shared offline MiniLM, loaded on
    first use). ``warm``: start loading it (and embedding the examples) in a background thread now.
    """

    def __init__(self, rules: PolicyRules, embedder: Embedder | None = None, warm: bool = True) -> None:
        self._rules = rules
        cues = sorted(rules.negation_cues, key=len, reverse=True)
        self._negation: re.Pattern[str] | None = (
            re.compile(r"\b(?:" + "|".join(_phrase_regex(cue) for cue in cues) + r")\b", re.IGNORECASE)
            if cues
            else None
        )
        self._by_name = {category.name: (order, category) for order, category in enumerate(rules.categories)}
        self._embedder = embedder
        self._matcher: SemanticMatcher | None = None
        self._matcher_failed = False
        self._matcher_lock = threading.Lock()
        if rules.semantic is not None and warm:
            threading.Thread(target=self.warm_up, name="escalation-warm-up", daemon=True).start()

    @property
    def rules(self) -> PolicyRules:
        return self._rules

    def warm_up(self) -> bool:
        """Builds the semantic layer now; True when it is in use."""
        return self._semantic() is not None

    def evaluate(self, message: str) -> EscalationDecision | None:
        """The decision for the strongest trigger in ``message``, or None when nothing fires."""
        found = self._candidates(message)
        if not found:
            return None
        return self._decision(max(found, key=lambda candidate: candidate[0]))

    def evaluate_all(self, message: str) -> list[EscalationDecision]:
        """Every category that fired (rules and semantic layer), strongest first, for audit."""
        found = sorted(self._candidates(message), key=lambda candidate: candidate[0], reverse=True)
        seen: set[str] = set()
        decisions: list[EscalationDecision] = []
        for candidate in found:
            if candidate[1].name not in seen:
                seen.add(candidate[1].name)
                decisions.append(self._decision(candidate))
        return decisions

    def _candidates(self, message: str) -> list[_Candidate]:
        text = message[:MAX_EVALUATED_CHARS]
        plain = normalize_message(text)
        found: list[_Candidate] = []
        undisguised = undisguise(text)
        variants = (plain,) if undisguised == plain.casefold() else (plain, undisguised)
        for variant in variants:
            hypothetical = _hypothetical_spans(variant)
            for order, category in enumerate(self._rules.categories):
                match = self._first_match(category, variant, hypothetical)
                if match is not None:
                    start, matched = match
                    found.append(
                        (self._key(category, order, 1, start), category, repr(_trigger_text(matched)))
                    )
        matcher = self._semantic()
        if matcher is not None and plain:
            # Meaning is in the words: card numbers, e-mails and phone numbers become placeholders first, so a
            # question that quotes a card number is not scored as one about a stolen card.
            words = redact(text)
            normalised = matcher.normalise(words)
            hypotheses = [normalised[start:end].strip() for start, end in _hypothetical_spans(normalised)]

            def excluded(name: str, segment: str) -> bool:
                # a declining clause, or a part of a hypothetical (the whole text containing one is then
                # scored clause by clause, so a clause outside it still counts)
                return self._declines(name, segment) or any(
                    segment in hypothesis or hypothesis in segment for hypothesis in hypotheses
                )

            semantic = matcher.classify(words, NEGATIVE_LABEL, self._semantic_margin(), excluded=excluded)
            if semantic is not None and self._semantic_negated(semantic.label, normalised):
                semantic = None
            if semantic is not None:
                order, category = self._by_name[semantic.label]
                # The nearest example (operator text), never the customer's words.
                example = repr(_trigger_text(semantic.nearest_example))
                how = (
                    "contains"
                    if semantic.lexical
                    else f"probe {semantic.score:.2f}"
                    if semantic.probe
                    else f"{semantic.score:.2f}"
                )
                found.append((self._key(category, order, 0, 0), category, f"like {example} ({how})"))
        return found

    @staticmethod
    def _key(category: TriggerCategory, order: int, rule: int, start: int) -> tuple[int, int, int, int, int]:
        # Priority, then reason, then a rule before the semantic layer, then file order, then position.
        return (
            _PRIORITY_RANK[category.priority],
            _REASON_RANK.get(category.reason_code, 0),
            rule,
            -order,
            -start,
        )

    @staticmethod
    def _decision(candidate: _Candidate) -> EscalationDecision:
        _, category, matched = candidate
        return EscalationDecision(
            reason_code=category.reason_code,
            priority=category.priority,
            trigger=f"{category.name}: {matched}",
            customer_message=category.customer_message,
        )

    def _semantic_negated(self, name: str, normalised: str) -> bool:
        """A request matched by meaning that the message negates ("talking to a human is not necessary",
        "no necesito hablar con nadie" -> "no need ..."): the embedding model does not see negation, so a
        negatable customer_request category is dropped when a negation cue or "not necessary" appears
        anywhere in the message. Sensitive topics and sentiment are not: "I don't recognise this charge"."""
        _, category = self._by_name[name]
        if not category.negatable or category.reason_code != "customer_request":
            return False
        if self._negation is not None and self._negation.search(normalised):
            return True
        return _ANY_POST_NEGATION.search(normalised) is not None

    def _declines(self, name: str, normalised: str) -> bool:
        """Whether a part of a message (normalised) declines what category ``name`` is about ("I don't want
        to dispute the charge", :data:`_NEGATED_INTENT`) or, for a sensitive topic, is a self-service question
        ("can I take over the previous tenant's account", :data:`_HOW_TO_QUESTION`), so the semantic layer does
        not match it there: the embedding model does not see the negation or the question. A request for a
        person is judged on the whole message instead (:meth:`_semantic_negated`)."""
        _, category = self._by_name[name]
        if not category.negatable or category.reason_code == "customer_request":
            return False
        if category.reason_code == "sensitive_topic" and _HOW_TO_QUESTION.search(normalised):
            return True
        return _NEGATED_INTENT.search(normalised) is not None

    def _semantic_margin(self) -> float:
        return self._rules.semantic.margin if self._rules.semantic is not None else DEFAULT_MARGIN

    def _semantic(self) -> SemanticMatcher | None:
        spec = self._rules.semantic
        if spec is None or self._matcher_failed:
            return None
        if self._matcher is not None:
            return self._matcher
        with self._matcher_lock:
            if self._matcher is None and not self._matcher_failed:
                try:
                    embedder = self._embedder
                    if embedder is None:
                        from service_kit.embedding import MiniLMModel

                        embedder = MiniLMModel.shared()
                    self._matcher = _shared_matcher(spec, embedder)
                except Exception as exc:  # a missing model package must not take the agent down
                    self._matcher_failed = True
                    _log.error("semantic escalation layer unavailable, rules only: %s", exc)
        return self._matcher

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

    def _first_match(
        self, category: TriggerCategory, text: str, hypothetical: list[tuple[int, int]]
    ) -> tuple[int, str] | None:
        earliest: tuple[int, str] | None = None
        for matcher in category.matchers:
            for match in matcher.finditer(text):
                if category.negatable and self._negated(text, match.start(), match.end()):
                    continue
                if any(start <= match.start() < end for start, end in hypothetical):
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
        # "I'm not going to sue", "I would never report you": the clause declines what the rule names.
        if words and _NEGATED_INTENT.search(" ".join([*words, text[start:end]])):
            return True
        after = text[end : end + 40]
        return _POST_NEGATION.search(after) is not None


_matchers_lock = threading.Lock()
_matchers: dict[tuple[SemanticExamples, int], tuple[Embedder, SemanticMatcher]] = {}


def _shared_matcher(spec: SemanticExamples, embedder: Embedder) -> SemanticMatcher:
    """One matcher per examples file content and embedder in the process (policies built again, e.g. per
    test or per server, do not embed the examples again)."""
    with _matchers_lock:
        found = _matchers.get((spec, id(embedder)))
        if found is None or found[0] is not embedder:
            found = (embedder, spec.build_matcher(embedder))
            _matchers[(spec, id(embedder))] = found
        return found[1]


def _hypothetical_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every hypothetical of ``text`` when it asks a question (:data:`_CONDITIONAL`): from the
    conditional word to the end of its clause."""
    if _QUESTION.search(text) is None:
        return []
    spans: list[tuple[int, int]] = []
    for conditional in _CONDITIONAL.finditer(text):
        end = _CONDITIONAL_END.search(text, conditional.end())
        spans.append((conditional.start(), end.start() if end else len(text)))
    return spans


def normalize_message(text: str) -> str:
    """NFKC, straight quotes, no zero-width characters, single spaces: what the triggers are matched on."""
    text = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH).translate(_QUOTES)
    return " ".join(text.split())


def undisguise(text: str) -> str:
    """The message with its disguise undone (look-alike letters, invisible characters, leetspeak, spelled-out
    and hyphenated words; :func:`~service_kit.text_normalise.normalise_for_matching`), quotes straightened,
    on one line: the triggers are matched on this as well as on :func:`normalize_message`."""
    return " ".join(normalise_for_matching(normalize_message(text)).split())


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


def _unit_float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise PolicyConfigError(f"{where}: must be a number from 0 to 1, got {value!r}")
    return float(value)


def _examples(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise PolicyConfigError(f"{where}: must be a non-empty list of example messages")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise PolicyConfigError(f"{where}[{index}]: must be a non-empty string, got {item!r}")
    return tuple(" ".join(str(item).split()) for item in value)


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
