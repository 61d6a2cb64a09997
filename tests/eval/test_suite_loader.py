"""The suite loader: a valid suite parses into the model; each malformed one names the file and the place."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from support_eval.suite import DEFAULT_ABSTAIN_PATTERNS, NO_TOOL, SuiteError, load_suite, parse_suite

VALID = """\
name: tiny
kb: kb
customer_id: cust-001
k: 4
thresholds: {hit_at_k: 0.8, latency_p95_ms: 500}
conversations:
  - id: refund
    turns:
      - message: How do refunds work?
        expect: {cite: refunds.md, abstain: false}
      - message: Where is ORD-12345?
        expect:
          tool: lookup_order_status
          tool_args: {order_id: ORD-12345}
          not_tool: [escalate_to_human]
  - id: other
    customer_id: cust-002
    turns:
      - message: I want a human
        expect: {priority: medium, tool: none, contains: [ticket], state: pending_human}
"""


def _write(tmp_path: Path, text: str, kb: bool = True) -> Path:
    if kb:
        (tmp_path / "kb").mkdir(exist_ok=True)
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


def test_valid_suite_loads(tmp_path: Path) -> None:
    suite = load_suite(_write(tmp_path, VALID))
    assert suite.name == "tiny"
    assert suite.kb_dir == (tmp_path / "kb").resolve()
    assert suite.k == 4
    assert suite.thresholds == {"hit_at_k": 0.8, "latency_p95_ms": 500.0}
    assert suite.abstain_patterns == DEFAULT_ABSTAIN_PATTERNS
    assert suite.turn_count == 3
    assert len(suite.suite_hash) == 64
    first, second = suite.conversations[0].turns
    assert first.expect.cite == ("refunds.md",)
    assert first.expect.abstain is False
    assert second.expect.tool_args == {"order_id": "ORD-12345"}
    assert second.expect.not_tool == ("escalate_to_human",)
    other = suite.conversations[1]
    assert other.customer_id == "cust-002"
    assert suite.conversations[0].customer_id == "cust-001"
    expect = other.turns[0].expect
    assert (expect.escalate, expect.priority, expect.tool, expect.state) == (
        True,
        "medium",
        NO_TOOL,
        "pending_human",
    )


def test_suite_hash_changes_with_content(tmp_path: Path) -> None:
    first = load_suite(_write(tmp_path, VALID)).suite_hash
    second = load_suite(_write(tmp_path, VALID.replace("k: 4", "k: 5"))).suite_hash
    assert first != second


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("name: tiny\n", "", "name: required"),
        ("k: 4", "k: 0", "k: expected an integer >= 1, got 0"),
        ("k: 4", "kk: 4", "suite: unknown key 'kk'"),
        ("hit_at_k: 0.8", "hit_rate: 0.8", "thresholds: unknown key 'hit_rate'"),
        ("hit_at_k: 0.8", "hit_at_k: 1.5", "thresholds.hit_at_k: a rate between 0 and 1"),
        ("hit_at_k: 0.8", "hit_at_k: high", "thresholds.hit_at_k: must be a number"),
        ("id: other", "id: refund", "conversations[1].id: duplicate id 'refund'"),
        ("id: other", "id: has space", "conversations[1].id: use letters"),
        ("customer_id: cust-001\n", "", "conversations[0].customer_id: required here"),
        (
            "priority: medium",
            "priority: urgent",
            "conversations[1].turns[0].expect.priority: expected one of",
        ),
        (
            "priority: medium",
            "priority: medium, escalate: false",
            "expect.priority: set, but escalate is false",
        ),
        (
            "expect:\n          tool: lookup_order_status\n",
            "expect:\n",
            "conversations[0].turns[1].expect.tool_args: needs `tool: <name>`",
        ),
        (
            "abstain: false",
            "abstain: maybe",
            "conversations[0].turns[0].expect.abstain: expected true or false",
        ),
        ("cite: refunds.md", "cites: refunds.md", "conversations[0].turns[0].expect: unknown key 'cites'"),
        (
            "priority: medium",
            "reason: angry",
            "expect.reason: expected one of conversation_limit, customer_request",
        ),
        (
            "priority: medium",
            "reason: customer_request, escalate: false",
            "expect.reason: set, but escalate is false",
        ),
        ("state: pending_human", "state: closed", "expect.state: expected one of bot, human, pending_human"),
        (
            "- message: I want a human",
            "- text: I want a human",
            "conversations[1].turns[0]: unknown key 'text'",
        ),
        ("not_tool: [escalate_to_human]", "not_tool: [lookup_order_status]", "is also the expected tool"),
        ("{order_id: ORD-12345}", "{order_id: [1, 2]}", "tool_args.order_id: only scalar values"),
    ],
)
def test_malformed_suite_names_the_place(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in VALID
    path = _write(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(SuiteError) as caught:
        load_suite(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nkb: kb\nconversations: [\n", "not valid YAML/JSON"),
        ("- just\n- a list\n", "suite: expected a mapping, got a list"),
        ("name: x\nkb: kb\nconversations: []\n", "conversations: must be a non-empty list"),
        (
            "name: x\nkb: kb\ncustomer_id: c\nconversations: [{id: a, turns: []}]\n",
            "conversations[0].turns: must be",
        ),
        (
            "name: x\nkb: kb\ncustomer_id: c\nconversations: [{id: a, turns: [{message: ''}]}]\n",
            "must not be empty",
        ),
        (
            "name: x\nkb: kb\ncustomer_id: c\nabstain_patterns: ['(']\nconversations: [{id: a, turns: [{message: m}]}]\n",
            "abstain_patterns[0]: invalid regular expression",
        ),
    ],
)
def test_malformed_documents(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SuiteError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_suite(_write(tmp_path, text))


def test_missing_kb_folder_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match=r"kb: folder .* does not exist"):
        load_suite(_write(tmp_path, VALID, kb=False))
    with pytest.raises(SuiteError, match="cannot read suite"):
        load_suite(tmp_path / "absent.yaml")


def test_json_suites_load_too(tmp_path: Path) -> None:
    (tmp_path / "kb").mkdir()
    path = tmp_path / "suite.json"
    path.write_text(
        '{"name": "j", "kb": "kb", "customer_id": "c", "conversations": [{"id": "a", "turns": [{"message": "hi"}]}]}'
    )
    assert load_suite(path).conversations[0].turns[0].message == "hi"


def test_the_documented_example_suite_is_valid() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "eval.md").read_text()
    example = doc.split("```yaml\n")[1].split("```")[0]
    suite = parse_suite(yaml.safe_load(example), base_dir=Path("/tmp"))
    assert suite.name == "our-help-center"
    assert suite.thresholds["latency_p95_ms"] == 2000
    expect = suite.conversations[0].turns[2].expect
    assert (expect.priority, expect.reason, expect.state) == ("medium", "customer_request", "pending_human")
