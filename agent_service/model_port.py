"""The model port: what the turn loop needs from a language model, whatever is behind it.

An adapter turns one `ModelRequest` (OpenAI-format messages plus tool definitions) into a stream of
`ModelEvent`s: zero or more `TextChunk`s as the reply is produced, then exactly one `ModelResult`
(the full text, the assembled tool calls, usage). Non-streaming adapters yield one chunk then the result.
Adapters raise `errors.ModelUnavailableError` when the model cannot answer (after their own retries).

Implementations: `adapters.openai_model.OpenAIModel` (any OpenAI-compatible endpoint),
`adapters.offline_model.OfflineModel` (deterministic, no network) and `breaker.FallbackModel`
(a circuit breaker that degrades from the first to the second).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent_service.domain import KbHit

Message = Mapping[str, Any]


@dataclass(frozen=True)
class EscalationHint:
    """A deterministic trigger that fired on the user message (from the escalation policy)."""

    reason_code: str
    priority: str
    trigger: str
    customer_message: str


@dataclass(frozen=True)
class ModelRequest:
    messages: Sequence[Message]
    tools: Sequence[Mapping[str, Any]]
    stream: bool = False
    # A structured view of the same turn, for engines that do not read prose (the offline engine).
    user_message: str = ""
    hits: Sequence[KbHit] = ()
    escalation_hint: EscalationHint | None = None


@dataclass(frozen=True)
class ToolCallRequest:
    """One tool call as the model asked for it; `arguments` is the raw JSON text (may be malformed)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class TextChunk:
    text: str


@dataclass(frozen=True)
class ModelResult:
    content: str
    tool_calls: tuple[ToolCallRequest, ...] = ()
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # True when the configured model was unavailable and a fallback engine produced this result.
    fallback: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)


ModelEvent = TextChunk | ModelResult


class ModelPort(Protocol):
    """A language model behind the loop. `generate` is an async generator (see the module docstring)."""

    @property
    def name(self) -> str: ...

    def generate(self, request: ModelRequest) -> AsyncIterator[ModelEvent]: ...

    async def aclose(self) -> None: ...


async def collect(model: ModelPort, request: ModelRequest) -> ModelResult:
    """Runs `generate` to the end and returns its result (for callers that do not stream)."""
    result: ModelResult | None = None
    async for event in model.generate(request):
        if isinstance(event, ModelResult):
            result = event
    if result is None:
        raise RuntimeError(f"model {model.name} ended without a result")
    return result
