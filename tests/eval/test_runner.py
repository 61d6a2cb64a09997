"""The runner against in-process fake services: driver, KB ingestion, CLI output, JSON, baseline, exit codes."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devstack import free_port
from support_eval import driver, kb
from support_eval.suite import load_suite
from tests.eval.fakes import FakeStack, start_fake_stack

TINY = """\
name: tiny-fake
kb: kb
customer_id: cust-001
thresholds:
  turn_pass_rate: 1.0
  tool_arg_accuracy: 1.0
conversations:
  - id: refund
    turns:
      - message: How do refunds work?
        expect: {cite: [refunds.md], contains: ["30 days"], abstain: false}
      - message: Where is ORD-12345?
        expect: {tool: lookup_order_status, tool_args: {order_id: ORD-12345}}
  - id: other
    customer_id: cust-002
    turns:
      - message: I want a human
        expect: {escalate: true, priority: high}
      - message: What is the meaning of life?
        expect: {abstain: true, tool: none}
"""


@pytest.fixture
async def fake_stack() -> AsyncIterator[FakeStack]:
    stack = await start_fake_stack()
    yield stack
    await stack.server.stop(None)


@pytest.fixture
def tiny_suite(tmp_path: Path) -> Path:
    (tmp_path / "kb" / "help").mkdir(parents=True)
    (tmp_path / "kb" / "refunds.md").write_text("# Refunds\nWithin 30 days.\n")
    (tmp_path / "kb" / "help" / "shipping.html").write_text("<h1>Shipping</h1><p>5-7 days</p>")
    (tmp_path / "kb" / "notes.pdf").write_bytes(b"%PDF ignored")
    (tmp_path / "kb" / ".hidden.md").write_text("ignored")
    path = tmp_path / "suite.yaml"
    path.write_text(TINY)
    return path


async def _cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "support_eval",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def test_kb_reading_and_version(tiny_suite: Path) -> None:
    files = kb.read_kb(tiny_suite.parent / "kb")
    assert [(f.doc_id, f.content_type) for f in files] == [
        ("help/shipping.html", "html"),
        ("refunds.md", "markdown"),
    ]
    version = kb.kb_version(files)
    assert version == kb.kb_version(list(reversed(files)))
    (tiny_suite.parent / "kb" / "refunds.md").write_text("# Refunds\nWithin 14 days.\n")
    assert kb.kb_version(kb.read_kb(tiny_suite.parent / "kb")) != version
    (tiny_suite.parent / "empty-folder-that-exists-later").mkdir()
    with pytest.raises(kb.KnowledgeBaseError, match=r"no \.md, \.txt or \.html files"):
        kb.read_kb(tiny_suite.parent / "empty-folder-that-exists-later")


async def test_driver_sends_identity_fresh_ids_and_records_errors(
    fake_stack: FakeStack, tiny_suite: Path
) -> None:
    suite = load_suite(tiny_suite)
    first = await driver.run_suite(suite, fake_stack.addr, call_timeout=5)
    second = await driver.run_suite(suite, fake_stack.addr, call_timeout=5, concurrency=2)
    assert [r.spec_id for r in first] == ["refund", "other"] == [r.spec_id for r in second]
    assert first[0].conversation_id != second[0].conversation_id
    sent = [
        (customer, request.conversation_id, request.turn_id)
        for customer, request in fake_stack.agent.requests[:4]
    ]
    conversation = first[0].conversation_id
    assert sent[0] == ("cust-001", conversation, f"{conversation}-t0")
    assert sent[1] == ("cust-001", conversation, f"{conversation}-t1")
    assert {customer for customer, _, _ in sent[2:]} == {"cust-002"}
    turn = first[0].turns[1]
    assert turn.tool_calls[0].arguments == {"order_id": "ORD-12345"}
    assert turn.model == "fake-model" and turn.latency_ms > 0 and turn.error is None
    escalation = first[1].turns[0].escalation
    assert escalation is not None and (escalation.priority, escalation.reason) == (
        "medium",
        "customer_request",
    )
    assert first[1].turns[0].state == "pending_human"

    suite_with_error = load_suite(_rewrite(tiny_suite, "I want a human", "boom"))
    records = await driver.run_suite(suite_with_error, fake_stack.addr, call_timeout=5, only=["other"])
    assert [r.spec_id for r in records] == ["other"]
    assert records[0].turns[0].error == "INTERNAL: internal error"
    assert records[0].turns[1].error is None


def _rewrite(path: Path, old: str, new: str) -> Path:
    copy = path.with_name("rewritten.yaml")
    copy.write_text(path.read_text().replace(old, new))
    return copy


@pytest.mark.slow
async def test_cli_reports_failed_expectation_with_transcript_and_exits_1(
    fake_stack: FakeStack, tiny_suite: Path, tmp_path: Path
) -> None:
    out = tmp_path / "result.json"
    code, stdout, stderr = await _cli(
        str(tiny_suite), "--target", fake_stack.addr, "--retrieval-addr", fake_stack.addr, "--out", str(out)
    )
    assert code == 1, stderr
    assert sorted(d.doc_id for d in fake_stack.retrieval.documents) == ["help/shipping.html", "refunds.md"]
    assert "ingested 2 documents" in stderr
    # Exactly one turn fails: the fake escalates with medium priority where the suite wants high.
    assert "Failed expectations (1 turns):" in stdout
    assert "--- other turn 1" in stdout
    assert (
        "FAILED priority: expected priority high; got escalation priority=medium reason=customer_request"
        in stdout
    )
    assert "[1] customer: I want a human" in stdout
    assert "escalated: ticket TCK-1 priority=medium reason=customer_request" in stdout
    assert "agent (pending_human, fake-model" in stdout
    assert "THRESHOLDS MISSED: turn_pass_rate 0.750 (needs >= 1.000)" in stdout
    result = json.loads(out.read_text())
    assert result["passed"] is False
    assert result["model"] == "fake-model"
    assert result["metrics"]["hit_at_k"]["value"] == 1.0
    assert result["metrics"]["priority_accuracy"]["value"] == 0.0
    assert result["metrics"]["escalation_recall"]["value"] == 1.0
    assert result["metrics"]["abstention_accuracy"]["value"] == 1.0
    assert result["suite"]["hash"] == load_suite(tiny_suite).suite_hash
    assert result["kb"]["version"] == kb.kb_version(kb.read_kb(tiny_suite.parent / "kb"))
    assert result["kb"]["documents"] == 2

    # The same run, passing (the failing conversation left out), as JSON on stdout with a baseline diff.
    code, stdout, stderr = await _cli(
        str(tiny_suite),
        "--target",
        fake_stack.addr,
        "--no-ingest",
        "--only",
        "refund",
        "--json",
        "--baseline",
        str(out),
    )
    assert code == 0, stderr
    passing = json.loads(stdout)
    assert passing["passed"] is True and passing["failed_turns"] == 0
    assert "All 2 thresholds met." in stderr
    assert "Against baseline" in stderr
    assert any(line.split()[:1] == ["turn_pass_rate"] and "better" in line for line in stderr.splitlines())


@pytest.mark.slow
async def test_cli_strict_fails_on_any_failed_expectation(fake_stack: FakeStack, tiny_suite: Path) -> None:
    relaxed = _rewrite(tiny_suite, "  turn_pass_rate: 1.0\n", "")
    args = ("--target", fake_stack.addr, "--no-ingest")
    code, stdout, _ = await _cli(str(relaxed), *args)
    assert code == 0 and "All 1 thresholds met." in stdout
    code, _, _ = await _cli(str(relaxed), *args, "--strict")
    assert code == 1


@pytest.mark.slow
async def test_cli_usage_and_connection_errors(tiny_suite: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("priority: high", "priority: urgent"))
    code, _, stderr = await _cli(str(bad))
    assert code == 2
    assert "conversations[1].turns[0].expect.priority: expected one of high, low, medium" in stderr

    code, _, stderr = await _cli(str(tiny_suite), "--target", "127.0.0.1:1")
    assert code == 2 and "--target needs --retrieval-addr" in stderr

    unused = f"127.0.0.1:{free_port()}"
    code, _, stderr = await _cli(str(tiny_suite), "--target", unused, "--no-ingest", "--timeout", "1")
    assert code == 3 and "cannot reach the agent" in stderr


async def test_only_skips_thresholds_its_conversations_do_not_exercise(
    fake_stack: FakeStack, tiny_suite: Path
) -> None:
    code, stdout, stderr = await _cli(
        str(tiny_suite), "--target", fake_stack.addr, "--no-ingest", "--only", "other"
    )
    assert code == 1
    assert "thresholds on metrics these conversations do not exercise skipped: tool_arg_accuracy" in stderr
    assert "THRESHOLDS MISSED: turn_pass_rate 0.500 (needs >= 1.000)" in stdout
    assert "tool_arg_accuracy" not in stdout.split("THRESHOLDS MISSED")[1]
