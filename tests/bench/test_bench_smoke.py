"""`python -m bench` end to end at toy size: every scenario runs against the real three services and the
in-process reference, and the table and bench JSON have their shape. Timings are not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scenarios import SCENARIOS
from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KB = {
    "shipping.md": "# Shipping\n\nStandard shipping takes 5-7 business days. Express shipping takes 1-2 "
    "business days.\n\nOrders over $50 ship free.\n",
    "returns.md": "# Returns\n\nItems must be unused and in their original packaging. Start a return from your "
    "account page within 30 days of delivery.\n",
}


def test_bench_runs_every_scenario_at_toy_size(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    kb.mkdir()
    for name, text in KB.items():
        (kb / name).write_text(text)
    out = tmp_path / "results.json"
    # bench.retrieval (the retrieval service's own benchmark) is left out: it has its own tests and time.
    scenarios = [name for name in SCENARIOS if name != "retrieval"]
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--toy", "--kb", str(kb), "--out", str(out), "--only", *scenarios],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    document = json.loads(out.read_text())
    figures = document["figures"]
    assert {figure["scenario"] for figure in figures} == set(scenarios)
    for figure in figures:
        assert figure["verdict"] in {"PASS", "MISS", "INFO"}, figure
        assert isinstance(figure["measured"], float | int), figure
    targeted = {(figure["scenario"], figure["name"]) for figure in figures if figure["target"]}
    # Every headline target is a ratio to a baseline measured in the same run.
    assert ("overhead", "stack/reference p50 ratio") in targeted
    assert ("overhead", "stack/reference p99 ratio") in targeted
    assert ("overhead", "CPU per turn ratio: three services / monolith") in targeted
    assert ("capacity", "throughput ratio: stack / seed loop") in targeted
    assert ("capacity", "turn p99, back-to-back") in targeted
    assert ("streaming", "model first token -> first text_delta p95") in targeted
    assert ("startup", "idle RSS, three services") in targeted
    by_name = {figure["name"]: figure for figure in figures}
    # The scripted turns really ran: no invalid overhead turns, no capacity errors, the burst was shed.
    assert by_name["turn p50, stack (gRPC Chat)"]["details"]["problems"] == {}
    assert by_name["errors"]["measured"] == 0
    # The seed loop ran under the same load beside the stack, and its turns were the scripted ones too.
    throughput = by_name["throughput, back-to-back turns"]
    assert throughput["baseline"] > 0
    assert throughput["details"]["reference"]["errors"] == {}
    assert by_name["calls answered RESOURCE_EXHAUSTED"]["measured"] >= 1
    assert document["machine"]["cpu_count"] >= 1
    assert document["settings"]["overhead_turns"] == 4
    # The printed table is the same as the JSON's.
    assert document["table"] in result.stdout
    assert result.stdout.splitlines()[1].split() == ["figure", "measured", "baseline", "target", "result"]
