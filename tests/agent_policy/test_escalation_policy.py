"""Escalation policy: every default trigger and its near misses, precedence, negation, custom rules files."""

from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_service.escalation_policy import (
    DEFAULT_RULES_PATH,
    REASON_CODES,
    EscalationDecision,
    EscalationPolicy,
    PolicyConfigError,
    PolicyRules,
)
from agent_service.turn_outcome import TurnFacts, TurnOutcome, decide_outcome


@functools.cache
def default_policy() -> EscalationPolicy:
    return EscalationPolicy(PolicyRules.load())


@pytest.fixture
def policy() -> EscalationPolicy:
    return default_policy()


# (message, reason code, priority, category that must be named in the trigger)
FIRES = [
    # the seed's example
    (
        "This is ridiculous, I was promised next-day delivery!",
        "negative_sentiment",
        "high",
        "negative_sentiment",
    ),
    # explicit request for a human
    ("I want to talk to a human", "customer_request", "medium", "human_request"),
    ("Can I speak to a real person please?", "customer_request", "medium", "human_request"),
    ("Please transfer me to an agent", "customer_request", "medium", "human_request"),
    ("human", "customer_request", "medium", "human_request"),
    ("Agent please!", "customer_request", "medium", "human_request"),
    ("I need a supervisor", "customer_request", "medium", "human_request"),
    (
        "I have not been able to reach a human, let me talk to a person",
        "customer_request",
        "medium",
        "human_request",
    ),
    ("Is there a human I can chat with?", "customer_request", "medium", "human_request"),
    ("Please escalate this", "customer_request", "medium", "human_request"),
    # anger, frustration, abuse
    ("this is unacceptable", "negative_sentiment", "high", "negative_sentiment"),
    ("Your service is a joke", "negative_sentiment", "high", "negative_sentiment"),
    ("I'm so frustrated with this order", "negative_sentiment", "high", "negative_sentiment"),
    ("I am absolutely furious", "negative_sentiment", "high", "negative_sentiment"),
    ("I'm sick and tired of waiting", "negative_sentiment", "high", "negative_sentiment"),
    ("WTF where is my package", "negative_sentiment", "high", "negative_sentiment"),
    ("Worst customer service ever.", "negative_sentiment", "high", "negative_sentiment"),
    ("I'm really upset about this", "negative_sentiment", "high", "negative_sentiment"),
    ("My order is ridiculous! 10 days late!", "negative_sentiment", "high", "negative_sentiment"),
    # billing disputes
    ("I was charged twice for my order", "sensitive_topic", "high", "billing_dispute"),
    ("I want to dispute this charge", "sensitive_topic", "high", "billing_dispute"),
    ("I'm filing a chargeback with my bank", "sensitive_topic", "high", "billing_dispute"),
    ("You double-charged me", "sensitive_topic", "high", "billing_dispute"),
    ("I was overcharged for shipping", "sensitive_topic", "high", "billing_dispute"),
    ("I'm still being charged after I cancelled", "sensitive_topic", "high", "billing_dispute"),
    ("There's a charge on my card I don't recognize", "sensitive_topic", "high", "billing_dispute"),
    ("I don't recognise this payment", "sensitive_topic", "high", "billing_dispute"),
    # account security
    ("my account was hacked", "sensitive_topic", "high", "account_security"),
    ("My Account Has Been Compromised", "sensitive_topic", "high", "account_security"),
    ("someone logged into my account", "sensitive_topic", "high", "account_security"),
    ("There is an unauthorized purchase on my card", "sensitive_topic", "high", "account_security"),
    ("I didn't make this purchase", "sensitive_topic", "high", "account_security"),
    ("I think I was hacked", "sensitive_topic", "high", "account_security"),
    ("someone changed my password", "sensitive_topic", "high", "account_security"),
    # legal
    ("My attorney will be in touch", "sensitive_topic", "high", "legal"),
    ("I'll have my lawyer contact you", "sensitive_topic", "high", "legal"),
    ("I'm going to call my lawyer", "sensitive_topic", "high", "legal"),
    ("I will sue you", "sensitive_topic", "high", "legal"),
    ("We will take legal action", "sensitive_topic", "high", "legal"),
    ("This is a GDPR request for all my personal data", "sensitive_topic", "high", "legal"),
    ("Under GDPR, delete my data", "sensitive_topic", "high", "legal"),
    ("See you in small claims court", "sensitive_topic", "high", "legal"),
    # Unicode tricks do not hide a trigger
    ("my account was hac\u200bked", "sensitive_topic", "high", "account_security"),
    ("I\u2019m going to sue you", "sensitive_topic", "high", "legal"),
]

