"""support-eval against the real services: the tiny suite with a deliberate failure, and the shipped suite.

One private stack (retrieval, tools, agent as subprocesses of devstack.ProcessStack, fresh DATA_DIR) serves the
module; the OpenAI test goes through the CLI's own private stack, with a scripted OpenAI-compatible endpoint as the model.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack import REPO_ROOT, ProcessStack, isolated_environ
from devstack.credentials import Credentials
from service_kit.auth import AuthConfig
from support_eval import driver, kb, scorer
from support_eval.suite import load_suite

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        any(
            importlib.util.find_spec(f"{name}.server") is None
            for name in ("retrieval_service", "tools_service", "agent_service")
        ),
        reason="a service package has no server module yet",
    ),
]

TINY = Path(__file__).parent / "suites" / "tiny_real.yaml"
SHIPPED = REPO_ROOT / "evals" / "sample_kb.yaml"


@dataclass(frozen=True)
class Stack:
    agent_addr: str
    retrieval_addr: str
    credentials: Credentials  # the stack's tokens; support-eval run by _cli reads the same file

    @property
    def kb_admin(self) -> AuthConfig:
        return self.credentials.caller("kb_admin")

    @property
    def backend(self) -> AuthConfig:
        return self.credentials.caller("backend")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("eval-stack")
    processes = ProcessStack(workdir / "data", environ=isolated_environ(), log_dir=workdir)
    try:
        asyncio.run(processes.start_backends())
        assert processes.credentials is not None
        kb_admin = processes.credentials.caller("kb_admin")
        asyncio.run(
            kb.ingest(processes.addrs["retrieval"], kb.read_kb(REPO_ROOT / "kb"), auth_config=kb_admin)
        )
        asyncio.run(processes.start("agent"))
        yield Stack(processes.addrs["agent"], processes.addrs["retrieval"], processes.credentials)
    finally:
        processes.stop_all()


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "support_eval", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        check=False,
    )


def test_tiny_suite_reports_the_deliberate_failure_with_its_transcript(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "tiny.json"
    result = _cli(
        str(TINY), "--target", stack.agent_addr, "--retrieval-addr", stack.retrieval_addr, "--out", str(out)
    )
    assert result.returncode == 1, result.stdout + result.stderr
    documents = len(kb.read_kb(REPO_ROOT / "kb"))
    # The module's stack already holds the KB: re-ingesting is an upsert that changes nothing.
    assert f"ingested {documents} documents into {stack.retrieval_addr}" in result.stderr
    assert f"{documents} unchanged" in result.stderr
    text = result.stdout
    assert "Failed expectations (1 turns):" in text, text
    assert "--- deliberately-failing turn 1" in text
    assert "FAILED contains: reply lacks 'Paris'" in text
    assert "[1] customer: What is the capital of France?" in text
    assert "agent (bot, " in text.split("--- deliberately-failing turn 1")[1]
    assert "THRESHOLDS MISSED: turn_pass_rate 0.750 (needs >= 1.000)" in text
    data = json.loads(out.read_text())
    failed = [
        (conversation["id"], failure["check"])
        for conversation in data["conversations"]
        for turn in conversation["turns"]
        for failure in turn["failures"]
    ]
    assert failed == [("deliberately-failing", "contains")]
    assert data["kb"]["documents"] == documents
    assert data["model"] != "unknown"
    metrics = {name: metric["value"] for name, metric in data["metrics"].items()}
    assert metrics["hit_at_k"] == 1.0
    assert metrics["tool_arg_accuracy"] == 1.0
    assert metrics["priority_accuracy"] == 1.0
    assert metrics["state_accuracy"] == 1.0
    assert metrics["error_rate"] == 0.0


def test_shipped_suite_meets_its_thresholds(stack: Stack) -> None:
    suite = load_suite(SHIPPED)
    assert suite.turn_count >= 40
    records = asyncio.run(
        driver.run_suite(suite, stack.agent_addr, call_timeout=30, auth_config=stack.backend)
    )
    card = scorer.score(suite, records)
    results = scorer.check_thresholds(card, suite.thresholds)
    assert results, "the shipped suite must configure thresholds"
    missed = [f"{r.metric}={r.value} (threshold {r.threshold})" for r in results if not r.met]
    assert not missed, missed
    assert card.value("error_rate") == 0.0


@pytest.fixture
def scripted_openai() -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "testkit.scripted_openai", "--script", "tool-then-answer"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:"), base_url
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_openai_compatible_model_passes_through(scripted_openai: str, tmp_path: Path) -> None:
    out = tmp_path / "openai.json"
    result = _cli(
        str(Path(__file__).parent / "suites" / "openai_model.yaml"),
        "--env",
        f"OPENAI_BASE_URL={scripted_openai}",
        "--env",
        "OPENAI_API_KEY=test-key",
        "--env",
        "OPENAI_MODEL=scripted-eval-model",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "starting a private stack" in result.stderr
    data = json.loads(out.read_text())
    assert data["target"] == "private stack"
    assert data["model"] == "scripted-eval-model"
    assert data["fallback_turns"] == 0
    assert data["metrics"]["tool_arg_accuracy"]["value"] == 1.0


def test_prune_removes_documents_outside_the_suite_kb(stack: Stack) -> None:
    stray = kb.KbFile(
        "stray/old-article.md", "# Old article\n\nSomething that is no longer in the KB.\n", "markdown"
    )
    asyncio.run(kb.ingest(stack.retrieval_addr, [stray], auth_config=stack.kb_admin))
    result = _cli(
        str(TINY),
        "--target",
        stack.agent_addr,
        "--retrieval-addr",
        stack.retrieval_addr,
        "--prune",
        "--only",
        "faq",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 other documents deleted" in result.stderr
    again = _cli(
        str(TINY),
        "--target",
        stack.agent_addr,
        "--retrieval-addr",
        stack.retrieval_addr,
        "--prune",
        "--only",
        "faq",
    )
    assert "0 other documents deleted" in again.stderr


def test_a_service_that_cannot_start_exits_3_with_its_log() -> None:
    result = _cli(str(TINY), "--env", "ORDER_BACKEND=carrier-pigeon", timeout=60)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "tools service exited with status" in result.stderr
    assert "ORDER_BACKEND" in result.stderr
    assert result.stdout == ""
