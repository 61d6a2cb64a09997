"""The tool definitions go to a real `openai` client unchanged, and its tool calls run through ExecuteTool."""

from __future__ import annotations

import json

from openai import AsyncOpenAI

from support.v1 import tools_pb2
from testkit.scripted_openai import Reply, ScriptedOpenAIServer, ToolCallSpec

CUST_1 = (("x-customer-id", "cust-001"),)


async def test_list_tools_feeds_the_openai_client_and_tool_calls_execute(tools):
    definitions = await tools.stub.ListTools(tools_pb2.ListToolsRequest(), timeout=5)
    openai_tools = [json.loads(d.openai_tool_json) for d in definitions.tools]
    script = [
        Reply(
            tool_calls=[
                ToolCallSpec("lookup_order_status", '{"order_id": "ORD-12345"}', id="call_1"),
                ToolCallSpec(
                    "escalate_to_human",
                    '{"reason": "Customer asked for a person", "priority": "medium"}',
                    id="call_2",
                ),
            ]
        ),
        Reply(content="Your order shipped; a colleague will follow up."),
    ]
    async with ScriptedOpenAIServer(script) as model_server:
        client = AsyncOpenAI(base_url=model_server.base_url, api_key="test", max_retries=0, timeout=5)
        messages: list[dict[str, object]] = [
            {"role": "user", "content": "Where is ORD-12345? Also get me a human."}
        ]
        first = await client.chat.completions.create(model="scripted", messages=messages, tools=openai_tools)  # type: ignore[arg-type]
        assert model_server.requests[0]["tools"] == openai_tools
        calls = first.choices[0].message.tool_calls or []
        assert [c.function.name for c in calls] == ["lookup_order_status", "escalate_to_human"]  # type: ignore[union-attr]
        messages.append(first.choices[0].message.model_dump(exclude_none=True))
        for call in calls:
            response = await tools.stub.ExecuteTool(
                tools_pb2.ExecuteToolRequest(
                    tool_name=call.function.name,  # type: ignore[union-attr]
                    arguments_json=call.function.arguments,  # type: ignore[union-attr]
                    conversation_id="conv-openai",
                    idempotency_key=call.id,
                ),
                metadata=CUST_1,
                timeout=5,
            )
            assert not response.HasField("error")
            messages.append({"role": "tool", "tool_call_id": call.id, "content": response.content_json})
        second = await client.chat.completions.create(model="scripted", messages=messages, tools=openai_tools)  # type: ignore[arg-type]
        await client.close()
    assert second.choices[0].message.content == "Your order shipped; a colleague will follow up."
    tool_messages = [m for m in model_server.requests[1]["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_messages] == ["call_1", "call_2"]
    assert json.loads(tool_messages[0]["content"])["tracking_number"] == "1Z999AA10123456784"
    assert json.loads(tool_messages[1]["content"])["ticket_id"].startswith("TKT-")
