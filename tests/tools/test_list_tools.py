"""ListTools serves the tool definitions exactly as the model is given them."""

from __future__ import annotations

import json

from jsonschema import Draft202012Validator

from support.v1 import tools_pb2


async def test_tools_are_openai_function_tools_with_strict_schemas(tools):
    response = await tools.stub.ListTools(tools_pb2.ListToolsRequest(), timeout=5)
    by_name = {t.name: t for t in response.tools}
    assert set(by_name) == {"lookup_order_status", "escalate_to_human"}
    for name, definition in by_name.items():
        tool = json.loads(definition.openai_tool_json)
        assert tool["type"] == "function"
        assert set(tool["function"]) == {"name", "description", "parameters"}
        assert tool["function"]["name"] == name
        assert tool["function"]["description"] == definition.description
        parameters = tool["function"]["parameters"]
        Draft202012Validator.check_schema(parameters)
        assert parameters["type"] == "object"
        assert parameters["additionalProperties"] is False
        for prop in parameters["properties"].values():
            if prop["type"] == "string" and "enum" not in prop:
                assert prop["maxLength"] > 0

    lookup = json.loads(by_name["lookup_order_status"].openai_tool_json)["function"]["parameters"]
    assert lookup["required"] == ["order_id"]
    assert lookup["properties"]["order_id"]["pattern"] == r"^ORD-\d{5}$"

    escalate = json.loads(by_name["escalate_to_human"].openai_tool_json)["function"]["parameters"]
    assert escalate["required"] == ["reason", "priority"]
    assert escalate["properties"]["priority"]["enum"] == ["low", "medium", "high"]
    assert "summary" in escalate["properties"]


async def test_escalation_description_lists_when_to_use_it(tools):
    response = await tools.stub.ListTools(tools_pb2.ListToolsRequest(), timeout=5)
    description = next(t.description for t in response.tools if t.name == "escalate_to_human").lower()
    for trigger in ("human", "angry", "billing", "security", "legal", "cannot answer", "tool keeps failing"):
        assert trigger in description


async def test_configured_order_id_pattern_is_served(start_tools):
    tools = await start_tools(order_id_pattern=r"^A\d{3}$")
    response = await tools.stub.ListTools(tools_pb2.ListToolsRequest(), timeout=5)
    lookup = next(t for t in response.tools if t.name == "lookup_order_status")
    params = json.loads(lookup.openai_tool_json)["function"]["parameters"]
    assert params["properties"]["order_id"]["pattern"] == r"^A\d{3}$"
