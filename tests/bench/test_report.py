"""The bench's pure pieces: percentiles, verdicts, the table and the results document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.profiles import render, summarise
from bench.report import Figure, Target, machine_info, render_table, results_document, skipped, write_results
from bench.stats import percentile, summary
from bench.stream_model import first_token_url, nonce_of


def test_percentile_is_nearest_rank() -> None:
    samples = [float(value) for value in range(1, 101)]
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile(samples, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_orders_its_percentiles() -> None:
    result = summary([5.0, 1.0, 3.0, 2.0, 4.0])
    assert result["n"] == 5
    assert result["min"] == 1.0 and result["max"] == 5.0
    assert result["p50"] == 3.0
    assert result["p50"] <= result["p95"] <= result["p99"] <= result["max"]
    assert summary([]) == {"n": 0}


@pytest.mark.parametrize(
    ("target", "measured", "verdict"),
    [
        (Target("<=", 10.0), 9.9, "PASS"),
        (Target("<=", 10.0), 10.1, "MISS"),
        (Target(">=", 200.0), 250.0, "PASS"),
        (Target(">=", 200.0), 150.0, "MISS"),
        (Target("==", 0.0), 0.0, "PASS"),
        (Target("==", 0.0), 2.0, "MISS"),
        (None, 1.0, "INFO"),
    ],
)
def test_verdicts(target: Target | None, measured: float, verdict: str) -> None:
    assert Figure("s", "n", "ms", measured, target=target).verdict == verdict


def test_a_figure_without_a_measurement_is_skipped() -> None:
    figure = skipped("capacity", "(scenario failed)", "", "agent died")
    assert figure.verdict == "SKIP"
    assert figure.to_json()["note"] == "agent died"


def test_table_puts_each_figure_beside_baseline_and_target() -> None:
    figures = [
        Figure("overhead", "turn p50", "ms", 12.5, 9.0, "in-process", Target("<=", 10.0)),
        Figure("capacity", "throughput", "turns/s", 250.0, 512.0, "ideal", Target(">=", 200.0)),
    ]
    lines = render_table(figures).splitlines()
    assert lines[0].split() == ["figure", "measured", "baseline", "target", "result"]
    assert "12.50 ms" in lines[2] and "9.00 ms (in-process)" in lines[2] and "≤ 10.00 ms" in lines[2]
    assert lines[2].rstrip().endswith("MISS")
    assert lines[3].rstrip().endswith("PASS") and "≥ 200.0 turns/s" in lines[3]
    markdown = render_table(figures, markdown=True).splitlines()
    assert markdown[0] == "| figure | measured | baseline | target | result |"
    assert len(markdown) == 4


def test_results_document_round_trips_as_json(tmp_path: Path) -> None:
    figures = [Figure("startup", "idle RSS", "MB", 420.0, 300.0, "monolith", Target("<=", 700.0))]
    machine = machine_info(tmp_path, ["--quick"])
    assert machine["cpu_count"] and machine["python"] and machine["command"] == "python -m bench --quick"
    document = results_document(figures, machine, {"overhead_turns": 500}, 12.34)
    out = tmp_path / "results.json"
    write_results(out, document)
    loaded = json.loads(out.read_text())
    assert loaded["summary"] == {"PASS": 1, "MISS": 0, "INFO": 0, "SKIP": 0}
    assert loaded["figures"][0]["target"] == {"op": "<=", "value": 700.0}
    assert loaded["figures"][0]["verdict"] == "PASS"
    assert "load_average_at_end" in loaded["machine"]
    assert loaded["table"].startswith("figure")


def test_stream_model_nonce_and_lookup_url() -> None:
    request = {"messages": [{"role": "user", "content": "How long? [bench:ab12]"}]}
    assert nonce_of(request) == "ab12"
    assert nonce_of({"messages": [{"role": "user", "content": "no nonce"}]}) is None
    assert first_token_url("http://127.0.0.1:9/v1", "ab12") == "http://127.0.0.1:9/bench/first-token/ab12"


def test_profile_summary_separates_idle_and_groups_busy_samples() -> None:
    lines = [
        "thread (1): MainThread;_run_once (asyncio/base_events.py:1922);select (selectors.py:468) 70",
        "thread (1): MainThread;_run_once (asyncio/base_events.py:1922);create (openai/resources/chat.py:10) 20",
        "thread (1): MainThread;_run_once (asyncio/base_events.py:1922);emit (logging/__init__.py:1113) 10",
        "thread (2): asyncio_0;_worker (concurrent/futures/thread.py:83) 50",
        "not a profile line",
    ]
    summary = summarise(lines)
    assert summary.total == 150
    assert summary.busy == 30
    assert summary.groups["openai client (request building, parsing)"] == 20
    assert summary.groups["logging (JSON, redaction)"] == 10
    main_only = summarise(lines, thread_filter="MainThread")
    assert main_only.total == 100 and main_only.busy == 30
    text = render(main_only)
    assert text.startswith("100 samples, 30 busy (30%)")
    assert "66.7%  create (openai/resources/chat.py:10)" in text
