"""Time budgets: every backend call runs under its own timeout and the caller's deadline, whichever is sooner."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from tools_service.errors import BackendTimeoutError

T = TypeVar("T")

# Answer this long before the caller's deadline, so a timeout reaches the caller as our own result or status
# (a structured tool error) instead of the transport's DEADLINE_EXCEEDED.
DEADLINE_MARGIN_SECONDS = 0.05


def budget(own_timeout: float, deadline_remaining: float | None) -> float:
    """Seconds a backend call may take: its own timeout, capped by the caller's remaining deadline."""
    if deadline_remaining is None:
        return own_timeout
    return max(0.0, min(own_timeout, deadline_remaining - DEADLINE_MARGIN_SECONDS))


async def with_timeout(awaitable: Awaitable[T], seconds: float, what: str) -> T:
    """Awaits under `seconds`; a timeout becomes BackendTimeoutError naming `what` (never raw TimeoutError)."""
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        raise BackendTimeoutError(f"The {what} did not answer in time.") from None
