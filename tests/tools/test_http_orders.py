"""The HTTP order-API adapter against a real local aiohttp server started by the test."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from support.v1 import tools_pb2
from tools_service.adapters.http_orders import HttpOrderBackend
from tools_service.errors import BackendTimeoutError, BackendUnavailableError

# Scheduling headroom on a loaded machine for the upper bounds of elapsed times (never a behaviour).
SLACK_SECONDS = 2.0

ORDER = {
    "order_id": "ORD-12345",
    "customer_id": "cust-001",
    "status": "shipped",
    "tracking_number": "1Z999AA10123456784",
    "carrier": "UPS",
    "eta": "2026-02-18",
}


@dataclass
class OrderApi:
    """A scriptable order API: `responses[order_id]` is a list of behaviours consumed one per request."""

    url: str = ""
    responses: dict[str, list[str]] = field(default_factory=dict)
    requests: list[web.Request] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        order_id = request.match_info["order_id"]
        script = self.responses.get(order_id, ["ok"])
        behaviour = script.pop(0) if len(script) > 1 else script[0]
        if behaviour == "slow":
            await self.release.wait()
        if behaviour == "500":
            return web.Response(status=500, text="boom")
        if behaviour == "503":
            return web.Response(status=503)
        if behaviour == "404":
            return web.json_response({"error": "not found"}, status=404)
        if behaviour == "403":
            return web.Response(status=403)
        if behaviour == "malformed":
            return web.Response(
                status=200, text='{"order_id": "ORD-12345", "status": ', content_type="application/json"
            )
        if behaviour == "wrong-shape":
            return web.json_response(
                {"order_id": order_id, "status": "teleported", "customer_id": "cust-001"}
            )
        return web.json_response({**ORDER, "order_id": order_id})


@pytest.fixture
async def order_api() -> AsyncIterator[OrderApi]:
    api = OrderApi()
    app = web.Application()
    app.router.add_get("/v1/orders/{order_id}", api.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    api.url = f"http://127.0.0.1:{port}/v1"
    yield api
    api.release.set()
    await runner.cleanup()


@pytest.fixture
async def backend(order_api: OrderApi) -> AsyncIterator[HttpOrderBackend]:
    adapter = HttpOrderBackend(
        order_api.url,
        auth_header="Authorization: Bearer s3cret",
        timeout_seconds=0.3,
        retries=2,
        backoff_seconds=0.01,
    )
    yield adapter
    await adapter.close()


async def test_success_sends_the_auth_header(backend, order_api):
    order = await backend.get_order("ORD-12345")
    assert order is not None
    assert order.customer_id == "cust-001"
    assert order.tracking_number == "1Z999AA10123456784"
    assert order_api.requests[0].headers["Authorization"] == "Bearer s3cret"


async def test_500_then_success_is_retried(backend, order_api):
    order_api.responses["ORD-12345"] = ["500", "503", "ok"]
    order = await backend.get_order("ORD-12345")
    assert order is not None and order.status == "shipped"
    assert len(order_api.requests) == 3


async def test_500_every_time_gives_up_after_the_retries(backend, order_api):
    order_api.responses["ORD-12345"] = ["500"]
    with pytest.raises(BackendUnavailableError):
        await backend.get_order("ORD-12345")
    assert len(order_api.requests) == 3  # 1 + 2 retries


async def test_404_is_a_missing_order_not_retried(backend, order_api):
    order_api.responses["ORD-99999"] = ["404"]
    assert await backend.get_order("ORD-99999") is None
    assert len(order_api.requests) == 1


async def test_other_4xx_is_not_retried(backend, order_api):
    order_api.responses["ORD-12345"] = ["403"]
    with pytest.raises(BackendUnavailableError):
        await backend.get_order("ORD-12345")
    assert len(order_api.requests) == 1


@pytest.mark.parametrize("behaviour", ["malformed", "wrong-shape"])
async def test_malformed_body_is_a_backend_error(backend, order_api, behaviour):
    order_api.responses["ORD-12345"] = [behaviour]
    with pytest.raises(BackendUnavailableError):
        await backend.get_order("ORD-12345")
    assert len(order_api.requests) == 1


async def test_slow_api_times_out_without_retrying(backend, order_api):
    order_api.responses["ORD-12345"] = ["slow"]
    started = time.monotonic()
    with pytest.raises(BackendTimeoutError):
        await backend.get_order("ORD-12345")
    # One attempt waited out its 0.3 s timeout; the API still hangs, so only that timeout ended the call.
    assert 0.3 <= time.monotonic() - started < 0.3 + SLACK_SECONDS
    assert len(order_api.requests) == 1


async def test_connection_refused_is_retried_then_unavailable(unused_port):
    timeout = 3.0
    adapter = HttpOrderBackend(
        f"http://127.0.0.1:{unused_port}", timeout_seconds=timeout, retries=2, backoff_seconds=0.01
    )
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError):
            await adapter.get_order("ORD-12345")
        # Three refused attempts end sooner than one attempt's timeout: a refusal is not waited out.
        assert time.monotonic() - started < timeout
    finally:
        await adapter.close()


async def test_tools_service_over_the_http_backend(start_tools, order_api):
    order_api.responses["ORD-67890"] = ["500", "ok"]
    order_api.responses["ORD-99999"] = ["404"]
    order_api.responses["ORD-11111"] = ["malformed"]
    order_api.responses["ORD-22222"] = ["slow"]
    tools = await start_tools(
        order_backend="http", order_api_url=order_api.url, order_api_timeout_seconds=0.3, order_api_retries=1
    )

    async def run(order_id: str, metadata: Any = (("x-customer-id", "cust-001"),)) -> Any:
        request = tools_pb2.ExecuteToolRequest(
            tool_name="lookup_order_status",
            arguments_json=json.dumps({"order_id": order_id}),
            conversation_id="c",
        )
        response = await tools.stub.ExecuteTool(request, metadata=metadata, timeout=5)
        return json.loads(response.content_json)

    assert (await run("ORD-67890"))["status"] == "shipped"
    assert (await run("ORD-99999"))["error"]["code"] == "not_found"
    # Ownership is enforced on our side whatever the API returns.
    assert await run("ORD-12345", (("x-customer-id", "cust-002"),)) == await run("ORD-99999")
    assert (await run("ORD-11111"))["error"]["code"] == "backend_unavailable"
    assert (await run("ORD-22222"))["error"]["code"] == "timeout"
