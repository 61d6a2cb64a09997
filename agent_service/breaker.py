"""A circuit breaker around the configured model, degrading to the offline engine.

CLOSED: calls go to the primary model; `failure_threshold` consecutive failures open the breaker.
OPEN: calls go straight to the fallback for `cooldown_seconds`. Then HALF_OPEN: one trial call goes to the
primary — success closes the breaker, failure re-opens it. A primary failure inside a call is answered by the
fallback in the same call, so the turn still gets a reply (`ModelResult.fallback` is then true). A request the
server refused for its shape (`ModelRequestError`, a 400/422) is answered by the fallback too, but is neither
a success nor a failure of the model: it never opens the breaker for other conversations; nor is a call cut
short by the turn's own deadline (`ModelOutOfTimeError`).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from agent_service import metrics
from agent_service.errors import ModelOutOfTimeError, ModelRequestError, ModelUnavailableError
from agent_service.model_port import ModelEvent, ModelPort, ModelRequest, ModelResult, TextChunk
from agent_service.texts import FALLBACK_NOTE

logger = logging.getLogger(__name__)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure breaker with a cooldown; `clock` is injectable for tests."""

    def __init__(
        self,
        failure_threshold: int = 3,
        cooldown_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failure_threshold
        self._cooldown = cooldown_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self._cooldown:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """Whether this call may try the primary (in HALF_OPEN only one trial at a time)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        if self._opened_at is not None:
            logger.info("model circuit breaker closed")
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def release_trial(self) -> None:
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self._failures += 1
        half_open_trial = self._trial_in_flight
        self._trial_in_flight = False
        if half_open_trial or self._failures >= self._threshold:
            if self._opened_at is None or half_open_trial:
                logger.warning(
                    "model circuit breaker opened",
                    extra={"consecutive_failures": self._failures, "cooldown_seconds": self._cooldown},
                )
            self._opened_at = self._clock()


class FallbackModel:
    """`ModelPort` that asks `primary` while the breaker allows it and `fallback` otherwise."""

    def __init__(self, primary: ModelPort, fallback: ModelPort, breaker: CircuitBreaker) -> None:
        self._primary = primary
        self._fallback = fallback
        self.breaker = breaker

    @property
    def name(self) -> str:
        return self._primary.name

    async def aclose(self) -> None:
        await self._primary.aclose()
        await self._fallback.aclose()

    async def generate(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        if self.breaker.allow():
            settled = False
            try:
                async for event in self._primary.generate(request):
                    if isinstance(event, ModelResult):
                        self.breaker.record_success()
                        settled = True
                    yield event
                return
            except (ModelRequestError, ModelOutOfTimeError) as error:
                # The server is up and refused this request's shape, or this turn ran out of time: other
                # conversations keep the model.
                self.breaker.release_trial()
                settled = True
                logger.warning(
                    "model call not usable; answering with the fallback engine",
                    extra={
                        "model": self._primary.name,
                        "fallback": self._fallback.name,
                        "error_type": type(error).__name__,
                    },
                )
            except ModelUnavailableError:
                self.breaker.record_failure()
                settled = True
                logger.warning(
                    "model unavailable; answering with the fallback engine",
                    extra={"model": self._primary.name, "fallback": self._fallback.name},
                )
            finally:
                if not settled:  # cancelled mid-call: neither a success nor a failure
                    self.breaker.release_trial()
            metrics.record_model_call(self._primary.name, 0.0, outcome="fallback")
        else:
            metrics.record_model_call(self._primary.name, 0.0, outcome="circuit_open")
        async for event in self._fallback.generate(request):
            if isinstance(event, ModelResult):
                # The customer is told when the backup engine answers.
                if event.content and not event.tool_calls:
                    yield TextChunk(FALLBACK_NOTE)
                    event = replace(event, content=event.content + FALLBACK_NOTE)
                yield replace(event, fallback=True)
            else:
                yield event
