"""The demo order store: orders in SQLite, seeded with the demo customers' orders when empty. Its writes apply
tools_service/order_rules.py inside the same transaction as the change, so a rule checked is a rule kept."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import sqlite3
from collections.abc import Callable
from typing import Any

from tools_service import order_rules
from tools_service.adapters.sqlite_db import SqliteDatabase, transaction
from tools_service.errors import NotFoundError
from tools_service.orders import NOT_FOUND_MESSAGE, Order

_COLUMNS = (
    "order_id, customer_id, status, tracking_number, carrier, eta, item_count, total_cents, currency, "
    "delivered_on, return_id"
)


def demo_orders(today: dt.date) -> tuple[Order, ...]:
    """The demo customers' orders; ORD-24816 was delivered three days before `today` (inside the return window),
    ORD-11223 on 2026-01-28 (outside it)."""
    recent = (today - dt.timedelta(days=3)).isoformat()
    return (
        Order("ORD-12345", "cust-001", "shipped", "1Z999AA10123456784", "UPS", "2026-02-18", 1, 12900),
        Order("ORD-67890", "cust-001", "processing", None, None, "2026-02-20", 2, 8400),
        Order(
            "ORD-11223",
            "cust-001",
            "delivered",
            "9400111899223856927123",
            "USPS",
            "2026-01-28",
            3,
            5750,
            delivered_on="2026-01-28",
        ),
        Order("ORD-33445", "cust-001", "cancelled", None, None, None, 1, 1999),
        Order(
            "ORD-24816",
            "cust-001",
            "delivered",
            "1Z999AA10555666777",
            "UPS",
            recent,
            1,
            3900,
            delivered_on=recent,
        ),
        Order("ORD-24680", "cust-002", "shipped", "771234567890", "FedEx", "2026-02-19", 2, 6400),
        Order("ORD-13579", "cust-002", "processing", None, None, "2026-02-24", 1, 4500),
        Order(
            "ORD-55555",
            "cust-003",
            "returned",
            "1Z999AA10987654321",
            "UPS",
            "2026-01-15",
            1,
            9900,
            delivered_on="2026-01-15",
        ),
    )


def _order(row: sqlite3.Row) -> Order:
    return Order(
        order_id=row["order_id"],
        customer_id=row["customer_id"],
        status=row["status"],
        tracking_number=row["tracking_number"] or None,
        carrier=row["carrier"] or None,
        eta=row["eta"] or None,
        item_count=row["item_count"],
        total_cents=row["total_cents"],
        currency=row["currency"],
        delivered_on=row["delivered_on"] or None,
        return_id=row["return_id"] or None,
    )


def _owned(conn: sqlite3.Connection, order_id: str, customer_id: str) -> Order:
    row = conn.execute(f"SELECT {_COLUMNS} FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    if row is None or row["customer_id"] != customer_id:
        raise NotFoundError(NOT_FOUND_MESSAGE)
    return _order(row)


class SqliteOrderBackend:
    def __init__(
        self,
        db: SqliteDatabase,
        today: Callable[[], dt.date] = order_rules.utc_today,
        return_window_days: int = order_rules.RETURN_WINDOW_DAYS,
    ) -> None:
        self._db = db
        self._today = today
        self._return_window_days = return_window_days

    async def seed_if_empty(self, orders: tuple[Order, ...] | None = None) -> int:
        """Inserts `orders` (default: the demo orders) when the table is empty; returns how many were inserted."""
        rows = orders if orders is not None else demo_orders(self._today())

        def seed(conn: sqlite3.Connection) -> int:
            def insert(tx: sqlite3.Connection) -> int:
                if tx.execute("SELECT 1 FROM orders LIMIT 1").fetchone() is not None:
                    return 0
                tx.executemany(
                    f"INSERT INTO orders ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            o.order_id,
                            o.customer_id,
                            o.status,
                            o.tracking_number,
                            o.carrier,
                            o.eta,
                            o.item_count,
                            o.total_cents,
                            o.currency,
                            o.delivered_on,
                            o.return_id,
                        )
                        for o in rows
                    ],
                )
                return len(rows)

            return transaction(conn, insert)

        return await self._db.run(seed)

    async def get_order(self, order_id: str) -> Order | None:
        def fetch(conn: sqlite3.Connection) -> Order | None:
            row = conn.execute(f"SELECT {_COLUMNS} FROM orders WHERE order_id = ?", (order_id,)).fetchone()
            return None if row is None else _order(row)

        return await self._db.read(fetch)

    async def cancel_order(self, order_id: str, customer_id: str, action_id: str) -> dict[str, Any]:
        def cancel(tx: sqlite3.Connection) -> dict[str, Any]:
            order = _owned(tx, order_id, customer_id)
            order_rules.check_cancel(order)
            tx.execute("UPDATE orders SET status = 'cancelled', eta = NULL WHERE order_id = ?", (order_id,))
            return order_rules.cancel_result(order)

        return await self._db.run(lambda conn: transaction(conn, cancel))

    async def start_return(
        self, order_id: str, customer_id: str, reason: str, action_id: str
    ) -> dict[str, Any]:
        def start(tx: sqlite3.Connection) -> dict[str, Any]:
            order = _owned(tx, order_id, customer_id)
            order_rules.check_return(order, self._today(), self._return_window_days)
            return_id = f"RET-{secrets.token_hex(3).upper()}"
            tx.execute("UPDATE orders SET return_id = ? WHERE order_id = ?", (return_id, order_id))
            return order_rules.return_result(order_id, return_id)

        return await self._db.run(lambda conn: transaction(conn, start))

    async def change_address(
        self, order_id: str, customer_id: str, address: dict[str, str], action_id: str
    ) -> dict[str, Any]:
        valid = order_rules.validate_address(address)

        def change(tx: sqlite3.Connection) -> dict[str, Any]:
            order = _owned(tx, order_id, customer_id)
            order_rules.check_address_change(order)
            tx.execute(
                "UPDATE orders SET address = ? WHERE order_id = ?",
                (json.dumps(valid.to_json_obj(), ensure_ascii=False), order_id),
            )
            return order_rules.address_result(order_id, valid)

        return await self._db.run(lambda conn: transaction(conn, change))

    async def delivery_address(self, order_id: str) -> dict[str, str] | None:
        """The address set by change_delivery_address (None until then); for tests and support tooling."""

        def fetch(conn: sqlite3.Connection) -> dict[str, str] | None:
            row = conn.execute("SELECT address FROM orders WHERE order_id = ?", (order_id,)).fetchone()
            return json.loads(row["address"]) if row is not None and row["address"] else None

        return await self._db.run(fetch)

    async def close(self) -> None:
        """The database is shared with the ticket store and closed by the server."""
