"""The scorecard as text, the run as JSON, and the differences against a baseline run."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from support_eval.records import ConversationRecord, TurnRecord
from support_eval.scorer import Scorecard, ThresholdResult, TurnOutcome
from support_eval.suite import METRICS, Suite

RESULT_SCHEMA = 1
RESULT_TEXT_CHARS = 300

_LABELS = {
    "hit_at_k": "retrieval hit@{k}",
    "mrr": "retrieval MRR",
    "tool_precision": "tool precision",
    "tool_recall": "tool recall",
    "tool_arg_accuracy": "tool argument accuracy",
    "escalation_precision": "escalation precision",
    "escalation_recall": "escalation recall",
    "priority_accuracy": "priority accuracy",
    "reason_accuracy": "reason accuracy",
    "abstention_accuracy": "abstention accuracy",
    "text_pass_rate": "text expectations",
    "state_accuracy": "state accuracy",
    "action_accuracy": "actions",
    "turn_pass_rate": "turns passed",
    "expectation_pass_rate": "expectations passed",
    "error_rate": "RPC errors",
    "latency_p50_ms": "latency p50 (ms)",
    "latency_p95_ms": "latency p95 (ms)",
}


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    started_at: str
    kb_version: str
    kb_documents: int
    target: str
    duration_seconds: float


def models_used(records: Sequence[ConversationRecord]) -> list[str]:
    return sorted({turn.model for record in records for turn in record.turns if turn.model})


def build_result(
    suite: Suite,
    scorecard: Scorecard,
    records: Sequence[ConversationRecord],
    thresholds: Sequence[ThresholdResult],
    info: RunInfo,
) -> dict[str, Any]:
    """Everything a later run needs to compare against: provenance, metrics, thresholds, every turn."""
    outcomes = {(outcome.conversation, outcome.turn_index): outcome for outcome in scorecard.outcomes}
    models = models_used(records)
    return {
        "schema": RESULT_SCHEMA,
        "run_id": info.run_id,
        "time": info.started_at,
        "duration_seconds": round(info.duration_seconds, 3),
        "target": info.target,
        "suite": {
            "name": suite.name,
            "path": str(suite.path or ""),
            "hash": suite.suite_hash,
            "turns": suite.turn_count,
        },
        "kb": {"dir": str(suite.kb_dir), "version": info.kb_version, "documents": info.kb_documents},
        "model": ", ".join(models) or "unknown",
        "models": models,
        "fallback_turns": sum(turn.fallback for record in records for turn in record.turns),
        "metrics": {
            name: {"value": metric.value, "numerator": metric.numerator, "denominator": metric.denominator}
            for name, metric in scorecard.metrics.items()
        },
        "thresholds": [
            {
                "metric": result.metric,
                "threshold": result.threshold,
                "value": result.value,
                "direction": "min" if result.minimum else "max",
                "met": result.met,
            }
            for result in thresholds
        ],
        "passed": all(result.met for result in thresholds),
        "failed_turns": len(scorecard.failed_turns),
        "conversations": [
            {
                "id": record.spec_id,
                "conversation_id": record.conversation_id,
                "customer_id": record.customer_id,
                "turns": [
                    _turn_json(turn, outcomes.get((record.spec_id, index)))
                    for index, turn in enumerate(record.turns)
                ],
            }
            for record in records
        ],
    }


def _turn_json(turn: TurnRecord, outcome: TurnOutcome | None) -> dict[str, Any]:
    data = asdict(turn)
    data["latency_ms"] = round(turn.latency_ms, 2)
    data["failures"] = [] if outcome is None else [asdict(failure) for failure in outcome.failures]
    return data


def format_metric(name: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if name.endswith("_ms"):
        return f"{value:.1f}"
    return f"{value:.3f}"


def format_scorecard(
    suite: Suite,
    scorecard: Scorecard,
    records: Sequence[ConversationRecord],
    thresholds: Sequence[ThresholdResult],
    info: RunInfo,
) -> str:
    """The human scorecard: provenance, one line per metric with its threshold, then every failed turn with
    the transcript of its conversation up to and including that turn."""
    lines = [
        f"Suite {suite.name!r}: {len(records)} conversations, {sum(len(r.turns) for r in records)} turns "
        f"in {info.duration_seconds:.1f}s",
        f"  model: {', '.join(models_used(records)) or 'unknown'}   kb: {info.kb_version[:12]} "
        f"({info.kb_documents} documents)   suite: {suite.suite_hash[:12]}   target: {info.target}",
        f"  run {info.run_id} at {info.started_at}",
        "",
        f"  {'metric':<26} {'value':>9} {'of':>6}   threshold",
    ]
    by_metric = {result.metric: result for result in thresholds}
    for name, metric in scorecard.metrics.items():
        label = _LABELS.get(name, name).format(k=suite.k)
        of = "" if name.endswith("_ms") or not metric.denominator else str(metric.denominator)
        threshold = by_metric.get(name)
        mark = ""
        if threshold is not None:
            sign = ">=" if threshold.minimum else "<="
            verdict = "ok" if threshold.met else "MISSED"
            mark = f"{sign} {format_metric(name, threshold.threshold):<7} {verdict}"
        lines.append(f"  {label:<26} {format_metric(name, metric.value):>9} {of:>6}   {mark}".rstrip())
    failed = scorecard.failed_turns
    if failed:
        lines += ["", f"Failed expectations ({len(failed)} turns):"]
        by_id = {record.spec_id: record for record in records}
        for outcome in failed:
            record = by_id[outcome.conversation]
            lines.append("")
            lines.append(
                f"--- {outcome.conversation} turn {outcome.turn_index + 1} "
                f"(conversation {record.conversation_id}, customer {record.customer_id})"
            )
            lines.extend(f"  FAILED {failure.check}: {failure.detail}" for failure in outcome.failures)
            lines.append("  transcript:")
            for index, turn in enumerate(record.turns[: outcome.turn_index + 1]):
                lines.extend(_transcript_turn(index, turn))
    missed = [result for result in thresholds if not result.met]
    lines.append("")
    if missed:
        lines.append("THRESHOLDS MISSED: " + ", ".join(_missed_text(result) for result in missed))
    elif thresholds:
        lines.append(f"All {len(thresholds)} thresholds met.")
    else:
        lines.append("No thresholds configured.")
    return "\n".join(lines)


def _missed_text(result: ThresholdResult) -> str:
    sign = ">=" if result.minimum else "<="
    value = format_metric(result.metric, result.value)
    return f"{result.metric} {value} (needs {sign} {format_metric(result.metric, result.threshold)})"


def _transcript_turn(index: int, turn: TurnRecord) -> list[str]:
    lines = [f"    [{index + 1}] customer: {turn.message}"]
    if turn.error is not None:
        lines.append(f"        RPC ERROR: {turn.error}")
        return lines
    for call in turn.tool_calls:
        flag = " (error)" if call.is_error else ""
        lines.append(f"        tool {call.name}({call.arguments_json}){flag} -> {_clip(call.result_json)}")
    if turn.action is not None:
        action = turn.action
        note = f" ({action.note})" if action.note else ""
        lines.append(f"        action {action.tool} {action.state}: {action.summary}{note}")
    if turn.escalation is not None:
        esc = turn.escalation
        lines.append(f"        escalated: ticket {esc.ticket_id} priority={esc.priority} reason={esc.reason}")
    if turn.sources:
        cited = ", ".join(f"{source.doc_id} ({source.distance:.3f})" for source in turn.sources)
        lines.append(f"        sources: {cited}")
    elif turn.knowledge_gap:
        lines.append("        sources: none (knowledge gap)")
    if turn.guardrail_flags:
        lines.append(f"        guardrail flags: {', '.join(turn.guardrail_flags)}")
    lines.append(
        f"        agent ({turn.state}, {turn.model or 'unknown model'}, {turn.latency_ms:.0f} ms): {turn.reply}"
    )
    return lines


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= RESULT_TEXT_CHARS else text[: RESULT_TEXT_CHARS - 3] + "..."


def format_baseline_diff(current: Mapping[str, Any], baseline: Mapping[str, Any]) -> str:
    """Per metric: baseline, current, difference, and whether it got better or worse; then provenance changes."""
    lines = ["", "Against baseline " + str(baseline.get("run_id", "?")) + f" ({baseline.get('time', '?')}):"]
    for key, label in (("model", "model"),):
        if current.get(key) != baseline.get(key):
            lines.append(f"  {label} changed: {baseline.get(key)} -> {current.get(key)}")
    for key in ("kb", "suite"):
        old = _nested(baseline, key, "version" if key == "kb" else "hash")
        new = _nested(current, key, "version" if key == "kb" else "hash")
        if old != new:
            lines.append(f"  {key} changed: {str(old)[:12]} -> {str(new)[:12]}")
    lines.append(f"  {'metric':<24} {'baseline':>9} {'current':>9} {'delta':>9}")
    current_metrics = current.get("metrics", {})
    baseline_metrics = baseline.get("metrics", {})
    for name in METRICS:
        if name not in current_metrics and name not in baseline_metrics:
            continue
        old_value = _metric_value(baseline_metrics, name)
        new_value = _metric_value(current_metrics, name)
        delta = ""
        if old_value is not None and new_value is not None:
            delta = (
                f"{new_value - old_value:+.1f}" if name.endswith("_ms") else f"{new_value - old_value:+.3f}"
            )
        verdict = ""
        if old_value is not None and new_value is not None and abs(new_value - old_value) > 1e-9:
            better = (new_value > old_value) == METRICS[name]
            verdict = "better" if better else "WORSE"
        lines.append(
            f"  {name:<24} {format_metric(name, old_value):>9} {format_metric(name, new_value):>9} "
            f"{delta:>9} {verdict}".rstrip()
        )
    return "\n".join(lines)


def _nested(data: Mapping[str, Any], key: str, field_name: str) -> Any:
    value = data.get(key)
    return value.get(field_name) if isinstance(value, dict) else None


def _metric_value(metrics: Any, name: str) -> float | None:
    entry = metrics.get(name) if isinstance(metrics, dict) else None
    value = entry.get("value") if isinstance(entry, dict) else None
    return float(value) if isinstance(value, int | float) else None


def dumps(result: Mapping[str, Any]) -> str:
    return json.dumps(result, indent=2, sort_keys=False)
