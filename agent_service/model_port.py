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
from dataclasses import dataclass
from typing import Any, Protocol

from agent_service.domain import KbHit
from agent_service.escalation_policy import EscalationDecision

Message = Mapping[str, Any]


@dataclass(frozen=True)
class ModelRequest:
    messages: Sequence[Message]
    tools: Sequence[Mapping[str, Any]]
    stream: bool = False
    # A structured view of the same turn, for engines that do not read prose (the offline engine).
    user_message: str = ""
    hits: Sequence[KbHit] = ()
    # The escalation policy's decision on the user message, when a trigger fired.
    escalation_hint: EscalationDecision | None = None
    # Seconds the turn has left for this call (attempts, retries and backoff included); None: no limit but
    # the adapter's own timeout. At or below zero the adapter fails at once (→ the fallback engine).
    timeout: float | None = None


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
    # Prompt tokens the server took from its prompt cache (0 when it does not say).
    cached_tokens: int = 0
    # True when the configured model was unavailable and a fallback engine produced this result.
    fallback: bool = False
    # False when the engine knows it found nothing to answer from and said so (the offline engine's
    # don't-know reply); a remote model's answer is taken as an answer.
    knew_answer: bool = True


ModelEvent = TextChunk | ModelResult


class ModelPort(Protocol):
    """A language model behind the loop. `generate` is an async generator (see the module docstring)."""

    @property
    def name(self) -> str: ...

    def generate(self, request: ModelRequest) -> AsyncIterator[ModelEvent]: ...

    async def aclose(self) -> None: ...
