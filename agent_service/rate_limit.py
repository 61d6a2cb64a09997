"""Per-customer token bucket for Chat turns, in memory per replica (each replica counts on its own).

A customer's bucket holds up to `burst` turns and refills at `per_minute / 60` turns a second; a turn takes
one token or is refused. Keyed by the validated customer id only (anonymous callers are not counted here: the
auth interceptor refuses them before a turn starts). Buckets that have refilled completely carry no state
worth keeping and are dropped, so memory stays bounded by the customers active in the last `burst / rate`
seconds (and by `max_customers` whatever happens).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_MAX_CUSTOMERS = 100_000


class CustomerRateLimiter:
    def __init__(
        self,
        per_minute: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_customers: int = DEFAULT_MAX_CUSTOMERS,
    ) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._clock = clock
        self._max_customers = max_customers
        # customer -> (tokens, last update); least recently used first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def _tokens(self, customer_id: str, now: float) -> float:
        stored = self._buckets.get(customer_id)
        if stored is None:
            return self._burst
        tokens, last = stored
        return min(self._burst, tokens + (now - last) * self._rate)

    def try_acquire(self, customer_id: str) -> float:
        """Takes one token for `customer_id`: 0.0 when allowed, else the seconds until one is available."""
        if not self.enabled or not customer_id:
            return 0.0
        now = self._clock()
        self._prune(now)
        tokens = self._tokens(customer_id, now)
        if tokens < 1.0:
            self._buckets[customer_id] = (tokens, now)
            self._buckets.move_to_end(customer_id)
            return (1.0 - tokens) / self._rate
        self._buckets[customer_id] = (tokens - 1.0, now)
        self._buckets.move_to_end(customer_id)
        return 0.0

    def _prune(self, now: float) -> None:
        while self._buckets:
            oldest = next(iter(self._buckets))
            if len(self._buckets) < self._max_customers and self._tokens(oldest, now) < self._burst:
                break
            del self._buckets[oldest]

    def __len__(self) -> int:
        return len(self._buckets)