NEAR_MISSES = [
    "how do I reset my password",
    "I forgot my password",
    "how do refunds work",
    "what is your billing address",
    "How do I update my billing info?",
    "is there a human-readable invoice",
    "I love this, ridiculous good price",
    "This is ridiculously cheap",
    "can I talk about shipping?",
    "I don't need a human",
    "I don't want to talk to a human, just tell me the shipping cost",
    "Talking to a human is not necessary",
    "No need to transfer me to an agent",
    "Are you a bot?",
    "Does delivery need a person to sign?",
    "Is there a charge for express shipping?",
    "When will I be charged for my preorder?",
    "Are you GDPR compliant?",
    "what is your legal name",
    "My friend Sue ordered this for me",
    "I'm not angry, just asking about delivery",
    "I feel like an idiot, I forgot my password",
    "Is two-factor authentication available?",
    "Where is my order ORD-10023?",
    "Thanks, that was really helpful!",
    "I'm upset that the color is different from the picture",
    "I'm a bit disappointed with the quality",
    "This jacket is insane value",
    "These shoes are ridiculous comfortable",
    "My lawyer friend recommended your store",
    "Is this product legal to ship to Australia?",
    "Hacked together a shelf with your brackets, works great",
    "Can I talk to you about a return?",
    "I'd like to speak about my refund",
    "I think someone may have guessed my password, how do I change it?",
    "Is customer service open on weekends?",
    "",
]


@pytest.mark.parametrize(("message", "reason", "priority", "category"), FIRES)
def test_trigger_fires(
    policy: EscalationPolicy, message: str, reason: str, priority: str, category: str
) -> None:
    decision = policy.evaluate(message)
    assert decision is not None, message
    assert (decision.reason_code, decision.priority) == (reason, priority)
    assert decision.trigger.startswith(f"{category}: ")
    assert decision.customer_message
    assert "{" not in decision.customer_message and "_" not in decision.customer_message


@pytest.mark.parametrize("message", NEAR_MISSES)
def test_near_miss_does_not_fire(policy: EscalationPolicy, message: str) -> None:
    assert policy.evaluate(message) is None


def test_table_is_large_enough() -> None:
    assert len(FIRES) >= 8 and len(NEAR_MISSES) >= 8
    categories = {category for *_, category in FIRES}
    assert categories == {
        "human_request",
        "negative_sentiment",
        "billing_dispute",
        "account_security",
        "legal",
    }


def test_acceptance_examples(policy: EscalationPolicy) -> None:
    hacked = policy.evaluate("my account was hacked")
    assert hacked == EscalationDecision(
        reason_code="sensitive_topic",
        priority="high",
        trigger="account_security: 'account was hacked'",
        customer_message=hacked.customer_message if hacked else "",
    )
    assert policy.evaluate("how do I reset my password") is None


@pytest.mark.parametrize(
    ("message", "expected_category"),
    [
        # sentiment beats a request for a human
        ("This is ridiculous! Let me speak to a manager", "negative_sentiment"),
        # a sensitive topic beats a request for a human
        ("I want a human, I was charged twice", "billing_dispute"),
        # a sensitive topic beats sentiment at the same priority, wherever it appears
        ("I'm furious, my account was hacked", "account_security"),
        ("My account was hacked and this is unacceptable", "account_security"),
    ],
)
def test_precedence(policy: EscalationPolicy, message: str, expected_category: str) -> None:
    decision = policy.evaluate(message)
    assert decision is not None
    assert decision.trigger.startswith(expected_category + ":")
    assert decision.priority == "high"


def test_the_strongest_category_wins_when_several_fire(policy: EscalationPolicy) -> None:
    decision = policy.evaluate("This is ridiculous, I was charged twice, get me a human")
    assert decision is not None and decision.trigger.startswith("billing_dispute:")


def test_negation_is_scoped_to_the_clause(policy: EscalationPolicy) -> None:
    assert policy.evaluate("I don't want a bot, I want a human") is not None
    assert policy.evaluate("I don't know why, but let me talk to a person") is not None
    assert policy.evaluate("I do not need to speak to an agent") is None


@pytest.mark.parametrize(
    "message",
    [
        "I don't want to dispute the charge",
        "I'm not going to sue anyone, I just need last year's invoices",
        "No quiero reclamar el cobro, solo necesito la factura",
        "je ne veux pas porter plainte, j'ai juste besoin de la facture",
        "Ich will keine Beschwerde einreichen, aber wie ändere ich mein Passwort?",
        "Não quero processar ninguém, só preciso da nota fiscal",
    ],
)
def test_declining_what_a_category_is_about_does_not_escalate(policy: EscalationPolicy, message: str) -> None:
    """Neither the rules nor the semantic layer (whose model does not see the negation) hand off a
    message whose clause declines the dispute, lawsuit or complaint it names."""
    assert policy.evaluate(message) is None, policy.evaluate(message)


