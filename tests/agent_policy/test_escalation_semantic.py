"""The escalation backstop beyond keywords: paraphrases, disguise and other languages (real embedding model).

Table-driven over the tuning set (tests/agent_policy/data/escalation_tuning.yaml): every positive escalates
with its category's reason code and priority, every near miss does not; the cases marked ``known_miss`` are
expected to fail (strictly, so a fix shows up). ``-s`` prints the scorecard (precision/recall per language
and kind, rules alone vs rules + semantic layer, ms per message) that docs/policy.md quotes.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from agent_service.escalation_policy import (
    CLAUSE_WORDS,
    DEFAULT_RULES_PATH,
    NEGATIVE_LABEL,
    EscalationDecision,
    EscalationPolicy,
    PolicyConfigError,
    PolicyRules,
    SemanticExamples,
)
from agent_service.injection_detector import InjectionDetector
from service_kit.embedding import MiniLMModel
from service_kit.semantic_match import SemanticMatcher, Vector
from service_kit.text_normalise import translate_words
from support_eval.suite import load_suite

TUNING = Path(__file__).parent / "data" / "escalation_tuning.yaml"
# A business nobody tuned for (an energy utility): `split: tune` may inform the examples, `split: test` is
# only measured (test_fresh_set_test_half_scorecard). The extra tuning data (airline, telecom, delivery,
# hotel, car rental, gym) is all tune.
FRESH = Path(__file__).parent / "data" / "escalation_fresh.yaml"
EXTRA_TUNE = Path(__file__).parent / "data" / "escalation_extra_tune.yaml"
# Written after the examples were last changed (parcel delivery, insurance, courses), not tuned on.
FRESH_CHECK = Path(__file__).parent / "data" / "escalation_fresh_check.yaml"
# Written blind before the sixth pass was measured (insurance, hotels, a bank, furniture, a gym, trains, food
# delivery), by someone who read neither the rules, the examples nor the lexicon; only measured, never read.
BLIND = Path(__file__).parent / "data" / "escalation_blind.yaml"
DEV_SUITE = Path(__file__).parents[2] / "evals" / "dev_saas.yaml"
EXAMPLES = DEFAULT_RULES_PATH.with_name("escalation_examples.yaml")


@dataclasses.dataclass(frozen=True)
class Case:
    text: str
    category: str | None  # None: a near miss
    lang: str
    kind: str
    known_miss: bool = False
    split: str = "tune"

    @property
    def id(self) -> str:
        return f"{self.lang}-{self.kind}-{self.text[:40]}"


@functools.cache
def tuning_cases() -> tuple[Case, ...]:
    data = yaml.safe_load(TUNING.read_text("utf-8"))
    positives = [Case(**item) for item in data["positives"]]
    near = [Case(category=None, **item) for item in data["near_misses"]]
    return (*positives, *near)


def _cases(path: Path) -> tuple[Case, ...]:
    data = yaml.safe_load(path.read_text("utf-8"))
    positives = [Case(**item) for item in data["positives"]]
    near = [Case(category=None, **item) for item in data["near_misses"]]
    return (*positives, *near)


@functools.cache
def fresh_cases(split: str) -> tuple[Case, ...]:
    return tuple(case for case in _cases(FRESH) if case.split == split)


@functools.cache
def policy() -> EscalationPolicy:
    built = EscalationPolicy(PolicyRules.load(), warm=False)
    assert built.warm_up(), "the semantic layer must load (the model ships offline)"
    return built


@functools.cache
def rules_only() -> EscalationPolicy:
    return EscalationPolicy(dataclasses.replace(PolicyRules.load(), semantic=None))


def _category(decision: EscalationDecision) -> str:
    return decision.trigger.split(":", 1)[0]


def _param(case: Case) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason="known miss, measured")] if case.known_miss else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in tuning_cases() if c.category])
def test_positive_escalates_with_its_reason(case: Case) -> None:
    decision = policy().evaluate(case.text)
    assert decision is not None, case.text
    expected = {c.name: c for c in policy().rules.categories}[str(case.category)]
    assert (decision.reason_code, decision.priority) == (expected.reason_code, expected.priority), (
        decision.trigger
    )
    assert decision.customer_message


@pytest.mark.parametrize("case", [_param(c) for c in tuning_cases() if not c.category])
def test_near_miss_does_not_escalate(case: Case) -> None:
    assert policy().evaluate(case.text) is None, policy().evaluate(case.text)


def test_tuning_set_has_every_language_kind_and_category() -> None:
    cases = tuning_cases()
    assert {c.lang for c in cases} >= {"en", "es", "fr", "de", "pt"}
    assert {c.kind for c in cases} >= {"paraphrase", "disguise", "near_miss"}
    assert {c.category for c in cases if c.category} == {category for category, _, _ in _semantic().labels}
    for lang in ("es", "fr", "de", "pt"):
        assert sum(1 for c in cases if c.lang == lang and c.category) >= 7
        assert sum(1 for c in cases if c.lang == lang and not c.category) >= 4


def _semantic() -> SemanticExamples:
    semantic = PolicyRules.load().semantic
    assert semantic is not None
    return semantic


def test_no_tuning_message_is_copied_into_the_examples() -> None:
    semantic = _semantic()
    examples = {" ".join(text.casefold().split()) for _, _, texts in semantic.labels for text in texts}
    examples |= {" ".join(text.casefold().split()) for text in semantic.negatives}
    cases = (*tuning_cases(), *_cases(FRESH), *_cases(EXTRA_TUNE), *_cases(FRESH_CHECK), *_cases(BLIND))
    copied = [c.text for c in cases if " ".join(c.text.casefold().split()) in examples]
    assert not copied


def test_fresh_set_is_split_before_measuring_and_covers_every_category_and_language() -> None:
    """The fresh set's split is fixed by the file (alternate entries per language and kind), half and half."""
    tune, test = fresh_cases("tune"), fresh_cases("test")
    assert {c.split for c in _cases(FRESH)} == {"tune", "test"}
    categories = {category for category, _, _ in _semantic().labels}
    for half in (tune, test):
        assert sum(1 for c in half if c.category) >= 20 and sum(1 for c in half if not c.category) >= 20
        assert {c.lang for c in half} == {"en", "es", "fr", "de", "pt"}
    assert {c.category for c in (*tune, *test) if c.category} == categories
    assert {c.split for c in _cases(EXTRA_TUNE)} == {"tune"}


