"""The held-out suite (evals/cardholder.yaml, a credit card issuer's help center) meets its thresholds.

The suite is never tuned on (docs/eval.md, "Held-out suite"): it measures whether what was tuned on
evals/sample_kb.yaml carries over to a help center nobody tuned for. It runs the way an operator runs it,
`support-eval` with its own private stack (retrieval, tools, agent as subprocesses, fresh DATA_DIR, the suite's
KB ingested), through the same CLI helper as the shipped-suite tests.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from devstack import REPO_ROOT
from support_eval.suite import load_suite
from tests.eval import test_e2e_stack
from tests.eval.suite_thresholds import assert_meets_thresholds

pytestmark = test_e2e_stack.pytestmark

HELDOUT = REPO_ROOT / "evals" / "cardholder.yaml"


def _kinds() -> Counter[str]:
    """Conversations by kind: each conversation's description starts with its kind ("near-miss - ...")."""
    suite = load_suite(HELDOUT)
    return Counter((conversation.description or "").split(" - ")[0] for conversation in suite.conversations)


def test_heldout_suite_covers_what_issue_14_asks_for() -> None:
    suite = load_suite(HELDOUT)
    assert len(suite.conversations) >= 40
    assert len({path.name for path in (HELDOUT.parent / "cardholder_kb").glob("*.md")}) >= 12
    kinds = _kinds()
    assert set(kinds) == {"faq", "multi", "offtopic", "escalate", "near-miss"}, kinds
    escalating = [t for c in suite.conversations for t in c.turns if t.expect.escalate is True]
    not_escalating = [
        t
        for c in suite.conversations
        if c.id.startswith("near-")
        for t in c.turns
        if t.expect.escalate is False
    ]
    assert len(escalating) >= 10
    assert len(not_escalating) >= 8
    assert kinds["multi"] >= 3
    assert kinds["offtopic"] >= 4


def test_heldout_suite_meets_its_thresholds(tmp_path: Path) -> None:
    assert_meets_thresholds(HELDOUT, tmp_path)
