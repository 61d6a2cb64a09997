"""The check sets keep their floors: evals/fresh_energy.yaml (a home energy supplier's help center, written
blind for the sixth pass and never tuned on), evals/fresh_telecom.yaml (a mobile and broadband provider's,
written blind for the fifth pass; its failures were read in the sixth) and evals/fresh_airline.yaml (a regional
airline's, written blind for the fourth pass, tuning data since the fifth; docs/eval.md, "Fresh check sets"). Beside the held-out suite,
they show a change judged on the development suite on businesses neither suite covers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from devstack import REPO_ROOT
from support_eval.suite import load_suite
from tests.eval import test_e2e_stack
from tests.eval.suite_thresholds import assert_meets_thresholds

pytestmark = test_e2e_stack.pytestmark

CHECKS = [
    REPO_ROOT / "evals" / "fresh_energy.yaml",
    REPO_ROOT / "evals" / "fresh_telecom.yaml",
    REPO_ROOT / "evals" / "fresh_airline.yaml",
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda path: path.stem)
def test_check_set_covers_every_kind_of_conversation(check: Path) -> None:
    suite = load_suite(check)
    kinds = Counter((c.description or "").split(":")[0] for c in suite.conversations)
    assert set(kinds) == {"faq", "multi", "offtopic", "escalate", "near-miss"}, kinds
    assert len(suite.conversations) >= 40 and kinds["faq"] >= 20
    assert len(list((check.parent / f"{check.stem}_kb").glob("*.md"))) >= 12


@pytest.mark.parametrize("check", CHECKS, ids=lambda path: path.stem)
def test_check_set_keeps_its_floors(check: Path, tmp_path: Path) -> None:
    assert_meets_thresholds(check, tmp_path)
