"""The scorer on hand-made records with known outcomes: every metric's exact value."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support_eval import report, scorer
from support_eval.records import (
    ConversationRecord,
    EscalationRecord,
    SourceRecord,
    ToolCallRecord,
    TurnRecord,
)
from support_eval.suite import Expect, Suite, parse_suite

SUITE_DATA = {
    "name": "known outcomes",
    "kb": "kb",
    "customer_id": "cust-a",
    "k": 2,
    "thresholds": {"hit_at_k": 0.5, "tool_precision": 0.9, "latency_p95_ms": 100},
    "conversations": [
        {
            "id": "faq",
            "turns": [
                {
                    "message": "Can I get my money back?",
                    "expect": {"cite": ["refunds.md"], "abstain": False, "contains": ["30 days"]},
                },
                {
                    "message": "How long does delivery take?",
                    "expect": {"cite": ["shipping.md", "delivery.md"]},
                },
            ],
        },
        {
            "id": "orders",
            "turns": [
                {
                    "message": "Where is ORD-1?",
                    "expect": {
                        "tool": "lookup_order_status",
                        "tool_args": {"order_id": "ORD-1"},
                        "escalate": False,
                    },
                },
                {"message": "What's the weather?", "expect": {"abstain": True, "tool": "none"}},
                {
                    "message": "A human please",
                    "expect": {
                        "escalate": True,
                        "priority": "medium",
                        "reason": "customer_request",
                        "tool": "none",
                    },
                },
            ],
        },
        {
            "id": "angry",
            "customer_id": "cust-b",
            "turns": [
                {"message": "I am furious", "expect": {"priority": "high", "reason": "negative_sentiment"}},
                {"message": "thanks", "expect": {"escalate": False, "state": "pending_human"}},
            ],
        },
    ],
}


def _suite() -> Suite:
    return parse_suite(SUITE_DATA, base_dir=Path("/tmp"))


def _sources(*doc_ids: str) -> tuple[SourceRecord, ...]:
    return tuple(
        SourceRecord(doc_id, chunk_id=f"{doc_id}#{i}", distance=0.1 * i) for i, doc_id in enumerate(doc_ids)
    )


def _records() -> list[ConversationRecord]:
    lookup = ToolCallRecord("lookup_order_status", '{"order_id": "ORD-1"}', '{"status": "shipped"}')
    return [
        ConversationRecord(
            "faq",
            "eval-x-faq",
            "cust-a",
            (
                TurnRecord(
                    "Can I get my money back?",
                    reply="Refunds are accepted within 30 days.",
                    sources=_sources("refunds.md", "refunds.md", "shipping.md"),
                    latency_ms=10,
                ),
                TurnRecord(
                    "How long does delivery take?",
                    reply="See our FAQ.",
                    sources=_sources("faq.md", "payments.md", "shipping.md"),
                    latency_ms=20,
                ),
            ),
        ),
        ConversationRecord(
            "orders",
            "eval-x-orders",
            "cust-a",
            (
                TurnRecord("Where is ORD-1?", reply="It shipped.", tool_calls=(lookup,), latency_ms=30),
                TurnRecord(
                    "What's the weather?",
                    reply="I don't know that, sorry.",
                    tool_calls=(
                        ToolCallRecord("lookup_order_status", '{"order_id": "x"}', "", is_error=True),
                    ),
                    knowledge_gap=True,
                    latency_ms=40,
                ),
                TurnRecord(
                    "A human please",
                    reply="A colleague will take over.",
                    tool_calls=(
                        ToolCallRecord("escalate_to_human", '{"reason": "asked", "priority": "medium"}'),
                    ),
                    escalation=EscalationRecord("T-1", "medium", "customer_request"),
                    state="pending_human",
                    latency_ms=50,
                ),
            ),
        ),
        ConversationRecord(
            "angry",
            "eval-x-angry",
            "cust-b",
            (
                TurnRecord("I am furious", reply="I understand.", latency_ms=60),
                TurnRecord(
                    "thanks",
                    reply="Handing over.",
                    escalation=EscalationRecord("T-2", "high", "negative_sentiment"),
                    state="bot",
                    latency_ms=70,
                ),
            ),
        ),
    ]


def test_every_metric_has_its_exact_value() -> None:
    card = scorer.score(_suite(), _records())
    values = {name: metric.value for name, metric in card.metrics.items()}
    assert values == {
        "hit_at_k": pytest.approx(0.5),
        "mrr": pytest.approx((1 + 1 / 3) / 2),
        "tool_precision": pytest.approx(0.5),
        "tool_recall": pytest.approx(1.0),
        "tool_arg_accuracy": pytest.approx(1.0),
        "escalation_precision": pytest.approx(0.5),
        "escalation_recall": pytest.approx(0.5),
        "priority_accuracy": pytest.approx(0.5),
        "reason_accuracy": pytest.approx(0.5),
        "abstention_accuracy": pytest.approx(1.0),
        "text_pass_rate": pytest.approx(1.0),
        "state_accuracy": pytest.approx(0.0),
        "action_accuracy": None,
        "turn_pass_rate": pytest.approx(3 / 7),
        "expectation_pass_rate": pytest.approx(11 / 18),
        "error_rate": pytest.approx(0.0),
        "latency_p50_ms": pytest.approx(40.0),
        "latency_p95_ms": pytest.approx(70.0),
    }
    assert card.metrics["hit_at_k"].denominator == 2
    assert card.metrics["tool_precision"].denominator == 2


def test_failed_turns_name_each_failed_check() -> None:
    card = scorer.score(_suite(), _records())
    failed = {(o.conversation, o.turn_index): [f.check for f in o.failures] for o in card.failed_turns}
    assert failed == {
        ("faq", 1): ["cite"],
        ("orders", 1): ["tool"],
        ("angry", 0): ["escalate", "priority", "reason"],
        ("angry", 1): ["escalate", "state"],
    }
    cite = next(o for o in card.failed_turns if o.conversation == "faq").failures[0]
    assert "rank 3" in cite.detail and "['faq.md', 'payments.md', 'shipping.md']" in cite.detail


def test_escalation_tool_counts_only_when_named() -> None:
    data = {
        **SUITE_DATA,
        "conversations": [
            {
                "id": "c",
                "turns": [
                    {"message": "human", "expect": {"tool": "none"}},
                    {
                        "message": "human",
                        "expect": {"tool": "escalate_to_human", "tool_args": {"priority": "high"}},
                    },
                    {"message": "human", "expect": {"not_tool": ["escalate_to_human"]}},
                ],
            }
        ],
    }
    suite = parse_suite(data, base_dir=Path("/tmp"))
    call = ToolCallRecord("escalate_to_human", '{"reason": "x", "priority": "high"}')
    record = ConversationRecord(
        "c", "eval-c", "cust-a", tuple(TurnRecord("human", tool_calls=(call,)) for _ in range(3))
    )
    card = scorer.score(suite, [record])
    assert [o.passed for o in card.outcomes] == [True, True, False]
    assert card.value("tool_precision") == 1.0
    assert card.value("tool_arg_accuracy") == 1.0


def test_rpc_error_fails_every_expectation_of_its_turn() -> None:
    data = {
        **SUITE_DATA,
        "conversations": [
            {"id": "c", "turns": [{"message": "hi", "expect": {"escalate": False, "not_contains": ["x"]}}]}
        ],
    }
    suite = parse_suite(data, base_dir=Path("/tmp"))
    record = ConversationRecord(
        "c", "eval-c", "cust-a", (TurnRecord("hi", error="UNAVAILABLE: down", latency_ms=5),)
    )
    card = scorer.score(suite, [record])
    (outcome,) = card.outcomes
    assert [f.check for f in outcome.failures] == ["rpc", "escalate", "not_contains"]
    assert card.value("error_rate") == 1.0
    assert card.value("expectation_pass_rate") == 0.0
    assert card.value("turn_pass_rate") == 0.0


def test_every_expectation_field_has_exactly_one_checker() -> None:
    covered = [name for fields, _ in scorer._CHECKERS for name in fields]
    assert sorted(covered) == sorted(f.name for f in dataclasses.fields(Expect))


def test_tool_args_compare_as_text_and_reject_malformed_json() -> None:
    match = scorer._args_match
    assert match({"order_id": 12345}, {"order_id": "12345"})
    assert match({"order_id": "ORD-1", "extra": 1}, {"order_id": "ORD-1"})
    assert not match({"order_id": "ORD-2"}, {"order_id": "ORD-1"})
    assert not match({}, {"order_id": "ORD-1"})
    assert ToolCallRecord("t", "{not json").arguments is None
    assert ToolCallRecord("t", "[1]").arguments is None


def test_metrics_without_turns_are_none_and_miss_their_threshold() -> None:
    data = {**SUITE_DATA, "conversations": [{"id": "c", "turns": [{"message": "hi"}]}]}
    suite = parse_suite(data, base_dir=Path("/tmp"))
    card = scorer.score(
        suite, [ConversationRecord("c", "eval-c", "cust-a", (TurnRecord("hi", latency_ms=80),))]
    )
    assert card.value("hit_at_k") is None
    assert card.value("turn_pass_rate") == 1.0
    results = {r.metric: r for r in scorer.check_thresholds(card, suite.thresholds)}
    assert not results["hit_at_k"].met
    assert not results["tool_precision"].met
    assert results["latency_p95_ms"].met
    assert not results["latency_p95_ms"].minimum


def test_thresholds_on_known_outcomes() -> None:
    card = scorer.score(_suite(), _records())
    results = {r.metric: r.met for r in scorer.check_thresholds(card, _suite().thresholds)}
    assert results == {"hit_at_k": True, "tool_precision": False, "latency_p95_ms": True}


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([], 50, None),
        ([5.0], 95, 5.0),
        ([1, 2, 3, 4], 50, 2),
        ([1, 2, 3, 4], 95, 4),
        (list(range(1, 101)), 95, 95),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], pct: float, expected: float | None) -> None:
    assert scorer.percentile(values, pct) == expected


def test_scorecard_text_shows_failures_with_transcript_and_missed_thresholds() -> None:
    suite = _suite()
    records = _records()
    card = scorer.score(suite, records)
    thresholds = scorer.check_thresholds(card, suite.thresholds)
    info = report.RunInfo("run1", "2026-01-01T00:00:00+00:00", "ab" * 32, 3, "private stack", 1.5)
    text = report.format_scorecard(suite, card, records, thresholds, info)
    assert "retrieval hit@2" in text
    assert "--- orders turn 2" in text
    assert "FAILED tool: expected no tool call; got ['lookup_order_status']" in text
    # The transcript shows the conversation up to the failed turn, including the earlier turn's tool call.
    section = text.split("--- orders turn 2")[1].split("---")[0]
    assert "[1] customer: Where is ORD-1?" in section
    assert 'tool lookup_order_status({"order_id": "ORD-1"}) -> {"status": "shipped"}' in section
    assert "[2] customer: What's the weather?" in section
    assert "A human please" not in section
    assert "THRESHOLDS MISSED: tool_precision 0.500 (needs >= 0.900)" in text


def test_result_json_and_baseline_differences() -> None:
    suite = _suite()
    records = _records()
    card = scorer.score(suite, records)
    thresholds = scorer.check_thresholds(card, suite.thresholds)
    info = report.RunInfo("run2", "2026-01-02T00:00:00+00:00", "cd" * 32, 3, "private stack", 1.0)
    result = json.loads(report.dumps(report.build_result(suite, card, records, thresholds, info)))
    assert result["passed"] is False
    assert result["metrics"]["mrr"]["value"] == pytest.approx(2 / 3)
    assert result["kb"]["version"] == "cd" * 32
    assert result["conversations"][1]["turns"][1]["failures"][0]["check"] == "tool"

    baseline = json.loads(json.dumps(result))
    baseline["run_id"] = "run1"
    baseline["model"] = "offline"
    baseline["kb"]["version"] = "ef" * 32
    baseline["metrics"]["mrr"]["value"] = 1.0
    baseline["metrics"]["latency_p95_ms"]["value"] = 90.0
    diff = report.format_baseline_diff(result, baseline)
    lines = {line.split()[0]: line for line in diff.splitlines() if line.strip()}
    assert "WORSE" in lines["mrr"] and "-0.333" in lines["mrr"]
    assert "better" in lines["latency_p95_ms"]
    assert lines["hit_at_k"].split()[1:] == ["0.500", "0.500", "+0.000"]
    assert "kb changed: efefefefefef -> cdcdcdcdcdcd" in diff
    assert "model changed: offline -> unknown" in diff


_names = st.sampled_from(["lookup_order_status", "escalate_to_human", "other_tool"])
_docs = st.sampled_from(["a.md", "b.md", "c.md", "d.md"])
_turn_records = st.builds(
    TurnRecord,
    message=st.just("m"),
    reply=st.sampled_from(["", "I don't know.", "Within 30 days.", "ok"]),
    tool_calls=st.lists(st.builds(ToolCallRecord, name=_names), max_size=3).map(tuple),
    escalation=st.none()
    | st.builds(
        EscalationRecord, ticket_id=st.just("T"), priority=st.sampled_from(["low", "medium", "high"])
    ),
    sources=st.lists(st.builds(SourceRecord, doc_id=_docs), max_size=4).map(tuple),
    state=st.sampled_from(["bot", "pending_human"]),
    latency_ms=st.floats(min_value=0, max_value=1e4),
    error=st.none() | st.just("UNAVAILABLE: x"),
)
_expects = st.fixed_dictionaries(
    {},
    optional={
        "cite": st.lists(_docs, min_size=1, max_size=2),
        "tool": st.sampled_from(["none", "lookup_order_status", "escalate_to_human"]),
        "escalate": st.booleans(),
        "abstain": st.booleans(),
        "contains": st.lists(st.sampled_from(["30 days", "know"]), min_size=1, max_size=2),
        "state": st.sampled_from(["bot", "pending_human"]),
    },
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_expects, _turn_records), min_size=1, max_size=8))
def test_metrics_stay_consistent_on_any_records(turns: list[tuple[dict[str, object], TurnRecord]]) -> None:
    data = {
        "name": "p",
        "kb": "kb",
        "customer_id": "c",
        "conversations": [{"id": "c", "turns": [{"message": "m", "expect": expect} for expect, _ in turns]}],
    }
    suite = parse_suite(data, base_dir=Path("/tmp"))
    card = scorer.score(suite, [ConversationRecord("c", "eval-c", "c", tuple(record for _, record in turns))])
    for name, metric in card.metrics.items():
        if name.endswith("_ms"):
            assert metric.value is not None and metric.value >= 0
        elif metric.value is not None:
            assert 0.0 <= metric.value <= 1.0, name
    assert card.value("turn_pass_rate") == pytest.approx(sum(o.passed for o in card.outcomes) / len(turns))
    assert card.value("error_rate") == pytest.approx(sum(r.error is not None for _, r in turns) / len(turns))
    assert all(not o.passed for o, (_, r) in zip(card.outcomes, turns, strict=True) if r.error is not None)
    hit, mrr = card.value("hit_at_k"), card.value("mrr")
    assert (hit is None) == (mrr is None)
    if mrr is not None and hit is not None:
        # A hit contributes at least 1/k to the reciprocal ranks; a miss at most 1/(k+1).
        assert mrr >= hit / suite.k - 1e-9
        assert mrr <= hit + (1 - hit) / (suite.k + 1) + 1e-9