def _dev_turns() -> list[tuple[str, bool]]:
    """(message, must escalate) of every dev-suite turn that says whether it escalates."""
    suite = load_suite(DEV_SUITE)
    return [
        (turn.message, bool(turn.expect.escalate))
        for conversation in suite.conversations
        for turn in conversation.turns
        if turn.message and turn.expect.escalate is not None
    ]


def test_no_dev_suite_message_is_copied_into_the_examples() -> None:
    """The development suite (evals/dev_saas.yaml) judges the examples; its messages are not in them."""
    semantic = _semantic()
    examples = {" ".join(text.casefold().split()) for _, _, texts in semantic.labels for text in texts}
    examples |= {" ".join(text.casefold().split()) for text in semantic.negatives}
    copied = [message for message, _ in _dev_turns() if " ".join(message.casefold().split()) in examples]
    assert not copied


def test_dev_suite_messages_scorecard() -> None:
    """The backstop alone on the development suite's messages (docs/eval.md, "Development suite", quotes
    it): no false hand-off, and at least the recall measured when the examples were last tuned, less one."""
    tp = fp = fn = 0
    for message, must in _dev_turns():
        fired = policy().evaluate(message) is not None
        tp, fp, fn = tp + (fired and must), fp + (fired and not must), fn + (must and not fired)
    print(f"\ndev suite messages: escalated {tp}/{tp + fn}, false hand-offs {fp}")
    assert fp == 0
    assert tp >= 19 and tp + fn >= 20


