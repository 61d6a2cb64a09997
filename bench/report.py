"""Figures, the results table and `bench/results.json`.

A figure is one measured number beside its baseline and its target. Its verdict is PASS or MISS when it has a
target, INFO when it is only context, and SKIP when the scenario could not run (the reason is in `note`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil

Comparison = Literal["<=", ">=", "=="]
Verdict = Literal["PASS", "MISS", "INFO", "SKIP"]


@dataclass(frozen=True)
class Target:
    op: Comparison
    value: float

    def met_by(self, measured: float) -> bool:
        if self.op == "<=":
            return measured <= self.value
        if self.op == ">=":
            return measured >= self.value
        return measured == self.value


@dataclass(frozen=True)
class Figure:
    scenario: str
    name: str
    unit: str
    measured: float | None
    baseline: float | None = None
    # What the baseline is, e.g. "in-process reference" or "ideal: 2 x model latency".
    baseline_label: str = ""
    target: Target | None = None
    note: str = ""
    # Extra numbers for the JSON (sample counts, other percentiles); not shown in the table.
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> Verdict:
        if self.measured is None:
            return "SKIP"
        if self.target is None:
            return "INFO"
        return "PASS" if self.target.met_by(self.measured) else "MISS"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"] = None if self.target is None else {"op": self.target.op, "value": self.target.value}
        data["verdict"] = self.verdict
        return data


def skipped(scenario: str, name: str, unit: str, reason: str) -> Figure:
    return Figure(scenario=scenario, name=name, unit=unit, measured=None, note=reason)


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "count":
        return f"{value:.0f}"
    if unit == "x":
        return f"{value:.2f} x"
    if unit in {"turns/s", "chunks/s", "searches/s"}:
        return f"{value:.1f} {unit}"
    if unit == "MB":
        return f"{value:.0f} MB"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "ms":
        return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"
    return f"{value:g} {unit}".strip()


def _baseline_cell(figure: Figure) -> str:
    if figure.baseline is None:
        return figure.baseline_label or "-"
    value = format_value(figure.baseline, figure.unit)
    return f"{value} ({figure.baseline_label})" if figure.baseline_label else value


def _target_cell(figure: Figure) -> str:
    if figure.target is None:
        return "-"
    op = {"<=": "≤", ">=": "≥", "==": "="}[figure.target.op]
    return f"{op} {format_value(figure.target.value, figure.unit)}"


def table_rows(figures: Sequence[Figure]) -> list[list[str]]:
    rows = [["figure", "measured", "baseline", "target", "result"]]
    for figure in figures:
        rows.append(
            [
                f"{figure.scenario}: {figure.name}",
                format_value(figure.measured, figure.unit),
                _baseline_cell(figure),
                _target_cell(figure),
                figure.verdict,
            ]
        )
    return rows


def render_table(figures: Sequence[Figure], markdown: bool = False) -> str:
    rows = table_rows(figures)
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
        return "\n".join(lines)
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]

    def line(row: list[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()

    separator = "  ".join("-" * width for width in widths)
    return "\n".join([line(rows[0]), separator, *(line(row) for row in rows[1:])])


def _cpu_model() -> str:
    try:
        for text_line in Path("/proc/cpuinfo").read_text().splitlines():
            if text_line.startswith("model name"):
                return text_line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit(repo: Path) -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, check=False
        )
    except OSError:
        return ""
    commit = result.stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{commit}{'+dirty' if dirty else ''}" if commit else ""


def machine_info(repo: Path, argv: Sequence[str]) -> dict[str, Any]:
    memory = psutil.virtual_memory()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_mb": round(memory.total / 2**20),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(arg) for arg in ["python", "-m", "bench", *argv]),
        "git_commit": _git_commit(repo),
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
        "executable": sys.executable,
    }


def results_document(
    figures: Sequence[Figure], machine: dict[str, Any], settings: dict[str, Any], elapsed_seconds: float
) -> dict[str, Any]:
    return {
        "machine": {**machine, "load_average_at_end": [round(value, 2) for value in os.getloadavg()]},
        "settings": settings,
        "elapsed_seconds": round(elapsed_seconds, 1),
        "figures": [figure.to_json() for figure in figures],
        "table": render_table(figures),
        "summary": {
            verdict: sum(1 for figure in figures if figure.verdict == verdict)
            for verdict in ("PASS", "MISS", "INFO", "SKIP")
        },
    }


def write_results(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
