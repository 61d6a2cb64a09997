"""The demo order store: orders in SQLite, seeded with the demo customers' orders when empty."""

from __future__ import annotations

import sqlite3

from tools_service.adapters.sqlite_db import SqliteDatabase, transaction
from tools_service.orders import Order

DEMO_ORDERS = (
    Order("ORD-12345", "cust-001", "shipped", "1Z999AA10123456784", "UPS", "2026-02-18"),
    Order("ORD-67890", "cust-001", "processing", None, None, "2026-02-20"),
    Order("ORD-11223", "cust-001", "delivered", "9400111899223856927123", "USPS", "2026-01-28"),
    Order("ORD-33445", "cust-001", "cancelled", None, None, None),
    Order("ORD-24680", "cust-002", "shipped", "771234567890", "FedEx", "2026-02-19"),
    Order("ORD-13579", "cust-002", "processing", None, None, "2026-02-24"),
    Order("ORD-55555", "cust-003", "returned", "1Z999AA10987654321", "UPS", "2026-01-15"),
)


class SqliteOrderBackend:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def seed_if_empty(self, orders: tuple[Order, ...] = DEMO_ORDERS) -> int:
        """Inserts `orders` when the table is empty; returns how many were inserted."""

        def seed(conn: sqlite3.Connection) -> int:
            def insert(tx: sqlite3.Connection) -> int:
                if tx.execute("SELECT 1 FROM orders LIMIT 1").fetchone() is not None:
                    return 0
                tx.executemany(
                    "INSERT INTO orders (order_id, customer_id, status, tracking_number, carrier, eta)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (o.order_id, o.customer_id, o.status, o.tracking_number, o.carrier, o.eta)
                        for o in orders
                    ],
                )
                return len(orders)

            return transaction(conn, insert)

        return await self._db.run(seed)

    async def get_order(self, order_id: str) -> Order | None:
        def fetch(conn: sqlite3.Connection) -> Order | None:
            row = conn.execute(
                "SELECT order_id, customer_id, status, tracking_number, carrier, eta FROM orders WHERE order_id = ?",
                (order_id,),
            ).fetchone()
            if row is None:
                return None
            return Order(
                order_id=row["order_id"],
                customer_id=row["customer_id"],
                status=row["status"],
                tracking_number=row["tracking_number"] or None,
                carrier=row["carrier"] or None,
                eta=row["eta"] or None,
            )

        return await self._db.run(fetch)

    async def close(self) -> None:
        """The database is shared with the ticket store and closed by the server."""