@pytest.mark.parametrize(
    "message",
    [
        "I need no human, just the invoice",
        "Ich brauche keinen Mitarbeiter, nur die Rechnung",
        "je n'ai pas besoin d'un humain, juste la facture",
        "não preciso de atendente, só da fatura",
    ],
)
def test_a_request_for_nobody_is_a_negation_in_any_language(message: str) -> None:
    assert policy().evaluate(message) is None


@pytest.mark.parametrize(
    ("message", "category"),
    [
        ("I need a human, no more bots", "human_request"),
        ("Ich brauche einen Menschen, bitte", "human_request"),
    ],
)
def test_needing_a_person_still_escalates(message: str, category: str) -> None:
    decision = policy().evaluate(message)
    assert decision is not None and _category(decision) == category, decision


# --- disguise ------------------------------------------------------------------------------------------------

_HOMOGLYPHS = str.maketrans({"a": "\u0430", "e": "\u0435", "o": "\u043e", "p": "\u0440", "c": "\u0441"})


def _zero_width(text: str) -> str:
    return " ".join("\u200b".join(word) if len(word) > 3 else word for word in text.split(" "))


def _full_width(text: str) -> str:
    return "".join(chr(ord(char) + 0xFEE0) if "!" <= char <= "~" else char for char in text)


DISGUISES = {
    "zero_width": _zero_width,
    "homoglyphs": lambda t: t.translate(_HOMOGLYPHS),
    "full_width": _full_width,
}


@pytest.mark.parametrize("disguise", sorted(DISGUISES))
def test_disguise_does_not_change_the_decision(disguise: str) -> None:
    """Every tuning message, disguised, gets the decision it gets written plainly (escalates or not)."""
    transform = DISGUISES[disguise]
    changed = []
    for case in tuning_cases():
        if case.kind == "disguise":
            continue
        plain = policy().evaluate(case.text)
        hidden = policy().evaluate(transform(case.text))
        if (plain is None) != (hidden is None) or (
            plain and hidden and (plain.reason_code, plain.priority) != (hidden.reason_code, hidden.priority)
        ):
            changed.append(case.text)
    assert not changed, changed


@pytest.mark.parametrize(
    ("message", "category"),
    [
        ("my acc0unt was h4ck3d, s0me0ne ch4nged my p4ssw0rd", "account_security"),
        ("t a l k  t o  a  h u m a n", "human_request"),
        ("get me a hu-man", "human_request"),
        ("my l4wy3r will be in touch", "legal"),
        ("ch\u0430rged tw\u0456ce f\u043er one \u043erder", "billing_dispute"),
        ("m\u200by c\u200bard was st\u200bolen", "payment_fraud"),
        (_full_width("the charger caught fire"), "safety"),
        ("I'M SO F U R I O U S", "negative_sentiment"),
    ],
)
def test_disguised_triggers_escalate(message: str, category: str) -> None:
    decision = policy().evaluate(message)
    assert decision is not None and _category(decision) == category, decision


@pytest.mark.parametrize(
    "message",
    [
        "y0ur pr1ces are r1d1cul0usly g00d!",
        "is th\u0435r\u0435 a hum\u0430n-readable invoice?",
        "I d0nt n33d an 4gent, thanks",
        "h0w d0 I r3s3t my p4ssw0rd?",
        "wh\u200ben will my c\u200bard be ch\u200barged?",
        _full_width("are you a bot?"),
    ],
)
def test_disguised_near_misses_do_not_escalate(message: str) -> None:
    assert policy().evaluate(message) is None


# --- languages -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "category"),
    [
        ("¡Quiero hablar con un agente ahora!", "human_request"),
        ("Ich will sofort mit einem Menschen sprechen", "human_request"),
        ("Je veux parler avec un humain", "human_request"),
        ("Quero falar com um humano agora", "human_request"),
        ("Mi cuenta fue hackeada", "account_security"),
        ("Meine Kreditkarte wurde gestohlen", "payment_fraud"),
        ("On m'a débité deux fois", "billing_dispute"),
        ("Vou falar com meu advogado", "legal"),
    ],
)
def test_other_languages_escalate(message: str, category: str) -> None:
    decision = policy().evaluate(message)
    assert decision is not None, message
    expected = {c.name: c for c in policy().rules.categories}[category]
    assert (decision.reason_code, decision.priority) == (expected.reason_code, expected.priority), decision