@pytest.mark.parametrize(
    ("message", "category"),
    [
        # a negated fact, not a negated wish
        ("I don't recognise this charge", "billing_dispute"),
        ("I never wanted this subscription and you charged me anyway", "billing_dispute"),
        # a refusal is a complaint
        ("I will not stop until you refund the double charge", "billing_dispute"),
        ("I'm never going to use your service again, you are useless", "negative_sentiment"),
        # the declining clause does not shield the other one
        ("I don't want excuses, someone is using my card", "payment_fraud"),
        # a conditional outside a question is a threat or a demand
        ("Voy a hablar con mi abogado si no me devuelven el dinero", "legal"),
        # what happened is outside the hypothetical
        ("My card was stolen, what should I do if they use it?", "payment_fraud"),
        ("can I talk to a human if the bot can't help?", "human_request"),
    ],
)
def test_a_negated_fact_a_refusal_or_a_fact_beside_a_hypothetical_still_escalates(
    policy: EscalationPolicy, message: str, category: str
) -> None:
    decision = policy.evaluate(message)
    assert decision is not None and decision.trigger.startswith(category + ":"), decision


@pytest.mark.parametrize(
    "message",
    [
        "if someone hacked my account, what should I do and who should I contact first",
        "what happens if somebody steals my phone and uses my saved card to buy things",
        "what would I do if I was charged twice for the same order, is there a form for that",
        "if the battery ever overheated or caught fire, does the warranty cover it",
        "what if I want to talk to a human later, is that possible?",
        "what happens if my credit card was stolen?",
        "Was passiert, wenn jemand mein Passwort herausfindet und sich einloggt?",
        "Que se passe-t-il si quelqu'un utilise ma carte sur votre site ?",
    ],
)
def test_a_hypothetical_question_does_not_escalate(policy: EscalationPolicy, message: str) -> None:
    assert policy.evaluate(message) is None, policy.evaluate(message)


def test_trigger_text_is_redacted_and_bounded(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        textwrap.dedent(
            """\
            version: 1
            categories:
              - name: contact
                reason_code: customer_request
                priority: low
                customer_message: A person will contact you.
                patterns: ['call me at .{0,200}']
            """
        )
    )
    decision = EscalationPolicy(PolicyRules.load(str(rules))).evaluate(
        "call me at alice@example.org or +1 415 555 0100 " + "x" * 100
    )
    assert decision is not None
    assert "alice@example.org" not in decision.trigger
    assert "415 555 0100" not in decision.trigger
    assert len(decision.trigger) <= len("contact: ''") + 60


def test_custom_rules_file(tmp_path: Path) -> None:
    rules = tmp_path / "custom.yaml"
    rules.write_text(
        textwrap.dedent(
            """\
            version: 1
            negation: {cues: ["no"], window_words: 2}
            categories:
              - name: warranty
                reason_code: sensitive_topic
                priority: medium
                customer_message: A warranty specialist will take over.
                phrases: [warranty claim]
              - name: ask_for_human
                reason_code: customer_request
                priority: low
                customer_message: Connecting you now.
                phrases: [operator]
                negatable: false
            outcomes:
              low_confidence: {priority: medium, customer_message: Let me find someone who knows.}
            """
        )
    )
    policy = EscalationPolicy(PolicyRules.load(str(rules)))
    claim = policy.evaluate("I'd like to open a Warranty   Claim")
    assert claim is not None
    assert (claim.reason_code, claim.priority, claim.customer_message) == (
        "sensitive_topic",
        "medium",
        "A warranty specialist will take over.",
    )
    assert policy.evaluate("no warranty claim needed") is None
    assert policy.evaluate("no operator") is not None  # negatable: false
    # defaults are gone: the file replaces the packaged rules
    assert policy.evaluate("my account was hacked") is None
    # precedence: medium beats low
    both = policy.evaluate("operator, warranty claim")
    assert both is not None and both.trigger.startswith("warranty:")
    # configured and default outcomes
    assert policy.decision_for("low_confidence", "no answer").priority == "medium"
    assert (
        policy.decision_for("low_confidence", "no answer").customer_message
        == "Let me find someone who knows."
    )
    assert policy.decision_for("loop_limit", "rounds").priority == "medium"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("[]", "top level"),
        ("version: 2\ncategories: []", "version"),
        ("categories: []", "non-empty"),
        ("categories: [{name: x, reason_code: angry, priority: high, customer_message: m, phrases: [a]}]", "reason_code"),
        ("categories: [{name: x, reason_code: customer_request, priority: urgent, customer_message: m, phrases: [a]}]", "priority"),
        ("categories: [{name: x, reason_code: customer_request, priority: low, customer_message: m}]", "at least one"),
        ("categories: [{name: x, reason_code: customer_request, priority: low, customer_message: m, patterns: ['(']}]", "not a valid regex"),
        ("categories: [{name: x, reason_code: customer_request, priority: low, customer_message: m, patterns: ['a*']}]", "empty string"),
        ("categories: [{name: x, reason_code: customer_request, priority: low, customer_message: '', phrases: [a]}]", "customer_message"),
        ("categories: [{name: x, reason_code: customer_request, priority: low, customer_message: m, phrases: [a], extra: 1}]", "unknown keys"),
        ("categories: [{name: x, reason_code: customer_request, priority: low, customer_message: m, phrases: [a]}, {name: x, reason_code: customer_request, priority: low, customer_message: m, phrases: [b]}]", "duplicate"),
        ("categories: [{name: x, reason_code: customer_request, priority: low, customer_message: m, phrases: [a]}]\noutcomes: {nope: {priority: low, customer_message: m}}", "unknown reason code"),
        ("categories: [{name: x, reason_code: customer_request, priority: low, customer_message: m, phrases: [a]}]\nnegation: {window_words: 99}", "window_words"),
        ("categories: [", "not valid YAML"),
    ],
)  # fmt: skip
def test_invalid_rules_are_rejected_with_a_clear_message(document: str, message: str) -> None:
    with pytest.raises(PolicyConfigError, match=message):
        PolicyRules.from_yaml(document)


