"""A company order API for tests: a real aiohttp server on a free local port holding its own orders.

GET /v1/orders/{id}; POST /v1/orders/{id}/cancel | /returns | /address (JSON body with customer_id), each
honouring Idempotency-Key (a replay answers the first answer and changes nothing). Its rules are its own (a
small independent copy, not tools_service's), so the tests show the tools service and the API agreeing.
`script[(what, order_id)]` makes the next write behave otherwise: "slow" (never answers), "409", "500", "drop".
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


def demo_orders(today: dt.date) -> dict[str, dict[str, Any]]:
    recent = (today - dt.timedelta(days=3)).isoformat()
    rows = [
        ("ORD-12345", "cust-001", "shipped", 1, 12900, None),
        ("ORD-67890", "cust-001", "processing", 2, 8400, None),
        ("ORD-11223", "cust-001", "delivered", 3, 5750, "2026-01-28"),
        ("ORD-24816", "cust-001", "delivered", 1, 3900, recent),
        ("ORD-24680", "cust-002", "shipped", 2, 6400, None),
        ("ORD-13579", "cust-002", "processing", 1, 4500, None),
    ]
    return {
        order_id: {
            "order_id": order_id,
            "customer_id": customer,
            "status": status,
            "item_count": items,
            "total_cents": total,
            "currency": "USD",
            "delivered_on": delivered,
            "eta": delivered,
        }
        for order_id, customer, status, items, total, delivered in rows
    }


@dataclass
class FakeOrderApi:
    url: str = ""
    orders: dict[str, dict[str, Any]] = field(default_factory=lambda: demo_orders(dt.date.today()))
    script: dict[tuple[str, str], str] = field(default_factory=dict)
    writes: list[tuple[str, str, str, dict[str, Any]]] = field(default_factory=list)  # (what, id, key, body)
    answers: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)  # by Idempotency-Key
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def applied(self, what: str, order_id: str) -> int:
        """How many times a write was applied (not replayed, not refused)."""
        return sum(1 for w in self.writes if w[0] == what and w[1] == order_id)

    async def get(self, request: web.Request) -> web.Response:
        order = self.orders.get(request.match_info["order_id"])
        if order is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response(order)

    async def write(self, request: web.Request) -> web.StreamResponse:
        what = request.match_info["what"]
        order_id = request.match_info["order_id"]
        key = request.headers.get("Idempotency-Key", "")
        body = await request.json()
        behaviour = self.script.pop((what, order_id), "")
        if behaviour == "slow":
            await self.release.wait()
        if behaviour == "409":
            return web.json_response({"error": "The warehouse already picked this order."}, status=409)
        if behaviour == "500":
            return web.Response(status=500)
        if behaviour == "drop" and request.transport is not None:
            request.transport.close()
            return web.Response(status=500)
        if key and key in self.answers:
            status, answer = self.answers[key]
            return web.json_response(answer, status=status)
        status, answer = self._apply(what, order_id, body, key)
        if key:
            self.answers[key] = (status, answer)
        return web.json_response(answer, status=status)

    def _apply(self, what: str, order_id: str, body: dict[str, Any], key: str) -> tuple[int, dict[str, Any]]:
        order = self.orders.get(order_id)
        if order is None or order["customer_id"] != body.get("customer_id"):
            return 404, {"error": "not found"}
        if what == "cancel":
            if order["status"] != "processing":
                return 409, {"error": f"Order {order_id} is {order['status']}."}
            order["status"] = "cancelled"
            answer: dict[str, Any] = {"order_id": order_id, "status": "cancelled"}
        elif what == "returns":
            delivered = order.get("delivered_on")
            if order["status"] != "delivered" or order.get("return_id") or not delivered:
                return 409, {"error": f"Order {order_id} cannot be returned."}
            if dt.date.fromisoformat(delivered) + dt.timedelta(days=30) < dt.date.today():
                return 422, {"error": "The return window has closed."}
            order["return_id"] = f"RET-{len(self.writes) + 100000}"
            answer = {"order_id": order_id, "return_id": order["return_id"]}
        else:
            if order["status"] != "processing":
                return 409, {"error": f"Order {order_id} has shipped."}
            order["address"] = body["address"]
            answer = {"order_id": order_id}
        self.writes.append((what, order_id, key, body))
        return 200, answer


@asynccontextmanager
async def running_order_api() -> AsyncIterator[FakeOrderApi]:
    api = FakeOrderApi()
    app = web.Application()
    app.router.add_get("/v1/orders/{order_id}", api.get)
    app.router.add_post("/v1/orders/{order_id}/{what}", api.write)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    api.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield api
    finally:
        api.release.set()
        await runner.cleanup()


def order_json(api: FakeOrderApi, order_id: str) -> str:
    return json.dumps(api.orders[order_id], sort_keys=True)
