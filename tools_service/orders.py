"""Orders: id validation, caller ownership and the backend ports (read, and the three writes). No gRPC here.

The rules of which write is allowed when live in tools_service/order_rules.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from tools_service.deadlines import budget, with_timeout
from tools_service.errors import InvalidArgumentError, NotFoundError, UnauthenticatedError

ORDER_STATUSES = ("processing", "shipped", "delivered", "cancelled", "returned")
MAX_ORDER_ID_LENGTH = 64


@dataclass(frozen=True)
class Order:
    order_id: str
    customer_id: str
    status: str  # one of ORDER_STATUSES
    tracking_number: str | None
    carrier: str | None
    eta: str | None  # YYYY-MM-DD
    item_count: int = 0  # 0: unknown (an order written before orders carried their items)
    total_cents: int = 0
    currency: str = "USD"
    delivered_on: str | None = None  # YYYY-MM-DD, for delivered orders
    return_id: str | None = None  # the open return, once start_return ran

    def to_tool_content(self) -> dict[str, str | None]:
        """What the model sees on success (never the owner). Backend strings outside their expected shape are
        dropped: free text from an order system must not reach the model as instructions."""
        return {
            "order_id": self.order_id,
            "status": self.status,
            "tracking_number": _shaped(self.tracking_number, _TRACKING_SHAPE),
            "carrier": _shaped(self.carrier, _CARRIER_SHAPE),
            "eta": _shaped(self.eta, _ETA_SHAPE),
        }


_CARRIER_SHAPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 .&'-]{0,39}")
_TRACKING_SHAPE = re.compile(r"[A-Za-z0-9-]{6,40}")
_ETA_SHAPE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _shaped(value: str | None, shape: re.Pattern[str]) -> str | None:
    return value if value is not None and shape.fullmatch(value) else None


class OrderBackend(Protocol):
    """Where orders live: the SQLite demo store or the company's order API."""

    async def get_order(self, order_id: str) -> Order | None:
        """The order, or None when it does not exist. Raises BackendUnavailableError on failure."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class OrderWriter(Protocol):
    """An order backend that can also change orders. Each write applies the order's rules itself (the backend is
    the source of truth when it runs) and raises NotAllowedError (nothing changed), NotFoundError,
    WriteRefusedError (a definite refusal, nothing changed) or WriteOutcomeUnknownError (it may have happened).
    `action_id` makes the write idempotent on the backend's side. Each returns the tool result for the model."""

    async def cancel_order(self, order_id: str, customer_id: str, action_id: str) -> dict[str, Any]: ...

    async def start_return(
        self, order_id: str, customer_id: str, reason: str, action_id: str
    ) -> dict[str, Any]: ...

    async def change_address(
        self, order_id: str, customer_id: str, address: dict[str, str], action_id: str
    ) -> dict[str, Any]: ...


# The one message for both "missing" and "another customer's": byte-identical whatever the id, so neither the
# model nor the caller can tell them apart (and nothing of the asked id is echoed back).
NOT_FOUND_MESSAGE = (
    "No order with that id was found for this customer: the id is wrong or is not one of their orders."
)


class OrderService:
    def __init__(self, backend: OrderBackend, order_id_pattern: str, timeout_seconds: float) -> None:
        self._backend = backend
        # ASCII: `\d` must not accept other scripts' digits; fullmatch: `$` must not accept a trailing newline.
        self._pattern = re.compile(order_id_pattern, re.ASCII)
        self._timeout = timeout_seconds

    def validate_order_id(self, order_id: str) -> str:
        if not order_id:
            raise InvalidArgumentError("order_id", "order_id is required.")
        if len(order_id) > MAX_ORDER_ID_LENGTH or not self._pattern.fullmatch(order_id):
            raise InvalidArgumentError(
                "order_id",
                f"order_id must match {self._pattern.pattern} (for example ORD-12345).",
            )
        return order_id

    async def lookup(self, customer_id: str, order_id: str, deadline_remaining: float | None) -> Order:
        """The caller's order. Another customer's order raises the same NotFoundError as a missing one."""
        self.validate_order_id(order_id)
        if not customer_id:
            raise UnauthenticatedError("The customer is not identified, so no order details can be shown.")
        seconds = budget(self._timeout, deadline_remaining)
        order = await with_timeout(self._backend.get_order(order_id), seconds, "order system")
        if order is None or order.customer_id != customer_id:
            raise NotFoundError(NOT_FOUND_MESSAGE)
        return order