def test_missing_rules_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PolicyConfigError, match=r"nope\.yaml"):
        PolicyRules.load(str(missing))


def test_packaged_rules_load_and_cover_every_reason_code() -> None:
    rules = PolicyRules.load()
    assert rules == PolicyRules.load(str(DEFAULT_RULES_PATH))
    assert {category.reason_code for category in rules.categories} == {
        "customer_request",
        "negative_sentiment",
        "sensitive_topic",
    }
    assert set(rules.outcomes) == set(REASON_CODES)


def _facts(knowledge_gap: bool, used_tools: bool) -> TurnFacts:
    return TurnFacts(
        answered=True,
        model_escalated=False,
        policy_triggered=False,
        tools_kept_failing=False,
        knowledge_gap=knowledge_gap,
        used_tools=used_tools,
        reply_empty=False,
    )


def test_no_answer_rule(policy: EscalationPolicy) -> None:
    assert decide_outcome(_facts(knowledge_gap=True, used_tools=False)) is TurnOutcome.DONT_KNOW
    assert decide_outcome(_facts(knowledge_gap=True, used_tools=True)) is TurnOutcome.ANSWER
    assert decide_outcome(_facts(knowledge_gap=False, used_tools=False)) is TurnOutcome.ANSWER
    decision = policy.decision_for("low_confidence", "nothing relevant in the KB and no tool helped")
    assert (decision.reason_code, decision.priority) == ("low_confidence", "low")
    assert "support team" in decision.customer_message


@pytest.mark.parametrize("reason", REASON_CODES)
def test_decision_for_every_reason_code(policy: EscalationPolicy, reason: str) -> None:
    decision = policy.decision_for(reason, "why")  # type: ignore[arg-type]
    assert decision.reason_code == reason and decision.trigger == "why"
    assert decision.priority in ("low", "medium", "high") and decision.customer_message
    assert policy.decision_for(reason, "why", priority="high").priority == "high"  # type: ignore[arg-type]


def test_decision_for_rejects_unknown_values(policy: EscalationPolicy) -> None:
    with pytest.raises(ValueError, match="reason code"):
        policy.decision_for("bored", "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="priority"):
        policy.decision_for("loop_limit", "x", priority="urgent")  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_evaluate_never_raises_and_is_deterministic(message: str) -> None:
    policy = default_policy()
    first = policy.evaluate(message)
    assert first == policy.evaluate(message)
    if first is not None:
        assert first.reason_code in REASON_CODES


def test_long_messages_are_bounded(policy: EscalationPolicy) -> None:
    decision = policy.evaluate("a " * 200_000 + "my account was hacked")
    assert decision is None  # beyond MAX_EVALUATED_CHARS; the input guardrail rejects such messages first
    assert policy.evaluate("my account was hacked " + "a " * 200_000) is not None


@pytest.mark.parametrize(("message", "reason", "priority", "category"), FIRES)
def test_triggers_survive_case_and_spacing(
    policy: EscalationPolicy, message: str, reason: str, priority: str, category: str
) -> None:
    variants = [message.upper(), message.lower(), "  ".join(message.split())]
    if len(message.split()) > 2:  # a bare "human" / "agent please" only counts as the whole message
        variants.append(f"Hello.\n{message}\nThanks")
    for variant in variants:
        decision = policy.evaluate(variant)
        assert decision is not None, variant
        assert decision.trigger.startswith(f"{category}: ") and decision.priority == priority