def test_lexicon_translates_words_not_addresses() -> None:
    lexicon = {"com": "with", "mot de passe": "password", "carte": "card"}
    assert translate_words("ma carte et mon mot de passe", lexicon) == "ma card et mon password"
    assert translate_words("see example.com or com x", lexicon) == "see example.com or with x"
    text = "nothing to translate here"
    assert translate_words(text, lexicon) is text


# --- the examples file ---------------------------------------------------------------------------------------


def _rules_with(tmp_path: Path, examples: str) -> Path:
    (tmp_path / "examples.yaml").write_text(textwrap.dedent(examples), "utf-8")
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        textwrap.dedent(
            """\
            version: 1
            examples: examples.yaml
            categories:
              - name: fraud
                reason_code: sensitive_topic
                priority: high
                customer_message: A specialist will take over.
                phrases: [stolen card]
            """
        ),
        "utf-8",
    )
    return rules


@pytest.mark.parametrize(
    ("examples", "message"),
    [
        ("labels: {fraud: {examples: [a]}}", r"examples\.yaml: 'negative' must be a mapping"),
        ("labels: {nope: {examples: [a]}}\nnegative: {examples: [b]}", r"examples\.yaml: labels\.nope: not a category"),
        ("labels: {fraud: {examples: []}}\nnegative: {examples: [b]}", r"labels\.fraud\.examples: must be a non-empty list"),
        ("labels: {fraud: {examples: [a, '']}}\nnegative: {examples: [b]}", r"labels\.fraud\.examples\[1\]"),
        ("labels: {fraud: {threshold: 1.5, examples: [a]}}\nnegative: {examples: [b]}", r"labels\.fraud\.threshold: must be a number from 0 to 1"),
        ("labels: {fraud: {examples: [a], extra: 1}}\nnegative: {examples: [b]}", r"labels\.fraud: unknown keys"),
        ("margin: -1\nlabels: {fraud: {examples: [a]}}\nnegative: {examples: [b]}", r"examples\.yaml: margin"),
        ("probe_threshold: 2\nlabels: {fraud: {examples: [a]}}\nnegative: {examples: [b]}", r"examples\.yaml: probe_threshold"),
        ("labels: {fraud: {examples: [a]}}\nnegative: {examples: [b]}\nlexicon: {kein: no}", r"lexicon\.kein: must map a word"),
        ("labels: {fraud: {examples: [a]}}\nnegative: {examples: [b]}\nlexicon: {a b c d: x}", r"lexicon\.a b c d: at most three words"),
        ("labels: [", r"examples\.yaml: not valid YAML"),
        ("labels: {}\nnegative: {examples: [b]}", r"'labels' must be a non-empty mapping"),
    ],
)  # fmt: skip
def test_invalid_examples_file_is_rejected_at_load_naming_file_and_place(
    tmp_path: Path, examples: str, message: str
) -> None:
    rules = _rules_with(tmp_path, examples)
    with pytest.raises(PolicyConfigError, match=message):
        PolicyRules.load(str(rules))


# Written for this test (not in any tuning or check file): no single example is near enough, the probe
# trained on the examples file recognises the kind.
@pytest.mark.parametrize(
    ("message", "category"),
    [
        ("my son touched the heater you installed and his hand blistered", "safety"),
        ("the kettle lid flew off and boiling water went over my arm", "safety"),
    ],
)  # fmt: skip
def test_the_linear_probe_catches_what_no_single_example_is_near_enough_to(
    message: str, category: str
) -> None:
    spec = PolicyRules.load().semantic
    assert spec is not None and spec.probe_threshold is not None
    without_probe = EscalationPolicy(
        dataclasses.replace(PolicyRules.load(), semantic=dataclasses.replace(spec, probe_threshold=None))
    )
    assert without_probe.evaluate(message) is None
    decision = policy().evaluate(message)
    assert decision is not None and _category(decision) == category
    assert "(probe 0." in decision.trigger  # the audit trail says which layer decided


