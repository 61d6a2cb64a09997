"""Tools declared in configuration: the tools file's validation, and a company's own HTTP tools added with no code,
run through the real gRPC tools service against a real local aiohttp API started by the test."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from service_kit.env import ConfigError
from support.v1 import tools_pb2, types_pb2
from tests.tools.conftest import StartTools
from tools_service.config import Config
from tools_service.tool_catalog import SHIPPED_TOOLS_FILE, load_tools

PATTERN = r"^ORD-\d{5}$"
CUST_1 = (("x-customer-id", "cust-001"),)

LOOKUP = """
  - name: lookup_order_status
    description: Look up one order.
    effect: read
    backend: {builtin: orders.lookup}
    parameters:
      type: object
      properties: {order_id: {type: string, maxLength: 64}}
      required: [order_id]
"""


def write_tools(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "tools.yaml"
    path.write_text("tools:\n" + textwrap.dedent(body).strip("\n") + "\n", encoding="utf-8")
    return path


def http_tool(**overrides: str) -> str:
    fields = {
        "name": "get_subscription",
        "effect": "read",
        "http": "{method: GET, url: 'http://127.0.0.1:1/c/{customer_id}/s/{subscription_id}', retries: 1}",
        "bind": "{customer_id: principal}",
        "properties": "{subscription_id: {type: string, maxLength: 20}}",
        "required": "[subscription_id]",
        "extra": "",
    } | overrides
    return f"""
  - name: {fields["name"]}
    description: Reads a subscription.
    effect: {fields["effect"]}
    backend:
      http: {fields["http"]}
    bind: {fields["bind"]}
    parameters:
      type: object
      properties: {fields["properties"]}
      required: {fields["required"]}
{fields["extra"]}
"""


def test_the_shipped_file_declares_the_five_tools() -> None:
    specs = {spec.name: spec for spec in load_tools(SHIPPED_TOOLS_FILE, order_id_pattern=PATTERN)}
    assert {name for name, spec in specs.items() if not spec.changes_state} == {
        "lookup_order_status",
        "escalate_to_human",
    }
    assert {name for name, spec in specs.items() if spec.changes_state} == {
        "cancel_order",
        "start_return",
        "change_delivery_address",
    }


@pytest.mark.parametrize(
    ("body", "place"),
    [
        ("  - name: [unclosed", "tools.yaml: line"),
        (http_tool(effect="write", extra="    summary: Read {subscription_id}"), "tools[0].http.retries"),
        (
            http_tool(
                properties="{subscription_id: {type: string, maxLength: 9}, customer_id: {type: string, "
                "maxLength: 9}}"
            ),
            "tools[0].bind.customer_id",
        ),
        (
            http_tool(properties="{subscription_id: {type: string}}"),
            "tools[0].parameters.properties.subscription_id",
        ),
        (http_tool(properties="{subscription_id: {type: strng, maxLength: 9}}"), "tools[0].parameters"),
        (http_tool(http="{method: GET, url: 'http://x/{plan}'}"), "tools[0].http.url"),
        (http_tool(http="{method: GET, url: 'ftp://x/'}"), "tools[0].http.url"),
        (
            http_tool(http="{method: GET, url: 'http://x/', headers: {X-Key: '${NO_SUCH_VARIABLE_XYZ}'}}"),
            "tools[0].http.headers.X-Key: environment variable NO_SUCH_VARIABLE_XYZ is not set",
        ),
        (http_tool(bind="{customer_id: somebody}"), "tools[0].bind.customer_id"),
        (
            http_tool(effect="write", http="{method: POST, url: 'http://x/{subscription_id}'}"),
            "tools[0].summary",
        ),
        (LOOKUP.replace("orders.lookup", "orders.teleport"), "tools[0].backend.builtin"),
        (LOOKUP.replace("effect: read", "effect: write"), "tools[0].effect"),
        (LOOKUP.replace("required: [order_id]", "required: []"), "tools[0].parameters.required"),
        (LOOKUP + LOOKUP, "tools[1].name: 'lookup_order_status' is declared twice"),
        (LOOKUP.replace("effect: read", "effect: read\n    colour: blue"), "tools[0].colour"),
    ],
)
def test_a_bad_tools_file_names_the_file_and_the_place(tmp_path: Path, body: str, place: str) -> None:
    path = write_tools(tmp_path, body)
    with pytest.raises(ConfigError) as caught:
        load_tools(path, order_id_pattern=PATTERN, environ={})
    assert str(caught.value).startswith("tools.yaml: ")
    assert place in str(caught.value)


def test_the_service_refuses_to_start_with_a_bad_tools_file(tmp_path: Path) -> None:
    path = write_tools(tmp_path, http_tool(effect="write", extra="    summary: Read {subscription_id}"))
    with pytest.raises(ConfigError, match=r"tools\[0\]\.http\.retries"):
        Config.from_env({"TOOLS_FILE": str(path), "AUTH_DISABLED": "true"})
    with pytest.raises(ConfigError, match="cannot read it"):
        Config.from_env({"TOOLS_FILE": str(tmp_path / "missing.yaml"), "AUTH_DISABLED": "true"})


# ---- a company's own HTTP tools, no code -------------------------------------------------------------------


@dataclass
class SubscriptionApi:
    url: str = ""
    requests: list[tuple[str, str, dict[str, str], Any]] = field(
        default_factory=list
    )  # method, path, headers, body
    script: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path, dict(request.headers), body))
        behaviour = self.script.pop(0) if self.script else "ok"
        if behaviour == "slow":
            await self.release.wait()
        if behaviour == "503":
            return web.Response(status=503)
        if request.headers.get("Authorization") != "Bearer subs-secret":
            return web.Response(status=401)
        customer, subscription = request.match_info["customer"], request.match_info["subscription"]
        if request.method == "POST":
            return web.json_response({"subscription_id": subscription, "status": "cancelled"})
        return web.json_response({"subscription_id": subscription, "plan": "Gold", "owner": customer})


@pytest.fixture
async def subscription_api() -> AsyncIterator[SubscriptionApi]:
    api = SubscriptionApi()
    app = web.Application()
    app.router.add_route("*", "/c/{customer}/s/{subscription}", api.handle)
    app.router.add_route("*", "/c/{customer}/s/{subscription}/cancel", api.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    api.url = f"http://127.0.0.1:{port}"
    yield api
    api.release.set()
    await runner.cleanup()


def company_tools(tmp_path: Path, api_url: str) -> Path:
    return write_tools(
        tmp_path,
        LOOKUP
        + f"""
  - name: get_subscription
    description: Reads one of the customer's subscriptions.
    effect: read
    backend:
      http:
        method: GET
        url: "{api_url}/c/{{customer_id}}/s/{{subscription_id}}"
        timeout_seconds: 0.5
        retries: 2
        headers: {{Authorization: "Bearer ${{SUBS_TOKEN}}"}}
    bind: {{customer_id: principal}}
    parameters:
      type: object
      properties: {{subscription_id: {{type: string, maxLength: 20}}}}
      required: [subscription_id]
  - name: cancel_subscription
    description: Cancels one of the customer's subscriptions once the customer confirms.
    effect: write
    summary: Cancel subscription {{subscription_id}}
    backend:
      http:
        method: POST
        url: "{api_url}/c/{{customer_id}}/s/{{subscription_id}}/cancel"
        timeout_seconds: 0.5
        headers: {{Authorization: "Bearer ${{SUBS_TOKEN}}"}}
    bind: {{customer_id: principal}}
    parameters:
      type: object
      properties: {{subscription_id: {{type: string, maxLength: 20}}}}
      required: [subscription_id]
