"""The order store's rules for writes, in one place: which write an order allows now, address validation, the
human-readable summaries and the results the model sees. Used before proposing, again when running (SQLite store,
inside its transaction) and by the HTTP adapter's pre-check; the company's API stays the source of truth there.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from tools_service.errors import InvalidArgumentError, NotAllowedError
from tools_service.orders import Order

RETURN_WINDOW_DAYS = 30
MAX_RETURN_REASON_LENGTH = 200
ADDRESS_LIMITS = {"line1": 100, "line2": 100, "city": 60, "postal_code": 16, "country": 2}
ADDRESS_REQUIRED = ("line1", "city", "postal_code", "country")
_COUNTRY = re.compile(r"[A-Z]{2}")
_CURRENCY_SIGNS = {"USD": "$", "EUR": "€", "GBP": "£"}
RETURN_INSTRUCTIONS = (
    "Pack the items with the return id written on the parcel and drop it at any carrier point within 14 days; "
    "the refund goes to the original payment method once the parcel arrives."
)


def format_money(cents: int, currency: str) -> str:
    """1234, "USD" → "$12.34"; currencies without a sign → "12.34 CHF"."""
    amount = f"{cents // 100}.{cents % 100:02d}"
    sign = _CURRENCY_SIGNS.get(currency)
    return f"{sign}{amount}" if sign else f"{amount} {currency}"


def _contents(order: Order) -> str:
    """ " (2 items, $84.00)", or "" when the order does not carry its items."""
    if order.item_count <= 0:
        return ""
    items = "1 item" if order.item_count == 1 else f"{order.item_count} items"
    return f" ({items}, {format_money(order.total_cents, order.currency)})"


def utc_today() -> dt.date:
    """The day the return window is counted in: UTC, wherever the service runs."""
    return dt.datetime.now(dt.UTC).date()


# ---- cancel ------------------------------------------------------------------------------------------------


def check_cancel(order: Order) -> None:
    """Only a processing order can be cancelled."""
    if order.status == "processing":
        return
    reasons = {
        "shipped": "has already shipped, so it can't be cancelled; the customer can return it once delivered",
        "delivered": "has already been delivered, so it can't be cancelled; the customer can start a return",
        "cancelled": "is already cancelled",
        "returned": "has been returned, so it can't be cancelled",
    }
    raise NotAllowedError(
        f"Order {order.order_id} {reasons.get(order.status, 'can no longer be cancelled')}."
    )


def cancel_summary(order: Order) -> str:
    return f"Cancel order {order.order_id}{_contents(order)}"


def cancel_result(order: Order) -> dict[str, Any]:
    refund = f"{format_money(order.total_cents, order.currency)} to the original payment method"
    return {"order_id": order.order_id, "status": "cancelled", "refund": refund}


# ---- return ------------------------------------------------------------------------------------------------


def check_return(order: Order, today: dt.date, window_days: int = RETURN_WINDOW_DAYS) -> None:
    """Only a delivered order, within `window_days` of its delivery, with no return open yet."""
    if order.return_id:
        raise NotAllowedError(f"Order {order.order_id}: a return is already open: {order.return_id}.")
    if order.status != "delivered":
        raise NotAllowedError(
            f"Order {order.order_id} is {order.status}; only delivered orders can be returned."
        )
    delivered = _date(order.delivered_on)
    if delivered is None or today > delivered + dt.timedelta(days=window_days):
        raise NotAllowedError(
            f"Order {order.order_id} was delivered more than {window_days} days ago, so the return window "
            "has closed."
        )


def return_summary(order: Order) -> str:
    return f"Start a return for order {order.order_id}{_contents(order)}"


def return_result(order_id: str, return_id: str) -> dict[str, Any]:
    return {"order_id": order_id, "return_id": return_id, "instructions": RETURN_INSTRUCTIONS}


def validate_reason(arguments: dict[str, Any]) -> str:
    reason = arguments.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_RETURN_REASON_LENGTH or _has_control(reason):
        raise InvalidArgumentError(
            "reason", f"reason must be text of at most {MAX_RETURN_REASON_LENGTH} characters."
        )
    return reason.strip()


# ---- delivery address ----------------------------------------------------------------------------------------


def check_address_change(order: Order) -> None:
    """The address can change only before the order ships."""
    if order.status != "processing":
        raise NotAllowedError(
            f"Order {order.order_id} is {order.status}, so its delivery address can no longer be changed."
        )


@dataclass(frozen=True)
class Address:
    line1: str
    city: str
    postal_code: str
    country: str
    line2: str = ""

    def one_line(self) -> str:
        """ "12 Rue de Rivoli, 75001 Paris, FR" """
        street = ", ".join(part for part in (self.line1, self.line2) if part)
        return f"{street}, {self.postal_code} {self.city}, {self.country}"

    def to_json_obj(self) -> dict[str, str]:
        fields = {"line1": self.line1, "line2": self.line2, "city": self.city}
        fields |= {"postal_code": self.postal_code, "country": self.country}
        return {name: value for name, value in fields.items() if value}


def _has_control(text: str) -> bool:
    return any(unicodedata.category(char) in ("Cc", "Cf") for char in text)


def validate_address(raw: object) -> Address:
    """The address, or InvalidArgumentError naming the field (address.city, ...)."""
    if not isinstance(raw, dict):
        raise InvalidArgumentError(
            "address", "address must be an object with line1, city, postal_code, country."
        )
    unknown = sorted(set(raw) - set(ADDRESS_LIMITS))
    if unknown:
        raise InvalidArgumentError(
            f"address.{unknown[0]}", f"address accepts only: {', '.join(ADDRESS_LIMITS)}."
        )
    values: dict[str, str] = {}
    for name, limit in ADDRESS_LIMITS.items():
        field = f"address.{name}"
        value = raw.get(name, "")
        if not isinstance(value, str):
            raise InvalidArgumentError(field, f"{field} must be text.")
        value = value.strip()
        if not value and name in ADDRESS_REQUIRED:
            raise InvalidArgumentError(field, f"{field} is required.")
        if len(value) > limit:
            raise InvalidArgumentError(field, f"{field} is longer than {limit} characters.")
        if _has_control(value):
            raise InvalidArgumentError(field, f"{field} contains control or invisible characters.")
        values[name] = value
    if not _COUNTRY.fullmatch(values["country"]):
        raise InvalidArgumentError(
            "address.country", "address.country must be a two-letter ISO 3166-1 code such as FR or US."
        )
    return Address(**values)


def address_summary(order: Order, address: Address) -> str:
    return f"Change the delivery address of order {order.order_id} to {address.one_line()}"


def address_result(order_id: str, address: Address) -> dict[str, Any]:
    return {"order_id": order_id, "address": address.one_line()}


def _date(value: str | None) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value) if value else None
    except ValueError:
        return None