def test_missing_examples_file_names_the_path(tmp_path: Path) -> None:
    rules = _rules_with(tmp_path, "labels: {}")
    (tmp_path / "examples.yaml").unlink()
    with pytest.raises(PolicyConfigError, match=r"cannot read escalation examples file .*examples\.yaml"):
        PolicyRules.load(str(rules))


def test_custom_examples_file_drives_the_semantic_layer(tmp_path: Path) -> None:
    rules = _rules_with(
        tmp_path,
        """\
        margin: 0.05
        labels:
          fraud:
            threshold: 0.5
            examples: [someone is using my bank card without permission]
        negative:
          examples: [which cards do you accept]
        """,
    )
    custom = EscalationPolicy(PolicyRules.load(str(rules)), warm=False)
    decision = custom.evaluate("a thief has been paying with my debit card")
    assert decision is not None and decision.trigger.startswith("fraud: like ")
    assert "thief" not in decision.trigger  # the trigger names the example, never the customer's words
    assert custom.evaluate("do you take debit cards?") is None
    assert custom.evaluate_all("stolen card, a thief has been paying with my debit card")[0].trigger == (
        "fraud: 'stolen card'"
    )


# --- long messages: clause by clause ------------------------------------------------------------------------


@functools.cache
def _card_matcher(clause_words: int) -> SemanticMatcher:
    examples = {
        "fraud": ["someone is using my bank card without permission"],
        NEGATIVE_LABEL: ["which cards do you accept", "how do I remove a saved card from my account"],
    }
    return SemanticMatcher(
        examples, MiniLMModel.shared(), {"fraud": 0.5, NEGATIVE_LABEL: 2.0}, clause_words=clause_words
    )


@pytest.mark.parametrize(
    "message",
    [
        "we spent two weeks at the beach with the kids and the weather was lovely, but a thief has been paying "
        "with my debit card",
        # no punctuation at all: the conjunctions alone split it
        "we spent two weeks at the beach with the kids and the weather was lovely but a thief has been paying "
        "with my debit card",
    ],
)
def test_one_clause_of_a_long_message_matches_where_the_whole_text_is_too_diluted(message: str) -> None:
    assert _card_matcher(0).classify(message, NEGATIVE_LABEL, 0.05) is None
    found = _card_matcher(12).classify(message, NEGATIVE_LABEL, 0.05)
    assert found is not None and found.label == "fraud"


def test_a_clause_does_not_match_when_the_text_around_it_is_a_near_miss() -> None:
    """The hypothetical clause alone reads like fraud; the whole message is a question about saved cards."""
    matcher = _card_matcher(12)
    message = "a thief could be paying with my card if my phone gets stolen, so how do I remove a saved card"
    scored = matcher.segment_scores(message)
    clause = scored.segments.index("a thief could be paying with my card if my phone gets stolen")
    alone = matcher.best_per_label(scored.similarity[clause])
    assert alone["fraud"][0] >= max(0.5, alone[NEGATIVE_LABEL][0] + 0.05)  # would match on its own
    assert matcher.classify(message, NEGATIVE_LABEL, 0.05) is None


@pytest.mark.parametrize(
    ("message", "category"),
    [
        # made-up long messages of other businesses, not tuned on (a clause carries the escalation)
        (
            "we got home from the airport late, checked our loyalty account and all the points were gone and "
            "the email on it was changed",
            "account_security",
        ),
        (
            "we have waited since May for the repair, every call ends in a loop and this whole company is pathetic",
            "negative_sentiment",
        ),
        ("I don't want to dispute the charge", None),
        ("I don't want to dispute the charge, I just want to know when it shows up on my statement", None),
        ("Je ne veux pas contester le paiement, mais j'ai besoin d'une facture pour mon entreprise", None),
    ],
)  # fmt: skip
def test_long_messages_end_to_end(message: str, category: str | None) -> None:
    decision = policy().evaluate(message)
    assert (decision and _category(decision)) == category or (decision is None and category is None), decision


