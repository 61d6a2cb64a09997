"""The agent's Prometheus series: model calls, tool calls and hand-offs to a human."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from service_kit.observability import LATENCY_BUCKETS

MODEL_CALL_SECONDS = Histogram(
    "support_model_call_seconds",
    "Latency of one call to the language model, by model and outcome.",
    ["model", "outcome"],
    buckets=LATENCY_BUCKETS,
)
MODEL_TOKENS = Counter(
    "support_model_tokens_total",
    "Tokens used by model calls, by model and kind (input or output).",
    ["model", "kind"],
)
TOOL_CALLS = Counter(
    "support_tool_calls_total",
    "Tool calls, by tool name and outcome (ok, invalid_arguments, unknown_tool, timeout, error, ...).",
    ["tool", "outcome"],
)
TOOL_CALL_SECONDS = Histogram(
    "support_tool_call_seconds",
    "Latency of one tool call, by tool name.",
    ["tool"],
    buckets=LATENCY_BUCKETS,
)
ESCALATIONS = Counter(
    "support_escalations_total",
    "Conversations handed to a human, by reason code.",
    ["reason"],
)


def record_model_call(
    model: str,
    seconds: float,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    outcome: str = "ok",
) -> None:
    """One model call: latency by model/outcome, plus token usage. Call it for failures too (outcome="error",
    "timeout", "fallback", ...), with the tokens the provider reported (0 when unknown)."""
    MODEL_CALL_SECONDS.labels(model, outcome).observe(seconds)
    if prompt_tokens:
        MODEL_TOKENS.labels(model, "input").inc(prompt_tokens)
    if completion_tokens:
        MODEL_TOKENS.labels(model, "output").inc(completion_tokens)


def record_tool_call(tool: str, outcome: str, seconds: float | None = None) -> None:
    """One tool call by tool name and outcome; `seconds` adds it to the latency histogram when given."""
    TOOL_CALLS.labels(tool, outcome).inc()
    if seconds is not None:
        TOOL_CALL_SECONDS.labels(tool).observe(seconds)


def record_escalation(reason: str) -> None:
    """One hand-off to a human, by reason code (e.g. "customer_request", "billing_dispute", "rounds_exhausted")."""
    ESCALATIONS.labels(reason).inc()
