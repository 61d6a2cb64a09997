"""The development suite (evals/dev_saas.yaml, a SaaS project-management app's help center) meets its thresholds.

The development set of docs/eval.md ("Development suite"): what generalization work is judged on, with the
shipped suite, while the held-out suite stays untouched. It runs the way an operator runs it, `support-eval`
with its own private stack (retrieval, tools, agent as subprocesses, fresh DATA_DIR, the suite's KB ingested),
with the help center's own domain on the link allow-list (LINK_ALLOWLIST), as that company would configure it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from devstack import REPO_ROOT
from support_eval.suite import load_suite
from tests.eval import test_e2e_stack
from tests.eval.suite_thresholds import assert_meets_thresholds

pytestmark = test_e2e_stack.pytestmark

DEV = REPO_ROOT / "evals" / "dev_saas.yaml"
KINDS = {"faq", "multi", "offtopic", "escalate", "near-miss"}


def _kinds() -> Counter[str]:
    """Conversations by kind: each conversation's description starts with its kind ("near-miss - ...")."""
    return Counter((c.description or "").split(" - ")[0] for c in load_suite(DEV).conversations)


def test_dev_suite_covers_what_a_development_set_needs() -> None:
    suite = load_suite(DEV)
    assert len(suite.conversations) >= 45
    assert len(list((DEV.parent / "dev_saas_kb").glob("*.md"))) >= 12
    kinds = _kinds()
    assert set(kinds) == KINDS, kinds
    assert kinds["multi"] >= 3 and kinds["offtopic"] >= 4
    escalating = [t for c in suite.conversations for t in c.turns if t.expect.escalate is True]
    near_misses = [
        t
        for c in suite.conversations
        if c.id.startswith("near-")
        for t in c.turns
        if t.expect.escalate is False
    ]
    assert len(escalating) >= 15 and len(near_misses) >= 10
    # Every other language and every disguise has its escalation.
    ids = {c.id for c in suite.conversations}
    for prefix in ("esc-es-", "esc-fr-", "esc-de-", "esc-pt-", "esc-disguise-"):
        assert any(i.startswith(prefix) for i in ids), prefix


def test_dev_suite_meets_its_thresholds(tmp_path: Path) -> None:
    assert_meets_thresholds(DEV, tmp_path, "--env", "LINK_ALLOWLIST=taskline.app")