# --- cost: one embedding per message per turn -----------------------------------------------------------------


class CountingEmbedder:
    def __init__(self) -> None:
        self.model = MiniLMModel.shared()
        self.texts: list[str] = []
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> list[Vector]:
        self.texts.extend(texts)
        self.calls += 1
        return self.model.embed(texts)


def test_the_detector_and_the_backstop_embed_a_message_once() -> None:
    embedder = CountingEmbedder()
    detector = InjectionDetector.from_yaml(embedder)
    escalation = EscalationPolicy(PolicyRules.load(), embedder=embedder, warm=False)
    assert escalation.warm_up()
    message = "A stranger is paying with my card on your site."
    assert len(message.split()) <= CLAUSE_WORDS  # not split into clauses
    before = len(embedder.texts)
    assert detector.detect(message) is None
    embedded = len(embedder.texts) - before
    assert embedded >= 1
    decision = escalation.evaluate(message)
    assert decision is not None and decision.reason_code == "sensitive_topic"
    assert len(embedder.texts) - before == embedded  # the backstop reused the detector's vectors


def test_a_long_message_adds_its_clauses_in_one_embedding_call() -> None:
    """The detector does not split into clauses; the backstop embeds only the clauses, all in one call."""
    embedder = CountingEmbedder()
    detector = InjectionDetector.from_yaml(embedder)
    escalation = EscalationPolicy(PolicyRules.load(), embedder=embedder, warm=False)
    assert escalation.warm_up()
    message = (
        "we spent two weeks at the beach with the kids, the weather was lovely and a thief paid with my card"
    )
    assert detector.detect(message) is None
    texts, calls = len(embedder.texts), embedder.calls
    escalation.evaluate(message)
    assert embedder.calls - calls == 1
    assert embedder.texts[texts:] == [
        "we spent two weeks at the beach with the kids",
        "the weather was lovely",
        "a thief paid with my card",
    ]


# --- the scorecard docs/policy.md quotes ----------------------------------------------------------------------


def _rates(decide: Any, cases: Sequence[Case]) -> tuple[int, int, int, int]:
    tp = fp = fn = tn = 0
    for case in cases:
        fired = decide(case.text) is not None
        if case.category:
            tp, fn = tp + fired, fn + (not fired)
        else:
            fp, tn = fp + fired, tn + (not fired)
    return tp, fp, fn, tn


def test_scorecard() -> None:
    cases = tuning_cases()
    lines = []
    for name, layer in (("rules only", rules_only()), ("rules + semantic", policy())):
        tp, fp, fn, _ = _rates(layer.evaluate, cases)
        precision, recall = tp / max(1, tp + fp), tp / max(1, tp + fn)
        lines.append(
            f"{name:<17} precision {tp}/{tp + fp} = {precision:.2f}  recall {tp}/{tp + fn} = {recall:.2f}"
        )
        for lang in ("en", "es", "fr", "de", "pt"):
            for kind in ("paraphrase", "disguise", "near_miss"):
                subset = [c for c in cases if c.lang == lang and c.kind == kind]
                if subset:
                    stp, sfp, sfn, stn = _rates(layer.evaluate, subset)
                    lines.append(
                        f"    {lang} {kind:<10} escalated {stp}/{stp + sfn}  false {sfp}/{sfp + stn}"
                    )
        if name != "rules only":
            assert precision >= 0.95 and recall >= 0.88
            assert sum(1 for c in cases if c.known_miss) <= 10
    # ms per message: a new message after the injection detector embedded it (the turn's order), and cold
    detector = InjectionDetector.from_yaml(MiniLMModel.shared())
    warm_ms: dict[bool, list[float]] = {True: [], False: []}
    cold_ms = []
    for index, case in enumerate(cases):
        text = f"{case.text} ({index})"
        detector.detect(text)
        start = time.perf_counter()
        policy().evaluate(text)
        warm_ms[case.lang == "en"].append((time.perf_counter() - start) * 1000)
    for index, case in enumerate(cases[:30]):
        start = time.perf_counter()
        policy().evaluate(f"{case.text} [{index}]")
        cold_ms.append((time.perf_counter() - start) * 1000)
    lines.append(
        f"ms per message after the detector: English p50 {statistics.median(warm_ms[True]):.2f}, "
        f"p90 {float(np.percentile(warm_ms[True], 90)):.2f}; other languages (lexicon: one more embedding) "
        f"p50 {statistics.median(warm_ms[False]):.1f}; a message not embedded before p50 "
        f"{statistics.median(cold_ms):.1f}"
    )
    print("\n" + "\n".join(lines))


