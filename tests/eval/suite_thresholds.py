"""Runs a shipped suite the way an operator does (`support-eval` with its own private stack: retrieval, tools,
agent as subprocesses, a fresh DATA_DIR, the suite's KB ingested) and checks that it meets its thresholds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from support_eval.suite import load_suite
from tests.eval import test_e2e_stack


def assert_meets_thresholds(
    suite: Path, tmp_path: Path, *args: str, min_documents: int = 12
) -> dict[str, Any]:
    """Runs `suite` (extra CLI `args`, e.g. --env KEY=VALUE) and asserts every configured threshold is met,
    no RPC failed and every turn ran; returns the JSON result."""
    out = tmp_path / f"{suite.stem}.json"
    result = test_e2e_stack._cli(str(suite), *args, "--out", str(out), timeout=900)
    assert "starting a private stack" in result.stderr
    assert out.exists(), result.stdout + result.stderr
    data: dict[str, Any] = json.loads(out.read_text())
    assert data["thresholds"], f"{suite.name} must configure thresholds"
    missed = [
        f"{t['metric']}={t['value']} (threshold {t['threshold']})" for t in data["thresholds"] if not t["met"]
    ]
    assert not missed, missed
    assert result.returncode == 0, result.stdout + result.stderr
    assert data["metrics"]["error_rate"]["value"] == 0.0
    assert data["kb"]["documents"] >= min_documents
    assert data["suite"]["turns"] == load_suite(suite).turn_count
    return data