""",
    )


async def call(tools: Any, tool: str, arguments: dict[str, Any], metadata: Any = CUST_1) -> Any:
    request = tools_pb2.ExecuteToolRequest(
        tool_name=tool, arguments_json=json.dumps(arguments), conversation_id="c"
    )
    return await tools.stub.ExecuteTool(request, metadata=metadata, timeout=10)


async def test_a_read_only_http_tool_needs_no_code(
    tmp_path: Path,
    start_tools: StartTools,
    subscription_api: SubscriptionApi,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SUBS_TOKEN", "subs-secret")
    tools = await start_tools(tools_file=company_tools(tmp_path, subscription_api.url))

    listed = await tools.stub.ListTools(tools_pb2.ListToolsRequest(), timeout=5)
    by_name = {tool.name: tool for tool in listed.tools}
    assert set(by_name) == {"lookup_order_status", "get_subscription", "cancel_subscription"}
    assert [by_name[name].changes_state for name in by_name] == [False, False, True]
    served = json.loads(by_name["get_subscription"].openai_tool_json)["function"]["parameters"]
    assert set(served["properties"]) == {"subscription_id"}  # the bound customer_id is never shown

    subscription_api.script = ["503", "503"]  # a read is retried on 5xx
    response = await call(tools, "get_subscription", {"subscription_id": "S 1"})
    assert json.loads(response.content_json) == {
        "subscription_id": "S 1",
        "plan": "Gold",
        "owner": "cust-001",
    }
    assert [r[1] for r in subscription_api.requests] == ["/c/cust-001/s/S 1"] * 3  # URL-quoted on the wire
    assert subscription_api.requests[-1][2]["Authorization"] == "Bearer subs-secret"

    # The model can neither see nor set the bound parameter.
    sneaky = await call(tools, "get_subscription", {"subscription_id": "S1", "customer_id": "cust-002"})
    assert sneaky.error.code == tools_pb2.TOOL_ERROR_CODE_INVALID_ARGUMENTS
    assert "unexpected argument" in sneaky.error.message
    anonymous = await call(tools, "get_subscription", {"subscription_id": "S1"}, metadata=())
    assert anonymous.error.code == tools_pb2.TOOL_ERROR_CODE_UNAUTHENTICATED

    subscription_api.script = ["slow"]
    slow = await call(tools, "get_subscription", {"subscription_id": "S1"})
    assert slow.error.code == tools_pb2.TOOL_ERROR_CODE_TIMEOUT


async def test_an_http_write_tool_is_proposed_then_sent_once(
    tmp_path: Path,
    start_tools: StartTools,
    subscription_api: SubscriptionApi,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SUBS_TOKEN", "subs-secret")
    tools = await start_tools(tools_file=company_tools(tmp_path, subscription_api.url))
    proposed = await call(tools, "cancel_subscription", {"subscription_id": "S-1"})
    assert proposed.pending_action.summary == "Cancel subscription S-1"
    assert subscription_api.requests == []  # nothing sent before the confirmation
    run = tools_pb2.RunActionRequest(
        action_id=proposed.pending_action.action_id, conversation_id="c", confirmation="button"
    )
    ran = await tools.stub.RunAction(run, metadata=CUST_1, timeout=10)
    assert ran.ran_now and ran.action.state == types_pb2.ACTION_STATE_EXECUTED
    assert json.loads(ran.action.result_json) == {"subscription_id": "S-1", "status": "cancelled"}
    again = await tools.stub.RunAction(run, metadata=CUST_1, timeout=10)
    assert not again.ran_now
    ((method, path, headers, body),) = subscription_api.requests
    assert (method, path, body) == ("POST", "/c/cust-001/s/S-1/cancel", {})
    assert headers["Idempotency-Key"] == proposed.pending_action.action_id
