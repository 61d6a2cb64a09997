"""The fresh check set (evals/fresh_airline.yaml, a regional airline's help center) keeps its floors.

Written blind before the change it first measured (sentence vectors) and never tuned on (docs/eval.md,
"Fresh check set"): a second help center nobody tuned for, beside the held-out one, so that a change judged on
the development suite is also seen on a business neither suite covers.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from devstack import REPO_ROOT
from support_eval.suite import load_suite
from tests.eval import test_e2e_stack
from tests.eval.suite_thresholds import assert_meets_thresholds

pytestmark = test_e2e_stack.pytestmark

CHECK = REPO_ROOT / "evals" / "fresh_airline.yaml"


def test_check_set_covers_every_kind_of_conversation() -> None:
    suite = load_suite(CHECK)
    kinds = Counter((c.description or "").split(":")[0] for c in suite.conversations)
    assert set(kinds) == {"faq", "multi", "offtopic", "escalate", "near-miss"}, kinds
    assert len(suite.conversations) >= 40 and kinds["faq"] >= 20
    assert len(list((CHECK.parent / "fresh_airline_kb").glob("*.md"))) >= 12


def test_check_set_keeps_its_floors(tmp_path: Path) -> None:
    assert_meets_thresholds(CHECK, tmp_path)