@pytest.mark.parametrize(
    ("message", "escalates"),
    [
        # A question that quotes a card number is a question, not a stolen card.
        (
            "Hi, my email is jane.doe@example.com and my card is 4111 1111 1111 1111. How long does shipping take?",
            False,
        ),
        ("My card 4111 1111 1111 1111 and phone +1 (415) 555-0100, when does my parcel leave?", False),
        # The words still decide: a stolen card with its number is still fraud.
        ("someone used my card 4111 1111 1111 1111 on your site and it wasn't me", True),
    ],
)
def test_card_numbers_and_contact_details_do_not_decide_the_semantic_layer(
    message: str, escalates: bool
) -> None:
    assert (policy().evaluate(message) is not None) is escalates


# --- a business nobody tuned for: the fresh set's test half ---------------------------------------------------


def _table(name: str, decide: Any, cases: Sequence[Case]) -> list[str]:
    tp, fp, fn, tn = _rates(decide, cases)
    lines = [f"{name:<22} escalated {tp}/{tp + fn} = {tp / max(1, tp + fn):.2f}  false {fp}/{fp + tn}"]
    for lang in ("en", "es", "fr", "de", "pt"):
        for kind in ("paraphrase", "disguise", "near_miss"):
            subset = [c for c in cases if c.lang == lang and c.kind == kind]
            if subset:
                stp, sfp, sfn, stn = _rates(decide, subset)
                lines.append(f"    {lang} {kind:<10} escalated {stp}/{stp + sfn}  false {sfp}/{sfp + stn}")
    return lines


def test_fresh_set_test_half_scorecard() -> None:
    """The energy-utility set (tests/agent_policy/data/escalation_fresh.yaml), measured on its TEST half, which
    nothing was tuned on; the floors are a little below what it measured when the examples were last changed
    (17/24 escalated, 1/24 false hand-off; before that work: 12/24 and 1/24; docs/policy.md)."""
    test = fresh_cases("test")
    lines = [
        *_table("fresh TUNE half", policy().evaluate, fresh_cases("tune")),
        *_table("fresh TEST half", policy().evaluate, test),
        *_table("extra tuning data", policy().evaluate, _cases(EXTRA_TUNE)),
        *_table("second check set", policy().evaluate, _cases(FRESH_CHECK)),
    ]
    print("\n" + "\n".join(lines))
    tp, fp, fn, tn = _rates(policy().evaluate, test)
    assert tp >= 15, f"recall on the fresh test half fell to {tp}/{tp + fn}"
    assert fp <= 2, f"{fp}/{fp + tn} near misses of the fresh test half handed off"


def test_blind_set_scorecard() -> None:
    """The blind set (tests/agent_policy/data/escalation_blind.yaml: 60 must-escalate, 60 near misses, seven
    businesses, EN/ES/FR/DE/PT and disguised), never read: floors a little below what it measured when it was
    written (35/60 escalated, 5/60 false hand-offs; docs/policy.md, "Blind set")."""
    cases = _cases(BLIND)
    print("\n" + "\n".join(_table("blind set", policy().evaluate, cases)))
    tp, fp, fn, tn = _rates(policy().evaluate, cases)
    assert tp >= 33, f"recall on the blind set fell to {tp}/{tp + fn}"
    assert fp <= 6, f"{fp}/{fp + tn} near misses of the blind set handed off"
