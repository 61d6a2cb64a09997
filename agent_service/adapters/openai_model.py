"""The model port over any OpenAI-compatible Chat Completions endpoint, through `openai.AsyncOpenAI`.

Streaming and non-streaming; streamed tool-call deltas are assembled by their `index`. Transient failures
(429, 5xx, timeouts, connection errors, malformed replies) are retried with exponential backoff and jitter —
by us, not the client (`max_retries=0`), so the policy is in one place. A stream is only retried before its
first text chunk went out; after that a failure is final for this call. Anything left raises
`ModelUnavailableError`, which the circuit breaker turns into a fallback answer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import openai
from openai import AsyncOpenAI, DefaultAioHttpClient

from agent_service import metrics
from agent_service.errors import ModelUnavailableError
from agent_service.model_port import ModelEvent, ModelRequest, ModelResult, TextChunk, ToolCallRequest
from service_kit import observability

logger = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 5.0


def _transient(error: BaseException) -> bool:
    if isinstance(error, openai.APIStatusError):
        return error.status_code == 429 or error.status_code >= 500
    # Timeouts, connection errors, bodies that do not parse.
    return isinstance(
        error,
        openai.APITimeoutError | openai.APIConnectionError | openai.APIResponseValidationError | ValueError,
    )


def _retry_after(error: BaseException) -> float:
    """The server's Retry-After (seconds) on a 429/503, capped at MAX_BACKOFF_SECONDS; 0 when absent."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    raw = headers.get("retry-after") if headers is not None else None
    try:
        return min(MAX_BACKOFF_SECONDS, max(0.0, float(raw))) if raw else 0.0
    except ValueError:
        return 0.0


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class OpenAIModel:
    """`ModelPort` adapter for OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp server, ..."""

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None,
        base_url: str | None,
        temperature: float = 0.3,
        timeout_seconds: float = 30.0,
        max_retries: int = 2,
        backoff_seconds: float = 0.25,
        client: AsyncOpenAI | None = None,
    ) -> None:
        self._model = model
        self._temperature = temperature
        self._max_retries = max_retries
        self._backoff = backoff_seconds
        self._client = client or AsyncOpenAI(
            api_key=api_key or "unused",
            base_url=base_url,
            timeout=timeout_seconds,
            max_retries=0,
            http_client=DefaultAioHttpClient(),
        )

    @property
    def name(self) -> str:
        return self._model

    async def aclose(self) -> None:
        await self._client.close()

    async def generate(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        attempt = 0
        while True:
            emitted = False
            started = time.perf_counter()
            try:
                with observability.genai_span("chat", self._model, provider="openai") as span:
                    if request.stream:
                        async for event in self._stream_once(request):
                            if isinstance(event, TextChunk):
                                emitted = True
                            else:
                                result = event
                            yield event
                    else:
                        result = await self._complete_once(request)
                        if result.content:
                            yield TextChunk(result.content)
                        yield result
                    observability.set_genai_usage(
                        span, result.prompt_tokens, result.completion_tokens, response_model=result.model
                    )
                metrics.record_model_call(
                    self._model,
                    time.perf_counter() - started,
                    result.prompt_tokens,
                    result.completion_tokens,
                    outcome="ok",
                )
                return
            except openai.OpenAIError as error:
                failure: BaseException = error
            except ValueError as error:  # a body that is not JSON
                failure = error
            metrics.record_model_call(
                self._model,
                time.perf_counter() - started,
                outcome="timeout" if isinstance(failure, openai.APITimeoutError) else "error",
            )
            retryable = _transient(failure) and not emitted and attempt < self._max_retries
            logger.warning(
                "model call failed",
                extra={
                    "model": self._model,
                    "error_type": type(failure).__name__,
                    "status_code": getattr(failure, "status_code", None),
                    "attempt": attempt + 1,
                    "will_retry": retryable,
                },
            )
            if not retryable:
                raise ModelUnavailableError(
                    f"model {self._model} failed: {type(failure).__name__}"
                ) from failure
            delay = min(MAX_BACKOFF_SECONDS, self._backoff * (2**attempt)) * (0.5 + random.random() / 2)
            delay = max(delay, _retry_after(failure))
            attempt += 1
            await asyncio.sleep(delay)

    def _arguments(self, request: ModelRequest, stream: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self._model,
            "messages": list(request.messages),
            "temperature": self._temperature,
        }
        if request.tools:
            kwargs["tools"] = list(request.tools)
        if stream:
            kwargs["stream"] = True
            kwargs["stream_options"] = {"include_usage": True}
        return kwargs

    async def _complete_once(self, request: ModelRequest) -> ModelResult:
        completion = await self._client.chat.completions.create(**self._arguments(request, stream=False))
        if not completion.choices:
            raise ValueError("completion without choices")
        message = completion.choices[0].message
        calls = tuple(
            ToolCallRequest(call.id, call.function.name, call.function.arguments or "")
            for call in (message.tool_calls or ())
            if getattr(call, "function", None) is not None
        )
        usage = completion.usage
        return ModelResult(
            content=message.content or "",
            tool_calls=calls,
            model=completion.model or self._model,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )

    async def _stream_once(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        stream = await self._client.chat.completions.create(**self._arguments(request, stream=True))
        text: list[str] = []
        calls: dict[int, _PartialCall] = {}
        model_name = self._model
        prompt_tokens = completion_tokens = 0
        async for chunk in stream:
            model_name = chunk.model or model_name
            if chunk.usage is not None:
                prompt_tokens = chunk.usage.prompt_tokens
                completion_tokens = chunk.usage.completion_tokens
            for choice in chunk.choices:
                delta = choice.delta
                if delta.content:
                    text.append(delta.content)
                    yield TextChunk(delta.content)
                for call_delta in delta.tool_calls or ():
                    index = call_delta.index if call_delta.index is not None else 0
                    partial = calls.setdefault(index, _PartialCall())
                    if call_delta.id:
                        partial.id = call_delta.id
                    function = call_delta.function
                    if function is not None:
                        if function.name:
                            partial.name += function.name
                        if function.arguments:
                            partial.arguments.append(function.arguments)
        yield ModelResult(
            content="".join(text),
            tool_calls=tuple(
                ToolCallRequest(partial.id or f"call_{index}", partial.name, "".join(partial.arguments))
                for index, partial in sorted(calls.items())
            ),
            model=model_name,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
