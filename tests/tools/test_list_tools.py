"""ListTools serves the tool definitions exactly as the model is given them."""

from __future__ import annotations

import json

from jsonschema import Draft202012Validator

from support.v1 import tools_pb2


async def test_tools_are_openai_function_tools_with_strict_schemas(tools):
    response = await tools.stub.ListTools(tools_pb2.ListToolsRequest(), timeout=5)
    by_name = {t.name: t for t in response.tools}
    assert set(by_name) == {
        "lookup_order_status",
        "escalate_to_human",
        "cancel_order",
        "start_return",
        "change_delivery_address",
    }
    assert {name for name, d in by_name.items() if d.changes_state} == {
        "cancel_order",
        "start_return",
        "change_delivery_address",
    }
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
    # Issue 18: the pattern the model gets is one grammar-based servers compile (no \d, no anchors).
    assert lookup["properties"]["order_id"]["pattern"] == "ORD-[0-9]{5}"

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
    assert params["properties"]["order_id"]["pattern"] == "A[0-9]{3}"


def _patterns(schema: object) -> list[str]:
    if isinstance(schema, dict):
        found = [schema["pattern"]] if isinstance(schema.get("pattern"), str) else []
        return found + [p for key, value in schema.items() if key != "pattern" for p in _patterns(value)]
    if isinstance(schema, list):
        return [p for item in schema for p in _patterns(item)]
    return []


async def test_served_schemas_compile_on_grammar_based_servers_and_validation_stays_strict(tools):
    # Issue 18 (5): llama.cpp's grammar conversion refused `^ORD-\d{5}$` ("Failed to parse grammar") and with
    # it every request that carried tools. The served schema has no \d and no anchors...
    response = await tools.stub.ListTools(tools_pb2.ListToolsRequest(), timeout=5)
    patterns = [p for t in response.tools for p in _patterns(json.loads(t.openai_tool_json))]
    assert patterns, "the order id keeps a pattern"
    for pattern in patterns:
        assert "\\d" not in pattern and not pattern.startswith("^") and not pattern.endswith("$"), pattern
    # ...while the tools service still validates the id strictly: whole-string, ASCII digits only.
    for bad in ("xORD-12345", "ORD-12345x", "ORD-1234", "ORD-١٢٣٤٥", "ORD-12345\n"):
        result = await tools.stub.ExecuteTool(
            tools_pb2.ExecuteToolRequest(
                tool_name="lookup_order_status",
                arguments_json=json.dumps({"order_id": bad}),
                conversation_id="conv-pattern",
            ),
            metadata=(("x-customer-id", "cust-001"),),
            timeout=5,
        )
        assert result.error.code == tools_pb2.TOOL_ERROR_CODE_INVALID_ARGUMENTS, bad
