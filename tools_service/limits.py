"""Tool-call limits, in memory per process (replicas each count on their own; a replicated deployment would
move these counters to Redis).

Three limits, checked once a call is valid (its caller, tool and arguments) and counted only when it is allowed:
- calls per conversation, keyed by (customer, conversation): another customer sending the same conversation id
  has its own budget and cannot exhaust this one,
- calls per customer in a sliding 60-second window (anonymous callers are not counted here),
- identical calls (same tool, same canonical arguments) per conversation.
`WindowLimiter` is the per-customer sliding window alone (EscalateToHuman's new tickets per minute).

Counters of a conversation idle for `idle_seconds` (default 24 h), and empty customer windows, are forgotten so
that a long-running process does not grow without bound.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tools_service.errors import RateLimitedError

WINDOW_SECONDS = 60.0
IDLE_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class Limits:
    per_conversation: int
    per_customer_per_minute: int
    identical_calls: int


@dataclass
class _Conversation:
    last_seen: float
    calls: int = 0
    identical: Counter[tuple[str, str]] = field(default_factory=Counter)


def canonical_arguments(arguments: object) -> str:
    """A stable string for "the same arguments" (key order and whitespace do not matter)."""
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class CallLimiter:
    def __init__(
        self, limits: Limits, clock: Callable[[], float] = time.monotonic, idle_seconds: float = IDLE_SECONDS
    ) -> None:
        self._limits = limits
        self._clock = clock
        self._idle = idle_seconds
        # Least recently used first, so idle conversations are pruned from the front.
        self._conversations: OrderedDict[tuple[str, str], _Conversation] = OrderedDict()
        self._customers: OrderedDict[str, deque[float]] = OrderedDict()

    def _prune(self, now: float) -> None:
        while self._conversations:
            oldest = next(iter(self._conversations.values()))
            if oldest.last_seen > now - self._idle:
                break
            self._conversations.popitem(last=False)
        while self._customers:
            window = next(iter(self._customers.values()))
            if window and window[-1] > now - WINDOW_SECONDS:
                break
            self._customers.popitem(last=False)

    def acquire(self, conversation_id: str, customer_id: str, tool_name: str, arguments_key: str) -> None:
        """Counts one call, or raises RateLimitedError (nothing counted) when any limit would be exceeded."""
        now = self._clock()
        self._prune(now)
        conversation_key = (customer_id, conversation_id)
        conversation = self._conversations.get(conversation_key) if conversation_id else None
        identical_key = (tool_name, arguments_key)
        if conversation is not None:
            if conversation.calls >= self._limits.per_conversation:
                raise RateLimitedError(
                    f"This conversation reached its limit of {self._limits.per_conversation} tool calls.",
                    limit="per_conversation",
                    retry_after_seconds=0,
                )
            if conversation.identical[identical_key] >= self._limits.identical_calls:
                raise RateLimitedError(
                    f"{tool_name} was already called {self._limits.identical_calls} times with these "
                    "arguments in this conversation; use the earlier result.",
                    limit="identical_calls",
                    retry_after_seconds=0,
                )
        window = self._customers.get(customer_id) if customer_id else None
        if window is not None:
            while window and window[0] <= now - WINDOW_SECONDS:
                window.popleft()
            if len(window) >= self._limits.per_customer_per_minute:
                retry_after = max(1, math.ceil(window[0] + WINDOW_SECONDS - now))
                raise RateLimitedError(
                    f"Too many tool calls for this customer; try again in {retry_after} seconds.",
                    limit="per_customer_per_minute",
                    retry_after_seconds=retry_after,
                )
        if conversation_id:
            if conversation is None:
                conversation = self._conversations[conversation_key] = _Conversation(last_seen=now)
            conversation.last_seen = now
            conversation.calls += 1
            conversation.identical[identical_key] += 1
            self._conversations.move_to_end(conversation_key)
        if customer_id:
            if window is None:
                window = self._customers[customer_id] = deque()
            window.append(now)
            self._customers.move_to_end(customer_id)

    def tracked(self) -> tuple[int, int]:
        """(conversations, customers) currently held in memory."""
        return len(self._conversations), len(self._customers)


class WindowLimiter:
    """At most `per_minute` events per key in a sliding 60-second window: `check` before the work (raises
    RateLimitedError with the seconds to wait), `record` once it happened. Empty windows are forgotten."""

    def __init__(
        self, per_minute: int, limit: str, what: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._per_minute = per_minute
        self._limit = limit
        self._what = what
        self._clock = clock
        self._windows: OrderedDict[str, deque[float]] = OrderedDict()

    def _window(self, key: str, now: float) -> deque[float] | None:
        while self._windows:
            oldest = next(iter(self._windows.values()))
            if oldest and oldest[-1] > now - WINDOW_SECONDS:
                break
            self._windows.popitem(last=False)
        window = self._windows.get(key)
        while window and window[0] <= now - WINDOW_SECONDS:
            window.popleft()
        return window

    def check(self, key: str) -> None:
        now = self._clock()
        window = self._window(key, now)
        if window is not None and len(window) >= self._per_minute:
            retry_after = max(1, math.ceil(window[0] + WINDOW_SECONDS - now))
            raise RateLimitedError(
                f"Too many {self._what} for this customer; try again in {retry_after} seconds.",
                limit=self._limit,
                retry_after_seconds=retry_after,
            )

    def record(self, key: str) -> None:
        now = self._clock()
        window = self._window(key, now)
        if window is None:
            window = self._windows[key] = deque()
        window.append(now)
        self._windows.move_to_end(key)

    def tracked(self) -> int:
        return len(self._windows)
